//! "Nothing uploaded twice, nothing lost" where it is hardest: answers lost after the retries
//! ran out, attachments that were there before, links that do not show a key, resume hints,
//! locks through links, keys across state files, and heavy faults rerun to the end.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use predicates::str::contains;
use serde_json::{Value, json};

use crate::common::emulator::{Emulator, tutorial_fields, tutorial_key, upload};
use crate::common::{Scratch, bin, json_stdout};
use crate::faults::{finish, generated, spawn_run};
use crate::run::{assert_exactly_once, sample_copy};

/// Ada, one of her notes, and another of her notes (samples/emulator-seed.json).
const ADA: &str = "ca929443ed449d7679121de5";
const ADA_NOTE: &str = "064132394d9b497f536b2bb7";
const ADA_NOTE_2: &str = "ce1987ee72777833d0d1e0e7";

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The attachments the emulator holds on one record.
fn attachments_on(state: &Value, record: &str) -> Vec<Value> {
    state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reference_id"] == record)
        .cloned()
        .collect()
}

/// Attaches `file` as `name` to Ada's note with the tutorial's three curl steps, as someone
/// did before the migration; returns the attachment's id.
fn attach_by_hand(emu: &Emulator, file: &Path, name: &str) -> String {
    let form = emu.form(ADA);
    let key = tutorial_key(&form, ADA, name);
    let url = form["data"]["url"].as_str().unwrap();
    let s3 = upload(url, &tutorial_fields(&form, &key, name), file, &[]);
    assert_eq!(s3.status, 201, "{}", s3.body);
    let reply = emu.post(
        "/attachments",
        &json!({"reference_type": "note", "reference_id": ADA_NOTE, "contact_id": ADA,
                "name": name, "key": key, "size": std::fs::metadata(file).unwrap().len()}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["data"]["attachment"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A one-row manifest: `report.pdf` (its bytes `body`) as `report.pdf` on Ada's note.
fn one_row(s: &Scratch, body: &[u8]) -> PathBuf {
    s.file("files/report.pdf", body);
    s.manifest(format!(
        "file,contact_id,reference_type,reference_id\nfiles/report.pdf,{ADA},note,{ADA_NOTE}\n"
    ))
}

/// `status --json` of a state file.
fn status_of(state: &Path) -> Value {
    let out = bin()
        .args(["status", "--json", "--state"])
        .arg(state)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn an_attach_answer_lost_after_the_retries_ran_out_is_settled_on_rerun_not_attached_again() {
    // The first attach takes effect and its answer is lost; with no retries the row fails.
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1:drop-after"]);
    let (_s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .assert()
        .code(4);
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn retry_failed_also_settles_a_lost_attach_before_anything_else() {
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1-3:drop-after"]);
    let (_s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .assert()
        .code(4);
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retry-failed"])
        .assert()
        .code(0);
    let state = emu.state();
    assert_exactly_once(&state, &manifest);
    // The three lost attaches were settled by asking their records, not by attaching again.
    assert_eq!(state["requests"]["POST /api/v3/attachments 201"], 17);
}

#[test]
fn an_attachment_of_the_same_name_and_size_that_was_there_before_is_never_adopted() {
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        // The 1st attach is the one made by hand below; the run's (the 2nd) is lost before
        // it reaches the API.
        "--fault-at",
        "POST /api/v3/attachments:2:drop-before",
    ]);
    let s = Scratch::new();
    let manifest = one_row(&s, b"the new report, 31 bytes long..");
    let older = s.file("older/report.pdf", b"an older report, also 31 bytes!");
    let before = attach_by_hand(&emu, &older, "report.pdf");

    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let state = emu.state();
    let on_note = attachments_on(&state, ADA_NOTE);
    assert_eq!(on_note.len(), 2, "{on_note:#?}");
    let mine: Vec<&Value> = on_note
        .iter()
        .filter(|a| a["id"] != before.as_str())
        .collect();
    assert_eq!(mine[0]["md5"], md5_hex(b"the new report, 31 bytes long.."));
    let report = bin()
        .args(["report", "--only", "done"])
        .arg(&manifest)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains(mine[0]["id"].as_str().unwrap()) && !report.contains(&before),
        "the row holds its own attachment: {report}"
    );
}

/// Links that do not show the key (as OnePageCRM's documented example): the record's snapshot,
/// taken before the run's first attach to it, settles a lost answer. The same file attached by
/// hand before the run (same name, same size) is in the snapshot and never adopted, whether the
/// lost attach took effect or not; nothing is left for a person.
#[test]
fn opaque_links_settle_a_lost_attach_by_the_snapshot_and_never_adopt_the_older_same_file() {
    for (fault, adopted) in [("drop-after", 1), ("drop-before", 0)] {
        let emu = Emulator::start(&[
            "--rate-limit",
            "off",
            "--opaque-links",
            // The 1st attach is the one made by hand below; the run's (the 2nd) is lost.
            "--fault-at",
            &format!("POST /api/v3/attachments:2:{fault}"),
        ]);
        let s = Scratch::new();
        let manifest = one_row(&s, b"the new report, 31 bytes long..");
        let older = s.file("older/report.pdf", b"an older report, also 31 bytes!");
        let before = attach_by_hand(&emu, &older, "report.pdf");

        let out = emu
            .run_cmd(&manifest)
            .args(["--rate", "off", "--json"])
            .output()
            .unwrap();
        let doc = json_stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{fault}: {doc}");
        let state = emu.state();
        let on_note = attachments_on(&state, ADA_NOTE);
        assert_eq!(on_note.len(), 2, "{fault}: {on_note:#?}");
        let mine: Vec<&Value> = on_note
            .iter()
            .filter(|a| a["id"] != before.as_str())
            .collect();
        assert_eq!(mine[0]["md5"], md5_hex(b"the new report, 31 bytes long.."));
        // The attach was sent again only when the lost one had not taken effect.
        assert_eq!(
            state["requests"]["POST /api/v3/attachments 201"],
            2 - adopted,
            "{fault}: {}",
            state["requests"]
        );
        let status = bin().arg("status").arg(&manifest).output().unwrap();
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(!status.contains("attach_unsettled"), "{fault}: {status}");
    }
}

/// The `Result:` line's command as printed (it names this binary as it was started: by its
/// absolute path here), run by a shell in `cwd`.
fn run_hint(emu: &Emulator, stdout: &str, cwd: &Path) -> std::process::Output {
    let program = env!("CARGO_BIN_EXE_opcrm-import");
    let hint = stdout
        .lines()
        .find_map(|l| {
            l.split_once(&format!(": {program} run "))
                .map(|(_, rest)| rest)
        })
        .unwrap_or_else(|| panic!("no resume command naming {program} in {stdout}"));
    Command::new("sh")
        .arg("-c")
        .arg(format!("{program} run {hint}"))
        .current_dir(cwd)
        .env("ONEPAGECRM_API_URL", &emu.api)
        .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
        .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
        .env("OPCRM_SETTLE_WINDOW", "1")
        .output()
        .unwrap()
}

/// Started by its bare name (found on `PATH`), the tool names itself so in the command it
/// prints; started by a relative path, by that path made absolute.
#[test]
fn the_printed_command_names_the_tool_as_it_was_started() {
    let bin = Path::new(env!("CARGO_BIN_EXE_opcrm-import"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for relative in [false, true] {
        // A run with failed rows: its `Result:` line prints the command that resumes it.
        let emu = Emulator::with_faults(&["POST /api/v3/attachments:1-3:error"]);
        let (s, manifest) = sample_copy();
        let copy = s.path("bin/opcrm-import");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(bin, &copy).unwrap();
        let (program, expected) = match relative {
            false => ("opcrm-import".to_string(), "opcrm-import".to_string()),
            true => ("./bin/opcrm-import".into(), copy.display().to_string()),
        };
        let out = Command::new(&program)
            .current_dir(s.path(""))
            .env("PATH", &path)
            .env("ONEPAGECRM_API_URL", &emu.api)
            .env("ONEPAGECRM_USER_ID", crate::common::emulator::USER_ID)
            .env("ONEPAGECRM_API_KEY", crate::common::emulator::API_KEY)
            .arg("run")
            .arg(&manifest)
            .args(["--no-progress", "--rate", "off", "--retries", "0"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{program}: {stdout}");
        assert!(
            stdout.contains(&format!(": {expected} run ")),
            "{program}: {stdout}"
        );
    }
}

#[test]
fn the_resume_hint_is_the_exact_command_with_its_state_file_quoted() {
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1-3:error"]);
    let (s, manifest) = sample_copy();
    let state = s.path("kept elsewhere/it's the state.sqlite");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--retries 0"), "{stdout}");
    let again = run_hint(&emu, &stdout, Path::new("/"));
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("done before:        17"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert!(
        !s.path("manifest.opcrm.sqlite").exists(),
        "the hint used the given state file, not a new default one"
    );
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn a_second_run_through_a_hard_or_symbolic_link_to_the_state_file_is_refused() {
    let emu = Emulator::start(&["--rate-limit", "off", "--latency-ms", "60..60"]);
    let (s, manifest) = sample_copy();
    let state = s.path("state.sqlite");
    let first = spawn_run(
        &emu,
        &manifest,
        &["--concurrency", "1", "--state", state.to_str().unwrap()],
    );
    // Under way: at least one row recorded done (decided from progress, not time).
    let deadline = Instant::now() + Duration::from_secs(120);
    while status_of(&state)["by_state"]["done"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the first run never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    let soft = s.path("soft-link.sqlite");
    std::os::unix::fs::symlink(&state, &soft).unwrap();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--state"])
        .arg(&soft)
        .assert()
        .code(3)
        .stderr(contains("another run is using state file"));
    // A second name (hard link) is refused outright: SQLite's journal lives beside a name.
    let hard = s.path("hard-link.sqlite");
    std::fs::hard_link(&state, &hard).unwrap();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--state"])
        .arg(&hard)
        .assert()
        .code(3)
        .stderr(contains("hard links"));
    let (code, _, stderr) = finish(first);
    assert_eq!(code, 0, "{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
    let conn = rusqlite::Connection::open(&state).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn two_state_files_never_write_one_key_even_in_the_same_second() {
    // Every step-1 answer carries one timestamp: the same second for both runs, for sure.
    let emu = Emulator::start(&["--rate-limit", "off", "--form-timestamp", "1700000000"]);
    let (a, b) = (Scratch::new(), Scratch::new());
    a.file("files/report.pdf", b"first migration's report");
    b.file(
        "files/report.pdf",
        b"second migration's report, other bytes",
    );
    let ma = a.manifest(format!(
        "file,contact_id,reference_type,reference_id\nfiles/report.pdf,{ADA},note,{ADA_NOTE}\n"
    ));
    let mb = b.manifest(format!(
        "file,contact_id,reference_type,reference_id\nfiles/report.pdf,{ADA},note,{ADA_NOTE_2}\n"
    ));
    for m in [&ma, &mb] {
        emu.run_cmd(m).args(["--rate", "off"]).assert().code(0);
    }
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2);
    let keys: HashSet<&str> = attachments
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (m, record) in [(&ma, ADA_NOTE), (&mb, ADA_NOTE_2)] {
        let a = &attachments_on(&state, record)[0];
        let key = a["key"].as_str().unwrap();
        assert!(key.starts_with(&format!("{ADA}/1700000000")), "{key}");
        let file = m.parent().unwrap().join("files/report.pdf");
        assert_eq!(
            emu.object(key),
            std::fs::read(file).unwrap(),
            "the object under {key} is this run's file"
        );
    }
}

#[test]
fn heavy_faults_rerun_until_done_leave_no_duplicate_and_no_loss() {
    let s = Scratch::new();
    // Half the requests fail and a third of the rest lose their connection (half of those after
    // taking effect). Few retries per run, so that runs are short and many: each rerun resumes
    // from what the last one left, lost attaches included. (The closing note of issue 11 has the
    // same with 300 rows and default retries.)
    let rows = 100;
    let (seed, manifest) = generated(&s, rows);
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-rate",
            "0.5",
            "--drop-rate",
            "0.3",
            "--fault-seed",
            "11",
        ],
        None,
    );
    let mut runs = 0;
    loop {
        runs += 1;
        let out = emu
            .run_cmd(&manifest)
            .args(["--rate", "off", "--concurrency", "32", "--retries", "2"])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => break,
            Some(4) if runs < 60 => continue,
            other => panic!(
                "run {runs} ended {other:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            ),
        }
    }
    let state = emu.state();
    let mut per_row: HashMap<(String, String), u32> = HashMap::new();
    for a in state["attachments"].as_array().unwrap() {
        *per_row
            .entry((a["reference_id"].to_string(), a["filename"].to_string()))
            .or_default() += 1;
    }
    let duplicates: u32 = per_row.values().map(|n| n - 1).sum();
    println!(
        "heavy faults: {runs} runs to finish, {} attachments for {rows} rows, {duplicates} duplicates",
        per_row.len()
    );
    assert_eq!(duplicates, 0);
    assert_exactly_once(&state, &manifest);
}

#[test]
fn resume_hints_quote_for_the_shell() {
    // Checked through the binary: a state path with a quote and a space, and a delimiter.
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1-:error"]);
    let s = Scratch::new();
    s.file("files/a.txt", b"a");
    let manifest = s.manifest(format!(
        "file;contact_id;reference_id\nfiles/a.txt;{ADA};{ADA_NOTE}\n"
    ));
    let state = s.path("o'brien state.sqlite");
    let out = emu
        .run_cmd(&manifest)
        .args([
            "--rate",
            "off",
            "--retries",
            "0",
            "--delimiter",
            ";",
            "--skip-invalid",
            "--state",
        ])
        .arg(&state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains(r"--state '"), "{stdout}");
    assert!(stdout.contains(r"o'\''brien state.sqlite'"), "{stdout}");
    assert!(
        stdout.contains("--delimiter ';'") && stdout.contains("--skip-invalid"),
        "{stdout}"
    );
}

/// The attachments on the emulator, by the file they hold (MD5).
fn md5s(state: &Value) -> Vec<String> {
    state["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["md5"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_resume_command_settles_lost_attaches_behind_opaque_links() {
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:1-3:drop-after",
        "--fault-at",
        "POST /api/v3/attachments:4-6:error",
    ]);
    let (s, manifest) = sample_copy();
    let out = emu
        .run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .args(["--retry-failed"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    // Following the printed command, twice, as a person would after each stop.
    for _ in 0..2 {
        run_hint(&emu, &stdout, s.path("").as_path());
    }
    let state = emu.state();
    assert_eq!(md5s(&state).len(), 20, "one attachment per row, none twice");
    assert_exactly_once(&state, &manifest);
}

#[test]
fn the_fix_file_leaves_out_rows_whose_attach_may_have_taken_effect() {
    let emu = Emulator::start(&[
        "--rate-limit",
        "off",
        "--opaque-links",
        "--fault-at",
        "POST /api/v3/attachments:1-3:drop-after",
    ]);
    let (s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .assert()
        .code(4);
    // The three lost answers are settled by their own state file's rerun, never by a fix file.
    let fix = s.path("fix.csv");
    bin()
        .args(["report", "--only", "failed", "-o"])
        .arg(&fix)
        .arg(&manifest)
        .assert()
        .success()
        .stderr(contains("3 failed rows are left out of this report"));
    let text = std::fs::read_to_string(&fix).unwrap();
    assert_eq!(text.lines().count(), 1, "only the header: {text}");
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let state = emu.state();
    assert_eq!(md5s(&state).len(), 20);
    assert_exactly_once(&state, &manifest);
}

#[test]
fn rows_to_finish_come_before_the_fix_file_when_both_are_left() {
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1-3:drop-after"]);
    let (s, manifest) = sample_copy();
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!("files/logo.png,{ADA},task,{ADA_NOTE},odd.png\n"));
    std::fs::write(&manifest, text).unwrap();
    // Run from the manifest's folder with relative paths; the hint is then used from elsewhere.
    let out = emu
        .run_cmd(Path::new("manifest.csv"))
        .current_dir(s.path(""))
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .args(["--skip-invalid", "--state", "relative.sqlite"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rerun first to finish them"), "{stdout}");
    assert!(stdout.contains("are invalid"), "{stdout}");
    let again = run_hint(&emu, &stdout, Path::new("/"));
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        again.status.code(),
        Some(1),
        "{stdout}\n{again_out}{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(again_out.contains("done before:        17"), "{again_out}");
    assert_eq!(
        md5s(&emu.state()).len(),
        20,
        "the three lost answers settled, none twice"
    );
}

#[test]
fn a_file_changed_after_a_lost_attach_is_settled_as_uploaded_then_reported() {
    // The attach takes effect and its answer is lost.
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1:drop-after"]);
    let s = Scratch::new();
    let manifest = one_row(&s, b"the first version, 30 bytes...");
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0"])
        .assert()
        .code(4);
    // Same size, other bytes: the recorded upload must not take the new file's facts.
    s.file("files/report.pdf", b"the second version, 30 bytes!!");
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0)
        .stderr(contains("changed after it was uploaded"));
    assert_eq!(
        md5s(&emu.state()),
        [md5_hex(b"the first version, 30 bytes...")]
    );
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--reupload-changed"])
        .assert()
        .code(0);
    let mut all = md5s(&emu.state());
    all.sort();
    let mut want = [
        md5_hex(b"the first version, 30 bytes..."),
        md5_hex(b"the second version, 30 bytes!!"),
    ];
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn a_file_that_grew_after_a_lost_attach_still_attaches_what_was_uploaded() {
    // Lost before it reached the API: nothing attached.
    let emu = Emulator::with_faults(&["POST /api/v3/attachments:1:drop-before"]);
    let s = Scratch::new();
    let manifest = one_row(&s, b"short");
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0"])
        .assert()
        .code(4);
    s.file("files/report.pdf", b"a much longer second version");
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    assert_eq!(md5s(&emu.state()), [md5_hex(b"short")]);
}

#[test]
fn a_state_file_with_a_second_name_is_refused_after_a_kill() {
    let emu = Emulator::start(&["--rate-limit", "off", "--latency-ms", "20..20"]);
    let (s, manifest) = sample_copy();
    let state = s.path("s.sqlite");
    let first = spawn_run(
        &emu,
        &manifest,
        &["--concurrency", "1", "--state", state.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while status_of(&state)["by_state"]["done"].as_u64().unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "the first run never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGKILL) };
    let _ = finish(first);
    let hard = s.path("h.sqlite");
    std::fs::hard_link(&state, &hard).unwrap();
    for name in [&hard, &state] {
        emu.run_cmd(&manifest)
            .args(["--rate", "off", "--state"])
            .arg(name)
            .assert()
            .code(3)
            .stderr(contains("hard links"));
    }
    std::fs::remove_file(&hard).unwrap();
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--state"])
        .arg(&state)
        .assert()
        .code(0);
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn rows_to_verify_do_not_count_against_storage_their_attach_may_have_taken() {
    // Storage for exactly the sample's files. Line 4's attach takes effect and its answer is
    // lost; without retries it fails, to be checked by the rerun. The account is then full, and
    // the rerun must not count line 4's bytes again (that would stop it before the check, every
    // time).
    let (s, manifest) = sample_copy();
    let total: u64 = crate::run::manifest_rows(&manifest)
        .iter()
        .map(|r| std::fs::metadata(&r.path).unwrap().len())
        .sum();
    let mut seed: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::common::samples().join("emulator-seed.json")).unwrap(),
    )
    .unwrap();
    seed["storage_left"] = json!(total);
    let seed = s.file("seed.json", seed.to_string());
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-at",
            "POST /api/v3/attachments:3:drop-after",
        ],
        None,
    );
    emu.run_cmd(&manifest)
        .args(["--rate", "off", "--retries", "0", "--concurrency", "1"])
        .assert()
        .code(4);
    assert_eq!(emu.state()["storage_left"], 0);
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0)
        .stdout(contains("done in this run:   1"));
    crate::run::assert_exactly_once(&emu.state(), &manifest);
}
