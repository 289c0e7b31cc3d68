//! `cargo bench --bench pipeline`: the real `opcrm-import run` against the emulator.
//!
//! It makes its own files in a temporary folder, starts the emulator in this process (objects
//! kept in its memory), runs the release binary and reads its wall time and peak RSS (wait4). Figures:
//!
//! 1. 2,000 files of 1 KB, throttle off, `--concurrency 32`: rows/s. Baseline measured in the same
//!    run: the tutorial's three `curl` commands per file, one file after another, on 200 files.
//! 2. 100 files of 10 MB, `--concurrency 16`: the tool's peak RSS (target: at most 64 MB).
//!
//! `PIPELINE_BENCH_SMALL=1` shrinks both (for CI, so the bench cannot rot; nothing is judged).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opcrm_import::emulator::{
    self, Config, DEMO_API_KEY, DEMO_USER_ID, state::generated_contact_id,
};
use serde_json::{Value, json};

struct Sizes {
    small_files: usize,
    curl_files: usize,
    big_files: usize,
    big_size: usize,
}

fn main() {
    let small = std::env::var("PIPELINE_BENCH_SMALL").is_ok_and(|v| v == "1");
    let sizes = if small {
        Sizes {
            small_files: 200,
            curl_files: 20,
            big_files: 8,
            big_size: 1 << 20,
        }
    } else {
        Sizes {
            small_files: 2_000,
            curl_files: 200,
            big_files: 100,
            big_size: 10 << 20,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    let contacts = 20u64;
    let per_contact = (sizes.small_files as u64).div_ceil(contacts);
    std::fs::write(
        &seed,
        json!({"generate": {"contacts": contacts, "notes": per_contact}}).to_string(),
    )
    .unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    config.rate_limit = None;
    config.user_id = DEMO_USER_ID.into();
    config.api_key = DEMO_API_KEY.into();
    config.seed = Some(seed);
    let emu = runtime
        .block_on(emulator::start(config))
        .expect("start the emulator");
    let api = emu.app.api_base();

    println!(
        "pipeline bench on {} cores (tool and emulator share them)",
        cores()
    );
    println!(
        "{:<58} {:>12} {:>12} {:>8}",
        "what", "value", "baseline", "ratio"
    );

    // 1. Throughput on small files.
    let manifest = make_files(
        &dir.path().join("small"),
        sizes.small_files,
        1024,
        contacts,
        per_contact,
    );
    let run = run_tool(&api, &manifest, &["--rate", "off", "--concurrency", "32"]);
    let rows_per_s = sizes.small_files as f64 / run.elapsed.as_secs_f64();
    let curl_manifest = make_files(
        &dir.path().join("curl"),
        sizes.curl_files,
        1024,
        contacts,
        per_contact,
    );
    let curl_secs = curl_loop(&api, &curl_manifest);
    let curl_rows_per_s = sizes.curl_files as f64 / curl_secs.as_secs_f64();
    println!(
        "{:<58} {:>12.0} {:>12.0} {:>8.1}",
        format!(
            "{} files of 1 KB, throttle off, --concurrency 32: rows/s",
            sizes.small_files
        ),
        rows_per_s,
        curl_rows_per_s,
        rows_per_s / curl_rows_per_s
    );
    println!(
        "{:<58} {:>12.1}",
        "  peak RSS of the tool, MB",
        run.peak_rss_kb as f64 / 1024.0
    );

    // 2. Memory with large files.
    let big = make_files(
        &dir.path().join("big"),
        sizes.big_files,
        sizes.big_size,
        contacts,
        per_contact,
    );
    let run = run_tool(&api, &big, &["--rate", "off", "--concurrency", "16"]);
    let rss_mb = run.peak_rss_kb as f64 / 1024.0;
    let mb = (sizes.big_files * sizes.big_size) as f64 / f64::from(1 << 20);
    println!(
        "{:<58} {:>12.1}",
        format!(
            "{} files of {} MB, --concurrency 16: peak RSS, MB",
            sizes.big_files,
            sizes.big_size >> 20
        ),
        rss_mb
    );
    println!(
        "{:<58} {:>12.0}",
        "  upload rate, MB/s",
        mb / run.elapsed.as_secs_f64()
    );

    if small {
        println!("small run (PIPELINE_BENCH_SMALL=1): targets are not judged");
    } else {
        println!(
            "targets: >= 2000 rows/s -> {}; >= 50x the curl loop -> {}; peak RSS <= 64 MB with 10 MB files -> {}",
            verdict(rows_per_s >= 2000.0),
            verdict(rows_per_s / curl_rows_per_s >= 50.0),
            verdict(rss_mb <= 64.0)
        );
    }
    runtime.block_on(emu.stop());
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Writes `n` files of `size` bytes (distinct contents) and a manifest spreading them over the
/// generated contacts' notes.
fn make_files(dir: &Path, n: usize, size: usize, contacts: u64, per_contact: u64) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let mut manifest = String::from("file,contact_id,reference_type,reference_id\n");
    let mut body = vec![0u8; size];
    for i in 0..n {
        for (j, b) in body.iter_mut().enumerate() {
            *b = (j as u64).wrapping_mul(31).wrapping_add(i as u64 * 7919) as u8;
        }
        let rel = format!("files/doc-{i:05}.bin");
        std::fs::write(dir.join(&rel), &body).unwrap();
        let k = i as u64 % contacts;
        let j = (i as u64 / contacts) % per_contact;
        let contact = generated_contact_id(k);
        let note =
            emulator::state::generated_record_id(opcrm_import::manifest::ReferenceType::Note, k, j);
        manifest.push_str(&format!("{rel},{contact},note,{note}\n"));
    }
    let path = dir.join("manifest.csv");
    std::fs::write(&path, manifest).unwrap();
    path
}

struct Measured {
    elapsed: Duration,
    peak_rss_kb: u64,
}

/// Runs `opcrm-import run` to its end; panics unless every row is done.
fn run_tool(api: &str, manifest: &Path, args: &[&str]) -> Measured {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opcrm-import"));
    cmd.env("ONEPAGECRM_API_URL", api)
        .env("ONEPAGECRM_USER_ID", DEMO_USER_ID)
        .env("ONEPAGECRM_API_KEY", DEMO_API_KEY)
        .args(["run", "--no-progress", "--json"])
        .arg(manifest)
        .args(args)
        .stdout(Stdio::null());
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
        "run did not finish every row"
    );
    Measured {
        elapsed,
        peak_rss_kb: usage.ru_maxrss as u64,
    }
}

/// The tutorial's way: for each file, `curl` step 1, `curl` step 2 with the form's fields, `curl`
/// step 3, one file after another.
fn curl_loop(api: &str, manifest: &Path) -> Duration {
    let base = manifest.parent().unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    let auth = format!("user = \"{DEMO_USER_ID}:{DEMO_API_KEY}\"\n");
    let curl = |args: &[String]| -> String {
        let mut child = Command::new("curl")
            .args(["-sS", "-K", "-"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl is installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(auth.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let start = Instant::now();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let (rel, contact, note) = (cols[0], cols[1], cols[3]);
        let name = rel.rsplit('/').next().unwrap();
        let form: Value = serde_json::from_str(&curl(&[format!(
            "{api}/attachments/s3_form?contact_id={contact}"
        )]))
        .unwrap();
        let fields = &form["data"]["fields"];
        let key = fields["x-ignore-pattern"]
            .as_str()
            .unwrap()
            .replace("__timestamp__", &form["timestamp"].to_string())
            .replace("${filename}", name);
        let mut args = Vec::new();
        for field in [
            "acl",
            "success_action_status",
            "policy",
            "x-amz-credential",
            "x-amz-algorithm",
            "x-amz-date",
            "x-amz-signature",
        ] {
            let v = &fields[field];
            args.push("--form-string".to_string());
            args.push(format!(
                "{field}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            ));
        }
        args.extend(["--form-string".to_string(), format!("key={key}")]);
        args.extend(["--form-string".to_string(), format!("filename={name}")]);
        args.extend([
            "--form".to_string(),
            format!("file=@{}", base.join(rel).display()),
        ]);
        args.push(form["data"]["url"].as_str().unwrap().to_string());
        let posted = curl(&args);
        assert!(posted.contains("<PostResponse>"), "{posted}");
        let size = std::fs::metadata(base.join(rel)).unwrap().len();
        let body = json!({"reference_id": note, "reference_type": "note", "contact_id": contact, "name": name, "key": key, "size": size});
        let attached = curl(&[
            "-H".into(),
            "content-type: application/json".into(),
            "--data-binary".into(),
            body.to_string(),
            format!("{api}/attachments"),
        ]);
        assert!(attached.contains("\"attachment\""), "{attached}");
    }
    start.elapsed()
}
