//! A run's session with its state file: open and check it (the state file takes the run lock,
//! see [`StateFile::open`]), record every row of the manifest before anything is sent, and plan
//! what is left.

use std::collections::HashMap;
use std::path::Path;

use super::config::RunConfig;
use super::plan::{Work, plan};
use crate::checkpoint::{NewRow, StateFile, StoredRow};
use crate::error::CommandError;

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

    /// Records every row (before anything is sent) and plans the run.
    pub fn record(&mut self, cfg: &RunConfig, new_rows: &[NewRow]) -> Result<(), CommandError> {
        let state = &cfg.state;
        let stored = record(&self.state, cfg, new_rows)?;
        let (work, refresh) = plan(new_rows, stored, &cfg.choices);
        if !refresh.is_empty() {
            self.state.refresh_files(refresh).wait().map_err(|e| {
                CommandError::stopped(format!("cannot write state file {}: {e}", state.display()))
            })?;
        }
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
fn manifest_id(manifest: &Path) -> String {
    std::fs::canonicalize(manifest)
        .unwrap_or_else(|_| manifest.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// Records every row of the manifest (before anything is sent) and reads them all back.
fn record(
    file: &StateFile,
    cfg: &RunConfig,
    new_rows: &[NewRow],
) -> Result<Vec<StoredRow>, CommandError> {
    file.record_manifest(manifest_id(&cfg.manifest), new_rows.to_vec())
        .wait()
        .map_err(|e| {
            CommandError::stopped(format!(
                "cannot record the rows in {}: {e}",
                cfg.state.display()
            ))
        })
}
