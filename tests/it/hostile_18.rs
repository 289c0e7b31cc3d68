//! Hostile tests of issue 18 (lost answers settled by snapshots, not by keys in links). Each test
//! here is a case that was found to attach a file twice, lose a file, adopt the wrong attachment
//! or note, or fail a valid row. Moments are decided by the emulator's request counts and by
//! runs ending, never by sleeping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::common::emulator::{Emulator, tutorial_fields, tutorial_key, upload};
use crate::common::{Scratch, bin, json_stdout};
use crate::faults::{finish, spawn_run};

/// Ada, one of her notes and her deal; Grace (samples/emulator-seed.json).
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_DEAL: &str = "ce6ec0cdddd720161b4cbd15";
const GRACE: &str = "285b4ab0cf8624250f4313ff";

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The MD5s of the attachments the emulator holds on one record, sorted.
fn md5s_on(state: &Value, record: &str) -> Vec<String> {
    let mut out: Vec<String> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reference_id"] == record)
        .map(|a| a["md5"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The tutorial's three steps with curl, as a person would attach `bytes` as `name` to a
/// record of `contact` by hand; returns the attachment's id.
fn attach_by_hand(
    emu: &Emulator,
    s: &Scratch,
    contact: &str,
    reference_type: &str,
    reference_id: &str,
    name: &str,
    bytes: &[u8],
) -> String {
    let file = s.file(&format!("by-hand/{name}"), bytes);
    let form = emu.form(contact);
    let key = tutorial_key(&form, contact, name);
    let url = form["data"]["url"].as_str().unwrap();
    let s3 = upload(url, &tutorial_fields(&form, &key, name), &file, &[]);
    assert_eq!(s3.status, 201, "{}", s3.body);
    let reply = emu.post(
        "/attachments",
        &json!({"reference_type": reference_type, "reference_id": reference_id,
                "contact_id": contact, "name": name, "key": key, "size": bytes.len()}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["data"]["attachment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `status --json` of a manifest's state file.
fn status(manifest: &Path) -> Value {
    let out = bin()
        .args(["status", "--json"])
        .arg(manifest)
        .output()
        .unwrap();
    json_stdout(&out)
}

/// Each done row's attachment id, by the row's file name (from `report --only done`).
fn attachment_of_each_row(manifest: &Path) -> HashMap<String, String> {
    let out = bin()
        .args(["report", "--only", "done"])
        .arg(manifest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut reader = csv::Reader::from_reader(&out.stdout[..]);
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (file, id) = (col("file"), col("attachment_id"));
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let name = Path::new(&r[file]).file_name().unwrap();
            (name.to_string_lossy().into_owned(), r[id].to_string())
        })
        .collect()
}

/// Two files of one name (`report.txt`) and one size but different bytes, on Ada's note.
fn two_of_one_name_and_size(s: &Scratch) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let (a, b) = (b"AAAAAAAAAA".to_vec(), b"BBBBBBBBBB".to_vec());
    s.file("files/a.txt", &a);
    s.file("files/b.txt", &b);
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/a.txt,{ADA},note,{ADA_NOTE},report.txt\n\
         files/b.txt,{ADA},note,{ADA_NOTE},report.txt\n"
    ));
    (manifest, a, b)
}

/// Two rows put files of one name and size (different bytes) on one record. The first row's
/// attach is lost before it took effect, the second's after. The first row's check then finds
/// the second row's attachment (new since the snapshot, not claimed yet) and adopts it; the
/// second row finds its own attachment claimed and attaches again. Ada's note ends with b.txt
/// twice and a.txt not at all, and every row is `done`.
///
/// Made deterministic with two runs: `--retries 0 --concurrency 1` leaves both rows with an
/// unknown outcome, and the rerun checks them one at a time in manifest order. (The same
/// happens within one run at the default concurrency, depending on timing.)
#[test]
fn two_rows_of_one_name_and_size_one_answer_lost_before_one_after_attach_each_file_once() {
    let s = Scratch::new();
    let (manifest, a, b) = two_of_one_name_and_size(&s);
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:1:drop-before",
        "--fault-at",
        "POST /api/v3/attachments:2:drop-after",
    ]);
    let first = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(4), "{first:?}");
    let second = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert_eq!(
        md5s_on(&emu.state(), ADA_NOTE),
        sorted(vec![md5_hex(&a), md5_hex(&b)]),
        "each file once on Ada's note"
    );
}

/// Two rows of one name and size on one record, both attaches lost after they took effect;
/// the rerun reads the manifest in another order (reordering is documented as safe). The row
/// checked first adopts the oldest matching attachment, which is the other row's: both files are
/// on the record once, but each row holds the other's attachment, so `undo --lines` of one
/// row would delete the other row's file.
#[test]
fn two_rows_of_one_name_and_size_both_answers_lost_each_row_holds_its_own_attachment() {
    let s = Scratch::new();
    let (manifest, a, b) = two_of_one_name_and_size(&s);
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:1-2:drop-after",
    ]);
    let first = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(4), "{first:?}");
    // The same rows, the other way round.
    s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/b.txt,{ADA},note,{ADA_NOTE},report.txt\n\
         files/a.txt,{ADA},note,{ADA_NOTE},report.txt\n"
    ));
    let second = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let state = emu.state();
    assert_eq!(
        md5s_on(&state, ADA_NOTE),
        sorted(vec![md5_hex(&a), md5_hex(&b)])
    );
    let md5_of_attachment: HashMap<String, String> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_string(),
                x["md5"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let held = attachment_of_each_row(&manifest);
    for (file, bytes) in [("a.txt", &a), ("b.txt", &b)] {
        assert_eq!(
            held.get(file).and_then(|id| md5_of_attachment.get(id)),
            Some(&md5_hex(bytes)),
            "{file}'s row holds the attachment of its own bytes (rows: {held:?}, attachments: {md5_of_attachment:?})"
        );
    }
}

/// A record snapshotted by an earlier run of the state file is never read again before a new
/// row's first attach. A file of the same name and size attached by hand between the runs is
/// in no snapshot, so when the new row's attach is lost before it took effect, the row adopts
/// the hand-attached file: its own file is never attached, and the row is `done`.
#[test]
fn a_file_attached_by_hand_between_runs_is_not_adopted_by_a_new_row_of_its_name_and_size() {
    let s = Scratch::new();
    s.file("files/first.txt", "the first row's file");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/first.txt,{ADA},note,{ADA_NOTE},\n"
    ));
    // Attach #1: the first run; #2: by hand; #3: the new row's, lost before it takes effect.
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:3:drop-before",
    ]);
    let first = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let by_hand = attach_by_hand(&emu, &s, ADA, "note", ADA_NOTE, "report.txt", b"HANDHANDHA");
    let mine = b"MINEMINEMI";
    s.file("files/report.txt", mine);
    s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/first.txt,{ADA},note,{ADA_NOTE},\n\
         files/report.txt,{ADA},note,{ADA_NOTE},report.txt\n"
    ));
    let second = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let state = emu.state();
    assert!(
        md5s_on(&state, ADA_NOTE).contains(&md5_hex(mine)),
        "the new row's file is on Ada's note: {:#?}",
        state["attachments"]
    );
    let held = attachment_of_each_row(&manifest);
    assert_ne!(
        held["report.txt"], by_hand,
        "the row adopted the file attached by hand"
    );
}

/// The same for notes: a contact's notes are listed once, before the first note a state file
/// creates for it. A note of the same words and date made by hand between two runs is in no
/// snapshot, so a new group of the rerun whose `POST /notes` is lost before it took effect
/// adopts the person's note instead of creating its own.
#[test]
fn a_note_made_by_hand_between_runs_is_not_adopted_by_a_new_group_of_its_words_and_date() {
    let s = Scratch::new();
    s.file("files/x.txt", "the first group's file");
    s.file("files/r.txt", "the second group's file");
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\n\
         files/x.txt,{ADA},Intro,2024-05-01\n"
    ));
    // POST /notes #1: the first run; #2: by hand; #3: the new group's, lost before it arrives.
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--fault-at",
        "POST /api/v3/notes:3:drop-before",
    ]);
    let first = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let reply = emu.post(
        "/notes",
        &json!({"contact_id": ADA, "text": "Kick-off call", "date": "2024-05-01"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let by_hand = reply.json()["data"]["note"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.manifest(format!(
        "file,contact_id,note_text,note_date\n\
         files/x.txt,{ADA},Intro,2024-05-01\n\
         files/r.txt,{ADA},Kick-off call,2024-05-01\n"
    ));
    let second = emu
        .run_cmd(&manifest)
        .args(["--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let state = emu.state();
    let kick_offs: Vec<&Value> = state["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["contact_id"] == ADA && n["text"] == "Kick-off call")
        .collect();
    assert_eq!(
        kick_offs.len(),
        2,
        "the person's note and the migration's own: {kick_offs:#?}"
    );
    assert!(
        md5s_on(&state, &by_hand).is_empty(),
        "the migration attached its file to the note made by hand"
    );
}

/// A listing that shows a write late (`--list-lag`, which the documentation allows) also hides
/// it from the snapshot: a file of the row's name and size attached by hand a moment before the
/// run is not in the record's snapshot. The row's attach is lost before it took effect; once
/// the listing shows the hand-attached file (the emulator's clock is moved on as soon as the
/// lost attach is counted), the row adopts it and its own file is never attached.
#[test]
#[ignore = "a known limit, in docs/running.md: a snapshot holds what the listing shows when it is read; a write hidden by the listing's lag then, of the same name and size (words and date), is taken for a lost attempt's"]
fn a_file_attached_by_hand_just_before_a_run_behind_a_lagging_listing_is_not_adopted() {
    let s = Scratch::new();
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--list-lag",
        "30",
        // #1 by hand, #2 the row's: lost before it takes effect.
        "--fault-at",
        "POST /api/v3/attachments:2:drop-before",
    ]);
    // The seed's records are old by now; the file attached by hand is young.
    emu.advance_clock(60);
    let by_hand = attach_by_hand(&emu, &s, ADA, "note", ADA_NOTE, "report.txt", b"HANDHANDHA");
    let mine = b"MINEMINEMI";
    s.file("files/report.txt", mine);
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/report.txt,{ADA},note,{ADA_NOTE},report.txt\n"
    ));
    let run = spawn_run(&emu, &manifest, &["--settle-window", "120"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu
        .requests()
        .get("POST /api/v3/attachments dropped")
        .copied()
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the row's attach never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    // What a real 30 s would do: the hand-attached file shows in listings from now on.
    emu.advance_clock(60);
    let (code, stdout, stderr) = finish(run);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let state = emu.state();
    assert!(
        md5s_on(&state, ADA_NOTE).contains(&md5_hex(mine)),
        "the row's file is on Ada's note: {:#?}",
        state["attachments"]
    );
    assert_ne!(
        attachment_of_each_row(&manifest)["report.txt"],
        by_hand,
        "the row adopted the file attached by hand"
    );
}

/// A row that names another contact's record fails; a valid row of the record's own contact
/// must not. The records found bad are kept by (type, id) alone, so when the wrong row's
/// contact is read first, the valid row on the same deal fails for good as
/// `record_of_other_contact` too, with a message about the other contact.
#[test]
fn a_row_on_another_contacts_record_does_not_fail_the_valid_row_on_that_record() {
    let s = Scratch::new();
    s.file("files/w.txt", "wrongwrong");
    s.file("files/r.txt", "rightright");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id\n\
         files/w.txt,{GRACE},deal,{ADA_DEAL}\n\
         files/r.txt,{ADA},deal,{ADA_DEAL}\n"
    ));
    let emu = Emulator::start(&["--rate-limit", "off", "--opaque-links"]);
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1", "--json"])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    let failures = doc["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .all(|f| f["line"] == 2 && f["kind"] == "record_of_other_contact"),
        "only line 2 fails: {doc:#}"
    );
    assert_eq!(
        md5s_on(&emu.state(), ADA_DEAL),
        vec![md5_hex(b"rightright")],
        "Ada's own file is on her deal"
    );
}

/// A record that has a snapshot is never checked again: a later row that names it with another
/// contact uploads its bytes, and step 3 refuses it (`api_rejected`), instead of failing as
/// `record_of_other_contact` before any of its bytes is sent.
#[test]
fn a_row_on_another_contacts_already_read_record_fails_before_its_bytes_are_sent() {
    let s = Scratch::new();
    s.file("files/r.txt", "rightright");
    s.file("files/w.txt", "wrong file, 21 bytes.");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id\n\
         files/r.txt,{ADA},deal,{ADA_DEAL}\n\
         files/w.txt,{GRACE},deal,{ADA_DEAL}\n"
    ));
    let emu = Emulator::start(&["--rate-limit", "off", "--opaque-links"]);
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--concurrency", "1", "--json"])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    assert_eq!(doc["failures"][0]["line"], 3, "{doc:#}");
    assert_eq!(
        doc["failures"][0]["kind"], "record_of_other_contact",
        "{doc:#}"
    );
    let state = emu.state();
    let sizes: Vec<u64> = state["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["size"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        !sizes.contains(&21),
        "the wrong row's bytes reached S3: {}",
        state["requests"]
    );
    assert_eq!(status(&manifest)["by_state"]["done"], 1);
}

/// The same for notes: a note of the group's words and date made by hand a moment before the
/// run is hidden from the contact's note snapshot by a lagging listing. The group's
/// `POST /notes` is lost before it arrives; once the listing shows the person's note (the
/// emulator's clock is moved on as soon as the lost request is counted), the group adopts it
/// and creates no note of its own.
#[test]
#[ignore = "a known limit, in docs/running.md: a snapshot holds what the listing shows when it is read; a write hidden by the listing's lag then, of the same name and size (words and date), is taken for a lost attempt's"]
fn a_note_made_by_hand_just_before_a_run_behind_a_lagging_listing_is_not_adopted() {
    let s = Scratch::new();
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--list-lag",
        "30",
        // #1 by hand, #2 the group's: lost before it arrives.
        "--fault-at",
        "POST /api/v3/notes:2:drop-before",
    ]);
    emu.advance_clock(60);
    let reply = emu.post(
        "/notes",
        &json!({"contact_id": ADA, "text": "Kick-off call", "date": "2024-05-01"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let by_hand = reply.json()["data"]["note"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.file("files/r.txt", "the group's file");
    let manifest = s.manifest(format!(
        "file,contact_id,note_text,note_date\n\
         files/r.txt,{ADA},Kick-off call,2024-05-01\n"
    ));
    let run = spawn_run(&emu, &manifest, &["--settle-window", "120"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu
        .requests()
        .get("POST /api/v3/notes dropped")
        .copied()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the group's POST /notes never came"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    emu.advance_clock(60);
    let (code, stdout, stderr) = finish(run);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let state = emu.state();
    assert!(
        md5s_on(&state, &by_hand).is_empty(),
        "the migration attached its file to the note made by hand: {:#?}",
        state["notes"]
    );
}
