//! The notes `run` creates from the manifest (`note_text`), one per note group, each exactly
//! once: the groups recorded with the rows, the intent committed before `POST /notes`, the note
//! recorded when created (or adopted after a lost answer), and what the check after a lost
//! answer reads.
//!
//! The functions over a connection run on the writer thread or on a read-only connection;
//! callers use the methods of [`StateFile`] (the pipeline's notes step, awaited) and
//! [`StateReader`] below.

use std::collections::HashSet;

use rusqlite::{Connection, params};

use super::open::{notes_version, schema_version};
use super::rows::NewRow;
use super::snapshots::{self, RecordSnapshot};
use super::{Pending, StateFile, StateReader, now};
use crate::onepagecrm::ReferenceType;

/// Records the note group of every valid row that creates a note (`pending`, nothing sent), and
/// gives the rows of groups already created their note's id as `reference_id` (a row added to
/// the manifest later joins its group's note).
///
/// A group's contact is the row's `contact_id`: as the manifest gave it, or, for a row by email,
/// the contact its email resolved to (the lookups run before the rows are recorded). A row by
/// email whose contact is not known is not valid, so its group is not recorded.
pub(super) fn record_note_groups(conn: &Connection, rows: &[NewRow]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO notes (group_key, contact_id, text, date, note_key) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (group_key) DO UPDATE SET
            text = excluded.text, date = excluded.date, contact_id = excluded.contact_id
         -- Only while nothing was sent: a note asked for is the note it was asked for.
         WHERE notes.state = 'pending'
           AND (notes.text IS NOT excluded.text OR notes.date IS NOT excluded.date
                OR notes.contact_id IS NOT excluded.contact_id)",
    )?;
    let mut any = false;
    for r in rows
        .iter()
        .filter(|r| r.rejected.is_none() && !r.contact_id.is_empty())
    {
        let (Some(group), Some(text)) = (&r.note.group, &r.note.text) else {
            continue;
        };
        any = true;
        insert.execute(params![group, r.contact_id, text, r.note.date, r.note.key])?;
    }
    if any {
        conn.prepare_cached(
            "UPDATE rows SET reference_id = (SELECT note_id FROM notes WHERE group_key = rows.note_group)
             WHERE note_group IS NOT NULL AND reference_id = ''
               AND EXISTS (SELECT 1 FROM notes WHERE group_key = rows.note_group AND state = 'created')",
        )?
        .execute([])?;
    }
    Ok(())
}

/// A note group's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteState {
    Pending,
    Intent,
    Created,
    /// `undo` committed its intent to delete the note: the delete may have been sent.
    Removing,
    /// `undo` deleted the note (or found it gone).
    Removed,
}

impl NoteState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Intent => "intent",
            Self::Created => "created",
            Self::Removing => "removing",
            Self::Removed => "removed",
        }
    }
}

/// A note group as the state file holds it.
#[derive(Clone, Debug)]
pub struct NoteGroup {
    pub group: String,
    pub contact_id: String,
    pub text: String,
    pub date: Option<String>,
    pub key: Option<String>,
    pub state: NoteState,
    /// The first intent (`YYYY-MM-DDTHH:MM:SS.mmmZ`, local clock).
    pub intent_at: Option<String>,
    pub note_id: Option<String>,
}

/// Every note group (none in a state file from before notes).
pub(super) fn load_notes(conn: &Connection) -> rusqlite::Result<Vec<NoteGroup>> {
    if schema_version(conn)? < notes_version() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT group_key, contact_id, text, date, note_key, state, intent_at, note_id FROM notes ORDER BY rowid",
    )?;
    stmt.query_map([], |r| {
        let state = match r.get::<_, String>(5)?.as_str() {
            "intent" => NoteState::Intent,
            "created" => NoteState::Created,
            "removing" => NoteState::Removing,
            "removed" => NoteState::Removed,
            _ => NoteState::Pending,
        };
        Ok(NoteGroup {
            group: r.get(0)?,
            contact_id: r.get(1)?,
            text: r.get(2)?,
            date: r.get(3)?,
            key: r.get(4)?,
            state,
            intent_at: r.get(6)?,
            note_id: r.get(7)?,
        })
    })?
    .collect()
}

/// Commits the intent to create `group`'s note, before `POST /notes` is sent. The first intent's
/// time is kept: every note this group may have created since is at least that recent.
pub(super) fn note_intent(conn: &Connection, group: &str) -> rusqlite::Result<String> {
    let now = now();
    conn.prepare_cached(
        "UPDATE notes SET state = 'intent', intent_at = COALESCE(intent_at, ?2)
         WHERE group_key = ?1 AND state IN ('pending', 'intent')",
    )?
    .execute(params![group, now])?;
    conn.query_row(
        "SELECT intent_at FROM notes WHERE group_key = ?1",
        [group],
        |r| r.get::<_, Option<String>>(0),
    )
    .map(|at| at.unwrap_or(now))
}

/// Records `note_id` as `group`'s note (created, or adopted after a lost answer) and gives it to
/// the group's rows as their `reference_id`. Fails (UNIQUE) if another group holds that note.
pub(super) fn note_created(
    conn: &Connection,
    group: &str,
    note_id: &str,
    adopted: bool,
) -> rusqlite::Result<()> {
    let changed = conn
        .prepare_cached(
            "UPDATE notes SET state = 'created', note_id = ?2, created_at = ?3, adopted = ?4
             WHERE group_key = ?1 AND state IN ('pending', 'intent')",
        )?
        .execute(params![group, note_id, now(), adopted])?;
    if changed != 1 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    conn.prepare_cached(
        "UPDATE rows SET reference_id = ?2 WHERE note_group = ?1 AND reference_id = ''",
    )?
    .execute(params![group, note_id])?;
    Ok(())
}

/// The note ids the groups of this state file hold (a note one of them holds is never adopted
/// by another).
pub(super) fn claimed_notes(
    conn: &Connection,
) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT note_id FROM notes WHERE note_id IS NOT NULL")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

impl StateFile {
    /// Every note group (none in a state file from before notes).
    pub fn load_notes(&self) -> Pending<Vec<NoteGroup>> {
        self.send(false, load_notes)
    }

    /// Commits the intent to create `group`'s note, asked for after its contact's listing of
    /// `generation`, before `POST /notes` is sent; the first intent's time (see
    /// [`note_intent`]). All or nothing.
    pub fn note_intent(&self, group: &NoteGroup, generation: i64) -> Pending<String> {
        let g = group.group.clone();
        self.send(true, move |c| {
            snapshots::note_generation(c, &g, generation)?;
            note_intent(c, &g)
        })
    }

    /// Records `note_id` as `group`'s note (created, or `adopted` after a lost answer), gives
    /// it to the group's rows, and records the note's snapshot in `generation`: it held no
    /// attachment when it was made. All or nothing; fails (UNIQUE) if another group holds that
    /// note.
    pub fn note_created(
        &self,
        group: &NoteGroup,
        note_id: &str,
        adopted: bool,
        generation: i64,
    ) -> Pending<()> {
        let (g, id, contact) = (
            group.group.clone(),
            note_id.to_string(),
            group.contact_id.clone(),
        );
        self.send(true, move |c| {
            note_created(c, &g, &id, adopted)?;
            snapshots::record(
                c,
                &[RecordSnapshot {
                    reference_type: ReferenceType::Note,
                    reference_id: id.clone(),
                    contact_id: contact,
                    held: Vec::new(),
                }],
                generation,
            )
        })
    }

    /// What a lost `POST /notes` answer of `group` is checked against: the notes its contact
    /// had in the listing its note was asked for after (none for an intent of a state file
    /// from before snapshots), and the notes every group holds.
    pub fn notes_held_and_claimed(
        &self,
        group: &NoteGroup,
    ) -> Pending<(HashSet<String>, HashSet<String>)> {
        let (contact, g) = (group.contact_id.clone(), group.group.clone());
        self.send(false, move |c| {
            let generation: Option<i64> = c.query_row(
                "SELECT snapshot_gen FROM notes WHERE group_key = ?1",
                [&g],
                |r| r.get(0),
            )?;
            // An intent of a state file from before snapshots: what the contact had then is
            // not known, and is taken to be none of these words and date.
            let held = match generation {
                Some(generation) => snapshots::notes_held(c, &contact, generation)?,
                None => Default::default(),
            };
            Ok((held, claimed_notes(c)?))
        })
    }
}

impl StateReader {
    /// Every note group (none in a state file from before notes).
    pub fn load_notes(&self) -> rusqlite::Result<Vec<NoteGroup>> {
        load_notes(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NoteColumns;
    use crate::checkpoint::open::open;
    use crate::checkpoint::rows::load_rows;
    use crate::checkpoint::rows::record_rows;
    use crate::checkpoint::rows::tests::new_row;

    #[test]
    fn a_created_note_gives_its_rows_their_reference_id_and_no_note_is_claimed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.sqlite")).unwrap();
        let note_row = |key: &str, group: &str| NewRow {
            reference_id: String::new(),
            note: NoteColumns {
                group: Some(group.into()),
                text: Some("Hello\r\nthere".into()),
                date: Some("2024-03-15".into()),
                key: None,
            },
            ..new_row(key, None)
        };
        record_rows(&conn, &[note_row("k1", "g1"), note_row("k2", "g2")]).unwrap();
        let groups = load_notes(&conn).unwrap();
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().all(|g| g.state == NoteState::Pending));
        let first = note_intent(&conn, "g1").unwrap();
        assert_eq!(
            note_intent(&conn, "g1").unwrap(),
            first,
            "the first intent is kept"
        );
        note_created(&conn, "g1", "n1", false).unwrap();
        let err = note_created(&conn, "g2", "n1", true).unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        assert_eq!(
            claimed_notes(&conn).unwrap(),
            ["n1".to_string()].into_iter().collect()
        );
        let rows = load_rows(&conn).unwrap();
        assert_eq!(rows[0].reference_id, "n1");
        assert_eq!(rows[0].note.text.as_deref(), Some("Hello\r\nthere"));
        assert_eq!(rows[1].reference_id, "", "its group has no note yet");
        // A row added later to a group already created joins its note.
        record_rows(&conn, &[note_row("k3", "g1")]).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!(
            rows.iter().find(|r| r.key == "k3").unwrap().reference_id,
            "n1"
        );
    }

    #[test]
    fn an_email_group_is_recorded_with_the_contact_its_email_resolved_to() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.sqlite")).unwrap();
        let row = |contact_id: &str, rejected: Option<&str>| NewRow {
            contact_id: contact_id.into(),
            contact_email: "Ada@X.example".into(),
            reference_id: String::new(),
            note: NoteColumns {
                group: Some("g-email".into()),
                text: Some("Hello".into()),
                date: None,
                key: None,
            },
            ..new_row("k1", rejected)
        };
        // Not resolved (rejected): no group is recorded.
        record_rows(&conn, &[row("", Some("no contact has the email"))]).unwrap();
        assert!(load_notes(&conn).unwrap().is_empty());
        // Resolved: the group's contact is the resolved id.
        record_rows(&conn, &[row("c1", None)]).unwrap();
        let groups = load_notes(&conn).unwrap();
        assert_eq!((groups.len(), groups[0].contact_id.as_str()), (1, "c1"));
    }
}
