//! The checkpoint: one SQLite file per manifest that records every row's state, so that a rerun
//! after any stop resumes exactly where the last run left off.
//!
//! A [`StateFile`] is the file opened for a run: it owns its connection, on a writer thread of
//! its own ([`writer`]), and every read and write is one of its methods, grouped by what they
//! concern: the rows ([`rows`]), the notes ([`notes`]), the lookups ([`lookups`]), the snapshots
//! ([`snapshots`]), the runs ([`runs`]) and what the file says about itself ([`meta`]). A method
//! queues its work and returns a [`Pending`] answer: the pipeline awaits it, setup code waits for
//! it, and a result recorded after its side effect is detached. A [`StateReader`] is the file
//! opened for reading only (`status`, `report`, a dry run). Opening, its checks, the run lock
//! and the migrations are in [`open`]; row keys in [`keys`]; the rows of the manifest as this
//! run reads them, read back in batches, in [`this_run`]. No caller sees a connection.

mod keys;
mod lookups;
mod meta;
mod notes;
mod open;
mod rows;
mod runs;
mod snapshots;
mod this_run;
mod undo;
mod writer;

pub use keys::{
    LinkRecord, escape_bytes, is_raw_key, link_row_key, note_row_key, note_row_key_by_email,
    raw_row_key, row_key, row_key_by_email, unescape_bytes,
};
pub use notes::{NoteGroup, NoteState};
pub use open::OpenError;
pub use rows::{LinkColumns, NewRow, NoteColumns, PinState, RowState, StoredRow, Transition};
pub use runs::{RunCounts, RunRecord};
pub use snapshots::{HeldAttachment, RecordSnapshot};
pub use this_run::{Now, Pass, Place, START, ThisRun};
pub use undo::ReplacedAttachment;
pub use writer::{Answer, Pending, StoreError};

/// A state file opened for a run: a handle to its writer thread, cheap to clone. The thread,
/// its connection and the run lock live until the last handle is dropped, and that drop waits
/// until everything sent is committed and the lock let go ([`close`] waits for the other
/// handles too). Never drop the last handle inside the async runtime.
///
/// [`close`]: StateFile::close
#[derive(Clone)]
pub struct StateFile {
    writer: writer::Writer,
}

/// A state file opened for reading only, on the caller's thread (`status`, `report`, a dry run):
/// it never creates, migrates or changes the file, and reads one of any earlier schema as it is.
pub struct StateReader {
    conn: rusqlite::Connection,
}

/// This machine's clock as the state file records it (see [`stamp`]).
fn now() -> String {
    stamp(chrono::Utc::now())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, written without parsing a format string (at every transition).
fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_recorded_as_they_always_were() {
        let t = chrono::DateTime::from_timestamp(1_796_534_049, 49_000_000).unwrap();
        assert_eq!(super::stamp(t), "2026-12-06T05:14:09.049Z");
        assert_eq!(
            super::stamp(t),
            t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
        );
    }
}
