//! Contacts found by email: each email (trimmed and lower-cased) that resolved to exactly one
//! contact, so that a rerun looks it up no more.
//!
//! The functions over a connection run on the writer thread or on a read-only connection;
//! callers use the methods of [`StateFile`] (a run's setup, waited for) and [`StateReader`].

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::{Pending, StateFile, StateReader, now};

/// The emails resolved in earlier runs (trimmed and lower-cased) and their contacts.
/// (A state file of a version before lookups, read without migrating it, has none: an error.)
pub(super) fn load_lookups(
    conn: &Connection,
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    conn.prepare("SELECT email, contact_id FROM lookups")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Records that `email` (trimmed and lower-cased) resolved to `contact_id`, so that no later run
/// looks it up again. Only a lookup that found exactly one contact is recorded.
pub(super) fn record_lookup(
    conn: &Connection,
    email: &str,
    contact_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO lookups (email, contact_id, looked_up_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (email) DO UPDATE SET contact_id = excluded.contact_id, looked_up_at = excluded.looked_up_at",
    )?
    .execute(params![email, contact_id, now()])
    .map(drop)
}

impl StateFile {
    /// The emails resolved in earlier runs and their contacts.
    pub fn load_lookups(&self) -> Pending<HashMap<String, String>> {
        self.send(false, load_lookups)
    }

    /// Records emails resolved now, `(email, contact)`, so that no later run looks them up
    /// again; all or nothing.
    pub fn record_lookups(&self, found: Vec<(String, String)>) -> Pending<()> {
        self.send(true, move |c| {
            for (email, id) in &found {
                record_lookup(c, email, id)?;
            }
            Ok(())
        })
    }
}

impl StateReader {
    /// The emails resolved in earlier runs and their contacts (an error for a state file of a
    /// version before lookups).
    pub fn load_lookups(&self) -> rusqlite::Result<HashMap<String, String>> {
        load_lookups(&self.conn)
    }
}
