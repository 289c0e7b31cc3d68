//! `run --dry-run`: what a run would do with each row, what it would send and how long that
//! would take at `--rate`, with nothing sent but the quota check and no state file written.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::config::RunConfig;
use super::execute::{quota_check, watch_stall};
use super::plan::{Work, plan};
use crate::ExitStatus;
use crate::checkpoint::{self, NewRow, StoredRow};
use crate::error::{CommandError, CommandResult};
use crate::pipeline::{Context, Plan};
use crate::preflight::human_bytes;
use crate::progress::human_duration;
use crate::remote::Client;

pub fn dry_run(
    cfg: &RunConfig,
    runtime: &tokio::runtime::Runtime,
    client: Client,
    new_rows: &[NewRow],
) -> CommandResult {
    let work = plan_from_state(cfg, new_rows)?;
    let conn = rusqlite::Connection::open_in_memory().map_err(anyhow::Error::from)?;
    let (store, writer) = checkpoint::store::spawn(conn);
    let ctx = Arc::new(Context::new(client, store.clone(), cfg.settings.clone()));
    watch_stall(runtime, &ctx);
    let quota = runtime.block_on(quota_check(&ctx, &work));
    drop(ctx);
    drop(store);
    writer.join();
    if cfg.json {
        return print_json(cfg, &work, quota);
    }
    print_text(cfg, &work)?;
    quota?;
    writeln!(std::io::stdout(), "  storage quota: enough")?;
    Ok(ExitStatus::Success)
}

/// The plan from what an existing state file says, read without creating or changing it.
fn plan_from_state(cfg: &RunConfig, new_rows: &[NewRow]) -> Result<Work, CommandError> {
    let state = &cfg.state;
    let stored = if state.exists() {
        let conn = checkpoint::open_read_only(state).map_err(CommandError::stopped)?;
        let read = || {
            Ok::<_, rusqlite::Error>((
                checkpoint::load_rows(&conn)?,
                checkpoint::load_notes(&conn)?,
            ))
        };
        read().map_err(|e| {
            CommandError::stopped(format!("cannot read state file {}: {e}", state.display()))
        })?
    } else {
        (new_rows.iter().map(StoredRow::from).collect(), Vec::new())
    };
    let (rows, notes) = stored;
    let mut work = plan(new_rows, rows, &cfg.choices).0;
    let wanted = work.notes_to_create();
    work.notes_unsettled = notes
        .iter()
        .filter(|g| g.state == checkpoint::NoteState::Intent && wanted.contains_key(&g.group))
        .count();
    Ok(work)
}

/// How long the API calls take at the client's rate (`None`: no limit).
fn estimate(cfg: &RunConfig, work: &Work) -> Option<Duration> {
    cfg.settings
        .rate
        .map(|r| Duration::from_secs_f64(work.api_calls() as f64 / r))
}

fn print_json(cfg: &RunConfig, work: &Work, quota: Result<(), CommandError>) -> CommandResult {
    let status = quota
        .as_ref()
        .map_or_else(|e| e.status(), |_| ExitStatus::Success);
    if let Err(e) = &quota {
        eprintln!("error: {e}");
    }
    let doc = serde_json::json!({
        "manifest": cfg.manifest.display().to_string(),
        "state": cfg.state.display().to_string(),
        "dry_run": true,
        "to_upload": work.count(Plan::Upload),
        "to_attach": work.count(Plan::Attach),
        "to_verify": work.count(Plan::Verify),
        "already_done": work.already_done,
        "failed_permanent": work.failed_permanent.len(),
        "rejected": work.rejected,
        "bytes_to_upload": work.bytes(),
        "notes_to_create": work.notes_to_create().len(),
        "api_calls": work.api_calls(),
        "estimated_seconds": estimate(cfg, work).map(|d| d.as_secs_f64()),
        "error": quota.as_ref().err().map(|e| e.to_string()),
        "exit_code": status as u8,
    });
    writeln!(std::io::stdout().lock(), "{doc:#}")?;
    Ok(status)
}

fn print_text(cfg: &RunConfig, work: &Work) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Plan for {} (state {}), nothing sent but the quota check:",
        cfg.manifest.display(),
        cfg.state.display()
    )?;
    writeln!(
        out,
        "  to upload (all three steps): {}",
        work.count(Plan::Upload)
    )?;
    writeln!(
        out,
        "  to attach only (uploaded):   {}",
        work.count(Plan::Attach)
    )?;
    writeln!(
        out,
        "  to verify, then attach:      {}",
        work.count(Plan::Verify)
    )?;
    writeln!(out, "  already done (skipped):      {}", work.already_done)?;
    writeln!(
        out,
        "  failed for good (skipped):   {} (pass --retry-failed to retry)",
        work.failed_permanent.len()
    )?;
    writeln!(out, "  rejected (invalid):          {}", work.rejected)?;
    let notes = work.notes_to_create().len();
    if notes > 0 {
        writeln!(out, "  notes to create:             {notes}")?;
    }
    writeln!(
        out,
        "  bytes:                       {} ({} bytes)",
        human_bytes(work.bytes()),
        work.bytes()
    )?;
    let calls = work.api_calls();
    match (estimate(cfg, work), cfg.settings.rate) {
        (Some(d), Some(rate)) => writeln!(
            out,
            "  API calls: {calls}, about {} at {rate:.1} requests/s (plus the uploads themselves)",
            human_duration(d),
        ),
        _ => writeln!(out, "  API calls: {calls} (no client-side rate limit)"),
    }
}
