//! A state file written by an earlier version (commit c8035a8, schema 4; made by
//! `tests/fixtures/state-c8035a8/make.sh`) is read, resumed and reported by this one: a run killed
//! midway left 5 rows done, 6 pending, 1 uploading, 1 attaching, 2 failed (one after its
//! upload), 1 rejected, 2 created notes, 2 lookups and snapshots.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::emulator::{Emulator, tutorial_fields, upload};
use crate::common::{Scratch, json_stdout};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-c8035a8")
}

/// The fixture's manifest, files and state file in a scratch folder, the state file beside the
/// manifest under its default name. The files get the modification time the state file recorded
/// (a checkout gives them its own), so that they are the files the killed run saw.
fn fixture_copy() -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new();
    let manifest = s.path("manifest.csv");
    std::fs::copy(fixture().join("manifest.csv"), &manifest).unwrap();
    std::fs::create_dir_all(s.path("files")).unwrap();
    for entry in std::fs::read_dir(fixture().join("files")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), s.path("files").join(entry.file_name())).unwrap();
    }
    let state = s.path("manifest.opcrm.sqlite");
    std::fs::copy(fixture().join("state.sqlite"), &state).unwrap();
    for (file, mtime_ns) in query(
        &state,
        "SELECT file, mtime_ns FROM rows WHERE state <> 'rejected'",
    ) {
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::from_nanos(mtime_ns.parse::<u64>().unwrap());
        std::fs::File::options()
            .write(true)
            .open(s.path(&file))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    (s, manifest, state)
}

/// Pairs of text the state file answers `sql` with (read as SQLite sees it, not through the
/// library).
fn query(state: &Path, sql: &str) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(state).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| {
        let text = |i: usize| -> rusqlite::Result<String> {
            Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                v => v.as_str().unwrap_or_default().to_string(),
            })
        };
        Ok((text(0)?, text(1)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn user_version(state: &Path) -> i64 {
    rusqlite::Connection::open(state)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// The schema this version writes: one version per file in `migrations/`.
fn schema_now() -> i64 {
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count() as i64
}

fn by_state(status: &Value) -> BTreeMap<String, u64> {
    status["by_state"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn a_state_file_of_c8035a8_is_read_resumed_and_reported() {
    let (s, manifest, state) = fixture_copy();
    assert_eq!(user_version(&state), 4, "the fixture is of schema 4");
    let done_before: HashMap<String, String> = query(
        &state,
        "SELECT name, attachment_id FROM rows WHERE state = 'done'",
    )
    .into_iter()
    .collect();
    assert_eq!(done_before.len(), 5);

    // `status` reads it as it is, and changes nothing.
    let emu = Emulator::start_seeded(&fixture().join("seed.json"), &["--rate-limit", "off"], None);
    let out = emu
        .cmd()
        .args(["status", "--json"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status = json_stdout(&out);
    let expected: BTreeMap<String, u64> = [
        ("attaching", 1),
        ("done", 5),
        ("failed", 2),
        ("pending", 6),
        ("rejected", 1),
        ("uploading", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_state(&status), expected);
    assert_eq!(status["notes"]["created"], 2);
    assert_eq!(status["contacts_resolved"], 2);
    assert_eq!(user_version(&state), 4, "status migrates nothing");

    // The account as the killed run left it: its notes (in the seed), and in S3 the files of the
    // rows whose upload ended (an ETag is recorded) but that are not done.
    let staged = query(
        &state,
        "SELECT s3_key, file FROM rows WHERE etag IS NOT NULL AND state <> 'done'",
    );
    assert_eq!(
        staged.len(),
        2,
        "the attaching row and the one failed at step 3"
    );
    for (key, file) in &staged {
        let contact = key.split('/').next().unwrap();
        let form = emu.form(contact);
        let url = form["data"]["url"].as_str().unwrap();
        let name = key.rsplit('/').next().unwrap();
        let reply = upload(url, &tutorial_fields(&form, key, name), &s.path(file), &[]);
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    // The rejected row's file is there now.
    s.file("files/missing.txt", "the file that was missing\n");
    let before = emu.requests();

    // `run` takes it over (the manifest moved), migrates it and finishes every row.
    emu.run_cmd(&manifest).arg("--adopt-state").assert().code(0);
    assert_eq!(user_version(&state), schema_now(), "run migrates the file");
    let emulator = emu.state();
    let attached: Vec<&str> = emulator["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["filename"].as_str().unwrap())
        .collect();
    assert_eq!(attached.len(), 11, "{attached:?}");
    for name in done_before.keys() {
        assert!(
            !attached.contains(&name.as_str()),
            "{name} was done and is attached again"
        );
    }
    let after = emu.requests();
    let sent = |route: &str| {
        after.get(route).copied().unwrap_or(0) - before.get(route).copied().unwrap_or(0)
    };
    assert_eq!(
        sent("POST /{bucket}/ 201"),
        9,
        "one upload per row not uploaded"
    );
    assert_eq!(sent("POST /api/v3/attachments 201"), 11);
    assert_eq!(sent("POST /api/v3/notes 201"), 0, "the notes were created");
    assert_eq!(
        after
            .keys()
            .filter(|k| k.starts_with("GET /api/v3/contacts"))
            .count(),
        0,
        "the emails were looked up"
    );

    // `report` lists every row done; those done before keep their attachments.
    let out = emu
        .cmd()
        .args(["report", "--only", "all"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut csv = csv::Reader::from_reader(out.stdout.as_slice());
    let header = csv.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 16);
    for r in &records {
        assert_eq!(&r[column("state")], "done", "{r:?}");
        if let Some(id) = done_before.get(&r[column("name")]) {
            assert_eq!(&r[column("attachment_id")], id.as_str());
        }
    }
}
