//! What the state file says about itself (the `meta` table): the manifest it belongs to, and
//! whether a run turned form reuse off for it.
//!
//! The functions over a connection run on the writer thread or on a read-only connection;
//! callers use the methods of [`StateFile`] and [`StateReader`].

use rusqlite::{Connection, OptionalExtension};

use super::{Pending, StateFile, StateReader};

/// The manifest a state file belongs to, recorded at its first run.
pub(super) fn manifest_of(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = 'manifest'", [], |r| {
        r.get(0)
    })
    .optional()
}

pub(super) fn set_manifest(conn: &Connection, manifest: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('manifest', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([manifest])
    .map(drop)
}

/// Why form reuse is off for this state file, if a run turned it off (step 3 or S3 refused an
/// upload made with a reused form while a fresh form's was accepted): later runs of this file get
/// one form per file.
pub(super) fn form_reuse_off(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'form_reuse_off'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Turns form reuse off for every later run of this state file, saying why.
pub(super) fn set_form_reuse_off(conn: &Connection, why: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('form_reuse_off', ?1) ON CONFLICT (key) DO NOTHING",
    )?
    .execute([why])
    .map(drop)
}

impl StateFile {
    /// The manifest the state file belongs to (its canonical path), recorded at its first run.
    pub fn manifest_of(&self) -> Pending<Option<String>> {
        self.send(false, manifest_of)
    }

    /// Records `manifest` as the one the state file belongs to.
    pub fn set_manifest(&self, manifest: &str) -> Pending<()> {
        let manifest = manifest.to_string();
        self.send(false, move |c| set_manifest(c, &manifest))
    }

    /// Why form reuse is off for this state file, if a run turned it off.
    pub fn form_reuse_off(&self) -> Pending<Option<String>> {
        self.send(false, form_reuse_off)
    }

    /// Turns form reuse off for every later run of this state file, saying why.
    pub fn set_form_reuse_off(&self, why: &str) -> Pending<()> {
        let why = why.to_string();
        self.send(false, move |c| set_form_reuse_off(c, &why))
    }
}

impl StateReader {
    /// The manifest the state file belongs to, recorded at its first run.
    pub fn manifest_of(&self) -> rusqlite::Result<Option<String>> {
        manifest_of(&self.conn)
    }

    /// Why form reuse is off for this state file, if a run turned it off.
    pub fn form_reuse_off(&self) -> rusqlite::Result<Option<String>> {
        form_reuse_off(&self.conn)
    }
}
