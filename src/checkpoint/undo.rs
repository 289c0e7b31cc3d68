//! What `undo` records: each row's attachment and each created note deleted exactly once. The
//! intent (`removing`) is committed before the `DELETE` is sent, and the outcome after it
//! (`removed`, or back to what it was when the API refused the delete): a kill or a lost answer
//! leaves `removing`, and the next `undo` sends the same delete again by the id recorded (a 404
//! then says it took effect). `run --redo-removed` takes removed rows up again as new.

use rusqlite::{Connection, params};

use super::{Pending, StateFile, now};

/// Commits the intent to delete row `id`'s attachment. False when the row is in no state to
/// undo (not done, nor removing already).
fn row_removing(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE rows SET state = 'removing', updated_at = ?2
             WHERE id = ?1 AND state IN ('done', 'removing') AND attachment_id IS NOT NULL",
        )?
        .execute(params![id, now()])?;
    Ok(changed == 1)
}

/// Records row `id`'s attachment as deleted (or found gone).
fn row_removed(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    let at = now();
    conn.prepare_cached(
        "UPDATE rows SET state = 'removed', removed_at = ?2, updated_at = ?2
         WHERE id = ?1 AND state = 'removing'",
    )?
    .execute(params![id, at])?;
    Ok(())
}

/// The API refused to delete row `id`'s attachment (an answer that says it did not take
/// effect): the row is done again, its attachment in place.
fn row_kept(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE rows SET state = 'done', updated_at = ?2 WHERE id = ?1 AND state = 'removing'",
    )?
    .execute(params![id, now()])?;
    Ok(())
}

/// Commits the intent to delete `group`'s note. False when the group holds no created note.
fn note_removing(conn: &Connection, group: &str) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE notes SET state = 'removing' WHERE group_key = ?1 AND state IN ('created', 'removing')",
        )?
        .execute(params![group])?;
    Ok(changed == 1)
}

/// Records `group`'s note as deleted (or found gone).
fn note_removed(conn: &Connection, group: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE notes SET state = 'removed', removed_at = ?2 WHERE group_key = ?1 AND state = 'removing'",
    )?
    .execute(params![group, now()])?;
    Ok(())
}

/// The note of `group` was not deleted after all (it holds attachments, or the API refused).
fn note_kept(conn: &Connection, group: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE notes SET state = 'created' WHERE group_key = ?1 AND state = 'removing'",
    )?
    .execute(params![group])?;
    Ok(())
}

/// Makes every removed row new again (`pending`, nothing of its upload kept), and every removed
/// note a note to create again (its rows wait for it): what `run --redo-removed` takes up.
/// Returns how many rows.
fn redo_removed(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE notes SET state = 'pending', note_id = NULL, intent_at = NULL, created_at = NULL,
                          adopted = 0, removed_at = NULL
         WHERE state = 'removed'",
        [],
    )?;
    conn.execute(
        "UPDATE rows SET state = 'pending', s3_key = NULL, etag = NULL, attachment_id = NULL,
                         attempts = 0, error_kind = NULL, last_error = NULL, retryable = NULL,
                         done_at = NULL, snapshot_gen = NULL, removed_at = NULL, updated_at = ?1,
                         pin_state = NULL, pin_error = NULL,
                         reference_id = CASE
                             WHEN note_group IS NOT NULL AND EXISTS (
                                 SELECT 1 FROM notes WHERE group_key = rows.note_group AND state = 'pending')
                             THEN '' ELSE reference_id END
         WHERE state = 'removed'",
        [now()],
    )
}

/// An attachment a row held before its changed file was uploaded again (`--reupload-changed`):
/// the state file made it, so `undo` deletes it too.
#[derive(Clone, Debug)]
pub struct ReplacedAttachment {
    pub attachment_id: String,
    /// `done`, or `removing` (an undo cut short).
    pub removing: bool,
    /// The row that held it.
    pub line: u64,
    pub file: String,
    pub reference_type: String,
    pub reference_id: String,
}

/// The replaced attachments not removed yet.
fn replaced(conn: &Connection) -> rusqlite::Result<Vec<ReplacedAttachment>> {
    let mut stmt = conn.prepare(
        "SELECT a.attachment_id, a.state = 'removing', r.line, r.file, r.reference_type, r.reference_id
         FROM replaced_attachments a JOIN rows r ON r.id = a.row_id
         WHERE a.state IN ('done', 'removing') ORDER BY r.line, a.replaced_at",
    )?;
    stmt.query_map([], |r| {
        Ok(ReplacedAttachment {
            attachment_id: r.get(0)?,
            removing: r.get(1)?,
            line: r.get::<_, i64>(2)? as u64,
            file: r.get(3)?,
            reference_type: r.get(4)?,
            reference_id: r.get(5)?,
        })
    })?
    .collect()
}

/// Moves a replaced attachment from one of `from` to `to` (`removed` records when).
fn replaced_to(conn: &Connection, id: &str, from: &str, to: &str) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE replaced_attachments SET state = ?3,
                 removed_at = CASE WHEN ?3 = 'removed' THEN ?4 ELSE removed_at END
             WHERE attachment_id = ?1 AND instr(?2, ',' || state || ',') > 0",
        )?
        .execute(params![id, format!(",{from},"), to, now()])?;
    Ok(changed == 1)
}

/// The ids of every attachment a row held before (whatever became of it since); none in a state
/// file from before `replaced_attachments`.
fn replaced_ids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'replaced_attachments'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT attachment_id FROM replaced_attachments")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

impl super::StateReader {
    /// The attachments rows held before `--reupload-changed` replaced them (see [`replaced_ids`]).
    pub fn replaced_attachment_ids(&self) -> rusqlite::Result<Vec<String>> {
        replaced_ids(&self.conn)
    }
}

impl StateFile {
    /// The attachments rows held before their changed files were uploaded again, not removed.
    pub fn replaced_attachments(&self) -> Pending<Vec<ReplacedAttachment>> {
        self.send(false, replaced)
    }

    /// Commits the intent to delete replaced attachment `id`; false when it is removed already.
    pub fn replaced_removing(&self, id: &str) -> Pending<bool> {
        let id = id.to_string();
        self.send(false, move |c| {
            replaced_to(c, &id, "done,removing", "removing")
        })
    }

    pub fn replaced_removed(&self, id: &str) -> Pending<()> {
        let id = id.to_string();
        self.send(false, move |c| {
            replaced_to(c, &id, "removing", "removed").map(|_| ())
        })
    }

    pub fn replaced_kept(&self, id: &str) -> Pending<()> {
        let id = id.to_string();
        self.send(false, move |c| {
            replaced_to(c, &id, "removing", "done").map(|_| ())
        })
    }

    /// Commits the intent to delete the attachment of row `id` (see [`row_removing`]).
    pub fn row_removing(&self, id: i64) -> Pending<bool> {
        self.send(false, move |c| row_removing(c, id))
    }

    pub fn row_removed(&self, id: i64) -> Pending<()> {
        self.send(false, move |c| row_removed(c, id))
    }

    pub fn row_kept(&self, id: i64) -> Pending<()> {
        self.send(false, move |c| row_kept(c, id))
    }

    /// Commits the intent to delete `group`'s note (see [`note_removing`]).
    pub fn note_removing(&self, group: &str) -> Pending<bool> {
        let group = group.to_string();
        self.send(false, move |c| note_removing(c, &group))
    }

    pub fn note_removed(&self, group: &str) -> Pending<()> {
        let group = group.to_string();
        self.send(false, move |c| note_removed(c, &group))
    }

    pub fn note_kept(&self, group: &str) -> Pending<()> {
        let group = group.to_string();
        self.send(false, move |c| note_kept(c, &group))
    }

    /// Takes every removed row up again as new (see [`redo_removed`]); all or nothing.
    pub fn redo_removed(&self) -> Pending<usize> {
        self.send(true, redo_removed)
    }
}
