//! `cargo bench --bench external_s3`: `opcrm-import run` against s3s-fs, a third-party S3 server
//! (the emulator in external-S3 mode, s3s-fs in this process on loopback), beside the same run
//! against the emulator's built-in S3 endpoint, in one table.
//!
//! Two workloads (many small files: rows/s; fewer larger files: MB/s), each run three ways with a
//! fresh emulator and state file: built-in S3 keeping objects in memory (the baseline), built-in
//! S3 writing them to a folder (`--data-dir`, disk work like s3s-fs's), and s3s-fs. Each figure is
//! the best of two runs. Everything shares this machine's cores: the tool, the emulator, s3s-fs.
//!
//! `EXTERNAL_S3_BENCH_SMALL=1` shrinks the workloads (for CI, so the bench cannot rot).

mod common;

// Shared with the tests, which use all of it.
#[allow(dead_code)]
#[path = "../tests/it/common/s3s.rs"]
mod s3s;

use std::path::Path;

use opcrm_import::emulator::external::{ExternalS3, Secret};
use opcrm_import::emulator::{self, Emulator};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Memory,
    Disk,
    S3sFs,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Memory => "built-in S3, in memory (baseline)",
            Server::Disk => "built-in S3, --data-dir",
            Server::S3sFs => "s3s-fs 0.14.1 (external-S3 mode)",
        }
    }
}

fn main() {
    let small = std::env::var("EXTERNAL_S3_BENCH_SMALL").is_ok_and(|v| v == "1");
    let workloads: [(usize, usize); 2] = if small {
        [(100, 4 << 10), (10, 512 << 10)]
    } else {
        [(1_000, 4 << 10), (200, 512 << 10)]
    };
    let runtime = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let contacts = 50u64;
    let cores = common::cores();
    if small {
        println!("small run (EXTERNAL_S3_BENCH_SMALL=1)");
    }
    println!(
        "external-S3 bench on {cores} cores (the tool, the emulator and s3s-fs share them); run --rate off --concurrency 16; best of 2"
    );
    println!(
        "{:<22} {:<36} {:>9} {:>8} {:>12} {:>12}",
        "workload", "S3 server", "rows/s", "MB/s", "vs baseline", "tool RSS MB"
    );
    for (n, size) in workloads {
        let label = format!("{n} files of {} KB", size >> 10);
        let manifest = common::make_files(
            &dir.path().join(format!("files-{n}-{size}")),
            n,
            size,
            contacts,
        );
        let mut baseline = None;
        for server in [Server::Memory, Server::Disk, Server::S3sFs] {
            let best = (0..2)
                .map(|_| one_run(&runtime, dir.path(), contacts, &manifest, n, server))
                .min_by_key(|run| run.elapsed)
                .unwrap();
            let seconds = best.elapsed.as_secs_f64();
            let rows_per_s = n as f64 / seconds;
            let mb_per_s = (n * size) as f64 / f64::from(1 << 20) / seconds;
            let base = *baseline.get_or_insert(rows_per_s);
            println!(
                "{label:<22} {:<36} {rows_per_s:>9.0} {mb_per_s:>8.1} {:>11.2}x {:>12.1}",
                server.name(),
                rows_per_s / base,
                best.peak_rss_kb as f64 / 1024.0
            );
        }
    }
}

/// One `run` of `manifest` to its end with a fresh state file, against a fresh emulator (and a
/// fresh s3s-fs).
fn one_run(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    contacts: u64,
    manifest: &Path,
    rows: usize,
    server: Server,
) -> common::Measured {
    let mut config = common::config(dir, contacts, rows);
    let scratch = tempfile::tempdir_in(dir).unwrap();
    let objects = scratch.path().join("objects");
    let state = scratch.path().join("state.sqlite");
    let s3s_fs = (server == Server::S3sFs).then(s3s::S3sFs::start);
    match (server, &s3s_fs) {
        (Server::Disk, _) => config.data_dir = Some(objects),
        (Server::S3sFs, Some(s3s_fs)) => {
            config.external_s3 = Some(
                ExternalS3::new(
                    &s3s_fs.endpoint,
                    s3s::BUCKET,
                    "us-east-1",
                    s3s::ACCESS_KEY,
                    Secret(s3s::SECRET_KEY.into()),
                )
                .unwrap(),
            );
        }
        _ => {}
    }
    let emu: Emulator = runtime
        .block_on(emulator::start(config))
        .expect("start the emulator");
    let run = common::run_tool(
        &emu.app.api_base(),
        manifest,
        &["--rate", "off", "--concurrency", "16"],
        Some(state.to_str().unwrap()),
    );
    assert_eq!(
        run.summary["done_now"].as_u64(),
        Some(rows as u64),
        "every row done: {}",
        run.summary
    );
    if let Some(s3s_fs) = &s3s_fs {
        assert_eq!(s3s_fs.objects().len(), rows, "one object per row in s3s-fs");
    }
    runtime.block_on(emu.stop());
    run
}
