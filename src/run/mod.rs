//! `opcrm-import run`: check the manifest, record every row, check the storage quota, then take
//! each row through the three steps and say at the end what happened and what to type next.
//!
//! In parts a newcomer can find by name: `config` (the settings, resolved once), `session` (the
//! state file: lock, open, record), `contacts` (the rows by email), `plan` (what is left of each
//! row), `execute` (quota check, notes, the rows fed to the pipeline, signals), `summary`
//! (counts, exit status, the next command), `dry_run`.

mod config;
mod contacts;
mod dry_run;
mod execute;
mod plan;
mod session;
pub(crate) mod summary;

use std::sync::Arc;

pub use config::{Choices, Remote, RunConfig, default_state_path};
pub use plan::{Work, manifest_rows, plan};
pub(crate) use session::manifest_id;

use crate::cli::RunArgs;
use crate::error::{CommandError, CommandResult, ignore_broken_pipe};
use crate::pipeline::{Context, FormReuse};
use crate::preflight::{self, Checked, Scan};
use crate::remote::Client;

/// `opcrm-import run`, with the API and credentials from the environment.
pub fn run(args: &RunArgs) -> CommandResult {
    run_with(&RunConfig::from_args(args)?)
}

/// One run, as `cfg` says.
pub fn run_with(cfg: &RunConfig) -> CommandResult {
    // A dry run plans the whole manifest at once; a run reads it as a stream, twice (checked
    // here, recorded in `Session::record`), and never holds its rows.
    let mut checked = match cfg.choices.dry_run {
        true => Some(check_manifest(cfg)?),
        false => None,
    };
    let scan = match cfg.choices.dry_run {
        true => None,
        false => Some(scan_manifest(cfg)?),
    };
    let client = Client::new(cfg.remote.url.clone(), cfg.remote.credentials.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let (Some(scan), None) = (scan, checked.as_mut()) else {
        let checked = checked
            .as_mut()
            .expect("a dry run's manifest is checked whole");
        return dry_run::dry_run(cfg, &runtime, client, checked);
    };
    let mut session = session::Session::open(cfg)?;
    let mut settings = cfg.settings.clone();
    if settings.form_reuse == FormReuse::Auto
        && let Some(why) = session.form_reuse_off(cfg)?
    {
        crate::say!(
            "form reuse is off for this state file (an earlier run turned it off: {why}); one upload form per file"
        );
        settings.form_reuse = FormReuse::Off;
    }
    let ctx = Arc::new(Context::new(client, session.state.clone(), settings));
    execute::watch_stall(&runtime, &ctx);
    // Every row is recorded, with its contact, before anything is uploaded.
    let prepared = contacts::resolve(cfg, &runtime, &ctx, &session, &scan).and_then(|lookups| {
        let rows = session.record(cfg, &scan, &lookups)?;
        Ok((lookups, rows))
    });
    let executed = prepared.and_then(|prepared| {
        execute::execute(cfg, &runtime, &session, &ctx).map(|executed| (prepared, executed))
    });
    let ((lookups, rows), executed) = match executed {
        Ok(executed) => executed,
        Err(e) => {
            drop(ctx);
            session.close();
            return Err(e);
        }
    };
    let summary = summary::Summary::new(cfg, rows, &session.work, &executed, &ctx, &lookups);
    let (run_id, status, counts) = (executed.run_id, summary.status(), summary.counts());
    session
        .state
        .finish_run(run_id, status as i32, counts)
        .detach();
    drop(ctx);
    session.close();
    // Everything is recorded: a reader that closed stdout changes nothing of how the run ended.
    ignore_broken_pipe(summary.print(cfg))?;
    Ok(status)
}

/// Checks the manifest as `check` does, chunk by chunk, and prints its problems; an unreadable
/// manifest, or an invalid one without `--skip-invalid`, stops the run before anything is sent.
fn scan_manifest(cfg: &RunConfig) -> Result<Scan, CommandError> {
    let scan = match preflight::scan(&cfg.manifest, cfg.read, |_| Ok::<_, ()>(())) {
        Ok(scan) => scan,
        Err(()) => unreachable!("nothing is done with the chunks"),
    };
    stop_on_problems(
        cfg,
        &scan.problems,
        scan.readable,
        scan.is_valid(),
        scan.summary.invalid,
    )?;
    Ok(scan)
}

/// Checks the manifest as `check` does and prints its problems; an unreadable manifest, or an
/// invalid one without `--skip-invalid`, stops the run before anything is sent.
fn check_manifest(cfg: &RunConfig) -> Result<Checked, CommandError> {
    let checked = preflight::check(&cfg.manifest, cfg.read);
    stop_on_problems(
        cfg,
        &checked.manifest.problems,
        checked.manifest.readable,
        checked.is_valid(),
        checked.summary.invalid,
    )?;
    Ok(checked)
}

/// Prints a checked manifest's problems; an unreadable manifest, or an invalid one without
/// `--skip-invalid`, is the error that stops the run.
fn stop_on_problems(
    cfg: &RunConfig,
    problems: &[crate::manifest::Problem],
    readable: bool,
    valid: bool,
    invalid: usize,
) -> Result<(), CommandError> {
    if !readable {
        // Why it cannot be read is the error's cause, so that it reaches the `--json` document
        // too (and stderr once, in the error's chain).
        let why: Vec<&str> = problems
            .iter()
            .filter(|p| p.severity == crate::manifest::Severity::Error)
            .map(|p| p.message.as_str())
            .collect();
        let err = anyhow::anyhow!("{}", why.join("; "))
            .context("the manifest cannot be read; nothing was uploaded");
        return Err(CommandError::from(err)
            .with_status(crate::ExitStatus::Usage)
            .with_detail("problems", problems));
    }
    crate::manifest::write_problems(&mut std::io::stderr().lock(), problems)?;
    if !valid && !cfg.choices.skip_invalid {
        let n = invalid;
        // The problems are on stderr above; `--json` carries them in its one document.
        return Err(CommandError::usage(format!(
            "the manifest has {n} invalid {} (above); nothing was uploaded. Fix them, or pass --skip-invalid to upload the valid rows",
            if n == 1 { "row" } else { "rows" }
        ))
        .with_detail("problems", problems));
    }
    Ok(())
}
