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
//!
//! Here: the shared context, the rate gate's use, retries and backoff, the stall watch and the
//! worker pool ([`run_fed`], which takes the rows `run::execute` feeds it). A row's own steps and
//! their redo/verify rules are in `row`; the rate limit and throttle gate in `gate`; notes in
//! `notes`, record snapshots in `snapshots`, upload forms in `forms`, a row's pin in `pins`,
//! reports in `events`.

mod events;
pub mod forms;
mod gate;
pub mod notes;
mod pins;
mod row;
mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::checkpoint::{self, StateFile, StoredRow};
use crate::failure::FailureKind;
use crate::remote::{Client, RemoteError};

pub use events::{Counts, Event, Events, Listener, Step};
pub use forms::{FormReuse, Forms, Lease};
use gate::{ANNOUNCED_PAUSE, MAX_CONSECUTIVE_THROTTLES, MAX_THROTTLE_PAUSE, Ticket};
pub use gate::{ApiGate, DEFAULT_BURST, DEFAULT_RATE};
use row::{RecordLock, RecordName};

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
    /// Done before: only its attachment's pin is left (`PATCH /attachments/{id}/pin`, after
    /// reading the contact's pinned attachments when a pin may have been sent).
    Pin,
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
    /// `--concurrency` slots: a row holds one while it works (see `run_fed`).
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

    /// The state file cannot be read or written: no new row starts.
    pub fn stop_for_state_file(&self) {
        self.stop(Stop::StateFile);
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

/// Why a row could not go on.
#[derive(Debug)]
enum RowError {
    Remote(RemoteError),
    Store(checkpoint::StoreError),
    /// A wait was cut short by an interrupt's abort.
    Cut,
    /// The row's pin could not be made: its attachment is done, and stays so.
    Pin(RemoteError),
}

impl From<RemoteError> for RowError {
    fn from(e: RemoteError) -> Self {
        RowError::Remote(e)
    }
}

impl RowError {
    /// A failure met while pinning: the pin's, not the row's.
    fn of_pin(self) -> Self {
        match self {
            RowError::Remote(e) => RowError::Pin(e),
            other => other,
        }
    }
}

/// The rows that ended in a run, counted as workers finish them (so that a run cut short still
/// knows what finished); the failed ones are kept for the summary.
#[derive(Debug, Default)]
pub struct Ended {
    /// Rows that ended (with any outcome).
    pub rows: usize,
    pub done: usize,
    /// Of `done`, the rows that attached a link.
    pub links_done: usize,
    pub not_started: usize,
    /// Each failed row and how it failed.
    pub failed: Vec<(StoredRow, Outcome)>,
}

impl Ended {
    pub fn push(&mut self, row: StoredRow, outcome: Outcome) {
        self.rows += 1;
        match outcome {
            Outcome::Done => {
                self.done += 1;
                self.links_done += usize::from(row.is_link());
            }
            Outcome::NotStarted => self.not_started += 1,
            Outcome::Failed { .. } => self.failed.push((row, outcome)),
        }
    }
}

/// Where workers put the rows that ended.
pub type Results = Arc<Mutex<Ended>>;

/// Runs every (row, plan) given, with `--concurrency` workers, in the order given (put `Verify`
/// rows first: their checks run one at a time), until the rows run out or no new row may start.
/// Outcomes land in `results` as they come.
pub async fn run_fed(
    ctx: Arc<Context>,
    mut work: tokio::sync::mpsc::Receiver<(StoredRow, Plan)>,
    results: Results,
) {
    // Each row is a task of its own that holds one of `--concurrency` slots while it works, and
    // none while it waits for a record to show a lost attach (`pause_aside`): other rows go on.
    // Rows waiting aside (for their record, or another row's answer) hold no slot; at most this
    // many rows are under way at once, waiting or not, so a long manifest is never all in memory.
    let under_way = Arc::new(tokio::sync::Semaphore::new(
        4 * ctx.settings.concurrency.max(1),
    ));
    let mut rows = tokio::task::JoinSet::new();
    while let Some((row, plan)) = work.recv().await {
        if ctx.stop_starting.is_cancelled() {
            break;
        }
        // A row whose attach is in doubt holds its turn at its record, name and size from the
        // start: no other row of that name and size attaches there before it has settled (rows
        // to verify come first).
        let turn = match plan {
            Plan::Verify => ctx.record_turn_now(&row),
            Plan::Upload | Plan::Attach | Plan::Pin => None,
        };
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
                .push(row, outcome);
        }));
        // Ended rows are let go as they end: memory stays flat however long the manifest.
        while rows.try_join_next().is_some() {}
    }
    drop(work);
    while rows.join_next().await.is_some() {}
}

tokio::task_local! {
    /// The slot (one of `--concurrency`) the row of this task holds while it works.
    static SLOT: std::cell::RefCell<Option<tokio::sync::OwnedSemaphorePermit>>;
}

#[cfg(test)]
mod tests {
    use super::*;

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
