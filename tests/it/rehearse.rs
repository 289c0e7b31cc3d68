//! `rehearse`: a user's own manifest, with ids and emails no seed knows, run whole against the
//! built-in emulator seeded from the manifest itself; nothing leaves the machine, and the
//! migration's own state file is not touched.

use crate::common::{Scratch, bin, json_stdout};

const HEADER: &str = "file,contact_id,contact_email,reference_type,reference_id,note_text\n";

/// A manifest of made-up contacts and records: by id, by email (one email in two cases), a note
/// the run creates, and two rows on one record.
fn made_up(s: &Scratch) -> std::path::PathBuf {
    for (name, body) in [
        ("a.txt", "alpha"),
        ("b.txt", "bravo!"),
        ("c.txt", "charlie"),
    ] {
        s.file(&format!("files/{name}"), body);
    }
    s.manifest(format!(
        "{HEADER}files/a.txt,6f1d2c3b4a5968778695a4b3,,deal,7a7a7a7a7a7a7a7a7a7a7a7a,\n\
         files/b.txt,,someone@made.up,note,,Imported from the old CRM\n\
         files/c.txt,,Someone@Made.Up,meeting,7b7b7b7b7b7b7b7b7b7b7b7b,\n\
         files/b.txt,6f1d2c3b4a5968778695a4b3,,deal,7a7a7a7a7a7a7a7a7a7a7a7a,\n"
    ))
}

#[test]
fn a_manifest_of_made_up_ids_and_emails_rehearses_with_every_row_done() {
    let s = Scratch::new();
    let manifest = made_up(&s);
    let out = bin()
        .arg("rehearse")
        .arg(&manifest)
        .args(["--json", "--no-progress"])
        .env_remove("ONEPAGECRM_API_KEY")
        .env_remove("ONEPAGECRM_USER_ID")
        .env("ONEPAGECRM_API_URL", "https://api.example.invalid/api/v3")
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["rows"], 4, "{doc:#}");
    assert_eq!(doc["done_now"], 4, "{doc:#}");
    assert_eq!(doc["notes_created"], 1, "{doc:#}");
    assert_eq!(
        doc["contacts_resolved"], 1,
        "one contact for both cases: {doc:#}"
    );
    assert!(
        !manifest.with_file_name("manifest.opcrm.sqlite").exists(),
        "the migration's own state file is not made"
    );

    // For a person: what the account would hold, and the real run's time.
    let out = bin()
        .arg("rehearse")
        .arg(&manifest)
        .arg("--no-progress")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("2 contacts (1 by email), 2 records"),
        "{text}"
    );
    assert!(
        text.contains("would then hold 4 new attachments") && text.contains("1 new notes"),
        "{text}"
    );
}

#[test]
fn an_invalid_row_is_reported_as_check_reports_it_and_nothing_is_rehearsed() {
    let s = Scratch::new();
    let manifest = made_up(&s);
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("files/gone.txt,6f1d2c3b4a5968778695a4b3,,deal,7a7a7a7a7a7a7a7a7a7a7a7a,\n");
    std::fs::write(&manifest, text).unwrap();
    let check = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    let problem = check
        .lines()
        .find(|l| l.starts_with("error: line 6"))
        .unwrap_or_else(|| panic!("{check}"))
        .to_string();
    let out = bin()
        .arg("rehearse")
        .arg(&manifest)
        .arg("--no-progress")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&problem), "{problem} in {stderr}");
    // With --skip-invalid the valid rows are rehearsed and the invalid one is rejected.
    let out = bin()
        .arg("rehearse")
        .arg(&manifest)
        .args(["--skip-invalid", "--json", "--no-progress"])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(
        (doc["done_now"].as_u64(), doc["rejected"].as_u64()),
        (Some(4), Some(1)),
        "{doc:#}"
    );
}
