//! `verify`: the live account against the state file. The sample migrations run against the
//! emulator, then the account is changed through the API as a person (or another tool) would
//! change it, and `verify` must say which lines no longer hold what the state file says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::emulator::{
    API_KEY, Emulator, Reply, USER_ID, curl, tutorial_fields, tutorial_key, upload,
};
use crate::common::{Scratch, bin, json_stdout, sample_copy_of};
use opcrm_import::checkpoint::{RowState, StateFile, StoredRow};

/// Ada Lovelace, and her note that line 4 of the sample (`files/logo.png`, as `logo.png`)
/// attaches to.
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
/// Alan Turing, and his note that line 19 (`files/logo.png`, as `logo.png`) attaches to.
const ALAN: &str = "c17c79a03905746f6f8b5e3f";
const ALAN_NOTE: &str = "3254d85c188422da8b2461ee";

/// The rows of `manifest`'s state file.
fn stored_rows(manifest: &Path) -> Vec<StoredRow> {
    let state = opcrm_import::run::default_state_path(manifest);
    StateFile::open_read_only(&state)
        .unwrap()
        .load_rows()
        .unwrap()
}

/// The attachment id the state file recorded for line `line`.
fn attachment_of(manifest: &Path, line: u64) -> String {
    let rows = stored_rows(manifest);
    let row = rows.iter().find(|r| r.line == line).unwrap();
    assert_eq!(row.state, RowState::Done, "line {line}");
    row.attachment_id.clone().unwrap()
}

/// Runs `manifest` until it has finished (a fault may leave rows for a rerun).
fn run_to_the_end(emu: &Emulator, manifest: &Path) {
    for _ in 0..10 {
        let out = emu
            .run_cmd(manifest)
            .args(["--rate", "off"])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => return,
            Some(4) => continue,
            other => panic!(
                "run ended {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    panic!("ten runs did not finish {}", manifest.display());
}

/// `verify --json` of `manifest`: its exit code and document; stdout and stderr never show the
/// API key, and `--no-progress` leaves stderr empty.
fn verify(emu: &Emulator, manifest: &Path) -> (i32, Value) {
    let out = emu
        .cmd()
        .args(["verify", "--json", "--no-progress", "--rate", "off"])
        .arg(manifest)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains(API_KEY) && !stderr.contains(API_KEY));
    assert_eq!(stderr, "", "nothing on stderr with --no-progress");
    (out.status.code().unwrap(), json_stdout(&out))
}

/// `verify` for a person: its exit code and stdout.
fn verify_text(emu: &Emulator, manifest: &Path) -> (i32, String) {
    let out = emu
        .cmd()
        .args(["verify", "--no-progress", "--rate", "off"])
        .arg(manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains(API_KEY));
    (out.status.code().unwrap(), stdout)
}

/// (line, verdict) of each problem of a `verify --json` document.
fn verdicts(doc: &Value) -> Vec<(u64, String)> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let verdict = p["verdict"].as_str().unwrap().to_string();
            (p["line"].as_u64().unwrap(), verdict)
        })
        .collect()
}

/// A request sent again until the emulator answers `status` (an injected fault has no effect).
fn until(status: u16, send: impl Fn() -> Reply) -> Reply {
    for _ in 0..100 {
        let reply = send();
        if reply.status == status {
            return reply;
        }
    }
    panic!("never answered {status}");
}

/// `DELETE {path}` through the API (`/attachments/{id}`, `/notes/{id}`).
fn delete(emu: &Emulator, path: &str) {
    let url = format!("{}{path}", emu.api);
    until(200, || {
        curl(
            &["-X".to_string(), "DELETE".to_string(), url.clone()],
            Some((USER_ID, API_KEY)),
        )
    });
}

/// Steps 1 to 3 of the sample file `file` onto note `note` of `contact` as `name`, through the
/// API; the new attachment's id.
fn attach(emu: &Emulator, contact: &str, note: &str, file: &Path, name: &str) -> String {
    let form: Value = until(200, || {
        emu.get(&format!("/attachments/s3_form?contact_id={contact}"))
    })
    .json();
    let key = tutorial_key(&form, contact, name);
    until(201, || {
        upload(&emu.s3, &tutorial_fields(&form, &key, name), file, &[])
    });
    let size = std::fs::metadata(file).unwrap().len();
    let body = json!({"reference_id": note, "reference_type": "note", "contact_id": contact,
        "name": name, "key": key, "size": size});
    let reply = until(201, || emu.post("/attachments", &body));
    reply.json()["data"]["attachment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The requests of every `GET /{type}s/{id}` the emulator answered.
fn record_reads(emu: &Emulator) -> u64 {
    emu.requests()
        .iter()
        .filter(|(k, _)| {
            ["notes", "deals", "calls", "meetings"]
                .iter()
                .any(|t| k.starts_with(&format!("GET /api/v3/{t}/{{id}} ")))
        })
        .map(|(_, n)| n)
        .sum()
}

/// The sample manifest in a scratch folder, run to the end against a new emulator.
fn sample_run(emulator_args: &[&str]) -> (Emulator, Scratch, PathBuf) {
    let emu = Emulator::start(emulator_args);
    let (s, manifest) = sample_copy_of("manifest.csv");
    run_to_the_end(&emu, &manifest);
    (emu, s, manifest)
}

#[test]
fn after_a_run_of_the_sample_verify_exits_0_reading_each_record_once() {
    let (emu, _s, manifest) = sample_run(&["--rate-limit", "off"]);
    let rows = stored_rows(&manifest);
    let records: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.reference_type.as_str(), r.reference_id.as_str()))
        .collect();
    assert!(records.len() < rows.len(), "two rows share a record");
    let before = record_reads(&emu);
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["ok"], true);
    assert_eq!(verdicts(&doc), []);
    let counts = &doc["counts"];
    assert_eq!(counts["rows"], rows.len());
    assert_eq!((&counts["done"], &counts["ok"]), (&json!(20), &json!(20)));
    assert_eq!(counts["records"], records.len());
    assert_eq!(
        record_reads(&emu) - before,
        records.len() as u64,
        "each record read once, not once per row"
    );
    assert_eq!(counts["api_calls"], records.len());
    let (code, text) = verify_text(&emu, &manifest);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("20 done: 20 ok, 0 missing"), "{text}");
    assert!(text.contains("Result:     ok"), "{text}");
}

#[test]
fn an_attachment_deleted_through_the_api_makes_its_line_missing() {
    let (emu, _s, manifest) = sample_run(&["--rate-limit", "off"]);
    delete(
        &emu,
        &format!("/attachments/{}", attachment_of(&manifest, 4)),
    );
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(verdicts(&doc), [(4, "missing".to_string())]);
    let problem = &doc["problems"][0];
    assert_eq!(problem["file"], "files/logo.png");
    assert_eq!(
        (&problem["reference_type"], &problem["reference_id"]),
        (&json!("note"), &json!(ADA_NOTE))
    );
    assert_eq!(doc["counts"]["ok"], 19);
    let (code, text) = verify_text(&emu, &manifest);
    assert_eq!(code, 1);
    let problem_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(
        problem_lines,
        [format!(
            "line 4: missing: files/logo.png (note {ADA_NOTE}): attachment {} is not on the record",
            attachment_of(&manifest, 4)
        )]
    );
}

#[test]
fn an_extra_attachment_of_a_rows_name_and_size_is_a_duplicate_of_that_line() {
    let (emu, s, manifest) = sample_run(&["--rate-limit", "off"]);
    let logo = s.path("files/logo.png");
    let extra = attach(&emu, ADA, ADA_NOTE, &logo, "logo.png");
    // Of another size, or another name: someone's other file, no duplicate.
    attach(
        &emu,
        ADA,
        ADA_NOTE,
        &s.path("files/org-chart.svg"),
        "logo.png",
    );
    attach(&emu, ADA, ADA_NOTE, &logo, "logo (copy).png");
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(verdicts(&doc), [(4, "duplicate".to_string())]);
    assert_eq!(doc["problems"][0]["others"], json!([extra]));
    assert_eq!(
        doc["duplicates"],
        json!([{"attachment_id": extra, "name": "logo.png",
            "size": std::fs::metadata(&logo).unwrap().len(),
            "reference_type": "note", "reference_id": ADA_NOTE, "lines": [4]}])
    );
    // Taken away again, the record is as the state file says.
    delete(&emu, &format!("/attachments/{extra}"));
    assert_eq!(verify(&emu, &manifest).0, 0);
}

#[test]
fn a_created_note_deleted_through_the_api_is_reported_with_its_rows() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy_of("notes.csv");
    run_to_the_end(&emu, &manifest);
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 0, "{doc:#}");
    let created = doc["counts"]["notes"]["created"].as_u64().unwrap();
    assert!(created > 1, "{doc:#}");
    assert_eq!(doc["counts"]["notes"]["ok"], created);
    // The note the first row attaches to, and every line that attaches to it.
    let rows = stored_rows(&manifest);
    let note = rows
        .iter()
        .find(|r| r.line == 2)
        .unwrap()
        .reference_id
        .clone();
    let lines: Vec<u64> = rows
        .iter()
        .filter(|r| r.reference_id == note)
        .map(|r| r.line)
        .collect();
    assert!(lines.len() > 1, "{lines:?}");
    delete(&emu, &format!("/notes/{note}"));
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        doc["notes"],
        json!([{"note_id": note, "contact_id": ADA, "verdict": "missing", "lines": lines,
            "detail": "the note is gone (the API answered 404)"}])
    );
    let missing: Vec<(u64, String)> = lines.iter().map(|l| (*l, "missing".into())).collect();
    assert_eq!(verdicts(&doc), missing, "its files went with it");
    assert_eq!(doc["counts"]["notes"]["ok"], created - 1);
    assert_eq!(doc["counts"]["notes"]["missing"], 1);
}

#[test]
fn under_faults_verify_retries_and_gives_the_same_verdicts() {
    let faults = [
        "--rate-limit",
        "off",
        "--fault-rate",
        "0.3",
        "--fault-seed",
        "7",
    ];
    let (emu, s, manifest) = sample_run(&faults);
    delete(
        &emu,
        &format!("/attachments/{}", attachment_of(&manifest, 4)),
    );
    // Line 19 puts `files/logo.png` on Alan's note as `logo.png`.
    attach(&emu, ALAN, ALAN_NOTE, &s.path("files/logo.png"), "logo.png");
    let expected = [(4, "missing".to_string()), (19, "duplicate".to_string())];
    let mut retries = 0;
    for _ in 0..2 {
        let (code, doc) = verify(&emu, &manifest);
        assert_eq!(code, 1, "{doc:#}");
        assert_eq!(verdicts(&doc), expected, "{doc:#}");
        assert_eq!(doc["unread"], json!([]));
        assert_eq!(doc["counts"]["ok"], 18);
        retries += doc["counts"]["retries"].as_u64().unwrap();
    }
    // 38 reads at 0.3: all of them answered at once would be a one-in-a-million draw.
    assert!(retries > 0, "the faults were met and retried");
}

#[test]
fn json_lists_every_problem_with_the_counts_and_rows_not_done_are_not_verified() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy_of("manifest.csv");
    // The sample, and a last row whose file is missing: rejected with --skip-invalid.
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!("files/not-there.pdf,{ADA},note,{ADA_NOTE},\n"));
    std::fs::write(&manifest, text).unwrap();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--skip-invalid"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert!(
        matches!(code, 0 | 1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    delete(
        &emu,
        &format!("/attachments/{}", attachment_of(&manifest, 2)),
    );
    let extra = attach(&emu, ADA, ADA_NOTE, &s.path("files/logo.png"), "logo.png");
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        verdicts(&doc),
        [(2, "missing".to_string()), (4, "duplicate".to_string())]
    );
    let counts = &doc["counts"];
    let expected = json!({"rows": 21, "done": 20, "ok": 18, "missing": 1, "changed": 0,
        "duplicate": 1, "not_checked": 0, "not_done": {"rejected": 1},
        "notes": {"created": 0, "ok": 0, "missing": 0, "changed": 0, "not_checked": 0}});
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&counts[k], v, "{k}: {doc:#}");
    }
    assert_eq!(doc["duplicates"][0]["attachment_id"], extra);
    assert_eq!(doc["notes"], json!([]));
    assert_eq!(doc["ok"], false);
    let keys: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let documented = [
        "counts",
        "duplicates",
        "manifest",
        "notes",
        "ok",
        "problems",
        "state",
        "unread",
    ];
    assert_eq!(keys, documented.into_iter().collect::<BTreeSet<_>>());
    let (_, text) = verify_text(&emu, &manifest);
    let shown: BTreeMap<&str, usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix("line "))
        .map(|l| (l.split(':').nth(1).unwrap().trim(), 1))
        .collect();
    assert_eq!(shown, BTreeMap::from([("duplicate", 1), ("missing", 1)]));
    assert!(text.contains("Not done:   1 (1 rejected)"), "{text}");
}

#[test]
fn verify_needs_a_state_file_and_credentials_and_refuses_another_manifests_state() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy_of("manifest.csv");
    let out = emu.cmd().arg("verify").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no state file yet");
    run_to_the_end(&emu, &manifest);
    let out = bin().arg("verify").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "no credentials");
    let other = s.file("other.csv", std::fs::read(&manifest).unwrap());
    let state = opcrm_import::run::default_state_path(&manifest);
    let out = emu
        .cmd()
        .args(["verify", "--json", "--state"])
        .arg(&state)
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc = json_stdout(&out);
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("belongs to the manifest"),
        "{doc}"
    );
}

#[test]
fn records_that_cannot_be_read_are_named_and_exit_3_and_refused_credentials_stop_it() {
    let (emu, _s, manifest) = sample_run(&["--rate-limit", "off"]);
    // Nothing listens on port 1: every read fails, and is not retried.
    let out = emu
        .cmd()
        .env("ONEPAGECRM_API_URL", "http://127.0.0.1:1/api/v3")
        .args([
            "verify",
            "--json",
            "--no-progress",
            "--rate",
            "off",
            "--retries",
            "0",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc = json_stdout(&out);
    let unread = doc["unread"].as_array().unwrap();
    assert_eq!(
        unread.len() as u64,
        doc["counts"]["records"].as_u64().unwrap()
    );
    assert_eq!(doc["counts"]["not_checked"], 20);
    assert_eq!(
        (&doc["counts"]["ok"], &doc["ok"]),
        (&json!(0), &json!(false))
    );
    assert_eq!(
        verdicts(&doc),
        [],
        "nothing is called missing that was not read"
    );
    let lines: Vec<u64> = unread
        .iter()
        .flat_map(|u| {
            u["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 20, "every line once: {doc:#}");
    let out = emu
        .cmd()
        .env("ONEPAGECRM_API_KEY", "not-the-key-4217")
        .args(["verify", "--no-progress", "--rate", "off"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    let all = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    assert!(!all.contains("not-the-key-4217"), "{all}");
}

#[test]
fn verify_has_help_with_an_example() {
    let out = bin().args(["verify", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example: opcrm-import verify"), "{help}");
}
