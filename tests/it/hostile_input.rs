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
    // The same short line again: a row of its own.
    text.extend_from_slice(format!("c.txt,{CONTACT},note\n").as_bytes());
    let manifest = s.manifest(&text);

    let out = emu
        .run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off", "--json"])
        .output()
        .unwrap();
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["rows"], 8, "every manifest row is counted: {doc}");
    assert_eq!(doc["done_now"], 2);
    assert_eq!(doc["rejected"], 6);
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 2);

    let status = status_json(&manifest);
    assert_eq!(status["rows"], 8, "{status}");
    assert_eq!(status["by_state"]["rejected"], 6);
    assert_eq!(status["by_state"]["done"], 2);

    // A rerun records nothing twice.
    emu.run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .assert()
        .code(1)
        .stdout(contains("rows:               8"));
    assert_eq!(status_json(&manifest)["rows"], 8);

    let fix = s.path("fix.csv");
    failed_report(&manifest, &fix);
    let records = csv_records(&fix);
    assert_eq!(records.len(), 7, "header and the 6 rejected rows");
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
        let mut all: Vec<[Vec<u8>; 6]> = m
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
                r.reference_type_text(),
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
            ("c.txt", "note", ""),
            ("d.txt", "note", NOTE)
        ]
    );
}

// Case 6: a row recorded as written, once fixed, is a new row; its rejected record goes.
#[test]
fn a_fixed_row_replaces_its_rejected_record() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    let good = format!("a.txt,{CONTACT},note,{NOTE},\n");
    let manifest = s.manifest(format!("{HEADER}{good}b.txt,{CONTACT},task,{NOTE},\n"));
    emu.run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .assert()
        .code(1);
    assert_eq!(status_json(&manifest)["by_state"]["rejected"], 1);
    s.manifest(format!("{HEADER}{good}b.txt,{CONTACT},note,{NOTE},\n"));
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let status = status_json(&manifest);
    assert_eq!(status["rows"], 2, "{status}");
    assert_eq!(status["by_state"]["rejected"], 0);
    assert_eq!(status["by_state"]["done"], 2);
    let fix = s.path("fix.csv");
    failed_report(&manifest, &fix);
    assert_eq!(csv_records(&fix).len(), 1, "only the header");
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
    // A second name of the state file: the state file is then refused as it is (a hard link
    // would let SQLite miss its journal), so nothing is written through either name.
    std::fs::hard_link(&state, s.path("link.sqlite")).unwrap();
    report(&s.path("link.sqlite"))
        .assert()
        .code(3)
        .stderr(contains("hard links"));
    std::fs::remove_file(s.path("link.sqlite")).unwrap();
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
                    r.reference_type_text().to_string(),
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

// Case 15: `.` and `..` are not names.
#[test]
fn dot_and_dot_dot_are_invalid_names() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    let manifest = s.manifest(format!(
        "{HEADER}a.txt,{CONTACT},note,{NOTE},.\na.txt,{CONTACT},deal,{DEAL},..\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(
        problems(&doc),
        vec![
            (
                Some(2),
                Some("name".to_string()),
                "invalid_name".to_string()
            ),
            (
                Some(3),
                Some("name".to_string()),
                "invalid_name".to_string()
            ),
        ]
    );
}

// Case 15: a huge value or header does not make a huge message.
#[test]
fn long_values_and_wide_headers_make_short_messages() {
    let s = Scratch::new();
    let long = "d/".repeat(2_500_000) + "a.txt";
    let manifest = s.manifest(format!("{HEADER}{long},{CONTACT},note,{NOTE},\n"));
    let out = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.len() < 4_000,
        "{} bytes of output for one bad row",
        stdout.len()
    );
    assert!(stdout.contains("… (5000005 bytes)"), "{stdout}");

    let wide = (0..1_000_000)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let manifest = s.manifest(format!("file,contact_id,reference_id,{wide}\na,b,c\n"));
    let out = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.len() < 10_000, "{} bytes of output", stdout.len());
    assert!(stdout.contains("unknown column `c19`"), "{stdout}");
    assert!(!stdout.contains("unknown column `c20`"), "{stdout}");
    assert!(
        stdout.contains("and 999980 more unknown or empty columns"),
        "{stdout}"
    );
}

// Case 15: the same mistake on many rows is shown 20 times, then counted.
#[test]
fn repeated_problems_are_collapsed_after_twenty_of_a_kind() {
    let s = Scratch::new();
    s.file("x.txt", "x");
    let mut text = HEADER.to_string();
    for i in 0..30 {
        text.push_str(&format!("missing-{i}.txt,{CONTACT},note,{NOTE},\n"));
    }
    text.push_str(&format!("x.txt,{CONTACT},task,{NOTE},\n"));
    let manifest = s.manifest(text);
    let out = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("does not exist").count(), 20, "{stdout}");
    assert!(
        stdout.contains("\"missing-19.txt\" does not exist"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("\"missing-20.txt\" does not exist"),
        "{stdout}"
    );
    assert!(
        stdout.contains("... and 10 more file_missing errors like those above"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown reference type \"task\""),
        "{stdout}"
    );
    // JSON still lists every problem.
    let (_, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(doc["problems"].as_array().unwrap().len(), 31);
}

// Case 15: UTF-16 is named, with the way to convert it.
#[test]
fn utf16_manifests_are_named_with_how_to_convert() {
    let s = Scratch::new();
    let text = format!("{HEADER}a.txt,{CONTACT},note,{NOTE},\n");
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let with_bom = [&[0xFF, 0xFE][..], &le].concat();
    for (what, bytes) in [("BOM", with_bom), ("LE", le), ("BE", be)] {
        let manifest = s.manifest(&bytes);
        let (code, doc) = check_json(&manifest, &["--offline"]);
        assert_eq!(code, 2, "{what}: {doc}");
        let message = doc["problems"][0]["message"].as_str().unwrap();
        assert_eq!(doc["problems"][0]["kind"], "not_text", "{what}");
        assert!(message.contains("is UTF-16"), "{what}: {message}");
        assert!(
            message.contains("iconv -f UTF-16 -t UTF-8 in.csv > out.csv"),
            "{what}: {message}"
        );
        assert!(!message.contains("binary"), "{what}: {message}");
    }
}

// Case 15: a state path that is not a regular file is refused before anything is made.
#[test]
fn a_state_path_that_is_not_a_regular_file_is_refused() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let manifest = s.manifest(format!("{HEADER}a.txt,{CONTACT},note,{NOTE},\n"));
    // The folder first: a binary without the check fails there, before it can touch /dev.
    for state in [s.dir.path(), Path::new("/dev/null")] {
        emu.run_cmd(&manifest)
            .arg("--state")
            .arg(state)
            .assert()
            .code(3)
            .stderr(contains("not a regular file"));
        for command in ["status", "report"] {
            bin()
                .args([command, "--state"])
                .arg(state)
                .assert()
                .code(3)
                .stderr(contains("not a regular file"));
        }
    }
    assert!(emu.state()["requests"].as_object().unwrap().is_empty());
}

// Issue 19, item 3: an existing empty state file is not taken as new (that would upload every row
// again); it is refused and left as it is.
#[test]
fn an_existing_empty_state_file_is_refused_and_left_empty() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let manifest = s.manifest(format!("{HEADER}a.txt,{CONTACT},note,{NOTE},\n"));
    let state = s.file("empty.sqlite", "");
    emu.run_cmd(&manifest)
        .arg("--state")
        .arg(&state)
        .assert()
        .code(3)
        .stderr(contains("not an opcrm-import state file"));
    assert_eq!(std::fs::metadata(&state).unwrap().len(), 0);
    assert!(emu.state()["requests"].as_object().unwrap().is_empty());
}

// Case 15: every `--json` exit of `run` prints one JSON document.
#[test]
fn every_json_exit_of_run_prints_one_document() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    let manifest = s.manifest(format!("{HEADER}a.txt,{CONTACT},note,{NOTE},\n"));

    // The quota check fails: the account has 0 bytes left.
    let mut seed: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::common::samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    seed["storage_left"] = 0.into();
    let seed_path = s.file("seed.json", seed.to_string());
    let emu = Emulator::start_seeded(&seed_path, &["--rate-limit", "off"], None);
    let json_exit = |cmd: &mut assert_cmd::Command| {
        let out = cmd.output().unwrap();
        (out.status.code().unwrap(), json_of(&out))
    };
    let (code, doc) = json_exit(emu.run_cmd(&manifest).arg("--json"));
    assert_eq!((code, &doc["exit_code"]), (3, &Value::from(3)), "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("storage left"),
        "{doc}"
    );
    let (code, doc) = json_exit(emu.run_cmd(&manifest).args(["--json", "--dry-run"]));
    assert_eq!((code, &doc["exit_code"]), (3, &Value::from(3)), "{doc}");
    assert_eq!(doc["to_upload"], 1);

    // Missing credentials, an invalid manifest, a refused command line.
    let (code, doc) = json_exit(bin().arg("run").arg(&manifest).arg("--json"));
    assert_eq!((code, &doc["exit_code"]), (3, &Value::from(3)), "{doc}");
    let invalid = s.file(
        "invalid.csv",
        format!("{HEADER}nope.txt,{CONTACT},note,{NOTE},\n"),
    );
    let (code, doc) = json_exit(emu.run_cmd(&invalid).arg("--json"));
    assert_eq!((code, &doc["exit_code"]), (2, &Value::from(2)), "{doc}");
    let (code, doc) = json_exit(emu.run_cmd(&manifest).args(["--json", "--rate", "fast"]));
    assert_eq!((code, &doc["exit_code"]), (2, &Value::from(2)), "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("fast"), "{doc}");
    let (code, doc) = json_exit(bin().arg("check").arg(s.path("nope.csv")).arg("--json"));
    assert_eq!(code, 2, "{doc}");
}

// Case 15: a manifest moved with its folder goes on with --adopt-state, uploading nothing again.
#[test]
fn a_moved_manifest_adopts_its_state_without_uploading_again() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("old/files/a.txt", "a");
    s.file("old/files/b.txt", "b");
    s.file(
        "old/m.csv",
        format!("{HEADER}files/a.txt,{CONTACT},note,{NOTE},\nfiles/b.txt,{CONTACT},deal,{DEAL},\n"),
    );
    emu.run_cmd(&s.path("old/m.csv"))
        .args(["--rate", "off"])
        .assert()
        .code(0);
    std::fs::rename(s.path("old"), s.path("new")).unwrap();
    let manifest = s.path("new/m.csv");
    let before = emu.state();

    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains("belongs to the manifest"))
        .stderr(contains("--adopt-state"));
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--adopt-state"])
        .assert()
        .code(0)
        .stdout(contains("done before:        2"))
        .stdout(contains("done in this run:   0"));
    let after = emu.state();
    assert_eq!(after["requests"], before["requests"], "nothing was sent");
    assert_eq!(after["attachments"], before["attachments"]);
    // The state now belongs to the moved manifest: a plain rerun is accepted.
    emu.run_cmd(&manifest).assert().code(0);
    let status = status_json(&manifest);
    assert!(
        status["manifest"].as_str().unwrap().ends_with("/new/m.csv"),
        "{status}"
    );
}
