//! A run's execution: the storage quota check, the run's start recorded, the note groups
//! settled, then every row through the pipeline, read back from the state file in batches and
//! fed to the workers (`feed`: rows to verify first, then each contact's rows together), with
//! Ctrl-C and SIGTERM handled (no new row starts; rows under way get a grace period) and a run
//! that stalls stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::config::Choices;
use super::config::RunConfig;
use super::plan::{Work, decide};
use super::session::Session;
use crate::checkpoint::{Pass, START, StoredRow};
use crate::error::CommandError;
use crate::pipeline::notes::Settled;
use crate::pipeline::{self, Context, Ended, Outcome, Plan, Stop};
use crate::preflight::human_bytes;
use crate::remote::RemoteError;
use crate::{ExitStatus, progress, quota};

/// What the pipeline did with the rows of one run.
pub struct Executed {
    /// The rows that ended in this run: counted, the failed ones kept.
    pub ended: Ended,
    pub interrupted: bool,
    pub elapsed: Duration,
    /// This run in the state file's runs table.
    pub run_id: i64,
}

/// Checks the quota (the stall watch is already on: see [`watch_stall`]), records the run's start, and takes every row of the plan through the
/// pipeline until all have ended or the run is stopped.
pub fn execute(
    cfg: &RunConfig,
    runtime: &tokio::runtime::Runtime,
    session: &Session,
    ctx: &Arc<Context>,
) -> Result<Executed, CommandError> {
    let started = Instant::now();
    runtime.block_on(quota_check(ctx, &session.work))?;
    let run_id = session.state.start_run().wait().map_err(|e| {
        CommandError::stopped(format!(
            "cannot write state file {}: {e}",
            cfg.state.display()
        ))
    })?;
    let results: pipeline::Results = Default::default();
    let interrupted = runtime.block_on(drive(cfg, ctx, &session.work, results.clone()));
    let ended = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Executed {
        ended,
        interrupted,
        elapsed: started.elapsed(),
        run_id,
    })
}

/// Runs the rows with the progress display beside them; on Ctrl-C or SIGTERM no new row starts
/// and the rows under way get `--grace` to finish (a second signal stops at once). Says whether
/// the run was interrupted.
async fn drive(
    cfg: &RunConfig,
    ctx: &Arc<Context>,
    work: &Work,
    results: pipeline::Results,
) -> bool {
    let grace = cfg.grace;
    let totals = progress::Totals {
        rows: work.todo() as u64,
        bytes: work.bytes(),
        api_calls: work.api_calls(ctx.forms.reuse_expected()) as u64,
    };
    let progress = tokio::spawn(progress::show(
        ctx.clone(),
        totals,
        progress::Mode::choose(cfg.no_progress),
    ));
    let run = async {
        let settled = settle_notes(ctx, work).await;
        // The rows come from the state file in batches, as the workers take them up: a long
        // manifest is never all in memory.
        let (tx, rx) = tokio::sync::mpsc::channel(crate::defaults::batch_rows());
        let fed = tokio::spawn(feed(ctx.clone(), cfg.choices, settled, results.clone(), tx));
        pipeline::run_fed(ctx.clone(), rx, results.clone()).await;
        let _ = fed.await;
    };
    tokio::pin!(run);
    let interrupted = tokio::select! {
        _ = &mut run => false,
        _ = signal() => {
            ctx.interrupt();
            crate::say!(
                "interrupted: no new row starts; rows under way get up to {} s to finish (interrupt again to stop at once)",
                grace.as_secs()
            );
            tokio::select! {
                _ = &mut run => {}
                _ = tokio::time::sleep(grace) => {
                    crate::say!("the grace period is over: stopping the rows still under way (a rerun resumes them)");
                    ctx.abort();
                }
                _ = signal() => {
                    crate::say!("stopping at once (a rerun resumes from the state file)");
                    ctx.abort();
                }
            }
            true
        }
    };
    progress.abort();
    let _ = progress.await;
    interrupted
}

/// Settles every note group the rows to take up wait for (its note created, or adopted after a
/// lost answer): what became of each.
async fn settle_notes(ctx: &Arc<Context>, work: &Work) -> HashMap<String, Settled> {
    let wanted = work.notes_to_create().clone();
    if wanted.is_empty() {
        return HashMap::new();
    }
    let groups = match ctx.state.load_notes().await {
        Ok(groups) => groups,
        Err(e) => {
            let failed = Settled::Failed {
                retryable: true,
                message: format!("cannot read the notes in the state file: {e}"),
            };
            return wanted.into_keys().map(|g| (g, failed.clone())).collect();
        }
    };
    let groups: Vec<_> = groups
        .into_iter()
        .filter(|g| wanted.contains_key(&g.group))
        .collect();
    pipeline::notes::settle_all(ctx.clone(), groups, wanted).await
}

/// Feeds the workers the rows to take up, batch by batch from the state file, in the order
/// they are taken up: rows to verify first (their checks run one at a time, before any other
/// row of their record, name and size starts), then the others with each contact's rows
/// together, contacts in the order they first appear (so a contact's form carries its files
/// one after another while it lives). A row waiting for its note gets the note's id, or ends
/// here when the note was not made. Once the workers take no more rows (the run stopped), the
/// rest is only read for the rows of notes not made, which end as before.
async fn feed(
    ctx: Arc<Context>,
    choices: Choices,
    settled: HashMap<String, Settled>,
    results: pipeline::Results,
    tx: tokio::sync::mpsc::Sender<(StoredRow, Plan)>,
) {
    let settled = |group: &str| {
        Some(settled.get(group).cloned().unwrap_or(Settled::Failed {
            retryable: true,
            message: "the note group is not recorded in the state file; rerun".into(),
        }))
    };
    let mut taking = true;
    for verify in [true, false] {
        let mut after = START;
        loop {
            // The rows the count marked to verify, then the others: a row is read by one pass
            // alone, whatever its state when the other reads (see `checkpoint::Pass`).
            let pass = match verify {
                true => Pass::Verify,
                false => Pass::Others,
            };
            let read = ctx
                .state
                .this_run(after, crate::defaults::batch_rows(), pass)
                .await;
            let batch = match read {
                Ok(batch) => batch,
                Err(e) => {
                    warn!("cannot read the rows in the state file: {e}");
                    ctx.stop_for_state_file();
                    return;
                }
            };
            let Some(last) = batch.last() else { break };
            after = last.place;
            let rows: Vec<(StoredRow, Plan)> = batch
                .into_iter()
                .filter_map(|mut t| {
                    let decision = decide(&t.row, t.now, &choices);
                    let plan = decision.plan()?;
                    if (plan == Plan::Verify) != verify {
                        return None;
                    }
                    if decision.refreshes() {
                        // Its file changed and is uploaded again: the file as it is now, which
                        // the state file records with the upload's key (`Transition::Uploading`).
                        (t.row.size, t.row.mtime_ns) = (t.now.size, t.now.mtime_ns);
                    }
                    Some((t.row, plan))
                })
                .collect();
            let rows = fail_note_rows(&ctx, rows, &results, settled);
            if !taking {
                continue;
            }
            ctx.forms
                .expect(rows.iter().map(|(row, _)| row.contact_id.as_str()));
            // A row left only its pin attaches nothing: no snapshot of its record is wanted.
            ctx.snapshots.plan(
                rows.iter()
                    .filter(|(_, plan)| *plan != Plan::Pin)
                    .map(|(row, _)| row),
            );
            for row in rows {
                if tx.send(row).await.is_err() {
                    taking = false;
                    break;
                }
            }
        }
    }
}

/// Gives each row waiting for a note its note's id, and ends the rows whose note was not made;
/// returns the rows to run.
fn fail_note_rows(
    ctx: &Context,
    todo: Vec<(StoredRow, Plan)>,
    results: &pipeline::Results,
    settled: impl Fn(&str) -> Option<Settled>,
) -> Vec<(StoredRow, Plan)> {
    let mut run = Vec::with_capacity(todo.len());
    for (mut row, plan) in todo {
        let waiting = row.reference_id.is_empty();
        let Some(outcome) = row
            .note
            .group
            .as_deref()
            .filter(|_| waiting)
            .and_then(&settled)
        else {
            run.push((row, plan));
            continue;
        };
        let ended = match outcome {
            Settled::Note(id) => {
                row.reference_id = id;
                run.push((row, plan));
                continue;
            }
            Settled::Failed { retryable, message } => ctx.fail_unstarted(&row, retryable, message),
            Settled::NotStarted => Outcome::NotStarted,
        };
        results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(row, ended);
    }
    run
}

/// Stops the run when it stalls (see `pipeline::watch_stall`), and says so at once.
pub fn watch_stall(runtime: &tokio::runtime::Runtime, ctx: &Arc<Context>) {
    let watch = pipeline::watch_stall(Arc::downgrade(ctx));
    runtime.spawn(async move {
        if let Some(why) = watch.await {
            crate::say!(
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

/// The first form the run needs (step 1 for the first row still to upload, kept for that row):
/// the bytes still to upload and attach must fit in the storage left it tells (see
/// `Work::storage_needed`).
pub async fn quota_check(ctx: &Context, work: &Work) -> Result<(), CommandError> {
    // A row by email whose contact is not known yet (a dry run looks nothing up) cannot ask.
    let Some(first) = work.first_upload.as_ref() else {
        return Ok(());
    };
    let needed = work.storage_needed();
    let first_form = quota::first_form(ctx, &first.contact_id).await.map(|form| {
        let storage_left = form.storage_left;
        ctx.forms.keep_unused(&first.contact_id, form);
        storage_left
    });
    match first_form {
        Err(_) if ctx.stop_reason() == Stop::Stalled => Err(CommandError::new(
            ExitStatus::Retryable,
            format!(
                "the storage quota check could not finish: {}; nothing was uploaded, rerun later",
                ctx.stall_detail().unwrap_or_default()
            ),
        )),
        Ok(storage_left) if needed > storage_left => Err(CommandError::new(
            ExitStatus::Stopped,
            format!(
                "the files still to upload need {} ({needed} bytes) but the account has {} ({} bytes) of storage left; nothing was uploaded",
                human_bytes(needed),
                human_bytes(storage_left),
                storage_left
            ),
        )),
        Ok(_) => Ok(()),
        Err(e @ RemoteError::Unauthorized { .. }) => Err(CommandError::stopped(e)),
        Err(e) if e.is_retryable() => Err(CommandError::new(
            ExitStatus::Retryable,
            format!(
                "the API kept failing at the storage quota check ({e}); nothing was uploaded, run again later"
            ),
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
