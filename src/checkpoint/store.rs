//! The one SQLite connection, on a thread of its own so that no async task ever blocks on disk.
//!
//! Work arrives as closures. The thread takes every closure waiting, runs them in one transaction,
//! commits once, and only then answers each caller: a caller that awaits its answer knows its
//! change is on disk, which is what "committed before the side effect starts" needs, while many
//! callers share one commit. One failing closure spoils nothing else: a failing statement undoes
//! itself, and a closure of several statements (`call_blocking`) runs in a savepoint of its own.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

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

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
}

/// Owns the thread; joining it makes sure everything sent was committed.
pub struct StoreThread {
    handle: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Waits until every closure sent so far has run and been committed (all `Store` handles must
    /// be dropped first, or this waits for them).
    pub fn join(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Starts the writer thread on an open connection.
pub fn spawn(conn: Connection) -> (Store, StoreThread) {
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || writer(conn, rx))
        .expect("spawn the checkpoint thread");
    (
        Store { tx },
        StoreThread {
            handle: Some(handle),
        },
    )
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

impl Store {
    fn job<T, F>(&self, atomic: bool, f: F) -> oneshot::Receiver<Answer<T>>
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
        let _ = self.tx.send(Job { atomic, run });
        rx
    }

    /// Runs `f` on the writer thread and waits until its change is committed. `f` writes with one
    /// statement at most (or only reads): it gets no savepoint of its own.
    pub async fn call<T, F>(&self, f: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.job(false, f).await.unwrap_or(Err(StoreError::Closed))
    }

    /// Runs `f`, of any number of statements and all or nothing (in a savepoint of its own), and
    /// waits until it is committed.
    pub async fn call_atomic<T, F>(&self, f: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.job(true, f).await.unwrap_or(Err(StoreError::Closed))
    }

    /// Runs `f`, of any number of statements and all or nothing, and waits for its commit; for
    /// code that is not async (never call it from inside the runtime).
    pub fn call_blocking<T, F>(&self, f: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.job(true, f)
            .blocking_recv()
            .unwrap_or(Err(StoreError::Closed))
    }

    /// Queues `f` (one statement, as for `call`) without waiting for its commit: for results
    /// recorded after a side effect, where the next step that needs them waits on a later call
    /// anyway (calls commit in order).
    pub fn submit<F>(&self, f: F)
    where
        F: FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        drop(self.job(false, f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, StoreThread) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
            .unwrap();
        spawn(conn)
    }

    #[test]
    fn a_failing_closure_spoils_nothing_else_in_its_batch() {
        let (store, thread) = store();
        let a = store.job(false, |c| c.execute("INSERT INTO t VALUES ('a', 1)", []));
        let dup = store.job(true, |c| {
            c.execute("INSERT INTO t VALUES ('b', 2)", [])?;
            c.execute("INSERT INTO t VALUES ('a', 3)", [])
        });
        let count = store.call_blocking(|c| {
            c.query_row("SELECT count(*), sum(v) FROM t", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
        });
        assert_eq!(a.blocking_recv().unwrap().unwrap(), 1);
        let err = dup.blocking_recv().unwrap().unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
        // 'b' was rolled back with its closure; 'a' stayed.
        assert_eq!(count.unwrap(), (1, 1));
        drop(store);
        thread.join();
    }

    #[test]
    fn submitted_work_is_committed_before_join_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
            .unwrap();
        let (store, thread) = spawn(conn);
        for i in 0..100 {
            store.submit(move |c| {
                c.execute("INSERT INTO t VALUES (?1, ?2)", (i.to_string(), i))
                    .map(drop)
            });
        }
        drop(store);
        thread.join();
        let n: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
    }
}
