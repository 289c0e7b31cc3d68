//! A run's contacts by email: the emails earlier runs resolved come from the state file, every
//! other distinct email is looked up once (before anything is uploaded), what resolved is
//! recorded, and the rows whose email found no contact or several stop the run (exit 2), or with
//! `--skip-invalid` are rejected with their kind while the others go on.

use std::collections::BTreeSet;

use super::config::RunConfig;
use super::session::Session;
use crate::ExitStatus;
use crate::error::CommandError;
use crate::lookup::{self, Lookups};
use crate::manifest::Problem;
use crate::pipeline::{Context, Stop};
use crate::preflight::Scan;
use crate::remote::RemoteError;

/// Resolves the manifest's emails (found by its check, `scan`) and says what was looked up.
/// When some email found no contact or several, the manifest is read once more for the rows
/// that name them: their problems are printed, and the run stops (exit 2) unless
/// `--skip-invalid` (then the rows are rejected as they are recorded: see `Session::record`).
pub fn resolve(
    cfg: &RunConfig,
    runtime: &tokio::runtime::Runtime,
    ctx: &Context,
    session: &Session,
    scan: &Scan,
) -> Result<Lookups, CommandError> {
    if scan.emails.is_empty() {
        return Ok(Lookups::default());
    }
    let known = session.known_lookups(cfg)?;
    let lookups = runtime
        .block_on(lookup::look_up(ctx, &scan.emails, &known))
        .map_err(|e| failed(ctx, e))?;
    let found = lookups
        .resolved_now(&known)
        .map(|(email, id)| (email.to_string(), id.to_string()))
        .collect();
    session.record_lookups(cfg, found)?;
    if !cfg.no_progress && lookups.looked_up > 0 {
        crate::say!("{}", lookup::describe(&lookups));
    }
    if lookups.not_found + lookups.ambiguous == 0 {
        return Ok(lookups);
    }
    let problems = problems(cfg, &lookups)?;
    crate::manifest::write_problems(&mut std::io::stderr().lock(), &problems)?;
    if !cfg.choices.skip_invalid {
        let rows = problems
            .iter()
            .filter_map(|p| p.line)
            .collect::<BTreeSet<_>>();
        let n = rows.len();
        return Err(CommandError::usage(format!(
            "{n} {} a contact by an email that no contact has, or several have (above); nothing was uploaded. Fix the emails (or give those rows a contact_id), or pass --skip-invalid to upload the other rows",
            if n == 1 { "row names" } else { "rows name" }
        )));
    }
    Ok(lookups)
}

/// The problems of the rows whose email found no contact or several, from the manifest read
/// again chunk by chunk (no file is looked at).
fn problems(cfg: &RunConfig, lookups: &Lookups) -> Result<Vec<Problem>, CommandError> {
    let unreadable =
        |p: Problem| CommandError::usage(format!("the manifest cannot be read: {}", p.message));
    let mut reader = crate::manifest::stream(&cfg.manifest, cfg.read).map_err(unreadable)?;
    let mut problems = Vec::new();
    while let Some(chunk) = reader
        .next_chunk(crate::defaults::batch_rows())
        .map_err(unreadable)?
    {
        problems.extend(lookup::problems(&chunk.rows, lookups));
    }
    Ok(problems)
}

/// A lookup that could not be made stops the run before anything is uploaded, as the quota
/// check does: the credentials (exit 3), a stall or an API that keeps failing (exit 4: rerun
/// later), or a refusal (exit 3).
fn failed(ctx: &Context, e: RemoteError) -> CommandError {
    if ctx.stop_reason() == Stop::Stalled {
        return CommandError::new(
            ExitStatus::Retryable,
            format!(
                "the contact lookups by email could not finish: {}; nothing was uploaded, rerun later",
                ctx.stall_detail().unwrap_or_default()
            ),
        );
    }
    match e {
        e @ RemoteError::Unauthorized { .. } => CommandError::stopped(e),
        e if e.is_retryable() => CommandError::new(
            ExitStatus::Retryable,
            format!(
                "the API kept failing at the contact lookups by email ({e}); nothing was uploaded, run again later"
            ),
        ),
        e => CommandError::stopped(format!(
            "a contact lookup by email (GET /contacts?email=) was refused: {e}; nothing was uploaded"
        )),
    }
}
