//! `opcrm-import check`: every kind of bad input gets its line, its column and a clear message,
//! and never a panic.

use predicates::prelude::*;
use predicates::str::contains;

use crate::common::emulator::Emulator;
use crate::common::{
    HEADER, ID, ID2, Scratch, bin, check_json, json_stdout, problems, samples, set_mode,
    unprivileged_bin,
};

fn line(n: u64) -> Option<u64> {
    Some(n)
}

fn col(c: &str) -> Option<String> {
    Some(c.to_string())
}

#[test]
fn sample_manifest_is_valid_and_summarized() {
    bin()
        .arg("check")
        .arg(samples().join("manifest.csv"))
        .assert()
        .code(0)
        .stdout(contains(
            "Rows:      20 (20 valid, 0 invalid), 0 errors, 0 warnings",
        ))
        .stdout(contains("To upload: 20 files, 2.2 MiB (2355532 bytes)"))
        .stdout(contains(
            "Largest:   files/floor-plan.png (1.1 MiB, line 13)",
        ))
        .stdout(contains("storage left not checked"))
        .stdout(contains("Result:    valid"));
}

#[test]
fn sample_manifest_json_document() {
    let (code, doc) = check_json(&samples().join("manifest.csv"), &["--offline"]);
    assert_eq!(code, 0);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["quota"]["status"], "offline");
    assert_eq!(doc["summary"]["rows"], 20);
    assert_eq!(doc["summary"]["valid"], 20);
    assert_eq!(doc["summary"]["bytes_to_upload"], 2355532);
    assert_eq!(doc["summary"]["largest_file"]["line"], 13);
    assert_eq!(doc["problems"].as_array().unwrap().len(), 0);
}

/// Each manifest in samples/invalid/ fails with exit 2 at the line and column of its error.
#[test]
fn every_invalid_sample_names_its_line_and_problem() {
    // (line, column, kind) of each expected problem.
    type Expected = (Option<u64>, Option<&'static str>, &'static str);
    let cases: &[(&str, &[Expected], &str)] = &[
        (
            "missing-field.csv",
            &[(line(2), Some("contact_id"), "missing_field")],
            "`contact_id` is empty",
        ),
        (
            "missing-column.csv",
            &[(line(1), None, "missing_column")],
            "missing required column `reference_id`",
        ),
        (
            "unknown-column.csv",
            &[(line(1), None, "unknown_column")],
            "unknown column `colour`; the known columns are file, contact_id, reference_type, reference_id, name",
        ),
        (
            "unknown-reference-type.csv",
            &[(line(2), Some("reference_type"), "unknown_reference_type")],
            "unknown reference type \"task\"; use note, deal, call or meeting",
        ),
        (
            "file-missing.csv",
            &[(line(2), Some("file"), "file_missing")],
            "\"files/no-such-file.pdf\" does not exist",
        ),
        (
            "file-is-directory.csv",
            &[(line(2), Some("file"), "not_regular_file")],
            "is a directory, not a file",
        ),
        (
            "dangling-link.csv",
            &[(line(2), Some("file"), "dangling_link")],
            "is a symbolic link to \"does-not-exist.pdf\", which does not exist",
        ),
        (
            "too-large.csv",
            &[(line(2), Some("file"), "file_too_large")],
            "(10485761 bytes); OnePageCRM accepts at most",
        ),
        (
            "bad-name.csv",
            &[
                (line(2), Some("name"), "invalid_name"),
                (line(3), Some("name"), "invalid_name"),
                (line(4), Some("name"), "invalid_name"),
            ],
            "contains `/`",
        ),
        (
            "duplicate.csv",
            &[(line(4), Some("file"), "duplicate_attachment")],
            "already attached to note",
        ),
        (
            "field-count.csv",
            &[
                (line(2), None, "field_count"),
                (line(3), None, "field_count"),
            ],
            "3 fields, but the header has 5",
        ),
        (
            "non-utf8.csv",
            &[(line(2), Some("name"), "invalid_utf8")],
            "not valid UTF-8 (byte 0xE9 after \"Caf\")",
        ),
        (
            "empty.csv",
            &[(None, None, "manifest_empty")],
            "is empty; it needs a header row",
        ),
        (
            "header-only.csv",
            &[(line(1), None, "no_rows")],
            "has a header but no rows",
        ),
        (
            "binary.csv",
            &[(None, None, "not_text")],
            "is a binary file, not a CSV manifest",
        ),
    ];
    for (file, expected, message) in cases {
        let path = samples().join("invalid").join(file);
        let (code, doc) = check_json(&path, &[]);
        assert_eq!(code, 2, "{file}: exit code");
        let got = problems(&doc);
        let want: Vec<_> = expected
            .iter()
            .map(|(l, c, k)| (*l, c.map(str::to_string), k.to_string()))
            .collect();
        assert_eq!(got, want, "{file}: problems");
        // The readable report says the same, with the line.
        let first_line = expected[0]
            .0
            .map(|l| format!("line {l}"))
            .unwrap_or_default();
        bin()
            .arg("check")
            .arg(&path)
            .assert()
            .code(2)
            .stdout(contains(*message))
            .stdout(contains(first_line));
    }
}

#[test]
fn bad_names_are_each_explained() {
    bin()
        .arg("check")
        .arg(samples().join("invalid/bad-name.csv"))
        .assert()
        .code(2)
        .stdout(contains("line 2, column name: the name \"reports/2024.txt\" contains `/`"))
        .stdout(contains("line 3, column name: the name \"tab\\tinside.txt\" contains the control character U+0009"))
        .stdout(contains("line 4, column name: the name is 260 bytes long; OnePageCRM allows at most 255 bytes"));
}

#[test]
fn every_problem_of_every_row_is_reported_at_once() {
    let s = Scratch::new();
    s.file("ok.txt", "x");
    let m = s.manifest(format!(
        "{HEADER}\
         ok.txt,{ID},note,{ID},\n\
         missing.pdf,,fax,,a/b\n\
         ok.txt,{ID},deal,{ID},\n\
         ok.txt,{ID},note,{ID},again.txt\n"
    ));
    let (code, doc) = check_json(&m, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![
            (line(3), col("file"), "file_missing".into()),
            (line(3), col("contact_id"), "missing_field".into()),
            (
                line(3),
                col("reference_type"),
                "unknown_reference_type".into()
            ),
            (line(3), col("reference_id"), "missing_field".into()),
            (line(3), col("name"), "invalid_name".into()),
            (line(5), col("file"), "duplicate_attachment".into()),
        ]
    );
    assert_eq!(doc["summary"]["rows"], 4);
    assert_eq!(doc["summary"]["valid"], 2);
    assert_eq!(doc["summary"]["invalid"], 2);
    assert_eq!(doc["summary"]["errors"], 6);
}

#[test]
fn file_of_exactly_the_limit_is_valid_and_one_byte_more_is_not() {
    let s = Scratch::new();
    let exact = std::fs::File::create(s.path("exact.bin")).unwrap();
    exact.set_len(10_485_760).unwrap();
    let over = std::fs::File::create(s.path("over.bin")).unwrap();
    over.set_len(10_485_761).unwrap();
    let m = s.manifest(format!(
        "{HEADER}exact.bin,{ID},note,{ID},\nover.bin,{ID},note,{ID},\n"
    ));
    let (code, doc) = check_json(&m, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![(line(3), col("file"), "file_too_large".into())]
    );
    assert_eq!(doc["summary"]["bytes_to_upload"], 10_485_760);
}

#[test]
fn empty_file_and_odd_ids_are_warnings_not_errors() {
    let s = Scratch::new();
    s.file("empty.txt", "");
    let m = s.manifest(format!("{HEADER}empty.txt,12345,note,{ID},\n"));
    let (code, doc) = check_json(&m, &[]);
    assert_eq!(code, 0);
    assert_eq!(doc["valid"], true);
    assert_eq!(
        problems(&doc),
        vec![
            (line(2), col("file"), "empty_file".into()),
            (line(2), col("contact_id"), "id_format".into())
        ]
    );
    assert_eq!(doc["summary"]["warnings"], 2);
    bin()
        .arg("check")
        .arg(&m)
        .assert()
        .code(0)
        .stdout(contains(
            "warning: line 2, column contact_id: \"12345\" is not a 24-hex-digit OnePageCRM id",
        ))
        .stdout(contains(
            "warning: line 2, column file: \"empty.txt\" is empty",
        ));
}

#[test]
fn bom_crlf_quotes_newlines_and_blank_lines_are_read() {
    let s = Scratch::new();
    s.file("a, \"b\".txt", "1");
    s.file("c.txt", "22");
    let text = format!(
        "\u{feff}file,contact_id,reference_type,reference_id,name\r\n\
         \r\n\
         \"a, \"\"b\"\".txt\",{ID},note,{ID},\"Quarterly, \"\"final\"\".txt\"\r\n\
         \r\n\
         c.txt,{ID},call,{ID2},\r\n"
    );
    let (code, doc) = check_json(&s.manifest(text), &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["summary"]["rows"], 2);
    assert_eq!(doc["summary"]["bytes_to_upload"], 3);

    // A quoted newline inside a field: the row's line is where it starts, the next row's after it.
    let text = format!("{HEADER}c.txt,{ID},note,{ID},\"two\nlines\"\nnope.txt,{ID},note,{ID2},\n");
    let (code, doc) = check_json(&s.manifest(text), &[]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![
            (line(2), col("name"), "invalid_name".into()),
            (line(4), col("file"), "file_missing".into())
        ]
    );
}

#[test]
fn paths_with_spaces_and_non_ascii_letters_resolve_against_the_manifest_folder() {
    let s = Scratch::new();
    s.file("docs/Angebot Müller – März.pdf", "pdf");
    s.file("docs/ファイル.txt", "txt");
    s.file("sub/manifest.csv", format!("{HEADER}../docs/Angebot Müller – März.pdf,{ID},deal,{ID},\n../docs/ファイル.txt,{ID},note,{ID},\n"));
    let (code, doc) = check_json(&s.path("sub/manifest.csv"), &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["summary"]["files_to_upload"], 2);
    // Run from another folder: relative paths still resolve against the manifest's folder.
    bin()
        .current_dir("/")
        .arg("check")
        .arg(s.path("sub/manifest.csv"))
        .assert()
        .code(0);
}

#[test]
fn semicolon_and_tab_delimiters() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    let semi = s.file(
        "semi.csv",
        format!("file;contact_id;reference_id\na.txt;{ID};{ID}\n"),
    );
    bin()
        .args(["check", "--delimiter", ";"])
        .arg(&semi)
        .assert()
        .code(0);
    // Without --delimiter the header is one unknown column, and the message says what to do.
    bin()
        .arg("check")
        .arg(&semi)
        .assert()
        .code(2)
        .stdout(contains("unknown column `file;contact_id;reference_id`"))
        .stdout(contains("pass --delimiter"));
    let tab = s.file(
        "tab.tsv",
        format!("file\tcontact_id\treference_id\na.txt\t{ID}\t{ID}\n"),
    );
    bin()
        .args(["check", "-d", "tab"])
        .arg(&tab)
        .assert()
        .code(0);
}

#[test]
fn ignored_report_columns_are_accepted() {
    let s = Scratch::new();
    s.file("a.txt", "a");
    let m = s.manifest(format!("file,contact_id,reference_id,error_kind,error\na.txt,{ID},{ID},network,\"timed out, twice\"\n"));
    let (code, doc) = check_json(&m, &[]);
    assert_eq!(code, 0, "{doc}");
}

#[test]
fn unreadable_file_is_reported() {
    let s = Scratch::new();
    let secret = s.file("secret.pdf", "x");
    let m = s.manifest(format!("{HEADER}secret.pdf,{ID},note,{ID},\n"));
    set_mode(&secret, 0o000);
    set_mode(&m, 0o644);
    // Root reads any file, so as root the check runs as an unprivileged user.
    let mut cmd = unprivileged_bin(&s);
    cmd.arg("check").arg(&m).assert().code(2).stdout(contains(
        "line 2, column file: \"secret.pdf\" cannot be opened for reading: permission denied",
    ));
}

#[test]
fn fifo_is_not_a_regular_file_and_check_does_not_hang() {
    let s = Scratch::new();
    let fifo = s.path("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let m = s.manifest(format!("{HEADER}pipe,{ID},note,{ID},\n"));
    let (code, doc) = check_json(&m, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        problems(&doc),
        vec![(line(2), col("file"), "not_regular_file".into())]
    );
}

// Issue 19, item 2: a file whose size lies (/proc/version: size 0, reads 125 bytes) is refused,
// by `check` and by `run`, instead of being uploaded as 0 bytes.
#[test]
fn a_file_whose_size_lies_is_refused_by_check_and_run() {
    let proc_file = std::path::Path::new("/proc/version");
    if std::fs::metadata(proc_file).map(|m| m.len()).ok() != Some(0) {
        return; // no /proc here: nothing whose size lies to test with
    }
    let s = Scratch::new();
    let m = s.manifest(format!("{HEADER}/proc/version,{ID},note,{ID},\n"));
    let (code, doc) = check_json(&m, &["--offline"]);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(
        problems(&doc),
        vec![(line(2), col("file"), "not_regular_file".into())]
    );
    let emu = Emulator::start(&["--rate-limit", "off"]);
    emu.run_cmd(&m)
        .assert()
        .code(2)
        .stderr(contains("does not read as the 0 bytes its size says"));
    assert!(emu.state()["requests"].as_object().unwrap().is_empty());
}

#[test]
fn manifest_that_does_not_exist_or_is_a_directory() {
    let s = Scratch::new();
    bin()
        .arg("check")
        .arg(s.path("nope.csv"))
        .assert()
        .code(2)
        .stdout(contains("cannot read manifest"))
        .stdout(contains("nope.csv: no such file or directory"));
    bin()
        .arg("check")
        .arg(s.dir.path())
        .assert()
        .code(2)
        .stdout(contains(
            "is a directory; give the path of the CSV manifest file",
        ));
}

#[test]
fn hostile_bytes_never_panic() {
    let s = Scratch::new();
    let inputs: Vec<Vec<u8>> = vec![
        b"\"".to_vec(),
        b"file,contact_id,reference_id\n\"unterminated,".to_vec(),
        b"\xff\xfe\x00f\x00i".to_vec(),
        b"file,file,file\n".to_vec(),
        b",,,\n,,,\n".to_vec(),
        vec![b'a'; 1 << 20],
        b"file,contact_id,reference_id\n\xc3\n".to_vec(),
    ];
    for input in inputs {
        let m = s.manifest(&input);
        bin()
            .arg("check")
            .arg(&m)
            .assert()
            .code(2)
            .stderr(contains("panicked").not())
            .stdout(contains("error:"));
    }
}

// Online, `check` reads the records the rows attach to (see src/records.rs).

/// The sample seed's contacts and records used below.
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_NOTE_2: &str = "ce1987ee72777833d0d1e0e7";
const ADA_DEAL: &str = "ce6ec0cdddd720161b4cbd15";
const GRACE: &str = "285b4ab0cf8624250f4313ff";
const GRACE_DEAL: &str = "6a6bc056a90f9f118eb3ef73";
const NO_RECORD: &str = "0000000000000000000000aa";

/// `check --json` against `emu`: the exit code and the document.
fn check_online(emu: &Emulator, manifest: &std::path::Path) -> (i32, serde_json::Value) {
    let out = emu
        .cmd()
        .arg("check")
        .arg(manifest)
        .arg("--json")
        .output()
        .unwrap();
    (out.status.code().unwrap(), json_stdout(&out))
}

/// The requests `emu` counted that read records (every `GET` but the lookups, step 1 and the
/// emulator's own).
fn record_reads(emu: &Emulator) -> u64 {
    emu.requests()
        .iter()
        .filter(|(k, _)| k.starts_with("GET "))
        .filter(|(k, _)| !k.contains("/contacts ") && !k.contains("/s3_form "))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn check_online_reports_a_record_that_does_not_exist_on_its_line() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let m = s.manifest(format!(
        "{HEADER}a.txt,{ADA},deal,{ADA_DEAL},\na.txt,{ADA},deal,{NO_RECORD},b.txt\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(doc["valid"], false);
    assert_eq!(
        problems(&doc),
        vec![(line(3), col("reference_id"), "record_not_found".into())]
    );
    let message = doc["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains(NO_RECORD), "{message}");
    assert_eq!(doc["records"]["status"], "checked");
    assert_eq!(doc["records"]["records"], 2);
    assert_eq!(doc["records"]["not_found"], 1);
    // An invalid manifest: the storage is not asked.
    assert_eq!(doc["quota"]["status"], "not_checked");
    emu.cmd()
        .arg("check")
        .arg(&m)
        .assert()
        .code(2)
        .stdout(contains(format!(
            "error: line 3, column reference_id: no deal has the id {NO_RECORD}"
        )))
        .stdout(contains("1 not found, 0 of another contact"));
}

#[test]
fn check_online_reports_a_record_of_another_contact_on_its_line() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    let m = s.manifest(format!(
        "{HEADER}a.txt,{ADA},deal,{GRACE_DEAL},\nb.txt,{GRACE},deal,{GRACE_DEAL},\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![(
            line(2),
            col("reference_id"),
            "record_of_other_contact".into()
        )]
    );
    let message = doc["problems"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(GRACE) && message.contains(ADA),
        "the message names both contacts: {message}"
    );
    // One record, but named under two contacts: read for each.
    assert_eq!(doc["records"]["records"], 2);
    assert_eq!(doc["records"]["of_other_contact"], 1);
    emu.cmd()
        .arg("check")
        .arg(&m)
        .assert()
        .code(2)
        .stdout(contains(format!(
            "error: line 2, column reference_id: deal {GRACE_DEAL} belongs to contact {GRACE}, not to contact {ADA}"
        )));
}

#[test]
fn check_online_reads_each_sample_record_once_and_offline_reads_none() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let manifest = samples().join("manifest.csv");
    emu.cmd()
        .arg("check")
        .arg(&manifest)
        .arg("--offline")
        .assert()
        .code(0)
        .stdout(contains("Records:   not read (--offline)"));
    assert!(
        emu.requests().is_empty(),
        "--offline sent requests: {:?}",
        emu.requests()
    );

    let (code, doc) = check_online(&emu, &manifest);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["valid"], true);
    // 20 rows, 19 records (two rows share a deal) of 4 contacts; the two notes of each of three
    // contacts are read by one listing each, every other record by its own GET: 16 calls.
    let records = &doc["records"];
    assert_eq!(records["status"], "checked");
    assert_eq!(records["records"], 19);
    assert_eq!(records["found"], 19);
    assert_eq!(records["calls"], 16);
    assert_eq!(record_reads(&emu), 16, "{:?}", emu.requests());
    let requests = emu.requests();
    assert_eq!(requests["GET /api/v3/notes 200"], 3, "{requests:?}");
    assert_eq!(requests["GET /api/v3/notes/{id} 200"], 1, "{requests:?}");
    assert_eq!(doc["quota"]["status"], "checked");
    emu.cmd()
        .arg("check")
        .arg(&manifest)
        .assert()
        .code(0)
        .stdout(contains(
            "Records:   19 records read with 16 API calls: 19 found, 0 not found, 0 of another contact",
        ))
        .stdout(contains("Result:    valid"));
}

#[test]
fn several_records_of_one_contact_are_listed_and_only_the_unlisted_read_one_by_one() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    // Ada's two notes are on her listing; the third is no note of hers, so it is read on its own
    // (it does not exist). Three deals: whether or not the server lists deals, each verdict holds.
    let m = s.manifest(format!(
        "{HEADER}\
         a.txt,{ADA},note,{ADA_NOTE},n1\n\
         a.txt,{ADA},note,{ADA_NOTE_2},n2\n\
         a.txt,{ADA},note,{NO_RECORD},n3\n\
         a.txt,{ADA},deal,{ADA_DEAL},d1\n\
         a.txt,{ADA},deal,{GRACE_DEAL},d2\n\
         a.txt,{ADA},deal,{NO_RECORD},d3\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![
            (line(4), col("reference_id"), "record_not_found".into()),
            (
                line(6),
                col("reference_id"),
                "record_of_other_contact".into()
            ),
            (line(7), col("reference_id"), "record_not_found".into()),
        ]
    );
    let requests = emu.requests();
    assert_eq!(requests["GET /api/v3/notes 200"], 1, "{requests:?}");
    assert_eq!(requests["GET /api/v3/notes/{id} 404"], 1, "{requests:?}");
    assert!(
        !requests.contains_key("GET /api/v3/notes/{id} 200"),
        "a listed note was read again: {requests:?}"
    );
    assert_eq!(doc["records"]["records"], 6);
    assert_eq!(doc["records"]["calls"].as_u64(), Some(record_reads(&emu)));
}

#[test]
fn rows_by_email_are_read_under_the_contact_found_and_unresolved_ones_are_skipped() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let m = s.manifest(format!(
        "file,contact_email,reference_type,reference_id,name\n\
         a.txt,ADA@analytical.example,deal,{ADA_DEAL},a1\n\
         a.txt,ada@analytical.example,deal,{GRACE_DEAL},a2\n\
         a.txt,nobody@nowhere.example,deal,{NO_RECORD},a3\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![
            (
                line(3),
                col("reference_id"),
                "record_of_other_contact".into()
            ),
            (line(4), col("contact_email"), "contact_not_found".into()),
        ]
    );
    assert_eq!(doc["records"]["records"], 2);
    assert_eq!(doc["records"]["rows_not_checked"], 1);
    let requests = emu.requests();
    assert!(
        !requests.keys().any(|k| k.contains("/{id} 404")),
        "the unresolved row's record was read: {requests:?}"
    );
}

#[test]
fn rows_that_create_their_note_read_no_record() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    let m = s.manifest(format!(
        "file,contact_id,reference_id,note_text\na.txt,{ADA},,Hello\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["records"]["records"], 0);
    assert_eq!(doc["records"]["calls"], 0);
    assert_eq!(record_reads(&emu), 0, "{:?}", emu.requests());
}

#[test]
fn a_contact_that_does_not_exist_is_a_problem_of_its_rows_not_a_failed_storage_check() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    s.file("b.txt", "b");
    // The note rows name no record, so only step 1 (for the first row's contact) can tell.
    let m = s.manifest(format!(
        "file,contact_id,reference_id,note_text\n\
         a.txt,{NO_RECORD},,Hello\n\
         b.txt,{NO_RECORD},,Again\n\
         a.txt,{ADA},{ADA_NOTE},\n"
    ));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![
            (line(2), col("contact_id"), "contact_not_found".into()),
            (line(3), col("contact_id"), "contact_not_found".into()),
        ]
    );
    assert_eq!(doc["quota"]["status"], "not_checked");
    emu.cmd()
        .arg("check")
        .arg(&m)
        .assert()
        .code(2)
        .stdout(contains(format!(
            "error: line 2, column contact_id: no contact has the id {NO_RECORD}"
        )));
}

#[test]
fn a_reference_id_that_is_no_id_is_read_as_one_and_not_found() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let s = Scratch::new();
    s.file("a.txt", "a");
    // Unescaped, this id would take the read to `GET /contacts?email=x`.
    let m = s.manifest(format!("{HEADER}a.txt,{ADA},deal,../contacts?email=x,\n"));
    let (code, doc) = check_online(&emu, &m);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(
        problems(&doc),
        vec![
            (line(2), col("reference_id"), "record_not_found".into()),
            (line(2), col("reference_id"), "id_format".into()),
        ]
    );
    let requests = emu.requests();
    assert_eq!(
        requests.get("GET /api/v3/deals/{id} 404"),
        Some(&1),
        "{requests:?}"
    );
}
