//! `opcrm-import status`: how far a migration has got, read from its state file without
//! changing it (safe while a run is going on).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::ExitStatus;
use crate::checkpoint::{self, NoteState, RowState, RunRecord, StateFile, StateReader, StoredRow};
use crate::error::{CommandError, CommandResult};
use crate::failure::FailureKind;
use crate::preflight::human_bytes;

/// The state file named by `--state`, or the default one of the manifest.
pub fn state_path(manifest: Option<&PathBuf>, state: Option<&PathBuf>) -> Result<PathBuf, String> {
    match (manifest, state) {
        (_, Some(state)) => Ok(state.clone()),
        (Some(manifest), None) => Ok(crate::run::default_state_path(manifest)),
        (None, None) => Err("give the manifest, or --state FILE".into()),
    }
}

/// Finds and opens a state file for reading, or says why not (exit 2 when none is named or it
/// does not exist, 3 otherwise).
pub fn open(
    manifest: Option<&PathBuf>,
    state: Option<&PathBuf>,
) -> Result<(PathBuf, StateReader), (String, ExitStatus)> {
    let path = state_path(manifest, state).map_err(|m| (m, ExitStatus::Usage))?;
    match StateFile::open_read_only(&path) {
        Ok(file) => Ok((path, file)),
        Err(e) => {
            let status = if path.exists() {
                ExitStatus::Stopped
            } else {
                ExitStatus::Usage
            };
            Err((e.to_string(), status))
        }
    }
}

#[derive(Serialize)]
struct Status {
    state: String,
    manifest: Option<String>,
    rows: usize,
    by_state: BTreeMap<&'static str, usize>,
    bytes_done: u64,
    bytes_to_do: u64,
    /// Rows that name their contact by email.
    rows_by_email: usize,
    /// Emails resolved to a contact (recorded, never looked up again).
    contacts_resolved: usize,
    /// The notes rows create (`note_text`): groups by state (`pending`: nothing sent yet;
    /// `intent`: asked for, outcome unknown until a run settles it; `created`), and each note.
    notes: Notes,
    failures: Vec<FailureGroup>,
    runs: Vec<RunRecord>,
}

#[derive(Serialize, Default)]
struct Notes {
    pending: usize,
    intent: usize,
    created: usize,
    /// `undo` asked to delete them, outcome unknown until the next `undo`.
    removing: usize,
    removed: usize,
    list: Vec<NoteLine>,
}

#[derive(Serialize)]
struct NoteLine {
    contact_id: String,
    note_key: Option<String>,
    date: Option<String>,
    state: &'static str,
    note_id: Option<String>,
}

#[derive(Serialize)]
struct FailureGroup {
    kind: FailureKind,
    retryable: bool,
    rows: usize,
    examples: Vec<Example>,
}

#[derive(Serialize)]
struct Example {
    line: u64,
    file: String,
    error: String,
}

const EXAMPLES: usize = 3;

fn build(
    path: &std::path::Path,
    rows: &[StoredRow],
    runs: Vec<RunRecord>,
    manifest: Option<String>,
    contacts_resolved: usize,
    groups: Vec<checkpoint::NoteGroup>,
) -> Status {
    let mut notes = Notes::default();
    for g in groups {
        match g.state {
            NoteState::Pending => notes.pending += 1,
            NoteState::Intent => notes.intent += 1,
            NoteState::Created => notes.created += 1,
            NoteState::Removing => notes.removing += 1,
            NoteState::Removed => notes.removed += 1,
        }
        notes.list.push(NoteLine {
            contact_id: g.contact_id,
            note_key: g.key,
            date: g.date,
            state: g.state.as_str(),
            note_id: g.note_id,
        });
    }
    let mut by_state: BTreeMap<&'static str, usize> =
        RowState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let (mut bytes_done, mut bytes_to_do) = (0, 0);
    let mut groups: BTreeMap<(FailureKind, bool), FailureGroup> = BTreeMap::new();
    for row in rows {
        *by_state.entry(row.state.as_str()).or_default() += 1;
        match row.state {
            RowState::Done => bytes_done += row.size,
            RowState::Rejected | RowState::Removing | RowState::Removed => {}
            _ => bytes_to_do += row.size,
        }
        if matches!(row.state, RowState::Failed | RowState::Rejected) {
            let kind = row.error_kind.unwrap_or(FailureKind::Other);
            let retryable = row.retryable.unwrap_or(false);
            let group = groups
                .entry((kind, retryable))
                .or_insert_with(|| FailureGroup {
                    kind,
                    retryable,
                    rows: 0,
                    examples: Vec::new(),
                });
            group.rows += 1;
            if group.examples.len() < EXAMPLES {
                group.examples.push(Example {
                    line: row.line,
                    file: row.shown_file().to_string(),
                    error: row.last_error.clone().unwrap_or_default(),
                });
            }
        }
    }
    let mut failures: Vec<FailureGroup> = groups.into_values().collect();
    failures.sort_by_key(|g| std::cmp::Reverse(g.rows));
    Status {
        state: path.display().to_string(),
        manifest,
        rows: rows.len(),
        by_state,
        bytes_done,
        bytes_to_do,
        rows_by_email: rows.iter().filter(|r| !r.contact_email.is_empty()).count(),
        contacts_resolved,
        notes,
        failures,
        runs,
    }
}

pub fn run(args: &crate::cli::StatusArgs) -> CommandResult {
    let (path, file) = match open(args.manifest.as_ref(), args.state.as_ref()) {
        Ok(opened) => opened,
        Err((m, status)) => return Err(CommandError::new(status, m)),
    };
    let read = || -> rusqlite::Result<_> {
        Ok((
            file.load_rows()?,
            file.load_runs()?,
            file.manifest_of()?,
            // None recorded in a state file of a version before lookups.
            file.load_lookups().map_or(0, |l| l.len()),
            file.load_notes()?,
        ))
    };
    let (rows, runs, manifest, contacts_resolved, groups) = match read() {
        Ok(r) => r,
        Err(e) => {
            return Err(CommandError::stopped(format!(
                "cannot read state file {}: {e}",
                path.display()
            )));
        }
    };
    let status = build(&path, &rows, runs, manifest, contacts_resolved, groups);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
        return Ok(ExitStatus::Success);
    }
    // The server's messages and the manifest's file names, escaped (see `terminal`).
    let mut out = crate::terminal::Printable(out);
    write_rows(&mut out, &status)?;
    write_failures(&mut out, &status)?;
    write_runs(&mut out, &status)?;
    Ok(ExitStatus::Success)
}

/// The state file, its manifest, rows by state and bytes.
fn write_rows(out: &mut impl Write, status: &Status) -> std::io::Result<()> {
    writeln!(out, "State file: {}", status.state)?;
    if let Some(m) = &status.manifest {
        writeln!(out, "Manifest:   {m}")?;
    }
    let done = status.by_state["done"];
    // Rows `undo` took back are not to go: `run --redo-removed` takes them up again.
    let undone = status.by_state["removing"] + status.by_state["removed"];
    writeln!(
        out,
        "Rows:       {} ({done} done, {} to go)",
        status.rows,
        status.rows - done - undone
    )?;
    for state in RowState::ALL {
        writeln!(
            out,
            "  {:<10} {}",
            state.as_str(),
            status.by_state[state.as_str()]
        )?;
    }
    writeln!(
        out,
        "Bytes:      {} done, {} to go",
        human_bytes(status.bytes_done),
        human_bytes(status.bytes_to_do)
    )?;
    if status.rows_by_email > 0 || status.contacts_resolved > 0 {
        writeln!(
            out,
            "Contacts:   {} by email resolved ({} {} by email)",
            status.contacts_resolved,
            status.rows_by_email,
            if status.rows_by_email == 1 {
                "row names its contact"
            } else {
                "rows name their contact"
            }
        )?;
    }
    let n = &status.notes;
    if !n.list.is_empty() {
        writeln!(
            out,
            "Notes:      {} created, {} asked for (a rerun settles them), {} to create",
            n.created, n.intent, n.pending
        )?;
        if n.removing + n.removed > 0 {
            writeln!(
                out,
                "            {} deleted by undo, {} being deleted (undo again settles them)",
                n.removed, n.removing
            )?;
        }
    }
    Ok(())
}

/// Failures grouped by kind, with a few examples each.
fn write_failures(out: &mut impl Write, status: &Status) -> std::io::Result<()> {
    if !status.failures.is_empty() {
        writeln!(out, "Failures:")?;
        for g in &status.failures {
            let what = if g.retryable {
                "retryable: a rerun tries again"
            } else {
                "for good: fix, then rerun"
            };
            writeln!(
                out,
                "  {} ({} {}, {what})",
                g.kind,
                g.rows,
                if g.rows == 1 { "row" } else { "rows" }
            )?;
            for e in &g.examples {
                writeln!(
                    out,
                    "    line {}: {}: {}",
                    e.line,
                    crate::manifest::cut(&e.file),
                    e.error
                )?;
            }
        }
    }
    Ok(())
}

/// Every run so far.
fn write_runs(out: &mut impl Write, status: &Status) -> std::io::Result<()> {
    writeln!(out, "Runs:")?;
    if status.runs.is_empty() {
        writeln!(out, "  none yet")?;
    }
    for r in &status.runs {
        let end = match (&r.finished_at, r.exit_code) {
            (Some(at), Some(code)) => format!("ended {at}, exit {code}"),
            _ => "running, or stopped without an end (killed)".to_string(),
        };
        writeln!(
            out,
            "  #{} started {}, {end}: {} done, {} failed, {} API calls, {} retries, {} throttled",
            r.id, r.started_at, r.rows_done, r.rows_failed, r.api_calls, r.retries, r.throttles
        )?;
    }
    Ok(())
}
