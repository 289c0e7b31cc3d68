//! A migration that runs for days is killed, interrupted, run twice at once and looked at
//! halfway: each of those is safe.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use predicates::str::contains;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::emulator::{API_KEY, Emulator, USER_ID};
use crate::common::{Scratch, bin, is_root, samples, set_mode, unprivileged_bin};
use crate::run::{assert_exactly_once, sample_copy};

/// `opcrm-import run` as a child process we can signal.
pub fn spawn_run(emu: &Emulator, manifest: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .env("ONEPAGECRM_API_URL", &emu.api)
        .env("ONEPAGECRM_USER_ID", USER_ID)
        .env("ONEPAGECRM_API_KEY", API_KEY)
        // The emulator's listings show every write at once (see `Emulator::point`).
        .env("OPCRM_SETTLE_WINDOW", "1")
        .arg("run")
        .arg(manifest)
        .args(["--no-progress", "--rate", "off"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn signal(child: &Child, sig: i32) {
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// `status --json` of a manifest's state file.
fn status(manifest: &Path) -> Value {
    let out = bin()
        .arg("status")
        .arg(manifest)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the run has finished at least `n` rows (read from the state file, as a person would).
fn wait_for_done(manifest: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The state file may be a moment old and still empty: only a readable one counts.
        let out = bin()
            .arg("status")
            .arg(manifest)
            .arg("--json")
            .output()
            .unwrap();
        let done = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|s| s["by_state"]["done"].as_u64());
        if done.unwrap_or(0) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the run never got to {n} rows");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reruns the manifest (no client limit): every row ends done, each attached exactly once.
fn rerun_to_the_end(emu: &Emulator, manifest: &Path) {
    emu.run_cmd(manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    assert_exactly_once(&emu.state(), manifest);
}

/// An emulator slow enough that a run of the samples takes a few seconds.
fn slow_emulator() -> Emulator {
    Emulator::start(&["--rate-limit", "off", "--latency-ms", "60..60"])
}

#[test]
fn a_second_run_on_the_same_state_is_refused_and_the_first_goes_on() {
    let emu = slow_emulator();
    let (_s, manifest) = sample_copy();
    let first = spawn_run(&emu, &manifest, &["--concurrency", "1"]);
    wait_for_done(&manifest, 1);
    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains("another run is using state file"))
        .stderr(contains("pid "));
    let (code, _, stderr) = finish(first);
    assert_eq!(code, 0, "{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn a_killed_run_leaves_no_lock_and_the_rerun_finishes() {
    let emu = slow_emulator();
    let (_s, manifest) = sample_copy();
    let first = spawn_run(&emu, &manifest, &["--concurrency", "2"]);
    wait_for_done(&manifest, 2);
    signal(&first, libc::SIGKILL);
    let (code, _, _) = finish(first);
    assert_eq!(code, -1, "killed by a signal");
    rerun_to_the_end(&emu, &manifest);
    let runs = status(&manifest)["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0]["finished_at"].is_null(),
        "the killed run has no end"
    );
}

#[test]
fn sigterm_lets_rows_under_way_finish_and_exits_130() {
    let emu = slow_emulator();
    let (_s, manifest) = sample_copy();
    let run = spawn_run(&emu, &manifest, &["--concurrency", "2"]);
    wait_for_done(&manifest, 2);
    signal(&run, libc::SIGTERM);
    let (code, stdout, stderr) = finish(run);
    assert_eq!(code, 130, "{stderr}");
    assert!(
        stderr.contains("interrupted: no new row starts"),
        "{stderr}"
    );
    assert!(
        stdout.contains("interrupted; the state is saved, rerun to resume"),
        "{stdout}"
    );
    // Nothing was left half done: every row is done or was never started.
    let by_state = status(&manifest)["by_state"].clone();
    for state in ["uploading", "uploaded", "attaching", "failed"] {
        assert_eq!(by_state[state], 0, "{state}: {by_state}");
    }
    assert!(
        by_state["pending"].as_u64().unwrap() > 0,
        "the run stopped early: {by_state}"
    );
    rerun_to_the_end(&emu, &manifest);
}

#[test]
fn a_second_ctrl_c_stops_at_once_and_the_rerun_resumes() {
    let emu = Emulator::start(&["--rate-limit", "off", "--latency-ms", "400..400"]);
    let (_s, manifest) = sample_copy();
    let run = spawn_run(&emu, &manifest, &["--concurrency", "4"]);
    wait_for_done(&manifest, 1);
    signal(&run, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    let second = Instant::now();
    signal(&run, libc::SIGINT);
    let (code, _, stderr) = finish(run);
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("stopping at once"), "{stderr}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "it did not stop at once"
    );
    rerun_to_the_end(&emu, &manifest);
}

#[test]
fn status_and_report_while_and_after_running() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    // One row names a note that does not exist: it fails for good.
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(
        "files/logo.png,ca929443ed449d7679121de5,note,5a1b2c3d4e5f60718293a4b5,Lost logo.png\n",
    );
    std::fs::write(&manifest, text).unwrap();
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(1);

    let doc = status(&manifest);
    assert_eq!(doc["rows"], 21);
    assert_eq!(doc["by_state"]["done"], 20);
    assert_eq!(doc["by_state"]["failed"], 1);
    assert_eq!(doc["bytes_done"], 2355532);
    // Found by the record's read before its upload: nothing of it was sent.
    assert_eq!(doc["failures"][0]["kind"], "record_not_found");
    assert_eq!(doc["failures"][0]["retryable"], false);
    assert_eq!(doc["failures"][0]["examples"][0]["line"], 22);
    assert_eq!(doc["runs"][0]["exit_code"], 1);
    bin()
        .arg("status")
        .arg(&manifest)
        .assert()
        .code(0)
        .stdout(contains("Rows:       21 (20 done, 1 to go)"))
        .stdout(contains(
            "record_not_found (1 row, for good: fix, then rerun)",
        ))
        .stdout(contains(
            "line 22: files/logo.png: no note has the id 5a1b2c3d4e5f60718293a4b5",
        ));

    // The failed report is a manifest: fix its record id and run it.
    let fix = s.path("fix.csv");
    bin()
        .arg("report")
        .arg(&manifest)
        .args(["--only", "failed", "-o"])
        .arg(&fix)
        .assert()
        .code(0);
    let report = std::fs::read_to_string(&fix).unwrap();
    assert!(
        report.starts_with("file,contact_id,reference_type,reference_id,name,error_kind,error\n"),
        "{report}"
    );
    assert!(report.contains("files/logo.png,ca929443ed449d7679121de5,note,5a1b2c3d4e5f60718293a4b5,Lost logo.png,record_not_found,"), "{report}");
    bin()
        .args(["check", "--offline"])
        .arg(&fix)
        .assert()
        .code(0);
    let fixed = report.replace("5a1b2c3d4e5f60718293a4b5", "064132394d9b497f536b2bb7");
    std::fs::write(&fix, fixed).unwrap();
    emu.run_cmd(&fix).args(["--rate", "off"]).assert().code(0);
    assert_eq!(emu.state()["attachments"].as_array().unwrap().len(), 21);

    // The done report carries attachment ids and keys.
    let out = bin()
        .arg("report")
        .arg(&manifest)
        .args(["--only", "done"])
        .output()
        .unwrap();
    let done = String::from_utf8(out.stdout).unwrap();
    assert!(
        done.starts_with("file,contact_id,reference_type,reference_id,name,attachment_id,s3_key\n")
    );
    assert_eq!(done.lines().count(), 21);
    let ids: Vec<String> = emu.state()["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    for line in done.lines().skip(1) {
        assert!(ids.iter().any(|id| line.contains(id.as_str())), "{line}");
    }
}

#[test]
fn state_files_that_are_not_this_manifests_are_refused_untouched() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    let state = opcrm_import::run::default_state_path(&manifest);

    // Another program's database.
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch("CREATE TABLE accounts (id INTEGER)")
        .unwrap();
    let before = std::fs::read(&state).unwrap();
    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains("is not an opcrm-import state file"));
    assert_eq!(std::fs::read(&state).unwrap(), before);
    bin()
        .arg("status")
        .arg(&manifest)
        .assert()
        .code(3)
        .stderr(contains("is not an opcrm-import state file"));
    std::fs::remove_file(&state).unwrap();

    // Not a database at all.
    std::fs::write(
        &state,
        "a shopping list, not a database: eggs, milk, flour, sugar, butter",
    )
    .unwrap();
    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains("is not a SQLite file"));
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .starts_with("a shopping list")
    );
    std::fs::remove_file(&state).unwrap();

    // A newer schema.
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let current: i64 = rusqlite::Connection::open(&state)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    rusqlite::Connection::open(&state)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = std::fs::read(&state).unwrap();
    emu.run_cmd(&manifest)
        .assert()
        .code(3)
        .stderr(contains("written by a newer opcrm-import (schema 99"));
    assert_eq!(std::fs::read(&state).unwrap(), before);
    rusqlite::Connection::open(&state)
        .unwrap()
        .pragma_update(None, "user_version", current)
        .unwrap();

    // Another manifest's state file.
    let other = s.path("other.csv");
    std::fs::copy(&manifest, &other).unwrap();
    emu.run_cmd(&other)
        .arg("--state")
        .arg(&state)
        .assert()
        .code(3)
        .stderr(contains("belongs to the manifest"));
    // A missing one, for status.
    bin()
        .args(["status", "--state"])
        .arg(s.path("nope.sqlite"))
        .assert()
        .code(2)
        .stderr(contains("does not exist"));
}

#[test]
fn a_folder_the_user_cannot_write_is_a_clear_error() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (s, manifest) = sample_copy();
    // Root writes anywhere: as root the run goes as an unprivileged user, in a folder root owns.
    let mut cmd = unprivileged_bin(&s);
    set_mode(&s.path("files"), 0o755);
    if !is_root() {
        set_mode(s.dir.path(), 0o555);
    }
    emu.point(&mut cmd)
        .arg("run")
        .arg(&manifest)
        .assert()
        .code(3)
        .stderr(contains("is the folder writable?"));
    assert!(emu.state()["objects"].as_array().unwrap().is_empty());
}

/// Files and a manifest of `n` rows over the generated contacts of `seed`.
pub fn generated(s: &Scratch, n: usize) -> (PathBuf, PathBuf) {
    let seed = s.file(
        "seed.json",
        format!(
            r#"{{"generate": {{"contacts": 10, "notes": {}}}}}"#,
            n.div_ceil(10)
        ),
    );
    let mut manifest = String::from("file,contact_id,reference_type,reference_id\n");
    for i in 0..n {
        let body: String = (0..(100 + i * 37 % 3000))
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect();
        s.file(&format!("files/doc-{i:04}.txt"), body);
        let (k, j) = (i % 10, i / 10);
        manifest.push_str(&format!(
            "files/doc-{i:04}.txt,cc{k:022x},note,a0{k:010x}{j:012x}\n"
        ));
    }
    (seed, s.manifest(manifest))
}

/// Every request the emulator has seen so far, answered or not.
pub fn requests_seen(emu: &Emulator) -> u64 {
    emu.state()["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

#[test]
fn chaos_kill_9_at_random_moments_then_rerun_attaches_each_row_once() {
    let s = Scratch::new();
    let rows = 400;
    let (seed, manifest) = generated(&s, rows);
    let emu = Emulator::start_seeded(
        &seed,
        &[
            "--rate-limit",
            "off",
            "--fault-rate",
            "0.05",
            "--drop-rate",
            "0.05",
            "--fault-seed",
            "17",
            "--latency-ms",
            "0..20",
        ],
        None,
    );
    let rng_seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    let (mut rounds, mut kills) = (0, 0);
    // At least 30 runs killed mid-way (a run that finished first does not count). The moment is
    // chosen from progress, not time: after a random number (0 to 30) of further requests seen
    // by the emulator, so a slow or a busy machine kills at the same points as a fast one. 30
    // kills take at most 900 requests, about 225 of the 400 rows: runs are left to kill.
    while kills < 30 && rounds < 200 {
        rounds += 1;
        let target = requests_seen(&emu) + rng.random_range(0..=30);
        let mut run = spawn_run(&emu, &manifest, &["--concurrency", "8", "--retries", "10"]);
        while run.try_wait().unwrap().is_none() && requests_seen(&emu) < target {
            std::thread::sleep(Duration::from_millis(2));
        }
        if run.try_wait().unwrap().is_none() {
            signal(&run, libc::SIGKILL);
            kills += 1;
        }
        let _ = run.wait();
    }
    let mut reruns = 0;
    loop {
        reruns += 1;
        let out = emu
            .run_cmd(&manifest)
            .args(["--rate", "off", "--retries", "10"])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => break,
            Some(4) if reruns < 10 => continue,
            other => panic!(
                "rerun ended {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    let state = emu.state();
    let attachments = state["attachments"].as_array().unwrap();
    let mut per_record = std::collections::HashMap::new();
    for a in attachments {
        *per_record
            .entry((
                a["reference_id"].as_str().unwrap(),
                a["filename"].as_str().unwrap(),
            ))
            .or_insert(0) += 1;
    }
    let duplicates = per_record.values().filter(|n| **n > 1).count();
    println!(
        "chaos: seed {rng_seed}, {rounds} rounds, {kills} killed with SIGKILL, {reruns} reruns to finish, {} attachments, {duplicates} duplicates",
        attachments.len()
    );
    assert_eq!(duplicates, 0);
    assert!(
        kills >= 30,
        "too few runs were killed mid-way: {kills} of {rounds}"
    );
    assert_exactly_once(&state, &manifest);
    let doc = status(&manifest);
    assert_eq!(doc["by_state"]["done"], rows, "{}", doc["by_state"]);
    let _ = samples;
}
