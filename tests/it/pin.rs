//! The `pin` column: each pin row's attachment pinned to its contact exactly once (after lost
//! answers and kills too), nothing sent again by a rerun, a pin added to a done manifest made by
//! a rerun, a pin refused for good reported as the row's pin (its attachment kept), and `check`
//! naming a bad value with its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::emulator::{API_KEY, Emulator, USER_ID, curl};
use crate::common::{ID, Scratch, bin, check_json, json_stdout, problems};

/// The route the emulator counts pins by.
const PIN: &str = "PATCH /api/v3/attachments/{id}/pin";
/// The route the emulator counts reads of a contact's pinned attachments by.
const PINNED_LIST: &str = "GET /api/v3/contacts/{id}/pinned_attachments";

/// The sample manifest with a `pin` column: `pins[i]` for its row `i` (empty past the end).
fn sample_with_pins(pins: &[&str]) -> (Scratch, PathBuf) {
    let (s, manifest) = crate::run::sample_copy();
    with_pins(&manifest, pins);
    (s, manifest)
}

/// Writes `manifest` again with a `pin` column (added, or in place of the one it has last):
/// `pins[i]` for row `i`, empty past the end. (No pin value holds a comma: the last field of a
/// manifest with the column is its pin.)
fn with_pins(manifest: &Path, pins: &[&str]) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let had = text.lines().next().unwrap().ends_with(",pin");
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let kept = match had {
            true => line.rsplit_once(',').unwrap().0,
            false => line,
        };
        let value = match i {
            0 => "pin",
            i => pins.get(i - 1).copied().unwrap_or(""),
        };
        out.push_str(&format!("{kept},{value}\n"));
    }
    std::fs::write(manifest, out).unwrap();
}

/// `run --rate off --json` with `args`: its exit code and summary.
fn run(emu: &Emulator, manifest: &Path, args: &[&str]) -> (i32, Value) {
    let out = emu
        .run_cmd(manifest)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), json_stdout(&out))
}

/// Requests the emulator counted on `route` (`PATCH /api/v3/...`), by what became of them:
/// `200`, `404`, `dropped` ...
fn seen(emu: &Emulator, route: &str) -> BTreeMap<String, u64> {
    emu.requests()
        .into_iter()
        .filter_map(|(k, n)| Some((k.strip_prefix(route)?.trim().to_string(), n)))
        .collect()
}

fn count(seen: &BTreeMap<String, u64>, outcome: &str) -> u64 {
    seen.get(outcome).copied().unwrap_or(0)
}

/// Each recorded row of `manifest`'s state file: (line, contact, attachment id).
fn recorded(manifest: &Path) -> Vec<(u64, String, Option<String>)> {
    let conn = rusqlite::Connection::open(manifest.with_extension("opcrm.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT line, contact_id, attachment_id FROM rows ORDER BY line")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The ids of the attachments pinned to `contact`, as the API lists them.
fn pinned_of(emu: &Emulator, contact: &str) -> BTreeSet<String> {
    let reply = emu.get(&format!(
        "/contacts/{contact}/pinned_attachments?per_page=100"
    ));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["data"]["pinned_attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// The attachment ids the rows of `manifest` whose `pin` is on hold, by contact; and every
/// contact of the manifest (with or without pins).
fn pin_rows_by_contact(manifest: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let pins: BTreeMap<u64, bool> = crate::run::manifest_rows(manifest)
        .iter()
        .map(|r| (r.line, r.pin))
        .collect();
    let mut by_contact: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (line, contact, attachment) in recorded(manifest) {
        let entry = by_contact.entry(contact).or_default();
        if pins[&line] {
            entry.insert(attachment.expect("a done row has its attachment"));
        }
    }
    by_contact
}

/// Every contact's pinned attachments are exactly the attachments of its pin rows.
fn assert_pinned_as_the_manifest_says(emu: &Emulator, manifest: &Path) {
    for (contact, wanted) in pin_rows_by_contact(manifest) {
        assert_eq!(pinned_of(emu, &contact), wanted, "contact {contact}");
    }
}

/// Values of every accepted spelling: 11 of the sample's 20 rows are pinned.
const PINS: [&str; 20] = [
    "true", "", "yes", "no", "1", "0", "TRUE", "false", "Yes", "", "1", "1", "", "0", "true",
    "yes", "no", "", "1", "true",
];
const PINNED_ROWS: u64 = 11;

#[test]
fn pinned_attachments_are_listed_for_their_contacts_unpinned_ones_are_not_and_a_rerun_sends_nothing()
 {
    let (_s, manifest) = sample_with_pins(&PINS);
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["done_now"], 20, "{doc:#}");
    assert_eq!(doc["pinned"], PINNED_ROWS, "{doc:#}");
    let pins = seen(&emu, PIN);
    assert_eq!(count(&pins, "200"), PINNED_ROWS, "one pin each: {pins:?}");
    assert!(
        seen(&emu, PINNED_LIST).is_empty(),
        "no answer was lost: nothing to read"
    );
    assert_pinned_as_the_manifest_says(&emu, &manifest);

    // A rerun of the done manifest sends no request at all.
    let requests = emu.requests();
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["done_before"], 20, "{doc:#}");
    assert_eq!((&doc["pinned"], &doc["api_calls"]), (&json!(0), &json!(0)));
    assert_eq!(emu.requests(), requests, "nothing sent");
}

#[test]
fn a_pin_added_to_a_done_manifest_is_made_by_a_rerun_and_nothing_else_is_sent() {
    let (_s, manifest) = crate::run::sample_copy();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    assert_eq!(run(&emu, &manifest, &[]).0, 0);
    assert!(seen(&emu, PIN).is_empty());
    // Three rows get a pin, of two contacts.
    with_pins(
        &manifest,
        &[
            "", "yes", "", "", "", "", "1", "", "", "", "", "", "", "true",
        ],
    );
    let requests = emu.requests();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("  done before:        17\n"), "{text}");
    assert!(text.contains("  done in this run:   3\n"), "{text}");
    assert!(text.contains("  pinned:             3\n"), "{text}");
    let mut expected = requests.clone();
    *expected.entry(format!("{PIN} 200")).or_default() += 3;
    assert_eq!(emu.requests(), expected, "three pins and nothing else");
    assert_pinned_as_the_manifest_says(&emu, &manifest);
    // Done, pins and all: nothing more.
    let requests = emu.requests();
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!((code, &doc["done_before"]), (0, &json!(20)));
    assert_eq!(emu.requests(), requests);
}

#[test]
fn a_lost_pin_answer_is_settled_from_the_contacts_pinned_list_without_a_second_pin_where_it_took_effect()
 {
    // (the answer lost after or before the pin took effect, retries in the run): the PATCHes the
    // emulator answered and the reads of the pinned list (in the run, or in a rerun).
    for (fault, retries, answered) in [
        ("drop-after", "3", PINNED_ROWS - 1),
        ("drop-before", "3", PINNED_ROWS),
        ("drop-after", "0", PINNED_ROWS - 1),
        ("drop-before", "0", PINNED_ROWS),
    ] {
        let case = format!("{fault}, --retries {retries}");
        let (_s, manifest) = sample_with_pins(&PINS);
        let emu = Emulator::with_faults(&[&format!("{PIN}:3:{fault}")]);
        let (code, doc) = run(&emu, &manifest, &["--retries", retries]);
        if retries == "0" {
            // No retry in the run: the row's pin fails (retryable), its attachment done; the
            // rerun reads the contact's pinned attachments before it pins anything again.
            assert_eq!(code, 4, "{case}: {doc:#}");
            let failure = &doc["failures"][0];
            assert_eq!(failure["kind"], "pin_failed", "{case}: {doc:#}");
            assert_eq!(failure["state"], "done", "{case}: {doc:#}");
            assert_eq!(failure["retryable"], true, "{case}: {doc:#}");
            assert_eq!(doc["pinned"], PINNED_ROWS - 1, "{case}: {doc:#}");
            let attaches_before = emu.requests();
            let (code, doc) = run(&emu, &manifest, &[]);
            assert_eq!(code, 0, "{case}: {doc:#}");
            assert_eq!(doc["pinned"], 1, "{case}: {doc:#}");
            assert_eq!(doc["done_now"], 1, "{case}: {doc:#}");
            let attaches =
                |r: &BTreeMap<String, u64>| r.get("POST /api/v3/attachments 201").copied();
            assert_eq!(
                attaches(&emu.requests()),
                attaches(&attaches_before),
                "{case}"
            );
        } else {
            assert_eq!(code, 0, "{case}: {doc:#}");
            assert_eq!(doc["pinned"], PINNED_ROWS, "{case}: {doc:#}");
        }
        let pins = seen(&emu, PIN);
        assert_eq!(count(&pins, "dropped"), 1, "{case}: {pins:?}");
        assert_eq!(count(&pins, "200"), answered, "{case}: {pins:?}");
        assert_eq!(count(&seen(&emu, PINNED_LIST), "200"), 1, "{case}");
        assert_pinned_as_the_manifest_says(&emu, &manifest);
        // Settled: a rerun sends nothing.
        let requests = emu.requests();
        assert_eq!(run(&emu, &manifest, &[]).0, 0, "{case}");
        assert_eq!(emu.requests(), requests, "{case}");
    }
}

#[test]
fn a_pin_refused_for_good_keeps_the_attachment_is_reported_and_is_tried_again_only_with_retry_failed()
 {
    let (_s, manifest) = crate::run::sample_copy();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    assert_eq!(run(&emu, &manifest, &[]).0, 0);
    // Line 3's attachment is deleted by someone; then lines 2 and 3 get a pin.
    let (_, _, gone) = recorded(&manifest)
        .into_iter()
        .find(|(line, _, _)| *line == 3)
        .unwrap();
    let gone = gone.unwrap();
    let deleted = curl(
        &[
            "-X".into(),
            "DELETE".into(),
            format!("{}/attachments/{gone}", emu.api),
        ],
        Some((USER_ID, API_KEY)),
    );
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    with_pins(&manifest, &["true", "true"]);
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("line 3: files/contract-signed.pdf failed for good: the file is attached"),
        "{text}"
    );
    assert!(
        text.contains("rerun of this state file") && text.contains("--retry-failed"),
        "{text}"
    );
    assert_eq!(count(&seen(&emu, PIN), "404"), 1);
    assert_eq!(count(&seen(&emu, PIN), "200"), 1, "line 2 is pinned");

    // Left alone by a plain rerun (nothing sent), reported again.
    let requests = emu.requests();
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 1, "{doc:#}");
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{doc:#}");
    let f = &failures[0];
    assert_eq!(
        json!([f["line"], f["state"], f["kind"], f["retryable"]]),
        json!([3, "done", "pin_failed", false]),
        "{doc:#}"
    );
    assert_eq!(doc["failed_permanent"], 1, "{doc:#}");
    assert_eq!(emu.requests(), requests, "nothing sent");
    // `--retry-failed` tries it again: its pinned list read first (the pin may have been sent),
    // then the PATCH, refused again.
    let (code, doc) = run(&emu, &manifest, &["--retry-failed"]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(count(&seen(&emu, PINNED_LIST), "200"), 1);
    assert_eq!(count(&seen(&emu, PIN), "404"), 2);
    // The file of line 3 is attached still: nothing was uploaded or attached again.
    assert_eq!(
        emu.requests().get("POST /api/v3/attachments 201").copied(),
        Some(20)
    );
}

#[test]
fn the_failed_report_keeps_the_pin_column_so_that_its_fix_file_pins_the_rows_it_fixes() {
    let (s, manifest) = sample_with_pins(&["true"; 20]);
    // Line 15's file is missing: rejected, the others done and pinned.
    let file = s.path("files/handover.docx");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (code, doc) = run(&emu, &manifest, &["--skip-invalid"]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["pinned"], 19, "{doc:#}");
    let fix = s.path("fix.csv");
    let out = bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&fix).unwrap();
    let mut lines = report.lines();
    assert_eq!(
        lines.next(),
        Some("file,contact_id,reference_type,reference_id,name,pin,error_kind,error")
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("files/handover.docx,") && row.contains(",true,file_missing,"),
        "{row}"
    );
    // Fixed, the fix file (a state file of its own) attaches and pins that row.
    std::fs::write(&file, bytes).unwrap();
    let (code, doc) = run(&emu, &fix, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!((&doc["done_now"], &doc["pinned"]), (&json!(1), &json!(1)));
    assert_eq!(count(&seen(&emu, PIN), "200"), 20);
}

/// Every request the emulator has seen (answered or not), and the pins it answered.
fn requests_and_pins(emu: &Emulator) -> (u64, u64) {
    let requests = emu.requests();
    let pins = requests.get(&format!("{PIN} 200")).copied().unwrap_or(0);
    (requests.values().sum(), pins)
}

/// `run` of `manifest` against `emu` as a child process to kill: no retries (a lost answer
/// fails its row, for the next run to settle).
fn spawn_run(emu: &Emulator, manifest: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .env("ONEPAGECRM_API_URL", &emu.api)
        .env("ONEPAGECRM_USER_ID", USER_ID)
        .env("ONEPAGECRM_API_KEY", API_KEY)
        .env("OPCRM_SETTLE_WINDOW", "1")
        .arg("run")
        .arg(manifest)
        .args([
            "--no-progress",
            "--rate",
            "off",
            "--concurrency",
            "4",
            "--retries",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kills_at_request_counts_during_a_run_with_pins_end_with_every_pin_made_by_one_effective_pin() {
    let s = Scratch::new();
    let (seed, manifest) = crate::faults::generated(&s, 40);
    // Two rows of three are pinned.
    let pins: Vec<&str> = (0..40)
        .map(|i| if i % 3 == 2 { "" } else { "yes" })
        .collect();
    with_pins(&manifest, &pins);
    let pin_rows = pins.iter().filter(|p| !p.is_empty()).count() as u64;
    // Each request held a few milliseconds, so that a kill lands near the count it waits for
    // (the moments are told by the requests seen, whatever the machine's speed).
    let emu = Emulator::start_seeded(
        &seed,
        &["--rate-limit", "off", "--latency-ms", "3..6"],
        None,
    );
    // Killed after 5 more requests seen by the emulator, four times, then as soon as it has
    // answered one more pin, eight times (the pin's answer lost with the process, or its
    // record): the same moments on a slow or a fast machine.
    let mut kills = 0;
    for step in 1..=12u64 {
        let (requests, pinned) = requests_and_pins(&emu);
        let (target, pins_target) = match step <= 4 {
            true => (requests + 5, u64::MAX),
            false => (u64::MAX, pinned + 1),
        };
        let mut child = spawn_run(&emu, &manifest);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let (requests, pinned) = requests_and_pins(&emu);
            if requests >= target || pinned >= pins_target {
                crate::faults::signal(&child, libc::SIGKILL);
                kills += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.wait();
    }
    assert!(kills >= 6, "{kills} runs killed mid-way");

    let mut last = Value::Null;
    for _ in 0..6 {
        let (code, doc) = run(&emu, &manifest, &["--retries", "10"]);
        last = doc;
        if code == 0 {
            break;
        }
    }
    assert_eq!(last["exit_code"], 0, "{last:#}");
    let state = emu.state();
    crate::run::assert_exactly_once(&state, &manifest);
    let pins = seen(&emu, PIN);
    assert_eq!(
        count(&pins, "200"),
        pin_rows,
        "one effective pin a row: {pins:?}"
    );
    assert_eq!(pins.len(), 1, "no other answer: {pins:?}");
    assert_pinned_as_the_manifest_says(&emu, &manifest);
    // Done: a rerun sends nothing.
    let requests = emu.requests();
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!((code, &doc["done_before"]), (0, &json!(40)), "{doc:#}");
    assert_eq!(emu.requests(), requests);
}

#[test]
fn check_reports_a_bad_pin_value_with_its_line_and_the_value() {
    let s = Scratch::new();
    s.file("a.pdf", "a");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_id,pin\n\
         a.pdf,{ID},{ID},TRUE\n\
         a.pdf,{ID},{ID}0,no\n\
         a.pdf,{ID},{ID}1,maybe\n\
         a.pdf,{ID},{ID}2,\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc:#}");
    let pin_problems: Vec<_> = problems(&doc)
        .into_iter()
        .filter(|(_, _, kind)| kind != "id_format")
        .collect();
    assert_eq!(
        pin_problems,
        [(Some(4), Some("pin".to_string()), "invalid_pin".to_string())]
    );
    let text = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("error: line 4, column pin: \"maybe\" is not a pin value"),
        "{text}"
    );
}
