//! `opcrm-import run`: check the manifest, record every row, check the storage quota, then take
//! each row through the three steps and say at the end what happened and what to type next.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::warn;

use crate::checkpoint::{self, NewRow, RowState, StoredRow};
use crate::cli::RunArgs;
use crate::manifest::{ReadOptions, Severity};
use crate::pipeline::{self, Context, Outcome, Plan, Settings, Stop};
use crate::preflight::{self, Checked, human_bytes};
use crate::progress::{self, human_duration};
use crate::remote::{self, Client, Credentials, RemoteError};
use crate::{ExitStatus, fail};

/// `<manifest without .csv>.opcrm.sqlite`, beside the manifest.
pub fn default_state_path(manifest: &Path) -> PathBuf {
    let stem = match manifest.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => manifest.with_extension(""),
        _ => manifest.to_path_buf(),
    };
    let mut name = stem
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".opcrm.sqlite");
    stem.with_file_name(name)
}

/// The rows of a checked manifest as the checkpoint records them; invalid rows carry their
/// errors. Rows of identical meaning after the first are left out (they are errors already).
pub fn manifest_rows(checked: &Checked) -> Vec<NewRow> {
    let mut errors: HashMap<u64, Vec<&str>> = HashMap::new();
    for p in &checked.manifest.problems {
        if let (Severity::Error, Some(line)) = (p.severity, p.line) {
            errors.entry(line).or_default().push(&p.message);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::with_capacity(checked.manifest.rows.len());
    // Identical lines that are not rows are each recorded: the second gets `~2`, and so on (a
    // count of identical lines, so it does not depend on their order).
    let mut push = |mut new: NewRow| {
        if checkpoint::is_raw_key(&new.key) {
            let first = new.key.clone();
            let mut n = 1;
            while seen.contains(&new.key) {
                n += 1;
                new.key = format!("{first}~{n}");
            }
        }
        if seen.insert(new.key.clone()) {
            rows.push(new);
        }
    };
    for ((row, facts), valid) in checked
        .manifest
        .rows
        .iter()
        .zip(&checked.files)
        .zip(&checked.valid)
    {
        let (size, mtime) = facts.map_or((0, 0), |f| (f.size, f.mtime_ns));
        let rejected = (!valid).then(|| {
            errors
                .get(&row.line)
                .map(|e| e.join("; "))
                .unwrap_or_default()
        });
        push(NewRow::from_row(
            row,
            checked.manifest.path_of(row),
            size,
            mtime,
            rejected,
        ));
    }
    // Records that are not rows (a wrong field count, a field that is not UTF-8) are recorded
    // too, as written, so that every line of the manifest is in `status` and the report.
    for u in &checked.manifest.unparsed {
        let mut reason = errors
            .get(&u.line)
            .map(|e| e.join("; "))
            .unwrap_or_default();
        if !u.extra.is_empty() {
            let extra: Vec<String> = u
                .extra
                .iter()
                .map(|f| crate::manifest::shown(&String::from_utf8_lossy(f)))
                .collect();
            reason.push_str(&format!(
                "; the fields past the header's, as written: {}",
                crate::manifest::cut(&extra.join(", "))
            ));
        }
        push(NewRow::from_unparsed(u, &checked.manifest.base, reason));
    }
    rows
}

/// The failure kind of a row whose attach answer was lost and could not be settled.
const UNSETTLED: &str = "attach_unsettled";

/// What a run will do with each row of the manifest.
#[derive(Default)]
struct Work {
    todo: Vec<(StoredRow, Plan)>,
    already_done: usize,
    changed: Vec<StoredRow>,
    failed_permanent: Vec<StoredRow>,
    rejected: usize,
}

impl Work {
    fn count(&self, plan: Plan) -> usize {
        self.todo.iter().filter(|(_, p)| *p == plan).count()
    }

    fn bytes(&self) -> u64 {
        self.todo.iter().map(|(r, _)| r.size).sum()
    }

    /// API calls the rows need: 2 to upload and attach, 1 to attach, 2 to verify and attach.
    fn api_calls(&self) -> usize {
        self.todo
            .iter()
            .map(|(_, p)| if *p == Plan::Attach { 1 } else { 2 })
            .sum()
    }
}

/// Decides, from the state file and the files as they are now, what is left of each row.
fn plan(
    new_rows: &[NewRow],
    stored: Vec<StoredRow>,
    args: &RunArgs,
) -> (Work, Vec<(String, u64, i64)>) {
    let mut by_key: HashMap<String, StoredRow> =
        stored.into_iter().map(|r| (r.key.clone(), r)).collect();
    let mut work = Work::default();
    let mut refresh = Vec::new();
    let mut verify = Vec::new();
    for new in new_rows {
        let Some(mut row) = by_key.remove(&new.key) else {
            continue;
        };
        let changed = row.size != new.size || row.mtime_ns != new.mtime_ns;
        let plan = match row.state {
            RowState::Done if changed && args.reupload_changed && new.rejected.is_none() => {
                Some(Plan::Upload)
            }
            RowState::Done if changed => {
                work.changed.push(row.clone());
                work.already_done += 1;
                None
            }
            RowState::Done => {
                work.already_done += 1;
                None
            }
            RowState::Rejected => {
                work.rejected += 1;
                None
            }
            RowState::Failed
                if row.error_kind.as_deref() == Some(UNSETTLED) && row.s3_key.is_some() =>
            {
                match args.attach_unsettled {
                    // A person looked at the record: the file is not there.
                    true => Some(Plan::Attach),
                    // `--retry-failed` too asks the record again: the answer may be clear now.
                    false if args.retry_failed => Some(Plan::Verify),
                    false => {
                        work.failed_permanent.push(row.clone());
                        None
                    }
                }
            }
            RowState::Failed if row.retryable == Some(false) && !args.retry_failed => {
                work.failed_permanent.push(row.clone());
                None
            }
            // Uploaded (an ETag is recorded for its key), so step 3 may have been sent before it
            // failed: ask the record first, never upload and attach it a second time.
            RowState::Failed if row.s3_key.is_some() && row.etag.is_some() => Some(Plan::Verify),
            RowState::Uploaded if row.s3_key.is_some() => Some(Plan::Attach),
            RowState::Attaching if row.s3_key.is_some() => Some(Plan::Verify),
            _ => Some(Plan::Upload),
        };
        let Some(plan) = plan else { continue };
        if plan == Plan::Upload && changed {
            row.size = new.size;
            row.mtime_ns = new.mtime_ns;
            refresh.push((row.key.clone(), new.size, new.mtime_ns));
        }
        if plan == Plan::Verify {
            verify.push((row, plan));
        } else {
            work.todo.push((row, plan));
        }
    }
    verify.append(&mut work.todo);
    work.todo = verify;
    (work, refresh)
}

/// The end of a run, for people and for `--json`.
#[derive(Serialize)]
struct Summary {
    manifest: String,
    state: String,
    rows: usize,
    done_before: usize,
    done_now: usize,
    failed_permanent: usize,
    failed_retryable: usize,
    rejected: usize,
    not_started: usize,
    changed_since_upload: Vec<ChangedFile>,
    failures: Vec<FailureLine>,
    bytes_uploaded: u64,
    elapsed_seconds: f64,
    api_calls: u64,
    retries: u64,
    throttles: u64,
    stopped: Option<&'static str>,
    /// Why the run stalled (`stopped` is then `"stalled"`), for the readable summary.
    #[serde(skip)]
    stall: Option<String>,
    exit_code: u8,
}

#[derive(Serialize)]
struct ChangedFile {
    line: u64,
    file: String,
}

#[derive(Serialize)]
struct FailureLine {
    line: u64,
    file: String,
    kind: String,
    retryable: bool,
    message: String,
}

/// Where to send requests, and as whom.
pub struct Remote {
    pub url: reqwest::Url,
    pub credentials: Credentials,
}

/// `opcrm-import run`, with the API and credentials from the environment.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitStatus> {
    run_with(args, None)
}

/// `opcrm-import run` against `remote` (the environment's when `None`).
pub fn run_with(args: &RunArgs, remote: Option<Remote>) -> anyhow::Result<ExitStatus> {
    let manifest_path = &args.manifest.manifest;
    let checked = preflight::check(
        manifest_path,
        ReadOptions {
            delimiter: args.manifest.delimiter,
        },
    );
    let mut err = std::io::stderr().lock();
    crate::check::write_problems(&mut err, &checked.manifest.problems)?;
    drop(err);
    if !checked.manifest.readable {
        return fail(
            "the manifest cannot be read; nothing was uploaded",
            ExitStatus::Usage,
        );
    }
    if !checked.is_valid() && !args.skip_invalid {
        return fail(
            format!(
                "the manifest has {} invalid {} (above); nothing was uploaded. Fix them, or pass --skip-invalid to upload the valid rows",
                checked.summary.invalid,
                if checked.summary.invalid == 1 {
                    "row"
                } else {
                    "rows"
                }
            ),
            ExitStatus::Usage,
        );
    }
    let remote = match remote {
        Some(r) => r,
        None => {
            let credentials = match Credentials::from_env(args.api_key_file.as_deref()) {
                Ok(c) => c,
                Err(e) => return fail(e, ExitStatus::Stopped),
            };
            match remote::api_url_from_env() {
                Ok(url) => Remote { url, credentials },
                Err(e) => return fail(format!("{e:#}"), ExitStatus::Stopped),
            }
        }
    };
    let (base, credentials) = (remote.url, remote.credentials);
    let client = Client::new(base, credentials)?;
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| default_state_path(manifest_path));
    // Before the lock file is made beside it: `--state /dev/null` is refused, not used.
    if let Err(e) = checkpoint::check_regular(&state_path) {
        return fail(e, ExitStatus::Stopped);
    }
    let new_rows = manifest_rows(&checked);
    let settings = Settings {
        concurrency: usize::from(args.concurrency),
        rate: args.rate,
        burst: args.burst,
        retries: args.retries,
        stall_timeout: args.stall_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    if args.dry_run {
        return dry_run(args, &runtime, client, &state_path, &new_rows, settings);
    }

    // Held until the run ends; the OS drops it with the process, however the process ends.
    // An in-memory state (`:memory:`) is this process's alone and needs none.
    let in_memory = state_path.as_os_str() == ":memory:";
    let _lock = match in_memory {
        true => None,
        false => match lock_state(&state_path) {
            Ok(lock) => Some(lock),
            Err(message) => return fail(message, ExitStatus::Stopped),
        },
    };
    let conn = match checkpoint::open(&state_path) {
        Ok(c) => c,
        Err(e) => return fail(e, ExitStatus::Stopped),
    };
    let manifest_id =
        std::fs::canonicalize(manifest_path).unwrap_or_else(|_| manifest_path.clone());
    let manifest_id = manifest_id.to_string_lossy().into_owned();
    match checkpoint::manifest_of(&conn) {
        Ok(Some(recorded)) if recorded != manifest_id && args.adopt_state => {
            eprintln!(
                "note: state file {} belonged to the manifest {recorded}; it now belongs to {manifest_id} (--adopt-state)",
                state_path.display()
            );
        }
        Ok(Some(recorded)) if recorded != manifest_id => {
            return fail(
                format!(
                    "state file {} belongs to the manifest {recorded}, not {manifest_id}; give that manifest, or another --state. If you moved or renamed the manifest (with its files), pass --adopt-state: rows are matched by what they mean, so done rows are not uploaded again",
                    state_path.display()
                ),
                ExitStatus::Stopped,
            );
        }
        Ok(_) => {}
        Err(e) => {
            return fail(
                format!("cannot read state file {}: {e}", state_path.display()),
                ExitStatus::Stopped,
            );
        }
    }
    let (store, writer) = checkpoint::store::spawn(conn);
    let recorded = {
        let rows = new_rows.clone();
        let id = manifest_id.clone();
        store.call_blocking(move |c| {
            checkpoint::set_manifest(c, &id)?;
            checkpoint::record_rows(c, &rows)?;
            checkpoint::forget_stale_rejected(c, &rows.iter().map(|r| r.key.as_str()).collect())?;
            checkpoint::load_rows(c)
        })
    };
    let stored = match recorded {
        Ok(rows) => rows,
        Err(e) => {
            return fail(
                format!("cannot record the rows in {}: {e}", state_path.display()),
                ExitStatus::Stopped,
            );
        }
    };
    let (work, refresh) = plan(&new_rows, stored, args);
    if !refresh.is_empty() {
        let refreshed = store.call_blocking(move |c| {
            for (key, size, mtime) in &refresh {
                checkpoint::refresh_file(c, key, *size, *mtime)?;
            }
            Ok(())
        });
        if let Err(e) = refreshed {
            return fail(
                format!("cannot write state file {}: {e}", state_path.display()),
                ExitStatus::Stopped,
            );
        }
    }
    for row in &work.changed {
        eprintln!(
            "warning: line {}: {} changed after it was uploaded; left as it is (pass --reupload-changed to upload it again)",
            row.line, row.file
        );
    }

    let ctx = Arc::new(Context::new(client, store.clone(), settings));
    watch_stall(&runtime, &ctx);
    let started = Instant::now();
    let quota = runtime.block_on(quota_check(&ctx, &work));
    if let Err((message, status)) = quota {
        drop(ctx);
        drop(store);
        writer.join();
        return fail(message, status);
    }
    let run_id = match store.call_blocking(checkpoint::start_run) {
        Ok(id) => id,
        Err(e) => {
            return fail(
                format!("cannot write state file {}: {e}", state_path.display()),
                ExitStatus::Stopped,
            );
        }
    };

    let results: pipeline::Results = Default::default();
    let grace = Duration::from_secs(args.grace);
    let interrupted = runtime.block_on(async {
        let totals = progress::Totals {
            rows: work.todo.len() as u64,
            bytes: work.bytes(),
            api_calls: work.api_calls() as u64,
        };
        let progress = tokio::spawn(progress::show(ctx.clone(), totals, progress::Mode::choose(args.no_progress)));
        let run = pipeline::run_all(ctx.clone(), work.todo.clone(), results.clone());
        tokio::pin!(run);
        let interrupted = tokio::select! {
            _ = &mut run => false,
            _ = signal() => {
                ctx.interrupt();
                eprintln!(
                    "interrupted: no new row starts; rows under way get up to {} s to finish (interrupt again to stop at once)",
                    grace.as_secs()
                );
                tokio::select! {
                    _ = &mut run => {}
                    _ = tokio::time::sleep(grace) => {
                        eprintln!("the grace period is over: stopping the rows still under way (a rerun resumes them)");
                        ctx.abort();
                    }
                    _ = signal() => {
                        eprintln!("stopping at once (a rerun resumes from the state file)");
                        ctx.abort();
                    }
                }
                true
            }
        };
        progress.abort();
        let _ = progress.await;
        interrupted
    });
    let results: Vec<(StoredRow, Outcome)> = {
        let mut r = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
        r.sort_by_key(|(i, _, _)| *i);
        r.into_iter()
            .map(|(_, row, outcome)| (row, outcome))
            .collect()
    };

    let summary = summarize(
        args,
        &state_path,
        &new_rows,
        &work,
        &results,
        &ctx,
        started.elapsed(),
        interrupted,
    );
    let counts = checkpoint::RunCounts {
        rows_done: summary.done_now as u64,
        rows_failed: (summary.failed_permanent + summary.failed_retryable) as u64,
        api_calls: summary.api_calls,
        retries: summary.retries,
        throttles: summary.throttles,
    };
    let exit = summary.exit_code;
    store.submit(move |c| checkpoint::finish_run(c, run_id, i32::from(exit), counts));
    drop(ctx);
    drop(store);
    writer.join();
    print_summary(args, &summary)?;
    Ok(match exit {
        0 => ExitStatus::Success,
        1 => ExitStatus::Failed,
        3 => ExitStatus::Stopped,
        130 => ExitStatus::Interrupted,
        _ => ExitStatus::Retryable,
    })
}

/// Takes the run lock: an exclusive lock on the state file itself, so that it follows the file
/// through every name it has (a hard or symbolic link is the same file), and the OS releases
/// it when the process ends, however it ends, so a killed run never blocks the next. It is a
/// BSD `flock`, which SQLite's own POSIX locks on the file neither see nor disturb; the handle
/// stays open until the state file is closed.
fn lock_state(state: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state)
        .map_err(|e| {
            format!(
                "cannot open state file {} for writing: {e} (is the folder writable?)",
                state.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = lock_holder(&file)
                .map(|pid| format!("pid {pid}, "))
                .unwrap_or_default();
            Err(format!(
                "another run is using state file {} ({holder}perhaps through another name of the same file); wait for it to end, or stop it first",
                state.display()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(format!("cannot lock state file {}: {e}", state.display()))
        }
    }
}

/// The process holding the `flock` of `file`, as Linux's `/proc/locks` tells (elsewhere: none).
#[cfg(unix)]
fn lock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let lock_inode: u64 = id.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && lock_inode == inode).then(|| pid.parse().ok())?
    })
}

#[cfg(not(unix))]
fn lock_holder(_: &std::fs::File) -> Option<u32> {
    None
}

/// Stops the run when it stalls (see `pipeline::watch_stall`), and says so at once.
fn watch_stall(runtime: &tokio::runtime::Runtime, ctx: &Arc<Context>) {
    let watch = pipeline::watch_stall(Arc::downgrade(ctx));
    runtime.spawn(async move {
        if let Some(why) = watch.await {
            eprintln!(
                "error: {why}; the run stops: no new row starts and the rows under way end (the state is saved; rerun later)"
            );
        }
    });
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One step-1 call for the first row still to upload: the bytes still to upload must fit in the
/// storage left.
async fn quota_check(ctx: &Context, work: &Work) -> Result<(), (String, ExitStatus)> {
    let Some((first, _)) = work.todo.iter().find(|(_, p)| *p == Plan::Upload) else {
        return Ok(());
    };
    let needed = work.bytes();
    match ctx
        .api_retrying(|| ctx.client.s3_form(&first.contact_id))
        .await
    {
        Err(_) if ctx.stop_reason() == Stop::Stalled => Err((
            format!(
                "the storage quota check could not finish: {}; nothing was uploaded, rerun later",
                ctx.stall_detail().unwrap_or_default()
            ),
            ExitStatus::Retryable,
        )),
        Ok(form) if needed > form.storage_left => Err((
            format!(
                "the files still to upload need {} ({needed} bytes) but the account has {} ({} bytes) of storage left; nothing was uploaded",
                human_bytes(needed),
                human_bytes(form.storage_left),
                form.storage_left
            ),
            ExitStatus::Stopped,
        )),
        Ok(_) => Ok(()),
        Err(e @ RemoteError::Unauthorized { .. }) => Err((e.to_string(), ExitStatus::Stopped)),
        Err(e) if e.is_retryable() => Err((
            format!(
                "the API kept failing at the storage quota check ({e}); nothing was uploaded, run again later"
            ),
            ExitStatus::Retryable,
        )),
        Err(e) => {
            // This row's contact is refused (a 404, say): the row will fail on its own; the
            // quota cannot be learnt from it, and the run goes on without that check.
            warn!(
                "storage quota not checked: step 1 for line {} failed: {e}",
                first.line
            );
            Ok(())
        }
    }
}

fn dry_run(
    args: &RunArgs,
    runtime: &tokio::runtime::Runtime,
    client: Client,
    state_path: &Path,
    new_rows: &[NewRow],
    settings: Settings,
) -> anyhow::Result<ExitStatus> {
    // Read what an existing state file says, without creating or changing it.
    let stored = if state_path.exists() {
        let conn = match checkpoint::open_read_only(state_path) {
            Ok(conn) => conn,
            Err(e) => return fail(e, ExitStatus::Stopped),
        };
        checkpoint::load_rows(&conn)
            .map_err(|e| anyhow::anyhow!("cannot read state file {}: {e}", state_path.display()))?
    } else {
        new_rows.iter().map(StoredRow::from).collect()
    };
    let (work, _) = plan(new_rows, stored, args);
    let rate = settings.rate;
    let conn = rusqlite::Connection::open_in_memory()?;
    let (store, writer) = checkpoint::store::spawn(conn);
    let ctx = Arc::new(Context::new(client, store.clone(), settings));
    watch_stall(runtime, &ctx);
    let quota = runtime.block_on(quota_check(&ctx, &work));
    drop(ctx);
    drop(store);
    writer.join();
    let (upload, attach, verify) = (
        work.count(Plan::Upload),
        work.count(Plan::Attach),
        work.count(Plan::Verify),
    );
    let calls = work.api_calls();
    let duration = rate.map(|r| Duration::from_secs_f64(calls as f64 / r));
    if args.json {
        let status = quota
            .as_ref()
            .map_or_else(|(_, s)| *s, |_| ExitStatus::Success);
        let doc = serde_json::json!({
            "manifest": args.manifest.manifest.display().to_string(),
            "state": state_path.display().to_string(),
            "dry_run": true,
            "to_upload": upload,
            "to_attach": attach,
            "to_verify": verify,
            "already_done": work.already_done,
            "failed_permanent": work.failed_permanent.len(),
            "rejected": work.rejected,
            "bytes_to_upload": work.bytes(),
            "api_calls": calls,
            "estimated_seconds": duration.map(|d| d.as_secs_f64()),
            "error": quota.as_ref().err().map(|(m, _)| m),
            "exit_code": status as u8,
        });
        if let Err((message, _)) = &quota {
            eprintln!("error: {message}");
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{doc:#}")?;
        return Ok(status);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Plan for {} (state {}), nothing sent but the quota check:",
        args.manifest.manifest.display(),
        state_path.display()
    )?;
    writeln!(out, "  to upload (all three steps): {upload}")?;
    writeln!(out, "  to attach only (uploaded):   {attach}")?;
    writeln!(out, "  to verify, then attach:      {verify}")?;
    writeln!(out, "  already done (skipped):      {}", work.already_done)?;
    writeln!(
        out,
        "  failed for good (skipped):   {} (pass --retry-failed to retry)",
        work.failed_permanent.len()
    )?;
    writeln!(out, "  rejected (invalid):          {}", work.rejected)?;
    writeln!(
        out,
        "  bytes:                       {} ({} bytes)",
        human_bytes(work.bytes()),
        work.bytes()
    )?;
    match duration {
        Some(d) => writeln!(
            out,
            "  API calls: {calls}, about {} at {:.1} requests/s (plus the uploads themselves)",
            human_duration(d),
            rate.unwrap_or_default()
        )?,
        None => writeln!(out, "  API calls: {calls} (no client-side rate limit)")?,
    }
    match quota {
        Ok(()) => {
            writeln!(out, "  storage quota: enough")?;
            Ok(ExitStatus::Success)
        }
        Err((message, status)) => {
            drop(out);
            fail(message, status)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &RunArgs,
    state_path: &Path,
    new_rows: &[NewRow],
    work: &Work,
    results: &[(StoredRow, Outcome)],
    ctx: &Context,
    elapsed: Duration,
    interrupted: bool,
) -> Summary {
    let mut failures: Vec<FailureLine> = Vec::new();
    let (mut done_now, mut failed_retryable, mut not_started) = (0, 0, 0);
    let mut failed_permanent = work.failed_permanent.len();
    for row in &work.failed_permanent {
        failures.push(FailureLine {
            line: row.line,
            file: row.file.clone(),
            kind: row.error_kind.clone().unwrap_or_default(),
            retryable: false,
            message: row.last_error.clone().unwrap_or_default(),
        });
    }
    for (row, outcome) in results {
        match outcome {
            Outcome::Done => done_now += 1,
            Outcome::NotStarted => not_started += 1,
            Outcome::Failed {
                kind,
                retryable,
                message,
            } => {
                if *retryable {
                    failed_retryable += 1;
                } else {
                    failed_permanent += 1;
                }
                failures.push(FailureLine {
                    line: row.line,
                    file: row.file.clone(),
                    kind: kind.to_string(),
                    retryable: *retryable,
                    message: message.clone(),
                });
            }
        }
    }
    failures.sort_by_key(|f| f.line);
    // Rows cut short by an interruption have no outcome.
    not_started += work.todo.len() - results.len();
    let stopped = match ctx.stop_reason() {
        Stop::None if interrupted => Some("interrupted"),
        Stop::None => None,
        Stop::Credentials => Some("credentials"),
        Stop::Quota => Some("quota"),
        Stop::StateFile => Some("state_file"),
        Stop::Stalled => Some("stalled"),
    };
    let exit_code = if interrupted {
        130
    } else if stopped == Some("stalled") {
        4
    } else if stopped.is_some() {
        3
    } else if failed_permanent + work.rejected > 0 {
        1
    } else if failed_retryable + not_started > 0 {
        4
    } else {
        0
    };
    let c = ctx.counts();
    Summary {
        manifest: args.manifest.manifest.display().to_string(),
        state: state_path.display().to_string(),
        rows: new_rows.len(),
        done_before: work.already_done,
        done_now,
        failed_permanent,
        failed_retryable,
        rejected: work.rejected,
        not_started,
        changed_since_upload: work
            .changed
            .iter()
            .map(|r| ChangedFile {
                line: r.line,
                file: r.file.clone(),
            })
            .collect(),
        failures,
        bytes_uploaded: c.bytes_uploaded,
        elapsed_seconds: elapsed.as_secs_f64(),
        api_calls: c.api_calls,
        retries: c.retries,
        throttles: c.throttles,
        stopped,
        stall: ctx.stall_detail().map(str::to_string),
        exit_code,
    }
}

fn print_summary(args: &RunArgs, s: &Summary) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, s)?;
        return writeln!(out);
    }
    writeln!(out, "Run of {} (state {})", s.manifest, s.state)?;
    writeln!(out, "  rows:               {}", s.rows)?;
    writeln!(out, "  done before:        {}", s.done_before)?;
    writeln!(out, "  done in this run:   {}", s.done_now)?;
    writeln!(out, "  failed for good:    {}", s.failed_permanent)?;
    writeln!(out, "  failed, retryable:  {}", s.failed_retryable)?;
    writeln!(out, "  rejected (invalid): {}", s.rejected)?;
    writeln!(out, "  not started:        {}", s.not_started)?;
    writeln!(
        out,
        "  uploaded:           {} ({} bytes)",
        human_bytes(s.bytes_uploaded),
        s.bytes_uploaded
    )?;
    writeln!(
        out,
        "  elapsed:            {}",
        human_duration(Duration::from_secs_f64(s.elapsed_seconds))
    )?;
    writeln!(
        out,
        "  API calls:          {} ({} retries, {} throttled)",
        s.api_calls, s.retries, s.throttles
    )?;
    for f in &s.failures {
        let what = if f.retryable { "retryable" } else { "for good" };
        writeln!(
            out,
            "  line {}: {} failed {what}: {}: {}",
            f.line,
            crate::manifest::cut(&f.file),
            describe_kind(&f.kind),
            f.message
        )?;
    }
    let rerun = resume_command(args);
    let next = match (s.stopped, s.exit_code) {
        (Some("credentials"), _) => "stopped: the API refused the credentials; fix ONEPAGECRM_USER_ID / ONEPAGECRM_API_KEY, then rerun".to_string(),
        (Some("interrupted"), _) => format!("interrupted; the state is saved, rerun to resume: {rerun}"),
        (Some("state_file"), _) => format!("stopped: the state file could not be written (is the disk full or read-only?); fix it, then rerun: {rerun}"),
        (Some("stalled"), _) => format!(
            "stopped: {}; the state is saved, rerun later to resume (when the API answers again): {rerun}",
            s.stall.as_deref().unwrap_or("no API call succeeded for --stall-timeout")
        ),
        (Some(_), _) => format!("stopped: the account's storage is full; free some, then rerun: {rerun}"),
        (_, 0) => "all rows done".to_string(),
        (_, 1) => format!(
            "some rows failed for good: list them with `{}`, fix them there, then run that file",
            report_command(args)
        ),
        _ => format!("some rows are not done yet; rerun to finish: {rerun}"),
    };
    writeln!(out, "Result: {next}")
}

/// `s` as one word of a POSIX shell command: as it is when that is safe, else in single quotes.
fn shell_quote(s: &std::ffi::OsStr) -> String {
    let text = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.into_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The flags of this run that a command resuming it must repeat: the state file, how the
/// manifest is read, where the key comes from, and every flag that changes what is sent or how.
fn resume_flags(args: &RunArgs) -> Vec<String> {
    let mut flags = Vec::new();
    let mut path = |flag: &str, value: &Path| {
        flags.push(format!("{flag} {}", shell_quote(value.as_os_str())));
    };
    if let Some(state) = &args.state {
        path("--state", state);
    }
    if let Some(key_file) = &args.api_key_file {
        path("--api-key-file", key_file);
    }
    if args.manifest.delimiter != b',' {
        let d = match args.manifest.delimiter {
            b'\t' => "tab".to_string(),
            d => shell_quote(std::ffi::OsStr::new(&char::from(d).to_string())),
        };
        flags.push(format!("--delimiter {d}"));
    }
    let defaults = crate::cli::Cli::run_defaults();
    if args.rate != defaults.rate {
        flags.push(match args.rate {
            Some(r) => format!("--rate {r}"),
            None => "--rate off".into(),
        });
    }
    if args.stall_timeout != defaults.stall_timeout {
        flags.push(match args.stall_timeout {
            Some(t) => format!("--stall-timeout {}", t.as_secs()),
            None => "--stall-timeout off".into(),
        });
    }
    for (flag, value, default) in [
        ("--burst", args.burst, defaults.burst),
        (
            "--concurrency",
            u32::from(args.concurrency),
            u32::from(defaults.concurrency),
        ),
        ("--retries", args.retries, defaults.retries),
    ] {
        if value != default {
            flags.push(format!("{flag} {value}"));
        }
    }
    for (flag, on) in [
        ("--skip-invalid", args.skip_invalid),
        ("--retry-failed", args.retry_failed),
        ("--reupload-changed", args.reupload_changed),
        ("--attach-unsettled", args.attach_unsettled),
    ] {
        if on {
            flags.push(flag.into());
        }
    }
    flags
}

/// The exact command that resumes this run, ready to paste into a shell.
fn resume_command(args: &RunArgs) -> String {
    let mut words = vec![
        "opcrm-import run".to_string(),
        shell_quote(args.manifest.manifest.as_os_str()),
    ];
    words.extend(resume_flags(args));
    words.join(" ")
}

/// The command that lists this run's failed rows as a manifest to fix.
fn report_command(args: &RunArgs) -> String {
    let target = match &args.state {
        Some(state) => format!("--state {}", shell_quote(state.as_os_str())),
        None => shell_quote(args.manifest.manifest.as_os_str()),
    };
    format!("opcrm-import report {target} --only failed -o fix.csv")
}

fn describe_kind(kind: &str) -> &'static str {
    match kind {
        "throttled" => "the API kept throttling",
        "credentials" => "the API refused the credentials",
        "quota" => "the account's storage is full",
        "server_error" => "the API kept failing (5xx)",
        "api_rejected" => "the API refused the request (check the contact and record ids)",
        "s3_busy" => "S3 kept failing or asking to slow down",
        "s3_rejected" => "S3 refused the upload",
        "timeout" => "requests kept timing out",
        "network" => "the network kept failing",
        "etag_mismatch" => "uploads arrived damaged",
        "file_changed" => "the file changed during the upload",
        "file_unreadable" => "the file could not be read",
        "protocol" => "unexpected answers",
        "state_file" => "the state file could not be written",
        "attach_unsettled" => "whether it was attached cannot be told (look at the record)",
        "stalled" => "the run stopped (it stalled) before this row could finish",
        _ => "an error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_sits_beside_the_manifest() {
        assert_eq!(
            default_state_path(Path::new("a/b/manifest.csv")),
            Path::new("a/b/manifest.opcrm.sqlite")
        );
        assert_eq!(
            default_state_path(Path::new("m.CSV")),
            Path::new("m.opcrm.sqlite")
        );
        assert_eq!(
            default_state_path(Path::new("list.txt")),
            Path::new("list.txt.opcrm.sqlite")
        );
    }
}
