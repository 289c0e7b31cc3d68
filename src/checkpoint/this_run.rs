//! The manifest as this run reads it, beside the rows the state file holds: a temporary table
//! (this connection's alone, gone when it closes) of each row's place in the manifest, its file
//! as it is now and its contact's place, so that a run reads its rows back in batches, in the
//! order it takes them up, instead of holding a million of them at once.
//!
//! Called on the writer thread only (through `Store`), like everything that writes.

use rusqlite::{Connection, params};

use super::{ROW_COLUMNS, StoredRow, stored_row};

/// What the manifest says of a row in this run, beside what the state file recorded of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub size: u64,
    pub mtime_ns: i64,
    /// Valid now (no error of its own in this run's check).
    pub valid: bool,
}

/// A row's place in the order a run takes rows up: its contact's first appearance in the
/// manifest, then its own. Batches are read after the last place of the one before.
pub type Place = (i64, i64);

/// One row of this run: where it stands, what the manifest says of it now, and its record.
pub struct ThisRun {
    pub place: Place,
    pub now: Now,
    pub row: StoredRow,
}

/// Starts this run's table of the manifest's rows, empty. Temporary data goes to a file: a
/// million rows are not held in memory.
pub fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA temp_store = FILE;
         CREATE TEMP TABLE IF NOT EXISTS manifest_rows (
             row_key     TEXT PRIMARY KEY,
             ord         INTEGER NOT NULL,
             contact_ord INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             mtime_ns    INTEGER NOT NULL,
             valid       INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS temp.manifest_rows_in_order
             ON manifest_rows (contact_ord, ord);
         DELETE FROM temp.manifest_rows;",
    )
}

/// Adds rows of the manifest: (row key, its place, what it is now).
pub fn add<'a>(
    conn: &Connection,
    rows: impl Iterator<Item = (&'a str, Place, Now)>,
) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO temp.manifest_rows (row_key, contact_ord, ord, size, mtime_ns, valid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (key, (contact_ord, ord), now) in rows {
        insert.execute(params![
            key,
            contact_ord,
            ord,
            now.size as i64,
            now.mtime_ns,
            now.valid
        ])?;
    }
    Ok(())
}

/// Forgets the rejected rows that the manifest of this run no longer has and that never reached
/// S3 (see [`super::forget_stale_rejected`]).
pub fn forget_stale_rejected(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM rows WHERE state = 'rejected' AND s3_key IS NULL
            AND row_key NOT IN (SELECT row_key FROM temp.manifest_rows)",
        [],
    )
}

/// Up to `limit` rows of this run after `after`, in the order a run takes them up (a contact's
/// rows together, contacts in the order they first appear, each contact's rows in manifest
/// order). `maybe_verify`: only rows whose attach may have been sent (the rest cannot be rows to
/// verify), for the pass that takes those up first.
pub fn batch(
    conn: &Connection,
    after: Place,
    limit: usize,
    maybe_verify: bool,
) -> rusqlite::Result<Vec<ThisRun>> {
    let only = match maybe_verify {
        true => "AND r.state IN ('attaching', 'failed') AND r.s3_key IS NOT NULL",
        false => "",
    };
    let columns = ROW_COLUMNS
        .split(',')
        .map(|c| format!("r.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {columns}, r.contact_email, m.contact_ord, m.ord, m.size, m.mtime_ns, m.valid
         FROM temp.manifest_rows m JOIN rows r ON r.row_key = m.row_key
         WHERE (m.contact_ord, m.ord) > (?1, ?2) {only}
         ORDER BY m.contact_ord, m.ord
         LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![after.0, after.1, limit as i64], |r| {
        Ok(ThisRun {
            row: stored_row(r)?,
            place: (r.get(23)?, r.get(24)?),
            now: Now {
                size: r.get::<_, i64>(25)? as u64,
                mtime_ns: r.get(26)?,
                valid: r.get(27)?,
            },
        })
    })?;
    rows.collect()
}

/// Where the first batch starts.
pub const START: Place = (i64::MIN, i64::MIN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, NewRow, NoteColumns, RowState};
    use crate::failure::FailureKind;
    use crate::onepagecrm::ReferenceType;

    fn new_row(key: &str, line: u64, contact: &str) -> NewRow {
        NewRow {
            key: key.into(),
            line,
            file: format!("{key}.pdf"),
            path: format!("/m/{key}.pdf").into(),
            size: line,
            mtime_ns: 7,
            contact_id: contact.into(),
            contact_email: String::new(),
            reference_type: ReferenceType::Note,
            reference_type_text: "note".into(),
            reference_id: "n1".into(),
            name: format!("{key}.pdf"),
            rejected: None,
            rejected_kind: FailureKind::Invalid,
            note: NoteColumns::default(),
        }
    }

    #[test]
    fn batches_give_each_contacts_rows_together_in_manifest_order_and_nothing_twice() {
        let conn = checkpoint::open(std::path::Path::new(":memory:")).unwrap();
        // Contacts a, b, a, c, b: a's rows, then b's, then c's.
        let rows: Vec<NewRow> = ["a", "b", "a", "c", "b"]
            .iter()
            .enumerate()
            .map(|(i, c)| new_row(&format!("k{i}"), i as u64 + 2, c))
            .collect();
        checkpoint::record_rows(&conn, &rows).unwrap();
        begin(&conn).unwrap();
        let contact_ord = |c: &str| match c {
            "a" => 0,
            "b" => 1,
            _ => 2,
        };
        add(
            &conn,
            rows.iter().enumerate().map(|(i, r)| {
                let now = Now {
                    size: r.size,
                    mtime_ns: r.mtime_ns,
                    valid: true,
                };
                (r.key.as_str(), (contact_ord(&r.contact_id), i as i64), now)
            }),
        )
        .unwrap();
        let mut after = START;
        let mut seen = Vec::new();
        loop {
            let batch = batch(&conn, after, 2, false).unwrap();
            let Some(last) = batch.last() else { break };
            after = last.place;
            seen.extend(batch.into_iter().map(|t| t.row.key));
        }
        assert_eq!(seen, ["k0", "k2", "k1", "k4", "k3"]);
        // Only rows whose attach may have been sent, for the first pass.
        checkpoint::transition(
            &conn,
            "k4",
            &checkpoint::Transition::Uploading {
                s3_key: "key-4".into(),
            },
        )
        .unwrap();
        checkpoint::transition(
            &conn,
            "k4",
            &checkpoint::Transition::Attaching {
                etag: Some("e".into()),
                snapshot_gen: None,
            },
        )
        .unwrap();
        let maybe: Vec<_> = batch(&conn, START, 10, true).unwrap();
        assert_eq!(maybe.len(), 1);
        assert_eq!(maybe[0].row.state, RowState::Attaching);
    }

    #[test]
    fn rejected_rows_the_manifest_no_longer_has_are_forgotten() {
        let conn = checkpoint::open(std::path::Path::new(":memory:")).unwrap();
        let mut gone = new_row("gone", 2, "a");
        gone.rejected = Some("bad".into());
        let mut kept = new_row("kept", 3, "a");
        kept.rejected = Some("bad".into());
        checkpoint::record_rows(&conn, &[gone, kept]).unwrap();
        begin(&conn).unwrap();
        let now = Now {
            size: 3,
            mtime_ns: 7,
            valid: false,
        };
        add(&conn, std::iter::once(("kept", (0, 0), now))).unwrap();
        assert_eq!(forget_stale_rejected(&conn).unwrap(), 1);
        let keys: Vec<String> = checkpoint::load_rows(&conn)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["kept"]);
    }
}
