//! The runs: one row per `opcrm-import run`, started before its first upload and finished
//! with its exit code and counts (a run killed has no end).
//!
//! The functions over a connection run on the writer thread or on a read-only connection;
//! callers use the methods of [`StateFile`] (a run, waited for at its start, not at its end)
//! and [`StateReader`] (`status`).

use rusqlite::{Connection, params};

use super::{Pending, StateFile, StateReader, now};

/// One run as the runs table holds it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub rows_done: i64,
    pub rows_failed: i64,
    pub api_calls: i64,
    pub retries: i64,
    pub throttles: i64,
}

pub(super) fn load_runs(conn: &Connection) -> rusqlite::Result<Vec<RunRecord>> {
    let mut stmt = conn.prepare(
        "SELECT id, started_at, finished_at, exit_code, rows_done, rows_failed, api_calls, retries, throttles
         FROM runs ORDER BY id",
    )?;
    stmt.query_map([], |r| {
        Ok(RunRecord {
            id: r.get(0)?,
            started_at: r.get(1)?,
            finished_at: r.get(2)?,
            exit_code: r.get(3)?,
            rows_done: r.get(4)?,
            rows_failed: r.get(5)?,
            api_calls: r.get(6)?,
            retries: r.get(7)?,
            throttles: r.get(8)?,
        })
    })?
    .collect()
}

/// What one run did, for the runs table.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCounts {
    pub rows_done: u64,
    pub rows_failed: u64,
    pub api_calls: u64,
    pub retries: u64,
    pub throttles: u64,
}

pub(super) fn start_run(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT INTO runs (started_at, pid) VALUES (?1, ?2)")?
        .execute(params![now(), std::process::id()])?;
    Ok(conn.last_insert_rowid())
}

pub(super) fn finish_run(
    conn: &Connection,
    id: i64,
    exit_code: i32,
    c: RunCounts,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE runs SET finished_at = ?2, exit_code = ?3, rows_done = ?4, rows_failed = ?5, api_calls = ?6,
             retries = ?7, throttles = ?8 WHERE id = ?1",
    )?
    .execute(params![
            id,
            now(),
            exit_code,
            c.rows_done as i64,
            c.rows_failed as i64,
            c.api_calls as i64,
            c.retries as i64,
            c.throttles as i64
        ])
    .map(drop)
}

impl StateFile {
    /// Records the start of a run; its id.
    pub fn start_run(&self) -> Pending<i64> {
        self.send(true, start_run)
    }

    /// Records the end of run `id`: its exit code and what it did.
    pub fn finish_run(&self, id: i64, exit_code: i32, counts: RunCounts) -> Pending<()> {
        self.send(false, move |c| finish_run(c, id, exit_code, counts))
    }
}

impl StateReader {
    /// Every run, oldest first.
    pub fn load_runs(&self) -> rusqlite::Result<Vec<RunRecord>> {
        load_runs(&self.conn)
    }
}
