//! `opcrm-import verify`: the live account against the state file. Every record a done row
//! attaches to, and every note the tool created, is read once; the done rows' attachments (by
//! the ids recorded) and the notes' texts are compared with what the record shows. Nothing is
//! written, to the account or to the state file.
//!
//! In parts: `judge` (what each record should hold and the verdicts, no I/O), `read` (the
//! reads, through a run's rate limit, throttle gate and retries, with the progress display),
//! `output` (the report, for a person or as JSON).

mod judge;
mod output;
mod read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ExitStatus;
use crate::checkpoint::{NoteGroup, StoredRow};
use crate::cli::VerifyArgs;
use crate::error::{CommandError, CommandResult, ignore_broken_pipe};
use crate::pipeline::Settings;
use crate::progress::Mode;
use crate::remote::{self, Client, Credentials, RemoteError};
use judge::{Duplicate, LineProblem, NoteProblem, Plan, RecordKey, Verdict};

/// `opcrm-import verify`, with the API and credentials from the environment.
pub fn run(args: &VerifyArgs) -> CommandResult {
    let (client, settings) = remote(args)?;
    let (path, rows, notes, replaced) = load(args)?;
    let mut plan = Plan::new(&rows, &notes);
    // Earlier versions of files uploaded again (`--reupload-changed`) are the state file's own:
    // never someone else's duplicate.
    plan.recorded.extend(replaced.iter().map(String::as_str));
    let mut report = Report::new(&path, &args.manifest, &plan);
    let mode = Mode::choose(args.no_progress);
    let cost = read::read_all(client, settings, plan.keys(), mode, |key, read| {
        report.add(key, read, &plan)
    })
    .map_err(|e| CommandError::stopped(format!("cannot start the reads: {e}")))?;
    report.counts.api_calls = cost.api_calls;
    report.counts.retries = cost.retries;
    report.counts.throttles = cost.throttles;
    if let Some(refused) = report.refused.take() {
        return Err(CommandError::stopped(refused));
    }
    report.sort();
    let status = report.status();
    // A reader that closed stdout changes nothing of what was found.
    ignore_broken_pipe(output::print(&report, args.json))?;
    Ok(status)
}

/// The client and the settings of the reads: a run's defaults, with `--rate`, `--burst` and
/// `--retries`; the credentials and the API from the environment, as `run` takes them.
fn remote(args: &VerifyArgs) -> Result<(Client, Settings), CommandError> {
    let credentials =
        Credentials::from_env(args.api_key_file.as_deref()).map_err(CommandError::stopped)?;
    let url = remote::api_url_from_env().map_err(|e| CommandError::stopped(format!("{e:#}")))?;
    let client = Client::new(url, credentials)?;
    let settings = Settings {
        rate: args.rate.0,
        burst: args.burst,
        retries: args.retries,
        ..Settings::default()
    };
    Ok((client, settings))
}

/// The state file's rows and note groups, read only; a state file that belongs to another
/// manifest is refused, as `run` refuses it.
/// The state file's path, rows, note groups, and attachments rows held before.
type Loaded = (PathBuf, Vec<StoredRow>, Vec<NoteGroup>, Vec<String>);

fn load(args: &VerifyArgs) -> Result<Loaded, CommandError> {
    let (path, file) = crate::status::open(Some(&args.manifest), args.state.as_ref())
        .map_err(|(m, status)| CommandError::new(status, m))?;
    let cannot_read = |e: rusqlite::Error| {
        CommandError::stopped(format!("cannot read state file {}: {e}", path.display()))
    };
    let manifest = crate::run::manifest_id(&args.manifest);
    match file.manifest_of().map_err(cannot_read)? {
        Some(recorded) if recorded != manifest => {
            return Err(CommandError::stopped(format!(
                "state file {} belongs to the manifest {recorded}, not {manifest}",
                path.display()
            ))
            .with_hint("give that manifest, or its state file with --state"));
        }
        _ => {}
    }
    let rows = file.load_rows().map_err(cannot_read)?;
    let notes = file.load_notes().map_err(cannot_read)?;
    let replaced = file.replaced_attachment_ids().map_err(cannot_read)?;
    Ok((path, rows, notes, replaced))
}

/// What `verify` found (the `--json` document; its shape is documented in docs/verify.md).
#[derive(Debug, Serialize)]
pub struct Report {
    state: String,
    manifest: String,
    /// Every done row and every created note as recorded, and every record read.
    ok: bool,
    counts: Counts,
    /// The lines whose verdict is not `ok`, by line.
    problems: Vec<LineProblem>,
    /// The created notes that are gone or changed.
    notes: Vec<NoteProblem>,
    /// The attachments on the records read that have a done row's name and size but that no
    /// row recorded.
    duplicates: Vec<Duplicate>,
    /// The records that could not be read, and why: their rows and notes are not checked.
    unread: Vec<Unread>,
    /// The first refusal of the credentials: the command stops with it.
    #[serde(skip)]
    refused: Option<RemoteError>,
}

#[derive(Debug, Default, Serialize)]
struct Counts {
    /// The rows of the state file.
    rows: usize,
    /// The done rows, each verified (unless its record could not be read).
    done: usize,
    ok: usize,
    missing: usize,
    changed: usize,
    duplicate: usize,
    /// Done rows whose record could not be read.
    not_checked: usize,
    /// The rows not done, by state: not verified.
    not_done: BTreeMap<&'static str, usize>,
    notes: NoteCounts,
    records: usize,
    api_calls: u64,
    retries: u64,
    throttles: u64,
}

#[derive(Debug, Default, Serialize)]
struct NoteCounts {
    created: usize,
    ok: usize,
    missing: usize,
    changed: usize,
    not_checked: usize,
}

/// A record that could not be read.
#[derive(Debug, Serialize)]
struct Unread {
    reference_type: crate::onepagecrm::ReferenceType,
    reference_id: String,
    /// The lines of the done rows on it, and of a created note's rows.
    lines: Vec<u64>,
    error: String,
}

impl Report {
    fn new(state: &Path, manifest: &Path, plan: &Plan<'_>) -> Self {
        Self {
            state: state.display().to_string(),
            manifest: manifest.display().to_string(),
            ok: true,
            counts: Counts {
                rows: plan.rows,
                done: plan.done,
                not_done: plan.not_done.clone(),
                notes: NoteCounts {
                    created: plan.notes_created,
                    ..NoteCounts::default()
                },
                records: plan.records.len(),
                ..Counts::default()
            },
            problems: Vec::new(),
            notes: Vec::new(),
            duplicates: Vec::new(),
            unread: Vec::new(),
            refused: None,
        }
    }

    /// Takes in one record as read; the problems it showed.
    fn add(&mut self, key: &RecordKey, read: read::Read, plan: &Plan<'_>) -> usize {
        let expected = &plan.records[key];
        let found = match read {
            Ok(found) => found,
            Err(e) => {
                self.unread(key, e, plan);
                return 0;
            }
        };
        let judged = judge::judge(key, expected, found.as_ref(), plan);
        let c = &mut self.counts;
        c.ok += judged.ok;
        for p in &judged.problems {
            match p.verdict {
                Verdict::Missing => c.missing += 1,
                Verdict::Changed => c.changed += 1,
                Verdict::Duplicate => c.duplicate += 1,
            }
        }
        match &judged.note_problem {
            _ if !judged.note_checked => {}
            None => c.notes.ok += 1,
            Some(p) if p.verdict == Verdict::Missing => c.notes.missing += 1,
            Some(_) => c.notes.changed += 1,
        }
        let problems = judged.problems.len() + usize::from(judged.note_problem.is_some());
        self.problems.extend(judged.problems);
        self.notes.extend(judged.note_problem);
        self.duplicates.extend(judged.duplicates);
        problems
    }

    /// A record that could not be read: its rows and note are not checked.
    fn unread(
        &mut self,
        (reference_type, reference_id): &RecordKey,
        e: RemoteError,
        plan: &Plan<'_>,
    ) {
        let key = (*reference_type, reference_id.clone());
        let expected = &plan.records[&key];
        let mut lines: Vec<u64> = expected.done.iter().map(|r| r.line).collect();
        self.counts.not_checked += expected.done.len();
        if let Some(group) = expected.note {
            self.counts.notes.not_checked += 1;
            lines.extend(
                plan.note_lines
                    .get(group.group.as_str())
                    .into_iter()
                    .flatten(),
            );
        }
        lines.sort_unstable();
        lines.dedup();
        self.unread.push(Unread {
            reference_type: *reference_type,
            reference_id: reference_id.clone(),
            lines,
            error: e.to_string(),
        });
        if matches!(e, RemoteError::Unauthorized { .. }) && self.refused.is_none() {
            self.refused = Some(e);
        }
    }

    /// Every list in a steady order (the reads end in any order), and `ok` set.
    fn sort(&mut self) {
        self.problems.sort_by_key(|p| p.line);
        self.notes
            .sort_by(|a, b| (a.lines.first(), &a.note_id).cmp(&(b.lines.first(), &b.note_id)));
        self.duplicates.sort_by(|a, b| {
            (a.lines.first(), &a.attachment_id).cmp(&(b.lines.first(), &b.attachment_id))
        });
        self.unread.sort_by(|a, b| {
            (a.lines.first(), &a.reference_id).cmp(&(b.lines.first(), &b.reference_id))
        });
        self.ok = self.problems.is_empty() && self.notes.is_empty() && self.unread.is_empty();
    }

    /// 3 when some record could not be read (what was found is printed, but it is not all);
    /// else 1 when some line or note is not as recorded; else 0.
    fn status(&self) -> ExitStatus {
        if !self.unread.is_empty() {
            ExitStatus::Stopped
        } else if !self.problems.is_empty() || !self.notes.is_empty() {
            ExitStatus::Failed
        } else {
            ExitStatus::Success
        }
    }
}
