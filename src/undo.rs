//! `opcrm-import undo`: deletes from OnePageCRM exactly what a state file made, each thing once.
//!
//! What: every attachment the state file recorded (`DELETE /attachments/{id}`, by the id
//! recorded), then every note it created that then holds no attachment (`DELETE /notes/{id}`,
//! after a read of the note: OpenAPI says a deleted note takes its attachments with it, so a note
//! that holds files someone else added is kept, and named). Nothing else is ever deleted.
//!
//! How, exactly once: under the run lock, each delete's intent (`removing`) is committed before
//! the request, and its outcome after; a 404 says the thing is gone (deleted by an answer that was
//! lost, or by someone else), and counts as removed. An undo killed at any point leaves each row
//! `done`, `removing` or `removed`, and the next undo sends the deletes of the first two again by
//! the same ids. Rows whose attach is in doubt (a run was cut short after sending it) hold an
//! attachment whose id is not recorded yet: they are named, not undone, until a `run` settles
//! them.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use crate::ExitStatus;
use crate::checkpoint::{
    NoteGroup, NoteState, ReplacedAttachment, RowState, StateFile, StoreError, StoredRow,
};
use crate::cli::{Lines, UndoArgs};
use crate::error::{CommandError, CommandResult};
use crate::onepagecrm::ReferenceType;
use crate::pipeline::{Context, Settings};
use crate::remote::api::Deleted;
use crate::remote::{self, Client, Credentials, RemoteError};

/// The attachments the question before an undo lists (`--dry-run` lists them all).
const SHOWN: usize = 20;

/// Deletes at once (each one call; the rate limit is what bounds them).
const CONCURRENCY: usize = 4;

pub fn run(args: &UndoArgs) -> CommandResult {
    let path = crate::status::state_path(args.manifest.as_ref(), args.state.as_ref())
        .map_err(CommandError::usage)?;
    if !path.exists() {
        return Err(CommandError::usage(format!(
            "no state file at {}: nothing was run with it, so there is nothing to undo",
            path.display()
        )));
    }
    let state = StateFile::open(&path).map_err(CommandError::stopped)?;
    let cannot = |e| CommandError::stopped(format!("cannot read {}: {e}", path.display()));
    let rows = state.load_rows().wait().map_err(cannot)?;
    let notes = state.load_notes().wait().map_err(cannot)?;
    let replaced = state.replaced_attachments().wait().map_err(cannot)?;
    let mut plan = Plan::of(rows, notes, args.lines.as_ref());
    plan.replaced = replaced
        .into_iter()
        .filter(|a| args.lines.as_ref().is_none_or(|l| l.contains(a.line)))
        .collect();
    if args.dry_run || plan.is_empty() {
        state.close();
        return print_plan(&plan, args, &path);
    }
    if !args.yes && !confirmed(&plan, args, &path)? {
        state.close();
        say("Nothing deleted.");
        return Ok(ExitStatus::Failed);
    }
    let credentials =
        Credentials::from_env(args.api_key_file.as_deref()).map_err(CommandError::stopped)?;
    let url = remote::api_url_from_env().map_err(|e| CommandError::stopped(format!("{e:#}")))?;
    let client = Client::new(url, credentials).map_err(CommandError::stopped)?;
    let settings = Settings {
        rate: args.rate.0,
        burst: args.burst,
        retries: args.retries,
        ..Settings::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CommandError::stopped)?;
    let ctx = Arc::new(Context::new(client, state.clone(), settings));
    let outcome = runtime.block_on(execute(&ctx, &plan));
    drop(ctx);
    drop(runtime);
    state.close();
    let outcome = outcome.map_err(CommandError::stopped)?;
    print_outcome(&outcome, &plan, args, &path)
}

/// What an undo deletes, and what it leaves.
#[derive(Default)]
struct Plan {
    /// Rows whose attachment to delete (`done`, or `removing` from an undo cut short).
    rows: Vec<StoredRow>,
    /// Attachments rows held before `--reupload-changed` replaced them.
    replaced: Vec<ReplacedAttachment>,
    /// Created notes to delete once none of their rows holds an attachment, each with its rows.
    notes: Vec<(NoteGroup, Vec<StoredRow>)>,
    /// Rows whose attach may have taken effect without its id recorded: not undone.
    in_doubt: Vec<StoredRow>,
    /// Rows removed before, counted.
    removed_before: usize,
}

impl Plan {
    fn of(rows: Vec<StoredRow>, notes: Vec<NoteGroup>, lines: Option<&Lines>) -> Self {
        let mut plan = Plan::default();
        let mut by_group: HashMap<String, Vec<StoredRow>> = HashMap::new();
        let mut touched: HashMap<String, bool> = HashMap::new();
        for row in rows {
            let selected = lines.is_none_or(|l| l.contains(row.line));
            if let Some(group) = &row.note.group {
                *touched.entry(group.clone()).or_default() |= selected;
                by_group.entry(group.clone()).or_default().push(row.clone());
            }
            if !selected {
                continue;
            }
            match row.state {
                RowState::Done | RowState::Removing if row.attachment_id.is_some() => {
                    plan.rows.push(row)
                }
                RowState::Removed => plan.removed_before += 1,
                _ if holds_unrecorded(&row) => plan.in_doubt.push(row),
                _ => {}
            }
        }
        for group in notes {
            let wanted = matches!(group.state, NoteState::Created | NoteState::Removing)
                && group.note_id.is_some()
                && (lines.is_none() || touched.get(&group.group).copied().unwrap_or(false));
            if wanted {
                let rows = by_group.remove(&group.group).unwrap_or_default();
                plan.notes.push((group, rows));
            }
        }
        plan
    }

    fn is_empty(&self) -> bool {
        self.attachments() == 0 && self.notes.is_empty() && self.in_doubt.is_empty()
    }

    fn attachments(&self) -> usize {
        self.rows.len() + self.replaced.len()
    }

    /// API calls: one an attachment, and a read and a delete a note.
    fn calls(&self) -> usize {
        self.attachments() + 2 * self.notes.len()
    }

    /// Every attachment to delete.
    fn targets(&self) -> impl Iterator<Item = Target<'_>> {
        let rows = self.rows.iter().map(Target::Row);
        rows.chain(self.replaced.iter().map(Target::Replaced))
    }
}

/// A row that may hold an attachment whose id the state file does not have: its attach was
/// sent (or may have been) and its outcome never recorded (a file's after its upload, a link's
/// once recorded as under way).
fn holds_unrecorded(row: &StoredRow) -> bool {
    match row.state {
        RowState::Attaching => true,
        RowState::Failed => (row.s3_key.is_some() && row.etag.is_some()) || row.link_sent(),
        _ => false,
    }
}

/// A row that holds an attachment once this undo is over, as far as the state file knows.
fn still_holds(row: &StoredRow, removed: &HashSet<i64>) -> bool {
    match row.state {
        RowState::Done | RowState::Removing => !removed.contains(&row.id),
        _ => holds_unrecorded(row),
    }
}

/// Asks on the terminal; refuses (usage) when there is none.
fn confirmed(plan: &Plan, args: &UndoArgs, path: &std::path::Path) -> Result<bool, CommandError> {
    if !std::io::stdin().is_terminal() {
        return Err(CommandError::usage(
            "undo deletes from the live account and stdin is not a terminal to ask on: add --yes (see what it deletes with --dry-run first)",
        ));
    }
    // What it will delete, the first lines of it (`--dry-run` lists it all).
    let mut shown = Vec::new();
    write_plan(&mut shown, &plan_doc(plan, args, path), Some(SHOWN))
        .map_err(CommandError::stopped)?;
    eprint!("{}", String::from_utf8_lossy(&shown));
    eprint!(
        "Delete {} attachments and up to {} notes from OnePageCRM? Type yes to go on: ",
        plan.attachments(),
        plan.notes.len()
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(CommandError::stopped)?;
    Ok(matches!(answer.trim(), "y" | "yes" | "Y" | "YES" | "Yes"))
}

/// How an undo ended.
#[derive(Default, Serialize)]
struct Outcome {
    attachments_deleted: usize,
    /// Deleted before this undo's request took effect (a lost answer, or someone else): a 404.
    attachments_already_gone: usize,
    failed: Vec<Failure>,
    notes_deleted: usize,
    notes_already_gone: usize,
    notes_kept: Vec<KeptNote>,
}

#[derive(Serialize)]
struct Failure {
    /// The row's manifest line, or none for a note.
    line: Option<u64>,
    what: String,
    id: String,
    message: String,
    /// Whether the next undo sends it again (the outcome is not known, or the failure passes).
    retryable: bool,
}

#[derive(Serialize)]
struct KeptNote {
    note_id: String,
    contact_id: String,
    /// Attachments it holds that no row of this state file attached.
    attachments: usize,
}

async fn execute(ctx: &Arc<Context>, plan: &Plan) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let mut removed: HashSet<i64> = HashSet::new();
    let mut results = futures_util::stream::iter(plan.targets())
        .map(|target| async move { (target.row_id(), remove(ctx, target).await) })
        .buffer_unordered(CONCURRENCY);
    while let Some((row_id, result)) = results.next().await {
        match result? {
            Ok(Deleted::Now) => outcome.attachments_deleted += 1,
            Ok(Deleted::AlreadyGone) => outcome.attachments_already_gone += 1,
            Err(failure) => {
                outcome.failed.push(failure);
                continue;
            }
        }
        if let Some(id) = row_id {
            removed.insert(id);
        }
    }
    drop(results);
    if let Some(why) = stopped(ctx) {
        return Err(why);
    }
    for (group, rows) in &plan.notes {
        if rows.iter().any(|r| still_holds(r, &removed)) {
            continue;
        }
        remove_note(ctx, group, &mut outcome).await?;
    }
    Ok(outcome)
}

/// One attachment to delete: a row's, or one a row held before its file was uploaded again.
#[derive(Clone, Copy)]
enum Target<'a> {
    Row(&'a StoredRow),
    Replaced(&'a ReplacedAttachment),
}

impl Target<'_> {
    fn attachment_id(&self) -> &str {
        match self {
            Target::Row(r) => r.attachment_id.as_deref().unwrap_or_default(),
            Target::Replaced(a) => &a.attachment_id,
        }
    }

    /// The row whose attachment this is (not a replaced one's row: it holds another).
    fn row_id(&self) -> Option<i64> {
        match self {
            Target::Row(r) => Some(r.id),
            Target::Replaced(_) => None,
        }
    }

    fn describe(&self) -> (u64, String) {
        match self {
            Target::Row(r) => (r.line, format!("attachment of {}", r.shown_file())),
            Target::Replaced(a) => (
                a.line,
                format!(
                    "earlier attachment of {} (before --reupload-changed)",
                    a.file
                ),
            ),
        }
    }

    async fn removing(&self, state: &StateFile) -> Result<bool, StoreError> {
        match self {
            Target::Row(r) => state.row_removing(r.id).await,
            Target::Replaced(a) => state.replaced_removing(&a.attachment_id).await,
        }
    }

    async fn removed(&self, state: &StateFile) -> Result<(), StoreError> {
        match self {
            Target::Row(r) => state.row_removed(r.id).await,
            Target::Replaced(a) => state.replaced_removed(&a.attachment_id).await,
        }
    }

    async fn kept(&self, state: &StateFile) -> Result<(), StoreError> {
        match self {
            Target::Row(r) => state.row_kept(r.id).await,
            Target::Replaced(a) => state.replaced_kept(&a.attachment_id).await,
        }
    }
}

/// Why the undo stopped (bad credentials), if it did.
fn stopped(ctx: &Context) -> Option<String> {
    (ctx.stop_reason() == crate::pipeline::Stop::Credentials).then(|| {
        "the API refused the credentials (401): nothing more was deleted; undo again once they are right".to_string()
    })
}

/// Deletes one attachment: the intent first, then the request, then what it found. `Err` only
/// when the state file cannot be written (the undo stops).
async fn remove(ctx: &Context, target: Target<'_>) -> Result<Result<Deleted, Failure>, String> {
    let store = |e| format!("cannot write the state file: {e}");
    let id = target.attachment_id().to_string();
    if !target.removing(&ctx.state).await.map_err(store)? {
        return Ok(Ok(Deleted::AlreadyGone));
    }
    match ctx.api_retrying(|| ctx.client.delete_attachment(&id)).await {
        Ok(deleted) => {
            target.removed(&ctx.state).await.map_err(store)?;
            Ok(Ok(deleted))
        }
        Err(e) => {
            let refused = refused(&e);
            if refused {
                target.kept(&ctx.state).await.map_err(store)?;
            }
            let (line, what) = target.describe();
            Ok(Err(Failure {
                line: Some(line),
                what,
                id,
                message: e.to_string(),
                retryable: !refused || e.is_retryable(),
            }))
        }
    }
}

/// An answer that says the delete did not take effect (a 4xx other than 404 and 429).
fn refused(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Api { status, .. } if (400..500).contains(status))
}

/// Deletes one created note if it holds no attachment, after reading it.
async fn remove_note(
    ctx: &Context,
    group: &NoteGroup,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let store = |e| format!("cannot write the state file: {e}");
    let Some(id) = group.note_id.clone() else {
        return Ok(());
    };
    let read = ctx
        .api_retrying(|| ctx.client.record(ReferenceType::Note, &id))
        .await;
    let deleted = match read {
        Ok(note) if !note.attachments.is_empty() => {
            ctx.state.note_kept(&group.group).await.map_err(store)?;
            outcome.notes_kept.push(KeptNote {
                note_id: id,
                contact_id: group.contact_id.clone(),
                attachments: note.attachments.len(),
            });
            return Ok(());
        }
        Ok(_) => {
            ctx.state.note_removing(&group.group).await.map_err(store)?;
            ctx.api_retrying(|| ctx.client.delete_note(&id)).await
        }
        Err(RemoteError::Api { status: 404, .. }) => {
            ctx.state.note_removing(&group.group).await.map_err(store)?;
            Ok(Deleted::AlreadyGone)
        }
        Err(e) => Err(e),
    };
    match deleted {
        Ok(d) => {
            ctx.state.note_removed(&group.group).await.map_err(store)?;
            match d {
                Deleted::Now => outcome.notes_deleted += 1,
                Deleted::AlreadyGone => outcome.notes_already_gone += 1,
            }
        }
        Err(e) => {
            if refused(&e) {
                ctx.state.note_kept(&group.group).await.map_err(store)?;
            }
            outcome.failed.push(Failure {
                line: None,
                what: format!("note of contact {}", group.contact_id),
                id,
                message: e.to_string(),
                retryable: !refused(&e) || e.is_retryable(),
            });
        }
    }
    Ok(())
}

fn say(line: &str) {
    crate::terminal::say(line);
}

#[derive(Serialize)]
struct PlanDoc<'a> {
    state: String,
    dry_run: bool,
    attachments: Vec<PlannedRow<'a>>,
    notes: Vec<PlannedNote<'a>>,
    in_doubt: Vec<PlannedRow<'a>>,
    removed_before: usize,
    api_calls: usize,
    seconds: Option<f64>,
}

#[derive(Serialize)]
struct PlannedRow<'a> {
    line: u64,
    file: &'a str,
    reference_type: &'a str,
    reference_id: &'a str,
    attachment_id: Option<&'a str>,
    state: &'static str,
}

#[derive(Serialize)]
struct PlannedNote<'a> {
    contact_id: &'a str,
    note_id: Option<&'a str>,
}

fn planned(row: &StoredRow) -> PlannedRow<'_> {
    PlannedRow {
        line: row.line,
        file: row.shown_file(),
        reference_type: row.reference_type.as_str(),
        reference_id: &row.reference_id,
        attachment_id: row.attachment_id.as_deref(),
        state: row.state.as_str(),
    }
}

fn planned_replaced(a: &ReplacedAttachment) -> PlannedRow<'_> {
    PlannedRow {
        line: a.line,
        file: &a.file,
        reference_type: &a.reference_type,
        reference_id: &a.reference_id,
        attachment_id: Some(&a.attachment_id),
        state: "replaced",
    }
}

/// What an undo would delete, its calls and their time.
fn plan_doc<'a>(plan: &'a Plan, args: &UndoArgs, path: &std::path::Path) -> PlanDoc<'a> {
    PlanDoc {
        state: path.display().to_string(),
        dry_run: args.dry_run,
        attachments: plan
            .rows
            .iter()
            .map(planned)
            .chain(plan.replaced.iter().map(planned_replaced))
            .collect(),
        notes: plan
            .notes
            .iter()
            .map(|(g, _)| PlannedNote {
                contact_id: &g.contact_id,
                note_id: g.note_id.as_deref(),
            })
            .collect(),
        in_doubt: plan.in_doubt.iter().map(planned).collect(),
        removed_before: plan.removed_before,
        api_calls: plan.calls(),
        seconds: args.rate.0.map(|r| plan.calls() as f64 / r),
    }
}

/// `--dry-run` (or nothing to do): what an undo would delete, its calls and their time.
fn print_plan(plan: &Plan, args: &UndoArgs, path: &std::path::Path) -> CommandResult {
    let doc = plan_doc(plan, args, path);
    let status = match plan.in_doubt.is_empty() {
        true => ExitStatus::Success,
        false => ExitStatus::Failed,
    };
    let mut out = std::io::stdout().lock();
    let written = match args.json {
        true => serde_json::to_writer_pretty(&mut out, &doc)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        false => write_plan(&mut out, &doc, None),
    };
    crate::error::ignore_broken_pipe(written)?;
    Ok(status)
}

/// The plan for a person; `limit`: list that many attachments at most.
fn write_plan(out: &mut impl Write, doc: &PlanDoc, limit: Option<usize>) -> std::io::Result<()> {
    let show = |s: &str| crate::terminal::printable(s).into_owned();
    if doc.attachments.is_empty() && doc.notes.is_empty() {
        writeln!(out, "Nothing to undo in {}.", show(&doc.state))?;
    } else {
        let what = if doc.dry_run {
            "would delete"
        } else {
            "deletes"
        };
        writeln!(out, "Undo of {} {what}:", show(&doc.state))?;
        let limit = limit.unwrap_or(usize::MAX);
        for r in doc.attachments.iter().take(limit) {
            let earlier = match r.state {
                "replaced" => ", the file's version before --reupload-changed",
                _ => "",
            };
            writeln!(
                out,
                "  line {}: {} on {} {} (attachment {}{earlier})",
                r.line,
                show(r.file),
                r.reference_type,
                show(r.reference_id),
                show(r.attachment_id.unwrap_or_default())
            )?;
        }
        if doc.attachments.len() > limit {
            writeln!(
                out,
                "  ... and {} more (--dry-run lists them all)",
                doc.attachments.len() - limit
            )?;
        }
        for n in doc.notes.iter().take(limit) {
            writeln!(
                out,
                "  note {} of contact {}, if it then holds no attachment",
                show(n.note_id.unwrap_or_default()),
                show(n.contact_id)
            )?;
        }
        let time = doc.seconds.map_or_else(String::new, |s| {
            format!(
                ", about {}",
                crate::progress::human_duration(std::time::Duration::from_secs_f64(s))
            )
        });
        writeln!(
            out,
            "{} attachments, up to {} notes: {} API calls{time}.",
            doc.attachments.len(),
            doc.notes.len(),
            doc.api_calls
        )?;
    }
    write_in_doubt(out, &doc.in_doubt)?;
    if doc.removed_before > 0 {
        writeln!(
            out,
            "{} rows were removed by an earlier undo.",
            doc.removed_before
        )?;
    }
    Ok(())
}

fn write_in_doubt(out: &mut impl Write, rows: &[PlannedRow]) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{} rows are not undone: their attach may have taken effect and its id is not recorded (run the manifest first, which settles them, then undo again):",
        rows.len()
    )?;
    for r in rows {
        writeln!(
            out,
            "  line {}: {} ({})",
            r.line,
            crate::terminal::printable(r.file),
            r.state
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct OutcomeDoc<'a> {
    state: String,
    #[serde(flatten)]
    outcome: &'a Outcome,
    in_doubt: Vec<PlannedRow<'a>>,
    exit_code: u8,
}

fn print_outcome(
    outcome: &Outcome,
    plan: &Plan,
    args: &UndoArgs,
    path: &std::path::Path,
) -> CommandResult {
    let status = match outcome.failed.is_empty() && plan.in_doubt.is_empty() {
        true => ExitStatus::Success,
        false => ExitStatus::Failed,
    };
    let doc = OutcomeDoc {
        state: path.display().to_string(),
        outcome,
        in_doubt: plan.in_doubt.iter().map(planned).collect(),
        exit_code: status as u8,
    };
    let mut out = std::io::stdout().lock();
    let written = match args.json {
        true => serde_json::to_writer_pretty(&mut out, &doc)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        false => write_outcome(&mut out, &doc),
    };
    crate::error::ignore_broken_pipe(written)?;
    Ok(status)
}

fn write_outcome(out: &mut impl Write, doc: &OutcomeDoc) -> std::io::Result<()> {
    let o = doc.outcome;
    let show = |s: &str| crate::terminal::printable(s).into_owned();
    writeln!(out, "Undo of {}", show(&doc.state))?;
    writeln!(
        out,
        "  attachments deleted: {} ({} were gone already)",
        o.attachments_deleted + o.attachments_already_gone,
        o.attachments_already_gone
    )?;
    writeln!(
        out,
        "  notes deleted:       {} ({} were gone already)",
        o.notes_deleted + o.notes_already_gone,
        o.notes_already_gone
    )?;
    for k in &o.notes_kept {
        writeln!(
            out,
            "  kept note {} of contact {}: it holds {} attachments this state file did not make",
            show(&k.note_id),
            show(&k.contact_id),
            k.attachments
        )?;
    }
    for f in &o.failed {
        let line = f.line.map_or_else(String::new, |l| format!("line {l}: "));
        let again = if f.retryable {
            "undo again"
        } else {
            "not deleted"
        };
        writeln!(
            out,
            "  failed: {line}{} ({}): {} ({again})",
            show(&f.what),
            show(&f.id),
            show(&f.message)
        )?;
    }
    write_in_doubt(out, &doc.in_doubt)?;
    writeln!(
        out,
        "OnePageCRM keeps a deleted file's stored copy for a while: the account's storage is not given back at once."
    )
}
