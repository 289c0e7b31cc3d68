//! Snapshots: what a record held before a run's first attach to it, and which notes a contact
//! had before the first note a run created for it, by generation (migration 0004).
//!
//! After a lost answer the tool re-reads the record (or the contact's notes) and adopts the one
//! match that is in neither the snapshot nor claimed by another row: what the tool saw before
//! the side effect decides, not a key in a link, a clock or a `created_at`.
//!
//! The functions over a connection run on the writer thread; callers (the pipeline's snapshots
//! and notes) use the methods of [`StateFile`] below, awaited.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Pending, StateFile, now};
use crate::onepagecrm::ReferenceType;

/// One attachment a record held when its snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAttachment {
    pub id: String,
    pub filename: String,
    pub size: u64,
}

/// A record's snapshot, to be recorded.
#[derive(Clone, Debug)]
pub struct RecordSnapshot {
    pub reference_type: ReferenceType,
    pub reference_id: String,
    pub contact_id: String,
    pub held: Vec<HeldAttachment>,
}

/// The generation of this run's reads: larger than any recorded before.
pub(super) fn next_generation(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT 1 + max(COALESCE((SELECT max(generation) FROM snapshots), 0),
                        COALESCE((SELECT max(generation) FROM note_snapshots), 0))",
        [],
        |r| r.get(0),
    )
}

/// Records `snapshots`, read in `generation`: each record's latest read, and the attachments it
/// held (one seen before keeps the generation it was first seen in).
pub(super) fn record(
    conn: &Connection,
    snapshots: &[RecordSnapshot],
    generation: i64,
) -> rusqlite::Result<()> {
    let now = now();
    let mut head = conn.prepare_cached(
        "INSERT INTO snapshots (reference_type, reference_id, contact_id, taken_at, generation)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (reference_type, reference_id) DO UPDATE SET
            contact_id = excluded.contact_id, taken_at = excluded.taken_at,
            generation = max(snapshots.generation, excluded.generation)",
    )?;
    let mut held = conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_attachments
            (reference_type, reference_id, attachment_id, filename, size, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for s in snapshots {
        let kind = s.reference_type.as_str();
        head.execute(params![kind, s.reference_id, s.contact_id, now, generation])?;
        for a in &s.held {
            held.execute(params![
                kind,
                s.reference_id,
                a.id,
                a.filename,
                a.size as i64,
                generation
            ])?;
        }
    }
    Ok(())
}

/// Adds the attachment the `done` row of id `id` holds to its record's snapshot (when it has
/// one), as held by every snapshot.
pub(super) fn extend(conn: &Connection, id: i64, attachment_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_attachments
            (reference_type, reference_id, attachment_id, filename, size, generation)
         SELECT r.reference_type, r.reference_id, ?2, r.name, r.size, 0 FROM rows r
         JOIN snapshots s ON s.reference_type = r.reference_type AND s.reference_id = r.reference_id
         WHERE r.id = ?1",
    )?
    .execute(params![id, attachment_id])
    .map(drop)
}

/// The attachments a record was seen holding up to `generation` (the snapshot an attach sent
/// after it was made after).
pub(super) fn held(
    conn: &Connection,
    reference_type: ReferenceType,
    reference_id: &str,
    generation: i64,
) -> rusqlite::Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attachment_id FROM snapshot_attachments
         WHERE reference_type = ?1 AND reference_id = ?2 AND generation <= ?3",
    )?;
    stmt.query_map(
        params![reference_type.as_str(), reference_id, generation],
        |r| r.get(0),
    )?
    .collect()
}

/// The generation of the snapshot the attach of the row of id `id` was sent after, if one was.
pub(super) fn row_generation(conn: &Connection, id: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT snapshot_gen FROM rows WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
        .map(Option::flatten)
}

/// Records the notes `contact_id` had, listed in `generation` (one seen before keeps the
/// generation it was first seen in).
pub(super) fn record_notes(
    conn: &Connection,
    contact_id: &str,
    note_ids: &[String],
    generation: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO note_snapshots (contact_id, taken_at, generation) VALUES (?1, ?2, ?3)
         ON CONFLICT (contact_id) DO UPDATE SET
            taken_at = excluded.taken_at,
            generation = max(note_snapshots.generation, excluded.generation)",
    )?
    .execute(params![contact_id, now(), generation])?;
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO note_snapshot_ids (contact_id, note_id, generation) VALUES (?1, ?2, ?3)",
    )?;
    for id in note_ids {
        stmt.execute(params![contact_id, id, generation])?;
    }
    Ok(())
}

/// The notes `contact_id` was seen with up to `generation` (the listing a group's note was
/// asked for after).
pub(super) fn notes_held(
    conn: &Connection,
    contact_id: &str,
    generation: i64,
) -> rusqlite::Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT note_id FROM note_snapshot_ids WHERE contact_id = ?1 AND generation <= ?2",
    )?;
    stmt.query_map(params![contact_id, generation], |r| r.get(0))?
        .collect()
}

/// Records that `group`'s note is asked for after its contact's listing of `generation`.
pub(super) fn note_generation(
    conn: &Connection,
    group: &str,
    generation: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE notes SET snapshot_gen = ?2 WHERE group_key = ?1")?
        .execute(params![group, generation])
        .map(drop)
}

impl StateFile {
    /// The generation of this run's reads: larger than any recorded before.
    pub fn next_generation(&self) -> Pending<i64> {
        self.send(false, next_generation)
    }

    /// Records `snapshots`, read in `generation` (see [`record`]); all or nothing.
    pub fn record_snapshots(&self, snapshots: Vec<RecordSnapshot>, generation: i64) -> Pending<()> {
        self.send(true, move |c| record(c, &snapshots, generation))
    }

    /// Records the notes `contact_id` had, listed in `generation` (see [`record_notes`]); all or
    /// nothing.
    pub fn record_notes_seen(
        &self,
        contact_id: &str,
        note_ids: Vec<String>,
        generation: i64,
    ) -> Pending<()> {
        let contact = contact_id.to_string();
        self.send(true, move |c| {
            record_notes(c, &contact, &note_ids, generation)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::checkpoint::open::open(&dir.path().join("s.opcrm.sqlite")).unwrap();
        (dir, conn)
    }

    fn snap(ids: &[&str]) -> RecordSnapshot {
        RecordSnapshot {
            reference_type: ReferenceType::Deal,
            reference_id: "d1".into(),
            contact_id: "c1".into(),
            held: ids
                .iter()
                .map(|id| HeldAttachment {
                    id: id.to_string(),
                    filename: "a.pdf".into(),
                    size: 3,
                })
                .collect(),
        }
    }

    fn sorted(set: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn an_attachment_keeps_the_generation_it_was_first_seen_in() {
        let (_dir, c) = conn();
        assert_eq!(next_generation(&c).unwrap(), 1);
        record(&c, &[snap(&["a1"])], 1).unwrap();
        assert_eq!(next_generation(&c).unwrap(), 2);
        // Read again in a later run: a1 as before, a2 new since.
        record(&c, &[snap(&["a1", "a2"])], 2).unwrap();
        let held = |g| sorted(super::held(&c, ReferenceType::Deal, "d1", g).unwrap());
        assert_eq!(held(1), ["a1"], "an attach sent after the first read");
        assert_eq!(held(2), ["a1", "a2"], "an attach sent after the second");
        assert_eq!(next_generation(&c).unwrap(), 3);
    }

    #[test]
    fn a_contacts_notes_keep_the_generation_they_were_first_seen_in() {
        let (_dir, c) = conn();
        record_notes(&c, "c1", &["n1".into()], 1).unwrap();
        record_notes(&c, "c1", &["n1".into(), "n2".into()], 2).unwrap();
        assert_eq!(sorted(notes_held(&c, "c1", 1).unwrap()), ["n1"]);
        assert_eq!(sorted(notes_held(&c, "c1", 2).unwrap()), ["n1", "n2"]);
        assert_eq!(next_generation(&c).unwrap(), 3);
    }
}
