//! The run: every row through the three steps, concurrently, inside the API's rate limit, each
//! state committed to the checkpoint before the side effect it names.
//!
//! Rate and concurrency are kept apart: one limiter hands out API calls at `--rate` (all workers
//! share it, and share one gate that a throttled answer closes for everybody), while
//! `--concurrency` workers bound how many rows, and so how many S3 uploads, are under way.
//!
//! Workers report what happens as events (`events`): counts, progress and the log come from them.
//! Two cancellation tokens end a run: `stop_starting` (a first Ctrl-C, or any reason to stop) lets
//! no new row start while rows under way go on, their waits intact; `abort` (the grace period over,
//! a second Ctrl-C, or a stall) also cuts every backoff sleep, throttle-gate wait and limiter wait
//! short. Cancelling `abort` cancels `stop_starting` too.

mod events;
pub mod forms;
mod gate;
pub mod notes;
mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::checkpoint::{self, StateFile, StoredRow, Transition};
use crate::failure::FailureKind;
use crate::onepagecrm::ReferenceType;
use crate::remote::api::{Attach, Form};
use crate::remote::{Client, RemoteError};

pub use events::{Counts, Event, Events, Listener, Step};
pub use forms::{FormReuse, Forms, Lease};
use gate::{ANNOUNCED_PAUSE, MAX_CONSECUTIVE_THROTTLES, MAX_THROTTLE_PAUSE, Ticket};
pub use gate::{ApiGate, DEFAULT_BURST, DEFAULT_RATE};

/// `--stall-timeout`'s default: a run in which no API call has succeeded for this long stops.
/// Long enough for any throttle pause (at most `MAX_THROTTLE_PAUSE`) and several row retries,
/// short enough that a run against a dead or hostile server does not go on for hours.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Rows under way at once (`--concurrency`).
pub const DEFAULT_CONCURRENCY: u16 = 8;
/// Retries of a row's retryable failures in one run (`--retries`).
pub const DEFAULT_RETRIES: u32 = 5;
/// How long a lost answer's record is read again before the row is sent again
/// (`--settle-window`): a listing that shows a write late has shown it by then.
pub const DEFAULT_SETTLE_WINDOW: Duration = Duration::from_secs(120);
/// The first wait before a lost answer's record is read again; each next one is three times
/// longer (5, 15, 45 s, ...), the last cut to the window's end.
const FIRST_SETTLE_WAIT: Duration = Duration::from_secs(5);

/// What the pipeline is told.
#[derive(Clone, Debug)]
pub struct Settings {
    pub concurrency: usize,
    /// `None`: no client-side limit (`--rate off`).
    pub rate: Option<f64>,
    pub burst: u32,
    pub retries: u32,
    /// Stop the run when no API call has succeeded for this long (`None`: never).
    pub stall_timeout: Option<Duration>,
    /// Whether a contact's upload form carries its next files (`--form-reuse`).
    pub form_reuse: FormReuse,
    /// How long a lost answer's record is read again before the row is resent.
    pub settle_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: usize::from(DEFAULT_CONCURRENCY),
            rate: Some(DEFAULT_RATE),
            burst: DEFAULT_BURST,
            retries: DEFAULT_RETRIES,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            form_reuse: FormReuse::Auto,
            settle_window: DEFAULT_SETTLE_WINDOW,
        }
    }
}

/// The growing waits after a lost answer before the row is sent again (see
/// `--settle-window`): the record is read again after each.
#[derive(Clone, Debug)]
struct Settling {
    deadline: Instant,
    next: Duration,
}

impl Settling {
    /// A window that began `ago` (the answer was lost that long ago).
    fn since(window: Duration, ago: Duration) -> Self {
        Self::since_at(Instant::now(), window, ago)
    }

    fn since_at(now: Instant, window: Duration, ago: Duration) -> Self {
        Self {
            deadline: now + window.saturating_sub(ago),
            next: FIRST_SETTLE_WAIT,
        }
    }

    /// The next wait, or `None` once the window is over.
    fn next_wait(&mut self) -> Option<Duration> {
        self.next_wait_at(Instant::now())
    }

    fn next_wait_at(&mut self, now: Instant) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        let wait = self.next.min(left);
        self.next = self.next.saturating_mul(3);
        Some(wait)
    }
}

/// What to do with a row in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// From step 1.
    Upload,
    /// Step 3 with the stored key.
    Attach,
    /// Ask the record whether it holds the attachment, then attach only if not.
    Verify,
}

/// Why a run stopped starting new rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stop {
    None = 0,
    Credentials = 1,
    Quota = 2,
    /// The state file could not be written (a full or read-only disk): going on would upload
    /// what cannot be recorded.
    StateFile = 3,
    /// No API call succeeded for `--stall-timeout`: the server is down, broken or throttling
    /// without end, and waiting on would not help.
    Stalled = 4,
}

/// Refusals by S3 of forms shared with other uploads that one row takes without counting them as
/// failures.
const MAX_WAVED_REFUSALS: u32 = 3;
/// Times a row is uploaded again with a fresh form after step 3 refused its key (see
/// `key_refused`).
const MAX_REDOS: u32 = 3;

/// Since when no API call has succeeded, and what the calls got since then.
struct StallClock {
    last_success: Instant,
    /// Failed calls since the last success, by what they got ("403 (throttled)", "network").
    since: BTreeMap<String, u64>,
}

/// `d` as a person would write it: `90 s`, `10 min`, `2 h`.
pub fn show_duration(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// How long ago `at` (RFC 3339, this machine's clock as it recorded it) was; unknown: long ago.
fn ago(at: Option<&str>) -> Duration {
    at.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or(Duration::MAX)
}

/// The longest backoff, however many attempts came before.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The most a backoff before retry number `attempt` (1-based) waits: 0.5 s, doubled each
/// attempt, up to `MAX_BACKOFF`.
fn backoff_cap(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7))).min(MAX_BACKOFF)
}

/// Full-jitter exponential backoff before retry number `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    backoff_drawn(attempt, &mut rand::rng())
}

fn backoff_drawn(attempt: u32, rng: &mut impl Rng) -> Duration {
    backoff_cap(attempt).mul_f64(rng.random::<f64>())
}

/// Everything workers share.
pub struct Context {
    pub client: Client,
    pub state: StateFile,
    pub gate: ApiGate,
    /// The upload forms kept for their contacts' next files.
    pub forms: Forms,
    /// What records held before their first attach (see `snapshots`).
    pub snapshots: snapshots::Snapshots,
    /// `--concurrency` slots: a row holds one while it works (see `run_indexed`).
    slots: Arc<tokio::sync::Semaphore>,
    pub settings: Settings,
    /// Where workers report; the counts of a run are made from these reports alone.
    events: Events,
    stop: AtomicU8,
    /// One row at a time per record, name and size from its attach until it has settled: of the
    /// rows of one name and size on one record, at most one is ever in doubt, so the one new
    /// attachment of that name and size a lost answer's check finds is its own, never another
    /// row's made meanwhile (rows of other records, names or sizes go on: a slow record does not
    /// hold up the run).
    verify: Arc<Mutex<HashMap<RecordName, RecordLock>>>,
    stall: Mutex<StallClock>,
    /// Why the run stalled, once it has.
    stalled: OnceLock<String>,
    /// Cancelled when no new row may start (an interrupt, or any `Stop`); rows under way go on.
    stop_starting: CancellationToken,
    /// Cancelled when the rows under way must end now (the grace period is over, a second
    /// interrupt, a stall): every wait for the gate, the limiter or a backoff ends at once.
    /// Its child is `stop_starting`.
    abort: CancellationToken,
}

/// One record's turn at checking its attachments (see `Context::verify`).
/// Holds the line of the row whose attach to it is in doubt (sent, not settled), if any.
type RecordLock = Arc<tokio::sync::Mutex<Option<u64>>>;
/// A record, and a name and size on it.
type RecordName = (ReferenceType, String, String, u64);

/// A row's turn at its record, name and size (see `Context::verify`). The lock is forgotten when
/// the last turn ends and no attach to it is in doubt, so the run holds none for records it is
/// done with.
pub struct RecordTurn {
    locks: Arc<Mutex<HashMap<RecordName, RecordLock>>>,
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

/// How a row ended in this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed {
        kind: FailureKind,
        retryable: bool,
        message: String,
    },
    /// Not started, because the run stopped starting new rows; or cut short by an interrupt's
    /// abort, nothing recorded (a rerun resumes the row from its last committed state).
    NotStarted,
}

/// A context whose calls record nothing (a dry run, `check`'s online checks): its state store is
/// an in-memory database that lives as long as it.
pub struct Stateless {
    pub ctx: Arc<Context>,
    state: StateFile,
}

impl Stateless {
    pub fn new(client: Client, settings: Settings) -> Result<Self, checkpoint::OpenError> {
        let state = StateFile::in_memory()?;
        Ok(Self {
            ctx: Arc::new(Context::new(client, state.clone(), settings)),
            state,
        })
    }

    /// Lets the context go and waits for its store to close.
    pub fn close(self) {
        drop(self.ctx);
        self.state.close();
    }
}

impl Context {
    pub fn new(client: Client, state: StateFile, settings: Settings) -> Self {
        let abort = CancellationToken::new();
        Self {
            client,
            state,
            gate: ApiGate::new(settings.rate, settings.burst),
            forms: Forms::new(settings.form_reuse),
            snapshots: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
            settings,
            events: Events::default(),
            stop: AtomicU8::new(Stop::None as u8),
            verify: Arc::default(),
            stall: Mutex::new(StallClock {
                last_success: Instant::now(),
                since: BTreeMap::new(),
            }),
            stalled: OnceLock::new(),
            stop_starting: abort.child_token(),
            abort,
        }
    }

    /// Adds a listener to this run's events (before the run starts).
    pub fn listen(&mut self, listener: Arc<dyn Listener>) {
        self.events.listen(listener);
    }

    /// The run's counts so far (for progress and the summary).
    pub fn counts(&self) -> Counts {
        self.events.counts()
    }

    pub fn stop_reason(&self) -> Stop {
        match self.stop.load(Ordering::SeqCst) {
            1 => Stop::Credentials,
            2 => Stop::Quota,
            3 => Stop::StateFile,
            4 => Stop::Stalled,
            _ => Stop::None,
        }
    }

    fn stop(&self, why: Stop) {
        let _ = self.stop.compare_exchange(
            Stop::None as u8,
            why as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.stop_starting.cancel();
    }

    /// One API call through the limiter and the throttle gate; throttled answers are waited out
    /// and tried again, and do not count as failed attempts. Once the run has stalled, no call
    /// starts: the wait ends with the last throttled answer, or `RemoteError::Stopped`.
    pub async fn api<T, F, Fut>(&self, call: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        let mut throttled: Option<(u16, Option<Duration>)> = None;
        loop {
            let Some(ticket) = self.turn().await else {
                return Err(match throttled {
                    Some((status, retry_after)) => RemoteError::Throttled {
                        status,
                        retry_after,
                    },
                    None => RemoteError::Stopped(self.abort_reason()),
                });
            };
            self.events.emit(Event::ApiCall);
            let result = call().await;
            self.clock(&result);
            match result {
                Err(RemoteError::Throttled {
                    status,
                    retry_after,
                }) => {
                    let throttle = self.gate.throttled(ticket, retry_after);
                    self.events.emit(Event::Throttled {
                        status,
                        consecutive: throttle.n,
                    });
                    if let Some(pause) = throttle.pause.filter(|p| *p >= ANNOUNCED_PAUSE) {
                        let asked = match retry_after {
                            Some(r) if r > MAX_THROTTLE_PAUSE => format!(
                                " and asks to wait {} s (Retry-After; waited {} at most)",
                                r.as_secs(),
                                show_duration(MAX_THROTTLE_PAUSE)
                            ),
                            Some(r) => format!(" and asks to wait {} s (Retry-After)", r.as_secs()),
                            None => String::new(),
                        };
                        warn!(
                            "the API throttles ({status}){asked}: every API call waits {:.0} s",
                            pause.as_secs_f64()
                        );
                    }
                    if throttle.n >= MAX_CONSECUTIVE_THROTTLES {
                        return Err(RemoteError::Throttled {
                            status,
                            retry_after,
                        });
                    }
                    throttled = Some((status, retry_after));
                }
                Err(RemoteError::Unauthorized { message }) => {
                    self.gate.answered(ticket);
                    self.stop(Stop::Credentials);
                    return Err(RemoteError::Unauthorized { message });
                }
                other => {
                    self.gate.answered(ticket);
                    return other;
                }
            }
        }
    }

    /// Waits for the gate (its throttle pause, the probe while refused, then the limiter);
    /// `None`, at once, when the run is aborted.
    async fn turn(&self) -> Option<Ticket<'_>> {
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => None,
            ticket = self.gate.turn() => Some(ticket),
        }
    }

    /// Sleeps `d` without holding the row's slot, so that another row works meanwhile, then
    /// takes a slot again; false, at once, when the run is aborted.
    async fn pause_aside(&self, d: Duration) -> bool {
        self.aside(tokio::time::sleep(d)).await.is_some()
    }

    /// Waits for `wait` without holding the row's slot, then takes a slot again; `None`, at
    /// once, when the run is aborted. Every wait for another row (its turn at a record, its
    /// attach answer) is made this way, and a row holding a slot never waits for another row: so
    /// a row that holds what others wait for can always get a slot back.
    async fn aside<T>(&self, wait: impl std::future::Future<Output = T>) -> Option<T> {
        let held = SLOT
            .try_with(|slot| slot.borrow_mut().take().is_some())
            .unwrap_or(false);
        let out = tokio::select! {
            biased;
            _ = self.abort.cancelled() => return None,
            out = wait => out,
        };
        if held {
            let slot = tokio::select! {
                biased;
                _ = self.abort.cancelled() => return None,
                slot = self.slots.clone().acquire_owned() => slot,
            };
            let _ = SLOT.try_with(|held| *held.borrow_mut() = slot.ok());
        }
        Some(out)
    }

    /// Sleeps `d`; false, at once, when the run is aborted.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Sets the stall clock by an API call's result: an answer the server meant (a success, or a
    /// refusal of this request) shows it is working; anything worth retrying is counted.
    fn clock<T>(&self, result: &Result<T, RemoteError>) {
        let mut clock = self.stall.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Err(e) if e.is_retryable() => {
                let what = match e {
                    RemoteError::Throttled { status, .. } | RemoteError::Api { status, .. } => {
                        format!("{status} ({})", e.kind())
                    }
                    other => other.kind().to_string(),
                };
                *clock.since.entry(what).or_default() += 1;
            }
            _ => {
                clock.last_success = Instant::now();
                clock.since.clear();
            }
        }
    }

    /// An upload S3 took: the run is moving, even if no API call was needed meanwhile.
    fn progressed(&self) {
        let mut clock = self.stall.lock().unwrap_or_else(|e| e.into_inner());
        clock.last_success = Instant::now();
        clock.since.clear();
    }

    /// Why the run was aborted: its stall, or an interrupt.
    fn abort_reason(&self) -> String {
        self.stalled
            .get()
            .cloned()
            .unwrap_or_else(|| "interrupted".to_string())
    }

    /// The run was aborted by an interrupt (not by a stall): a row cut short then ends without
    /// an outcome, as if its task had been dropped, and its state file row stays where its last
    /// committed step left it (a rerun resumes from there).
    fn interrupted_now(&self) -> bool {
        self.abort.is_cancelled() && self.stalled.get().is_none()
    }

    /// What stopped the run when it stalled: for its summary.
    pub fn stall_detail(&self) -> Option<&str> {
        self.stalled.get().map(String::as_str)
    }

    /// Stops the run if no API call has succeeded for `--stall-timeout`; else, when to look again.
    fn check_stall(&self) -> Option<Instant> {
        let timeout = self.settings.stall_timeout?;
        if self.stalled.get().is_some() {
            return None;
        }
        let clock = self.stall.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = clock.last_success + timeout;
        if Instant::now() < deadline {
            return Some(deadline);
        }
        let since = match clock.since.is_empty() {
            true => "no API call was answered since".to_string(),
            false => {
                let counts: Vec<String> = clock
                    .since
                    .iter()
                    .map(|(what, n)| {
                        format!("{what} {n} {}", if *n == 1 { "time" } else { "times" })
                    })
                    .collect();
                format!("since then the calls got {}", counts.join(", "))
            }
        };
        drop(clock);
        let reason = format!(
            "no API call has succeeded for {} ({since})",
            show_duration(timeout)
        );
        let _ = self.stalled.set(reason);
        self.stop(Stop::Stalled);
        self.abort.cancel();
        None
    }

    /// An API call outside any row (the quota check), retried as a row's calls are.
    pub async fn api_retrying<T, F, Fut>(&self, call: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        self.retrying(|| self.api(&call)).await
    }

    /// `read`, retried as a row's calls are: for a read outside any row that is more than one
    /// call's answer (`read_record` also judges whose the record is). Its calls must go through
    /// `api` (this adds only the backoff).
    pub async fn retrying<T, F, Fut>(&self, read: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        let mut attempt = 0;
        loop {
            match read().await {
                Err(e)
                    if e.is_retryable()
                        && attempt < self.settings.retries
                        && !self.abort.is_cancelled() =>
                {
                    attempt += 1;
                    let waited = {
                        let _backoff =
                            self.events
                                .backoff(None, attempt, self.settings.retries, &e);
                        self.pause(backoff(attempt)).await
                    };
                    if !waited {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    /// Records `t` for `row` and waits until it is written.
    async fn commit(&self, row: &StoredRow, t: Transition) -> Result<(), RowError> {
        let state = state_name(&t);
        self.state
            .transition(row, t)
            .await
            .map_err(RowError::Store)?;
        self.events.emit(Event::StateChanged { row, state });
        Ok(())
    }

    /// Queues `t` for `row` (nothing waits on it: no later side effect depends on it).
    fn record_later(&self, row: &StoredRow, t: Transition) {
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
    async fn process_in_turn(
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
            Err(RowError::Remote(RemoteError::Stopped(_))) if self.interrupted_now() => {
                Outcome::NotStarted
            }
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

    async fn run_row(
        &self,
        row: &StoredRow,
        plan: Plan,
        mut turn: Option<RecordTurn>,
    ) -> Result<(), RowError> {
        let mut attempts = 0u32;
        let mut stage = plan;
        let mut key = row.s3_key.clone();
        // Times the row was redone with a fresh form of its own after step 3 refused its key, and
        // whether a refused key was made from a form that carried another of this state file's.
        let mut redos = 0u32;
        let mut refused_shared = false;
        // Step 3 refused the key: once the record is known not to hold it, upload again.
        let mut redo = false;
        // The ETag of the upload this run just made, not recorded yet.
        let mut uploaded: Option<String> = None;
        // Step 3 answered a conflict: the row fails with it unless the record holds the key.
        let mut conflict: Option<RemoteError> = None;
        // An attach's answer was lost: the record is read again with growing waits before the
        // row is attached again (its listing may show the write late).
        let mut settling = match plan {
            Plan::Verify => Some(Settling::since(
                self.settings.settle_window,
                self.since_attach(row).await?,
            )),
            _ => None,
        };
        // This row finds out which links the server gives (see `snapshots`) until its attach
        // answer comes (or its attach's answer is lost: then another row does).
        let mut probe = None;
        // Its turn at its record, name and size (`turn`): taken before its attach is recorded as
        // under way, held until the row has settled (see `Context::verify`).
        loop {
            match stage {
                Plan::Upload => {
                    // The record is read before its first byte is sent: its snapshot, and
                    // whether it exists and is this contact's.
                    if let Some(p) = self.ensure_snapshot_retrying(row, &mut attempts).await? {
                        probe = Some(p);
                    }
                    let (k, etag) = self.upload(row, &mut attempts, redos > 0).await?;
                    key = Some(k);
                    uploaded = Some(etag);
                    stage = Plan::Attach;
                }
                Plan::Attach => {
                    let Some(k) = key.as_deref() else {
                        stage = Plan::Upload;
                        continue;
                    };
                    if let Some(p) = self.ensure_snapshot_retrying(row, &mut attempts).await? {
                        probe = Some(p);
                    }
                    if turn.is_none() {
                        turn = Some(self.record_turn(row).await?);
                    }
                    let Some(held) = turn.as_mut() else {
                        unreachable!("taken above");
                    };
                    // Another row's attach of this name and size to this record is in doubt (its
                    // row ended before it settled): this one waits for it, or the check of that
                    // one could take this one's attachment for its own.
                    if let Some(line) = held.in_doubt().filter(|l| *l != row.line) {
                        return Err(RemoteError::Unsettled(format!(
                            "line {line} attaches a file of the same name and size to {} {} and whether that took effect is not known yet; this row attaches once it has settled (rerun)",
                            row.reference_type.as_str(),
                            row.reference_id
                        ))
                        .into());
                    }
                    held.set_in_doubt(Some(row.line));
                    // The upload's ETag (just now) and the intent to attach, in one write.
                    let etag = uploaded.take();
                    let snapshot_gen = self.snapshots.generation_of(row);
                    self.commit(row, Transition::Attaching { etag, snapshot_gen })
                        .await?;
                    let attach = Attach {
                        reference_id: &row.reference_id,
                        reference_type: row.reference_type,
                        contact_id: &row.contact_id,
                        name: &row.name,
                        key: k,
                        size: row.size,
                    };
                    // Until its outcome is recorded, no check of a lost attach of the same name
                    // and size on this record looks at it.

                    let answer = self.api(|| self.client.attach(&attach)).await;
                    if let Ok(attached) = &answer {
                        held.set_in_doubt(None);
                        self.record_later(
                            row,
                            Transition::Done {
                                attachment_id: attached.id.clone(),
                            },
                        );
                    }
                    match answer {
                        Ok(attached) => {
                            self.events.emit(Event::StepDone {
                                row,
                                step: Step::Attach,
                            });
                            self.snapshots
                                .learned(attached.key(&row.contact_id).as_deref() == Some(k));
                            drop(probe);
                            if refused_shared {
                                self.reuse_refused(
                                    "step 3 refused a key made from a reused upload form and accepted one made from a fresh form",
                                );
                            }
                            return Ok(());
                        }
                        Err(e) if e.is_retryable() => {
                            // Nothing learnt: another row finds out while this one settles.
                            probe = None;
                            // Unless the request certainly never arrived, its outcome is unknown.
                            let never_sent =
                                matches!(&e, RemoteError::Network(n) if !n.maybe_delivered);
                            self.retry(e, row, &mut attempts).await?;
                            stage = if never_sent {
                                Plan::Attach
                            } else {
                                settling.get_or_insert_with(|| {
                                    Settling::since(self.settings.settle_window, Duration::ZERO)
                                });
                                Plan::Verify
                            };
                        }
                        // The record is not there (links that show the key spared it its read
                        // before the upload): the same kind as that read would have given.
                        Err(RemoteError::Api { status: 404, .. }) => {
                            held.set_in_doubt(None);
                            return Err(RemoteError::Record {
                                kind: FailureKind::RecordNotFound,
                                message: snapshots::record_not_found(
                                    row.reference_type,
                                    &row.reference_id,
                                ),
                            }
                            .into());
                        }
                        Err(e) => {
                            let refused = match redos < MAX_REDOS {
                                true => self.key_refused(&e, k).await?,
                                false => None,
                            };
                            let Some(shared) = refused else {
                                // A conflict may say the key is attached already (an earlier
                                // attempt whose answer was lost, a proxy that sent it twice): the
                                // record is asked before the row fails.
                                if matches!(e, RemoteError::Api { status: 409, .. })
                                    && conflict.is_none()
                                {
                                    conflict = Some(e);
                                    stage = Plan::Verify;
                                    continue;
                                }
                                // Refused outright: nothing was attached.
                                held.set_in_doubt(None);
                                return Err(e.into());
                            };
                            refused_shared |= shared;
                            info!(
                                "line {}: step 3 refused the key ({e}); unless the record holds it already, uploading again with a fresh form{}",
                                row.line,
                                if shared {
                                    " (the key's form carried another upload)"
                                } else {
                                    ""
                                }
                            );
                            // A refusal may also mean the key is attached already (an earlier
                            // attempt whose answer was lost): the record is asked first, and an
                            // attachment with this key is adopted, never made twice.
                            redo = true;
                            stage = Plan::Verify;
                        }
                    }
                }
                Plan::Verify if turn.is_none() => turn = Some(self.record_turn(row).await?),
                Plan::Verify => match self.verify(row, key.as_deref()).await {
                    Ok(true) => {
                        self.events.emit(Event::StepDone {
                            row,
                            step: Step::Verify { held: true },
                        });
                        if let Some(turn) = turn.as_mut() {
                            turn.set_in_doubt(None);
                        }
                        return Ok(());
                    }
                    Ok(false) => {
                        self.events.emit(Event::StepDone {
                            row,
                            step: Step::Verify { held: false },
                        });
                        if let Some(e) = conflict.take() {
                            // The conflict did not mean "attached already": nothing is.
                            if let Some(turn) = turn.as_mut() {
                                turn.set_in_doubt(None);
                            }
                            return Err(e.into());
                        }
                        stage = Plan::Attach;
                        if !redo && let Some(wait) = settling.as_mut().and_then(Settling::next_wait)
                        {
                            info!(
                                "line {}: the record does not show this attach yet; reading it again in {} s",
                                row.line,
                                wait.as_secs()
                            );
                            if !self.pause_aside(wait).await {
                                return Err(self.cut(RemoteError::Unsettled(format!(
                                    "the answer to attaching was lost and {} {} did not show the file yet; a rerun reads it again",
                                    row.reference_type.as_str(),
                                    row.reference_id
                                ))));
                            }
                            stage = Plan::Verify;
                            continue;
                        }
                        // The window is over (or there was none): sent again.
                        settling = None;
                        if std::mem::take(&mut redo) {
                            redos += 1;
                            // A fresh form's key refused too: forms of one second look alike to
                            // a server that tells forms by their timestamp; the next comes in
                            // another second.
                            if redos > 1 && !self.pause(Duration::from_secs(1)).await {
                                return Err(self.cut(RemoteError::Stopped(self.abort_reason())));
                            }
                            stage = Plan::Upload;
                        }
                    }
                    Err(RowError::Remote(e)) if e.is_retryable() => {
                        self.retry(e, row, &mut attempts).await?
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    /// Counts a retryable failure; gives up (with `e`) past `--retries`, else waits its backoff.
    async fn retry(
        &self,
        e: RemoteError,
        row: &StoredRow,
        attempts: &mut u32,
    ) -> Result<(), RowError> {
        *attempts += 1;
        if *attempts > self.settings.retries {
            return Err(RowError::Remote(e));
        }
        if self.abort.is_cancelled() {
            return Err(self.cut(e));
        }
        let waited = {
            let _backoff =
                self.events
                    .backoff(Some(row.line), *attempts, self.settings.retries, &e);
            self.pause(backoff(*attempts)).await
        };
        if !waited {
            return Err(self.cut(e));
        }
        Ok(())
    }

    /// How a row whose wait was cut short by an abort ends: with its last error after a stall,
    /// without an outcome after an interrupt.
    fn cut(&self, e: RemoteError) -> RowError {
        match self.interrupted_now() {
            true => RowError::Cut,
            false => RowError::Remote(e),
        }
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
    /// its answer may be lost); if it does, the row is recorded as done with it.
    ///
    /// Proof where the link gives it: an attachment whose `url` shows this row's key (a
    /// presigned link of its object) is adopted. Where links do not show keys, the record's
    /// snapshot (the one the attach was sent after, see `snapshots`) decides:
    /// an attachment of the row's name and size that is in neither the snapshot nor claimed by
    /// another row of this state file (and whose link shows no other key) was made by this row's
    /// lost attempt, and is adopted. Nothing matching: not attached (yet; the caller reads again
    /// within `--settle-window` before it sends again).
    async fn verify(&self, row: &StoredRow, key: Option<&str>) -> Result<bool, RowError> {
        let Some(key) = key else {
            // No key was ever chosen, so no attach was ever sent.
            return Ok(false);
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
                    return Ok(false);
                }
                let held = held.unwrap_or_default();
                listed
                    .iter()
                    .filter(|a| a.filename == row.name && a.size == row.size)
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
            return Ok(false);
        };
        info!(
            "line {}: the record already holds this upload as attachment {} ({why}); not attaching again",
            row.line, a.id
        );
        self.commit(
            row,
            Transition::Done {
                attachment_id: a.id.clone(),
            },
        )
        .await?;
        Ok(true)
    }

    /// Waits for `row`'s turn at its record, name and size (see `Context::verify`).
    async fn record_turn(&self, row: &StoredRow) -> Result<RecordTurn, RowError> {
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

    /// No new row starts after this; rows under way go on, their waits intact.
    pub fn interrupt(&self) {
        self.stop_starting.cancel();
    }

    /// The rows under way end now: every wait (gate, limiter, backoff) ends at once, and no new
    /// row starts. A row cut short by this ends without an outcome (unless the run stalled).
    pub fn abort(&self) {
        self.abort.cancel();
    }
}

/// Watches the stall clock of `ctx` while it lives: when no API call has succeeded for
/// `--stall-timeout`, stops the run (no new row starts; waits for the gate and backoffs end at
/// once, so the rows under way end) and returns why. Holds no strong reference while it sleeps.
pub async fn watch_stall(ctx: Weak<Context>) -> Option<String> {
    loop {
        let (next, cancel) = {
            let ctx = ctx.upgrade()?;
            if ctx.abort.is_cancelled() && ctx.stalled.get().is_none() {
                // Aborted by an interrupt: nothing left to watch.
                return None;
            }
            match ctx.check_stall() {
                Some(next) => (next, ctx.abort.clone()),
                None => return ctx.stalled.get().cloned(),
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Ends the stall watch (it looks at the context it watches, which is now gone).
        self.abort.cancel();
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
    }
}

/// Why a row could not go on.
#[derive(Debug)]
enum RowError {
    Remote(RemoteError),
    Store(checkpoint::StoreError),
    /// A wait was cut short by an interrupt's abort.
    Cut,
}

impl From<RemoteError> for RowError {
    fn from(e: RemoteError) -> Self {
        RowError::Remote(e)
    }
}

/// Each row's outcome, in the order the rows were given, as workers finish them.
pub type Results = Arc<Mutex<Vec<(usize, StoredRow, Outcome)>>>;

/// Runs every (row, plan) with `concurrency` workers, in the order given (put `Verify` rows
/// first: their checks run one at a time). Outcomes land in `results` as they come, so that a
/// run cut short still knows what finished.
pub async fn run_all(ctx: Arc<Context>, work: Vec<(StoredRow, Plan)>, results: Results) {
    run_indexed(ctx, work.into_iter().enumerate().collect(), results).await
}

/// As [`run_all`], each row with its index in the results given.
pub async fn run_indexed(
    ctx: Arc<Context>,
    work: Vec<(usize, (StoredRow, Plan))>,
    results: Results,
) {
    let work = schedule(work);
    ctx.forms
        .expect(work.iter().map(|(_, (row, _))| row.contact_id.as_str()));
    ctx.snapshots.plan(work.iter().map(|(_, (row, _))| row));
    // Each row is a task of its own that holds one of `--concurrency` slots while it works, and
    // none while it waits for a record to show a lost attach (`pause_aside`): other rows go on.
    // A row whose attach is in doubt holds its turn at its record, name and size from the start:
    // no other row of that name and size attaches there before it has settled.
    let work: Vec<_> = work
        .into_iter()
        .map(|(i, (row, plan))| {
            let turn = match plan {
                Plan::Verify => ctx.record_turn_now(&row),
                _ => None,
            };
            (i, row, plan, turn)
        })
        .collect();
    // Rows waiting aside (for their record, or another row's answer) hold no slot; at most this
    // many rows are under way at once, waiting or not, so a long manifest is never all in memory.
    let under_way = Arc::new(tokio::sync::Semaphore::new(
        4 * ctx.settings.concurrency.max(1),
    ));
    let mut rows = tokio::task::JoinSet::new();
    for (i, row, plan, turn) in work {
        let Ok(room) = under_way.clone().acquire_owned().await else {
            break;
        };
        let Ok(slot) = ctx.slots.clone().acquire_owned().await else {
            break;
        };
        let (ctx, results) = (ctx.clone(), results.clone());
        rows.spawn(SLOT.scope(std::cell::RefCell::new(Some(slot)), async move {
            let _room = room;
            let outcome = ctx.process_in_turn(&row, plan, turn).await;
            ctx.forms.row_ended(&row.contact_id);
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, row, outcome));
        }));
        // Ended rows are let go as they end: memory stays flat however long the manifest.
        while rows.try_join_next().is_some() {}
    }
    while rows.join_next().await.is_some() {}
}

tokio::task_local! {
    /// The slot (one of `--concurrency`) the row of this task holds while it works.
    static SLOT: std::cell::RefCell<Option<tokio::sync::OwnedSemaphorePermit>>;
}

/// The order rows are taken up in: rows to verify first (their checks run one at a time), then
/// the others with each contact's rows together, contacts in the order they first appear, rows
/// of a contact in the order given. So a contact's form carries its files one after another
/// while it lives, and the workers share it instead of each waiting for a form of its own.
fn schedule(work: Vec<(usize, (StoredRow, Plan))>) -> Vec<(usize, (StoredRow, Plan))> {
    let mut first_seen: std::collections::HashMap<String, usize> = Default::default();
    for (_, (row, _)) in &work {
        let next = first_seen.len();
        first_seen.entry(row.contact_id.clone()).or_insert(next);
    }
    let mut work: Vec<_> = work.into_iter().enumerate().collect();
    work.sort_by_key(|(n, (_, (row, plan)))| match plan {
        Plan::Verify => (0, 0, *n),
        _ => (1, first_seen[&row.contact_id], *n),
    });
    work.into_iter().map(|(_, w)| w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_to_verify_come_first_then_each_contacts_rows_together() {
        let row = |line: u64, contact: &str| {
            let mut r = a_row();
            r.line = line;
            r.contact_id = contact.into();
            r
        };
        let work = vec![
            (0, (row(2, "a"), Plan::Upload)),
            (1, (row(3, "b"), Plan::Upload)),
            (2, (row(4, "a"), Plan::Attach)),
            (3, (row(5, "c"), Plan::Verify)),
            (4, (row(6, "b"), Plan::Upload)),
            (5, (row(7, "a"), Plan::Verify)),
        ];
        let order: Vec<usize> = schedule(work).into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, [3, 5, 0, 2, 1, 4]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            assert!(backoff(attempt) <= Duration::from_secs(30));
        }
        assert!(
            (0..50)
                .map(|_| backoff(1))
                .all(|d| d <= Duration::from_millis(500))
        );
    }

    #[test]
    fn backoff_grows_with_each_attempt_until_its_cap() {
        // The ceiling doubles with each attempt until it reaches the cap, then stays there.
        let caps: Vec<Duration> = (1..=10).map(backoff_cap).collect();
        assert_eq!(caps[0], Duration::from_millis(500));
        for (i, pair) in caps.windows(2).enumerate() {
            assert!(
                pair[1] == MAX_BACKOFF || pair[1] == pair[0] * 2,
                "attempt {}: {:?} after {:?}",
                i + 2,
                pair[1],
                pair[0]
            );
        }
        assert_eq!(caps[caps.len() - 1], MAX_BACKOFF);
        // What is waited grows with it: the mean of many draws (seeded, so the same on every run)
        // grows by more than half with each attempt, and no draw passes its ceiling. A constant
        // backoff, or one that ignores the attempt, fails here.
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let means: Vec<Duration> = (1..=6)
            .map(|attempt| {
                let draws: Vec<Duration> = (0..1000)
                    .map(|_| backoff_drawn(attempt, &mut rng))
                    .collect();
                assert!(draws.iter().all(|d| *d <= backoff_cap(attempt)));
                draws.iter().sum::<Duration>() / 1000
            })
            .collect();
        for (i, pair) in means.windows(2).enumerate() {
            assert!(
                pair[1] > pair[0].mul_f64(1.5),
                "attempt {}: mean {:?} after {:?}",
                i + 2,
                pair[1],
                pair[0]
            );
        }
    }

    /// A context whose client is never reached (no test below sends anything).
    fn context() -> Context {
        let client = Client::new(
            reqwest::Url::parse("http://127.0.0.1:9/api/v3").unwrap(),
            crate::remote::Credentials::new("u".into(), "k".into()),
        )
        .unwrap();
        let state = StateFile::in_memory().unwrap();
        let settings = Settings {
            concurrency: 1,
            rate: None,
            burst: 5,
            retries: 3,
            stall_timeout: None,
            form_reuse: FormReuse::Auto,
            settle_window: DEFAULT_SETTLE_WINDOW,
        };
        Context::new(client, state, settings)
    }

    fn a_row() -> StoredRow {
        StoredRow::from(&checkpoint::NewRow::for_test(2, 1))
    }

    /// Events as a listener saw them, by variant name.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Listener for Seen {
        fn on(&self, event: &Event<'_>) {
            let name = format!("{event:?}");
            let name = name.split([' ', '{', '(']).next().unwrap_or_default();
            self.0.lock().unwrap().push(name.to_string());
        }
    }

    // The clock is tokio's paused one: it moves only when every task waits, straight to the next
    // timer, so a wait that is not cut runs out at once and one that is cut leaves it unmoved.
    #[tokio::test(start_paused = true)]
    async fn an_interrupt_stops_new_rows_but_lets_waits_run_out() {
        let mut ctx = context();
        let seen = Arc::new(Seen::default());
        ctx.listen(seen.clone());
        let ctx = Arc::new(ctx);
        ctx.interrupt();
        assert_eq!(
            ctx.process(&a_row(), Plan::Upload).await,
            Outcome::NotStarted
        );
        assert_eq!(*seen.0.lock().unwrap(), ["RowFinished"], "never started");
        let before = tokio::time::Instant::now();
        assert!(ctx.pause(Duration::from_secs(3600)).await, "not cut");
        assert!(before.elapsed() >= Duration::from_secs(3600));
        let ticket = ctx.gate.turn().await;
        ctx.gate.throttled(ticket, Some(Duration::from_secs(30)));
        let before = tokio::time::Instant::now();
        assert!(ctx.turn().await.is_some(), "the gate's pause is waited out");
        assert!(before.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stall_watch_ends_when_an_interrupt_aborts_the_run() {
        let mut ctx = context();
        ctx.settings.stall_timeout = Some(Duration::from_secs(600));
        let ctx = Arc::new(ctx);
        let watch = tokio::spawn(watch_stall(Arc::downgrade(&ctx)));
        tokio::task::yield_now().await;
        ctx.abort();
        assert_eq!(watch.await.unwrap(), None, "no stall is reported");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_cuts_backoffs_and_gate_waits_short_and_stops_new_rows() {
        let ctx = Arc::new(context());
        let ticket = ctx.gate.turn().await;
        ctx.gate.throttled(ticket, Some(Duration::from_secs(30)));
        let before = tokio::time::Instant::now();
        let (gate, backoff) = (ctx.clone(), ctx.clone());
        let gate = tokio::spawn(async move { gate.turn().await.is_some() });
        let backoff = tokio::spawn(async move { backoff.pause(Duration::from_secs(3600)).await });
        // Both tasks run until they wait (this task is runnable meanwhile, so the clock holds).
        tokio::task::yield_now().await;
        ctx.abort();
        assert!(!gate.await.unwrap(), "the gate wait was cut");
        assert!(!backoff.await.unwrap(), "the backoff was cut");
        assert!(
            before.elapsed() < Duration::from_secs(1),
            "{:?}",
            before.elapsed()
        );
        assert_eq!(
            ctx.process(&a_row(), Plan::Upload).await,
            Outcome::NotStarted
        );
        assert_eq!(ctx.counts(), Counts::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_row_waiting_for_its_record_gives_its_slot_to_another_row_meanwhile() {
        let ctx = Arc::new(context());
        assert_eq!(ctx.slots.available_permits(), 1, "--concurrency 1");
        let slot = ctx.slots.clone().acquire_owned().await.unwrap();
        let waiting = {
            let ctx = ctx.clone();
            tokio::spawn(SLOT.scope(std::cell::RefCell::new(Some(slot)), async move {
                ctx.pause_aside(Duration::from_secs(60)).await
            }))
        };
        // The waiting row runs until it sleeps (this task is runnable, so the clock holds).
        tokio::task::yield_now().await;
        let other = ctx.slots.clone().try_acquire_owned();
        assert!(other.is_ok(), "the slot is free while the row waits");
        // Its wait over, the row waits for a slot again: it gets one once the other row ends.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!waiting.is_finished(), "it never works without a slot");
        drop(other);
        assert!(waiting.await.unwrap());
        assert_eq!(
            ctx.slots.available_permits(),
            1,
            "given back when its task ended"
        );
    }

    #[tokio::test]
    async fn turns_at_a_record_take_turns_and_leave_no_lock_behind() {
        let ctx = Arc::new(context());
        let row = a_row();
        let first = ctx.record_turn(&row).await.unwrap();
        let second = {
            let (ctx, row) = (ctx.clone(), row.clone());
            tokio::spawn(async move {
                let _turn = ctx.record_turn(&row).await.unwrap();
            })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the second waits for the first");
        drop(first);
        second.await.unwrap();
        assert!(
            ctx.verify.lock().unwrap().is_empty(),
            "a million rows leave no million locks"
        );
    }

    #[test]
    fn durations_are_shown_as_given() {
        assert_eq!(show_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(show_duration(Duration::from_secs(2)), "2 s");
        assert_eq!(show_duration(Duration::from_secs(90)), "90 s");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2 h");
    }
}
