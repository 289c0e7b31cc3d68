//! The manifest as this run reads it, beside the rows the state file holds: a temporary table
//! (this connection's alone, gone when it closes) of each row's place in the manifest, its file
//! as it is now and its contact's place, so that a run reads its rows back in batches, in the
//! order it takes them up, instead of holding a million of them at once.
//!
//! Its methods are the [`StateFile`]'s, on the writer thread like everything that writes: the
//! table is that thread's connection's.

use std::collections::HashSet;

use rusqlite::{Connection, params};

use super::keys::is_raw_key;
use super::rows::{
    LINK_COLUMNS, NewRow, PIN_COLUMNS, ROW_COLUMNS, StoredRow, record_rows, stored_row,
};
use super::{Pending, StateFile};

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

/// Starts this run's table of the manifest's rows, empty. Temporary data goes to a file (see
/// `open`): a million rows are not held in memory.
fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS manifest_rows (
             row_key     TEXT PRIMARY KEY,
             ord         INTEGER NOT NULL,
             contact_ord INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             mtime_ns    INTEGER NOT NULL,
             valid       INTEGER NOT NULL,
             -- Done before, its file unchanged: nothing is left of it, whatever the run's
             -- choices, and no pass reads it again (a rerun of a done manifest reads no row).
             settled     INTEGER NOT NULL,
             -- A row to verify, as the run's count decided: taken up in the first pass, and
             -- in that pass alone.
             verify      INTEGER NOT NULL DEFAULT 0
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS temp.manifest_rows_in_order
             ON manifest_rows (settled, contact_ord, ord);
         DELETE FROM temp.manifest_rows;",
    )
}

/// Records `rows` of this run's manifest, each with its place and what it is now, and returns
/// how many it recorded. A row of the same meaning as one recorded before in this run is left
/// out (it is an error already, and recording it would overwrite the first); identical lines
/// that are not rows are each recorded: the second gets `~2`, and so on.
fn add(conn: &Connection, rows: Vec<NewRow>, places: Vec<(Place, Now)>) -> rusqlite::Result<usize> {
    let mut taken = conn.prepare_cached("SELECT 1 FROM temp.manifest_rows WHERE row_key = ?1")?;
    let mut in_chunk = HashSet::new();
    let mut kept = Vec::with_capacity(rows.len());
    for (mut row, place) in rows.into_iter().zip(places) {
        if is_raw_key(&row.key) {
            let first = row.key.clone();
            let mut n = 1;
            while in_chunk.contains(&row.key) || taken.exists([&row.key])? {
                n += 1;
                row.key = format!("{first}~{n}");
            }
        }
        if in_chunk.contains(&row.key) || taken.exists([&row.key])? {
            continue;
        }
        in_chunk.insert(row.key.clone());
        kept.push((row, place));
    }
    // New rows get their ids in the order the run takes them up (a contact's rows together),
    // not in manifest order: the rows under way at one time then share pages of the file, and
    // a commit of their transitions writes a few pages instead of one a row. In a manifest that
    // interleaves contacts this took a third of the state file's writes away.
    kept.sort_by_key(|(_, (place, _))| *place);
    let (kept, kept_places): (Vec<NewRow>, Vec<(Place, Now)>) = kept.into_iter().unzip();
    record_rows(conn, &kept)?;
    // A done row whose pin is owed (asked for, not recorded as made) is not settled: a run
    // takes it up for its pin.
    let mut settled = conn.prepare_cached(
        "SELECT state = 'done' AND size = ?2 AND mtime_ns = ?3 AND (pin = 0 OR pin_state IS 'pinned')
         FROM rows WHERE row_key = ?1",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO temp.manifest_rows (row_key, contact_ord, ord, size, mtime_ns, valid, settled)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (row, ((contact_ord, ord), now)) in kept.iter().zip(kept_places) {
        let (size, mtime_ns) = (now.size as i64, now.mtime_ns);
        let done: bool = settled.query_row(params![row.key, size, mtime_ns], |r| r.get(0))?;
        insert.execute(params![
            row.key,
            contact_ord,
            ord,
            size,
            mtime_ns,
            now.valid,
            done
        ])?;
    }
    Ok(kept.len())
}

/// The rows of this run done before whose files are unchanged.
fn settled(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row(
        "SELECT count(*) FROM temp.manifest_rows WHERE settled = 1",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
}

/// Forgets the rejected rows that the manifest of this run no longer has and that never reached
/// S3. A row fixed in the manifest can be a new row (a row recorded as written always is); its
/// old rejected self would stay in `status` and the failed report for ever. A rejected row sent
/// nothing, so forgetting it loses nothing.
fn forget_stale_rejected(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM rows WHERE state = 'rejected' AND s3_key IS NULL
            AND row_key NOT IN (SELECT row_key FROM temp.manifest_rows)",
        [],
    )
}

/// Marks `keys` as rows to verify, taken up first (see [`Pass`]).
fn verify_first(conn: &Connection, keys: &[String]) -> rusqlite::Result<()> {
    let mut mark =
        conn.prepare_cached("UPDATE temp.manifest_rows SET verify = 1 WHERE row_key = ?1")?;
    for key in keys {
        mark.execute([key])?;
    }
    Ok(())
}

/// Up to `limit` rows of this run after `after`, in the order a run takes them up (a contact's
/// rows together, contacts in the order they first appear, each contact's rows in manifest
/// order), but for the rows [`settled`] counts; of those, the rows `pass` reads.
///
/// The passes of the rows to verify and of the others are told apart by the mark the count
/// made, not by the rows' states: the second pass reads its rows while the first one's are
/// under way, and a row to verify that is being uploaded again (its key refused) is
/// `uploading` then, which would make it a row to upload for a second worker.
fn batch(
    conn: &Connection,
    after: Place,
    limit: usize,
    pass: Pass,
) -> rusqlite::Result<Vec<ThisRun>> {
    let only = match pass {
        Pass::All => "",
        Pass::Verify => "AND m.verify = 1",
        Pass::Others => "AND m.verify = 0",
    };
    let prefixed = |columns: &str| {
        columns
            .split(',')
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (columns, pins, links) = (
        prefixed(ROW_COLUMNS),
        prefixed(PIN_COLUMNS),
        prefixed(LINK_COLUMNS),
    );
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {columns}, r.contact_email, r.rowid, {pins}, {links}, m.contact_ord, m.ord, m.size, m.mtime_ns, m.valid
         FROM temp.manifest_rows m JOIN rows r ON r.row_key = m.row_key
         WHERE m.settled = 0 AND (m.contact_ord, m.ord) > (?1, ?2) {only}
         ORDER BY m.contact_ord, m.ord
         LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![after.0, after.1, limit as i64], |r| {
        Ok(ThisRun {
            row: stored_row(r)?,
            // `stored_row` reads the columns up to the link's (29), as `load_rows` gives them.
            place: (r.get(30)?, r.get(31)?),
            now: Now {
                size: r.get::<_, i64>(32)? as u64,
                mtime_ns: r.get(33)?,
                valid: r.get(34)?,
            },
        })
    })?;
    rows.collect()
}

/// Where the first batch starts.
pub const START: Place = (i64::MIN, i64::MIN);

/// Which rows of this run a batch reads (see [`batch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Every row (but the settled ones), to count what is left of each.
    All,
    /// The rows marked to verify first ([`StateFile::verify_first`]).
    Verify,
    /// The others.
    Others,
}

impl StateFile {
    /// Starts recording this run's manifest `manifest` (its canonical path): the file is
    /// marked as its, and this run's table of its rows starts empty.
    pub fn begin_this_run(&self, manifest: String) -> Pending<()> {
        self.send(true, move |c| {
            super::meta::set_manifest(c, &manifest)?;
            begin(c)
        })
    }

    /// Records `rows` of the manifest (before anything is sent), each with its place in this
    /// run and what it is now (see [`add`]); all or nothing. Says how many it recorded.
    pub fn record_this_run(&self, rows: Vec<NewRow>, places: Vec<(Place, Now)>) -> Pending<usize> {
        self.send(true, move |c| add(c, rows, places))
    }

    /// Once every row of this run is recorded: forgets the rejected rows the manifest no longer
    /// has and that never reached S3.
    pub fn forget_stale_rejected(&self) -> Pending<usize> {
        self.send(false, forget_stale_rejected)
    }

    /// The rows of this run done before whose files are unchanged: nothing is left of them,
    /// and [`StateFile::this_run`] leaves them out.
    pub fn settled_this_run(&self) -> Pending<usize> {
        self.send(false, settled)
    }

    /// Marks rows of this run (by key) as rows to verify: [`Pass::Verify`] reads them, and no
    /// other pass does; all or nothing.
    pub fn verify_first(&self, keys: Vec<String>) -> Pending<()> {
        self.send(true, move |c| verify_first(c, &keys))
    }

    /// Up to `limit` rows of this run after `after` that `pass` reads, in the order a run takes
    /// them up (see [`batch`]).
    pub fn this_run(&self, after: Place, limit: usize, pass: Pass) -> Pending<Vec<ThisRun>> {
        self.send(false, move |c| batch(c, after, limit, pass))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{NoteColumns, RowState, Transition};
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
            pin: false,
            link: None,
        }
    }

    fn now(r: &NewRow) -> Now {
        Now {
            size: r.size,
            mtime_ns: r.mtime_ns,
            valid: r.rejected.is_none(),
        }
    }

    #[test]
    fn batches_give_each_contacts_rows_together_in_manifest_order_and_nothing_twice() {
        let state = StateFile::in_memory().unwrap();
        state.begin_this_run("m.csv".into()).wait().unwrap();
        // Contacts a, b, a, c, b: a's rows, then b's, then c's.
        let rows: Vec<NewRow> = ["a", "b", "a", "c", "b"]
            .iter()
            .enumerate()
            .map(|(i, c)| new_row(&format!("k{i}"), i as u64 + 2, c))
            .collect();
        let contact_ord = |c: &str| match c {
            "a" => 0,
            "b" => 1,
            _ => 2,
        };
        let places = rows
            .iter()
            .enumerate()
            .map(|(i, r)| ((contact_ord(&r.contact_id), i as i64), now(r)))
            .collect();
        state.record_this_run(rows, places).wait().unwrap();
        let mut after = START;
        let mut seen = Vec::new();
        loop {
            let batch = state.this_run(after, 2, Pass::All).wait().unwrap();
            let Some(last) = batch.last() else { break };
            after = last.place;
            seen.extend(batch.into_iter().map(|t| t.row.key));
        }
        assert_eq!(seen, ["k0", "k2", "k1", "k4", "k3"]);
        // A row whose attach may have been sent, marked to verify by the count.
        let k4 = state
            .this_run(START, 10, Pass::All)
            .wait()
            .unwrap()
            .into_iter()
            .find(|t| t.row.key == "k4")
            .unwrap()
            .row;
        let uploading = Transition::Uploading {
            s3_key: "key-4".into(),
        };
        state.transition(&k4, uploading).wait().unwrap();
        let attaching = Transition::Attaching {
            etag: Some("e".into()),
            snapshot_gen: None,
        };
        state.transition(&k4, attaching).wait().unwrap();
        state.verify_first(vec!["k4".into()]).wait().unwrap();
        // The first pass reads the rows marked, whatever their state now (uploaded again, its
        // key refused); the second pass never reads them.
        let again = Transition::Uploading {
            s3_key: "key-4b".into(),
        };
        state.transition(&k4, again).wait().unwrap();
        let first = state.this_run(START, 10, Pass::Verify).wait().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].row.state, RowState::Uploading);
        let others = state.this_run(START, 10, Pass::Others).wait().unwrap();
        let others: Vec<String> = others.into_iter().map(|t| t.row.key).collect();
        assert_eq!(others, ["k0", "k2", "k1", "k3"]);
        state.close();
    }

    #[test]
    fn rejected_rows_the_manifest_no_longer_has_are_forgotten() {
        let state = StateFile::in_memory().unwrap();
        let mut gone = new_row("gone", 2, "a");
        gone.rejected = Some("bad".into());
        let mut kept = new_row("kept", 3, "a");
        kept.rejected = Some("bad".into());
        // A first run records both.
        state.begin_this_run("m.csv".into()).wait().unwrap();
        let places = vec![((0, 0), now(&gone)), ((0, 1), now(&kept))];
        state
            .record_this_run(vec![gone, kept.clone()], places)
            .wait()
            .unwrap();
        // The next run's manifest has only one.
        state.begin_this_run("m.csv".into()).wait().unwrap();
        let places = vec![((0, 0), now(&kept))];
        state.record_this_run(vec![kept], places).wait().unwrap();
        assert_eq!(state.forget_stale_rejected().wait().unwrap(), 1);
        let keys: Vec<String> = state
            .load_rows()
            .wait()
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["kept"]);
        state.close();
    }

    #[test]
    fn rows_done_with_unchanged_files_are_counted_not_read_back() {
        let state = StateFile::in_memory().unwrap();
        let rows: Vec<NewRow> = (0..3)
            .map(|i| new_row(&format!("k{i}"), i + 2, "a"))
            .collect();
        let record = |rows: &[NewRow], changed: &str| {
            state.begin_this_run("m.csv".into()).wait().unwrap();
            let places = rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut now = now(r);
                    now.mtime_ns += i64::from(r.key == changed);
                    ((0, i as i64), now)
                })
                .collect();
            state.record_this_run(rows.to_vec(), places).wait().unwrap();
        };
        record(&rows, "");
        for t in state.this_run(START, 10, Pass::All).wait().unwrap() {
            let done = Transition::Done {
                attachment_id: format!("att-{}", t.row.key),
                pinning: false,
            };
            if t.row.key != "k2" {
                state.transition(&t.row, done).wait().unwrap();
            }
        }
        // The next run: k0 done and unchanged, k1 done but its file changed, k2 not done.
        record(&rows, "k1");
        assert_eq!(state.settled_this_run().wait().unwrap(), 1);
        let left: Vec<String> = state
            .this_run(START, 10, Pass::All)
            .wait()
            .unwrap()
            .into_iter()
            .map(|t| t.row.key)
            .collect();
        assert_eq!(left, ["k1", "k2"]);
        state.close();
    }

    #[test]
    fn a_done_row_whose_pin_is_owed_is_read_back_until_its_pin_is_recorded_as_made() {
        let state = StateFile::in_memory().unwrap();
        let rows: Vec<NewRow> = (0..2)
            .map(|i| new_row(&format!("k{i}"), i + 2, "a"))
            .collect();
        let record = |pin: bool| {
            let rows: Vec<NewRow> = rows
                .iter()
                .cloned()
                .map(|mut r| {
                    r.pin = pin && r.key == "k1";
                    r
                })
                .collect();
            state.begin_this_run("m.csv".into()).wait().unwrap();
            let places = rows
                .iter()
                .enumerate()
                .map(|(i, r)| ((0, i as i64), now(r)))
                .collect();
            state.record_this_run(rows, places).wait().unwrap();
        };
        let left = || -> Vec<(String, bool, Option<crate::checkpoint::PinState>)> {
            state
                .this_run(START, 10, Pass::All)
                .wait()
                .unwrap()
                .into_iter()
                .map(|t| (t.row.key, t.row.pin, t.row.pin_state))
                .collect()
        };
        record(false);
        for t in state.this_run(START, 10, Pass::All).wait().unwrap() {
            let done = Transition::Done {
                attachment_id: format!("att-{}", t.row.key),
                pinning: false,
            };
            state.transition(&t.row, done).wait().unwrap();
        }
        // Done without pins: nothing is read back.
        record(false);
        assert_eq!(state.settled_this_run().wait().unwrap(), 2);
        // `pin` added to k1 in the manifest: recorded on the done row, which is read back.
        record(true);
        assert_eq!(state.settled_this_run().wait().unwrap(), 1);
        assert_eq!(left(), [("k1".to_string(), true, None)]);
        let k1 = state
            .this_run(START, 10, Pass::All)
            .wait()
            .unwrap()
            .remove(0)
            .row;
        state.transition(&k1, Transition::Pinning).wait().unwrap();
        record(true);
        let pinning = Some(crate::checkpoint::PinState::Pinning);
        assert_eq!(left(), [("k1".to_string(), true, pinning)]);
        state.transition(&k1, Transition::Pinned).wait().unwrap();
        // Its pin made: settled, nothing is read back.
        record(true);
        assert_eq!(state.settled_this_run().wait().unwrap(), 2);
        assert!(left().is_empty());
        let rows = state.load_rows().wait().unwrap();
        assert_eq!(rows[1].pin_state, Some(crate::checkpoint::PinState::Pinned));
        assert_eq!(rows[1].state, RowState::Done, "a pin leaves the row done");
        state.close();
    }
}
