//! Notes created from the manifest (`note_text`): each note group gets exactly one note, whatever
//! is lost or killed on the way, its files all on that note, and a note that was there before
//! the run is never taken for the run's own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{ID, Scratch, bin, check_json, problems, samples};
use crate::faults::{finish, requests_seen, signal, spawn_run};

/// A copy of `samples/notes.csv` and the sample files in a scratch folder.
fn notes_copy() -> (Scratch, PathBuf) {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("files")).unwrap();
    for entry in std::fs::read_dir(samples().join("files")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), s.path("files").join(entry.file_name())).unwrap();
    }
    let manifest = s.path("notes.csv");
    std::fs::copy(samples().join("notes.csv"), &manifest).unwrap();
    (s, manifest)
}

/// The note ids the emulator holds now.
fn note_ids(state: &Value) -> HashSet<String> {
    state["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "note")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn md5_hex(path: &Path) -> String {
    hex::encode(Md5::digest(std::fs::read(path).unwrap()))
}

/// Every note group of the manifest has exactly one note among the notes made since `before`
/// (with the group's contact, text and date), no note made since is left that no group accounts
/// for, and every row's file is attached exactly once: a note row's to its group's note, any
/// other row's to its record. Returns each group's note id.
fn assert_notes_exactly_once(
    state: &Value,
    manifest: &Path,
    before: &HashSet<String>,
) -> HashMap<String, String> {
    let m = opcrm_import::manifest::read(manifest, Default::default());
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let records = state["records"].as_array().unwrap();
    let new_notes: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "note" && !before.contains(r["id"].as_str().unwrap()))
        .collect();
    let mut group_note: HashMap<String, String> = HashMap::new();
    for row in &m.rows {
        let Some(note) = &row.note else { continue };
        if group_note.contains_key(&note.group) {
            continue;
        }
        let contact = contact_of(state, row);
        let matching: Vec<&&Value> = new_notes
            .iter()
            .filter(|r| {
                r["contact_id"] == contact.as_str()
                    && r["text"] == note.text.as_str()
                    && note.date.as_deref().is_none_or(|d| r["date"] == d)
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "line {}: {} notes for the group of {:?}",
            row.line,
            matching.len(),
            note.text
        );
        group_note.insert(
            note.group.clone(),
            matching[0]["id"].as_str().unwrap().to_string(),
        );
    }
    let accounted: HashSet<&String> = group_note.values().collect();
    let strays: Vec<&str> = new_notes
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .filter(|id| !accounted.contains(&id.to_string()))
        .collect();
    assert!(strays.is_empty(), "notes no group accounts for: {strays:?}");

    let attachments = state["attachments"].as_array().unwrap();
    let mut used = vec![false; attachments.len()];
    for row in &m.rows {
        let record = match &row.note {
            Some(note) => group_note[&note.group].clone(),
            None => row.reference_id.clone(),
        };
        let matching: Vec<usize> = attachments
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                a["reference_id"] == record.as_str()
                    && a["contact_id"] == contact_of(state, row).as_str()
                    && a["filename"] == row.name.as_str()
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(matching.len(), 1, "line {}: {}", row.line, row.file);
        let path = m.path_of(row);
        assert_eq!(attachments[matching[0]]["md5"], md5_hex(&path).as_str());
        used[matching[0]] = true;
    }
    assert!(used.iter().all(|u| *u), "attachments without a row");
    group_note
}

/// A row's contact: its `contact_id`, or the one contact of the emulator whose email is the
/// row's (in any letter case).
fn contact_of(state: &Value, row: &opcrm_import::manifest::Row) -> String {
    if !row.contact_id.is_empty() {
        return row.contact_id.clone();
    }
    let ids: Vec<&str> = state["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(&row.contact_email))
        })
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "line {}: {:?}", row.line, row.contact_email);
    ids[0].to_string()
}

fn run_json(emu: &Emulator, manifest: &Path, args: &[&str]) -> (i32, Value) {
    let out = emu
        .run_cmd(manifest)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap(), crate::common::json_stdout(&out))
}

fn request_count(state: &Value, prefix: &str) -> u64 {
    state["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

#[test]
fn the_notes_sample_creates_each_note_once_and_a_rerun_sends_nothing() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = notes_copy();
    let before = note_ids(&emu.state());
    // The dry run counts the notes and their calls: an attach per row (11), a form per contact
    // (4: each contact's form carries its files), a note per note (5).
    let (code, plan) = run_json(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(
        (&plan["notes_to_create"], &plan["api_calls"]),
        (&Value::from(5), &Value::from(20))
    );
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["done_now"], 11);
    assert_eq!(doc["notes_created"], 5);
    let state = emu.state();
    let notes = assert_notes_exactly_once(&state, &manifest, &before);
    assert_eq!(notes.len(), 5);
    assert_eq!(request_count(&state, "POST /api/v3/notes "), 5);
    // The text with commas, quotes, non-ASCII letters and a newline arrived as written.
    assert!(state["records"].as_array().unwrap().iter().any(|r| {
        r["text"]
            == "Besuch bei Müller GmbH, Köln: „Angebot“ besprochen, \"Rabatt\" noch offen\nNächster Schritt: Vertrag (Grace)"
            && r["date"] == "2024-04-02"
    }));

    // A rerun sends nothing at all.
    let total = requests_seen(&emu);
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(
        (code, &doc["done_before"], &doc["notes_created"]),
        (0, &Value::from(11), &Value::from(0))
    );
    assert_eq!(requests_seen(&emu), total, "the rerun sent requests");

    // status counts the notes; the done report gives each row its note's id.
    let out = bin()
        .arg("status")
        .arg(&manifest)
        .arg("--json")
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["notes"]["created"], 5, "{status}");
    let out = bin()
        .args(["report", "--only", "done"])
        .arg(&manifest)
        .output()
        .unwrap();
    let mut report = csv::Reader::from_reader(&out.stdout[..]);
    let header = report.headers().unwrap().clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "file",
            "contact_id",
            "reference_type",
            "reference_id",
            "name",
            "note_text",
            "note_date",
            "note_key",
            "attachment_id",
            "s3_key"
        ]
    );
    let ids: HashSet<String> = notes.values().cloned().collect();
    let mut note_rows = 0;
    for record in report.records() {
        let record = record.unwrap();
        if !record[5].is_empty() {
            note_rows += 1;
            assert!(ids.contains(&record[3]), "{record:?}");
        }
    }
    assert_eq!(note_rows, 10);
}

#[test]
fn the_export_from_another_crm_finds_contacts_by_email_creates_each_note_once_and_a_rerun_sends_nothing()
 {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = crate::common::sample_copy_of("from-another-crm.csv");
    let before = note_ids(&emu.state());
    let m = opcrm_import::manifest::read(&manifest, Default::default());
    let rows = m.rows.len();
    assert!(m.rows.iter().all(|r| r.by_email()), "every row by email");
    let groups: HashSet<&str> = m
        .rows
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| n.group.as_str()))
        .collect();
    assert_eq!((rows, groups.len()), (20, 4));

    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["done_now"], rows);
    assert_eq!(doc["contacts_resolved"], 4);
    assert_eq!(doc["notes_created"], 4);
    let state = emu.state();
    // Each note once, with its text and date, on the contact its email belongs to; each
    // group's files on its note; each row's file once.
    let notes = assert_notes_exactly_once(&state, &manifest, &before);
    assert_eq!(notes.len(), 4);
    assert_eq!(request_count(&state, "POST /api/v3/notes "), 4);
    assert_eq!(
        request_count(&state, "GET /api/v3/contacts "),
        4,
        "one lookup per email"
    );
    let grace = "285b4ab0cf8624250f4313ff";
    let records = state["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| {
            r["contact_id"] == grace
                && r["text"]
                    == "Rückruf von Grace, „dringend“: \"Preise\" prüfen, Termin am Montag\nDanach: Angebot überarbeiten (Alan, Hedy)"
                && r["date"] == "2024-01-09"
        }),
        "the note with commas, quotes and a newline"
    );
    // Three letter cases of one email are one contact and one note by note_key.
    let ada_key = m
        .rows
        .iter()
        .filter_map(|r| r.note.as_ref())
        .find(|n| n.key.as_deref() == Some("contract-ada"))
        .unwrap();
    let on_ada_note = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reference_id"] == notes[&ada_key.group].as_str())
        .count();
    assert_eq!(on_ada_note, 3);

    // The state file holds each email group's note under the contact the email resolved to.
    let conn =
        rusqlite::Connection::open(opcrm_import::run::default_state_path(&manifest)).unwrap();
    let mut stmt = conn
        .prepare("SELECT group_key, contact_id, state, note_id FROM notes")
        .unwrap();
    let recorded: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(recorded.len(), 4);
    for (group, contact, st, note_id) in &recorded {
        let row = m
            .rows
            .iter()
            .find(|r| r.note.as_ref().is_some_and(|n| &n.group == group))
            .unwrap();
        assert_eq!(contact, &contact_of(&state, row), "line {}", row.line);
        assert_eq!((st.as_str(), note_id), ("created", &notes[group]));
    }
    drop(stmt);
    drop(conn);

    // A rerun looks nothing up, creates nothing, sends nothing at all.
    let total = requests_seen(&emu);
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        (
            &doc["done_before"],
            &doc["notes_created"],
            &doc["contacts_resolved"],
            &doc["api_calls"]
        ),
        (
            &Value::from(rows),
            &Value::from(0),
            &Value::from(0),
            &Value::from(0)
        )
    );
    assert_eq!(requests_seen(&emu), total, "the rerun sent requests");
}

#[test]
fn a_note_already_there_with_the_same_words_is_never_adopted() {
    let s = Scratch::new();
    let contact = "5d2f4a0e1c9b8a7f6e5d4c3c";
    let old = "0123456789abcdef01234567";
    let seed = s.file(
        "seed.json",
        format!(
            r#"{{"contacts": [{{"id": "{contact}", "notes": [{{"id": "{old}", "text": "Call notes\nfrom 2020", "date": "2020-01-01", "created_at": "2020-01-01T09:00:00Z"}}]}}]}}"#
        ),
    );
    s.file("a.txt", "a file for the note");
    // The same words and date as the old note, written with CRLF.
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\na.txt,{contact},\"Call notes\r\nfrom 2020\",2020-01-01\n"
    ));
    // The first POST /notes is lost before it takes effect: the group is left in `intent`.
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-at",
            "POST /api/v3/notes:1:drop-before",
        ],
        None,
    );
    let (code, doc) = run_json(&emu, &manifest, &["--retries", "0"]);
    assert_eq!(code, 4, "{doc}");
    assert_eq!(doc["failures"][0]["kind"], "note_failed", "{doc}");
    assert!(emu.state()["attachments"].as_array().unwrap().is_empty());

    // The rerun lists the contact's notes, finds only the old one, and creates the note.
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        (&doc["notes_created"], &doc["notes_adopted"]),
        (&Value::from(1), &Value::from(0))
    );
    let state = emu.state();
    assert!(
        request_count(&state, "GET /api/v3/notes ") >= 1,
        "the rerun listed the notes"
    );
    let attachments = state["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_ne!(
        attachments[0]["reference_id"], old,
        "attached to the old note"
    );
    let words: Vec<&Value> = state["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "note" && r["contact_id"] == contact)
        .collect();
    assert_eq!(words.len(), 2, "the old note and the new one");
}

#[test]
fn a_lost_answer_to_post_notes_then_a_rerun_makes_one_note_not_two() {
    let emu = Emulator::with_faults(&["POST /api/v3/notes:1:drop-after"]);
    let (_s, manifest) = notes_copy();
    let before = note_ids(&emu.state());
    let (code, doc) = run_json(&emu, &manifest, &["--retries", "0", "--concurrency", "1"]);
    assert_eq!(code, 4, "{doc}");
    let failed = doc["failures"].as_array().unwrap();
    assert!(
        !failed.is_empty() && failed.iter().all(|f| f["kind"] == "note_failed"),
        "{doc}"
    );
    // One note's outcome is unknown: the plan lists the contact's notes, then creates it.
    let (_, plan) = run_json(&emu, &manifest, &["--dry-run"]);
    assert_eq!(plan["notes_to_create"], 1, "{plan}");
    assert_eq!(plan["to_upload"], failed.len(), "{plan}");
    // An attach per row and one form for their contact, a list and a note.
    assert_eq!(plan["api_calls"], failed.len() + 1 + 2, "{plan}");
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["notes_adopted"], 1, "{doc}");
    let state = emu.state();
    assert_eq!(
        assert_notes_exactly_once(&state, &manifest, &before).len(),
        5
    );
    assert_eq!(
        request_count(&state, "POST /api/v3/notes "),
        5,
        "one POST per note, the lost one included"
    );
}

#[test]
fn a_note_that_cannot_be_created_fails_its_rows_and_the_failed_report_is_a_manifest() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    let grace = "285b4ab0cf8624250f4313ff";
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name,note_text,note_date,note_key\n\
         a.txt,{ID},,,,\"=Visit, \"\"today\"\"\",2024-03-15,visit\n\
         b.txt,{grace},,,,Fine,,\n"
    ));
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["failures"][0]["kind"], "note_failed");
    assert_eq!(doc["failures"][0]["line"], 2);
    assert_eq!(doc["done_now"], 1);
    let fix = s.path("fix.csv");
    bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .assert()
        .success();
    let (code, doc) = check_json(&fix, &["--offline"]);
    assert_eq!(code, 0, "{doc}");
    let m = opcrm_import::manifest::read(&fix, Default::default());
    let note = m.rows[0].note.as_ref().unwrap();
    assert_eq!(note.text, "=Visit, \"today\"");
    assert_eq!(
        (note.date.as_deref(), note.key.as_deref()),
        (Some("2024-03-15"), Some("visit"))
    );
    assert_eq!(m.rows[0].reference_id, "");
}

#[test]
fn check_reports_note_mistakes_with_line_and_column() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    let long = "x".repeat(7169);
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,note_text,note_date,note_key\n\
         a.txt,{ID},,{ID},Text,,\n\
         a.txt,{ID},deal,,Text,,\n\
         a.txt,{ID},,,Text,15.03.2024,\n\
         a.txt,{ID},,,{long},,\n\
         a.txt,{ID},,,,,\n\
         a.txt,{ID},,,One,2024-01-01,k\n\
         a.txt,{ID},,,Two,2024-01-02,k\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2);
    let got = problems(&doc);
    let expect = |line: u64, column: &str, kind: &str| {
        (Some(line), Some(column.to_string()), kind.to_string())
    };
    for want in [
        expect(2, "note_text", "note_conflict"),
        expect(3, "note_text", "note_conflict"),
        expect(4, "note_date", "invalid_note_date"),
        expect(5, "note_text", "note_too_long"),
        expect(6, "reference_id", "missing_field"),
        expect(8, "note_text", "note_key_conflict"),
        expect(8, "note_date", "note_key_conflict"),
    ] {
        assert!(got.contains(&want), "{want:?} not in {got:?}");
    }
    // The sample is valid, and every manifest without the note columns still is what it was.
    let (code, doc) = check_json(&samples().join("notes.csv"), &["--offline"]);
    assert_eq!(
        (code, &doc["summary"]["errors"]),
        (0, &Value::from(0)),
        "{doc}"
    );
}

/// `rows` rows over 10 generated contacts in `groups` note groups (every other group by
/// note_key, the others by text and date), two or three files per note.
fn generated_notes(s: &Scratch, rows: usize, groups: usize) -> (PathBuf, PathBuf) {
    let seed = s.file("seed.json", r#"{"generate": {"contacts": 10}}"#);
    let mut manifest = String::from("file,contact_id,note_text,note_date,note_key\n");
    for i in 0..rows {
        s.file(
            &format!("files/doc-{i:04}.txt"),
            format!("document {i}\n").repeat(1 + i % 7),
        );
        let g = i % groups;
        let contact = format!("cc{:022x}", g % 10);
        let (text, key) = match g % 2 {
            0 => (format!("\"Meeting {g}, notes\nline two\""), format!("k{g}")),
            _ => (format!("Call {g} — résumé"), String::new()),
        };
        manifest.push_str(&format!(
            "files/doc-{i:04}.txt,{contact},{text},2024-0{}-1{},{key}\n",
            1 + g % 9,
            g % 10
        ));
    }
    (seed, s.manifest(manifest))
}

#[test]
fn kill_9_and_dropped_answers_during_note_creation_leave_one_note_per_group() {
    let s = Scratch::new();
    let (seed, manifest) = generated_notes(&s, 90, 36);
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--drop-rate",
            "0.2",
            "--fault-seed",
            "5",
            "--latency-ms",
            "0..5",
        ],
        None,
    );
    let before = note_ids(&emu.state());
    let rng_seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    let (mut rounds, mut kills) = (0, 0);
    // Killed after a few more requests each time (0 to 12, chosen from progress, not time): the
    // first kills land among the notes' POSTs and lists, later ones among the rows' steps.
    while kills < 12 && rounds < 60 {
        rounds += 1;
        let target = requests_seen(&emu) + rng.random_range(0..=12);
        let mut run = spawn_run(&emu, &manifest, &["--concurrency", "4", "--retries", "10"]);
        while run.try_wait().unwrap().is_none() && requests_seen(&emu) < target {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if run.try_wait().unwrap().is_none() {
            signal(&run, libc::SIGKILL);
            kills += 1;
        }
        let _ = finish(run);
    }
    let mut reruns = 0;
    loop {
        reruns += 1;
        let (code, doc) = run_json(&emu, &manifest, &["--retries", "10"]);
        match code {
            0 => break,
            4 if reruns < 15 => continue,
            _ => panic!("rerun {reruns} ended {code}: {doc}"),
        }
    }
    let state = emu.state();
    println!(
        "notes chaos: seed {rng_seed}, {rounds} rounds, {kills} killed, {reruns} reruns, {} POST /notes",
        request_count(&state, "POST /api/v3/notes ")
    );
    assert!(
        kills >= 3,
        "too few runs were killed mid-way: {kills} of {rounds}"
    );
    let notes = assert_notes_exactly_once(&state, &manifest, &before);
    assert_eq!(notes.len(), 36);
}

/// The notes the emulator holds on `contact`, as (id, text, date).
fn notes_on(state: &Value, contact: &str) -> Vec<(String, String, String)> {
    state["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "note" && r["contact_id"] == contact)
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["text"].as_str().unwrap_or_default().to_string(),
                r["date"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The record each attachment of `file_name` is on.
fn record_of(state: &Value, name: &str) -> Vec<String> {
    state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["filename"] == name)
        .map(|a| a["reference_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_dated_and_an_undated_group_of_the_same_words_each_get_their_own_note_after_lost_answers() {
    let grace = "285b4ab0cf8624250f4313ff";
    let emu = Emulator::with_faults(&["POST /api/v3/notes:1-2:drop-after"]);
    let s = Scratch::new();
    s.file("dated.txt", "dated");
    s.file("undated.txt", "undated");
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\n\
         dated.txt,{grace},Lunch,2024-01-01\n\
         undated.txt,{grace},Lunch,\n"
    ));
    let (code, doc) = run_json(&emu, &manifest, &["--retries", "0"]);
    assert_eq!(code, 4, "{doc}");
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    let state = emu.state();
    let lunch: Vec<_> = notes_on(&state, grace)
        .into_iter()
        .filter(|(_, text, _)| text == "Lunch")
        .collect();
    assert_eq!(
        lunch.len(),
        2,
        "one note per group, no stray one: {lunch:?}"
    );
    let dated = lunch.iter().find(|(_, _, d)| d == "2024-01-01").unwrap();
    let undated = lunch.iter().find(|(_, _, d)| d != "2024-01-01").unwrap();
    assert_eq!(
        record_of(&state, "dated.txt"),
        std::slice::from_ref(&dated.0)
    );
    assert_eq!(
        record_of(&state, "undated.txt"),
        std::slice::from_ref(&undated.0)
    );
}

#[test]
fn a_note_made_just_before_with_the_same_words_is_not_taken_for_the_runs_own() {
    let s = Scratch::new();
    let contact = "5d2f4a0e1c9b8a7f6e5d4c3c";
    // Made four minutes ago (within the clock-skew allowance) by someone else.
    let made = (chrono::Utc::now() - chrono::Duration::minutes(4))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let seed = s.file(
        "seed.json",
        format!(
            r#"{{"contacts": [{{"id": "{contact}", "notes": [{{"id": "0123456789abcdef01234567", "text": "Weekly sync", "date": "2024-05-01", "created_at": "{made}"}}]}}]}}"#
        ),
    );
    s.file("a.txt", "a");
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\na.txt,{contact},Weekly sync,2024-05-01\n"
    ));
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-at",
            "POST /api/v3/notes:1:drop-after",
        ],
        None,
    );
    assert_eq!(run_json(&emu, &manifest, &["--retries", "0"]).0, 4);
    let (code, doc) = run_json(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["notes_adopted"], 1, "{doc}");
    let state = emu.state();
    assert_eq!(notes_on(&state, contact).len(), 2);
    assert_ne!(
        record_of(&state, "a.txt"),
        ["0123456789abcdef01234567"],
        "the run's own lost note is adopted, not the one made before"
    );
}

#[test]
fn the_fix_file_leaves_out_rows_whose_note_may_exist_and_points_fixed_rows_at_a_made_note() {
    let grace = "285b4ab0cf8624250f4313ff";
    // Groups are settled in the order of their words, "All hands" first: its POST /notes takes
    // effect and its answer is lost, and the lists that would settle it fail: it stays in doubt.
    let emu = Emulator::with_faults(&[
        "POST /api/v3/notes:1:drop-after",
        // The 1st list is the contact's snapshot, before the first note.
        "GET /api/v3/notes:2-4:error",
    ]);
    let s = Scratch::new();
    s.file("q1.txt", "q1");
    s.file("q2.txt", "q2");
    s.file("d1.txt", "d1");
    s.file("d2.txt", "d2");
    let manifest = s.manifest(format!(
        "file,contact_id,name,note_text,note_key\n\
         q1.txt,{grace},,All hands,qr\n\
         q2.txt,{grace},,All hands,qr\n\
         d1.txt,{grace},,Design review,dr\n\
         d2.txt,{grace},bad/name.txt,Design review,dr\n"
    ));
    let (code, doc) = run_json(
        &emu,
        &manifest,
        &["--retries", "0", "--concurrency", "1", "--skip-invalid"],
    );
    assert_eq!(code, 1, "{doc}");
    let fix = s.path("fix.csv");
    bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .assert()
        .success()
        .stderr(predicates::str::contains("left out of this report"));
    let text = std::fs::read_to_string(&fix).unwrap();
    assert!(
        !text.contains("q1.txt") && !text.contains("q2.txt"),
        "{text}"
    );
    // The rejected row of the made note comes back attached to that note, no note columns.
    let design = notes_on(&emu.state(), grace)
        .into_iter()
        .find(|(_, t, _)| t == "Design review")
        .unwrap();
    let line = text.lines().find(|l| l.contains("bad/name.txt")).unwrap();
    assert!(line.contains(&design.0), "{text}");
    assert!(!line.contains("Design review"), "{text}");
    // Fixed and run as its own manifest: the file joins the note, no second note.
    std::fs::write(&fix, text.replace("bad/name.txt", "fixed.txt")).unwrap();
    let (code, doc) = run_json(&emu, &fix, &[]);
    assert_eq!(code, 0, "{doc}");
    let state = emu.state();
    let designs = notes_on(&state, grace)
        .into_iter()
        .filter(|(_, t, _)| t == "Design review")
        .count();
    assert_eq!(designs, 1);
    assert_eq!(
        record_of(&state, "fixed.txt"),
        std::slice::from_ref(&design.0)
    );
}
