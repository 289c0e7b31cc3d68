//! What the pipeline reports as it goes, and the one place those reports become counts and log
//! lines. Workers only emit events; progress and the run summary read the counts made here, the
//! log gets each row's state changes, and a listener (a test, say) can watch the same stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, info, warn};

use super::{Outcome, Plan};
use crate::checkpoint::StoredRow;
use crate::failure::FailureKind;
use crate::remote::RemoteError;

/// One thing that happened in a run.
#[derive(Debug)]
pub enum Event<'a> {
    /// A worker took the row up (it was not refused for a stopped run).
    RowStarted { row: &'a StoredRow, plan: Plan },
    /// An API call is about to be sent (after its turn at the limiter and the gate).
    ApiCall,
    /// An API call was throttled; `consecutive` counts throttled answers in a row.
    Throttled { status: u16, consecutive: u32 },
    /// A step of the row succeeded.
    StepDone { row: &'a StoredRow, step: Step },
    /// The row's state in the state file changed to `state` (or is about to, for a write that is
    /// queued rather than awaited).
    StateChanged {
        row: &'a StoredRow,
        state: &'static str,
    },
    /// A retryable failure; a backoff wait starts (`line` is `None` for a call outside any row,
    /// the quota check). Every `Retrying` is followed by one `BackoffOver`.
    Retrying {
        line: Option<u64>,
        attempt: u32,
        retries: u32,
        error: &'a RemoteError,
    },
    /// The backoff wait that the last `Retrying` of `line` started is over, or was cut short.
    BackoffOver { line: Option<u64> },
    /// How the row ended in this run.
    RowFinished {
        row: &'a StoredRow,
        outcome: &'a Outcome,
    },
    /// A note group's note is recorded: created now, or `adopted` (an earlier attempt created
    /// it and its answer was lost).
    NoteCreated {
        contact_id: &'a str,
        note_id: &'a str,
        adopted: bool,
    },
    /// A note group's note could not be created; its rows fail.
    NoteFailed {
        contact_id: &'a str,
        rows: usize,
        error: &'a RemoteError,
    },
}

/// A step that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Step 1: an upload form.
    Form,
    /// Step 2: the file is in S3.
    Upload { bytes: u64 },
    /// Step 3: attached.
    Attach,
    /// The record was asked whether it holds the row's attachment (step 3's answer was lost).
    Verify { held: bool },
    /// The row's attachment is pinned to its contact: `found` pinned by an earlier pin whose
    /// answer was lost (the contact's pinned attachments list it), else pinned now.
    Pin { found: bool },
}

/// Whoever wants to watch a run's events besides its counts and its log.
pub trait Listener: Send + Sync {
    fn on(&self, event: &Event<'_>);
}

/// The counts a run keeps, as of one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub api_calls: u64,
    /// Retryable failures that were retried.
    pub retries: u64,
    pub throttles: u64,
    pub bytes_uploaded: u64,
    pub done: u64,
    pub failed: u64,
    /// Rows waiting out a backoff right now.
    pub retrying: u64,
    /// Notes recorded for note groups in this run (created, or adopted after a lost answer).
    pub notes_created: u64,
    /// Of those, the ones adopted.
    pub notes_adopted: u64,
    /// Attachments pinned in this run (pinned now, or found pinned after a lost answer).
    pub pinned: u64,
}

/// The live counts, changed only by `apply`.
#[derive(Debug, Default)]
struct Counters {
    api_calls: AtomicU64,
    retries: AtomicU64,
    throttles: AtomicU64,
    bytes_uploaded: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    retrying: AtomicU64,
    notes_created: AtomicU64,
    notes_adopted: AtomicU64,
    pinned: AtomicU64,
}

impl Counters {
    fn apply(&self, event: &Event<'_>) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        match event {
            Event::ApiCall => add(&self.api_calls, 1),
            Event::Throttled { .. } => add(&self.throttles, 1),
            Event::StepDone {
                step: Step::Upload { bytes },
                ..
            } => add(&self.bytes_uploaded, *bytes),
            Event::StepDone {
                step: Step::Pin { .. },
                ..
            } => add(&self.pinned, 1),
            Event::Retrying { .. } => {
                add(&self.retries, 1);
                add(&self.retrying, 1);
            }
            Event::BackoffOver { .. } => {
                // Never below zero, even if a `BackoffOver` came without its `Retrying`.
                let _ = self
                    .retrying
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            Event::RowFinished { outcome, .. } => match outcome {
                Outcome::Done => add(&self.done, 1),
                Outcome::Failed { .. } => add(&self.failed, 1),
                Outcome::NotStarted => {}
            },
            Event::NoteCreated { adopted, .. } => {
                add(&self.notes_created, 1);
                if *adopted {
                    add(&self.notes_adopted, 1);
                }
            }
            Event::RowStarted { .. }
            | Event::StepDone { .. }
            | Event::StateChanged { .. }
            | Event::NoteFailed { .. } => {}
        }
    }

    fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            api_calls: get(&self.api_calls),
            retries: get(&self.retries),
            throttles: get(&self.throttles),
            bytes_uploaded: get(&self.bytes_uploaded),
            done: get(&self.done),
            failed: get(&self.failed),
            retrying: get(&self.retrying),
            notes_created: get(&self.notes_created),
            notes_adopted: get(&self.notes_adopted),
            pinned: get(&self.pinned),
        }
    }
}

/// Where the pipeline sends its events: counts, the log, and any listeners.
#[derive(Default)]
pub struct Events {
    counters: Counters,
    listeners: Vec<Arc<dyn Listener>>,
}

impl Events {
    pub fn listen(&mut self, listener: Arc<dyn Listener>) {
        self.listeners.push(listener);
    }

    pub fn emit(&self, event: Event<'_>) {
        self.counters.apply(&event);
        log(&event);
        for listener in &self.listeners {
            listener.on(&event);
        }
    }

    pub fn counts(&self) -> Counts {
        self.counters.snapshot()
    }

    /// Emits `Retrying`, and `BackoffOver` when the returned guard is dropped: however the wait
    /// ends (over, cut short, or its task dropped), the row stops counting as retrying.
    pub fn backoff<'a>(
        &'a self,
        line: Option<u64>,
        attempt: u32,
        retries: u32,
        error: &RemoteError,
    ) -> InBackoff<'a> {
        self.emit(Event::Retrying {
            line,
            attempt,
            retries,
            error,
        });
        InBackoff { events: self, line }
    }
}

/// A backoff wait under way; see `Events::backoff`.
pub struct InBackoff<'a> {
    events: &'a Events,
    line: Option<u64>,
}

impl Drop for InBackoff<'_> {
    fn drop(&mut self) {
        self.events.emit(Event::BackoffOver { line: self.line });
    }
}

/// The log lines events make: warnings for failed rows, each retry at `-v`, each row's start,
/// state changes and end at `-vv`. Never a header, form field or key: only lines, files, states.
fn log(event: &Event<'_>) {
    match event {
        Event::RowStarted { row, plan } => {
            debug!("line {}: started ({})", row.line, plan_name(*plan));
        }
        Event::StateChanged { row, state } => debug!("line {}: now {state}", row.line),
        Event::Throttled {
            status,
            consecutive,
        } => debug!("throttled ({status}), pause {consecutive}"),
        Event::Retrying {
            line: Some(line),
            attempt,
            retries,
            error,
        } => info!("line {line}: retry {attempt}/{retries} after: {error}"),
        Event::Retrying {
            line: None,
            attempt,
            retries,
            error,
        } => info!("retry {attempt}/{retries} after: {error}"),
        Event::RowFinished { row, outcome } => match outcome {
            Outcome::Done => debug!("line {}: finished: done", row.line),
            Outcome::NotStarted => debug!("line {}: not started", row.line),
            Outcome::Failed { kind, message, .. } if *kind == FailureKind::StateFile => warn!(
                "line {}: cannot record progress in the state file: {message}",
                row.line
            ),
            Outcome::Failed { kind, message, .. } => {
                warn!(
                    "line {}: {} ({kind}): {message}",
                    row.line,
                    row.shown_file()
                )
            }
        },
        Event::NoteCreated {
            contact_id,
            note_id,
            adopted: false,
        } => debug!("contact {contact_id}: created note {note_id}"),
        Event::NoteCreated {
            contact_id,
            note_id,
            adopted: true,
        } => info!(
            "contact {contact_id}: note {note_id} was created by an attempt whose answer was lost; adopted, not created again"
        ),
        Event::NoteFailed {
            contact_id,
            rows,
            error,
        } => {
            warn!("contact {contact_id}: the note for {rows} row(s) could not be created: {error}")
        }
        Event::ApiCall | Event::StepDone { .. } | Event::BackoffOver { .. } => {}
    }
}

fn plan_name(plan: Plan) -> &'static str {
    match plan {
        Plan::Upload => "upload",
        Plan::Attach => "attach",
        Plan::Verify => "verify, then attach if missing",
        Plan::Pin => "pin its attachment",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> RemoteError {
        RemoteError::Network(crate::remote::NetworkError {
            detail: "connection reset".into(),
            timeout: false,
            maybe_delivered: true,
        })
    }

    #[test]
    fn retrying_counts_the_rows_in_a_backoff_right_now() {
        let events = Events::default();
        let e = network();
        let first = events.backoff(Some(2), 1, 3, &e);
        let second = events.backoff(Some(3), 1, 3, &e);
        assert_eq!(events.counts().retrying, 2);
        drop(first);
        assert_eq!(events.counts().retrying, 1);
        drop(second);
        let counts = events.counts();
        assert_eq!((counts.retrying, counts.retries), (0, 2));
        // An unmatched end never wraps the count around.
        events.emit(Event::BackoffOver { line: Some(9) });
        assert_eq!(events.counts().retrying, 0);
    }

    #[test]
    fn counts_come_from_events() {
        let events = Events::default();
        events.emit(Event::ApiCall);
        events.emit(Event::ApiCall);
        events.emit(Event::Throttled {
            status: 429,
            consecutive: 1,
        });
        let row = StoredRow::from(&crate::checkpoint::NewRow::for_test(7, 1234));
        events.emit(Event::StepDone {
            row: &row,
            step: Step::Upload { bytes: 1234 },
        });
        events.emit(Event::RowFinished {
            row: &row,
            outcome: &Outcome::Done,
        });
        events.emit(Event::RowFinished {
            row: &row,
            outcome: &Outcome::NotStarted,
        });
        assert_eq!(
            events.counts(),
            Counts {
                api_calls: 2,
                throttles: 1,
                bytes_uploaded: 1234,
                done: 1,
                ..Counts::default()
            }
        );
    }
}
