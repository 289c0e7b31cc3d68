//! A run's session with its state file: open and check it (the state file takes the run lock,
//! see [`StateFile::open`]), record every row of the manifest before any upload (in batches,
//! each with its place in this run: see `checkpoint::this_run`), and count what is left of each
//! row (read back in batches, judged by [`decide`]) into a [`Work`].

use std::collections::HashMap;
use std::path::Path;

use super::config::Choices;
use super::config::RunConfig;
use super::plan::{Work, chunk_rows, decide};
use crate::checkpoint::{Now, Pass, Place, START, StateFile, StoreError};
use crate::error::CommandError;
use crate::lookup::Lookups;
use crate::pipeline::Plan;
use crate::preflight::Scan;

/// The state file of a run, locked and recorded, and what is left to do.
pub struct Session {
    pub state: StateFile,
    pub work: Work,
}

impl Session {
    /// Locks, opens and checks the state file (nothing is recorded yet: see [`Session::record`]).
    pub fn open(cfg: &RunConfig) -> Result<Self, CommandError> {
        let state = StateFile::open(&cfg.state).map_err(CommandError::stopped)?;
        check_manifest(cfg, &state)?;
        Ok(Self {
            state,
            work: Work::default(),
        })
    }

    /// Why an earlier run turned form reuse off for this state file, if it did.
    pub fn form_reuse_off(&self, cfg: &RunConfig) -> Result<Option<String>, CommandError> {
        self.state
            .form_reuse_off()
            .wait()
            .map_err(|e| cannot_read(cfg, e))
    }

    /// The emails earlier runs resolved, and their contacts.
    pub fn known_lookups(&self, cfg: &RunConfig) -> Result<HashMap<String, String>, CommandError> {
        self.state
            .load_lookups()
            .wait()
            .map_err(|e| cannot_read(cfg, e))
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
        self.state.record_lookups(found).wait().map_err(|e| {
            CommandError::stopped(format!(
                "cannot write state file {}: {e}",
                cfg.state.display()
            ))
        })
    }

    /// Records every row (before anything is sent): the manifest is read again, chunk by chunk
    /// (its check, `scan`, found its problems), each row recorded with its contact (`lookups`:
    /// those by email), its problems (with the lookups') and its place in this run (see
    /// `checkpoint::this_run`);
    /// then what is left of each row is counted. Says how many rows were recorded.
    pub fn record(
        &mut self,
        cfg: &RunConfig,
        scan: &Scan,
        lookups: &Lookups,
    ) -> Result<usize, CommandError> {
        let cannot = |e: StoreError| {
            CommandError::stopped(format!(
                "cannot record the rows in {}: {e}",
                cfg.state.display()
            ))
        };
        let state = &self.state;
        state
            .begin_this_run(manifest_id(&cfg.manifest))
            .wait()
            .map_err(cannot)?;
        if cfg.choices.redo_removed {
            state.redo_removed().wait().map_err(cannot)?;
        }
        let mut resolved = lookups.resolved_ids();
        let unresolved = lookups.not_found + lookups.ambiguous > 0;
        // A contact's place: where its first row is (a row by email not looked up: its email in
        // any case stands for its contact).
        let mut contacts: HashMap<String, i64> = HashMap::new();
        let (mut ord, mut recorded) = (0i64, 0usize);
        let read = crate::preflight::rescan(&cfg.manifest, cfg.read, scan, |mut checked| {
            if unresolved {
                let problems = crate::lookup::problems(&checked.manifest.rows, lookups);
                if !problems.is_empty() {
                    checked.add_problems(problems);
                }
            }
            checked.resolved = std::mem::take(&mut resolved);
            let rows = chunk_rows(&checked);
            resolved = std::mem::take(&mut checked.resolved);
            let places: Vec<(Place, Now)> = rows
                .iter()
                .map(|r| {
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
                    ord += 1;
                    ((contact, ord), now)
                })
                .collect();
            recorded += state.record_this_run(rows, places).wait().map_err(cannot)?;
            Ok::<_, CommandError>(())
        })?;
        if !read {
            // Read whole a moment ago: it changed or went away since.
            return Err(CommandError::stopped(format!(
                "the manifest {} could not be read again to record its rows (did it change?); nothing was uploaded",
                cfg.manifest.display()
            )));
        }
        state.forget_stale_rejected().wait().map_err(cannot)?;
        let work = count(state, &cfg.choices).map_err(cannot)?;
        for row in &work.changed {
            crate::say!(
                "warning: line {}: {} changed after it was uploaded; the uploaded version is kept (pass --reupload-changed to upload it again)",
                row.line,
                row.file
            );
        }
        self.work = work;
        Ok(recorded)
    }

    /// Waits until everything submitted is written, then lets the state file go.
    pub fn close(self) {
        self.state.close();
    }
}

fn cannot_read(cfg: &RunConfig, e: impl std::fmt::Display) -> CommandError {
    CommandError::stopped(format!(
        "cannot read state file {}: {e}",
        cfg.state.display()
    ))
}

/// Checks that the state file belongs to this manifest (or, with `--adopt-state`, takes it
/// over).
fn check_manifest(cfg: &RunConfig, file: &StateFile) -> Result<(), CommandError> {
    let state = &cfg.state;
    let recorded = file.manifest_of().wait().map_err(|e| cannot_read(cfg, e))?;
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
    Ok(())
}

/// The manifest as the state file names it: its canonical path.
pub(crate) fn manifest_id(manifest: &Path) -> String {
    std::fs::canonicalize(manifest)
        .unwrap_or_else(|_| manifest.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// What is left of each row of this run, read from the state file in batches, counted; the
/// rows to verify are marked, so that they are taken up first and only then (see `Pass`).
fn count(state: &StateFile, choices: &Choices) -> Result<Work, StoreError> {
    let mut work = Work::default();
    work.already_done = state.settled_this_run().wait()?;
    let mut after = START;
    loop {
        let batch = state
            .this_run(after, crate::defaults::batch_rows(), Pass::All)
            .wait()?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.place;
        let mut verify = Vec::new();
        for mut t in batch {
            let decision = decide(&t.row, t.now, choices);
            if decision.refreshes() {
                // Recorded when the row is taken up (see `execute::feed`).
                (t.row.size, t.row.mtime_ns) = (t.now.size, t.now.mtime_ns);
            }
            if decision.plan() == Some(Plan::Verify) {
                verify.push(t.row.key.clone());
            }
            work.add(&t.row, decision);
        }
        if !verify.is_empty() {
            state.verify_first(verify).wait()?;
        }
    }
    // Read in the order rows are taken up (by contact); told in the manifest's order, as a
    // manifest read whole tells them (the warnings above, the summary's list).
    work.changed.sort_by_key(|r| r.line);
    Ok(work)
}
