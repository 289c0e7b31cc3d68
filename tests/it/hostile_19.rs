//! Hostile tests of issue 19 (what `--json`, `status` and `report` show a person and a script):
//! one name for one failure, causes kept in JSON, terminal text escaped, logs above the bar.

use std::path::Path;

use serde_json::Value;

use crate::common::emulator::Emulator;
use crate::common::{HEADER, Scratch, bin, check_json, json_stdout};

/// The sample seed's contact and one of its notes (samples/emulator-seed.json).
const CONTACT: &str = "ca929443ed449d7679121de5";
const NOTE: &str = "064132394d9b497f536b2bb7";

/// One byte over the 10 MB limit.
const TOO_LARGE: u64 = 10_485_761;

fn status_json(manifest: &Path) -> Value {
    let out = bin()
        .arg("status")
        .arg(manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    json_stdout(&out)
}

/// A manifest of one good row and one file over the size limit.
fn one_too_large(s: &Scratch) -> std::path::PathBuf {
    s.file("ok.txt", "fine");
    let big = std::fs::File::create(s.path("big.bin")).unwrap();
    big.set_len(TOO_LARGE).unwrap();
    s.manifest(format!(
        "{HEADER}ok.txt,{CONTACT},note,{NOTE},\nbig.bin,{CONTACT},note,{NOTE},\n"
    ))
}

// Item 9: `check --json` said `file_too_large`, `status` and `report` said `invalid`.
#[test]
fn a_rejected_row_has_its_problems_name_in_check_status_and_report() {
    let emu = Emulator::start(&[]);
    let s = Scratch::new();
    let manifest = one_too_large(&s);

    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc}");
    let kinds: Vec<&str> = doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["file_too_large"], "{doc}");

    emu.run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .assert()
        .code(1);

    let status = status_json(&manifest);
    let failures = status["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{status}");
    assert_eq!(failures[0]["kind"], "file_too_large", "{status}");

    let text = bin().arg("status").arg(&manifest).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("file_too_large"), "{text}");
    assert!(!text.contains("invalid:"), "{text}");

    let report = s.path("report.csv");
    bin()
        .arg("report")
        .arg(&manifest)
        .args(["--only", "failed", "-o"])
        .arg(&report)
        .assert()
        .code(0);
    let mut reader = csv::Reader::from_path(&report).unwrap();
    let headers = reader.headers().unwrap().clone();
    let at = headers.iter().position(|h| h == "error_kind").unwrap();
    let kinds: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[at].to_string())
        .collect();
    assert_eq!(kinds, ["file_too_large"]);

    // A state file of an earlier version holds `invalid`: it still reads, and a rerun gives the
    // row its problem's name.
    let db = rusqlite::Connection::open(s.path("manifest.opcrm.sqlite")).unwrap();
    let changed = db
        .execute(
            "UPDATE rows SET error_kind = 'invalid' WHERE state = 'rejected'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    assert_eq!(status_json(&manifest)["failures"][0]["kind"], "invalid");
    emu.run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .assert()
        .code(1);
    assert_eq!(
        status_json(&manifest)["failures"][0]["kind"],
        "file_too_large"
    );
}

// Item 10: a missing manifest's cause was on stderr only; `run --json` said `rejected: 1` beside
// `"failures": []`.
#[test]
fn json_documents_carry_the_cause_and_every_rejected_row() {
    let emu = Emulator::start(&[]);
    let s = Scratch::new();

    let out = emu
        .run_cmd(&s.path("missing.csv"))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc = json_stdout(&out);
    let error = doc["error"].as_str().unwrap();
    assert!(
        error.contains("the manifest cannot be read") && error.contains("missing.csv"),
        "{doc}"
    );
    let causes = doc["causes"].as_array().unwrap();
    assert!(causes.len() >= 2, "{doc}");
    assert!(
        causes
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("no such file"),
        "{doc}"
    );
    assert_eq!(doc["problems"][0]["kind"], "manifest_unreadable", "{doc}");

    // An invalid manifest without --skip-invalid: its problems are in the document too.
    let manifest = one_too_large(&s);
    let out = emu.run_cmd(&manifest).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc = json_stdout(&out);
    assert_eq!(doc["problems"][0]["kind"], "file_too_large", "{doc}");
    assert_eq!(doc["problems"][0]["line"], 3, "{doc}");

    let out = emu
        .run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = json_stdout(&out);
    assert_eq!(doc["rejected"], 1, "{doc}");
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{doc}");
    assert_eq!(failures[0]["line"], 3);
    assert_eq!(failures[0]["file"], "big.bin");
    assert_eq!(failures[0]["state"], "rejected");
    assert_eq!(failures[0]["kind"], "file_too_large");
    assert!(
        failures[0]["message"]
            .as_str()
            .unwrap()
            .contains("10485761 bytes"),
        "{doc}"
    );
}

/// Whether `bytes` hold an escape sequence or another control character but the line end.
fn has_controls(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes)
        .chars()
        .any(|c| c.is_control() && c != '\n')
}

// Item 11: a file name that sets the window title and clears the screen reached the terminal
// raw, in `check`'s "looked for PATH", in `status` and in `report`'s notes.
#[test]
fn escape_sequences_from_a_manifest_reach_no_terminal_line() {
    let emu = Emulator::start(&[]);
    let s = Scratch::new();
    let evil = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J.txt";
    s.file("ok.txt", "fine");
    let manifest = s.manifest(format!(
        "{HEADER}ok.txt,{CONTACT},note,{NOTE},\n\"{evil}\",{CONTACT},note,{NOTE},safe.txt\n"
    ));

    let out = bin()
        .arg("check")
        .arg(&manifest)
        .arg("--offline")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("looked for"), "{text}");
    assert!(text.contains("\\u{1b}]0;pwned"), "shown escaped: {text}");
    assert!(!has_controls(&out.stdout), "{text}");
    assert!(!has_controls(&out.stderr));

    let out = emu
        .run_cmd(&manifest)
        .args(["--skip-invalid", "--rate", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("looked for"));
    assert!(!has_controls(&out.stdout), "{out:?}");
    assert!(!has_controls(&out.stderr), "{out:?}");

    let out = bin().arg("status").arg(&manifest).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil\\u{1b}"), "{text}");
    assert!(!has_controls(&out.stdout), "{text}");

    // The report file keeps the bytes (it is data); the note on stderr names its path escaped.
    let report = s.path("fix\u{1b}[2J.csv");
    let out = bin()
        .arg("report")
        .arg(&manifest)
        .args(["--only", "failed", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("fix\\u{1b}[2J.csv"), "{note}");
    assert!(!has_controls(&out.stderr), "{note}");
    let csv = std::fs::read(&report).unwrap();
    assert!(
        csv.windows(evil.len()).any(|w| w == evil.as_bytes()),
        "the report keeps the file name's bytes"
    );
}

/// Whether `bytes` hold a colour (an SGR escape sequence, `ESC [ ... m`).
fn has_colour(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.split('\u{1b}').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|r| {
            let end = r.find(|c: char| !(c.is_ascii_digit() || c == ';'));
            end.is_some_and(|i| r[i..].starts_with('m'))
        })
    })
}

/// `run -vv` of `manifest` under a pseudo-terminal (`script`), so that stderr is a terminal;
/// what the terminal showed.
fn run_on_a_terminal(emu: &Emulator, manifest: &Path, no_color: Option<&str>) -> Vec<u8> {
    let line = format!(
        "'{}' run '{}' -vv --no-progress --rate off",
        env!("CARGO_BIN_EXE_opcrm-import"),
        manifest.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("ONEPAGECRM_API_URL", &emu.api)
        .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
        .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
        .env_remove("NO_COLOR")
        .env_remove("OPCRM_LOG");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

// Item 12: log lines were coloured on a terminal whatever NO_COLOR said.
#[test]
fn no_color_turns_the_log_colours_off_on_a_terminal() {
    let emu = Emulator::start(&[]);
    let s = Scratch::new();
    s.file("ok.txt", "fine");
    let manifest = s.manifest(format!("{HEADER}ok.txt,{CONTACT},note,{NOTE},\n"));

    // Coloured on a terminal by default: the pseudo-terminal is one.
    let shown = run_on_a_terminal(&emu, &manifest, None);
    assert!(String::from_utf8_lossy(&shown).contains("DEBUG"));
    assert!(has_colour(&shown), "{}", String::from_utf8_lossy(&shown));

    let s = Scratch::new();
    s.file("ok.txt", "fine");
    let manifest = s.manifest(format!("{HEADER}ok.txt,{CONTACT},note,{NOTE},\n"));
    let shown = run_on_a_terminal(&emu, &manifest, Some("1"));
    let text = String::from_utf8_lossy(&shown);
    assert!(text.contains("DEBUG"), "{text}");
    assert!(!has_colour(&shown), "{text}");
}
