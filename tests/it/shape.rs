//! How commands end: a closed stdout is not a failure, and errors carry their exit status.

use std::process::{Command, Stdio};

use crate::common::emulator::{API_KEY, Emulator, USER_ID};
use crate::run::{assert_exactly_once, sample_copy};

#[test]
fn a_closed_stdout_at_the_summary_keeps_the_runs_exit_status() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    // The reader of stdout is gone before the summary is written (`run ... | true`).
    let mut child = Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .env("ONEPAGECRM_API_URL", &emu.api)
        .env("ONEPAGECRM_USER_ID", USER_ID)
        .env("ONEPAGECRM_API_KEY", API_KEY)
        .arg("run")
        .arg(&manifest)
        .args(["--no-progress", "--rate", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_exactly_once(&emu.state(), &manifest);
}

#[test]
fn a_closed_stdout_does_not_change_what_check_found() {
    for (manifest, code) in [
        (crate::common::samples().join("manifest.csv"), 0),
        (
            crate::common::samples().join("invalid/unknown-reference-type.csv"),
            2,
        ),
    ] {
        check_with_stdout_closed(&manifest, code);
    }
}

fn check_with_stdout_closed(manifest: &std::path::Path, code: i32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .arg("check")
        .arg(manifest)
        .arg("--offline")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}: {stderr}",
        manifest.display()
    );
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// Runs the binary with `args` while its stdout has no reader (the pipe is closed before the
/// command writes), and hands back its exit code and stderr.
fn with_stdout_closed(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opcrm-import"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Issue 19, item 7: a closed stdout is never an error, for every command (`status --json |
// head -c 1` said `error: Broken pipe` with exit 3; `demo | head -2` panicked with exit 101).
#[test]
fn a_closed_stdout_is_not_an_error_for_any_command() {
    let emu = Emulator::start(&["--rate-limit", "off"]);
    let (_s, manifest) = sample_copy();
    emu.run_cmd(&manifest)
        .args(["--rate", "off"])
        .assert()
        .code(0);
    let manifest = manifest.to_str().unwrap();
    let env = [
        ("ONEPAGECRM_API_URL", emu.api.as_str()),
        ("ONEPAGECRM_USER_ID", USER_ID),
        ("ONEPAGECRM_API_KEY", API_KEY),
    ];
    let commands: [&[&str]; 11] = [
        &["status", manifest],
        &["status", manifest, "--json"],
        &["report", manifest, "--only", "all"],
        &[
            "run",
            manifest,
            "--dry-run",
            "--no-progress",
            "--rate",
            "off",
        ],
        &["run", manifest, "--dry-run", "--json", "--rate", "off"],
        &["run", manifest, "--json", "--no-progress", "--rate", "off"],
        &["completions", "bash"],
        &["man"],
        &["undo", manifest, "--dry-run", "--rate", "off"],
        &["verify", manifest, "--no-progress", "--rate", "off"],
        &["demo"],
    ];
    for args in commands {
        let (code, stderr) = with_stdout_closed(args, &env);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
