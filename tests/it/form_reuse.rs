//! Form reuse (`--form-reuse`, issue 14): a contact's upload form carries its next files, every
//! row still exactly once, each under a key of its own, with the bytes S3 holds the file's; forms
//! that expire mid-reuse renewed without a failure; a server that refuses reused forms turns
//! reuse off for good, with every row done once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{Scratch, sample_copy_of};
use crate::faults::generated;
use crate::run::{assert_exactly_once, manifest_rows, sample_copy};

/// `run --json` with the rate limit off; exit code and summary.
fn run_json(emu: &Emulator, manifest: &Path, args: &[&str]) -> (i32, Value, String) {
    let out = emu
        .run_cmd(manifest)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    let doc = crate::common::json_stdout(&out);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), doc, stderr)
}

fn count(requests: &BTreeMap<String, u64>, what: &str) -> u64 {
    requests.get(what).copied().unwrap_or(0)
}

const FORMS: &str = "GET /api/v3/attachments/s3_form 200";
const ATTACHED: &str = "POST /api/v3/attachments 201";

/// The distinct contacts of a manifest's rows.
fn contacts(manifest: &Path) -> usize {
    manifest_rows(manifest)
        .iter()
        .map(|r| r.contact_id.clone())
        .collect::<HashSet<_>>()
        .len()
}

/// Every attachment's object in S3 holds its row's file, byte for byte, and no two attachments
/// share a key.
fn assert_objects_are_the_files(emu: &Emulator, manifest: &Path) {
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    let keys: HashSet<&str> = attachments
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), attachments.len(), "a key carried two files");
    for row in manifest_rows(manifest) {
        let a = attachments
            .iter()
            .find(|a| {
                a["reference_id"] == row.reference_id.as_str() && a["filename"] == row.name.as_str()
            })
            .unwrap_or_else(|| panic!("line {}: not attached", row.line));
        let key = a["key"].as_str().unwrap();
        assert!(
            key.starts_with(&format!("{}/", row.contact_id)),
            "line {}: {key}",
            row.line
        );
        assert!(
            emu.object(&encoded(key)) == std::fs::read(&row.path).unwrap(),
            "line {}: the object under {key} is not the file",
            row.line
        );
    }
}

/// A manifest of one small file on a note of Ada's (samples/emulator-seed.json).
fn one_row() -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new();
    s.file("a.pdf", b"one file");
    let manifest = s.manifest(
        "file,contact_id,reference_type,reference_id\n\
         a.pdf,ca929443ed449d7679121de5,note,064132394d9b497f536b2bb7\n",
    );
    (s, manifest)
}

/// `key` as a URL path (its names may hold spaces).
fn encoded(key: &str) -> String {
    let segments: Vec<String> = key
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect();
    segments.join("/")
}

/// A rerun of a finished manifest sends nothing.
fn assert_rerun_sends_nothing(emu: &Emulator, manifest: &Path) {
    let before = emu.requests();
    let (code, doc, _) = run_json(emu, manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["api_calls"], 0, "{doc}");
    assert_eq!(emu.requests(), before, "the rerun sent requests");
}

/// Reads of records (by id or listed by contact): the snapshots taken before an attach answer
/// showed its key in its link.
fn record_reads(requests: &std::collections::BTreeMap<String, u64>) -> u64 {
    ["notes", "deals", "calls", "meetings"]
        .iter()
        .map(|kind| {
            requests
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("GET /api/v3/{kind}")))
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn the_samples_go_up_exactly_once_on_one_form_per_contact() {
    // The sample by contact id here; the samples by email and with notes have their own
    // exactly-once tests (`contacts_by_email`, `notes`), which run with form reuse too (the
    // default): here each of them gets one form per contact and the bytes S3 holds are the files'.
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
    let requests = emu.requests();
    assert_eq!(count(&requests, FORMS), 4, "{requests:?}");
    assert_eq!(count(&requests, ATTACHED), 20);
    // And one record read: the first row's, before the first attach answer showed its key in
    // its link (the other rows waited for that answer).
    assert_eq!(record_reads(&requests), 1, "{requests:?}");
    assert_eq!(doc["api_calls"], 25, "{doc}");
    assert_eq!(doc["forms_fetched"], 4, "{doc}");
    assert_eq!(doc["uploads_on_reused_forms"], 16, "{doc}");
    assert_eq!(doc["form_reuse"], "on", "{doc}");
    assert_eq!(doc["form_reuse_turned_off"], Value::Null, "{doc}");
    assert_rerun_sends_nothing(&emu, &manifest);

    for sample in ["from-another-crm.csv", "notes.csv"] {
        let emu = Emulator::start(&["--rate-limit", "off"]);
        let (_s, manifest) = sample_copy_of(sample);
        let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
        assert_eq!(code, 0, "{sample}: {doc}\n{stderr}");
        let state = emu.state();
        let attachments = state["attachments"].as_array().unwrap();
        let rows = manifest_rows(&manifest);
        assert_eq!(attachments.len(), rows.len(), "{sample}");
        let contacts: HashSet<&str> = attachments
            .iter()
            .map(|a| a["contact_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            count(&emu.requests(), FORMS),
            contacts.len() as u64,
            "{sample}"
        );
        for a in attachments {
            let row = rows
                .iter()
                .find(|r| a["filename"] == r.name.as_str())
                .unwrap();
            assert!(
                emu.object(&encoded(a["key"].as_str().unwrap()))
                    == std::fs::read(&row.path).unwrap(),
                "{sample}: line {}",
                row.line
            );
        }
        assert_rerun_sends_nothing(&emu, &manifest);
    }
}

#[test]
fn two_hundred_files_over_ten_contacts_take_ten_forms_and_keep_their_bytes() {
    let s = Scratch::new();
    let (seed, manifest) = generated(&s, 200);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
    let requests = emu.requests();
    assert_eq!(count(&requests, FORMS), 10, "{requests:?}");
    assert_eq!(count(&requests, ATTACHED), 200, "{requests:?}");
    assert_eq!(record_reads(&requests), 1, "{requests:?}");
    assert_eq!(doc["api_calls"], 211, "{doc}");
    assert_rerun_sends_nothing(&emu, &manifest);
}

#[test]
fn two_files_of_one_name_for_one_contact_in_one_second_get_two_keys() {
    // Every form carries one timestamp, so every key of a contact starts alike.
    let emu = Emulator::start(&["--rate-limit", "off", "--form-timestamp", "1764496800"]);
    let s = Scratch::new();
    s.file("a/report.pdf", b"the first report");
    s.file("b/report.pdf", b"the second report, longer");
    // Ada and two of her notes (samples/emulator-seed.json).
    let manifest = s.manifest(
        "file,contact_id,reference_type,reference_id\n\
         a/report.pdf,ca929443ed449d7679121de5,note,064132394d9b497f536b2bb7\n\
         b/report.pdf,ca929443ed449d7679121de5,note,ce1987ee72777833d0d1e0e7\n",
    );
    let (code, doc, _) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        doc["uploads_on_reused_forms"], 1,
        "one form carried both: {doc}"
    );
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
}

#[test]
fn forms_too_short_lived_to_reuse_are_one_per_file_and_it_is_said_once() {
    // A form that lives 30 s has less life than the safe margin (60 s): never reused.
    let emu = Emulator::start(&["--rate-limit", "off", "--form-ttl", "30"]);
    let (_s, manifest) = sample_copy();
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_eq!(count(&emu.requests(), FORMS), 20);
    assert_eq!(doc["uploads_on_reused_forms"], 0, "{doc}");
    // Every contact's second file finds its form unfit: one line says why, for the run.
    assert_eq!(stderr.matches(NOT_REUSED).count(), 1, "said once: {stderr}");
    assert!(stderr.contains("not more than the safe margin"), "{stderr}");
}

/// The warning of a run whose forms cannot carry a contact's next file.
const NOT_REUSED: &str = "an upload form cannot carry a second file";

/// Ada (samples/emulator-seed.json).
const ADA: &str = "ca929443ed449d7679121de5";

#[test]
fn form_reuse_with_timestamp_ms_or_none_takes_one_form_per_contact_on_the_sample() {
    // The answers' `timestamp` in milliseconds, or none: the forms' life comes from their
    // x-amz-date and policy, so reuse is as with seconds. The keys' timestamp part is the
    // milliseconds (13 digits) or, with none, our clock's seconds (10), then random digits up to
    // 19 in all (a decimal that fits a 64-bit integer).
    for flag in ["--timestamp-ms", "--no-timestamp"] {
        let emu = Emulator::start(&["--rate-limit", "off", flag]);
        let (_s, manifest) = sample_copy();
        let rows = manifest_rows(&manifest).len();
        let contacts = contacts(&manifest);
        let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
        assert_eq!(code, 0, "{flag}: {doc}\n{stderr}");
        assert_exactly_once(&emu.state(), &manifest);
        assert_objects_are_the_files(&emu, &manifest);
        assert_eq!(doc["forms_fetched"], contacts, "{flag}: {doc}");
        assert_eq!(
            doc["uploads_on_reused_forms"],
            rows - contacts,
            "{flag}: {doc}"
        );
        assert_eq!(doc["form_reuse"], "on", "{flag}: {doc}");
        assert_eq!(count(&emu.requests(), FORMS), contacts as u64, "{flag}");
        assert!(!stderr.contains(NOT_REUSED), "{flag}: {stderr}");
        for a in emu.state()["attachments"].as_array().unwrap() {
            let key = a["key"].as_str().unwrap();
            let stamp = key.split('/').nth(1).unwrap();
            assert!(
                stamp.len() == 19 && stamp.parse::<i64>().is_ok(),
                "{flag}: {key}"
            );
        }
        assert_rerun_sends_nothing(&emu, &manifest);
        // The emulator answered as the flag says.
        let form = emu.form(ADA);
        match flag {
            "--timestamp-ms" => assert_eq!(
                form["timestamp"].as_i64().unwrap().to_string().len(),
                13,
                "{form}"
            ),
            _ => assert!(form.get("timestamp").is_none(), "{form}"),
        }
    }
}

#[test]
fn single_use_forms_tell_forms_by_a_millisecond_timestamp_too() {
    // Step 3 refuses a second key made from one form's millisecond timestamp: reuse is turned
    // off, and every row is still done once.
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--single-use-forms",
        "--timestamp-ms",
    ]);
    let (_s, manifest) = sample_copy();
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_eq!(doc["form_reuse"], "turned_off", "{doc}");
    assert_eq!(doc["failures"], Value::Array(vec![]), "{doc}");
    assert!(
        count(&emu.requests(), "POST /api/v3/attachments 400") >= 1,
        "{:?}",
        emu.requests()
    );
}

#[test]
fn forms_that_expire_mid_reuse_are_renewed_and_no_row_fails() {
    // The 4th upload arrives late: the emulator's clock first moves past every form's life
    // (`--form-ttl` + 1 s), so the reused form it carries has expired. It is renewed when S3
    // refuses it, not counted as a failure. (Files of a few KB: S3 refuses an expired form before
    // it reads the file, and a large file's upload could then also meet a closed connection.)
    let s = Scratch::new();
    let (seed, manifest) = generated(&s, 40);
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-at",
            "POST /{bucket}/:4:late",
        ],
        None,
    );
    // One row at a time: the 4th upload is the first contact's 4th file (of 4), on its reused
    // form.
    let (code, doc, stderr) = run_json(&emu, &manifest, &["-v", "--concurrency", "1"]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
    assert!(
        stderr.contains("the shared upload form expired; getting a new one"),
        "{stderr}"
    );
    assert_eq!(
        doc["retries"], 0,
        "a refused reused form is no failure: {doc}\n{stderr}"
    );
    assert_eq!(doc["failures"], Value::Array(vec![]), "{doc}");
    let requests = emu.requests();
    assert!(count(&requests, "POST /{bucket}/ 403") >= 1, "{requests:?}");
    // A form per contact (10), and the renewed one.
    assert_eq!(count(&requests, FORMS), 11, "renewed: {requests:?}");
    assert_eq!(doc["form_reuse"], "on", "{doc}");
}

#[test]
fn a_short_form_life_renews_forms_as_the_run_goes_and_no_row_fails() {
    // 61 s of life leaves 1 s of reuse after the 60 s margin: forms are renewed as the run goes
    // (how often depends on the machine's speed; what is asserted does not).
    let s = Scratch::new();
    let (seed, manifest) = generated(&s, 60);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off", "--form-ttl", "61"], None);
    let (code, doc, _) = run_json(&emu, &manifest, &["--concurrency", "4"]);
    assert_eq!(code, 0, "{doc}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
    assert_eq!(doc["retries"], 0, "{doc}");
    assert_eq!(
        count(&emu.requests(), "POST /{bucket}/ 403"),
        0,
        "no form was used past its margin"
    );
}

#[test]
fn single_use_forms_turn_reuse_off_for_good_and_every_row_is_done_once() {
    let s = Scratch::new();
    let (seed, full) = generated(&s, 80);
    // The first 60 rows now, the other 20 in a later run of the same state file.
    let text = std::fs::read_to_string(&full).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let manifest = s.path("manifest.csv");
    std::fs::write(&manifest, lines[..61].join("\n") + "\n").unwrap();
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off", "--single-use-forms"], None);
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_objects_are_the_files(&emu, &manifest);
    assert_eq!(doc["form_reuse"], "turned_off", "{doc}");
    let why = doc["form_reuse_turned_off"].as_str().unwrap();
    assert!(
        why.contains("step 3 refused a key made from a reused"),
        "{why}"
    );
    assert_eq!(doc["failures"], Value::Array(vec![]), "{doc}");
    assert_eq!(
        stderr
            .matches("form reuse is off for the rest of this run")
            .count(),
        1,
        "said once: {stderr}"
    );
    let refused = count(&emu.requests(), "POST /api/v3/attachments 400");
    assert!(refused >= 1, "{:?}", emu.requests());

    // A later run of this state file: one form per file from the start (its dry run counts two
    // calls per file), nothing refused.
    std::fs::write(&manifest, &text).unwrap();
    let (code, plan, _) = run_json(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["api_calls"], 40, "{plan}");
    let (code, doc, stderr) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert!(
        stderr.contains("form reuse is off for this state file"),
        "{stderr}"
    );
    assert_eq!(doc["form_reuse"], "off", "{doc}");
    assert_eq!(doc["done_now"], 20, "{doc}");
    assert_eq!(doc["forms_fetched"], 20, "{doc}");
    assert_eq!(doc["uploads_on_reused_forms"], 0, "{doc}");
    assert_eq!(
        count(&emu.requests(), "POST /api/v3/attachments 400"),
        refused,
        "nothing more refused"
    );
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn form_reuse_off_is_one_form_per_file_and_the_resume_command_keeps_it() {
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:3:error"]);
    let (_s, manifest) = sample_copy();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--form-reuse", "off", "--retries", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("--form-reuse off"), "{stdout}");
    assert!(
        stdout.contains(
            "upload forms:       20 fetched, 0 uploads on a reused form (form reuse off)"
        ),
        "{stdout}"
    );
    assert_eq!(count(&emu.requests(), FORMS), 20);
}

#[test]
fn the_dry_run_counts_one_form_per_contact_with_reuse_and_one_per_file_without() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    let contacts = contacts(&manifest);
    let (code, plan, _) = run_json(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["api_calls"], 20 + contacts, "{plan}");
    let (code, plan, _) = run_json(&emu, &manifest, &["--dry-run", "--form-reuse", "off"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["api_calls"], 40, "{plan}");
    emu.run_cmd(&manifest)
        .arg("--dry-run")
        .assert()
        .code(0)
        .stdout(predicates::str::contains(
            "upload forms:                one per contact",
        ));
    // A form too short-lived to reuse: the quota check's form shows it.
    let short = Emulator::start(&["--rate-limit", "off", "--form-ttl", "30"]);
    let (code, plan, _) = run_json(&short, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["api_calls"], 40, "{plan}");
}

#[test]
fn an_s3_that_refuses_reused_forms_turns_reuse_off_and_every_row_is_done_once() {
    use crate::common::hostile::{Answer, Hostile};
    // In front of the emulator: S3 takes one upload per form handed out, and refuses any other
    // as a policy condition failure (S3's `AccessDenied`), as a stricter S3 might.
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let fresh = std::sync::Mutex::new(0u32);
    let server = Hostile::start(Some(&emu), move |call| {
        let mut fresh = fresh.lock().unwrap();
        if call.seen.path.contains("/attachments/s3_form") {
            *fresh += 1;
        } else if call.seen.is_s3() {
            if *fresh == 0 {
                return Answer::plain(
                    403,
                    "application/xml",
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Invalid according to Policy: Policy Condition failed</Message></Error>",
                );
            }
            *fresh -= 1;
        }
        Answer::Pass
    });
    let (_s, manifest) = sample_copy();
    let out = server
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{doc}\n{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_eq!(doc["form_reuse"], "turned_off", "{doc}");
    let why = doc["form_reuse_turned_off"].as_str().unwrap();
    assert!(
        why.contains("S3 refused an upload made with a form that carried another"),
        "{why}"
    );
    assert_eq!(doc["retries"], 0, "the refusal is no failure: {doc}");
    // One refusal: the second upload, on the first form; then one form per file.
    let refused = server.requests().iter().filter(|r| r.is_s3()).count() - 20;
    assert_eq!(refused, 1, "{doc}");
    assert_eq!(doc["uploads_on_reused_forms"], 1, "{doc}");
}

/// A hostile server in front of the emulator that answers the first step 3 with a `400` whose
/// `errors` name `field`, and passes everything else on.
fn refusing_the_first_attach(
    emu: &Emulator,
    field: &'static str,
) -> crate::common::hostile::Hostile {
    use crate::common::hostile::{Answer, Hostile};
    let refused = std::sync::atomic::AtomicBool::new(false);
    Hostile::start(Some(emu), move |call| {
        let attach = call.seen.method == "POST" && call.seen.path == "/api/v3/attachments";
        if attach && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let body = serde_json::json!({
                "status": 400, "message": "Invalid request data",
                "error_name": "invalid_request_data", "error_message": "Invalid request data",
                "errors": {field: "was refused"}, "timestamp": 1_764_496_800, "data": {},
            });
            return Answer::plain(400, "application/json", &body.to_string());
        }
        Answer::Pass
    })
}

#[test]
fn a_refused_key_is_uploaded_again_with_a_fresh_form_even_when_no_form_of_ours_was_shared() {
    // A server that tells forms by their timestamp may refuse a key because another migration
    // reused a form of the same second: the row's own key shares nothing in its state file.
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = refusing_the_first_attach(&emu, "key");
    let (_s, manifest) = one_row();
    let out = server
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_exactly_once(&emu.state(), &manifest);
    assert_eq!(
        count(&emu.requests(), "POST /{bucket}/ 201"),
        2,
        "uploaded again"
    );
    // Nothing of this state file was shared: reuse stays on.
    assert_eq!(doc["form_reuse"], "on", "{doc}");
}

#[test]
fn a_refusal_that_names_another_field_is_not_uploaded_again() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = refusing_the_first_attach(&emu, "contact_id");
    let (_s, manifest) = sample_copy();
    let out = server
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json", "--concurrency", "1"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["failed_permanent"], 1, "{doc}");
    assert_eq!(doc["failures"][0]["kind"], "api_rejected", "{doc}");
    // One upload per row: the refused row's file was not sent again.
    assert_eq!(count(&emu.requests(), "POST /{bucket}/ 201"), 20);
    assert_eq!(doc["form_reuse"], "on", "{doc}");
}

/// One row whose first attach takes effect and whose answer is lost (a 502 from the proxy); the
/// record's first listing after it lags (no attachment yet; the first of all is its snapshot,
/// before the attach), and the run does not wait for it (`--settle-window 0`); the attach sent
/// again is answered `status` with `errors`. Returns the emulator, the run's exit code, summary
/// and stderr.
fn attached_then_refused(status: u16, errors: Value) -> (Emulator, i32, Value, String) {
    use crate::common::hostile::{Answer, Hostile};
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1:drop-after"]);
    let counts = std::sync::Mutex::new((0u32, 0u32));
    let server = Hostile::start(Some(&emu), move |call| {
        let mut counts = counts.lock().unwrap();
        let (attaches, listings) = &mut *counts;
        if call.seen.method == "POST" && call.seen.path == "/api/v3/attachments" {
            *attaches += 1;
            if *attaches == 2 {
                let body = serde_json::json!({
                    "status": status, "message": "Refused",
                    "error_name": "invalid_request_data", "errors": errors, "data": {},
                });
                return Answer::plain(status, "application/json", &body.to_string());
            }
        } else if call.seen.method == "GET" && call.seen.path.starts_with("/api/v3/notes/") {
            *listings += 1;
            if *listings == 2 {
                let body = serde_json::json!({
                    "status": 0, "message": "OK",
                    "data": {"note": {"id": "064132394d9b497f536b2bb7", "attachments": []}},
                });
                return Answer::plain(200, "application/json", &body.to_string());
            }
        }
        Answer::Pass
    });
    let (_s, manifest) = one_row();
    let out = server
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json", "-v", "--settle-window", "0"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_exactly_once(&emu.state(), &manifest);
    assert_eq!(
        count(&emu.requests(), "POST /{bucket}/ 201"),
        1,
        "not uploaded again"
    );
    (emu, out.status.code().unwrap(), doc, stderr)
}

#[test]
fn a_refused_key_that_is_attached_already_is_adopted_not_uploaded_again() {
    // "has already been taken", naming the key: the row must not be uploaded and attached a
    // second time.
    let (_emu, code, doc, stderr) =
        attached_then_refused(400, serde_json::json!({"key": "has already been taken"}));
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert!(stderr.contains("step 3 refused the key"), "{stderr}");
    assert!(
        stderr.contains("the record already holds this upload"),
        "{stderr}"
    );
}

#[test]
fn a_conflict_for_a_key_attached_already_settles_the_row_as_done() {
    // A 409 (a proxy that sent the attach twice, say): the record is asked before the row fails,
    // so the row is done, not failed for good (a fix manifest of failed rows would attach it
    // again).
    let (_emu, code, doc, stderr) =
        attached_then_refused(409, serde_json::json!({"base": "conflict"}));
    assert_eq!(code, 0, "{doc}\n{stderr}");
    assert_eq!(doc["failures"], Value::Array(vec![]), "{doc}");
    assert!(
        stderr.contains("the record already holds this upload"),
        "{stderr}"
    );
}

#[test]
fn a_huge_error_answer_makes_a_short_message_in_the_state_file() {
    use crate::common::hostile::{Answer, Hostile};
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let server = Hostile::start(Some(&emu), |call| {
        if call.seen.method == "POST" && call.seen.path == "/api/v3/attachments" {
            let mut errors = serde_json::Map::new();
            errors.insert("contact_id".into(), Value::from("x".repeat(1 << 20)));
            for i in 0..5000 {
                errors.insert(format!("field{i}"), Value::from("is wrong"));
            }
            let body = serde_json::json!({
                "status": 400, "message": "m".repeat(100_000),
                "error_name": "invalid_request_data", "errors": errors, "data": {},
            });
            return Answer::plain(400, "application/json", &body.to_string());
        }
        Answer::Pass
    });
    let (s, manifest) = one_row();
    let out = server
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.len() + out.stderr.len() < 8192,
        "{} bytes",
        out.stdout.len()
    );
    let file = opcrm_import::checkpoint::StateFile::open(&s.path("manifest.opcrm.sqlite")).unwrap();
    let rows = file.load_rows().wait().unwrap();
    let message = rows[0].last_error.as_deref().unwrap();
    assert!(message.len() < 4096, "{} bytes", message.len());
    assert!(message.contains("and 4991 more"), "{message}");
}
