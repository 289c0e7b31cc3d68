//! The writer thread: the one SQLite connection of a [`StateFile`], on a thread of its own so
//! that no async task ever blocks on disk, and [`Pending`], a caller's answer from it.
//!
//! Work arrives as closures, sent by the methods of `StateFile` (never by its callers, who see no
//! connection). The thread takes every closure waiting, runs them in one transaction, commits
//! once, and only then answers each caller: a caller that awaits its answer knows its change is
//! on disk, which is what "committed before the side effect starts" needs, while many callers
//! share one commit. One failing closure spoils nothing else: a failing statement undoes itself,
//! and a closure of several statements (`atomic`) runs in a savepoint of its own.
//!
//! Any thread may hold a `StateFile` and send; only this thread touches the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::StateFile;

/// What a caller gets back: its closure's result, or the commit's error.
pub type Answer<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(String),
    #[error("the state file's writer has stopped")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

impl StoreError {
    /// True when the failure is a UNIQUE constraint (an S3 key already taken).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlite(m) if m.contains("UNIQUE constraint failed"))
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Run = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// A closure to run; `atomic` ones get a savepoint (the row transitions, one statement each, need
/// none, and skipping it saves two statements per transition).
struct Job {
    atomic: bool,
    run: Run,
}

/// Most closures run in one transaction.
const MAX_BATCH: usize = 1024;

/// The sending end of a state file's writer thread, and the thread itself, shared by every
/// handle of the state file. When the last handle goes, the channel closes, and the thread
/// commits what it was sent, closes the connection and ends; the last handle's drop waits for
/// that (unless [`StateFile::close`] took the thread to wait for it itself).
#[derive(Clone)]
pub(super) struct Writer(Arc<Shared>);

struct Shared {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.tx.take());
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Starts the writer thread on an open connection. `keep` (the run lock) lives as long as the
/// thread: it is let go only after the connection is closed.
pub(super) fn spawn<K: Send + 'static>(conn: Connection, keep: K) -> Writer {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            writer(conn, rx);
            drop(keep);
        })
        .expect("spawn the checkpoint thread");
    Writer(Arc::new(Shared {
        tx: Some(tx),
        thread: Mutex::new(Some(handle)),
    }))
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut completions = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), StoreError> {
            let mut tx = conn.transaction()?;
            for job in batch.drain(..) {
                if !job.atomic {
                    let (_, completion) = (job.run)(&tx);
                    completions.push(completion);
                    continue;
                }
                let sp = tx.savepoint()?;
                let (ok, completion) = (job.run)(&sp);
                if ok {
                    sp.commit()?;
                } else {
                    drop(sp); // rolls back to the savepoint and releases it
                }
                completions.push(completion);
            }
            tx.commit()?;
            Ok(())
        })();
        // Jobs that never ran (the transaction failed first) are answered through their dropped
        // completions' channels.
        for completion in completions {
            completion(committed.clone());
        }
    }
}

/// The answer to one piece of work sent to the writer thread. The work is queued when the
/// method that made this returns, whatever is done with it; this only says when it is
/// committed. Await it (async code), [`wait`](Self::wait) for it (code that is not async), or
/// [`detach`](Self::detach) it (nobody waits: work queued later commits after it all the same).
#[must_use = "the work is queued already; await it, wait for it, or detach it"]
pub struct Pending<T> {
    rx: oneshot::Receiver<Answer<T>>,
}

impl<T> Pending<T> {
    /// Waits until the work is committed; never call it from inside the async runtime.
    pub fn wait(self) -> Answer<T> {
        self.rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Leaves the work queued without waiting for its commit: for results recorded after a side
    /// effect, where the next step that needs them waits on a later call anyway (work commits
    /// in the order it was sent).
    pub fn detach(self) {}
}

impl<T> Future for Pending<T> {
    type Output = Answer<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer<T>> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Closed)))
    }
}

impl StateFile {
    /// Sends `f` to the writer thread. `f` of one statement at most (or only reads) is sent with
    /// `atomic` false: it gets no savepoint of its own. `f` of several statements, all or
    /// nothing, is sent with `atomic` true.
    pub(super) fn send<T, F>(&self, atomic: bool, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run: Run = Box::new(move |conn| {
            let result = f(conn).map_err(StoreError::from);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (ok, completion)
        });
        // A closed channel answers through the dropped sender: the receiver sees Closed.
        if let Some(tx) = &self.writer.0.tx {
            let _ = tx.send(Job { atomic, run });
        }
        Pending { rx }
    }

    /// Lets this handle go, and waits until everything sent so far has been committed and the
    /// connection closed (every other handle must be dropped first, or this waits for them);
    /// never call it from inside the async runtime.
    pub fn close(self) {
        let thread = self
            .writer
            .0
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(self);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StateFile {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
            .unwrap();
        StateFile {
            writer: spawn(conn, ()),
        }
    }

    #[test]
    fn a_failing_closure_spoils_nothing_else_in_its_batch() {
        let state = state();
        let a = state.send(false, |c| c.execute("INSERT INTO t VALUES ('a', 1)", []));
        let dup = state.send(true, |c| {
            c.execute("INSERT INTO t VALUES ('b', 2)", [])?;
            c.execute("INSERT INTO t VALUES ('a', 3)", [])
        });
        let count = state
            .send(true, |c| {
                c.query_row("SELECT count(*), sum(v) FROM t", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
            })
            .wait();
        assert_eq!(a.wait().unwrap(), 1);
        let err = dup.wait().unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
        // 'b' was rolled back with its closure; 'a' stayed.
        assert_eq!(count.unwrap(), (1, 1));
        state.close();
    }

    #[test]
    fn detached_work_is_committed_before_close_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
            .unwrap();
        let state = StateFile {
            writer: spawn(conn, ()),
        };
        for i in 0..100 {
            state
                .send(false, move |c| {
                    c.execute("INSERT INTO t VALUES (?1, ?2)", (i.to_string(), i))
                        .map(drop)
                })
                .detach();
        }
        state.close();
        let n: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
    }
}
