//! What is left to do: the manifest's rows as the state file records them, and, from the state
//! file and the files as they are now, what a run does with each row.

use std::collections::HashMap;

use super::config::Choices;
use crate::checkpoint::{self, NewRow, Refresh, RowState, StoredRow};
use crate::failure::FailureKind;
use crate::manifest::{ProblemKind, Severity, email_key};
use crate::pipeline::Plan;
use crate::preflight::Checked;

/// The rows of a checked manifest as the checkpoint records them; invalid rows carry their
/// errors. Rows of identical meaning after the first are left out (they are errors already).
pub fn manifest_rows(checked: &Checked) -> Vec<NewRow> {
    let mut errors: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut kinds: HashMap<u64, Vec<ProblemKind>> = HashMap::new();
    for p in &checked.manifest.problems {
        if let (Severity::Error, Some(line)) = (p.severity, p.line) {
            errors.entry(line).or_default().push(&p.message);
            kinds.entry(line).or_default().push(p.kind);
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
        let mut new = NewRow::from_row(row, checked.manifest.path_of(row), size, mtime, rejected);
        new.rejected_kind = rejected_kind(kinds.get(&row.line).map_or(&[], Vec::as_slice));
        if new.contact_id.is_empty()
            && let Some(id) = checked.resolved.get(&email_key(&new.contact_email))
        {
            new.contact_id = id.clone();
        }
        push(new);
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
        let mut new = NewRow::from_unparsed(u, &checked.manifest.base, reason);
        new.rejected_kind = rejected_kind(kinds.get(&u.line).map_or(&[], Vec::as_slice));
        push(new);
    }
    rows
}

/// The kind a rejected row is recorded with: its problem's own name, the one `check --json`
/// gives it (`file_too_large`), so that one failure has one name in `check`, `status` and
/// `report`. A row with several problems takes its first one's (its message lists them all).
fn rejected_kind(problems: &[ProblemKind]) -> FailureKind {
    problems
        .first()
        .map_or(FailureKind::Invalid, |p| FailureKind::of_problem(*p))
}

/// What a run will do with each row of the manifest.
#[derive(Default)]
pub struct Work {
    pub todo: Vec<(StoredRow, Plan)>,
    pub already_done: usize,
    pub changed: Vec<StoredRow>,
    pub failed_permanent: Vec<StoredRow>,
    pub rejected: usize,
    /// The rejected rows, for the summary's `failures` (their kind and message).
    pub rejected_rows: Vec<StoredRow>,
    /// Note groups whose `POST /notes` may have been sent (in `intent`): each lists its
    /// contact's notes (at least one call) before it creates its note.
    pub notes_unsettled: usize,
}

impl Work {
    pub fn count(&self, plan: Plan) -> usize {
        self.todo.iter().filter(|(_, p)| *p == plan).count()
    }

    /// The bytes still to upload (the rows from step 1).
    pub fn bytes(&self) -> u64 {
        self.bytes_of(&[Plan::Upload])
    }

    /// The storage the rows still need: those to upload, and those uploaded whose attach was
    /// never sent (the account is charged at step 3). Not the rows to verify: their attach may
    /// have taken effect (a kill, a lost answer), and counting them again would stop every rerun
    /// of a nearly full account before the check that settles them.
    pub fn storage_needed(&self) -> u64 {
        self.bytes_of(&[Plan::Upload, Plan::Attach])
    }

    fn bytes_of(&self, plans: &[Plan]) -> u64 {
        self.todo
            .iter()
            .filter(|(_, p)| plans.contains(p))
            .map(|(r, _)| r.size)
            .sum()
    }

    /// API calls the rows need: 1 to attach, 2 to verify and attach, and to upload and attach
    /// 2, or with `reuse_forms` 1 and one form per contact (its form carries its files: a
    /// contact with more files than one form's life holds needs more, which this leaves out);
    /// 1 for each note to create, and 1 more (a list) for each whose outcome is unknown. The
    /// snapshot reads before a record's first attach are left out too: where links do not show
    /// the key, about one per contact and record type, once (see `pipeline::snapshots`).
    pub fn api_calls(&self, reuse_forms: bool) -> usize {
        let mut contacts = std::collections::HashSet::new();
        let mut calls = 0;
        for (row, plan) in &self.todo {
            calls += match plan {
                Plan::Attach => 1,
                Plan::Verify => 2,
                Plan::Upload if !reuse_forms => 2,
                Plan::Upload => {
                    // A row by email not looked up yet: its email (any case) stands for it.
                    let contact = match row.contact_id.is_empty() {
                        true => row.contact_email.to_lowercase(),
                        false => row.contact_id.clone(),
                    };
                    1 + usize::from(contacts.insert(contact))
                }
            };
        }
        calls + self.notes_to_create().len() + self.notes_unsettled
    }

    /// The note groups whose rows wait for a note not yet recorded, with their row counts.
    pub fn notes_to_create(&self) -> HashMap<String, usize> {
        let mut groups: HashMap<String, usize> = HashMap::new();
        for (row, _) in &self.todo {
            if let Some(group) = row
                .note
                .group
                .as_ref()
                .filter(|_| row.reference_id.is_empty())
            {
                *groups.entry(group.clone()).or_default() += 1;
            }
        }
        groups
    }
}

/// Decides, from the state file and the files as they are now, what is left of each row.
///
/// About 80 lines: one match over a row's state, the "a rerun" column of docs/state-file.md's table of
/// states, kept in one place so that each state's rule can be read against it.
pub fn plan(
    new_rows: &[NewRow],
    stored: Vec<StoredRow>,
    choices: &Choices,
) -> (Work, Vec<Refresh>) {
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
            RowState::Done if changed && choices.reupload_changed && new.rejected.is_none() => {
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
                work.rejected_rows.push(row.clone());
                None
            }
            // Whether its attach took effect was not told yet (a state file of an earlier
            // version held such rows for a person): the record is read again and settles it. An
            // attach was sent only after its upload's ETag was recorded: one without was never
            // sent (it waited for another row of its name and size) and starts over.
            RowState::Failed
                if row.error_kind == Some(FailureKind::AttachUnsettled)
                    && row.s3_key.is_some()
                    && row.etag.is_some() =>
            {
                Some(Plan::Verify)
            }
            RowState::Failed if row.retryable == Some(false) && !choices.retry_failed => {
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
        if plan != Plan::Upload && changed {
            // Uploaded before it changed: the uploaded version is settled (attached once), and
            // the change is reported, for `--reupload-changed` once the row is done.
            work.changed.push(row.clone());
        }
        if plan == Plan::Upload && changed {
            row.size = new.size;
            row.mtime_ns = new.mtime_ns;
            refresh.push(Refresh {
                key: row.key.clone(),
                size: new.size,
                mtime_ns: new.mtime_ns,
            });
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
