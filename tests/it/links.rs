//! Links instead of files (issue 21): rows that attach a link to a file in cloud storage
//! (`link_url`, `link_type`; no upload, one call a row), exactly once as files are, whatever is
//! lost or killed on the way; `check` names each bad link row; `verify` and `undo` cover them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::emulator::Emulator;
use crate::common::{Scratch, bin, check_json, json_stdout, problems, sample_copy_of};
use crate::run::{manifest_rows, md5_hex};

/// Ada, her first note and her deal; Grace and her first note (samples/emulator-seed.json).
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_DEAL: &str = "ce6ec0cdddd720161b4cbd15";
const GRACE_NOTE: &str = "7e33486b2bfb833662cc8787";

/// A link whose name is its last path segment, percent-decoded: `Q3 report.pdf`.
const Q3: &str = "https://www.dropbox.com/s/q3/Q3%20report.pdf?dl=0";

/// Files and links mixed: by id and by email, on records given and on a note the run creates
/// (a file and a link share it), as `manifest.csv` beside the samples' files.
fn mixed() -> (Scratch, PathBuf) {
    let (s, _) = sample_copy_of("manifest.csv");
    let manifest = s.manifest(format!(
        "file,contact_id,contact_email,reference_type,reference_id,name,note_text,link_url,link_type\n\
         files/logo.png,{ADA},,note,{ADA_NOTE},,,,\n\
         ,{ADA},,note,{ADA_NOTE},,,{Q3},dropbox\n\
         ,{ADA},,deal,{ADA_DEAL},Plan,,https://drive.google.com/file/d/xyz/view,google_drive\n\
         ,,grace@cobol.example,note,{GRACE_NOTE},,,https://www.evernote.com/shard/s1/nl/1/Notebook,Evernote\n\
         ,{ADA},,,,Minutes,Kick-off,https://www.dropbox.com/s/m/minutes.pdf,dropbox\n\
         files/contract-signed.pdf,{ADA},,,,,Kick-off,,\n"
    ));
    (s, manifest)
}

/// The live attachments, their ids.
fn live(emu: &Emulator) -> BTreeSet<String> {
    ids(&emu.state()["attachments"])
}

fn ids(list: &Value) -> BTreeSet<String> {
    let list = list.as_array().unwrap();
    list.iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every row of `manifest` has exactly one attachment, on its record with its name: a link of
/// its URL and type for a link row, an upload of its file's bytes for a file row; and every
/// other live attachment is one of `others` (there before, or made by hand).
fn assert_each_row_once(state: &Value, manifest: &Path, others: &BTreeSet<String>) {
    let attachments = state["attachments"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for row in manifest_rows(manifest) {
        let on_record = |a: &&Value| {
            (row.reference_id.is_empty() || a["reference_id"] == row.reference_id.as_str())
                && a["filename"] == row.name.as_str()
                && !others.contains(a["id"].as_str().unwrap())
        };
        let mine: Vec<&Value> = match row.link() {
            Some(link) => attachments
                .iter()
                .filter(on_record)
                .filter(|a| a["link"]["external_url"] == link.url.as_str())
                .collect(),
            None => attachments
                .iter()
                .filter(on_record)
                .filter(|a| a["link"].is_null() && a["md5"] == md5_hex(&row.path).as_str())
                .collect(),
        };
        assert_eq!(mine.len(), 1, "line {}: {mine:#?}", row.line);
        if let Some(link) = row.link() {
            assert_eq!(
                mine[0]["link"]["storage_provider"],
                link.type_text(),
                "line {}",
                row.line
            );
            assert_eq!(mine[0]["size"], 0, "a link takes no storage");
        }
        used.insert(mine[0]["id"].as_str().unwrap().to_string());
    }
    let all = ids(&state["attachments"]);
    let unexplained: Vec<&String> = all
        .difference(&used)
        .filter(|id| !others.contains(*id))
        .collect();
    assert!(
        unexplained.is_empty(),
        "attachments of no row: {unexplained:?}"
    );
}

/// `run --json` of `manifest` with `args`: its exit code and summary.
fn run(emu: &Emulator, manifest: &Path, args: &[&str]) -> (i32, Value) {
    let out = emu
        .run_cmd(manifest)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), json_stdout(&out))
}

/// The attachment id `report --only done` gives each line of `manifest`'s state file.
fn recorded_ids(manifest: &Path) -> Vec<String> {
    let out = bin()
        .args(["report", "--only", "done"])
        .arg(manifest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "attachment_id")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[at].to_string())
        .collect()
}

#[test]
fn a_manifest_mixing_files_and_links_attaches_each_row_once_and_uploads_only_the_files() {
    let (s, manifest) = mixed();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let before = emu.state();
    let storage_before = before["storage_left"].as_u64().unwrap();

    // The plan counts the links apart: nothing to upload for them.
    let (code, plan) = run(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{plan:#}");
    assert_eq!(
        (
            &plan["to_upload"],
            &plan["to_attach"],
            &plan["links_to_attach"]
        ),
        (&json!(2), &json!(0), &json!(4)),
        "{plan:#}"
    );
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(
        (&doc["done_now"], &doc["links_attached"]),
        (&json!(6), &json!(4))
    );
    let state = emu.state();
    assert_each_row_once(&state, &manifest, &ids(&before["attachments"]));
    // Only the two files went to S3 and count against the storage.
    let objects = |s: &Value| s["objects"].as_array().unwrap().len();
    assert_eq!(objects(&state), objects(&before) + 2);
    let files: u64 = ["files/logo.png", "files/contract-signed.pdf"]
        .iter()
        .map(|f| std::fs::metadata(s.path(f)).unwrap().len())
        .sum();
    assert_eq!(
        state["storage_left"].as_u64().unwrap(),
        storage_before - files
    );
    assert_eq!(doc["bytes_uploaded"], files);

    // Done is done: a rerun sends nothing.
    let (code, again) = run(&emu, &manifest, &[]);
    assert_eq!((code, &again["done_before"]), (0, &json!(6)), "{again:#}");
    assert_eq!(emu.state()["requests"], state["requests"]);
}

/// A one-link manifest: `Q3` on Ada's first note (named `Q3 report.pdf`).
fn one_link(s: &Scratch) -> PathBuf {
    s.manifest(format!(
        "contact_id,reference_type,reference_id,link_url,link_type\n{ADA},note,{ADA_NOTE},{Q3},dropbox\n"
    ))
}

/// The same link, attached to Ada's first note by hand (as someone did before the migration):
/// the emulator's first `POST /attachments`. Its id.
fn attach_link_by_hand(emu: &Emulator) -> String {
    let reply = emu.post(
        "/attachments",
        &json!({"reference_type": "note", "reference_id": ADA_NOTE, "contact_id": ADA,
                "name": "Q3 report.pdf", "link_type": "dropbox", "external_url": Q3}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["data"]["attachment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The live links to `Q3` on Ada's first note.
fn q3_links(emu: &Emulator) -> BTreeSet<String> {
    let state = emu.state();
    let links = state["attachments"].as_array().unwrap().iter();
    links
        .filter(|a| a["reference_id"] == ADA_NOTE && a["link"]["external_url"] == Q3)
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// The link's answer is lost (after it took effect, or before it reached the API), in the run
/// (its retries settle it) or with no retries left (the next run settles it). The same link was
/// attached by hand before: it is in the record's snapshot and never taken for the row's, so
/// the row ends with one link of its own, never two.
#[test]
fn a_lost_answer_to_a_links_attach_is_settled_without_a_second_attachment() {
    for fault in ["drop-after", "drop-before"] {
        for retries in ["5", "0"] {
            let what = format!("{fault}, --retries {retries}");
            // The 1st attach is the one made by hand; the run's (the 2nd) is lost.
            let emu = Emulator::with_faults(&[&format!("POST /api/v3/attachments:2:{fault}")]);
            let s = Scratch::new();
            let manifest = one_link(&s);
            let by_hand = attach_link_by_hand(&emu);
            let (mut code, mut doc) = run(&emu, &manifest, &["--retries", retries]);
            if retries == "0" {
                assert_eq!(code, 4, "{what}: {doc:#}");
                assert_eq!(doc["failures"][0]["file"], Q3, "{what}: {doc:#}");
                (code, doc) = run(&emu, &manifest, &[]);
            }
            assert_eq!(code, 0, "{what}: {doc:#}");
            let links = q3_links(&emu);
            assert_eq!(links.len(), 2, "{what}: the one by hand and the row's");
            let recorded = recorded_ids(&manifest);
            assert_eq!(recorded.len(), 1, "{what}");
            assert!(
                links.contains(&recorded[0]) && recorded[0] != by_hand,
                "{what}: the row holds its own link, not the one by hand"
            );
            // Sent again only when the lost one had not taken effect.
            let requests = &emu.state()["requests"];
            let made = requests["POST /api/v3/attachments 201"]
                .as_u64()
                .unwrap_or(0);
            let lost = requests["POST /api/v3/attachments dropped"]
                .as_u64()
                .unwrap_or(0);
            let expected = match fault {
                "drop-after" => 1,
                _ => 2,
            };
            assert_eq!((made, lost), (expected, 1), "{what}: {requests}");
            let status = bin().arg("status").arg(&manifest).output().unwrap();
            let status = String::from_utf8_lossy(&status.stdout);
            assert!(!status.contains("attach_unsettled"), "{what}: {status}");
        }
    }
}

/// A seed of 6 contacts with 2 notes each, and a manifest of 24 rows on them: files and links
/// in turn (links of each type, some of two rows sharing a name on one note).
fn generated(s: &Scratch) -> (PathBuf, PathBuf) {
    let seed = s.file("seed.json", r#"{"generate": {"contacts": 6, "notes": 2}}"#);
    let mut manifest =
        String::from("file,contact_id,reference_type,reference_id,name,link_url,link_type\n");
    for i in 0..24usize {
        let (k, j) = (i % 6, (i / 6) % 2);
        let (contact, note) = (format!("cc{k:022x}"), format!("a0{k:010x}{j:012x}"));
        if i % 2 == 0 {
            let body: String = (0..(50 + i * 37))
                .map(|n| char::from(b'a' + ((i + n) % 26) as u8))
                .collect();
            s.file(&format!("files/doc-{i:02}.txt"), body);
            manifest.push_str(&format!("files/doc-{i:02}.txt,{contact},note,{note},,,\n"));
        } else {
            let link_type = ["dropbox", "google_drive", "evernote"][i % 3];
            // Drive links all end in `view`: rows of one name on one note, told apart by URL.
            let url = format!("https://drive.example/file/d/{i}/view");
            manifest.push_str(&format!(",{contact},note,{note},,{url},{link_type}\n"));
        }
    }
    (seed, s.manifest(manifest))
}

#[test]
fn runs_killed_at_request_counts_then_rerun_attach_each_row_once() {
    let s = Scratch::new();
    let (seed, manifest) = generated(&s);
    // Some answers lost on the way too (the same ones on every machine: seeded).
    let args = [
        "--rate-limit",
        "off",
        "--drop-rate",
        "0.1",
        "--fault-seed",
        "21",
    ];
    let emu = Emulator::start_seeded(&seed, &args, None);
    // Each run is killed while a server in front of the emulator holds its `at`th request (let
    // go once the run is dead, so that what it asked for is done with its answer lost): the same
    // moments on a slow or a fast machine. A run that ends before it makes that many requests is
    // not killed.
    let mut kills = 0;
    for at in [3, 8, 5, 12, 4, 9, 6, 10] {
        let (server, hold) = crate::streaming::holding_request(&emu, at);
        let run_args = ["--concurrency", "2", "--retries", "1"];
        let mut child = crate::streaming::spawn_batched(&server.api, &manifest, 5, &run_args);
        while server.requests().len() <= at && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            crate::faults::signal(&child, libc::SIGKILL);
            kills += 1;
        }
        let _ = child.wait();
        *hold.0.lock().unwrap() = true;
        hold.1.notify_all();
    }
    assert!(kills >= 4, "{kills} runs killed mid-way");
    let mut last = Value::Null;
    for _ in 0..10 {
        let (code, doc) = run(&emu, &manifest, &["--retries", "10"]);
        last = doc;
        if code == 0 {
            break;
        }
        assert_eq!(code, 4, "{last:#}");
    }
    assert_eq!(last["exit_code"], 0, "{last:#}");
    let state = emu.state();
    assert_each_row_once(&state, &manifest, &BTreeSet::new());
    // A rerun of the done manifest sends nothing.
    let (code, again) = run(&emu, &manifest, &[]);
    assert_eq!((code, &again["done_before"]), (0, &json!(24)), "{again:#}");
    assert_eq!(emu.state()["requests"], state["requests"]);
}

#[test]
fn check_names_each_bad_link_row_with_its_line_and_value_and_run_sends_nothing() {
    let s = Scratch::new();
    s.file("a.pdf", b"a file");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_id,link_url,link_type\n\
         ,{ADA},{ADA_NOTE},http://www.dropbox.com/s/a/plain.pdf,dropbox\n\
         ,{ADA},{ADA_NOTE},https://www.dropbox.com/s/b/b.pdf,onedrive\n\
         a.pdf,{ADA},{ADA_NOTE},https://www.dropbox.com/s/c/c.pdf,dropbox\n\
         ,{ADA},{ADA_NOTE},,\n\
         a.pdf,{ADA},{ADA_DEAL},,evernote\n\
         ,{ADA},{ADA_NOTE},https://www.dropbox.com/,dropbox\n\
         ,{ADA},{ADA_NOTE},https://www.dropbox.com/s/d/d.pdf,dropbox\n\
         ,{ADA},{ADA_NOTE},https://www.dropbox.com/s/d/d.pdf,dropbox\n\
         ,{ADA},{ADA_DEAL},https://www.dropbox.com/s/d/d.pdf,dropbox\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc:#}");
    let got: Vec<(u64, String, String)> = problems(&doc)
        .into_iter()
        .map(|(line, column, kind)| (line.unwrap(), column.unwrap(), kind))
        .collect();
    let want: Vec<(u64, &str, &str)> = vec![
        (2, "link_url", "invalid_link_url"),
        (3, "link_type", "unknown_link_type"),
        (4, "link_url", "link_conflict"),
        (5, "file", "missing_field"),
        (6, "link_type", "link_conflict"),
        (7, "link_url", "invalid_name"),
        (9, "link_url", "duplicate_attachment"),
    ];
    let want: Vec<(u64, String, String)> = want
        .into_iter()
        .map(|(l, c, k)| (l, c.to_string(), k.to_string()))
        .collect();
    assert_eq!(got, want, "{doc:#}");
    let message = |line: u64| {
        let all = doc["problems"].as_array().unwrap();
        let p = all.iter().find(|p| p["line"] == line).unwrap();
        p["message"].as_str().unwrap().to_string()
    };
    for (line, value) in [
        (2, "http://www.dropbox.com/s/a/plain.pdf"),
        (3, "onedrive"),
        (4, "https://www.dropbox.com/s/c/c.pdf"),
        (5, "link_url"),
        (6, "evernote"),
        (7, "https://www.dropbox.com/"),
        (9, "on line 8"),
    ] {
        assert!(
            message(line).contains(value),
            "line {line}: {}",
            message(line)
        );
    }
    // The readable report says the same, line by line.
    let out = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("line 3, column link_type: unknown link type \"onedrive\""),
        "{text}"
    );
    // `run` refuses it whole: nothing is sent.
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(crate::faults::requests_seen(&emu), 0);
}

/// `verify` of `manifest`: its exit code and JSON document.
fn verify(emu: &Emulator, manifest: &Path) -> (i32, Value) {
    let out = emu
        .cmd()
        .arg("verify")
        .arg(manifest)
        .args(["--rate", "off", "--json", "--no-progress"])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), json_stdout(&out))
}

#[test]
fn a_mixed_run_verifies_a_link_deleted_by_hand_is_missing_and_undo_removes_the_links_too() {
    let (_s, manifest) = mixed();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let before = live(&emu);
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc:#}");
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 0, "{doc:#}");
    let made: BTreeSet<String> = live(&emu).difference(&before).cloned().collect();
    assert_eq!(made.len(), 6);

    // Line 3's link deleted through the API: that line is missing, the others ok.
    let line_3 = recorded_ids(&manifest)[1].clone();
    let reply = crate::common::emulator::curl(
        &[
            "-X".into(),
            "DELETE".into(),
            format!("{}/attachments/{line_3}", emu.api),
        ],
        Some((
            crate::common::emulator::USER_ID,
            crate::common::emulator::API_KEY,
        )),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 1, "{doc:#}");
    let text = doc.to_string();
    assert!(text.contains("\"missing\"") && text.contains(Q3), "{doc:#}");

    // Undo deletes every attachment the state file made, links too (the one gone already counts
    // as gone), and the created note; nothing else.
    let out = emu
        .cmd()
        .arg("undo")
        .arg(&manifest)
        .args(["--yes", "--json", "--rate", "off"])
        .output()
        .unwrap();
    let undone = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{undone:#}");
    assert_eq!(
        (
            &undone["attachments_deleted"],
            &undone["attachments_already_gone"]
        ),
        (&json!(5), &json!(1)),
        "{undone:#}"
    );
    assert_eq!(
        live(&emu),
        before,
        "every attachment it made gone, no other"
    );
    assert_eq!(ids(&emu.state()["deleted_attachments"]), made);
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 0, "verify after undo: {doc:#}");
}

#[test]
fn a_failed_link_row_comes_back_in_the_failed_report_as_a_link_row_to_fix() {
    let s = Scratch::new();
    let missing = "0123456789abcdef01234567";
    let manifest = s.manifest(format!(
        "contact_id,reference_type,reference_id,name,link_url,link_type\n\
         {ADA},deal,{ADA_DEAL},,{Q3},dropbox\n\
         {ADA},deal,{missing},Gone,https://drive.google.com/file/d/xyz/view,google_drive\n"
    ));
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["failures"][0]["kind"], "record_not_found", "{doc:#}");
    let fix = s.path("fix.csv");
    bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .assert()
        .success();
    let rows = manifest_rows(&fix);
    assert_eq!(rows.len(), 1);
    let link = rows[0].link().expect("a link row");
    assert_eq!(
        (link.url.as_str(), link.type_text(), rows[0].name.as_str()),
        (
            "https://drive.google.com/file/d/xyz/view",
            "google_drive",
            "Gone"
        )
    );
    assert_eq!((rows[0].file.as_str(), rows[0].line), ("", 2));
    let (code, doc) = check_json(&fix, &["--offline"]);
    assert_eq!(code, 0, "the report is a manifest: {doc:#}");
}

#[test]
fn link_rows_that_ask_for_a_pin_are_pinned_once_and_a_rerun_sends_nothing() {
    let (s, _) = sample_copy_of("manifest.csv");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_type,reference_id,link_url,link_type,pin\n\
         ,{ADA},note,{ADA_NOTE},{Q3},dropbox,true\n\
         ,{ADA},deal,{ADA_DEAL},https://www.dropbox.com/s/n/not-pinned.pdf,dropbox,\n\
         files/logo.png,{ADA},note,{ADA_NOTE},,,yes\n"
    ));
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["pinned"], 2, "{doc:#}");
    let pinned: Vec<String> = emu.state()["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["pinned_at"].is_string())
        .map(|a| a["filename"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pinned.len(), 2, "{pinned:?}");
    assert!(pinned.contains(&"Q3 report.pdf".to_string()), "{pinned:?}");
    let requests = emu.state()["requests"].clone();
    let (code, doc) = run(&emu, &manifest, &[]);
    assert_eq!((code, &doc["done_before"]), (0, &json!(3)), "{doc:#}");
    assert_eq!(emu.state()["requests"], requests, "a rerun sends nothing");
}
