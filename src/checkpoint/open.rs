//! Opening a state file: the checks before anything is made or changed (a regular file, one
//! name, this tool's, not newer than this version), the run lock, the migrations (`migrations/`,
//! applied in order, keyed on SQLite's `user_version`), and the read-only opening of `status`,
//! `report` and a dry run.
//!
//! Called from setup code (a command's thread, never the async runtime): opening is blocking.

use std::path::Path;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use super::{StateFile, StateReader, writer};

/// The schema, one entry per file in `migrations/`, in order. Landed files are never edited.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        "0002_contact_lookups.sql",
        include_str!("../../migrations/0002_contact_lookups.sql"),
    ),
    (
        "0003_notes.sql",
        include_str!("../../migrations/0003_notes.sql"),
    ),
    (
        "0004_snapshots.sql",
        include_str!("../../migrations/0004_snapshots.sql"),
    ),
    (
        "0005_row_ids.sql",
        include_str!("../../migrations/0005_row_ids.sql"),
    ),
    (
        "0006_undo.sql",
        include_str!("../../migrations/0006_undo.sql"),
    ),
    (
        "0007_pin.sql",
        include_str!("../../migrations/0007_pin.sql"),
    ),
    (
        "0008_links.sql",
        include_str!("../../migrations/0008_links.sql"),
    ),
];

/// The first schema version (`user_version`) with the notes table and the rows' note columns:
/// the place of `0003_notes.sql` in [`MIGRATIONS`] (found, not written down, so that a migration
/// merged before it moves it without anyone having to remember this).
pub(super) fn notes_version() -> i64 {
    MIGRATIONS
        .iter()
        .position(|(name, _)| *name == "0003_notes.sql")
        .map_or(i64::MAX, |i| i as i64 + 1)
}

/// Marks a SQLite file as this tool's (`PRAGMA application_id`): "OPCR", set by the first migration.
const APPLICATION_ID: i32 = 0x4F50_4352;

/// The state file's schema version (`user_version`).
pub(super) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} is not an opcrm-import state file (it is another SQLite database); give another --state"
    )]
    Foreign { path: String },
    #[error("{path} is not a SQLite file; give another --state")]
    NotSqlite { path: String },
    #[error(
        "{path} exists but is not an opcrm-import state file (it is empty); it is left as it is: give another --state, or remove it if it is yours (a path that does not exist is created)"
    )]
    NotOurs { path: String },
    #[error(
        "state file {path} was written by a newer opcrm-import (schema {found}, this one knows {known}); use that version"
    )]
    Newer {
        path: String,
        found: i64,
        known: usize,
    },
    #[error(
        "state file {path} is {what}, not a regular file; give the path of a file with --state (it is created if missing)"
    )]
    NotRegular { path: String, what: &'static str },
    #[error(
        "state file {path} has {links} names (hard links); SQLite keeps the journal of recent progress beside the name it was opened by, so another name can miss it and go back on rows already done. Use the state file by the name it was made with, and remove the other names (`ls -i` shows them)"
    )]
    HardLinked { path: String, links: u64 },
    #[error("cannot open state file {path}: {reason}")]
    Other { path: String, reason: String },
    /// The run lock could not be taken (another run holds it, or the file cannot be opened).
    #[error("{0}")]
    Locked(String),
}

/// Refuses a state path that exists and is not a regular file (`/dev/null`, a folder, a pipe):
/// SQLite would read it as an empty database, or the lock and journal files would land beside a
/// device. `:memory:` is SQLite's own name, not a path.
fn check_regular(path: &Path) -> Result<(), OpenError> {
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // missing (created at open) or unreadable (open says why)
    };
    let what = if meta.is_file() {
        return single_name(path, &meta);
    } else if meta.is_dir() {
        "a folder"
    } else {
        "a device, pipe or socket"
    };
    Err(OpenError::NotRegular {
        path: path.display().to_string(),
        what,
    })
}

/// Refuses a state file with several names (hard links; a symbolic link is fine: SQLite
/// follows it to the file's own name): SQLite's write-ahead log lives beside the name a file is
/// opened by, so after a crash progress committed through one name is not seen through another.
#[cfg(unix)]
fn single_name(path: &Path, meta: &std::fs::Metadata) -> Result<(), OpenError> {
    use std::os::unix::fs::MetadataExt;
    match meta.nlink() {
        0 | 1 => Ok(()),
        links => Err(OpenError::HardLinked {
            path: path.display().to_string(),
            links,
        }),
    }
}

#[cfg(not(unix))]
fn single_name(_: &Path, _: &std::fs::Metadata) -> Result<(), OpenError> {
    Ok(())
}

/// Whether `path` names something already (a dangling symbolic link too): only a path that does
/// not is made a new state file.
fn exists(path: &Path) -> bool {
    path.as_os_str() != ":memory:" && std::fs::symlink_metadata(path).is_ok()
}

/// Opens (creating if needed) the state file and brings its schema up to date: the connection
/// alone, for tests of what runs on it.
#[cfg(test)]
pub(super) fn open(path: &Path) -> Result<Connection, OpenError> {
    open_as(path, exists(path))
}

/// Opens (creating if needed) the state file and brings its schema up to date, for a caller that
/// made the file itself (the run lock does) and saw beforehand whether it `existed`.
fn open_as(path: &Path, existed: bool) -> Result<Connection, OpenError> {
    let shown = path.display().to_string();
    let other = |e: &dyn std::fmt::Display| OpenError::Other {
        path: shown.clone(),
        reason: e.to_string(),
    };
    check_regular(path)?;
    // Only a path that does not exist is made a new state file: an existing one that is not ours
    // (even an empty one, which SQLite reads as an empty database) may be someone else's file, or
    // a state file whose content was lost, and taking it as new would upload every row again.
    // `:memory:` is SQLite's own name for a database that lives and dies with the connection.
    let mut conn = Connection::open(path).map_err(|e| other(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| other(&e))?;
    let app_id: i32 = match conn.query_row("PRAGMA application_id", [], |r| r.get(0)) {
        Ok(id) => id,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(OpenError::NotSqlite { path: shown });
        }
        Err(e) => return Err(other(&e)),
    };
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                OpenError::NotSqlite {
                    path: shown.clone(),
                }
            }
            e => other(&e),
        })?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(OpenError::Foreign { path: shown });
    }
    if app_id != APPLICATION_ID && existed {
        return Err(OpenError::NotOurs { path: shown });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| other(&e))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(OpenError::Newer {
            path: shown,
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| other(&e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| other(&e))?;
    // A run reads its rows back in its own order, not the file's: a page cache of 32 MiB (filled
    // only as pages are read, and no larger however long the manifest) spares most reads of a
    // page read before.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(|e| other(&e))?;
    // The WAL is folded into the file every 8,192 pages (32 MiB) instead of SQLite's 1,000: a
    // checkpoint and its fsyncs were a sixth of the writer's time. What a kill or a crash of the
    // process keeps is the same (the WAL is the commit); the WAL file may grow to that size.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)
        .map_err(|e| other(&e))?;
    // This run's table of the manifest's rows (`this_run`) is temporary: kept in a file, with a
    // cache of its own, so that a million rows are not held in memory. Set here, outside any
    // transaction, as SQLite requires.
    conn.execute_batch("PRAGMA temp_store = FILE; PRAGMA temp.cache_size = -8192;")
        .map_err(|e| other(&e))?;
    // One prepared statement per kind of statement, however many kinds a run uses.
    conn.set_prepared_statement_cache_capacity(64);
    let migrations = Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect());
    migrations.to_latest(&mut conn).map_err(|e| other(&e))?;
    Ok(conn)
}

/// The state file's page cache, in KiB.
const CACHE_KIB: i64 = 32 * 1024;

/// Opens an existing state file for reading only (for `status` and `report`): never creates,
/// migrates or changes it.
fn open_read_only(path: &Path) -> Result<Connection, OpenError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(OpenError::Other {
            path: shown,
            reason: "it does not exist (no run has used it yet)".into(),
        });
    }
    check_regular(path)?;
    let other = |e: &dyn std::fmt::Display| OpenError::Other {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| other(&e))?;
    let not_sqlite = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            OpenError::NotSqlite {
                path: shown.clone(),
            }
        }
        e => other(&e),
    };
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(not_sqlite)?;
    if app_id != APPLICATION_ID {
        return Err(OpenError::Foreign { path: shown });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_sqlite)?;
    if version > MIGRATIONS.len() as i64 {
        return Err(OpenError::Newer {
            path: shown,
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    Ok(conn)
}

impl StateFile {
    /// Opens (creating if needed) the state file at `path` for a run, and starts its writer
    /// thread: refuses a path that is not a regular file, or a file that is not this tool's (an
    /// existing one must already be ours), takes the run lock (see [`lock_state`]), and brings
    /// the schema up to date. `:memory:` is a state file that lives as long as its handles (no
    /// lock: it is this process's alone).
    pub fn open(path: &Path) -> Result<StateFile, OpenError> {
        // Before anything is made or locked: `--state /dev/null` is refused, not used.
        check_regular(path)?;
        // Seen before the lock creates the file: an existing file must already be ours.
        let existed = exists(path);
        let lock = match path.as_os_str() == ":memory:" {
            true => None,
            false => Some(lock_state(path).map_err(OpenError::Locked)?),
        };
        let conn = open_as(path, existed)?;
        Ok(StateFile {
            writer: writer::spawn(conn, lock),
        })
    }

    /// A state file in memory, for a context whose calls record nothing that outlives it (a dry
    /// run, `check`'s online checks).
    pub fn in_memory() -> Result<StateFile, OpenError> {
        Self::open(Path::new(":memory:"))
    }

    /// Opens an existing state file for reading only (`status`, `report`, a dry run): never
    /// creates, migrates or changes it, and reads a file of any earlier schema as it is.
    pub fn open_read_only(path: &Path) -> Result<StateReader, OpenError> {
        Ok(StateReader {
            conn: open_read_only(path)?,
        })
    }
}

/// Takes the run lock: an exclusive lock on the state file itself, so that it follows the file
/// through every name it has (a hard or symbolic link is the same file), and the OS releases
/// it when the process ends, however it ends, so a killed run never blocks the next. It is a
/// BSD `flock`, which SQLite's own POSIX locks on the file neither see nor disturb; the handle
/// stays open until the state file is closed.
fn lock_state(state: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state)
        .map_err(|e| {
            format!(
                "cannot open state file {} for writing: {e} (is the folder writable?)",
                state.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = lock_holder(&file)
                .map(|pid| format!("pid {pid}, "))
                .unwrap_or_default();
            Err(format!(
                "another run is using state file {} ({holder}perhaps through another name of the same file); wait for it to end, or stop it first",
                state.display()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(format!("cannot lock state file {}: {e}", state.display()))
        }
    }
}

/// The process holding the `flock` of `file`, as Linux's `/proc/locks` tells (elsewhere: none).
#[cfg(unix)]
fn lock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = file.metadata().ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let lock_inode: u64 = id.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && lock_inode == inode).then(|| pid.parse().ok())?
    })
}

#[cfg(not(unix))]
fn lock_holder(_: &std::fs::File) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::RowState;
    use crate::checkpoint::lookups::{load_lookups, record_lookup};
    use crate::checkpoint::notes::load_notes;
    use crate::checkpoint::rows::tests::new_row;
    use crate::checkpoint::rows::{load_rows, record_rows};

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, listed);
        assert!(
            Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect())
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_state_file_of_schema_1_is_read_as_it_is_and_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(MIGRATIONS[0].1).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        record_rows_v1(&old);
        drop(old);
        // `status` and `report` read it without migrating it: its rows are rows by id.
        let read = open_read_only(&path).unwrap();
        let rows = load_rows(&read).unwrap();
        assert_eq!(
            (rows[0].contact_id.as_str(), rows[0].contact_email.as_str()),
            ("c", "")
        );
        assert!(load_lookups(&read).is_err());
        drop(read);
        // A run's open migrates it; the row keeps its key and progress.
        let conn = open(&path).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!(
            (rows[0].key.as_str(), rows[0].state),
            ("k1", RowState::Done)
        );
        record_lookup(&conn, "a@b.example", "c").unwrap();
        assert_eq!(load_lookups(&conn).unwrap()["a@b.example"], "c");
    }

    /// A done row as version 1 recorded it.
    fn record_rows_v1(conn: &Connection) {
        conn.execute(
            "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                 reference_id, name, state, created_at, updated_at)
             VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 1, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't')",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_state_file_from_before_notes_is_read_as_it_is_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(MIGRATIONS[0].1)])
                .to_latest(&mut conn)
                .unwrap();
            record_rows_before_notes(&conn);
        }
        // `status` and `report` read it unchanged.
        let rows = load_rows(&open_read_only(&path).unwrap()).unwrap();
        assert_eq!(
            (rows[0].state, rows[0].note.is_empty()),
            (RowState::Done, true)
        );
        assert!(
            load_notes(&open_read_only(&path).unwrap())
                .unwrap()
                .is_empty()
        );
        // `run` migrates it; the done row keeps its key and state.
        let conn = open(&path).unwrap();
        record_rows(&conn, &[new_row("k1", None)]).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!((rows.len(), rows[0].state), (1, RowState::Done));
    }

    fn record_rows_before_notes(conn: &Connection) {
        conn.execute(
            "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id,
                 name, state, created_at, updated_at)
             VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 10, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't')",
            [],
        )
        .unwrap();
    }

    /// Every column of every row, with its rowid (its id from schema 5 on), in rowid order.
    fn every_row(conn: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
        let columns =
            "rowid, row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
            reference_id, name, state, s3_key, etag, attachment_id, attempts, error_kind,
            last_error, retryable, created_at, updated_at, done_at, contact_email, note_group,
            note_text, note_date, note_key, snapshot_gen";
        let mut stmt = conn
            .prepare(&format!("SELECT {columns} FROM rows ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_state_file_of_schema_4_keeps_every_row_whole_when_its_rows_get_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let before = {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::new(MIGRATIONS[..4].iter().map(|(_, sql)| M::up(sql)).collect())
                .to_latest(&mut conn)
                .unwrap();
            // As that schema's `record_rows` wrote them (today's writes columns it had not).
            for k in ["k1", "k2", "k3", "k4"] {
                let (state, error) = match k {
                    "k4" => ("rejected", Some("file missing")),
                    _ => ("pending", None),
                };
                conn.execute(
                    "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id,
                         reference_type, reference_id, name, state, error_kind, last_error,
                         retryable, created_at, updated_at, contact_email)
                     VALUES (?1, 2, 'a.pdf', '/x/a.pdf', 10, 1, 'c', 'note', 'n', 'a.pdf', ?2,
                         ?3, ?4, ?5, 't', 't', 'Ada@X.example')",
                    rusqlite::params![
                        k,
                        state,
                        error.map(|_| "invalid"),
                        error,
                        error.map(|_| false)
                    ],
                )
                .unwrap();
            }
            // Rows in several states, and a gap in the rowids: ids are the rowids, not new ones.
            conn.execute_batch(
                "UPDATE rows SET state = 'done', s3_key = 'c/1/a.pdf', etag = 'e1',
                     attachment_id = 'a1', attempts = 1, done_at = 't2', snapshot_gen = 3
                     WHERE row_key = 'k1';
                 UPDATE rows SET state = 'attaching', s3_key = 'c/2/a.pdf', etag = 'e2'
                     WHERE row_key = 'k3';
                 DELETE FROM rows WHERE row_key = 'k2';",
            )
            .unwrap();
            every_row(&conn)
        };
        assert_eq!(before.len(), 3);
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(every_row(&conn), before);
        let ids: Vec<i64> = load_rows(&conn).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3, 4]);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rows' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(indexes, ["rows_by_note_group", "rows_by_record"]);
        // The keys stay unique, and recording the manifest again keeps each row's progress.
        let taken = conn.execute(
            "UPDATE rows SET s3_key = 'c/1/a.pdf' WHERE row_key = 'k3'",
            [],
        );
        assert!(taken.unwrap_err().to_string().contains("UNIQUE"));
        record_rows(&conn, &[new_row("k1", None), new_row("k2", None)]).unwrap();
        let rows = load_rows(&conn).unwrap();
        let state = |k: &str| rows.iter().find(|r| r.key == k).map(|r| (r.id, r.state));
        assert_eq!(state("k1"), Some((1, RowState::Done)));
        assert_eq!(state("k2"), Some((5, RowState::Pending)));
    }

    #[test]
    fn a_state_file_of_schema_2_is_read_as_it_is_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(MIGRATIONS[0].1), M::up(MIGRATIONS[1].1)])
                .to_latest(&mut conn)
                .unwrap();
            conn.execute(
                "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                     reference_id, name, state, created_at, updated_at, contact_email)
                 VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 10, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't',
                     'Ada@X.example')",
                [],
            )
            .unwrap();
            record_lookup(&conn, "ada@x.example", "c").unwrap();
        }
        // `status` and `report` read it unchanged: its row by email, no notes.
        let read = open_read_only(&path).unwrap();
        let rows = load_rows(&read).unwrap();
        assert_eq!(
            (
                rows[0].contact_email.as_str(),
                rows[0].state,
                rows[0].note.is_empty()
            ),
            ("Ada@X.example", RowState::Done, true)
        );
        assert!(load_notes(&read).unwrap().is_empty());
        drop(read);
        // `run` migrates it: the row keeps its key, state and email, the lookup stays.
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len() as i64);
        let rows = load_rows(&conn).unwrap();
        assert_eq!(
            (
                rows[0].key.as_str(),
                rows[0].state,
                rows[0].contact_email.as_str()
            ),
            ("k1", RowState::Done, "Ada@X.example")
        );
        assert_eq!(load_lookups(&conn).unwrap()["ada@x.example"], "c");
    }

    #[test]
    fn foreign_newer_and_non_sqlite_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("other.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE x (y)")
            .unwrap();
        assert!(matches!(open(&foreign), Err(OpenError::Foreign { .. })));

        let text = dir.path().join("notes.txt");
        let words = "just some text, long enough not to be mistaken for a database header";
        std::fs::write(&text, words).unwrap();
        assert!(matches!(open(&text), Err(OpenError::NotSqlite { .. })));
        assert_eq!(std::fs::read_to_string(&text).unwrap(), words);
        assert!(!dir.path().join("notes.txt-wal").exists());

        let newer = dir.path().join("newer.sqlite");
        drop(open(&newer).unwrap());
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            open(&newer),
            Err(OpenError::Newer { found: 99, .. })
        ));
    }

    #[test]
    fn an_existing_empty_state_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.sqlite");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(open(&empty), Err(OpenError::NotOurs { .. })));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["empty.sqlite"]);

        // A SQLite file with nothing in it (a header, no tables) is not ours either.
        let bare = dir.path().join("bare.sqlite");
        Connection::open(&bare)
            .unwrap()
            .pragma_update(None, "user_version", 0)
            .unwrap();
        Connection::open(&bare)
            .unwrap()
            .execute_batch("VACUUM")
            .unwrap();
        assert!(open(&bare).is_err());

        // A path that does not exist is created, and opens again as ours.
        let new = dir.path().join("new.sqlite");
        drop(open(&new).unwrap());
        drop(open(&new).unwrap());
    }
}
