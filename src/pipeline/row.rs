//! A row's steps: the three of them (a form, the upload, the attach) and the rules that redo
//! or verify them, apart from the worker pool and the retry policy (`pipeline`).
//!
//! A row is a small state machine ([`RowRun`]): it starts where its plan says (upload, attach,
//! or verify an attach whose answer was lost) and moves between the steps until it is done or
//! fails. Each intent is committed to the state file before its side effect: the S3 key before
//! the upload (`new_key`), `attaching` with the upload's ETag before step 3. Intents go through
//! `commit` (awaited: committed before the request is sent), results through `record_later`
//! (detached: a rerun settles a row whose result was lost from its intent). After a lost
//! attach answer the record is read again (`verify`): a link that shows the row's key is proof;
//! otherwise the record's snapshot before the attach decides (see `snapshots`). One row at a
//! time per record, name and size is in doubt ([`RecordTurn`]).
//!
//! A row of a link (`link_url`) has one step, the attach (`attach_link`: no form, no upload), its
//! intent `attaching` with the generation of its record's snapshot, always taken first; a lost
//! answer is settled by that snapshot alone (`verify_link`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Instrument, info, warn};

use super::forms::Lease;
use super::pins::Pin;
use super::snapshots;
use super::{Context, Event, Outcome, Plan, RowError, Settling, Step, Stop, ago};
use crate::checkpoint::{StoredRow, Transition};
use crate::failure::FailureKind;
use crate::onepagecrm::ReferenceType;
use crate::remote::RemoteError;
use crate::remote::api::{Attach, AttachLink, Form};

/// Refusals by S3 of forms shared with other uploads that one row takes without counting them as
/// failures.
const MAX_WAVED_REFUSALS: u32 = 3;
/// Times a row is uploaded again with a fresh form after step 3 refused its key (see
/// `key_refused`).
const MAX_REDOS: u32 = 3;

/// One record's turn at checking its attachments (see `Context::verify`).
/// Holds the line of the row whose attach to it is in doubt (sent, not settled), if any.
pub(super) type RecordLock = Arc<tokio::sync::Mutex<Option<u64>>>;
/// A record, and a name and size on it.
pub(super) type RecordName = (ReferenceType, String, String, u64);

/// A row's turn at its record, name and size (see `Context::verify`). The lock is forgotten when
/// the last turn ends and no attach to it is in doubt, so the run holds none for records it is
/// done with.
pub struct RecordTurn {
    pub(super) locks: Arc<Mutex<HashMap<RecordName, RecordLock>>>,
    key: RecordName,
    guard: Option<tokio::sync::OwnedMutexGuard<Option<u64>>>,
}

impl RecordTurn {
    /// The line whose attach is in doubt here (sent, not settled), if any.
    fn in_doubt(&self) -> Option<u64> {
        self.guard.as_deref().copied().flatten()
    }

    /// Marks the attach of `line` as in doubt (`Some`), or none as in doubt.
    fn set_in_doubt(&mut self, line: Option<u64>) {
        if let Some(guard) = self.guard.as_mut() {
            **guard = line;
        }
    }
}

impl Drop for RecordTurn {
    fn drop(&mut self) {
        let settled = self.in_doubt().is_none();
        drop(self.guard.take());
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if settled
            && locks
                .get(&self.key)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

impl Context {
    /// Records `t` for `row` and waits until it is written.
    pub(super) async fn commit(&self, row: &StoredRow, t: Transition) -> Result<(), RowError> {
        let state = state_name(&t);
        self.state
            .transition(row, t)
            .await
            .map_err(RowError::Store)?;
        self.events.emit(Event::StateChanged { row, state });
        Ok(())
    }

    /// Queues `t` for `row` (nothing waits on it: no later side effect depends on it).
    pub(super) fn record_later(&self, row: &StoredRow, t: Transition) {
        let state = state_name(&t);
        self.state.transition(row, t).detach();
        self.events.emit(Event::StateChanged { row, state });
    }

    /// Ends a row that cannot start because its note could not be created: recorded as failed
    /// (`note_failed`), reported as any failed row is.
    pub fn fail_unstarted(&self, row: &StoredRow, retryable: bool, message: String) -> Outcome {
        let outcome = self.failed(row, FailureKind::NoteFailed, retryable, message);
        self.events.emit(Event::RowFinished {
            row,
            outcome: &outcome,
        });
        outcome
    }

    /// Records `row` as failed (queued) and returns that outcome.
    fn failed(
        &self,
        row: &StoredRow,
        kind: FailureKind,
        retryable: bool,
        message: String,
    ) -> Outcome {
        self.record_later(
            row,
            Transition::Failed {
                kind,
                message: message.clone(),
                retryable,
            },
        );
        Outcome::Failed {
            kind,
            retryable,
            message,
        }
    }

    /// Takes a row through what `plan` says is left of it; records how it ended.
    pub async fn process(&self, row: &StoredRow, plan: Plan) -> Outcome {
        self.process_in_turn(row, plan, None).await
    }

    /// As `process`, the row already holding its turn at its record, name and size.
    pub(super) async fn process_in_turn(
        &self,
        row: &StoredRow,
        plan: Plan,
        turn: Option<RecordTurn>,
    ) -> Outcome {
        let outcome = self.outcome(row, plan, turn).await;
        self.events.emit(Event::RowFinished {
            row,
            outcome: &outcome,
        });
        outcome
    }

    async fn outcome(&self, row: &StoredRow, plan: Plan, turn: Option<RecordTurn>) -> Outcome {
        if self.stop_starting.is_cancelled() {
            return Outcome::NotStarted;
        }
        self.events.emit(Event::RowStarted { row, plan });
        // At -vv, every line logged while the row is under way (its requests) names the row.
        let span = tracing::debug_span!("row", line = row.line);
        match self.run_row(row, plan, turn).instrument(span).await {
            Ok(()) => Outcome::Done,
            // Cut short by the end of the grace period: as if never taken up (see
            // `interrupted_now`); nothing is recorded.
            Err(RowError::Cut) => Outcome::NotStarted,
            Err(RowError::Remote(RemoteError::Stopped(_)))
            | Err(RowError::Pin(RemoteError::Stopped(_)))
                if self.interrupted_now() =>
            {
                Outcome::NotStarted
            }
            // The file is attached: only its pin failed, and the row stays done.
            Err(RowError::Pin(e)) => self.pin_failed(row, e),
            Err(RowError::Remote(e)) => {
                let kind = e.kind();
                let retryable = e.is_retryable_later();
                if matches!(e, RemoteError::Quota { .. }) {
                    self.stop(Stop::Quota);
                }
                self.failed(row, kind, retryable, e.to_string())
            }
            Err(RowError::Store(e)) => {
                self.stop(Stop::StateFile);
                Outcome::Failed {
                    kind: FailureKind::StateFile,
                    retryable: true,
                    message: e.to_string(),
                }
            }
        }
    }

    /// The row's steps from where `plan` starts it until it is done (see [`RowRun`]).
    async fn run_row(
        &self,
        row: &StoredRow,
        plan: Plan,
        turn: Option<RecordTurn>,
    ) -> Result<(), RowError> {
        RowRun::start(self, row, plan, turn).await?.run().await
    }

    /// Steps 1 and 2; returns the key the object is stored under and its ETag (recorded with
    /// the intent to attach, see `run_row`). `own`: on a form no other upload carries (the row
    /// is redone because step 3 refused its key).
    ///
    /// S3 refusing a form handed to another upload too (expired, or refused outright) is not a
    /// failure of the row: that form is dropped and the row goes on with another, a fresh
    /// one of its own when S3 refused more than an expiration. When S3 then takes the fresh
    /// form's upload, reuse is turned off (see `reuse_refused`).
    async fn upload(
        &self,
        row: &StoredRow,
        attempts: &mut u32,
        own: bool,
    ) -> Result<(String, String), RowError> {
        let mut own = own;
        // The refusals of reused forms waved through for this row (then they count as failures:
        // a server that refuses every form cannot keep a row going round).
        let mut waved = 0;
        let mut refused_reused = false;
        'form: loop {
            let lease = self.form(row, &mut *attempts, own).await?;
            let key = self.new_key(row, &lease.form).await?;
            loop {
                match self
                    .client
                    .upload(&lease.form, &key, &row.name, &row.path, row.size)
                    .await
                {
                    Ok(uploaded) => {
                        self.progressed();
                        self.events.emit(Event::StepDone {
                            row,
                            step: Step::Upload { bytes: row.size },
                        });
                        if refused_reused {
                            self.reuse_refused(
                                "S3 refused an upload made with a form that carried another and accepted one made with a fresh form",
                            );
                        }
                        return Ok((key, uploaded.md5));
                    }
                    Err(e)
                        if lease.shared()
                            && waved < MAX_WAVED_REFUSALS
                            && matches!(&e, RemoteError::S3 { code, .. } if code == "AccessDenied") =>
                    {
                        waved += 1;
                        self.forms.drop_form(&row.contact_id, lease.id).await;
                        if e.is_form_expired() {
                            info!(
                                "line {}: the shared upload form expired; getting a new one",
                                row.line
                            );
                        } else {
                            info!(
                                "line {}: S3 refused a shared upload form ({e}); trying a fresh one",
                                row.line
                            );
                            refused_reused = true;
                            own = true;
                        }
                        continue 'form;
                    }
                    Err(e) if e.is_form_expired() => {
                        info!(
                            "line {}: the upload form expired; getting a new one",
                            row.line
                        );
                        self.retry(e, row, attempts).await?;
                        self.forms.drop_form(&row.contact_id, lease.id).await;
                        continue 'form;
                    }
                    Err(e) if e.is_retryable() => self.retry(e, row, attempts).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// A new key for `row` from `form`, recorded (`uploading`) before anything is sent with it.
    /// Unique everywhere by its random part; the state file's UNIQUE constraint catches the
    /// one-in-a-billion repeat within this file, and another draw settles it.
    async fn new_key(&self, row: &StoredRow, form: &Form) -> Result<String, RowError> {
        let mut draws = 0;
        loop {
            let key = form.key(&row.name);
            match self
                .commit(
                    row,
                    Transition::Uploading {
                        s3_key: key.clone(),
                    },
                )
                .await
            {
                Ok(()) => return Ok(key),
                Err(RowError::Store(e)) if e.is_unique_violation() && draws < 10 => draws += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Step 1, or the contact's form while it may carry another upload (`own`: a form no other
    /// upload carries); retried on retryable failures. Refuses a file the storage left cannot
    /// hold.
    async fn form(
        &self,
        row: &StoredRow,
        attempts: &mut u32,
        own: bool,
    ) -> Result<Lease, RowError> {
        let fetch = move || async move {
            loop {
                match self.api(|| self.client.s3_form(&row.contact_id)).await {
                    Ok(form) => {
                        self.events.emit(Event::StepDone {
                            row,
                            step: Step::Form,
                        });
                        return Ok(form);
                    }
                    Err(e) if e.is_retryable() => self.retry(e, row, attempts).await?,
                    Err(e) => return Err(RowError::from(e)),
                }
            }
        };
        let lease = self
            .forms
            .lease(&row.contact_id, row.size, own, fetch)
            .await?;
        if lease.storage_left < row.size {
            return Err(RowError::Remote(RemoteError::Quota {
                message: format!(
                    "{} needs {} bytes and the account has {} left",
                    row.file, row.size, lease.storage_left
                ),
            }));
        }
        Ok(lease)
    }

    /// S3 or step 3 refused what a reused form made while a fresh form's was accepted: reuse is
    /// off for the rest of the run and for later runs of this state file, said once.
    fn reuse_refused(&self, why: &str) {
        if self.forms.turn_off(why.to_string()) {
            warn!(
                "{why}: form reuse is off for the rest of this run and later runs of this state file (one form per file)"
            );
        }
        if self.forms.record_once() {
            let why = why.to_string();
            self.state.set_form_reuse_off(&why).detach();
        }
    }

    /// Whether step 3's refusal `e` refuses `key` itself, so that the row is redone with a fresh
    /// form of its own (up to `MAX_REDOS` times, each after the record was asked whether it holds
    /// the key); `Some(shared)` when it does, `shared` when
    /// another row of the state file holds a key of the same form (see `key_shares_form`).
    ///
    /// A refusal of the key: a 400 or 422 whose `errors` name `key` (not a 409: a conflict may
    /// say the key is attached already, and the row fails as before). A server that refuses
    /// one form's second key may do so because of any client's uploads (another migration's,
    /// with its own state file, that reused a form of the same second), and a key that names no
    /// stored object is cured by uploading again too. A refusal that names other fields (the
    /// record, the contact, the size) is not the key's. One that names none is taken for the
    /// key's only when the key's form carried another of this state file's uploads.
    async fn key_refused(&self, e: &RemoteError, key: &str) -> Result<Option<bool>, RowError> {
        let RemoteError::Api {
            status: 400 | 422,
            fields,
            ..
        } = e
        else {
            return Ok(None);
        };
        let names_key = fields.iter().any(|f| f.eq_ignore_ascii_case("key"));
        if !names_key && !fields.is_empty() {
            return Ok(None);
        }
        let shared = self
            .state
            .key_shares_form(key)
            .await
            .map_err(RowError::Store)?;
        Ok((names_key || shared).then_some(shared))
    }

    /// Whether the record already holds this row's attachment (step 3 was sent with `key` and
    /// its answer may be lost); if it does, the row is recorded as done with it (with the intent
    /// to pin it, when the row asks for a pin) and its id is returned.
    ///
    /// Proof where the link gives it: an attachment whose `url` shows this row's key (a
    /// presigned link of its object) is adopted. Where links do not show keys, the record's
    /// snapshot (the one the attach was sent after, see `snapshots`) decides:
    /// an attachment of the row's name and size that is in neither the snapshot nor claimed by
    /// another row of this state file (and whose link shows no other key) was made by this row's
    /// lost attempt, and is adopted. Nothing matching: not attached (yet; the caller reads again
    /// within `--settle-window` before it sends again).
    async fn verify(&self, row: &StoredRow, key: Option<&str>) -> Result<Option<String>, RowError> {
        let Some(key) = key else {
            // No key was ever chosen, so no attach was ever sent.
            return Ok(None);
        };
        let listed = self
            .api(|| {
                self.client
                    .attachments_of(row.reference_type, &row.reference_id)
            })
            .await?;
        let shows_key = |a: &crate::remote::api::RemoteAttachment| a.key(&row.contact_id);
        let adopted = match listed.iter().find(|a| shows_key(a).as_deref() == Some(key)) {
            Some(a) => Some((a, "its link shows this upload's key")),
            None => {
                let (claimed, held) = self
                    .state
                    .claimed_and_held(row)
                    .await
                    .map_err(RowError::Store)?;
                // An attach sent after no snapshot (the links showed keys): only a key proves.
                // One of a state file from before snapshots: what the record held then is not
                // known, and is taken to be none of this name and size.
                if held.is_none() && self.snapshots.links_show_keys() {
                    return Ok(None);
                }
                let held = held.unwrap_or_default();
                listed
                    .iter()
                    .filter(|a| a.filename == row.name && a.size == row.size && !a.is_link())
                    .filter(|a| !claimed.contains(&a.id) && !held.contains(&a.id))
                    .find(|a| shows_key(a).is_none())
                    .map(|a| {
                        (
                            a,
                            "it is new since the record was read before the first attach",
                        )
                    })
            }
        };
        let Some((a, why)) = adopted else {
            return Ok(None);
        };
        info!(
            "line {}: the record already holds this upload as attachment {} ({why}); not attaching again",
            row.line, a.id
        );
        self.commit(
            row,
            Transition::Done {
                attachment_id: a.id.clone(),
                pinning: row.pin,
            },
        )
        .await?;
        Ok(Some(a.id.clone()))
    }

    /// Whether the record already holds this link row's attachment (its attach was sent and
    /// its answer may be lost); if it does, the row is recorded as done with it.
    ///
    /// A link's attach is always sent after a snapshot of its record (see `ensure_snapshot`), and
    /// the snapshot decides, as for a file behind links that show no key: an attachment of the
    /// row's name that is in neither the snapshot nor claimed by another row of this state file,
    /// and that may be this link (its `storage_provider` and `url`, where shown, are the row's
    /// type and URL: see `RemoteAttachment::shows_link`), was made by the lost attempt; one that
    /// shows the row's URL is taken first. The URL alone proves nothing: the same link may have
    /// been attached before (then it is in the snapshot). No snapshot recorded: no attach was
    /// ever sent.
    async fn verify_link(&self, row: &StoredRow) -> Result<Option<String>, RowError> {
        let Some((url, link_type)) = row.link_of() else {
            return Ok(None);
        };
        let (claimed, held) = self
            .state
            .claimed_and_held(row)
            .await
            .map_err(RowError::Store)?;
        let Some(held) = held else {
            return Ok(None);
        };
        let listed = self
            .api(|| {
                self.client
                    .attachments_of(row.reference_type, &row.reference_id)
            })
            .await?;
        let new: Vec<_> = listed
            .iter()
            .filter(|a| a.filename == row.name && !claimed.contains(&a.id) && !held.contains(&a.id))
            .filter(|a| a.shows_link(url, link_type) != Some(false))
            .collect();
        let adopted = match new
            .iter()
            .find(|a| a.shows_link(url, link_type) == Some(true))
        {
            Some(a) => (
                a,
                "it is new since the record was read, and shows this link",
            ),
            None => match new.first() {
                Some(a) => (a, "it is new since the record was read before the attach"),
                None => return Ok(None),
            },
        };
        let (a, why) = adopted;
        info!(
            "line {}: the record already holds this link as attachment {} ({why}); not attaching again",
            row.line, a.id
        );
        self.commit(
            row,
            Transition::Done {
                attachment_id: a.id.clone(),
                pinning: row.pin,
            },
        )
        .await?;
        Ok(Some(a.id.clone()))
    }

    /// Waits for `row`'s turn at its record, name and size (see `Context::verify`).
    pub(super) async fn record_turn(&self, row: &StoredRow) -> Result<RecordTurn, RowError> {
        let (lock, mut turn) = self.record_lock(row);
        // Free (as it nearly always is): taken without giving the slot up.
        if let Ok(guard) = lock.clone().try_lock_owned() {
            turn.guard = Some(guard);
            return Ok(turn);
        }
        match self.aside(lock.lock_owned()).await {
            Some(guard) => {
                turn.guard = Some(guard);
                Ok(turn)
            }
            None => Err(self.cut(RemoteError::Stopped(self.abort_reason()))),
        }
    }

    /// The lock of `row`'s record, name and size, and a turn without it yet (so that a wait cut
    /// short forgets the lock as a turn would).
    fn record_lock(&self, row: &StoredRow) -> (RecordLock, RecordTurn) {
        let key: RecordName = (
            row.reference_type,
            row.reference_id.clone(),
            row.name.clone(),
            row.size,
        );
        let lock = {
            let mut locks = self.verify.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let turn = RecordTurn {
            locks: self.verify.clone(),
            key,
            guard: None,
        };
        (lock, turn)
    }

    /// `row`'s turn, now, if it is free: taken for a row whose attach is in doubt before any
    /// other row of the run starts, so that no other row of its name and size attaches to its
    /// record before it has settled.
    pub fn record_turn_now(&self, row: &StoredRow) -> Option<RecordTurn> {
        let (lock, mut turn) = self.record_lock(row);
        turn.guard = Some(lock.try_lock_owned().ok()?);
        turn.set_in_doubt(Some(row.line));
        Some(turn)
    }

    /// `ensure_snapshot`, its retryable failures counted as the row's and retried.
    async fn ensure_snapshot_retrying(
        &self,
        row: &StoredRow,
        attempts: &mut u32,
    ) -> Result<Option<snapshots::Probe<'_>>, RowError> {
        loop {
            match self.ensure_snapshot(row).await {
                Err(RowError::Remote(e)) if e.is_retryable() => {
                    self.retry(e, row, attempts).await?
                }
                other => return other,
            }
        }
    }

    /// How long ago `row`'s attach was last recorded as under way (by this machine's clock, as
    /// it recorded it): a rerun's window for reading the record again began then. Unknown: long
    /// ago.
    async fn since_attach(&self, row: &StoredRow) -> Result<Duration, RowError> {
        let at = self.state.updated_at(row).await.map_err(RowError::Store)?;
        Ok(ago(at.as_deref()))
    }
}

/// One row on its way through the steps: the step it is at, and what it learnt on the way.
struct RowRun<'a> {
    ctx: &'a Context,
    row: &'a StoredRow,
    stage: Plan,
    /// Retryable failures so far (against `--retries`).
    attempts: u32,
    /// The key its object is stored under (once chosen).
    key: Option<String>,
    /// Times the row was redone with a fresh form of its own after step 3 refused its key, and
    /// whether a refused key was made from a form that carried another of this state file's.
    redos: u32,
    refused_shared: bool,
    /// Step 3 refused the key: once the record is known not to hold it, upload again.
    redo: bool,
    /// The ETag of the upload this run just made, not recorded yet.
    uploaded: Option<String>,
    /// Step 3 answered a conflict: the row fails with it unless the record holds the key.
    conflict: Option<RemoteError>,
    /// An attach's answer was lost: the record is read again with growing waits before the
    /// row is attached again (its listing may show the write late).
    settling: Option<Settling>,
    /// This row finds out which links the server gives (see `snapshots`) until its attach
    /// answer comes (or its attach's answer is lost: then another row does).
    probe: Option<snapshots::Probe<'a>>,
    /// Its turn at its record, name and size: taken before its attach is recorded as under way,
    /// held until the row has settled (see `Context::verify`).
    turn: Option<RecordTurn>,
    /// Its attachment's pin, once it is attached and the manifest asks for one (see `pins`).
    pin: Option<Pin>,
}

impl<'a> RowRun<'a> {
    /// A row starting at `plan`; a row to verify counts its window for reading the record
    /// again from its recorded attach.
    async fn start(
        ctx: &'a Context,
        row: &'a StoredRow,
        plan: Plan,
        turn: Option<RecordTurn>,
    ) -> Result<Self, RowError> {
        let settling = match plan {
            Plan::Verify => Some(Settling::since(
                ctx.settings.settle_window,
                ctx.since_attach(row).await?,
            )),
            _ => None,
        };
        // A link has nothing to upload: its one call is the attach.
        let stage = match (plan, row.is_link()) {
            (Plan::Upload, true) => Plan::Attach,
            (plan, _) => plan,
        };
        Ok(Self {
            ctx,
            row,
            stage,
            attempts: 0,
            key: row.s3_key.clone(),
            redos: 0,
            refused_shared: false,
            redo: false,
            uploaded: None,
            conflict: None,
            settling,
            probe: None,
            turn,
            pin: match plan {
                Plan::Pin => Pin::of_done(row),
                Plan::Upload | Plan::Attach | Plan::Verify => None,
            },
        })
    }

    /// Step after step until the row is done or fails.
    async fn run(mut self) -> Result<(), RowError> {
        loop {
            let done = match self.stage {
                Plan::Upload => self.upload().await.map(|()| false)?,
                Plan::Attach if self.row.is_link() => self.attach_link().await?,
                Plan::Attach => self.attach().await?,
                Plan::Verify => self.verify().await?,
                Plan::Pin => self.pin().await.map(|()| true)?,
            };
            if done {
                return Ok(());
            }
        }
    }

    /// Steps 1 and 2. The record is read before the first byte is sent: its snapshot, and
    /// whether it exists and is this contact's.
    async fn upload(&mut self) -> Result<(), RowError> {
        self.snapshot().await?;
        let (key, etag) = self
            .ctx
            .upload(self.row, &mut self.attempts, self.redos > 0)
            .await?;
        self.key = Some(key);
        self.uploaded = Some(etag);
        self.stage = Plan::Attach;
        Ok(())
    }

    /// The record's snapshot, read once a run before its first attach (see `snapshots`).
    async fn snapshot(&mut self) -> Result<(), RowError> {
        if let Some(probe) = self
            .ctx
            .ensure_snapshot_retrying(self.row, &mut self.attempts)
            .await?
        {
            self.probe = Some(probe);
        }
        Ok(())
    }

    /// No attach of this row is in doubt any more at its record, name and size.
    fn settle_turn(&mut self) {
        if let Some(turn) = self.turn.as_mut() {
            turn.set_in_doubt(None);
        }
    }

    /// Step 3, its intent (with the upload's ETag) committed first; `true` once the row is done.
    async fn attach(&mut self) -> Result<bool, RowError> {
        let (ctx, row) = (self.ctx, self.row);
        let Some(key) = self.key.clone() else {
            self.stage = Plan::Upload;
            return Ok(false);
        };
        self.snapshot().await?;
        self.take_turn().await?;
        // The upload's ETag (just now) and the intent to attach, in one write.
        let etag = self.uploaded.take();
        let snapshot_gen = ctx.snapshots.generation_of(row);
        ctx.commit(row, Transition::Attaching { etag, snapshot_gen })
            .await?;
        let attach = Attach {
            reference_id: &row.reference_id,
            reference_type: row.reference_type,
            contact_id: &row.contact_id,
            name: &row.name,
            key: &key,
            size: row.size,
        };
        match ctx.api(|| ctx.client.attach(&attach)).await {
            Ok(attached) => {
                self.attached(&attached.id).await?;
                ctx.snapshots
                    .learned(attached.key(&row.contact_id).as_deref() == Some(key.as_str()));
                self.probe = None;
                if self.refused_shared {
                    ctx.reuse_refused(
                        "step 3 refused a key made from a reused upload form and accepted one made from a fresh form",
                    );
                }
                Ok(self.pin_next(attached.id))
            }
            Err(e) => self.attach_failed(e, Some(&key)).await.map(|()| false),
        }
    }

    /// The row's turn at its record, name and size (see `Context::verify`), taken before its
    /// attach is recorded as under way: from then on its attach is in doubt there until it has
    /// settled.
    async fn take_turn(&mut self) -> Result<(), RowError> {
        let (ctx, row) = (self.ctx, self.row);
        if self.turn.is_none() {
            self.turn = Some(ctx.record_turn(row).await?);
        }
        let Some(held) = self.turn.as_mut() else {
            unreachable!("taken above");
        };
        // Another row's attach of this name and size to this record is in doubt (its row ended
        // before it settled): this one waits for it, or the check of that one could take this
        // one's attachment for its own.
        if let Some(line) = held.in_doubt().filter(|l| *l != row.line) {
            let what = match row.is_link() {
                true => "a link of the same name",
                false => "a file of the same name and size",
            };
            return Err(RemoteError::Unsettled(format!(
                "line {line} attaches {what} to {} {} and whether that took effect is not known yet; this row attaches once it has settled (rerun)",
                row.reference_type.as_str(),
                row.reference_id
            ))
            .into());
        }
        // Until its outcome is recorded, no check of a lost attach of the same name and size
        // on this record looks at it.
        held.set_in_doubt(Some(row.line));
        Ok(())
    }

    /// A link's one call (`POST /attachments` with `link_type` and `external_url`: no form, no
    /// upload), after a snapshot of its record (see `ensure_snapshot`), its intent committed
    /// first with that snapshot's generation; `true` once the row is done.
    async fn attach_link(&mut self) -> Result<bool, RowError> {
        let (ctx, row) = (self.ctx, self.row);
        let Some((url, link_type)) = row.link_of() else {
            let given = row.link.as_ref().map_or("", |l| l.link_type.as_str());
            return Err(RemoteError::Record {
                kind: FailureKind::Invalid,
                message: format!(
                    "link_type {given:?} is not dropbox, google_drive or evernote; fix the row"
                ),
            }
            .into());
        };
        self.snapshot().await?;
        self.take_turn().await?;
        // The snapshot this attach is sent after: its generation is what marks the attach as
        // sent (a link has no ETag), and what a lost answer is settled against.
        let snapshot_gen = match ctx.snapshots.generation_of(row) {
            Some(generation) => generation,
            None => ctx.generation().await?,
        };
        let intent = Transition::Attaching {
            etag: None,
            snapshot_gen: Some(snapshot_gen),
        };
        ctx.commit(row, intent).await?;
        let link = AttachLink {
            reference_id: &row.reference_id,
            reference_type: row.reference_type,
            contact_id: &row.contact_id,
            name: &row.name,
            link_type,
            external_url: url,
        };
        match ctx.api(|| ctx.client.attach_link(&link)).await {
            Ok(attached) => {
                self.attached(&attached.id).await?;
                Ok(self.pin_next(attached.id))
            }
            Err(e) => self.attach_failed(e, None).await.map(|()| false),
        }
    }

    /// Step 3 answered with `attachment_id`, a file's or a link's: the row's turn at its record
    /// settles, and the row is done. A row to pin commits the pin's intent with its `done`,
    /// before the PATCH; any other row's `done` is queued (nothing follows it).
    async fn attached(&mut self, attachment_id: &str) -> Result<(), RowError> {
        let (ctx, row) = (self.ctx, self.row);
        self.settle_turn();
        let done = Transition::Done {
            attachment_id: attachment_id.to_string(),
            pinning: row.pin,
        };
        match row.pin {
            true => ctx.commit(row, done).await?,
            false => ctx.record_later(row, done),
        }
        ctx.events.emit(Event::StepDone {
            row,
            step: Step::Attach,
        });
        Ok(())
    }

    /// Step 3 failed with `e`: a retryable failure is retried, after the record is read where
    /// the request may have arrived; a refusal of the key (`None` for a link, which has none) is
    /// redone with a fresh form unless the record holds it already; anything else is the row's
    /// failure.
    async fn attach_failed(&mut self, e: RemoteError, key: Option<&str>) -> Result<(), RowError> {
        let (ctx, row) = (self.ctx, self.row);
        match e {
            e if e.is_retryable() => {
                // Nothing learnt: another row finds out while this one settles.
                self.probe = None;
                // Unless the request certainly never arrived, its outcome is unknown.
                let never_sent = matches!(&e, RemoteError::Network(n) if !n.maybe_delivered);
                ctx.retry(e, row, &mut self.attempts).await?;
                self.stage = match never_sent {
                    true => Plan::Attach,
                    false => {
                        let window = ctx.settings.settle_window;
                        self.settling
                            .get_or_insert_with(|| Settling::since(window, Duration::ZERO));
                        Plan::Verify
                    }
                };
                Ok(())
            }
            // The record is not there (links that show the key spared it its read before the
            // upload): the same kind as that read would have given.
            RemoteError::Api { status: 404, .. } => {
                self.settle_turn();
                Err(RemoteError::Record {
                    kind: FailureKind::RecordNotFound,
                    message: snapshots::record_not_found(row.reference_type, &row.reference_id),
                }
                .into())
            }
            e => {
                let refused = match key.filter(|_| self.redos < MAX_REDOS) {
                    Some(key) => ctx.key_refused(&e, key).await?,
                    None => None,
                };
                let Some(shared) = refused else {
                    // A conflict may say the key is attached already (an earlier attempt whose
                    // answer was lost, a proxy that sent it twice): the record is asked before
                    // the row fails.
                    if matches!(e, RemoteError::Api { status: 409, .. }) && self.conflict.is_none()
                    {
                        self.conflict = Some(e);
                        self.stage = Plan::Verify;
                        return Ok(());
                    }
                    // Refused outright: nothing was attached.
                    self.settle_turn();
                    return Err(e.into());
                };
                self.refused_shared |= shared;
                info!(
                    "line {}: step 3 refused the key ({e}); unless the record holds it already, uploading again with a fresh form{}",
                    row.line,
                    if shared {
                        " (the key's form carried another upload)"
                    } else {
                        ""
                    }
                );
                // A refusal may also mean the key is attached already (an earlier attempt whose
                // answer was lost): the record is asked first, and an attachment with this key
                // is adopted, never made twice.
                self.redo = true;
                self.stage = Plan::Verify;
                Ok(())
            }
        }
    }

    /// Whether the record holds this row's attach already (see `Context::verify`), its turn at
    /// the record taken first; `true` once the row is done.
    async fn verify(&mut self) -> Result<bool, RowError> {
        let (ctx, row) = (self.ctx, self.row);
        if self.turn.is_none() {
            self.turn = Some(ctx.record_turn(row).await?);
        }
        let held = match row.is_link() {
            true => ctx.verify_link(row).await,
            false => ctx.verify(row, self.key.as_deref()).await,
        };
        match held {
            Ok(Some(attachment_id)) => {
                ctx.events.emit(Event::StepDone {
                    row,
                    step: Step::Verify { held: true },
                });
                self.settle_turn();
                Ok(self.pin_next(attachment_id))
            }
            Ok(None) => {
                ctx.events.emit(Event::StepDone {
                    row,
                    step: Step::Verify { held: false },
                });
                self.not_held().await.map(|()| false)
            }
            Err(RowError::Remote(e)) if e.is_retryable() => {
                ctx.retry(e, row, &mut self.attempts).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The row is attached as `attachment_id` (recorded as done, with the pin's intent when it
    /// asks for a pin): `true` when nothing is left; else its pin is next.
    fn pin_next(&mut self, attachment_id: String) -> bool {
        if !self.row.pin {
            return true;
        }
        // Its attach has settled: the rows of its record, name and size need not wait for
        // its pin.
        self.turn = None;
        self.pin = Some(Pin::after_attach(attachment_id));
        self.stage = Plan::Pin;
        false
    }

    /// The pin of its attachment (see `pins`); a failure is the pin's, not the row's.
    async fn pin(&mut self) -> Result<(), RowError> {
        let (ctx, row) = (self.ctx, self.row);
        let Some(pin) = self.pin.as_mut() else {
            return Err(RowError::Pin(RemoteError::Protocol {
                what: "the state file",
                detail: "the row is done but no attachment id is recorded to pin".into(),
            }));
        };
        ctx.pin(row, pin, &mut self.attempts).await
    }

    /// The record does not hold this row's attach: a conflict was not "attached already" (the
    /// row fails with it); within the settle window the record is read again after a wait (its
    /// listing may show the write late); after it the row is attached again, or uploaded again
    /// when step 3 refused its key.
    async fn not_held(&mut self) -> Result<(), RowError> {
        let (ctx, row) = (self.ctx, self.row);
        if let Some(e) = self.conflict.take() {
            // The conflict did not mean "attached already": nothing is.
            self.settle_turn();
            return Err(e.into());
        }
        self.stage = Plan::Attach;
        if !self.redo
            && let Some(wait) = self.settling.as_mut().and_then(Settling::next_wait)
        {
            info!(
                "line {}: the record does not show this attach yet; reading it again in {} s",
                row.line,
                wait.as_secs()
            );
            if !ctx.pause_aside(wait).await {
                return Err(ctx.cut(RemoteError::Unsettled(format!(
                    "the answer to attaching was lost and {} {} did not show the file yet; a rerun reads it again",
                    row.reference_type.as_str(),
                    row.reference_id
                ))));
            }
            self.stage = Plan::Verify;
            return Ok(());
        }
        // The window is over (or there was none): sent again.
        self.settling = None;
        if std::mem::take(&mut self.redo) {
            self.redos += 1;
            // A fresh form's key refused too: forms of one second look alike to a server that
            // tells forms by their timestamp; the next comes in another second.
            if self.redos > 1 && !ctx.pause(Duration::from_secs(1)).await {
                return Err(ctx.cut(RemoteError::Stopped(ctx.abort_reason())));
            }
            self.stage = Plan::Upload;
        }
        Ok(())
    }
}

/// The state a transition leaves a row in, as the state file and `status` name it.
fn state_name(t: &Transition) -> &'static str {
    match t {
        Transition::Uploading { .. } => "uploading",
        Transition::Uploaded { .. } => "uploaded",
        Transition::Attaching { .. } => "attaching",
        Transition::Done { .. } => "done",
        Transition::Failed { .. } => "failed",
        Transition::Pending => "pending",
        // The row stays done: these are its pin's.
        Transition::Pinning => "done, pinning",
        Transition::Pinned => "done, pinned",
        Transition::PinFailed { .. } => "done, pin failed",
    }
}
