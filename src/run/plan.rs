//! What is left to do: the manifest's rows as the state file records them ([`manifest_rows`]),
//! and, from the state file and the files as they are now, what a run does with each row
//! ([`decide`]), counted in a [`Work`]. A dry run plans the whole manifest at once ([`plan`]).

use std::collections::{HashMap, HashSet};

use super::config::Choices;
use crate::checkpoint::{self, NewRow, Now, PinState, RowState, StoredRow};
use crate::failure::FailureKind;
use crate::manifest::{ProblemKind, Severity, email_key};
use crate::pipeline::Plan;
use crate::preflight::Checked;

/// The rows of a checked manifest as the checkpoint records them; invalid rows carry their
/// errors. Rows of identical meaning after the first are left out (they are errors already);
/// identical lines that are not rows are each recorded: the second gets `~2`, and so on (a count
/// of identical lines, so it does not depend on their order). A run reads its manifest in
/// chunks ([`chunk_rows`]) and the state file does the same for the rows of all its chunks.
pub fn manifest_rows(checked: &Checked) -> Vec<NewRow> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for mut new in chunk_rows(checked) {
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
    }
    rows
}

/// The rows of a checked manifest (or chunk of one) as the checkpoint records them, each as it
/// is (see [`manifest_rows`] for rows of identical meaning).
pub fn chunk_rows(checked: &Checked) -> Vec<NewRow> {
    let mut errors: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut kinds: HashMap<u64, Vec<ProblemKind>> = HashMap::new();
    for p in &checked.manifest.problems {
        if let (Severity::Error, Some(line)) = (p.severity, p.line) {
            errors.entry(line).or_default().push(&p.message);
            kinds.entry(line).or_default().push(p.kind);
        }
    }
    let mut rows =
        Vec::with_capacity(checked.manifest.rows.len() + checked.manifest.unparsed.len());
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
        rows.push(new);
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
        rows.push(new);
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

/// What a run will do with the manifest's rows, counted (the rows themselves stay in the state
/// file and are read back in batches as the run takes them up: see `execute`). The rows listed
/// are the few a summary names: failed for good, rejected, changed since uploaded.
#[derive(Default)]
pub struct Work {
    /// Rows to take up, by plan (upload, attach, verify, pin).
    planned: [usize; 4],
    bytes_to_upload: u64,
    bytes_to_attach: u64,
    /// The contacts of the rows to upload (a contact by email not looked up yet: its email in
    /// lower case), for the forms they need.
    upload_contacts: HashSet<String>,
    /// Rows to upload whose contact is known (not an email still to look up).
    pub uploads_with_contact: usize,
    /// The first row to upload whose contact is known: the storage quota check asks its form.
    pub first_upload: Option<StoredRow>,
    /// The note groups whose rows wait for a note not yet recorded, with their row counts.
    notes: HashMap<String, usize>,
    pub already_done: usize,
    /// Rows `undo` took back (`--redo-removed` takes them up again).
    pub removed: usize,
    /// Of the rows to attach (`Plan::Attach`), those of links: nothing to upload before.
    pub links_to_attach: usize,
    pub changed: Vec<StoredRow>,
    pub failed_permanent: Vec<StoredRow>,
    pub rejected: usize,
    /// The rejected rows, for the summary's `failures` (their kind and message).
    pub rejected_rows: Vec<StoredRow>,
    /// Note groups whose `POST /notes` may have been sent (in `intent`): each lists its
    /// contact's notes (at least one call) before it creates its note.
    pub notes_unsettled: usize,
    /// Rows taken up whose attachment is to be pinned in this run (whatever their plan), and of
    /// those the ones whose pin may have been sent (the contact's pinned attachments are read
    /// first).
    pins: usize,
    pins_unsettled: usize,
}

fn index(plan: Plan) -> usize {
    match plan {
        Plan::Upload => 0,
        Plan::Attach => 1,
        Plan::Verify => 2,
        Plan::Pin => 3,
    }
}

impl Work {
    pub fn count(&self, plan: Plan) -> usize {
        self.planned[index(plan)]
    }

    /// The rows to take up.
    pub fn todo(&self) -> usize {
        self.planned.iter().sum()
    }

    /// The bytes still to upload (the rows from step 1).
    pub fn bytes(&self) -> u64 {
        self.bytes_to_upload
    }

    /// The storage the rows still need: those to upload, and those uploaded whose attach was
    /// never sent (the account is charged at step 3). Not the rows to verify: their attach may
    /// have taken effect (a kill, a lost answer), and counting them again would stop every rerun
    /// of a nearly full account before the check that settles them.
    pub fn storage_needed(&self) -> u64 {
        self.bytes_to_upload + self.bytes_to_attach
    }

    /// API calls the rows need: 1 to attach, 2 to verify and attach, and to upload and attach
    /// 2, or with `reuse_forms` 1 and one form per contact (its form carries its files: a
    /// contact with more files than one form's life holds needs more, which this leaves out);
    /// 1 for each note to create, and 1 more (a list) for each whose outcome is unknown; 1 for
    /// each pin, and 1 more (a list) for each pin whose outcome is unknown. The
    /// snapshot reads before a record's first attach are left out too: where links do not show
    /// the key, about one per contact and record type, once (see `pipeline::snapshots`).
    pub fn api_calls(&self, reuse_forms: bool) -> usize {
        let uploads = self.count(Plan::Upload);
        let forms = match reuse_forms {
            true => self.upload_contacts.len(),
            false => uploads,
        };
        uploads
            + forms
            + self.count(Plan::Attach)
            + 2 * self.count(Plan::Verify)
            + self.notes.len()
            + self.notes_unsettled
            + self.pins
            + self.pins_unsettled
    }

    /// The note groups whose rows wait for a note not yet recorded, with their row counts.
    pub fn notes_to_create(&self) -> &HashMap<String, usize> {
        &self.notes
    }

    /// Counts `row`, as [`decide`] found it.
    pub fn add(&mut self, row: &StoredRow, decision: Decision) {
        let plan = match decision {
            Decision::Run { plan, changed } => {
                if plan != Plan::Upload && changed {
                    // Uploaded before it changed: the uploaded version is settled (attached
                    // once), and the change is reported, for `--reupload-changed` once the row
                    // is done.
                    self.changed.push(row.clone());
                }
                plan
            }
            Decision::Done { changed } => {
                if changed {
                    self.changed.push(row.clone());
                }
                self.already_done += 1;
                return;
            }
            Decision::Rejected => {
                self.rejected += 1;
                self.rejected_rows.push(row.clone());
                return;
            }
            Decision::FailedForGood => {
                self.failed_permanent.push(row.clone());
                return;
            }
            Decision::Removed => {
                self.removed += 1;
                return;
            }
        };
        self.planned[index(plan)] += 1;
        match plan {
            Plan::Upload => {
                self.bytes_to_upload += row.size;
                // A row by email not looked up yet: its email (any case) stands for it.
                let contact = match row.contact_id.is_empty() {
                    true => row.contact_email.to_lowercase(),
                    false => row.contact_id.clone(),
                };
                self.upload_contacts.insert(contact);
                if !row.contact_id.is_empty() {
                    self.uploads_with_contact += 1;
                    if self.first_upload.is_none() {
                        self.first_upload = Some(row.clone());
                    }
                }
            }
            Plan::Attach if row.is_link() => self.links_to_attach += 1,
            Plan::Attach => self.bytes_to_attach += row.size,
            Plan::Verify => {}
            Plan::Pin => self.pins_unsettled += usize::from(row.pin_state.is_some()),
        }
        // Its pin follows its attach, or is all that is left of it.
        self.pins += usize::from(row.pin);
        if let Some(group) = row
            .note
            .group
            .as_ref()
            .filter(|_| row.reference_id.is_empty())
        {
            *self.notes.entry(group.clone()).or_default() += 1;
        }
    }
}

/// What a run does with one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Takes it up as `plan` says; `changed`: its file changed since it was recorded.
    Run {
        plan: Plan,
        changed: bool,
    },
    /// Done before (its file `changed` since, and kept as uploaded).
    Done {
        changed: bool,
    },
    Rejected,
    /// Failed for good in an earlier run (`--retry-failed` takes it up again); a done row whose
    /// pin the API refused is one too (its state stays `done`).
    FailedForGood,
    /// Taken back by `undo` (or being taken back: `undo` again settles it); `run
    /// --redo-removed` makes such rows new again before they are planned.
    Removed,
}

impl Decision {
    /// The plan of a row to take up.
    pub fn plan(self) -> Option<Plan> {
        match self {
            Decision::Run { plan, .. } => Some(plan),
            _ => None,
        }
    }

    /// A row to upload whose file changed: the state file takes its size and time now.
    pub fn refreshes(self) -> bool {
        matches!(
            self,
            Decision::Run {
                plan: Plan::Upload,
                changed: true
            }
        )
    }
}

/// Decides, from the state file and the row's file as it is `now`, what is left of a row.
///
/// One match over a row's state: the "a rerun" column of docs/state-file.md's table of states,
/// kept in one place so that each state's rule can be read against it (a link's in
/// [`decide_link`]).
pub fn decide(row: &StoredRow, now: Now, choices: &Choices) -> Decision {
    if row.is_link() {
        return decide_link(row, choices);
    }
    let changed = row.size != now.size || row.mtime_ns != now.mtime_ns;
    let plan = match row.state {
        RowState::Done if changed && choices.reupload_changed && now.valid => Plan::Upload,
        // Attached, and the manifest asks for a pin not recorded as made (added since, or its
        // answer lost, or failed): taken up for the pin alone. One the API refused for good is
        // tried again only when asked, as a row failed for good.
        RowState::Done if row.pin_owed() && row.attachment_id.is_some() => {
            if row.pin_state == Some(PinState::Refused) && !choices.retry_failed {
                return Decision::FailedForGood;
            }
            Plan::Pin
        }
        RowState::Done => return Decision::Done { changed },
        RowState::Rejected => return Decision::Rejected,
        // Taken back by `undo`: uploaded again only when asked (a dry run of `--redo-removed`
        // shows it so; a run makes such rows new first). One `undo` left unfinished stays so.
        RowState::Removed if choices.redo_removed => Plan::Upload,
        RowState::Removing | RowState::Removed => return Decision::Removed,
        // Whether its attach took effect was not told yet (a state file of an earlier version
        // held such rows for a person): the record is read again and settles it. An attach was
        // sent only after its upload's ETag was recorded: one without was never sent (it waited
        // for another row of its name and size) and starts over.
        RowState::Failed
            if row.error_kind == Some(FailureKind::AttachUnsettled)
                && row.s3_key.is_some()
                && row.etag.is_some() =>
        {
            Plan::Verify
        }
        RowState::Failed if row.retryable == Some(false) && !choices.retry_failed => {
            return Decision::FailedForGood;
        }
        // Uploaded (an ETag is recorded for its key), so step 3 may have been sent before it
        // failed: ask the record first, never upload and attach it a second time.
        RowState::Failed if row.s3_key.is_some() && row.etag.is_some() => Plan::Verify,
        RowState::Uploaded if row.s3_key.is_some() => Plan::Attach,
        RowState::Attaching if row.s3_key.is_some() => Plan::Verify,
        _ => Plan::Upload,
    };
    Decision::Run { plan, changed }
}

/// [`decide`] for a row that attaches a link: nothing to upload (its one call is the attach),
/// no file to change. Once its attach was sent (see `LinkColumns::sent`: its intent recorded
/// after a snapshot of its record), whatever became of it, the record is read first and settles
/// it; it is never attached a second time.
fn decide_link(row: &StoredRow, choices: &Choices) -> Decision {
    let plan = match row.state {
        RowState::Done => return Decision::Done { changed: false },
        RowState::Rejected => return Decision::Rejected,
        RowState::Removed if choices.redo_removed => Plan::Attach,
        RowState::Removing | RowState::Removed => return Decision::Removed,
        RowState::Failed
            if row.error_kind == Some(FailureKind::AttachUnsettled) && row.link_sent() =>
        {
            Plan::Verify
        }
        RowState::Failed if row.retryable == Some(false) && !choices.retry_failed => {
            return Decision::FailedForGood;
        }
        RowState::Failed | RowState::Attaching if row.link_sent() => Plan::Verify,
        _ => Plan::Attach,
    };
    Decision::Run {
        plan,
        changed: false,
    }
}

/// The rows of a whole manifest planned at once (a dry run, which records nothing): the work,
/// and each row to take up with its plan, rows to verify first.
pub fn plan(
    new_rows: &[NewRow],
    stored: Vec<StoredRow>,
    choices: &Choices,
) -> (Work, Vec<(StoredRow, Plan)>) {
    let mut by_key: HashMap<String, StoredRow> =
        stored.into_iter().map(|r| (r.key.clone(), r)).collect();
    let mut work = Work::default();
    let (mut verify, mut todo) = (Vec::new(), Vec::new());
    for new in new_rows {
        let Some(mut row) = by_key.remove(&new.key) else {
            continue;
        };
        // As a run records it: the manifest's `pin` now (it is not part of the row's key).
        row.pin = new.pin;
        let now = Now {
            size: new.size,
            mtime_ns: new.mtime_ns,
            valid: new.rejected.is_none(),
        };
        let decision = decide(&row, now, choices);
        if decision.refreshes() {
            (row.size, row.mtime_ns) = (now.size, now.mtime_ns);
        }
        work.add(&row, decision);
        match decision.plan() {
            Some(Plan::Verify) => verify.push((row, Plan::Verify)),
            Some(plan) => todo.push((row, plan)),
            None => {}
        }
    }
    verify.append(&mut todo);
    (work, verify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LinkColumns;

    /// A valid link row in `state`, its attach `sent` or not.
    fn link_row(state: RowState, sent: bool) -> StoredRow {
        let mut row = StoredRow::from(&NewRow::for_test(2, 0));
        row.file.clear();
        row.state = state;
        row.link = Some(LinkColumns {
            url: "https://www.dropbox.com/s/x/a.pdf".into(),
            link_type: "dropbox".into(),
            sent,
        });
        row
    }

    fn failed(mut row: StoredRow, kind: FailureKind, retryable: bool) -> StoredRow {
        row.error_kind = Some(kind);
        row.retryable = Some(retryable);
        row
    }

    #[test]
    fn a_link_is_attached_without_an_upload_and_once_sent_its_record_is_read_first() {
        let now = Now {
            size: 0,
            mtime_ns: 0,
            valid: true,
        };
        let choices = Choices::default();
        let plan = |row: &StoredRow| decide(row, now, &choices).plan();
        assert_eq!(
            plan(&link_row(RowState::Pending, false)),
            Some(Plan::Attach)
        );
        assert_eq!(
            plan(&link_row(RowState::Attaching, true)),
            Some(Plan::Verify)
        );
        // Failed before its attach was sent (its record could not be read): attached.
        let network = FailureKind::Network;
        let before = failed(link_row(RowState::Failed, false), network, true);
        assert_eq!(plan(&before), Some(Plan::Attach));
        // Failed after: the record settles it first, whatever the failure.
        let after = failed(link_row(RowState::Failed, true), network, true);
        assert_eq!(plan(&after), Some(Plan::Verify));
        assert!(after.may_be_attached() && !before.may_be_attached());
        let unsettled = FailureKind::AttachUnsettled;
        let unsettled = failed(link_row(RowState::Failed, true), unsettled, false);
        assert_eq!(plan(&unsettled), Some(Plan::Verify));
        let refused = failed(
            link_row(RowState::Failed, true),
            FailureKind::ApiRejected,
            false,
        );
        assert_eq!(decide(&refused, now, &choices), Decision::FailedForGood);
        let retry = Choices {
            retry_failed: true,
            ..Choices::default()
        };
        assert_eq!(decide(&refused, now, &retry).plan(), Some(Plan::Verify));
        // Done is done: a link has no file to change.
        let done = link_row(RowState::Done, true);
        assert_eq!(
            decide(&done, now, &choices),
            Decision::Done { changed: false }
        );
        let redo = Choices {
            redo_removed: true,
            ..Choices::default()
        };
        assert_eq!(plan(&link_row(RowState::Removed, true)), None);
        let removed = link_row(RowState::Removed, false);
        assert_eq!(decide(&removed, now, &redo).plan(), Some(Plan::Attach));
        // Counted apart from the uploaded files to attach.
        let mut work = Work::default();
        work.add(
            &link_row(RowState::Pending, false),
            decide(&link_row(RowState::Pending, false), now, &choices),
        );
        assert_eq!((work.count(Plan::Attach), work.links_to_attach), (1, 1));
        assert_eq!(
            (work.bytes(), work.storage_needed(), work.api_calls(true)),
            (0, 0, 1)
        );
    }
}
