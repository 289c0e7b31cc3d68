//! A run's session with its state file: lock it (the lock follows the file, not its name), open
//! and check it, record every row of the manifest before anything is sent, and plan what is left.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::Connection;

use super::config::Choices;
use super::config::RunConfig;
use super::plan::{Work, decide};
use crate::checkpoint::this_run::{self, Now, Place};
use crate::checkpoint::{self, NewRow, Store, StoreThread};
use crate::error::CommandError;

/// The state file of a run, locked and recorded, and what is left to do.
pub struct Session {
    pub store: Store,
    writer: StoreThread,
    /// Held until the session ends; the OS drops it with the process, however it ends. An
    /// in-memory state is this process's alone and needs none.
    _lock: Option<std::fs::File>,
    pub work: Work,
}

impl Session {
    /// Locks, opens and checks the state file (nothing is recorded yet: see [`Session::record`]).
    pub fn open(cfg: &RunConfig) -> Result<Self, CommandError> {
        let state = &cfg.state;
        // Before anything is made or locked: `--state /dev/null` is refused, not used.
        checkpoint::check_regular(state).map_err(CommandError::stopped)?;
        // Seen before the lock creates the file: an existing file must already be ours.
        let existed = checkpoint::exists(state);
        let lock = match cfg.state_in_memory() {
            true => None,
            false => Some(lock_state(state).map_err(CommandError::stopped)?),
        };
        let conn = open_checked(cfg, existed)?;
        let (store, writer) = checkpoint::store::spawn(conn);
        Ok(Self {
            store,
            writer,
            _lock: lock,
            work: Work::default(),
        })
    }

    /// Why an earlier run turned form reuse off for this state file, if it did.
    pub fn form_reuse_off(&self, cfg: &RunConfig) -> Result<Option<String>, CommandError> {
        self.read(cfg, checkpoint::form_reuse_off)
    }

    /// The emails earlier runs resolved, and their contacts.
    pub fn known_lookups(&self, cfg: &RunConfig) -> Result<HashMap<String, String>, CommandError> {
        self.read(cfg, checkpoint::load_lookups)
    }

    /// What `f` reads from the state file; an error names the file.
    fn read<T: Send + 'static>(
        &self,
        cfg: &RunConfig,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CommandError> {
        self.store.call_blocking(f).map_err(|e| {
            CommandError::stopped(format!(
                "cannot read state file {}: {e}",
                cfg.state.display()
            ))
        })
    }

    /// Records emails resolved now (email, contact), so that no later run looks them up again.
    pub fn record_lookups(
        &self,
        cfg: &RunConfig,
        found: Vec<(String, String)>,
    ) -> Result<(), CommandError> {
        if found.is_empty() {
            return Ok(());
        }
        self.store
            .call_blocking(move |c| {
                for (email, id) in &found {
                    checkpoint::record_lookup(c, email, id)?;
                }
                Ok(())
            })
            .map_err(|e| {
                CommandError::stopped(format!(
                    "cannot write state file {}: {e}",
                    cfg.state.display()
                ))
            })
    }

    /// Records every row (before anything is sent), in batches, with its place in this run
    /// (see `checkpoint::this_run`), and counts what is left of each.
    pub fn record(&mut self, cfg: &RunConfig, new_rows: &[NewRow]) -> Result<(), CommandError> {
        let cannot = |e: checkpoint::StoreError| {
            CommandError::stopped(format!(
                "cannot record the rows in {}: {e}",
                cfg.state.display()
            ))
        };
        let id = manifest_id(&cfg.manifest);
        self.store
            .call_blocking(move |c| {
                checkpoint::set_manifest(c, &id)?;
                this_run::begin(c)
            })
            .map_err(cannot)?;
        // A contact's place: where its first row is (a row by email not looked up yet: its
        // email in any case stands for its contact).
        let mut contacts: HashMap<String, i64> = HashMap::new();
        for (n, chunk) in new_rows.chunks(RECORD_BATCH).enumerate() {
            let places: Vec<(Place, Now)> = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let contact = match r.contact_id.is_empty() {
                        true => r.contact_email.to_lowercase(),
                        false => r.contact_id.clone(),
                    };
                    let next = contacts.len() as i64;
                    let contact = *contacts.entry(contact).or_insert(next);
                    let now = Now {
                        size: r.size,
                        mtime_ns: r.mtime_ns,
                        valid: r.rejected.is_none(),
                    };
                    ((contact, (n * RECORD_BATCH + i) as i64), now)
                })
                .collect();
            let rows = chunk.to_vec();
            self.store
                .call_blocking(move |c| {
                    checkpoint::record_rows(c, &rows)?;
                    let keys = rows.iter().map(|r| r.key.as_str());
                    this_run::add(c, keys.zip(places).map(|(k, (p, now))| (k, p, now)))
                })
                .map_err(cannot)?;
        }
        self.store
            .call_blocking(this_run::forget_stale_rejected)
            .map_err(cannot)?;
        let work = count(&self.store, &cfg.choices).map_err(cannot)?;
        for row in &work.changed {
            crate::say!(
                "warning: line {}: {} changed after it was uploaded; the uploaded version is kept (pass --reupload-changed to upload it again)",
                row.line,
                row.file
            );
        }
        self.work = work;
        Ok(())
    }

    /// Waits until everything submitted is written, then lets the state file go.
    pub fn close(self) {
        drop(self.store);
        self.writer.join();
    }
}

/// Opens the state file and checks that it belongs to this manifest (or, with `--adopt-state`,
/// takes it over).
fn open_checked(cfg: &RunConfig, existed: bool) -> Result<Connection, CommandError> {
    let state = &cfg.state;
    let conn = checkpoint::open_as(state, existed).map_err(CommandError::stopped)?;
    let recorded = checkpoint::manifest_of(&conn).map_err(|e| {
        CommandError::stopped(format!("cannot read state file {}: {e}", state.display()))
    })?;
    let manifest_id = manifest_id(&cfg.manifest);
    match recorded {
        Some(recorded) if recorded != manifest_id && cfg.choices.adopt_state => {
            crate::say!(
                "note: state file {} belonged to the manifest {recorded}; it now belongs to {manifest_id} (--adopt-state)",
                state.display()
            );
        }
        Some(recorded) if recorded != manifest_id => {
            return Err(CommandError::stopped(format!(
                "state file {} belongs to the manifest {recorded}, not {manifest_id}; give that manifest, or another --state. If you moved or renamed the manifest (with its files), pass --adopt-state: rows are matched by what they mean, so done rows are not uploaded again",
                state.display()
            )));
        }
        _ => {}
    }
    Ok(conn)
}

/// The manifest as the state file names it: its canonical path.
fn manifest_id(manifest: &Path) -> String {
    std::fs::canonicalize(manifest)
        .unwrap_or_else(|_| manifest.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// Rows recorded in one transaction.
const RECORD_BATCH: usize = 4096;

/// What is left of each row of this run, read from the state file in batches, counted.
fn count(store: &Store, choices: &Choices) -> Result<Work, checkpoint::StoreError> {
    let mut work = Work::default();
    let mut after = this_run::START;
    loop {
        let batch = store.call_blocking(move |c| this_run::batch(c, after, RECORD_BATCH, false))?;
        let Some(last) = batch.last() else {
            return Ok(work);
        };
        after = last.place;
        for mut t in batch {
            let decision = decide(&t.row, t.now, choices);
            if decision.refreshes() {
                // Recorded when the row is taken up (see `execute::feed`).
                (t.row.size, t.row.mtime_ns) = (t.now.size, t.now.mtime_ns);
            }
            work.add(&t.row, decision);
        }
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
