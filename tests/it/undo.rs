//! `undo`: deletes exactly what a state file made, each thing once, and nothing else; resumable
//! after kills and lost answers; `run` leaves removed rows alone unless `--redo-removed`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::emulator::{Emulator, tutorial_fields, tutorial_key, upload};
use crate::common::{json_stdout, sample_copy_of, samples};

/// The ids of the emulator's live attachments.
fn live(emu: &Emulator) -> BTreeSet<String> {
    ids(&emu.state()["attachments"])
}

/// The ids of the emulator's deleted attachments.
fn deleted(emu: &Emulator) -> BTreeSet<String> {
    ids(&emu.state()["deleted_attachments"])
}

/// The ids of the emulator's notes.
fn notes(emu: &Emulator) -> BTreeSet<String> {
    ids(&emu.state()["notes"])
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// DELETE requests the emulator has seen.
fn deletes_seen(emu: &Emulator) -> u64 {
    emu.state()["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("DELETE"))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

/// `undo` of `manifest` with `args`, pointed at `emu`: its exit code and stdout.
fn undo(emu: &Emulator, manifest: &Path, args: &[&str]) -> (i32, String) {
    let out = emu
        .cmd()
        .arg("undo")
        .arg(manifest)
        .args(["--rate", "off"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `run` of `manifest` with `args` to its end: its summary.
fn run(emu: &Emulator, manifest: &Path, args: &[&str]) -> Value {
    let out = emu
        .run_cmd(manifest)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    json_stdout(&out)
}

/// Runs `manifest` until every row is done (lost answers may fail rows, retryable).
fn run_to_the_end(emu: &Emulator, manifest: &Path) {
    for _ in 0..10 {
        let doc = run(emu, manifest, &["--retries", "10"]);
        if doc["exit_code"] == 0 {
            return;
        }
        assert_eq!(doc["exit_code"], 4, "{doc:#}");
    }
    panic!("the run never finished");
}

fn status(manifest: &Path) -> Value {
    let out = crate::common::bin()
        .arg("status")
        .arg(manifest)
        .arg("--json")
        .output()
        .unwrap();
    json_stdout(&out)
}

#[test]
fn the_sample_is_undone_once_nothing_else_is_touched_and_run_leaves_it_unless_redo_removed() {
    let (_s, manifest) = sample_copy_of("manifest.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let before = live(&emu);
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    let made: BTreeSet<String> = live(&emu).difference(&before).cloned().collect();
    assert_eq!(made.len(), 20);

    // Not on a terminal and no --yes: refused, nothing sent.
    let (code, _) = undo(&emu, &manifest, &[]);
    assert_eq!(code, 2);
    // A dry run lists every attachment and sends nothing.
    let (code, out) = undo(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 attachments, up to 0 notes: 20 API calls"),
        "{out}"
    );
    for id in &made {
        assert!(out.contains(id.as_str()), "{id} listed: {out}");
    }
    assert_eq!(deletes_seen(&emu), 0);
    assert_eq!(live(&emu).len(), before.len() + 20);

    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("attachments deleted: 20 (0 were gone already)"),
        "{out}"
    );
    assert!(out.contains("storage is not given back at once"), "{out}");
    assert_eq!(
        live(&emu),
        before,
        "every attachment it made gone, no other"
    );
    assert_eq!(deleted(&emu), made);
    assert_eq!(deletes_seen(&emu), 20, "one delete each");
    let by_state = &status(&manifest)["by_state"];
    assert_eq!(by_state["removed"], 20, "{by_state}");
    assert_eq!(by_state["done"], 0, "{by_state}");

    // Again: nothing to send.
    let requests = emu.state()["requests"].clone();
    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Nothing to undo"), "{out}");
    assert!(
        out.contains("20 rows were removed by an earlier undo"),
        "{out}"
    );
    // A run leaves the removed rows alone...
    let doc = run(&emu, &manifest, &[]);
    assert_eq!(doc["removed"], 20, "{doc:#}");
    assert_eq!(doc["done_now"], 0, "{doc:#}");
    assert_eq!(emu.state()["requests"], requests, "nothing sent");
    // ...unless asked.
    let doc = run(&emu, &manifest, &["--redo-removed"]);
    assert_eq!(doc["done_now"], 20, "{doc:#}");
    assert_eq!(doc["removed"], 0, "{doc:#}");
    assert_eq!(live(&emu).len(), before.len() + 20);
}

#[test]
fn lines_undo_only_those_rows() {
    let (_s, manifest) = sample_copy_of("manifest.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    let (code, out) = undo(&emu, &manifest, &["--yes", "--lines", "3,7-9", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["attachments_deleted"], 4, "{doc:#}");
    let rows = crate::common::bin()
        .args(["report", "--only", "all"])
        .arg(&manifest)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&rows.stdout).into_owned();
    let removed = report.lines().filter(|l| l.contains(",removed,")).count();
    assert_eq!(removed, 4, "{report}");
    assert_eq!(deletes_seen(&emu), 4);
    // A bad list is a usage error, before anything is sent.
    let (code, _) = undo(&emu, &manifest, &["--yes", "--lines", "9-3"]);
    assert_eq!(code, 2);
    assert_eq!(deletes_seen(&emu), 4);
}

/// A file of the sample attached by hand to `note` of `contact`, through the three steps.
fn attach_by_hand(emu: &Emulator, contact: &str, note: &str) -> String {
    let file = samples().join("files/logo.png");
    let form = emu.form(contact);
    let key = tutorial_key(&form, contact, "by-hand.png");
    let reply = upload(
        &emu.s3,
        &tutorial_fields(&form, &key, "by-hand.png"),
        &file,
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let size = std::fs::metadata(&file).unwrap().len();
    let body = json!({"reference_id": note, "reference_type": "note", "contact_id": contact,
        "name": "by-hand.png", "key": key, "size": size});
    let reply = emu.post("/attachments", &body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["data"]["attachment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn created_notes_are_deleted_but_one_someone_else_added_a_file_to_is_kept_and_named() {
    let (_s, manifest) = sample_copy_of("notes.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (notes_before, before) = (notes(&emu), live(&emu));
    let doc = run(&emu, &manifest, &[]);
    assert_eq!(doc["notes_created"], 5, "{doc:#}");
    let created: Vec<Value> = status(&manifest)["notes"]["list"]
        .as_array()
        .unwrap()
        .clone();
    let (note, contact) = (
        created[0]["note_id"].as_str().unwrap().to_string(),
        created[0]["contact_id"].as_str().unwrap().to_string(),
    );
    let by_hand = attach_by_hand(&emu, &contact, &note);

    let (code, out) = undo(&emu, &manifest, &["--yes", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["notes_deleted"], 4, "{doc:#}");
    assert_eq!(doc["notes_kept"][0]["note_id"], note.as_str(), "{doc:#}");
    assert_eq!(doc["notes_kept"][0]["attachments"], 1, "{doc:#}");
    let mut expected = notes_before.clone();
    expected.insert(note.clone());
    assert_eq!(notes(&emu), expected, "the kept note stays, the others go");
    let mut expected = before.clone();
    expected.insert(by_hand);
    assert_eq!(live(&emu), expected, "the file added by hand stays");
    let (_, text) = undo(&emu, &manifest, &["--yes"]);
    assert!(
        text.contains(&format!("kept note {note} of contact {contact}")),
        "{text}"
    );
}

#[test]
fn undo_under_faults_lost_answers_and_kills_deletes_each_thing_once_and_nothing_else() {
    for seed in ["3"] {
        let (_s, manifest) = sample_copy_of("notes.csv");
        let emu = Emulator::start(&[
            "--rate-limit",
            "off",
            "--fault-rate",
            "0.3",
            "--drop-rate",
            "0.3",
            "--fault-seed",
            seed,
        ]);
        let (notes_before, before) = (notes(&emu), live(&emu));
        run_to_the_end(&emu, &manifest);
        let made: BTreeSet<String> = live(&emu).difference(&before).cloned().collect();
        assert_eq!(made.len(), 11);
        // Each undo goes through a server that holds its 3rd, 4th, 5th ... API request, and is
        // killed while that request is held (it reaches the emulator after the kill): the same
        // moments on a slow or a fast machine.
        let mut kills = 0;
        for step in 1..=6usize {
            let killed = crate::streaming::killed_while_held(&emu, 2 + step, |api| {
                std::process::Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
                    .env("ONEPAGECRM_API_URL", api)
                    .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
                    .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
                    .arg("undo")
                    .arg(&manifest)
                    .args(["--yes", "--rate", "off", "--retries", "2"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            });
            kills += usize::from(killed);
        }
        assert!(kills >= 2, "seed {seed}: {kills} undos killed mid-way");
        let mut last = String::new();
        for _ in 0..10 {
            let (code, out) = undo(&emu, &manifest, &["--yes", "--retries", "10"]);
            last = out;
            if code == 0 {
                break;
            }
        }
        assert_eq!(live(&emu), before, "seed {seed}: {last}");
        assert_eq!(deleted(&emu), made, "seed {seed}: only what the run made");
        assert_eq!(
            notes(&emu),
            notes_before,
            "seed {seed}: the created notes gone"
        );
        let status = status(&manifest);
        assert_eq!(status["by_state"]["removed"], 11, "{status:#}");
        assert_eq!(status["notes"]["removed"], 5, "{status:#}");
        let (code, out) = undo(&emu, &manifest, &["--yes"]);
        assert_eq!((code, out.contains("Nothing to undo")), (0, true), "{out}");
    }
}

#[test]
fn an_attachment_replaced_by_reupload_changed_is_undone_too() {
    let (s, manifest) = sample_copy_of("manifest.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let before = live(&emu);
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    // Line 4's file changes (its size stays), and is uploaded again: its record holds both
    // versions, of one name and size.
    let logo = s.path("files/logo.png");
    let mut bytes = std::fs::read(&logo).unwrap();
    bytes.reverse();
    std::fs::write(&logo, bytes).unwrap();
    let doc = run(&emu, &manifest, &["--reupload-changed"]);
    assert_eq!(doc["exit_code"], 0, "{doc:#}");
    // Both are the state file's own: `verify` takes the earlier one for no duplicate.
    let (code, checked) = verify(&emu, &manifest);
    assert_eq!(code, 0, "{checked:#}");
    let made: BTreeSet<String> = live(&emu).difference(&before).cloned().collect();
    let reuploaded = doc["done_now"].as_u64().unwrap() as usize;
    assert!(reuploaded >= 1, "{doc:#}");
    assert_eq!(made.len(), 20 + reuploaded);

    let (code, out) = undo(&emu, &manifest, &["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("before --reupload-changed"), "{out}");
    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(live(&emu), before, "both versions gone: {out}");
    assert_eq!(deleted(&emu), made);
    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!((code, out.contains("Nothing to undo")), (0, true), "{out}");
}

#[test]
fn a_state_file_locked_by_a_run_is_refused_also_through_a_link_and_nothing_is_sent() {
    let (_s, manifest) = sample_copy_of("manifest.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    // A run holds the state file's lock (as `run` takes it: a `flock` on the file itself), also
    // when undo reaches it through a link.
    let state = manifest.with_file_name("manifest.opcrm.sqlite");
    let held = std::fs::File::open(&state).unwrap();
    held.try_lock().unwrap();
    let link = manifest.with_file_name("link.sqlite");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    for args in [
        vec!["--yes"],
        vec!["--yes", "--state", link.to_str().unwrap()],
    ] {
        let (code, out) = undo(&emu, &manifest, &args);
        assert_eq!(code, 3, "{args:?}: {out}");
    }
    assert_eq!(deletes_seen(&emu), 0);
    drop(held);
    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0, "{out}");
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
fn the_sample_run_verified_an_attachment_deleted_by_hand_missing_undone_then_verified_as_removed() {
    let (_s, manifest) = sample_copy_of("notes.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (notes_before, before) = (notes(&emu), live(&emu));
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    let (code, doc) = verify(&emu, &manifest);
    assert_eq!(code, 0, "{doc:#}");

    // One attachment deleted through the API: its line is missing.
    let rows = crate::common::bin()
        .args(["report", "--only", "done"])
        .arg(&manifest)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&rows.stdout).into_owned();
    let first = report.lines().nth(1).unwrap().to_string();
    let gone = first
        .split(',')
        .find(|f| f.len() == 24 && live(&emu).contains(*f))
        .unwrap()
        .to_string();
    let reply = crate::common::emulator::curl(
        &[
            "-X".into(),
            "DELETE".into(),
            format!("{}/attachments/{gone}", emu.api),
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
    assert!(text.contains("\"missing\""), "{doc:#}");

    // Undo: everything the state file made is gone (the attachment deleted by hand counts as
    // gone already), and nothing else.
    let (code, out) = undo(&emu, &manifest, &["--yes", "--json"]);
    assert_eq!(code, 0, "{out}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["attachments_already_gone"], 1, "{done:#}");
    assert_eq!(done["attachments_deleted"], 10, "{done:#}");
    assert_eq!(done["notes_deleted"], 5, "{done:#}");
    assert_eq!((live(&emu), notes(&emu)), (before, notes_before));
    let requests = emu.state()["requests"].clone();
    let (code, _) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0);
    assert_eq!(
        emu.state()["requests"],
        requests,
        "undo again sends nothing"
    );

    // Verify after undo: the rows are removed, not problems.
    let out = emu
        .cmd()
        .arg("verify")
        .arg(&manifest)
        .args(["--rate", "off", "--no-progress"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Removed:    11 (taken back by `undo`)"),
        "{text}"
    );
}

/// A pseudo-terminal: its controller's and its terminal's ends.
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (0, 0);
    let made = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(made, 0, "openpty");
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(controller),
            std::os::fd::OwnedFd::from_raw_fd(terminal),
        )
    }
}

#[test]
fn on_a_terminal_undo_shows_what_it_deletes_and_deletes_only_on_yes() {
    let (_s, manifest) = sample_copy_of("manifest.csv");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let before = live(&emu);
    assert_eq!(run(&emu, &manifest, &[])["exit_code"], 0);
    for (answer, code, deletes) in [("no\n", 1, 0), ("yes\n", 0, 20)] {
        let (controller, terminal) = pty();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
            .env("ONEPAGECRM_API_URL", &emu.api)
            .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
            .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
            .arg("undo")
            .arg(&manifest)
            .args(["--rate", "off"])
            .stdin(std::process::Stdio::from(terminal))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut typed = std::fs::File::from(controller);
        std::io::Write::write_all(&mut typed, answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let asked = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{answer:?}: {asked}");
        assert!(
            asked.contains("line 2: files/proposal-acme.pdf on deal")
                && asked.contains("Delete 20 attachments and up to 0 notes from OnePageCRM?"),
            "{asked}"
        );
        assert_eq!(deletes_seen(&emu), deletes, "{answer:?}");
    }
    assert_eq!(live(&emu), before);
}

#[test]
fn pinned_rows_undone_then_redone_are_pinned_again() {
    let (_s, manifest) = sample_copy_of("manifest.csv");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let pinned: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{l},{}\n", if i == 0 { "pin" } else { "true" }))
        .collect();
    std::fs::write(&manifest, pinned).unwrap();
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let doc = run(&emu, &manifest, &[]);
    assert_eq!(doc["pinned"], 20, "{doc:#}");
    let pinned_now = |emu: &Emulator| -> BTreeSet<String> {
        emu.state()["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["pinned_at"].is_string())
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = pinned_now(&emu);
    assert_eq!(first.len(), 20);
    let (code, out) = undo(&emu, &manifest, &["--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(pinned_now(&emu).is_empty());
    let doc = run(&emu, &manifest, &["--redo-removed"]);
    assert_eq!(
        (doc["done_now"].as_u64(), doc["pinned"].as_u64()),
        (Some(20), Some(20)),
        "{doc:#}"
    );
    let again = pinned_now(&emu);
    assert_eq!(again.len(), 20);
    assert!(again.is_disjoint(&first), "new attachments, each pinned");
}
