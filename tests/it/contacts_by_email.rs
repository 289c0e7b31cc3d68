//! Contacts by email (`contact_email`): looked up once per distinct email, through the rate
//! limit, throttle gate and retries; not found, ambiguous and malformed emails reported with
//! their lines and kinds; rows by email uploaded exactly once; a rerun sends nothing.

use std::collections::{BTreeMap, HashMap};

use predicates::str::contains;
use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{ID, Scratch, bin, check_json, problems, sample_copy_of, samples};
use crate::run::{manifest_rows, md5_hex};

const CONTACTS_OK: &str = "GET /api/v3/contacts 200";

/// The emails of the sample seed's contacts, and their ids.
fn seed_contacts() -> HashMap<String, String> {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    seed["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["email"].as_str().unwrap().to_string(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The requests other than the contact lookups.
fn not_lookups(requests: &BTreeMap<String, u64>) -> Vec<String> {
    requests
        .keys()
        .filter(|k| !k.starts_with("GET /api/v3/contacts "))
        .cloned()
        .collect()
}

fn run_json(cmd: &mut assert_cmd::Command) -> (i32, Value) {
    let out = cmd.arg("--json").output().unwrap();
    (out.status.code().unwrap(), crate::common::json_stdout(&out))
}

#[test]
fn email_sample_attaches_each_row_once_to_its_contact_and_rerun_sends_nothing() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy_of("from-another-crm.csv");
    let (code, doc) = run_json(emu.run_cmd(&manifest).args(["--rate", "off"]));
    assert_eq!(code, 0, "{doc:#}");
    let rows = manifest_rows(&manifest);
    assert_eq!(doc["done_now"], rows.len());
    assert_eq!(doc["contacts_by_email"], 4);
    assert_eq!(doc["contacts_resolved"], 4);

    // Each distinct email looked up once, whatever its letter case in the manifest.
    let requests = emu.requests();
    assert_eq!(requests[CONTACTS_OK], 4, "{requests:?}");

    // Every row's file once, on its record, under the contact its email belongs to.
    let contacts = seed_contacts();
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), rows.len());
    for row in &rows {
        assert!(
            row.contact_id.is_empty(),
            "line {}: a row by email",
            row.line
        );
        let contact = &contacts[&row.contact_email.to_lowercase()];
        // A row that creates a note (`note_text`) is on a note of its contact with that text.
        let on_its_note = |a: &Value| match &row.note {
            None => a["reference_id"] == row.reference_id.as_str(),
            Some(note) => state["records"].as_array().unwrap().iter().any(|r| {
                r["id"] == a["reference_id"]
                    && r["type"] == "note"
                    && r["contact_id"] == contact.as_str()
                    && r["text"] == note.text.as_str()
            }),
        };
        let on_record: Vec<&Value> = attachments
            .iter()
            .filter(|a| {
                on_its_note(a)
                    && a["reference_type"] == row.reference_type.unwrap().as_str()
                    && a["filename"] == row.name.as_str()
            })
            .collect();
        assert_eq!(on_record.len(), 1, "line {}: {on_record:?}", row.line);
        let a = on_record[0];
        assert_eq!(a["contact_id"], contact.as_str(), "line {}", row.line);
        assert_eq!(a["size"], std::fs::metadata(&row.path).unwrap().len());
        assert_eq!(a["md5"], md5_hex(&row.path).as_str(), "line {}", row.line);
    }

    // The rerun: no lookup, no request at all.
    let (code, doc) = run_json(emu.run_cmd(&manifest).args(["--rate", "off"]));
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["done_before"], rows.len());
    assert_eq!(doc["contacts_known"], 4);
    assert_eq!(doc["contacts_resolved"], 0);
    assert_eq!(doc["api_calls"], 0);
    assert_eq!(emu.requests(), requests, "the rerun sent requests");

    // `status` counts the contacts; the done report gives the contact each email resolved to.
    let out = bin()
        .args(["status", "--json"])
        .arg(&manifest)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["contacts_resolved"], 4);
    assert_eq!(status["rows_by_email"], rows.len());
    let out = bin()
        .args(["report", "--only", "done"])
        .arg(&manifest)
        .output()
        .unwrap();
    // (The sample creates notes too: the note columns follow `name`.)
    let mut report = csv::Reader::from_reader(&out.stdout[..]);
    assert_eq!(
        report
            .headers()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
            .join(","),
        "file,contact_id,contact_email,reference_type,reference_id,name,note_text,note_date,note_key,attachment_id,s3_key"
    );
    let mut lines = 0;
    for record in report.records() {
        let fields = record.unwrap();
        assert_eq!(
            &fields[1],
            contacts[&fields[2].to_lowercase()],
            "{fields:?}"
        );
        lines += 1;
    }
    assert_eq!(lines, rows.len());
}

#[test]
fn dry_run_counts_the_lookups_in_its_calls_and_after_a_run_none() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy_of("from-another-crm.csv");
    let (code, plan) = run_json(emu.run_cmd(&manifest).arg("--dry-run"));
    assert_eq!(code, 0, "{plan:#}");
    assert_eq!(plan["contacts_to_look_up"], 4);
    // An attach for each of 20 rows, a form for each of the 4 contacts (its form carries its
    // files; emails of any case are one contact), 4 lookups, and one call for each of the 4
    // notes that rows by email create.
    assert_eq!(plan["notes_to_create"], 4);
    assert_eq!(plan["api_calls"], 32);
    let seconds = plan["estimated_seconds"].as_f64().unwrap();
    let rate = opcrm_import::pipeline::DEFAULT_RATE;
    assert!((seconds - 32.0 / rate).abs() < 0.01, "{seconds}");
    assert!(
        emu.requests().keys().all(|k| k.contains("s3_form")),
        "a dry run sends only the quota check: {:?}",
        emu.requests()
    );
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let (_, plan) = run_json(emu.run_cmd(&manifest).arg("--dry-run"));
    assert_eq!(plan["contacts_to_look_up"], 0);
    assert_eq!(plan["api_calls"], 0);
}

/// A seed where `solo@x.example` is one contact and `twin@shared.example` two; a manifest whose
/// line 3 names no contact, line 4 the twins, line 5 no email at all (lines 2 and 6 are solo's,
/// in two letter cases; without `with_malformed`, line 5 is solo's too). Returns (seed, manifest).
fn troubled(s: &Scratch, with_malformed: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let seed = s.file(
        "seed.json",
        r#"{"contacts": [
            {"id": "aa0000000000000000000001", "email": "solo@x.example",
             "notes": [{"id": "ab0000000000000000000001", "text": "n"}]},
            {"id": "aa0000000000000000000002", "email": "twin@shared.example"},
            {"id": "aa0000000000000000000003", "email": "Twin@Shared.example"}
        ]}"#,
    );
    for f in ["a", "b", "c", "d", "e"] {
        s.file(&format!("{f}.txt"), format!("file {f}"));
    }
    let note = "ab0000000000000000000001";
    let malformed = if with_malformed {
        "d.txt,not-an-email"
    } else {
        "d.txt,solo@x.example"
    };
    let manifest = s.manifest(format!(
        "file,contact_email,reference_id\n\
         a.txt,solo@x.example,{note}\n\
         b.txt,nobody@x.example,{note}\n\
         c.txt,twin@shared.example,{note}\n\
         {malformed},{note}\n\
         e.txt,SOLO@X.example,{note}\n"
    ));
    (seed, manifest)
}

#[test]
fn check_online_reports_not_found_and_ambiguous_with_line_and_column_offline_only_the_malformed() {
    let s = Scratch::new();
    let (seed, manifest) = troubled(&s, true);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
    let mut cmd = emu.cmd();
    let out = cmd
        .arg("check")
        .arg(&manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let col = Some("contact_email".to_string());
    assert_eq!(
        problems(&doc),
        vec![
            (Some(3), col.clone(), "contact_not_found".to_string()),
            (Some(4), col.clone(), "contact_ambiguous".to_string()),
            (Some(5), col.clone(), "invalid_email".to_string()),
        ]
    );
    let ambiguous = doc["problems"][1]["message"].as_str().unwrap();
    assert!(
        ambiguous.contains("aa0000000000000000000002")
            && ambiguous.contains("aa0000000000000000000003"),
        "{ambiguous}"
    );
    // solo, nobody and twin: three emails, one lookup each (solo is written in two cases).
    assert_eq!(doc["lookups"]["status"], "checked");
    assert_eq!(doc["lookups"]["looked_up"], 3);
    assert_eq!(doc["lookups"]["not_found"], 1);
    assert_eq!(doc["lookups"]["ambiguous"], 1);
    assert_eq!(emu.requests()[CONTACTS_OK], 3);

    // The readable report names the lines too.
    let mut cmd = emu.cmd();
    cmd.arg("check")
        .arg(&manifest)
        .assert()
        .code(2)
        .stdout(contains("line 3, column contact_email: no contact"))
        .stdout(contains("line 4, column contact_email: 2 contacts have"));

    // Offline: only what the manifest shows on its own.
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![(Some(5), col.clone(), "invalid_email".to_string())]
    );
    assert_eq!(doc["lookups"]["status"], "offline");
    // No credentials: the lookups were not done, and it says so.
    let (_, doc) = check_json(&manifest, &[]);
    assert_eq!(doc["lookups"]["status"], "not_checked");
    assert!(
        doc["lookups"]["reason"]
            .as_str()
            .unwrap()
            .contains("--offline")
    );
}

#[test]
fn both_or_neither_contact_column_is_reported_with_line_and_column() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    let manifest = s.manifest(format!(
        "file,contact_id,contact_email,reference_id\n\
         a.txt,{ID},a@b.example,{ID}\n\
         b.txt,,,{ID}\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![
            (
                Some(2),
                Some("contact_email".into()),
                "contact_id_and_email".into()
            ),
            (Some(3), Some("contact_id".into()), "missing_field".into()),
        ]
    );
    let manifest = s.manifest(format!("file,reference_id\na.txt,{ID}\n"));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![(Some(1), None, "missing_column".into())]
    );
}

#[test]
fn unresolved_emails_stop_the_run_after_the_lookups_with_nothing_uploaded() {
    let s = Scratch::new();
    let (seed, manifest) = troubled(&s, false);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(2)
        .stderr(contains("line 3, column contact_email"))
        .stderr(contains("line 4, column contact_email"))
        .stderr(contains("nothing was uploaded"));
    let requests = emu.requests();
    assert_eq!(requests[CONTACTS_OK], 3, "{requests:?}");
    assert_eq!(not_lookups(&requests), Vec::<String>::new());

    // A malformed email stops it before any request at all.
    let s = Scratch::new();
    let (_, manifest) = troubled(&s, true);
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(2)
        .stderr(contains("line 5, column contact_email"));
    assert_eq!(emu.requests(), requests);
}

#[test]
fn with_skip_invalid_unresolved_rows_are_rejected_with_their_kind_and_the_others_go_on() {
    let s = Scratch::new();
    let (seed, manifest) = troubled(&s, true);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
    let (code, doc) = run_json(
        emu.run_cmd(&manifest)
            .args(["--rate", "off", "--skip-invalid"]),
    );
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["done_now"], 2);
    assert_eq!(doc["rejected"], 3);
    assert_eq!(doc["contacts_not_found"], 1);
    assert_eq!(doc["contacts_ambiguous"], 1);
    // Lines 2 and 6 only, on solo's note.
    let state = emu.state();
    let mut names: Vec<(&str, &str)> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["filename"].as_str().unwrap(),
                a["contact_id"].as_str().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("a.txt", "aa0000000000000000000001"),
            ("e.txt", "aa0000000000000000000001")
        ]
    );

    let out = bin()
        .args(["status", "--json"])
        .arg(&manifest)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut kinds: Vec<(String, u64)> = status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["kind"].as_str().unwrap().to_string(),
                g["examples"][0]["line"].as_u64().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("contact_ambiguous".to_string(), 4),
            ("contact_not_found".to_string(), 3),
            ("invalid_email".to_string(), 5)
        ]
    );

    // The failed report is a manifest: the emails as written, no contact id.
    let fix = s.path("fix.csv");
    bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .assert()
        .code(0);
    let report = std::fs::read_to_string(&fix).unwrap();
    let mut lines = report.lines();
    assert_eq!(
        lines.next().unwrap(),
        "file,contact_id,contact_email,reference_type,reference_id,name,error_kind,error"
    );
    let rows: Vec<(&str, &str, &str)> = lines
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ',').collect();
            (f[0], f[1], f[2])
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("b.txt", "", "nobody@x.example"),
            ("c.txt", "", "twin@shared.example"),
            ("d.txt", "", "not-an-email")
        ]
    );
    let (code, doc) = check_json(&fix, &["--offline"]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![(
            Some(4),
            Some("contact_email".into()),
            "invalid_email".into()
        )]
    );

    // A rerun looks up again what did not resolve (it is not recorded), nothing else, and
    // uploads nothing more.
    let before = emu.requests();
    run_json(
        emu.run_cmd(&manifest)
            .args(["--rate", "off", "--skip-invalid"]),
    );
    let after = emu.requests();
    assert_eq!(after[CONTACTS_OK], before[CONTACTS_OK] + 2);
    for key in not_lookups(&after) {
        assert_eq!(after[&key], before[&key], "{key}");
    }
}

#[test]
fn a_failed_lookup_is_retried_not_failed() {
    let emu = Emulator::with_faults(&["GET /api/v3/contacts:1-2:error"]);
    let (_s, manifest) = sample_copy_of("from-another-crm.csv");
    let (code, doc) = run_json(emu.run_cmd(&manifest).args(["--rate", "off"]));
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["contacts_resolved"], 4);
    assert!(doc["retries"].as_u64().unwrap() >= 2, "{doc:#}");
    let requests = emu.requests();
    assert_eq!(requests["GET /api/v3/contacts 500"], 2);
    assert_eq!(requests[CONTACTS_OK], 4);
}

#[test]
fn throttled_lookups_wait_for_the_gate_and_go_on() {
    // A throttle of 1 request/s in bursts of 2 against a client without a limit: the lookups
    // meet 403s, which close the gate and are waited out, never failing a lookup.
    let emu = Emulator::start(&["--rate-limit", "1/2"]);
    let (_s, manifest) = sample_copy_of("from-another-crm.csv");
    let (code, doc) = run_json(emu.cmd().arg("check").arg(&manifest));
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["lookups"]["resolved"], 4);
    let requests = emu.requests();
    assert_eq!(requests[CONTACTS_OK], 4, "{requests:?}");
    assert!(
        requests
            .get("GET /api/v3/contacts 403")
            .is_some_and(|n| *n > 0),
        "no lookup was throttled, so this proves nothing: {requests:?}"
    );
}
