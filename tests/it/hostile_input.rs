//! Hostile input (issue 11, cases 6, 7, 8, 13, 14, 15): every manifest row is recorded, reports
//! never destroy a file and stay manifests, spreadsheet formulas are neutralized and read back,
//! odd encodings and line ends are read or refused clearly, and messages stay short.

use std::path::Path;

use opcrm_import::manifest::{self, ReadOptions};
use predicates::str::contains;
use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{HEADER, Scratch, bin, check_json, problems};

/// The sample seed's contact, with a note and a deal of its own.
const CONTACT: &str = "ca929443ed449d7679121de5";
const NOTE: &str = "064132394d9b497f536b2bb7";
const DEAL: &str = "ce6ec0cdddd720161b4cbd15";
/// A well-formed id that names no record in the seed: step 3 answers 404.
const NO_RECORD: &str = "5a1b2c3d4e5f60718293a4b5";

fn status_json(state_or_manifest: &Path) -> Value {
    let out = bin()
        .arg("status")
        .arg(state_or_manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A failed-rows report of `manifest`, written to `out` (relative to `cwd` when given).
fn failed_report(manifest: &Path, out: &Path) {
    bin()
        .arg("report")
        .arg(manifest)
        .args(["--only", "failed", "-o"])
        .arg(out)
        .assert()
        .code(0);
}

/// The records of a CSV file, as bytes.
fn csv_records(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .unwrap();
    reader
        .byte_records()
        .map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect())
        .collect()
}

// Case 6 (and 15: a name that is not UTF-8 keeps its bytes).
#[test]
fn skip_invalid_records_every_row_and_reports_it_as_written() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    for f in ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"] {
        s.file(f, format!("{f} body"));
    }
    let mut text = HEADER.as_bytes().to_vec();
    text.extend_from_slice(
        format!(
            "a.txt,{CONTACT},note,{NOTE},\n\
             b.txt,{CONTACT},task,{NOTE},b name.txt\n\
             c.txt,{CONTACT},note\n\
             d.txt,{CONTACT},note,{NOTE},d.txt,surplus\n\
             e.txt,{CONTACT},deal,{DEAL},\n"
        )
        .as_bytes(),
    );
    text.extend_from_slice(b"caf\xE9.txt");
    text.extend_from_slice(format!(",{CONTACT},note,{NOTE},\n").as_bytes());
    text.extend_from_slice(format!("f.txt,{CONTACT},note,{NOTE},na").as_bytes());
    text.extend_from_slice(b"\xEFve.txt\n");
    let manifest = s.manifest(&text);

    let out = emu
        .run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["rows"], 7, "every manifest row is counted: {doc}");
    assert_eq!(doc["done_now"], 2);
    assert_eq!(doc["rejected"], 5);
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 2);

    let status = status_json(&manifest);
    assert_eq!(status["rows"], 7, "{status}");
    assert_eq!(status["by_state"]["rejected"], 5);
    assert_eq!(status["by_state"]["done"], 2);

    // A rerun records nothing twice.
    emu.run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .assert()
        .code(1)
        .stdout(contains("rows:               7"));
    assert_eq!(status_json(&manifest)["rows"], 7);

    let fix = s.path("fix.csv");
    failed_report(&manifest, &fix);
    let records = csv_records(&fix);
    assert_eq!(records.len(), 6, "header and the 5 rejected rows");
    let row = |file: &[u8]| -> Vec<Vec<u8>> {
        records
            .iter()
            .find(|r| r[0] == file)
            .unwrap_or_else(|| panic!("no report row for {}", String::from_utf8_lossy(file)))
            .clone()
    };
    let c = CONTACT.as_bytes();
    let n = NOTE.as_bytes();
    assert_eq!(row(b"b.txt")[..5], [b"b.txt", c, b"task", n, b"b name.txt"]);
    let short = row(b"c.txt");
    assert_eq!(short[..5], [&b"c.txt"[..], c, b"note", b"", b""]);
    assert!(String::from_utf8_lossy(&short[6]).contains("3 fields, but the header has 5"));
    let long = row(b"d.txt");
    assert_eq!(long[..5], [b"d.txt", c, b"note", n, b"d.txt"]);
    assert!(
        String::from_utf8_lossy(&long[6]).contains("\"surplus\""),
        "the surplus field is in the error: {:?}",
        String::from_utf8_lossy(&long[6])
    );
    assert_eq!(row(b"caf\xE9.txt")[1..4], [c, b"note", n]);
    assert_eq!(
        row(b"f.txt")[4],
        b"na\xEFve.txt",
        "the real name, byte for byte"
    );

    // Read back, the rows that are not UTF-8 are the manifest's own, byte for byte; the rows of
    // a wrong width now have the header's width, for the user to fill in.
    let original = manifest::read(&manifest, ReadOptions::default());
    let report = manifest::read(&fix, ReadOptions::default());
    let not_utf8 = |m: &manifest::Manifest| {
        let mut all: Vec<[Vec<u8>; 5]> = m
            .unparsed
            .iter()
            .filter(|u| u.fields.iter().any(|f| std::str::from_utf8(f).is_err()))
            .map(|u| u.fields.clone())
            .collect();
        all.sort();
        all
    };
    assert_eq!(not_utf8(&report).len(), 2);
    assert_eq!(not_utf8(&report), not_utf8(&original));
    let mut rows: Vec<(&str, &str, &str)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.file.as_str(),
                r.reference_type_text.as_str(),
                r.reference_id.as_str(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("b.txt", "task", NOTE),
            ("c.txt", "note", ""),
            ("d.txt", "note", NOTE)
        ]
    );
}

// Case 14.
#[test]
fn lone_cr_line_ends_are_read_like_crlf() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    let text = format!(
        "file,contact_id,reference_id\r\ra.txt,{CONTACT},{NOTE}\rmissing.txt,{CONTACT},{NOTE}\r\"b\rx.txt\",{CONTACT},{NOTE}\rb.txt,{CONTACT},{NOTE}\r"
    );
    let manifest = s.manifest(text);
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc}");
    let got = problems(&doc);
    assert_eq!(
        got,
        vec![
            (
                Some(4),
                Some("file".to_string()),
                "file_missing".to_string()
            ),
            (
                Some(5),
                Some("file".to_string()),
                "invalid_name".to_string()
            ),
            (
                Some(5),
                Some("file".to_string()),
                "file_missing".to_string()
            ),
        ],
        "{doc}"
    );
    assert_eq!(doc["summary"]["rows"], 4);
    assert_eq!(doc["summary"]["valid"], 2, "{doc}");
    let m = manifest::read(&manifest, ReadOptions::default());
    let lines: Vec<(u64, &str)> = m.rows.iter().map(|r| (r.line, r.file.as_str())).collect();
    assert_eq!(
        lines,
        [
            (3, "a.txt"),
            (4, "missing.txt"),
            (5, "b\rx.txt"),
            (7, "b.txt")
        ]
    );
}

// Case 8.
#[test]
fn report_paths_resolve_from_the_report_when_the_manifest_was_named_bare() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("docs/a.txt", "a");
    s.file("b.txt", "b");
    s.file(
        "m.csv",
        format!("{HEADER}docs/a.txt,{CONTACT},note,{NO_RECORD},\nb.txt,{CONTACT},note,{NOTE},\n"),
    );
    emu.run_cmd(Path::new("m.csv"))
        .current_dir(s.dir.path())
        .args(["--rate", "off", "--retries", "0"])
        .assert()
        .code(1);
    std::fs::create_dir(s.path("rep")).unwrap();
    bin()
        .current_dir(s.dir.path())
        .args(["report", "m.csv", "--only", "failed", "-o", "rep/fix.csv"])
        .assert()
        .code(0);
    let (code, doc) = check_json(&s.path("rep/fix.csv"), &["--offline"]);
    assert_eq!(code, 0, "the report's paths resolve: {doc}");
    let m = manifest::read(&s.path("rep/fix.csv"), ReadOptions::default());
    assert_eq!(m.path_of(&m.rows[0]), s.path("docs/a.txt"));

    // A bare -o in the manifest's folder gives paths relative to it.
    bin()
        .current_dir(s.dir.path())
        .args(["report", "m.csv", "--only", "failed", "-o", "fix.csv"])
        .assert()
        .code(0);
    let text = std::fs::read_to_string(s.path("fix.csv")).unwrap();
    assert!(text.contains(&format!("\ndocs/a.txt,{CONTACT},")), "{text}");
}

// Case 7.
#[test]
fn report_output_never_replaces_the_state_the_manifest_or_a_foreign_file() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let manifest = s.manifest(format!("{HEADER}a.txt,{CONTACT},note,{NO_RECORD},\n"));
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0"])
        .assert()
        .code(1);
    let state = s.path("manifest.opcrm.sqlite");
    let report = |out: &Path| {
        let mut cmd = bin();
        cmd.arg("report")
            .arg(&manifest)
            .args(["--only", "failed", "-o"])
            .arg(out);
        cmd
    };
    let state_before = std::fs::read(&state).unwrap();
    let manifest_before = std::fs::read(&manifest).unwrap();

    report(&state)
        .assert()
        .code(2)
        .stderr(contains("is the state file"));
    std::fs::hard_link(&state, s.path("link.sqlite")).unwrap();
    report(&s.path("link.sqlite"))
        .assert()
        .code(2)
        .stderr(contains("is the state file"));
    report(&manifest)
        .assert()
        .code(2)
        .stderr(contains("is the manifest itself"));
    std::os::unix::fs::symlink(&manifest, s.path("alias.csv")).unwrap();
    report(&s.path("alias.csv"))
        .assert()
        .code(2)
        .stderr(contains("is the manifest itself"));
    // Through --state, the manifest is known from the state file.
    bin()
        .args(["report", "--only", "failed", "--force", "--state"])
        .arg(&state)
        .arg("-o")
        .arg(&manifest)
        .assert()
        .code(2)
        .stderr(contains("is the manifest itself"));
    report(Path::new("/dev/null"))
        .assert()
        .code(2)
        .stderr(contains("not a regular file"));
    report(s.dir.path())
        .assert()
        .code(2)
        .stderr(contains("is a folder"));
    assert_eq!(std::fs::read(&state).unwrap(), state_before);
    assert_eq!(std::fs::read(&manifest).unwrap(), manifest_before);
    status_json(&manifest);

    // A file that is not a report needs --force; a report is replaced.
    let notes = s.file("notes.csv", "my own notes\n");
    report(&notes)
        .assert()
        .code(2)
        .stderr(contains("is not a report written by opcrm-import"))
        .stderr(contains("--force"));
    assert_eq!(std::fs::read(&notes).unwrap(), b"my own notes\n");
    report(&notes).arg("--force").assert().code(0);
    assert!(
        std::fs::read_to_string(&notes)
            .unwrap()
            .starts_with("file,contact_id,reference_type,reference_id,name,error_kind,error\n")
    );
    report(&notes).assert().code(0);
    // Nothing is left behind: no temporary file beside the report.
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// Case 13.
#[test]
fn report_cells_that_spreadsheets_run_are_neutralized_and_read_back() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    for f in ["=SUM(1).txt", "+cmd|x.txt", "@a.txt", "-2+3.txt"] {
        s.file(f, f);
    }
    let manifest = s.manifest(format!(
        "{HEADER}\
         =SUM(1).txt,{CONTACT},note,{NO_RECORD},@SUM(A1)\n\
         +cmd|x.txt,-2+3,note,{NOTE},=HYPERLINK(\"x\")\n\
         @a.txt,{CONTACT},note,{NO_RECORD},'=quoted\n\
         -2+3.txt,{CONTACT},=1+1,{NOTE},\"\tname\"\n"
    ));
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--skip-invalid"])
        .assert()
        .code(1);
    let fix = s.path("fix.csv");
    failed_report(&manifest, &fix);
    let records = csv_records(&fix);
    for record in &records {
        for cell in record {
            assert!(
                !matches!(
                    cell.first(),
                    Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
                ),
                "a cell a spreadsheet would run: {:?}",
                String::from_utf8_lossy(cell)
            );
        }
    }
    assert_eq!(records.len(), 5, "{records:?}");
    let text = std::fs::read_to_string(&fix).unwrap();
    assert!(text.contains("'=SUM(1).txt,"), "{text}");
    assert!(text.contains("''=quoted"), "{text}");

    // `check` (the manifest reader) reads the report back to the manifest's own values.
    let values = |path: &Path| {
        let m = manifest::read(path, ReadOptions::default());
        let mut rows: Vec<_> = m
            .rows
            .iter()
            .map(|r| {
                (
                    m.path_of(r),
                    r.contact_id.clone(),
                    r.reference_type_text.clone(),
                    r.reference_id.clone(),
                    r.name.clone(),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let original = values(&manifest);
    assert_eq!(original.len(), 4);
    assert_eq!(values(&fix), original);
    assert!(original.iter().any(|r| r.4 == "'=quoted"));
}
