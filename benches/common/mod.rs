//! What the benches share: an emulator's configuration, generated files and a manifest, and
//! running the release binary to its end with its wall time and peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opcrm_import::emulator::state::{generated_contact_id, generated_record_id};
use opcrm_import::emulator::{Config, DEMO_API_KEY, DEMO_USER_ID};
use opcrm_import::onepagecrm::ReferenceType;
use serde_json::{Value, json};

/// The runtime the bench's emulators (and servers) run on: two worker threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// An emulator's configuration: throttle off, the demo credentials, and `contacts` generated
/// contacts holding enough notes for `rows` rows.
pub fn config(dir: &Path, contacts: u64, rows: usize) -> Config {
    let seed = dir.join(format!("seed-{rows}.json"));
    let notes = (rows as u64).div_ceil(contacts);
    std::fs::write(
        &seed,
        json!({"generate": {"contacts": contacts, "notes": notes}}).to_string(),
    )
    .unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.rate_limit = None;
    config.user_id = DEMO_USER_ID.into();
    config.api_key = DEMO_API_KEY.into();
    config.seed = Some(seed);
    config
}

/// Writes `n` files of `size` bytes (distinct contents) and a manifest spreading them over the
/// generated contacts' notes.
pub fn make_files(dir: &Path, n: usize, size: usize, contacts: u64) -> PathBuf {
    let mut manifest = String::from("file,contact_id,reference_type,reference_id\n");
    let mut body = vec![0u8; size];
    let per_contact = (n as u64).div_ceil(contacts);
    for i in 0..n {
        let folder = format!("files/{:03}", i % 1000);
        if i < 1000 {
            std::fs::create_dir_all(dir.join(&folder)).unwrap();
        }
        for (j, b) in body.iter_mut().enumerate() {
            *b = (j as u64).wrapping_mul(31).wrapping_add(i as u64 * 7919) as u8;
        }
        let rel = format!("{folder}/doc-{i:07}.bin");
        std::fs::write(dir.join(&rel), &body).unwrap();
        let k = i as u64 % contacts;
        let j = (i as u64 / contacts) % per_contact;
        let (contact, note) = (
            generated_contact_id(k),
            generated_record_id(ReferenceType::Note, k, j),
        );
        manifest.push_str(&format!("{rel},{contact},note,{note}\n"));
    }
    let path = dir.join("manifest.csv");
    std::fs::write(&path, manifest).unwrap();
    path
}

pub struct Measured {
    pub elapsed: Duration,
    pub peak_rss_kb: u64,
    pub summary: Value,
}

/// Runs a command to its end and reads its wall time and peak RSS; panics unless it exits 0.
///
/// The peak RSS comes from GNU time, not from this process's wait4: Linux carries the parent's
/// high-water RSS into a child spawned with vfork (as Rust spawns), and this process holds the
/// emulator's objects, so wait4 here would report this process's memory, not the tool's.
pub fn measure(cmd: &Command) -> Measured {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let start = Instant::now();
    let status = timed
        .stdout(Stdio::null())
        .status()
        .expect("GNU time is installed (package `time`)");
    let elapsed = start.elapsed();
    assert!(status.success(), "the command did not exit 0");
    let kb = std::fs::read_to_string(rss_file.path()).unwrap();
    let peak_rss_kb = kb
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("GNU time printed the peak RSS");
    Measured {
        elapsed,
        peak_rss_kb,
        summary: Value::Null,
    }
}

/// Runs `opcrm-import run --json` to its end (every row done) and keeps its summary.
pub fn run_tool(api: &str, manifest: &Path, args: &[&str], state: Option<&str>) -> Measured {
    let summary = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
    cmd.env("ONEPAGECRM_API_URL", api)
        .env("ONEPAGECRM_USER_ID", DEMO_USER_ID)
        .env("ONEPAGECRM_API_KEY", DEMO_API_KEY)
        .args(["run", "--no-progress", "--json", "--log-file"])
        .arg(summary.path().with_extension("log"))
        .arg(manifest)
        .args(args);
    if let Some(state) = state {
        cmd.args(["--state", state]);
    }
    // The summary goes to a file (GNU time's stdout is discarded).
    let sh = format!("exec \"$0\" \"$@\" > '{}'", summary.path().display());
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg(sh)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let mut measured = measure(&wrapped);
    measured.summary =
        serde_json::from_str(&std::fs::read_to_string(summary.path()).unwrap()).unwrap();
    measured
}
