//! Snapshots: what a record held before this state file's first attach to it, and which notes a
//! contact had before the first note this state file created for it (migration 0004).
//!
//! After a lost answer the tool re-reads the record (or the contact's notes) and adopts the one
//! match that is in neither the snapshot nor claimed by another row: what the tool saw before
//! the side effect decides, not a key in a link, a clock or a `created_at`.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

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

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The records that have a snapshot (read once at the start of a run), and the contact each
/// belongs to (empty when its answer did not say).
pub fn records_with_snapshot(
    conn: &Connection,
) -> rusqlite::Result<HashMap<(ReferenceType, String), String>> {
    let mut stmt =
        conn.prepare("SELECT reference_type, reference_id, contact_id FROM snapshots")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (kind, id, contact) = row?;
        if let Some(kind) = ReferenceType::parse(&kind) {
            out.insert((kind, id), contact);
        }
    }
    Ok(out)
}

/// Records `snapshots`; a record that has one already keeps it (the first is the one taken
/// before any attach).
pub fn record(conn: &Connection, snapshots: &[RecordSnapshot]) -> rusqlite::Result<()> {
    let now = now();
    let mut head = conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshots (reference_type, reference_id, contact_id, taken_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut held = conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_attachments (reference_type, reference_id, attachment_id, filename, size)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for s in snapshots {
        let kind = s.reference_type.as_str();
        if head.execute(params![kind, s.reference_id, s.contact_id, now])? == 0 {
            continue;
        }
        for a in &s.held {
            held.execute(params![
                kind,
                s.reference_id,
                a.id,
                a.filename,
                a.size as i64
            ])?;
        }
    }
    Ok(())
}

/// Adds the attachment a `done` row holds to its record's snapshot (when it has one).
pub fn extend(conn: &Connection, row_key: &str, attachment_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO snapshot_attachments (reference_type, reference_id, attachment_id, filename, size)
         SELECT r.reference_type, r.reference_id, ?2, r.name, r.size FROM rows r
         JOIN snapshots s ON s.reference_type = r.reference_type AND s.reference_id = r.reference_id
         WHERE r.row_key = ?1",
    )?
    .execute(params![row_key, attachment_id])
    .map(drop)
}

/// The ids a record's snapshot holds, or `None` when it has no snapshot.
pub fn held(
    conn: &Connection,
    reference_type: ReferenceType,
    reference_id: &str,
) -> rusqlite::Result<Option<HashSet<String>>> {
    let kind = reference_type.as_str();
    let taken: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM snapshots WHERE reference_type = ?1 AND reference_id = ?2")?
        .query_row(params![kind, reference_id], |r| r.get(0))
        .optional()?;
    if taken.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT attachment_id FROM snapshot_attachments WHERE reference_type = ?1 AND reference_id = ?2",
    )?;
    let ids = stmt
        .query_map(params![kind, reference_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(ids))
}

/// The contacts whose notes were listed before this state file's first note for them.
pub fn contacts_with_note_snapshot(conn: &Connection) -> rusqlite::Result<HashSet<String>> {
    conn.prepare("SELECT contact_id FROM note_snapshots")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Records the notes `contact_id` had (a contact that has a snapshot keeps it).
pub fn record_notes(
    conn: &Connection,
    contact_id: &str,
    note_ids: &[String],
) -> rusqlite::Result<()> {
    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO note_snapshots (contact_id, taken_at) VALUES (?1, ?2)",
        )?
        .execute(params![contact_id, now()])?;
    if added == 0 {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO note_snapshot_ids (contact_id, note_id) VALUES (?1, ?2)",
    )?;
    for id in note_ids {
        stmt.execute(params![contact_id, id])?;
    }
    Ok(())
}

/// The notes `contact_id` had before the first note made for it, or `None` without a snapshot.
pub fn notes_held(
    conn: &Connection,
    contact_id: &str,
) -> rusqlite::Result<Option<HashSet<String>>> {
    let taken: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM note_snapshots WHERE contact_id = ?1")?
        .query_row([contact_id], |r| r.get(0))
        .optional()?;
    if taken.is_none() {
        return Ok(None);
    }
    let mut stmt =
        conn.prepare_cached("SELECT note_id FROM note_snapshot_ids WHERE contact_id = ?1")?;
    let ids = stmt
        .query_map([contact_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("s.opcrm.sqlite")).unwrap();
        (dir, conn)
    }

    #[test]
    fn the_first_snapshot_of_a_record_is_kept() {
        let (_dir, c) = conn();
        let held = |ids: &[&str]| {
            ids.iter()
                .map(|id| HeldAttachment {
                    id: id.to_string(),
                    filename: "a.pdf".into(),
                    size: 3,
                })
                .collect()
        };
        let snap = |ids: &[&str]| RecordSnapshot {
            reference_type: ReferenceType::Deal,
            reference_id: "d1".into(),
            contact_id: "c1".into(),
            held: held(ids),
        };
        assert_eq!(held_ids(&c, "d1"), None);
        record(&c, &[snap(&["a1"])]).unwrap();
        record(&c, &[snap(&["a1", "a2"])]).unwrap();
        assert_eq!(held_ids(&c, "d1"), Some(vec!["a1".to_string()]));
        assert!(
            records_with_snapshot(&c)
                .unwrap()
                .contains_key(&(ReferenceType::Deal, "d1".to_string()))
        );
    }

    fn held_ids(c: &Connection, id: &str) -> Option<Vec<String>> {
        held(c, ReferenceType::Deal, id).unwrap().map(|s| {
            let mut v: Vec<String> = s.into_iter().collect();
            v.sort();
            v
        })
    }

    #[test]
    fn a_contacts_first_note_snapshot_is_kept() {
        let (_dir, c) = conn();
        assert_eq!(notes_held(&c, "c1").unwrap(), None);
        record_notes(&c, "c1", &["n1".into()]).unwrap();
        record_notes(&c, "c1", &["n1".into(), "n2".into()]).unwrap();
        let held = notes_held(&c, "c1").unwrap().unwrap();
        assert_eq!(held.len(), 1);
        assert!(held.contains("n1"));
        assert!(contacts_with_note_snapshot(&c).unwrap().contains("c1"));
    }
}
