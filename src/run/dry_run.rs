//! `run --dry-run`: what a run would do with each row, what it would send and how long that
//! would take at `--rate`, with nothing sent but the quota check and no state file written.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::config::RunConfig;
use super::execute::{quota_check, watch_stall};
use super::plan::{Work, manifest_rows, plan};
use crate::ExitStatus;
use crate::checkpoint::{self, StateFile, StoredRow};
use crate::error::{CommandError, CommandResult, ignore_broken_pipe};
use crate::lookup;
use crate::pipeline::{FormReuse, Plan, Stateless};
use crate::preflight::Checked;
use crate::preflight::human_bytes;
use crate::progress::human_duration;
use crate::remote::Client;

pub fn dry_run(
    cfg: &RunConfig,
    runtime: &tokio::runtime::Runtime,
    client: Client,
    checked: &mut Checked,
) -> CommandResult {
    let (known, stored, notes, reuse_off) = read_state(cfg)?;
    // Rows whose email an earlier run resolved know their contact; the others would be looked up.
    let lookups = lookup::to_look_up(&checked.manifest.rows, &known);
    checked.resolved = known;
    let new_rows = manifest_rows(checked);
    // The rows a run would record first: those the state file holds, and the manifest's new ones
    // (added since its last run), as a run records them.
    let stored = match stored {
        Some(mut rows) => {
            let known: std::collections::HashSet<String> =
                rows.iter().map(|r| r.key.clone()).collect();
            rows.extend(
                new_rows
                    .iter()
                    .filter(|n| !known.contains(&n.key))
                    .map(StoredRow::from),
            );
            rows
        }
        None => new_rows.iter().map(StoredRow::from).collect(),
    };
    let mut work = Planned {
        work: plan(&new_rows, stored, &cfg.choices).0,
        lookups,
        reuse_forms: false,
    };
    // A note whose POST may have been sent is settled by a list of its contact's notes first.
    let wanted = work.work.notes_to_create();
    let unsettled = notes
        .iter()
        .filter(|g| g.state == checkpoint::NoteState::Intent && wanted.contains_key(&g.group))
        .count();
    work.work.notes_unsettled = unsettled;
    let mut settings = cfg.settings.clone();
    if reuse_off {
        settings.form_reuse = FormReuse::Off;
    }
    let stateless = Stateless::new(client, settings).map_err(anyhow::Error::from)?;
    watch_stall(runtime, &stateless.ctx);
    let quota = runtime.block_on(quota_check(&stateless.ctx, &work.work));
    work.reuse_forms = stateless.ctx.forms.reuse_expected();
    stateless.close();
    if cfg.json {
        return print_json(cfg, &work, quota);
    }
    // A closed stdout (`run --dry-run | head`) does not change what the quota check found.
    ignore_broken_pipe(print_text(cfg, &work))?;
    quota?;
    if work.work.count(Plan::Upload) > 0 && work.work.uploads_with_contact == 0 {
        // Every row to upload names its contact by an email not looked up yet.
        ignore_broken_pipe(writeln!(
            std::io::stdout(),
            "  storage quota: not checked (the contacts are looked up by email first; `check` looks them up and checks it)"
        ))?;
        return Ok(ExitStatus::Success);
    }
    ignore_broken_pipe(writeln!(std::io::stdout(), "  storage quota: enough"))?;
    Ok(ExitStatus::Success)
}

/// What a run would do: the rows' plan, and the emails it would look up first.
struct Planned {
    work: Work,
    lookups: usize,
    /// A contact's form would carry its files (`--form-reuse auto`, not turned off for the state
    /// file, and the quota check's form allows it).
    reuse_forms: bool,
}

impl Planned {
    /// The rows' API calls and the lookups' (one each: a list of over 100 contacts for one
    /// email takes more, but no real email has that many).
    fn api_calls(&self) -> usize {
        self.work.api_calls(self.reuse_forms) + self.lookups
    }
}

/// What an existing state file says (the emails it resolved, its rows, its notes, whether form
/// reuse was turned off for it), read without creating or changing it; nothing when there is none.
type StateRead = (
    HashMap<String, String>,
    Option<Vec<StoredRow>>,
    Vec<checkpoint::NoteGroup>,
    bool,
);

fn read_state(cfg: &RunConfig) -> Result<StateRead, CommandError> {
    let state = &cfg.state;
    if !state.exists() {
        return Ok((HashMap::new(), None, Vec::new(), false));
    }
    let file = StateFile::open_read_only(state).map_err(CommandError::stopped)?;
    let read = || -> rusqlite::Result<StateRead> {
        // A state file of a version before lookups or notes has no table for them (it is not
        // migrated here: a dry run changes nothing).
        let known = file.load_lookups().unwrap_or_default();
        let notes = file.load_notes().unwrap_or_default();
        let reuse_off = file.form_reuse_off()?.is_some();
        Ok((known, Some(file.load_rows()?), notes, reuse_off))
    };
    read().map_err(|e| {
        CommandError::stopped(format!("cannot read state file {}: {e}", state.display()))
    })
}

/// How long the API calls take at the client's rate (`None`: no limit).
fn estimate(cfg: &RunConfig, planned: &Planned) -> Option<Duration> {
    cfg.settings
        .rate
        .map(|r| Duration::from_secs_f64(planned.api_calls() as f64 / r))
}

fn print_json(
    cfg: &RunConfig,
    planned: &Planned,
    quota: Result<(), CommandError>,
) -> CommandResult {
    let work = &planned.work;
    let status = quota
        .as_ref()
        .map_or_else(|e| e.status(), |_| ExitStatus::Success);
    if let Err(e) = &quota {
        crate::say!("error: {e}");
    }
    let doc = serde_json::json!({
        "manifest": cfg.manifest.display().to_string(),
        "state": cfg.state.display().to_string(),
        "dry_run": true,
        "to_upload": work.count(Plan::Upload),
        "to_attach": work.count(Plan::Attach) - work.links_to_attach,
        "links_to_attach": work.links_to_attach,
        "to_verify": work.count(Plan::Verify),
        "to_pin": work.count(Plan::Pin),
        "already_done": work.already_done,
        "failed_permanent": work.failed_permanent.len(),
        "rejected": work.rejected,
        "contacts_to_look_up": planned.lookups,
        "bytes_to_upload": work.bytes(),
        "notes_to_create": work.notes_to_create().len(),
        "api_calls": planned.api_calls(),
        "estimated_seconds": estimate(cfg, planned).map(|d| d.as_secs_f64()),
        "error": quota.as_ref().err().map(|e| e.to_string()),
        "exit_code": status as u8,
    });
    ignore_broken_pipe(writeln!(std::io::stdout().lock(), "{doc:#}"))?;
    Ok(status)
}

fn print_text(cfg: &RunConfig, planned: &Planned) -> std::io::Result<()> {
    let work = &planned.work;
    // Paths from the command line and the manifest, escaped (see `terminal`).
    let mut out = crate::terminal::Printable(std::io::stdout().lock());
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
        work.count(Plan::Attach) - work.links_to_attach
    )?;
    if work.links_to_attach > 0 {
        writeln!(
            out,
            "  links to attach (no upload): {}",
            work.links_to_attach
        )?;
    }
    writeln!(
        out,
        "  to verify, then attach:      {}",
        work.count(Plan::Verify)
    )?;
    let pins = work.count(Plan::Pin);
    if pins > 0 {
        writeln!(out, "  to pin only (attached):      {pins}")?;
    }
    writeln!(out, "  already done (skipped):      {}", work.already_done)?;
    writeln!(
        out,
        "  failed for good (skipped):   {} (pass --retry-failed to retry)",
        work.failed_permanent.len()
    )?;
    writeln!(out, "  rejected (invalid):          {}", work.rejected)?;
    if planned.lookups > 0 {
        writeln!(
            out,
            "  contacts to look up by email: {} (before any upload)",
            planned.lookups
        )?;
    }
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
    let uploads = work.count(Plan::Upload);
    if uploads > 0 {
        let forms = match planned.reuse_forms {
            true => "one per contact: a contact's form carries its files (--form-reuse auto)",
            false => "one per file",
        };
        writeln!(out, "  upload forms:                {forms}")?;
    }
    let calls = planned.api_calls();
    match (estimate(cfg, planned), cfg.settings.rate) {
        (Some(d), Some(rate)) => writeln!(
            out,
            "  API calls: {calls}, about {} at {rate:.1} requests/s (plus the uploads themselves)",
            human_duration(d),
        ),
        _ => writeln!(out, "  API calls: {calls} (no client-side rate limit)"),
    }
}
