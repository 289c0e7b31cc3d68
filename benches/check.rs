//! `cargo bench --bench check`: `opcrm-import check` on a generated manifest of many small files.
//!
//! It writes N small files (100,000 by default; `CHECK_BENCH_ROWS` changes it) and a manifest that
//! names them, then times the real release binary and reads its peak RSS from the kernel (wait4).
//! Baselines measured in the same run on the same files: the same check on one thread
//! (`RAYON_NUM_THREADS=1`), and the least work any check must do — a plain loop that stats and
//! opens every file — so the ratios say what the parsing, checks and reporting cost on top.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGET_SECONDS: f64 = 5.0;
const TARGET_RSS_MB: f64 = 200.0;

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore libtest-style arguments.
    let rows: usize = std::env::var("CHECK_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = generate(dir.path(), rows);

    let (check, rss) = run_check(&manifest, None);
    let (one_thread, rss_one) = run_check(&manifest, Some(1));
    let floor = stat_open_loop(&manifest);

    let secs = check.as_secs_f64();
    let rss_mb = rss as f64 / 1024.0;
    println!(
        "check bench: {rows} rows, files of 10-200 bytes, on {} cores",
        cores()
    );
    println!(
        "{:<44} {:>10} {:>12} {:>12}",
        "what", "seconds", "rows/s", "peak RSS MB"
    );
    let line = |what: &str, d: Duration, rss_kb: Option<u64>| {
        let s = d.as_secs_f64();
        let rss = rss_kb.map_or("-".to_string(), |kb| format!("{:.1}", kb as f64 / 1024.0));
        println!("{what:<44} {s:>10.3} {:>12.0} {rss:>12}", rows as f64 / s);
    };
    line("opcrm-import check (all cores)", check, Some(rss));
    line(
        "baseline: opcrm-import check, 1 thread",
        one_thread,
        Some(rss_one),
    );
    line("baseline: stat + open loop, 1 thread", floor, None);
    println!(
        "ratios: check / 1-thread check = {:.2}, check / stat+open loop = {:.2}",
        secs / one_thread.as_secs_f64(),
        secs / floor.as_secs_f64()
    );
    if rows == 100_000 {
        println!(
            "targets (100,000 rows): under {TARGET_SECONDS} s -> {}, peak RSS under {TARGET_RSS_MB} MB -> {}",
            verdict(secs < TARGET_SECONDS),
            verdict(rss_mb < TARGET_RSS_MB)
        );
    } else {
        println!("targets are set for 100,000 rows; this run had {rows}, so none is judged");
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Writes `rows` small files over 100 folders and a manifest naming each one.
fn generate(dir: &Path, rows: usize) -> std::path::PathBuf {
    let manifest = dir.join("manifest.csv");
    let mut out = BufWriter::new(File::create(&manifest).unwrap());
    writeln!(out, "file,contact_id,reference_type,reference_id,name").unwrap();
    let types = ["note", "deal", "call", "meeting"];
    for i in 0..rows {
        let folder = format!("files/{:02}", i % 100);
        if i < 100 {
            fs::create_dir_all(dir.join(&folder)).unwrap();
        }
        let rel = format!("{folder}/doc-{i:07}.txt");
        let body = "x".repeat(10 + i % 190);
        fs::write(dir.join(&rel), body).unwrap();
        let contact = format!("{:024x}", 0xC0_0000 + i / 25);
        let record = format!("{:024x}", 0xA0_0000_0000u64 + i as u64);
        writeln!(out, "{rel},{contact},{},{record},", types[i % 4]).unwrap();
    }
    out.flush().unwrap();
    manifest
}

/// Runs the release binary's `check --json` and returns its wall time and peak RSS in KiB.
fn run_check(manifest: &Path, threads: Option<usize>) -> (Duration, u64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
    cmd.args(["check", "--json", "--offline"])
        .arg(manifest)
        .stdout(Stdio::null());
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let start = Instant::now();
    // Reaped by wait4 below, which also hands back the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn opcrm-import");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 writes into the two locals only.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "check did not exit 0"
    );
    (elapsed, usage.ru_maxrss as u64)
}

/// The least a check must do: read the file names and stat and open each file, on one thread.
fn stat_open_loop(manifest: &Path) -> Duration {
    let base = manifest.parent().unwrap();
    let start = Instant::now();
    let text = fs::read_to_string(manifest).unwrap();
    let mut bytes = 0;
    for line in text.lines().skip(1) {
        let rel = line.split(',').next().unwrap();
        let path = base.join(rel);
        bytes += fs::metadata(&path).unwrap().len();
        drop(File::open(&path).unwrap());
    }
    assert!(bytes > 0);
    start.elapsed()
}
