//! A run reads its manifest in chunks and its rows back from the state file in batches
//! (`OPCRM_BATCH_ROWS`, 4,096 by default). With batches of 1, 2 or 3 rows a small manifest
//! crosses many batch edges: every test here says that a streamed run ends exactly as one that
//! reads the manifest in one batch (same exit code, summary, `status`, `report`, stderr and
//! emulator state), that what spans rows (duplicates, identical lines, note groups and
//! note_key conflicts, emails) is told across edges as `check` tells it in one piece, and that
//! kills, interrupts and edits between runs with small batches lose nothing and send nothing
//! twice. Moments are chosen by requests seen, never by time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use opcrm_import::checkpoint::{StateFile, Transition};
use opcrm_import::manifest::ReadOptions;
use serde_json::{Value, json};

use crate::common::emulator::Emulator;
use crate::common::{Scratch, bin, json_stdout, samples};
use crate::run::assert_exactly_once;

/// The batch sizes every comparison runs: the default, then 1, 2 and 3 rows.
const SIZES: [Option<usize>; 4] = [None, Some(1), Some(2), Some(3)];

/// `cmd` with `OPCRM_BATCH_ROWS` set to `batch` (or not set at all: the default).
fn batched(cmd: &mut assert_cmd::Command, batch: Option<usize>) -> &mut assert_cmd::Command {
    match batch {
        Some(n) => cmd.env("OPCRM_BATCH_ROWS", n.to_string()),
        None => cmd.env_remove("OPCRM_BATCH_ROWS"),
    }
}

/// A scratch copy of the files of `folder` (in `samples/`) under `files/`, symbolic links and
/// folders as they are, and of the manifest `name` (in `samples/`) as `manifest.csv`.
fn copy_of(folder: &str, name: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new();
    let files = s.path("files");
    std::fs::create_dir_all(&files).unwrap();
    for entry in std::fs::read_dir(samples().join(folder)).unwrap() {
        let entry = entry.unwrap();
        let (from, to) = (entry.path(), files.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else if kind.is_dir() {
            std::fs::create_dir(&to).unwrap();
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    let manifest = s.path("manifest.csv");
    std::fs::copy(samples().join(name), &manifest).unwrap();
    (s, manifest)
}

/// How a run ended: its exit code, its `--json` document and its stderr.
struct Ran {
    code: i32,
    doc: Value,
    stderr: String,
}

/// `run MANIFEST --rate off --json` with batches of `batch` rows and `args`.
fn run(emu: &Emulator, manifest: &Path, batch: Option<usize>, args: &[&str]) -> Ran {
    run_as(emu.run_cmd(manifest), batch, args)
}

/// `cmd` (a `run` pointed at a server) with `--rate off --json`, batches of `batch` rows and
/// `args`.
fn run_as(mut cmd: assert_cmd::Command, batch: Option<usize>, args: &[&str]) -> Ran {
    let out = batched(&mut cmd, batch)
        .args(["--rate", "off", "--json"])
        .args(args)
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        doc: json_stdout(&out),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The output of a read-only command (`status`, `report`) on a manifest's state file.
fn read_only(args: &[&str], manifest: &Path) -> String {
    let out = bin().args(args).arg(manifest).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the emulator holds, without what differs from one emulator to the next (ids, keys,
/// times): each attachment by contact, record (a note by its words), name, size and MD5; each
/// note by contact, words and date, with the names of its attachments; the objects stored and
/// the storage left; with `requests`, the requests it counted.
fn emulator_view(state: &Value, requests: bool) -> Value {
    let notes = state["notes"].as_array().unwrap();
    let label = |id: &str| {
        notes
            .iter()
            .find(|n| n["id"] == id)
            .map_or(id.to_string(), |n| {
                format!("note {:?} of {}", n["text"].as_str().unwrap(), n["date"])
            })
    };
    let mut attachments: Vec<Value> = state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            json!([
                a["contact_id"],
                a["reference_type"],
                label(a["reference_id"].as_str().unwrap()),
                a["filename"],
                a["size"],
                a["md5"]
            ])
        })
        .collect();
    attachments.sort_by_key(Value::to_string);
    let mut by_note: Vec<Value> = notes
        .iter()
        .map(|n| {
            // A record lists its attachments' ids.
            let mut names: Vec<String> = n["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| {
                    let a = state["attachments"].as_array().unwrap().iter();
                    let mut a = a.filter(|a| a["id"] == *id);
                    a.next().unwrap()["filename"].as_str().unwrap().to_string()
                })
                .collect();
            names.sort();
            json!([n["contact_id"], n["text"], n["date"], names])
        })
        .collect();
    by_note.sort_by_key(Value::to_string);
    json!({
        "attachments": attachments,
        "notes": by_note,
        "objects": state["objects"].as_array().unwrap().len(),
        "storage_left": state["storage_left"],
        "requests": if requests { without_record_reads(&state["requests"]) } else { Value::Null },
    })
}

/// Request counts but the reads of records (`GET /{type}s?contact_id=` and `GET /{type}s/{id}`):
/// before a record's first attach a run reads the records its rows of one contact and type
/// attach to, a list for several, one `GET` for one, and it plans those reads batch by batch
/// (`Snapshots::plan`), so that rows of one contact and type on both sides of a batch's edge
/// read their records apart (more reads, nothing else changes).
fn without_record_reads(requests: &Value) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (k, n) in requests.as_object().unwrap() {
        let read = ["notes", "deals", "calls", "meetings"].iter().any(|t| {
            [
                format!("GET /api/v3/{t} "),
                format!("GET /api/v3/{t}/{{id}} "),
            ]
            .iter()
            .any(|p| k.starts_with(p.as_str()))
        });
        if !read {
            counts.insert(k.clone(), n.as_u64().unwrap());
        }
    }
    json!(counts)
}

/// Text with what differs from one scratch folder or emulator to the next put in words: the
/// folder, each note's id (as its words), each attachment's id, each stored object's key (as
/// written, in a CSV field, in a JSON string, or both).
fn normalized(text: &str, s: &Scratch, state: &Value) -> String {
    let mut swaps = vec![(s.dir.path().display().to_string(), "<scratch>".to_string())];
    for n in state["notes"].as_array().unwrap() {
        let words = n["text"].as_str().unwrap().replace(['"', '\\', '\n'], "_");
        swaps.push((n["id"].as_str().unwrap().into(), format!("<note {words}>")));
    }
    for a in state["attachments"].as_array().unwrap() {
        swaps.push((a["id"].as_str().unwrap().into(), "<attachment>".into()));
    }
    for o in state["objects"].as_array().unwrap() {
        swaps.push((o["key"].as_str().unwrap().into(), "<key>".into()));
    }
    let json = |v: &str| {
        serde_json::to_string(v)
            .unwrap()
            .trim_matches('"')
            .to_string()
    };
    let mut text = text.to_string();
    for (from, to) in swaps {
        let csv = from.replace('"', "\"\"");
        for form in [json(&csv), csv, json(&from), from] {
            text = text.replace(&form, &to);
        }
    }
    text
}

/// Takes the members `keys` out of the object `v` (and of each object of `v[within]`).
fn drop_keys(v: &mut Value, within: Option<&str>, keys: &[&str]) {
    let objects: Vec<&mut Value> = match within {
        None => vec![v],
        Some(field) => match v[field].as_array_mut() {
            Some(list) => list.iter_mut().collect(),
            None => Vec::new(),
        },
    };
    for o in objects {
        if let Some(o) = o.as_object_mut() {
            for k in keys {
                o.remove(*k);
            }
        }
    }
}

/// Counts that depend on time, and on how requests interleave (`--concurrency` above 1); the
/// API calls count the reads of records too (see [`without_record_reads`]).
const TIMING: [&str; 2] = ["elapsed_seconds", "api_calls"];
const INTERLEAVING: [&str; 4] = [
    "retries",
    "throttles",
    "forms_fetched",
    "uploads_on_reused_forms",
];

/// Everything a run left that must not depend on the batch size: its exit code, its summary and
/// stderr, the state file's `status --json` and `report`, and the emulator's state. `exact`
/// (a run at `--concurrency 1`): the request counts too.
fn ended(ran: &Ran, s: &Scratch, manifest: &Path, emu: &Emulator, exact: bool) -> Value {
    let state = emu.state();
    let mut summary = ran.doc.clone();
    drop_keys(&mut summary, None, &TIMING);
    if !exact {
        drop_keys(&mut summary, None, &INTERLEAVING);
    }
    let (status, report) = match s.path("manifest.opcrm.sqlite").exists() {
        true => {
            let mut status: Value =
                serde_json::from_str(&read_only(&["status", "--json"], manifest)).unwrap();
            drop_keys(
                &mut status,
                Some("runs"),
                &["started_at", "finished_at", "api_calls"],
            );
            if !exact {
                drop_keys(&mut status, Some("runs"), &INTERLEAVING);
            }
            (status, read_only(&["report"], manifest))
        }
        false => (Value::Null, String::new()),
    };
    // Log lines start with their time.
    let stderr: Vec<&str> = ran
        .stderr
        .lines()
        .map(|l| match l.split_once("Z  ") {
            Some((time, rest)) if time.len() < 32 && time.starts_with("20") => rest,
            _ => l,
        })
        .collect();
    let all = json!({
        "exit_code": ran.code,
        "summary": summary,
        "stderr": stderr,
        "status": status,
        "report": report,
        "emulator": emulator_view(&state, exact),
    });
    serde_json::from_str(&normalized(&all.to_string(), s, &state)).unwrap()
}

/// Panics with the first part of `got` that differs from `want`, named.
fn assert_same(what: &str, want: &Value, got: &Value) {
    for part in [
        "exit_code",
        "summary",
        "stderr",
        "status",
        "report",
        "emulator",
    ] {
        assert_eq!(
            want[part], got[part],
            "{what}: the {part} differs\nwith one batch: {:#}\nhere: {:#}",
            want[part], got[part]
        );
    }
    assert_eq!(want, got, "{what}");
}

/// Runs `manifest` (a copy of the sample `name` made by `copy`) with each batch size of
/// [`SIZES`] against a fresh emulator, `args` given, then once more; the first run and the rerun
/// must end the same with every size. Returns what the default size's runs left.
fn same_with_every_size(
    name: &str,
    copy: impl Fn() -> (Scratch, PathBuf),
    args: &[&str],
    exact: bool,
) -> (Value, Value) {
    let mut want: Option<(Value, Value)> = None;
    for batch in SIZES {
        let emu = Emulator::start(&["--rate-limit", "off"]);
        let (s, manifest) = copy();
        let first = run(&emu, &manifest, batch, args);
        let first = ended(&first, &s, &manifest, &emu, exact);
        let again = run(&emu, &manifest, batch, args);
        let again = ended(&again, &s, &manifest, &emu, exact);
        match &want {
            None => want = Some((first, again)),
            Some((want_first, want_again)) => {
                let what = format!("{name} {args:?} in batches of {batch:?}");
                assert_same(&what, want_first, &first);
                assert_same(&format!("{what}, run again"), want_again, &again);
            }
        }
    }
    want.unwrap()
}

#[test]
fn each_sample_ends_the_same_in_batches_of_1_2_3_as_in_one() {
    for name in ["manifest.csv", "from-another-crm.csv", "notes.csv"] {
        let copy = || copy_of("files", name);
        // One row at a time, the requests are the same ones in the same order.
        let (first, again) = same_with_every_size(name, copy, &["--concurrency", "1"], true);
        assert_eq!(first["exit_code"], 0, "{name}: {first:#}");
        assert_eq!(first["summary"]["done_now"], first["summary"]["rows"]);
        assert_eq!(again["exit_code"], 0, "{name}: {again:#}");
        assert_eq!(again["summary"]["done_before"], first["summary"]["rows"]);
        assert_eq!(
            first["emulator"]["requests"], again["emulator"]["requests"],
            "{name}: a rerun of a done manifest sends nothing"
        );
        // Eight rows at a time: the same rows end the same way.
        same_with_every_size(name, copy, &[], false);
    }
}

/// The samples of `samples/invalid/`, whatever their mistake.
fn invalid_samples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(samples().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    names.sort();
    assert!(names.len() >= 14, "{names:?}");
    names
}

#[test]
fn each_invalid_sample_ends_the_same_in_batches_of_1_2_3_as_in_one_with_and_without_skip_invalid() {
    for name in invalid_samples() {
        let path = format!("invalid/{name}");
        let copy = || copy_of("invalid/files", &path);
        let (stopped, _) = same_with_every_size(&name, copy, &["--concurrency", "1"], true);
        assert_eq!(stopped["exit_code"], 2, "{name}: {stopped:#}");
        let (skipped, again) =
            same_with_every_size(&name, copy, &["--concurrency", "1", "--skip-invalid"], true);
        assert_ne!(skipped["exit_code"], 0, "{name}: {skipped:#}");
        assert_eq!(
            skipped["emulator"]["requests"], again["emulator"]["requests"],
            "{name}: a rerun sends nothing"
        );
    }
}

/// Ada and Grace of the sample seed, and some of their records.
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_NOTE_2: &str = "ce1987ee72777833d0d1e0e7";
const ADA_DEAL: &str = "ce6ec0cdddd720161b4cbd15";
const ADA_CALL: &str = "f31dad062641654d7725914f";
const ADA_MEETING: &str = "8f455fa35db2b7dc567ba6da";
const GRACE: &str = "285b4ab0cf8624250f4313ff";
const GRACE_NOTE: &str = "7e33486b2bfb833662cc8787";
const GRACE_DEAL: &str = "6a6bc056a90f9f118eb3ef73";

/// A scratch folder with `files/` a.txt to i.txt (each its own words) and `manifest.csv`
/// written from `text`.
fn small(text: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new();
    for c in 'a'..='i' {
        s.file(
            &format!("files/{c}.txt"),
            format!("the file {c}, {} bytes\n", 20 + c as usize % 7).repeat(1 + c as usize % 3),
        );
    }
    std::fs::create_dir_all(s.path("files/sub")).unwrap();
    let manifest = s.manifest(text);
    (s, manifest)
}

/// What `check --offline --json` reports of `manifest`: its exit code and problems.
fn check_problems(manifest: &Path) -> (i32, Value) {
    let (code, doc) = crate::common::check_json(manifest, &["--offline"]);
    (code, doc["problems"].clone())
}

/// Each batch size stops the run on `manifest` (made by `copy`) before anything is sent, with
/// the problems `check` reports of it read whole, in its order (exit 2); returns them.
fn stops_as_check_reports(copy: impl Fn() -> (Scratch, PathBuf)) -> Value {
    let (_s, manifest) = copy();
    let (code, want) = check_problems(&manifest);
    assert_eq!(code, 2, "{want:#}");
    for batch in SIZES {
        let emu = Emulator::start(&["--rate-limit", "off"]);
        let (s, manifest) = copy();
        let ran = run(&emu, &manifest, batch, &[]);
        assert_eq!(ran.code, 2, "batches of {batch:?}: {:#}", ran.doc);
        assert_eq!(
            ran.doc["problems"], want,
            "batches of {batch:?}: the run and check differ"
        );
        assert!(emu.requests().is_empty(), "batches of {batch:?}");
        assert!(!s.path("manifest.opcrm.sqlite").exists());
    }
    want
}

/// The (line, kind) of each problem of a `problems` list.
fn lines_and_kinds(problems: &Value) -> Vec<(u64, String)> {
    problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// How many attachments the emulator holds of `name` on `record`.
fn attached(state: &Value, record: &str, name: &str) -> usize {
    state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reference_id"] == record && a["filename"] == name)
        .count()
}

#[test]
fn duplicates_across_batch_edges_are_told_as_check_tells_them_and_skipped_rows_leave_the_first() {
    // Line 5 attaches line 2's file by another path, line 7 by a hard link, line 8 attaches line
    // 3's file under another name, lines 10 and 11 are lines 2 and 4 again: their first and
    // second lines fall in different batches of 1, 2 and 3 rows.
    let text = format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/a.txt,{ADA},note,{ADA_NOTE},\n\
         files/b.txt,{ADA},deal,{ADA_DEAL},\n\
         files/c.txt,{ADA},call,{ADA_CALL},\n\
         files/sub/../a.txt,{ADA},note,{ADA_NOTE},a again.txt\n\
         files/b.txt,{GRACE},note,{GRACE_NOTE},\n\
         files/a-link.txt,{ADA},,{ADA_NOTE},\n\
         files/b.txt,{ADA},deal,{ADA_DEAL},b under another name.txt\n\
         files/c.txt,{ADA},meeting,{ADA_MEETING},\n\
         files/a.txt,{ADA},note,{ADA_NOTE},a.txt\n\
         files/c.txt,{ADA},call,{ADA_CALL},\n"
    );
    let copy = || {
        let (s, manifest) = small(&text);
        std::fs::hard_link(s.path("files/a.txt"), s.path("files/a-link.txt")).unwrap();
        (s, manifest)
    };
    let problems = stops_as_check_reports(copy);
    let dup = "duplicate_attachment".to_string();
    assert_eq!(
        lines_and_kinds(&problems),
        [
            (5, dup.clone()),
            (7, dup.clone()),
            (8, dup.clone()),
            (10, dup.clone()),
            (11, dup)
        ]
    );
    for (line, first) in [(5, 2), (7, 2), (8, 3), (10, 2), (11, 4)] {
        let p = problems
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["line"] == line)
            .unwrap();
        assert!(
            p["message"]
                .as_str()
                .unwrap()
                .contains(&format!("on line {first};")),
            "{p}"
        );
    }

    let (skipped, _) = same_with_every_size(
        "duplicates",
        copy,
        &["--concurrency", "1", "--skip-invalid"],
        true,
    );
    assert_eq!(skipped["exit_code"], 1, "{skipped:#}");
    assert_eq!(skipped["summary"]["done_now"], 5, "{skipped:#}");
    // Lines 10 and 11 mean what lines 2 and 4 mean: one row each in the state file.
    assert_eq!(skipped["summary"]["rows"], 8, "{skipped:#}");
    assert_eq!(skipped["summary"]["rejected"], 3, "{skipped:#}");
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = copy();
    assert_eq!(run(&emu, &manifest, Some(1), &["--skip-invalid"]).code, 1);
    let state = emu.state();
    for (record, name) in [
        (ADA_NOTE, "a.txt"),
        (ADA_DEAL, "b.txt"),
        (ADA_CALL, "c.txt"),
        (GRACE_NOTE, "b.txt"),
        (ADA_MEETING, "c.txt"),
    ] {
        assert_eq!(attached(&state, record, name), 1, "{name} on {record}");
    }
    assert_eq!(state["attachments"].as_array().unwrap().len(), 5);
}

#[test]
fn identical_lines_that_are_no_rows_are_each_recorded_across_batch_edges() {
    // Three identical lines of too few fields (3, 5, 10), two identical lines with a byte that
    // is not UTF-8 (7, 9), two identical rows of an unknown reference type (11, 12).
    let mut text = format!(
        "file,contact_id,reference_type,reference_id,name\n\
         files/a.txt,{ADA},note,{ADA_NOTE},\n\
         files/x.txt,{ADA},note\n\
         files/b.txt,{ADA},deal,{ADA_DEAL},\n\
         files/x.txt,{ADA},note\n\
         files/x.txt,{ADA},note\n"
    )
    .into_bytes();
    // `café` in Latin-1.
    let latin1 = [
        b"files/caf\xE9.txt".as_slice(),
        format!(",{ADA},note,{ADA_NOTE},\n").as_bytes(),
    ]
    .concat();
    text.extend_from_slice(&latin1);
    text.extend_from_slice(format!("files/c.txt,{ADA},call,{ADA_CALL},\n").as_bytes());
    text.extend_from_slice(&latin1);
    text.extend_from_slice(
        format!(
            "files/x.txt,{ADA},note\n\
             files/d.txt,{ADA},task,{ADA_NOTE},\n\
             files/d.txt,{ADA},task,{ADA_NOTE},\n"
        )
        .as_bytes(),
    );
    let copy = || {
        let (s, _) = small("");
        let manifest = s.manifest(&text);
        (s, manifest)
    };
    let problems = stops_as_check_reports(copy);
    let lines: Vec<u64> = lines_and_kinds(&problems).iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 5, 6, 7, 9, 10, 11, 12], "{problems:#}");

    let (skipped, again) = same_with_every_size(
        "identical lines",
        copy,
        &["--concurrency", "1", "--skip-invalid"],
        true,
    );
    assert_eq!(skipped["exit_code"], 1, "{skipped:#}");
    assert_eq!(skipped["summary"]["rows"], 11, "{skipped:#}");
    assert_eq!(skipped["summary"]["rejected"], 8, "{skipped:#}");
    assert_eq!(skipped["status"]["by_state"]["rejected"], 8, "{skipped:#}");
    let failures: Vec<u64> = skipped["summary"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap())
        .collect();
    assert_eq!(failures, lines);
    // The report lists each line; a rerun records no row twice.
    assert_eq!(skipped["report"].as_str().unwrap().lines().count(), 1 + 11);
    assert_eq!(again["status"]["rows"], 11, "{again:#}");
    assert_eq!(again["summary"]["rejected"], 8, "{again:#}");

    // One of the three identical lines goes: its row is forgotten, whatever the batch size.
    let mut want = None;
    for batch in SIZES {
        let emu = Emulator::start(&["--rate-limit", "off"]);
        let (s, manifest) = copy();
        run(&emu, &manifest, batch, &["--skip-invalid"]);
        let edited: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        let without_6: Vec<u8> = edited
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .flat_map(|(_, l)| l.iter().copied())
            .collect();
        std::fs::write(&manifest, without_6).unwrap();
        let ran = run(
            &emu,
            &manifest,
            batch,
            &["--concurrency", "1", "--skip-invalid"],
        );
        let got = ended(&ran, &s, &manifest, &emu, false);
        assert_eq!(got["status"]["rows"], 10, "{got:#}");
        assert_eq!(got["status"]["by_state"]["rejected"], 7, "{got:#}");
        match &want {
            None => want = Some(got),
            Some(want) => assert_same(&format!("edited, batches of {batch:?}"), want, &got),
        }
    }
}

#[test]
fn rows_by_email_in_later_batches_that_find_no_contact_or_several_stop_the_run_or_are_rejected() {
    // Lines 8 and 10 name an email no contact has (in two letter cases), line 9 one two
    // contacts share (samples/README.md); lines 7 and 11 resolve to Ada.
    let text = format!(
        "file,contact_id,contact_email,reference_type,reference_id,name\n\
         files/a.txt,{ADA},,note,{ADA_NOTE},\n\
         files/b.txt,{ADA},,deal,{ADA_DEAL},\n\
         files/c.txt,{GRACE},,deal,{GRACE_DEAL},\n\
         files/d.txt,{GRACE},,note,{GRACE_NOTE},\n\
         files/e.txt,{ADA},,call,{ADA_CALL},\n\
         files/f.txt,,ada@analytical.example,note,{ADA_NOTE_2},\n\
         files/g.txt,,nobody@nowhere.example,note,{ADA_NOTE_2},\n\
         files/h.txt,,office@twin-desk.example,note,{ADA_NOTE},\n\
         files/i.txt,,Nobody@Nowhere.example,deal,{ADA_DEAL},\n\
         files/a.txt,,ADA@analytical.example,meeting,{ADA_MEETING},\n"
    );
    let copy = || small(&text);
    let (stopped, _) = same_with_every_size("emails", copy, &["--concurrency", "1"], true);
    assert_eq!(stopped["exit_code"], 2, "{stopped:#}");
    let stderr: Vec<&str> = stopped["stderr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let stderr = stderr.join("\n");
    for line in [8, 9, 10] {
        assert!(
            stderr.contains(&format!("line {line}, column contact_email")),
            "line {line}: {stderr}"
        );
    }
    assert!(
        stderr.contains("3 rows name a contact by an email"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("column contact_email").count(),
        3,
        "{stderr}"
    );
    let requests = stopped["emulator"]["requests"].as_object().unwrap();
    assert!(
        requests
            .keys()
            .all(|k| k.starts_with("GET /api/v3/contacts ")),
        "only the lookups were sent: {requests:?}"
    );

    let (skipped, again) = same_with_every_size(
        "emails",
        copy,
        &["--concurrency", "1", "--skip-invalid"],
        true,
    );
    assert_eq!(skipped["exit_code"], 1, "{skipped:#}");
    assert_eq!(skipped["summary"]["done_now"], 7, "{skipped:#}");
    let rejected: Vec<(u64, String)> = skipped["summary"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["line"].as_u64().unwrap(),
                f["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (8, "contact_not_found".to_string()),
            (9, "contact_ambiguous".to_string()),
            (10, "contact_not_found".to_string())
        ]
    );
    // A rerun looks up again the two emails that found nothing, and sends nothing else.
    let mut requests = skipped["emulator"]["requests"].clone();
    requests["GET /api/v3/contacts 200"] = json!(3 + 2);
    assert_eq!(requests, again["emulator"]["requests"]);
    assert_eq!(
        skipped["emulator"]["attachments"].as_array().unwrap().len(),
        7
    );
}

#[test]
fn note_key_conflicts_across_batch_edges_are_told_as_check_tells_them_and_each_group_gets_one_note()
{
    // Ada's k1 on lines 2, 4 and 9 (its words with a space after: the same words), another
    // text on line 5 and another date on line 7; line 10 is line 2 again. Grace's "Call notes"
    // on lines 6 and 8 (no key), and her own k1 on line 11.
    let text = format!(
        "file,contact_id,reference_type,reference_id,name,note_text,note_date,note_key\n\
         files/a.txt,{ADA},,,,Kick-off,2024-05-01,k1\n\
         files/b.txt,{GRACE},deal,{GRACE_DEAL},,,,\n\
         files/c.txt,{ADA},,,,Kick-off,2024-05-01,k1\n\
         files/d.txt,{ADA},,,,Another text,2024-05-01,k1\n\
         files/e.txt,{GRACE},,,,Call notes,,\n\
         files/f.txt,{ADA},,,,Kick-off,2024-05-02,k1\n\
         files/g.txt,{GRACE},,,,Call notes,,\n\
         files/h.txt,{ADA},note,,,Kick-off ,2024-05-01,k1\n\
         files/a.txt,{ADA},,,,Kick-off,2024-05-01,k1\n\
         files/i.txt,{GRACE},,,,Different,,k1\n"
    );
    let copy = || small(&text);
    let problems = stops_as_check_reports(copy);
    assert_eq!(
        lines_and_kinds(&problems),
        [
            (5, "note_key_conflict".to_string()),
            (7, "note_key_conflict".to_string()),
            (10, "duplicate_attachment".to_string())
        ],
        "{problems:#}"
    );
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("on line 2")
    );

    let (skipped, _) = same_with_every_size(
        "note keys",
        copy,
        &["--concurrency", "1", "--skip-invalid"],
        true,
    );
    assert_eq!(skipped["exit_code"], 1, "{skipped:#}");
    assert_eq!(skipped["summary"]["notes_created"], 3, "{skipped:#}");
    let notes = skipped["emulator"]["notes"].as_array().unwrap();
    let made = |text: &str| {
        notes
            .iter()
            .filter(|n| n[1].as_str().unwrap().trim() == text)
            .map(|n| n[3].clone())
            .collect::<Vec<Value>>()
    };
    // The seed's 9 notes, and one for each group.
    assert_eq!(notes.len(), 9 + 3, "{notes:#?}");
    assert_eq!(made("Kick-off"), [json!(["a.txt", "c.txt", "h.txt"])]);
    assert_eq!(made("Call notes"), [json!(["e.txt", "g.txt"])]);
    assert_eq!(made("Different"), [json!(["i.txt"])]);
}

/// Records `manifest`'s rows in a fresh state file beside it, as a run does before its first
/// upload, then moves the rows of `lines` through `transitions` (as a killed run left them).
fn recorded_with(manifest: &Path, lines: &[(u64, Vec<Transition>)]) {
    let checked = opcrm_import::preflight::check(manifest, ReadOptions::default());
    let rows = opcrm_import::run::manifest_rows(&checked);
    let file = StateFile::open(&opcrm_import::run::default_state_path(manifest)).unwrap();
    file.record_rows(rows).wait().unwrap();
    let stored = file.load_rows().wait().unwrap();
    for (line, transitions) in lines {
        let row = stored.iter().find(|r| r.line == *line).unwrap();
        for t in transitions {
            file.transition(row, t.clone()).wait().unwrap();
        }
    }
    file.close();
}

/// What the hostile server in front of the emulator has seen, for its rule to wait on.
#[derive(Default)]
struct Seen {
    /// An upload of Ada's rows reached S3 (so the row to verify first has ended).
    ada_uploading: bool,
    /// Step 3 was refused once.
    refused: bool,
    /// Step 1 for Grace.
    grace_forms: u32,
    /// The redone upload of Grace's row reached S3 (its row is `uploading` now).
    grace_uploading: bool,
    attaches: u32,
}

/// A rule's wait: until `ready` says so (a minute at most, so that no test hangs), off the
/// server's async workers.
fn wait_for(seen: &(std::sync::Mutex<Seen>, std::sync::Condvar), ready: impl Fn(&Seen) -> bool) {
    tokio::task::block_in_place(|| {
        let (lock, told) = seen;
        let guard = lock.lock().unwrap();
        let minute = std::time::Duration::from_secs(60);
        drop(
            told.wait_timeout_while(guard, minute, |s| !ready(s))
                .unwrap(),
        );
    });
}

/// A row to verify (its attach in doubt: a killed run) is taken up first; when the record does
/// not hold it and step 3 refuses its key, it is uploaded again, `uploading` once more. The
/// rows after it are read from the state file while it is under way: read then, it must not be
/// taken for a row to upload and handed to a second worker (two uploads, two attachments).
#[test]
fn a_row_to_verify_that_is_uploaded_again_is_not_taken_up_a_second_time_by_a_later_batch() {
    use crate::common::hostile::{Answer, Hostile};
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    // Line 2 (Ada's, to verify: its object is stored, its attach never reached the API), lines 3
    // to 12 (Ada's, to upload), line 13 (Grace's, to verify: its key will be refused).
    let mut text =
        format!("file,contact_id,reference_type,reference_id\nfiles/w.txt,{ADA},note,{ADA_NOTE}\n");
    let records = [
        ("note", ADA_NOTE),
        ("note", ADA_NOTE_2),
        ("deal", ADA_DEAL),
        ("call", ADA_CALL),
        ("meeting", ADA_MEETING),
    ];
    for i in 0..10 {
        let (kind, id) = records[i % 5];
        s.file(&format!("files/a{i}.txt"), format!("Ada's file {i}\n"));
        text.push_str(&format!("files/a{i}.txt,{ADA},{kind},{id}\n"));
    }
    text.push_str(&format!("files/v.txt,{GRACE},note,{GRACE_NOTE}\n"));
    let w = s.file("files/w.txt", "the file whose attach is in doubt\n");
    s.file("files/v.txt", "the file whose key is refused\n");
    let manifest = s.manifest(text);
    let form = emu.form(ADA);
    let key = crate::common::emulator::tutorial_key(&form, ADA, "w.txt");
    let fields = crate::common::emulator::tutorial_fields(&form, &key, "w.txt");
    let stored = crate::common::emulator::upload(&emu.s3, &fields, &w, &[]);
    assert_eq!(stored.status, 201, "{}", stored.body);
    let attaching = |key: String| {
        vec![
            Transition::Uploading { s3_key: key },
            Transition::Attaching {
                etag: Some("etag".into()),
                snapshot_gen: None,
            },
        ]
    };
    let refused_key = format!("{GRACE}/1700000000/v.txt");
    recorded_with(
        &manifest,
        &[(2, attaching(key)), (13, attaching(refused_key))],
    );
    let before = emu.requests();

    // Line 13's first read of its record waits until line 2 has ended (its attach answer told
    // the run that links show keys) and line 3 is uploading; line 3's upload waits until line
    // 13's second upload has reached S3; that one waits until every other row has sent step 3
    // or another worker asked step 1 for Grace.
    let seen = std::sync::Arc::new((
        std::sync::Mutex::new(Seen::default()),
        std::sync::Condvar::new(),
    ));
    let rule_seen = seen.clone();
    let grace_record = format!("/api/v3/notes/{GRACE_NOTE}");
    let server = Hostile::start(Some(&emu), move |call| {
        let (method, path) = (call.seen.method.as_str(), call.seen.path.as_str());
        let seen = &*rule_seen;
        let change = |f: &dyn Fn(&mut Seen)| {
            f(&mut seen.0.lock().unwrap());
            seen.1.notify_all();
        };
        let now = |f: &dyn Fn(&Seen) -> bool| f(&seen.0.lock().unwrap());
        match (method, path) {
            ("GET", p) if p == grace_record && !now(&|s| s.refused) => {
                wait_for(seen, |s| s.ada_uploading)
            }
            ("POST", "/api/v3/attachments") => {
                change(&|s| s.attaches += 1);
                if now(&|s| s.ada_uploading && !s.refused) {
                    change(&|s| s.refused = true);
                    let body = json!({
                        "status": 400, "message": "Invalid request data",
                        "error_name": "invalid_request_data", "error_message": "Invalid request data",
                        "errors": {"key": "was refused"}, "timestamp": 1_764_496_800, "data": {},
                    });
                    return Answer::plain(400, "application/json", &body.to_string());
                }
            }
            ("GET", p) if p.contains("/s3_form?contact_id=") && p.ends_with(GRACE) => {
                change(&|s| s.grace_forms += 1)
            }
            ("POST", p) if p.starts_with("/s3/") && !now(&|s| s.grace_uploading) => {
                if now(&|s| s.grace_forms == 0) {
                    change(&|s| s.ada_uploading = true);
                    wait_for(seen, |s| s.grace_uploading);
                } else {
                    change(&|s| s.grace_uploading = true);
                    // Line 2's attach, line 13's refused one, lines 3 to 12.
                    wait_for(seen, |s| s.grace_forms > 1 || s.attaches >= 12);
                }
            }
            _ => {}
        }
        Answer::Pass
    });
    let out = batched(&mut server.run_cmd(&manifest), Some(1))
        .args([
            "--rate",
            "off",
            "--json",
            "--concurrency",
            "2",
            "--settle-window",
            "0",
        ])
        .output()
        .unwrap();
    let doc = json_stdout(&out);
    let state = emu.state();
    {
        let s = seen.0.lock().unwrap();
        assert!(
            s.refused && s.grace_uploading,
            "the rule's moments did not all come: {doc:#}"
        );
    }
    assert_eq!(
        attached(&state, GRACE_NOTE, "v.txt"),
        1,
        "line 13 was attached twice: {doc:#}"
    );
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["done_now"], 12, "{doc:#}");
    assert_exactly_once(&state, &manifest);
    let uploads = |r: &BTreeMap<String, u64>| r.get("POST /{bucket}/ 201").copied().unwrap_or(0);
    // Lines 3 to 12 and line 13 once more.
    assert_eq!(uploads(&emu.requests()) - uploads(&before), 11);
}

/// One step of a migration: an edit of its folder (files, manifest), then a run with `args`.
struct Step<'a> {
    edit: &'a dyn Fn(&Scratch, &Path),
    args: &'a [&'a str],
}

fn no_edit(_: &Scratch, _: &Path) {}

/// The rows of `faults::generated` (files, manifest, seed) in a scratch folder of their own.
fn generated(rows: usize) -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new();
    let (seed, manifest) = crate::faults::generated(&s, rows);
    (s, seed, manifest)
}

/// Takes `generated(rows)` through `steps` with each batch size of [`SIZES`], against a fresh
/// emulator (started with `emulator_args`, behind the server `front` makes, if any), one row at
/// a time: every step ends the same with every size. Returns what each step left with the
/// default size.
fn same_steps_with_every_size(
    name: &str,
    rows: usize,
    emulator_args: &[&str],
    front: &dyn Fn(&Emulator) -> Option<crate::common::hostile::Hostile>,
    steps: &[Step],
) -> Vec<Value> {
    let mut want: Option<Vec<Value>> = None;
    for batch in SIZES {
        let (s, seed, manifest) = generated(rows);
        let mut args = vec!["--rate-limit", "off"];
        args.extend_from_slice(emulator_args);
        let emu = Emulator::start_seeded(&seed, &args, None);
        let server = front(&emu);
        let mut got = Vec::new();
        for step in steps {
            (step.edit)(&s, &manifest);
            let cmd = match &server {
                Some(server) => server.run_cmd(&manifest),
                None => emu.run_cmd(&manifest),
            };
            let mut args = vec!["--concurrency", "1"];
            args.extend_from_slice(step.args);
            let ran = run_as(cmd, batch, &args);
            got.push(ended(&ran, &s, &manifest, &emu, true));
        }
        match &want {
            None => want = Some(got),
            Some(want) => {
                for (i, (want, got)) in want.iter().zip(&got).enumerate() {
                    let what = format!("{name}, step {}, batches of {batch:?}", i + 1);
                    assert_same(&what, want, got);
                }
            }
        }
    }
    want.unwrap()
}

/// Appends a line to the file of each row of `lines` (0-based rows of `generated`): its size
/// and time change.
fn change_files(s: &Scratch, rows: &[usize]) {
    for i in rows {
        let path = s.path(&format!("files/doc-{i:04}.txt"));
        let mut body = std::fs::read(&path).unwrap();
        body.extend_from_slice(b"\nchanged after it was uploaded\n");
        std::fs::write(&path, body).unwrap();
    }
}

#[test]
fn changed_files_are_reported_and_reupload_changed_uploads_them_again_in_batches_of_1_2_3_as_in_one()
 {
    let steps = [
        Step {
            edit: &no_edit,
            args: &[],
        },
        Step {
            edit: &|s, _| change_files(s, &[0, 7, 13]),
            args: &[],
        },
        Step {
            edit: &no_edit,
            args: &["--reupload-changed"],
        },
        Step {
            edit: &no_edit,
            args: &["--reupload-changed"],
        },
    ];
    let got = same_steps_with_every_size("reupload", 20, &[], &|_| None, &steps);
    assert_eq!(got[0]["summary"]["done_now"], 20, "{:#}", got[0]);
    let changed: Vec<u64> = got[1]["summary"]["changed_since_upload"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["line"].as_u64().unwrap())
        .collect();
    // In the manifest's order, as a manifest read whole tells them (not in the order the rows
    // are taken up: by contact, line 15's before line 9's).
    assert_eq!(changed, [2, 9, 15], "{:#}", got[1]);
    let warned: Vec<&str> = got[1]["stderr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str().unwrap().strip_prefix("warning: line "))
        .collect();
    assert!(
        warned.len() == 3
            && ["2:", "9:", "15:"]
                .iter()
                .zip(&warned)
                .all(|(n, l)| l.starts_with(n)),
        "{warned:?}"
    );
    assert_eq!(got[1]["summary"]["done_before"], 20, "{:#}", got[1]);
    assert_eq!(got[2]["summary"]["done_now"], 3, "{:#}", got[2]);
    assert_eq!(got[2]["summary"]["done_before"], 17, "{:#}", got[2]);
    assert_eq!(got[3]["summary"]["done_before"], 20, "{:#}", got[3]);
    assert_eq!(
        got[2]["emulator"]["requests"], got[3]["emulator"]["requests"],
        "nothing is uploaded a third time"
    );
}

/// A server in front of `emu` that refuses the first three step 3s for good (a `400` that
/// names `reference_id`) and passes everything else on.
fn refusing_three_attaches(emu: &Emulator) -> Option<crate::common::hostile::Hostile> {
    use crate::common::hostile::{Answer, Hostile};
    let refused = std::sync::atomic::AtomicU32::new(0);
    Some(Hostile::start(Some(emu), move |call| {
        let attach = call.seen.method == "POST" && call.seen.path == "/api/v3/attachments";
        if attach && refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 {
            let body = json!({
                "status": 400, "message": "Invalid request data",
                "error_name": "invalid_request_data", "error_message": "Invalid request data",
                "errors": {"reference_id": "was refused"}, "timestamp": 1_764_496_800, "data": {},
            });
            return Answer::plain(400, "application/json", &body.to_string());
        }
        Answer::Pass
    }))
}

#[test]
fn rows_failed_for_good_stay_failed_and_retry_failed_takes_them_up_in_batches_of_1_2_3_as_in_one() {
    let steps = [
        Step {
            edit: &no_edit,
            args: &[],
        },
        Step {
            edit: &no_edit,
            args: &[],
        },
        Step {
            edit: &no_edit,
            args: &["--retry-failed"],
        },
    ];
    let got = same_steps_with_every_size("retry", 20, &[], &refusing_three_attaches, &steps);
    assert_eq!(got[0]["exit_code"], 1, "{:#}", got[0]);
    assert_eq!(got[0]["summary"]["failed_permanent"], 3, "{:#}", got[0]);
    assert_eq!(got[0]["summary"]["done_now"], 17, "{:#}", got[0]);
    assert_eq!(got[1]["exit_code"], 1, "{:#}", got[1]);
    assert_eq!(got[1]["summary"]["failed_permanent"], 3, "{:#}", got[1]);
    assert_eq!(got[1]["summary"]["done_now"], 0, "{:#}", got[1]);
    assert_eq!(
        got[0]["emulator"]["requests"], got[1]["emulator"]["requests"],
        "rows failed for good are not taken up again without --retry-failed"
    );
    assert_eq!(got[2]["exit_code"], 0, "{:#}", got[2]);
    assert_eq!(got[2]["summary"]["done_now"], 3, "{:#}", got[2]);
    assert_eq!(
        got[2]["emulator"]["attachments"].as_array().unwrap().len(),
        20
    );
}

/// `opcrm-import run MANIFEST --no-progress --rate off` against `api` in batches of `batch`
/// rows, as a child process to signal.
pub(crate) fn spawn_batched(
    api: &str,
    manifest: &Path,
    batch: usize,
    args: &[&str],
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .env("ONEPAGECRM_API_URL", api)
        .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
        .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
        .env("OPCRM_SETTLE_WINDOW", "1")
        .env("OPCRM_BATCH_ROWS", batch.to_string())
        .arg("run")
        .arg(manifest)
        .args(["--no-progress", "--rate", "off"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reruns `manifest` in batches of `batch` rows until it ends with every row done (a few runs
/// at most: lost answers may fail rows, retryable); returns the last run.
fn rerun_to_the_end(emu: &Emulator, manifest: &Path, batch: usize) -> Ran {
    for _ in 0..6 {
        let ran = run(emu, manifest, Some(batch), &["--retries", "10"]);
        match ran.code {
            0 => return ran,
            4 => continue,
            _ => panic!(
                "the rerun ended {}: {:#}\n{}",
                ran.code, ran.doc, ran.stderr
            ),
        }
    }
    panic!("six reruns did not finish");
}

#[test]
fn runs_killed_at_request_counts_in_small_batches_then_rerun_attach_each_row_once() {
    for batch in [1, 2, 3] {
        let (_s, seed, manifest) = generated(40);
        // Of every seven attaches, the 2nd's answer is lost after it took effect and the 5th's
        // before: with no retries, their rows fail and the next run verifies them.
        let mut args = vec!["--rate-limit".to_string(), "off".into()];
        for n in 1..=200 {
            let fault = match n % 7 {
                2 => "drop-after",
                5 => "drop-before",
                _ => continue,
            };
            args.push("--fault-at".into());
            args.push(format!("POST /api/v3/attachments:{n}:{fault}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let emu = Emulator::start_seeded(&seed, &args, None);
        // Each run goes through a server that holds its 9th, 12th, 15th ... API request, and is
        // killed while that request is held: the same moments on a slow or a fast machine (a
        // run that ends before its held request, with nothing left to do, is not killed).
        let mut kills = 0;
        for step in 1..=8usize {
            let killed = killed_while_held(&emu, 6 + 3 * step, |api| {
                spawn_batched(
                    api,
                    &manifest,
                    batch,
                    &["--concurrency", "4", "--retries", "0"],
                )
            });
            kills += usize::from(killed);
        }
        assert!(
            kills >= 3,
            "batches of {batch}: {kills} runs killed mid-way"
        );
        rerun_to_the_end(&emu, &manifest, batch);
        let state = emu.state();
        assert_exactly_once(&state, &manifest);
        // A rerun of the done manifest sends nothing.
        let ran = run(&emu, &manifest, Some(batch), &[]);
        assert_eq!(ran.code, 0, "{:#}", ran.doc);
        assert_eq!(ran.doc["done_before"], 40, "{:#}", ran.doc);
        assert_eq!(
            emu.state()["requests"],
            state["requests"],
            "batches of {batch}"
        );
    }
}

/// An interrupt (SIGINT) while the `at`th request is held by the server: the rows under way
/// end, no new row starts, and the summary says `not started` of the rows never taken up,
/// exit 130; the state file agrees, and a rerun finishes the rest once.
#[test]
fn an_interrupted_run_in_small_batches_counts_the_rows_it_never_took_up_as_not_started() {
    for (batch, at) in [(1, 12), (2, 30), (3, 7), (4096, 21)] {
        let (_s, seed, manifest) = generated(30);
        let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
        let (server, signalled) = holding_request(&emu, at);
        let run = spawn_batched(
            &server.api,
            &manifest,
            batch,
            &["--concurrency", "3", "--json"],
        );
        wait_for_request(&server, at);
        crate::faults::signal(&run, libc::SIGINT);
        *signalled.0.lock().unwrap() = true;
        signalled.1.notify_all();
        let (code, stdout, stderr) = crate::faults::finish(run);
        assert_eq!(code, 130, "batches of {batch}: {stderr}");
        let doc: Value = serde_json::from_str(&stdout).unwrap();
        let status: Value =
            serde_json::from_str(&read_only(&["status", "--json"], &manifest)).unwrap();
        let by_state = &status["by_state"];
        let what = format!("batches of {batch}: {doc:#}\n{status:#}");
        assert_eq!(doc["stopped"], "interrupted", "{what}");
        assert_eq!(doc["done_now"], by_state["done"], "{what}");
        assert_eq!(doc["not_started"], by_state["pending"], "{what}");
        assert!(doc["not_started"].as_u64().unwrap() > 0, "{what}");
        assert_eq!(
            doc["done_now"].as_u64().unwrap() + doc["not_started"].as_u64().unwrap(),
            30,
            "{what}"
        );
        for state in ["uploading", "uploaded", "attaching", "failed", "rejected"] {
            assert_eq!(by_state[state], 0, "{state}: {what}");
        }
        let state = emu.state();
        assert_eq!(
            state["attachments"].as_array().unwrap().len() as u64,
            doc["done_now"].as_u64().unwrap(),
            "{what}"
        );
        let ran = run_as(server.run_cmd(&manifest), Some(batch), &[]);
        assert_eq!(ran.code, 0, "{:#}", ran.doc);
        assert_eq!(ran.doc["done_before"], doc["done_now"], "{:#}", ran.doc);
        assert_exactly_once(&emu.state(), &manifest);
    }
}

/// Rewrites `generated`'s manifest: without the rows of `drop` (0-based), with `added` new rows
/// (their own files, on records of the seed) after the row `after`, and the row `renamed`
/// given another name (another row, as far as the state file knows).
fn edit_generated(s: &Scratch, manifest: &Path, drop: &[usize], after: usize, renamed: usize) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = lines.remove(0);
    let mut out = vec![header.replace("reference_id", "reference_id,name")];
    for (i, line) in lines.iter().enumerate() {
        if drop.contains(&i) {
            continue;
        }
        let name = match i == renamed {
            true => format!("renamed-{i}.txt"),
            false => String::new(),
        };
        out.push(format!("{line},{name}"));
        if i == after {
            for n in 0..3usize {
                let file = format!("files/new-{n}.txt");
                s.file(&file, format!("a row added in the middle, {n}\n"));
                let k = (n * 3) % 10;
                out.push(format!("{file},cc{k:022x},note,a0{k:010x}{:012x},", n % 2));
            }
        }
    }
    std::fs::write(manifest, out.join("\n") + "\n").unwrap();
}

#[test]
fn a_manifest_edited_between_runs_ends_the_same_in_batches_of_1_2_3_as_in_one() {
    // The 4th to 7th attaches fail (retryable, no retries): their rows (11, 2, 12 and 3, taken
    // up by contact: 0, 10, 1, 11, 2, 12, 3, 13, ...) are verified next run.
    let faults = ["--fault-at", "POST /api/v3/attachments:4-7:error"];
    // Rows 1 (done) and 3 (failed) go; three rows come after row 8; row 13 (done) takes another
    // name.
    let edit = |s: &Scratch, manifest: &Path| edit_generated(s, manifest, &[1, 3], 8, 13);
    let steps = [
        Step {
            edit: &no_edit,
            args: &["--retries", "0"],
        },
        Step {
            edit: &edit,
            args: &[],
        },
        Step {
            edit: &no_edit,
            args: &[],
        },
    ];
    let got = same_steps_with_every_size("edited", 20, &faults, &|_| None, &steps);
    assert_eq!(got[0]["exit_code"], 4, "{:#}", got[0]);
    assert_eq!(got[0]["summary"]["failed_retryable"], 4, "{:#}", got[0]);
    assert_eq!(got[1]["exit_code"], 0, "{:#}", got[1]);
    // 20 rows, 2 gone, 3 added: 21; the renamed row is a new row (its old self stays done). The
    // three failed rows left, the rows added and the renamed one are done now.
    assert_eq!(got[1]["summary"]["rows"], 21, "{:#}", got[1]);
    assert_eq!(got[1]["summary"]["done_now"], 3 + 3 + 1, "{:#}", got[1]);
    assert_eq!(got[1]["summary"]["done_before"], 21 - 7, "{:#}", got[1]);
    assert_eq!(got[2]["summary"]["done_before"], 21, "{:#}", got[2]);
    assert_eq!(
        got[1]["emulator"]["requests"], got[2]["emulator"]["requests"],
        "a rerun of the edited manifest sends nothing"
    );

    // Each row of the edited manifest is attached once; the attachments of the rows that went
    // (done before the edit: row 1, and row 13 under its first name) stay, once each.
    let (s, seed, manifest) = generated(20);
    let mut args = vec!["--rate-limit", "off"];
    args.extend_from_slice(&faults);
    let emu = Emulator::start_seeded(&seed, &args, None);
    run(
        &emu,
        &manifest,
        Some(2),
        &["--retries", "0", "--concurrency", "1"],
    );
    edit(&s, &manifest);
    assert_eq!(run(&emu, &manifest, Some(2), &[]).code, 0);
    let mut state = emu.state();
    let gone = |a: &Value| a["filename"] == "doc-0001.txt" || a["filename"] == "doc-0013.txt";
    let attachments = state["attachments"].as_array_mut().unwrap();
    assert_eq!(attachments.iter().filter(|a| gone(a)).count(), 2);
    attachments.retain(|a| !gone(a));
    assert_exactly_once(&state, &manifest);
}

/// The manifest is read twice: checked, then (after the lookups by email) read again to record
/// its rows, each with the problems the check found on its line. Edited in between, it is
/// another manifest: the run stops before anything is sent, as it does when it cannot read it
/// again, and never records the new rows with the old rows' problems (a duplicate, a row of an
/// unknown reference type taken for valid rows and uploaded).
#[test]
fn a_manifest_edited_between_its_check_and_its_recording_stops_the_run_before_anything_is_sent() {
    use crate::common::hostile::{Answer, Hostile};
    // Line 4 attaches line 2's file to its note again; line 5 names no reference type of
    // OnePageCRM's.
    let added = [
        format!("files/a.txt,{ADA},,note,{ADA_NOTE}\n"),
        format!("files/a.txt,{ADA},,note,{ADA_NOTE}\nfiles/c.txt,{ADA},,task,{ADA_CALL}\n"),
    ];
    for (batch, added) in SIZES
        .into_iter()
        .flat_map(|b| added.iter().map(move |a| (b, a)))
    {
        let emu = Emulator::start(&["--rate-limit", "off"]);
        let header = "file,contact_id,contact_email,reference_type,reference_id\n";
        let checked = format!(
            "{header}files/a.txt,,ada@analytical.example,note,{ADA_NOTE}\n\
             files/b.txt,{ADA},,deal,{ADA_DEAL}\n"
        );
        let (s, manifest) = small(&checked);
        let edited = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let held = edited.clone();
        let server = Hostile::start(Some(&emu), move |call| {
            if call.seen.path.starts_with("/api/v3/contacts") {
                tokio::task::block_in_place(|| {
                    let (lock, told) = &*held;
                    let minute = std::time::Duration::from_secs(60);
                    let guard = lock.lock().unwrap();
                    drop(told.wait_timeout_while(guard, minute, |e| !*e).unwrap());
                });
            }
            Answer::Pass
        });
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
        cmd.env("ONEPAGECRM_API_URL", &server.api)
            .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
            .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
            .args(["run", "--no-progress", "--rate", "off", "--json"])
            .arg(&manifest)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        match batch {
            Some(n) => cmd.env("OPCRM_BATCH_ROWS", n.to_string()),
            None => cmd.env_remove("OPCRM_BATCH_ROWS"),
        };
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !server
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/api/v3/contacts"))
        {
            assert!(std::time::Instant::now() < deadline, "no lookup came");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        s.manifest(format!("{checked}{added}"));
        *edited.0.lock().unwrap() = true;
        edited.1.notify_all();
        let (code, stdout, stderr) = crate::faults::finish(child);
        let state = emu.state();
        let what = format!("batches of {batch:?}, {added:?} added: {stdout}\n{stderr}");
        assert_eq!(attached(&state, ADA_NOTE, "a.txt"), 0, "{what}");
        assert!(state["objects"].as_array().unwrap().is_empty(), "{what}");
        assert_eq!(code, 3, "{what}");
        assert!(
            stderr.contains("could not be read again to record its rows (did it change?)"),
            "{what}"
        );
        // Run again, the edited manifest is checked as it is now.
        let (code, problems) = check_problems(&manifest);
        assert_eq!(code, 2);
        let ran = run(&emu, &manifest, batch, &[]);
        assert_eq!(ran.code, 2, "{:#}", ran.doc);
        assert_eq!(ran.doc["problems"], problems);
    }
}

#[test]
fn a_reupload_of_changed_files_cut_short_leaves_the_rest_changed_for_the_next_run() {
    // Every file changed after it was uploaded; a run with --reupload-changed is interrupted
    // after its first rows: the rows it never took up keep their recorded (old) file, so that
    // the next run still sees them changed and uploads them (an earlier version recorded every
    // changed file as it is now before anything was sent: an interrupted run lost the rest).
    let (s, seed, manifest) = generated(12);
    let emu = Emulator::start_seeded(&seed, &["--rate-limit", "off"], None);
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    for i in 0..12 {
        s.file(
            &format!("files/doc-{i:04}.txt"),
            format!("the second version of {i}"),
        );
    }
    let at = 4;
    let (server, signalled) = holding_request(&emu, at);
    let run = spawn_batched(
        &server.api,
        &manifest,
        4096,
        &["--concurrency", "1", "--reupload-changed"],
    );
    wait_for_request(&server, at);
    crate::faults::signal(&run, libc::SIGINT);
    *signalled.0.lock().unwrap() = true;
    signalled.1.notify_all();
    let (code, _, stderr) = crate::faults::finish(run);
    assert_eq!(code, 130, "{stderr}");
    // The next run sees the files not uploaded again as changed, and uploads them.
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--reupload-changed"])
        .assert()
        .code(0);
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    for i in 0..12 {
        let second = format!("the second version of {i}");
        let holding = attachments
            .iter()
            .filter(|a| a["size"] == second.len())
            .filter(|a| a["filename"] == format!("doc-{i:04}.txt"))
            .count();
        assert_eq!(holding, 1, "doc-{i:04}.txt's second version: {state:#}");
    }
    assert_eq!(attachments.len(), 24, "{state:#}");
}

/// A server in front of `emu` that holds request number `at` until the flag it returns is set
/// , or a minute has passed.
pub(crate) fn holding_request(
    emu: &Emulator,
    at: usize,
) -> (
    crate::common::hostile::Hostile,
    std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) {
    use crate::common::hostile::{Answer, Hostile};
    let signalled = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let held = signalled.clone();
    let server = Hostile::start(Some(emu), move |call| {
        if call.n == at {
            tokio::task::block_in_place(|| {
                let (lock, told) = &*held;
                let minute = std::time::Duration::from_secs(60);
                let guard = lock.lock().unwrap();
                drop(told.wait_timeout_while(guard, minute, |s| !*s).unwrap());
            });
        }
        Answer::Pass
    });
    (server, signalled)
}

/// Starts a process (`spawn`, given the API URL to use) through a server in front of `emu` that
/// holds its API request number `at`, and kills it while that request is held (then lets the
/// request go on to the emulator): true when it was killed, false when it ended before.
pub(crate) fn killed_while_held(
    emu: &Emulator,
    at: usize,
    spawn: impl FnOnce(&str) -> std::process::Child,
) -> bool {
    let (server, release) = holding_request(emu, at);
    let mut child = spawn(&server.api);
    while child.try_wait().unwrap().is_none() && server.requests().len() <= at {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        crate::faults::signal(&child, libc::SIGKILL);
    }
    let _ = child.wait();
    let (lock, told) = &*release;
    *lock.lock().unwrap() = true;
    told.notify_all();
    killed
}

/// Waits (a minute at most) until `server` has seen request number `at`.
fn wait_for_request(server: &crate::common::hostile::Hostile, at: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.requests().len() <= at {
        assert!(
            std::time::Instant::now() < deadline,
            "request {at} never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
