//! Issue 18: every row settles by itself. Against servers the documentation allows (links that do
//! not show the key, `timestamp` in milliseconds or none, clocks hours away, listings that show a
//! write late), lost answers end with every row once and every note group with one note, and
//! nothing is left for a person to look at.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{Scratch, bin, json_stdout};
use crate::faults::{generated, requests_seen, signal, spawn_run};
use crate::run::assert_exactly_once;

/// `--fault-at` specs that lose 40 % of the attach answers, whichever attempt they are: of every
/// five attaches the 1st is lost after it took effect, the 3rd before.
fn lose_40_percent_of_attach_answers() -> Vec<String> {
    (1..=600)
        .filter_map(|n| match n % 5 {
            1 => Some(format!("POST /api/v3/attachments:{n}:drop-after")),
            3 => Some(format!("POST /api/v3/attachments:{n}:drop-before")),
            _ => None,
        })
        .flat_map(|spec| ["--fault-at".to_string(), spec])
        .collect()
}

fn opaque_emulator(seed: &Path) -> Emulator {
    let mut args = vec![
        "--rate-limit".to_string(),
        "off".into(),
        "--opaque-links".into(),
    ];
    args.extend(lose_40_percent_of_attach_answers());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Emulator::start_seeded(seed, &args, None)
}

/// No row of the state file is failed, and none holds a kind that asks a person to look.
fn assert_nothing_left_for_a_person(manifest: &Path) {
    let out = bin()
        .args(["status", "--json"])
        .arg(manifest)
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(doc["by_state"]["failed"].as_u64().unwrap_or(0), 0, "{doc}");
    assert!(!doc.to_string().contains("attach_unsettled"), "{doc}");
}

#[test]
fn opaque_links_and_40_percent_of_attach_answers_lost_settle_60_rows_once_in_3_runs() {
    let s = Scratch::new();
    let (seed, manifest) = generated(&s, 60);
    let emu = opaque_emulator(&seed);
    let codes = run_until_done(&emu, &manifest, &["--retries", "10"]);
    assert_eq!(codes.last(), Some(&Some(0)), "exit codes {codes:?}");
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    assert_eq!(state["attachments"].as_array().unwrap().len(), 60);
    assert_nothing_left_for_a_person(&manifest);
    // Lost answers were settled by reading the records, and the links never showed a key.
    assert!(
        state["requests"]["GET /api/v3/notes/{id} 200"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{}",
        state["requests"]
    );
}

#[test]
fn opaque_links_lost_answers_and_kills_at_request_counts_settle_every_row_once() {
    let s = Scratch::new();
    let (seed, manifest) = generated(&s, 60);
    let emu = opaque_emulator(&seed);
    // Killed after 15, 30, 45 ... further requests seen by the emulator: the same moments on a
    // slow or a fast machine.
    let mut kills = 0;
    for step in 1..=8u64 {
        let target = requests_seen(&emu) + 15 * step;
        let mut run = spawn_run(&emu, &manifest, &["--concurrency", "4", "--retries", "10"]);
        while run.try_wait().unwrap().is_none() && requests_seen(&emu) < target {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if run.try_wait().unwrap().is_none() {
            signal(&run, libc::SIGKILL);
            kills += 1;
        }
        let _ = run.wait();
    }
    assert!(kills >= 3, "too few runs were killed mid-way: {kills}");
    let codes = run_until_done(&emu, &manifest, &["--retries", "10"]);
    assert_eq!(codes.last(), Some(&Some(0)), "exit codes {codes:?}");
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    assert_eq!(state["attachments"].as_array().unwrap().len(), 60);
    assert_nothing_left_for_a_person(&manifest);
}

/// A manifest of two rows on one contact, creating one note (`note_key` "k"), and the emulator's
/// seed with that contact.
fn one_note(s: &Scratch) -> (PathBuf, PathBuf, &'static str) {
    let contact = "5d2f4a0e1c9b8a7f6e5d4c3c";
    let seed = s.file(
        "seed.json",
        format!(r#"{{"contacts": [{{"id": "{contact}", "notes": []}}]}}"#),
    );
    s.file("a.txt", "the first file");
    s.file("b.txt", "the second file");
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\n\
         a.txt,{contact},Kick-off call,2024-05-01\n\
         b.txt,{contact},Kick-off call,2024-05-01\n"
    ));
    (seed, manifest, contact)
}

fn notes_of(state: &Value, contact: &str) -> Vec<Value> {
    state["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "note" && r["contact_id"] == contact)
        .cloned()
        .collect()
}

/// Runs until exit 0 (at most 3 runs); every run's exit code.
fn run_until_done(emu: &Emulator, manifest: &Path, args: &[&str]) -> Vec<Option<i32>> {
    let mut codes = Vec::new();
    for _ in 0..3 {
        let out = emu
            .run_cmd(manifest)
            .args(["--rate", "off"])
            .args(args)
            .output()
            .unwrap();
        codes.push(out.status.code());
        if out.status.code() == Some(0) {
            break;
        }
    }
    codes
}

#[test]
fn notes_get_one_note_per_group_whatever_the_servers_timestamp_and_clock() {
    for server in [
        &["--timestamp-ms"][..],
        &["--no-timestamp"],
        &["--clock-offset", "7200"],
        &["--clock-offset", "-7200"],
    ] {
        let s = Scratch::new();
        let (seed, manifest, contact) = one_note(&s);
        let mut args = vec![
            "--rate-limit",
            "off",
            // The first two POST /notes take effect and their answers are lost.
            "--fault-at",
            "POST /api/v3/notes:1-2:drop-after",
        ];
        args.extend_from_slice(server);
        let emu = Emulator::start_seeded(&seed, &args, None);
        let codes = run_until_done(&emu, &manifest, &[]);
        assert_eq!(codes.last(), Some(&Some(0)), "{server:?}: {codes:?}");
        let state = emu.state();
        let notes = notes_of(&state, contact);
        assert_eq!(notes.len(), 1, "{server:?}: {notes:#?}");
        let attachments = state["attachments"].as_array().unwrap();
        assert_eq!(attachments.len(), 2, "{server:?}");
        assert!(
            attachments
                .iter()
                .all(|a| a["reference_id"] == notes[0]["id"]),
            "{server:?}: {attachments:#?}"
        );
    }
}

#[test]
fn a_note_listing_that_lags_30_s_behind_a_lost_answer_still_gives_one_note() {
    let s = Scratch::new();
    let (seed, manifest, contact) = one_note(&s);
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--list-lag",
            "30",
            "--fault-at",
            "POST /api/v3/notes:1:drop-after",
        ],
        None,
    );
    // The default window (2 min): the listing is read again after 5, 15 and 45 s, by when the
    // note made 30 s before shows.
    let out = emu
        .run_cmd(&manifest)
        .env_remove("OPCRM_SETTLE_WINDOW")
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{doc}");
    assert_eq!(doc["notes_adopted"], 1, "{doc}");
    let state = emu.state();
    assert_eq!(notes_of(&state, contact).len(), 1);
    // One POST, its answer lost; the note was adopted, never made again.
    assert_eq!(state["requests"]["POST /api/v3/notes dropped"], 1);
    assert_eq!(state["requests"]["POST /api/v3/notes 201"], Value::Null);
}

#[test]
fn a_record_that_does_not_exist_gets_no_byte_uploaded_and_its_row_says_why() {
    let emu = Emulator::start(&["--rate-limit", "off", "--opaque-links"]);
    let s = Scratch::new();
    s.file("files/a.pdf", "a file for a deal that is not there");
    // Ada, of the sample seed, has no deal of this id.
    let manifest = s.manifest(
        "file,contact_id,reference_type,reference_id\nfiles/a.pdf,ca929443ed449d7679121de5,deal,0123456789abcdef01234567\n",
    );
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["failures"][0]["kind"], "record_not_found", "{doc}");
    let state = emu.state();
    assert!(
        state["objects"].as_array().unwrap().is_empty(),
        "nothing reached S3: {}",
        state["requests"]
    );
    assert!(
        !state["requests"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("POST /{bucket}")),
        "no upload was sent: {}",
        state["requests"]
    );
}

/// Two files of one name and size (other bytes) on one record, behind links that hide the key:
/// the first attach is lost before it takes effect, the next one after. Each row must end
/// holding the attachment of its own bytes: while one row's attach is in doubt, no other row of
/// the same name and size attaches to that record, in this run or the next.
#[test]
fn two_files_of_one_name_and_size_on_one_record_each_hold_their_own_attachment() {
    let ada = "ca929443ed449d7679121de5";
    let note = "064132394d9b497f536b2bb7";
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:1:drop-before",
        "--fault-at",
        "POST /api/v3/attachments:2:drop-after",
    ]);
    let s = Scratch::new();
    s.file("a/report.pdf", "the first report, 25 bytes");
    s.file("b/report.pdf", "the other report, 25 byte");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id\n\
         a/report.pdf,{ada},note,{note}\n\
         b/report.pdf,{ada},note,{note}\n"
    ));
    // Without retries the first row ends in doubt; the second must not attach before it has
    // settled (the rerun), or the first's check would take the second's attachment for its own.
    let first = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(4));
    let codes = run_until_done(&emu, &manifest, &["--concurrency", "2"]);
    assert_eq!(codes.last(), Some(&Some(0)), "exit codes {codes:?}");
    let state = emu.state();
    let md5_of: std::collections::HashMap<String, String> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reference_id"] == note)
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["md5"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(md5_of.len(), 2, "{md5_of:?}");
    let file =
        opcrm_import::checkpoint::StateFile::open_read_only(&s.path("manifest.opcrm.sqlite"))
            .unwrap();
    for row in file.load_rows().unwrap() {
        let bytes = std::fs::read(&row.path).unwrap();
        let id = row.attachment_id.expect("done");
        assert_eq!(
            md5_of[&id],
            hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes)),
            "{} holds another file's attachment",
            row.file
        );
    }
}
