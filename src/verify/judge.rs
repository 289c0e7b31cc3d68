//! What the account should hold, record by record, and the verdict on what a record holds: no
//! I/O here, so that every rule is tested without a server.
//!
//! A done row's attachment is looked for by the id recorded: not there is `missing` (so is every
//! row of a record that is gone), there with another name or size is `changed`, there with
//! another attachment of its name and size beside it that no row of the state file recorded is
//! `duplicate`, else `ok`. A note the tool created must be there with its text (line ends and
//! surrounding space aside, as the API may change them).
//!
//! An attachment that no row recorded may still be a row's own: one whose attach was sent and
//! whose answer was lost (`attaching`, or failed after its upload), which the next run settles.
//! So on a record, as many unrecorded attachments of one name and size as there are such rows
//! of that name and size are not called duplicates; any more, and all of them are listed.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::checkpoint::{NoteGroup, NoteState, RowState, StoredRow};
use crate::onepagecrm::ReferenceType;
use crate::pipeline::notes::normalized;
use crate::remote::api::{RemoteAttachment, RemoteRecord};

/// A record as it is read: its type and id.
pub type RecordKey = (ReferenceType, String);

/// A line's verdict when it is not `ok` (a note's is `missing` or `changed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Missing,
    Changed,
    Duplicate,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Changed => "changed",
            Self::Duplicate => "duplicate",
        }
    }
}

/// What one record should hold.
#[derive(Debug, Default)]
pub struct Expected<'a> {
    /// The done rows attached to it.
    pub done: Vec<&'a StoredRow>,
    /// Rows whose attach to it may have taken effect without being recorded.
    pub in_doubt: Vec<&'a StoredRow>,
    /// The note group whose created note this record is.
    pub note: Option<&'a NoteGroup>,
}

/// What a state file says the account holds: the records to read, and what each should hold.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub records: HashMap<RecordKey, Expected<'a>>,
    /// Every attachment id a row of the state file holds, whatever its state.
    pub recorded: HashSet<&'a str>,
    /// The lines of each note group's rows.
    pub note_lines: HashMap<&'a str, Vec<u64>>,
    pub rows: usize,
    pub done: usize,
    /// The rows not done, by state: not verified.
    pub not_done: BTreeMap<&'static str, usize>,
    /// The note groups whose note was created (each checked).
    pub notes_created: usize,
}

/// A row whose attach may have taken effect with its answer lost: a rerun settles it.
fn in_doubt(row: &StoredRow) -> bool {
    row.state == RowState::Attaching || row.may_be_attached()
}

impl<'a> Plan<'a> {
    pub fn new(rows: &'a [StoredRow], notes: &'a [NoteGroup]) -> Self {
        let mut plan = Plan {
            rows: rows.len(),
            ..Plan::default()
        };
        for row in rows {
            if let Some(id) = &row.attachment_id {
                plan.recorded.insert(id);
            }
            if let Some(group) = &row.note.group {
                plan.note_lines.entry(group).or_default().push(row.line);
            }
            if row.state == RowState::Done {
                plan.done += 1;
                plan.expect(row).done.push(row);
            } else {
                *plan.not_done.entry(row.state.as_str()).or_default() += 1;
            }
        }
        for group in notes.iter().filter(|g| g.state == NoteState::Created) {
            if let Some(id) = &group.note_id {
                plan.notes_created += 1;
                let key = (ReferenceType::Note, id.clone());
                plan.records.entry(key).or_default().note = Some(group);
            }
        }
        // Only on the records read anyway: a row in doubt is not verified itself.
        for row in rows.iter().filter(|r| in_doubt(r)) {
            let key = (row.reference_type, row.reference_id.clone());
            if let Some(expected) = plan.records.get_mut(&key) {
                expected.in_doubt.push(row);
            }
        }
        plan
    }

    fn expect(&mut self, row: &StoredRow) -> &mut Expected<'a> {
        let key = (row.reference_type, row.reference_id.clone());
        self.records.entry(key).or_default()
    }

    /// The records to read, in a steady order (by type, then id).
    pub fn keys(&self) -> Vec<RecordKey> {
        let mut keys: Vec<RecordKey> = self.records.keys().cloned().collect();
        keys.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        keys
    }
}

/// A line whose verdict is not `ok`.
#[derive(Debug, Serialize)]
pub struct LineProblem {
    pub line: u64,
    pub verdict: Verdict,
    pub file: String,
    pub name: String,
    pub size: u64,
    pub contact_id: String,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    /// The attachment id the state file recorded.
    pub attachment_id: Option<String>,
    /// For `changed`: the attachment as the record shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<Found>,
    /// For `duplicate` (and `missing`): the attachments of the row's name and size on its record
    /// that no row recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<String>,
    pub detail: String,
}

/// An attachment's name and size as a record shows it.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Found {
    pub name: String,
    pub size: u64,
}

/// An attachment on a record read that has a done row's name and size but that no row recorded
/// (a link row's name, for a link: a link's size means nothing).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    pub attachment_id: String,
    pub name: String,
    pub size: u64,
    pub reference_type: ReferenceType,
    pub reference_id: String,
    /// The lines of the done rows of that name and size on that record.
    pub lines: Vec<u64>,
    /// Of rows that attach links.
    #[serde(skip)]
    pub link: bool,
}

/// Whether `a` is what `row` attaches, as far as a record shows it: a file of its name and size
/// (not a link); a link of its name and, where the record shows it, its type. A link's size means
/// nothing, and its `url` is not compared: OnePageCRM documents it as the file's URL, not as the
/// `external_url` it was given.
fn shows_row(row: &StoredRow, a: &RemoteAttachment) -> bool {
    match row.link_of() {
        Some((_, link_type)) => {
            a.filename == row.name
                && a.storage_provider
                    .as_deref()
                    .is_none_or(|p| p == link_type.as_str())
        }
        None => a.filename == row.name && a.size == row.size && !a.is_link(),
    }
}

/// A created note that is not as it was created.
#[derive(Debug, Serialize)]
pub struct NoteProblem {
    pub note_id: String,
    pub contact_id: String,
    /// `missing` or `changed`.
    pub verdict: Verdict,
    /// The lines of its group's rows.
    pub lines: Vec<u64>,
    pub detail: String,
}

/// The verdicts on one record.
#[derive(Debug, Default)]
pub struct Judged {
    /// Done rows found as recorded.
    pub ok: usize,
    pub problems: Vec<LineProblem>,
    pub duplicates: Vec<Duplicate>,
    /// Whether the record is a created note (then `note_problem` says whether it is as created).
    pub note_checked: bool,
    pub note_problem: Option<NoteProblem>,
}

/// The verdicts on the record `key`, which should hold `expected`, as read: `None` when it is
/// gone (the API answered 404).
pub fn judge(
    key: &RecordKey,
    expected: &Expected<'_>,
    found: Option<&RemoteRecord>,
    plan: &Plan<'_>,
) -> Judged {
    let mut judged = Judged {
        duplicates: found.map_or_else(Vec::new, |r| duplicates(key, expected, r, plan)),
        ..Judged::default()
    };
    for row in &expected.done {
        match judge_row(key, row, found, &judged.duplicates) {
            None => judged.ok += 1,
            Some(problem) => judged.problems.push(problem),
        }
    }
    if let Some(group) = expected.note {
        let problem = judge_note(key, group, found, plan);
        judged.note_checked = true;
        judged.note_problem = problem;
    }
    judged
}

/// The attachments of `record` that have the name and size of a done row on it and that no
/// row recorded, beyond those the rows in doubt of that name and size may account for.
fn duplicates(
    (reference_type, reference_id): &RecordKey,
    expected: &Expected<'_>,
    record: &RemoteRecord,
    plan: &Plan<'_>,
) -> Vec<Duplicate> {
    // A done row of each name and size (each name, for links) stands for its group.
    let mut by_name: BTreeMap<(&str, u64, bool), (&StoredRow, Vec<u64>)> = BTreeMap::new();
    for row in &expected.done {
        by_name
            .entry((row.name.as_str(), row.size, row.is_link()))
            .or_insert_with(|| (row, Vec::new()))
            .1
            .push(row.line);
    }
    let mut found = Vec::new();
    for ((name, size, link), (first, lines)) in by_name {
        // Any link of the name (of any type): another type's is as much a second copy.
        let same = |a: &&RemoteAttachment| match link {
            true => a.filename == name && (a.storage_provider.is_none() || a.is_link()),
            false => shows_row(first, a),
        };
        let extra: Vec<&RemoteAttachment> = record
            .attachments
            .iter()
            .filter(|a| !plan.recorded.contains(a.id.as_str()))
            .filter(same)
            .collect();
        let doubt = expected
            .in_doubt
            .iter()
            .filter(|r| r.name == name && r.is_link() == link && (link || r.size == size))
            .count();
        if extra.len() <= doubt {
            continue;
        }
        found.extend(extra.into_iter().map(|a| Duplicate {
            attachment_id: a.id.clone(),
            name: name.to_string(),
            size,
            reference_type: *reference_type,
            reference_id: reference_id.clone(),
            lines: lines.clone(),
            link,
        }));
    }
    found
}

/// A done row's problem, if it has one, on its record as read (`None`: gone).
fn judge_row(
    (reference_type, reference_id): &RecordKey,
    row: &StoredRow,
    record: Option<&RemoteRecord>,
    duplicates: &[Duplicate],
) -> Option<LineProblem> {
    let others: Vec<String> = duplicates
        .iter()
        .filter(|d| d.name == row.name && d.size == row.size && d.link == row.is_link())
        .map(|d| d.attachment_id.clone())
        .collect();
    let shown = |a: &RemoteAttachment| shows_row(row, a);
    let attachment = row
        .attachment_id
        .as_deref()
        .and_then(|id| record.and_then(|r| r.attachments.iter().find(|a| a.id == id)));
    let (verdict, found, detail) = match (record, attachment) {
        (None, _) => (
            Verdict::Missing,
            None,
            "the record is gone (the API answered 404)".to_string(),
        ),
        (Some(_), None) => (Verdict::Missing, None, missing(row, &others)),
        (Some(_), Some(a)) if !shown(a) => (
            Verdict::Changed,
            Some(Found {
                name: a.filename.clone(),
                size: a.size,
            }),
            match row.link_of() {
                Some((_, link_type)) => format!(
                    "attachment {} is there as {:?} ({}), not as the link {:?} ({link_type})",
                    a.id,
                    a.filename,
                    a.storage_provider
                        .as_deref()
                        .unwrap_or("no storage provider shown"),
                    row.name
                ),
                None => format!(
                    "attachment {} is there as {:?}, {} bytes, not {:?}, {} bytes",
                    a.id, a.filename, a.size, row.name, row.size
                ),
            },
        ),
        (Some(_), Some(a)) if !others.is_empty() => (
            Verdict::Duplicate,
            None,
            format!(
                "attachment {} is there, and so {} {}, of its name and size, recorded by no row",
                a.id,
                if others.len() == 1 { "is" } else { "are" },
                others.join(", ")
            ),
        ),
        (Some(_), Some(_)) => return None,
    };
    Some(LineProblem {
        line: row.line,
        verdict,
        file: row.shown_file().to_string(),
        name: row.name.clone(),
        size: row.size,
        contact_id: row.contact_id.clone(),
        reference_type: *reference_type,
        reference_id: reference_id.clone(),
        attachment_id: row.attachment_id.clone(),
        found,
        others,
        detail,
    })
}

/// Why a done row whose record is there is `missing`.
fn missing(row: &StoredRow, others: &[String]) -> String {
    let mut detail = match &row.attachment_id {
        Some(id) => format!("attachment {id} is not on the record"),
        None => "no attachment id is recorded for it".to_string(),
    };
    if !others.is_empty() {
        detail.push_str(&format!(
            " (an attachment of its name and size that no row recorded is: {})",
            others.join(", ")
        ));
    }
    detail
}

/// A created note's problem, if it has one, as read (`None`: gone).
fn judge_note(
    (_, note_id): &RecordKey,
    group: &NoteGroup,
    record: Option<&RemoteRecord>,
    plan: &Plan<'_>,
) -> Option<NoteProblem> {
    let (verdict, detail) = match record {
        None => (
            Verdict::Missing,
            "the note is gone (the API answered 404)".to_string(),
        ),
        Some(r) if r.text.as_deref().map(normalized) != Some(normalized(&group.text)) => (
            Verdict::Changed,
            match &r.text {
                Some(_) => "the note's text is not the text it was created with".to_string(),
                None => "the API shows the note without a text".to_string(),
            },
        ),
        Some(_) => return None,
    };
    Some(NoteProblem {
        note_id: note_id.clone(),
        contact_id: group.contact_id.clone(),
        verdict,
        lines: plan
            .note_lines
            .get(group.group.as_str())
            .cloned()
            .unwrap_or_default(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NewRow;
    use crate::failure::FailureKind;

    const NOTE: &str = "n1";

    /// A done row on note `NOTE`, line `line`, named `name`, of `size` bytes, attached as `id`.
    fn done(line: u64, name: &str, size: u64, id: &str) -> StoredRow {
        let mut row = StoredRow::from(&NewRow::for_test(line, size));
        row.reference_type = ReferenceType::Note;
        row.reference_id = NOTE.into();
        row.name = name.into();
        row.size = size;
        row.state = RowState::Done;
        row.attachment_id = Some(id.into());
        row
    }

    fn attachment(id: &str, name: &str, size: u64) -> RemoteAttachment {
        RemoteAttachment {
            id: id.into(),
            filename: name.into(),
            size,
            url: None,
            storage_provider: None,
        }
    }

    fn record(attachments: Vec<RemoteAttachment>) -> RemoteRecord {
        RemoteRecord {
            id: NOTE.into(),
            contact_id: String::new(),
            text: Some("Hello".into()),
            attachments,
        }
    }

    /// The verdicts (`ok` or the problem's), by line, on note `NOTE` as `found` shows it.
    fn verdicts(
        rows: &[StoredRow],
        found: Option<&RemoteRecord>,
    ) -> (Vec<(u64, &'static str)>, Judged) {
        let plan = Plan::new(rows, &[]);
        let key = (ReferenceType::Note, NOTE.to_string());
        let judged = judge(&key, &plan.records[&key], found, &plan);
        let mut lines: Vec<(u64, &str)> = rows
            .iter()
            .filter(|r| r.state == RowState::Done)
            .map(|r| {
                let problem = judged.problems.iter().find(|p| p.line == r.line);
                (r.line, problem.map_or("ok", |p| p.verdict.as_str()))
            })
            .collect();
        lines.sort();
        assert_eq!(
            judged.ok + judged.problems.len(),
            lines.len(),
            "one verdict a line"
        );
        (lines, judged)
    }

    #[test]
    fn each_done_row_is_judged_by_its_recorded_id_name_and_size() {
        let rows = [
            done(2, "a.pdf", 10, "A"),
            done(3, "b.pdf", 20, "B"),
            done(4, "c.pdf", 30, "C"),
            done(5, "d.pdf", 40, "D"),
        ];
        let found = record(vec![
            attachment("A", "a.pdf", 10),
            // B gone; C renamed; D resized.
            attachment("C", "c (1).pdf", 30),
            attachment("D", "d.pdf", 41),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&found));
        assert_eq!(
            lines,
            [(2, "ok"), (3, "missing"), (4, "changed"), (5, "changed")]
        );
        assert_eq!(judged.ok, 1);
        let changed = judged.problems.iter().find(|p| p.line == 5).unwrap();
        assert_eq!(
            changed.found,
            Some(Found {
                name: "d.pdf".into(),
                size: 41
            })
        );
        assert!(judged.duplicates.is_empty());
    }

    /// A done link row (dropbox), line `line`, named `name`, attached as `id`.
    fn done_link(line: u64, name: &str, id: &str) -> StoredRow {
        let mut row = done(line, name, 0, id);
        row.file.clear();
        row.link = Some(crate::checkpoint::LinkColumns {
            url: format!("https://www.dropbox.com/s/x/{name}"),
            link_type: "dropbox".into(),
            sent: true,
        });
        row
    }

    /// A link attachment as a record shows it: of `provider`, whatever size the server says.
    fn link(id: &str, name: &str, provider: &str) -> RemoteAttachment {
        RemoteAttachment {
            url: Some(format!("https://www.dropbox.com/s/x/{name}")),
            storage_provider: Some(provider.into()),
            ..attachment(id, name, 123)
        }
    }

    #[test]
    fn a_link_is_judged_by_its_id_name_and_type_not_its_size() {
        let rows = [
            done_link(2, "a.pdf", "A"),
            done_link(3, "b.pdf", "B"),
            done_link(4, "c.pdf", "C"),
            done_link(5, "d.pdf", "D"),
            // A file of the name of a link: neither is the other's duplicate.
            done(6, "a.pdf", 123, "F"),
        ];
        let found = record(vec![
            // A link's size is no size: a server may say anything.
            link("A", "a.pdf", "dropbox"),
            // B gone; C renamed; D now another provider's.
            link("C", "c (1).pdf", "dropbox"),
            link("D", "d.pdf", "google_drive"),
            attachment("F", "a.pdf", 123),
            // A second link named a.pdf that no row recorded is a duplicate of line 2.
            link("X", "a.pdf", "evernote"),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&found));
        assert_eq!(
            lines,
            [
                (2, "duplicate"),
                (3, "missing"),
                (4, "changed"),
                (5, "changed"),
                (6, "ok")
            ]
        );
        let problem = |line| judged.problems.iter().find(|p| p.line == line).unwrap();
        assert_eq!(problem(2).others, ["X"]);
        assert!(problem(5).detail.contains("google_drive"), "{judged:?}");
        assert_eq!(problem(3).file, "https://www.dropbox.com/s/x/b.pdf");
        assert_eq!(judged.duplicates.len(), 1);
        // A link row in doubt of that name accounts for the unrecorded one.
        let mut doubt = done_link(7, "a.pdf", "unrecorded");
        doubt.state = RowState::Attaching;
        doubt.attachment_id = None;
        let mut with_doubt = rows.to_vec();
        with_doubt.push(doubt);
        let (lines, _) = verdicts(&with_doubt, Some(&found));
        assert_eq!(lines[0], (2, "ok"));
    }

    #[test]
    fn every_row_of_a_record_that_is_gone_is_missing() {
        let rows = [done(2, "a.pdf", 10, "A"), done(3, "b.pdf", 20, "B")];
        let (lines, judged) = verdicts(&rows, None);
        assert_eq!(lines, [(2, "missing"), (3, "missing")]);
        assert!(judged.problems[0].detail.contains("is gone"), "{judged:?}");
    }

    #[test]
    fn an_unrecorded_attachment_of_a_rows_name_and_size_is_a_duplicate_whoever_made_it() {
        let rows = [
            done(2, "a.pdf", 10, "A"),
            // Two rows of one name and size on one record, each recorded: no duplicate.
            done(3, "b.pdf", 20, "B1"),
            done(4, "b.pdf", 20, "B2"),
        ];
        let found = record(vec![
            attachment("A", "a.pdf", 10),
            attachment("X", "a.pdf", 10),
            attachment("B1", "b.pdf", 20),
            attachment("B2", "b.pdf", 20),
            // Another name or size is someone else's file, not a duplicate.
            attachment("Y", "a.pdf", 11),
            attachment("Z", "z.pdf", 10),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&found));
        assert_eq!(lines, [(2, "duplicate"), (3, "ok"), (4, "ok")]);
        assert_eq!(judged.problems[0].others, ["X"]);
        assert_eq!(
            judged.duplicates,
            [Duplicate {
                attachment_id: "X".into(),
                name: "a.pdf".into(),
                size: 10,
                reference_type: ReferenceType::Note,
                reference_id: NOTE.into(),
                lines: vec![2],
                link: false,
            }]
        );
    }

    #[test]
    fn an_attachment_another_row_recorded_is_no_duplicate() {
        // Line 3 is failed now, but its attachment id is still recorded (a row of another state
        // file would not be): it is nobody's duplicate.
        let mut other = done(3, "a.pdf", 10, "A2");
        other.state = RowState::Failed;
        let rows = [done(2, "a.pdf", 10, "A"), other];
        let found = record(vec![
            attachment("A", "a.pdf", 10),
            attachment("A2", "a.pdf", 10),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&found));
        assert_eq!(lines, [(2, "ok")]);
        assert!(judged.duplicates.is_empty());
    }

    #[test]
    fn rows_in_doubt_account_for_as_many_unrecorded_attachments_and_no_more() {
        let mut attaching = StoredRow::from(&NewRow::for_test(3, 10));
        attaching.reference_type = ReferenceType::Note;
        attaching.reference_id = NOTE.into();
        attaching.name = "a.pdf".into();
        attaching.state = RowState::Attaching;
        let rows = [done(2, "a.pdf", 10, "A"), attaching.clone()];
        let one = record(vec![
            attachment("A", "a.pdf", 10),
            attachment("X", "a.pdf", 10),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&one));
        assert_eq!(lines, [(2, "ok")], "X may be line 3's lost attach");
        assert!(judged.duplicates.is_empty());
        let two = record(vec![
            attachment("A", "a.pdf", 10),
            attachment("X", "a.pdf", 10),
            attachment("Y", "a.pdf", 10),
        ]);
        let (lines, judged) = verdicts(&rows, Some(&two));
        assert_eq!(lines, [(2, "duplicate")], "one too many");
        assert_eq!(
            judged.duplicates.len(),
            2,
            "which one is line 3's is unknown"
        );
        // A failed row whose attach was settled (not attached) is not in doubt.
        let mut failed = attaching;
        failed.state = RowState::Failed;
        failed.etag = Some("e".into());
        failed.retryable = Some(false);
        failed.error_kind = Some(FailureKind::Invalid);
        let (lines, _) = verdicts(&[done(2, "a.pdf", 10, "A"), failed], Some(&one));
        assert_eq!(lines, [(2, "duplicate")]);
    }

    #[test]
    fn a_recorded_attachment_gone_with_another_of_its_name_left_is_missing_and_names_it() {
        let rows = [done(2, "a.pdf", 10, "A")];
        let found = record(vec![attachment("X", "a.pdf", 10)]);
        let (lines, judged) = verdicts(&rows, Some(&found));
        assert_eq!(lines, [(2, "missing")]);
        assert_eq!(judged.problems[0].others, ["X"]);
        assert!(judged.problems[0].detail.contains("X"), "{judged:?}");
        assert_eq!(judged.duplicates.len(), 1);
    }

    #[test]
    fn a_created_note_must_be_there_with_its_text_line_ends_aside() {
        let group = NoteGroup {
            group: "g".into(),
            contact_id: "c".into(),
            text: "Hello\r\nthere".into(),
            date: None,
            key: None,
            state: NoteState::Created,
            intent_at: None,
            note_id: Some(NOTE.into()),
        };
        let mut row = done(7, "a.pdf", 10, "A");
        row.note.group = Some("g".into());
        let rows = [row];
        let notes = [group];
        let plan = Plan::new(&rows, &notes);
        assert_eq!((plan.notes_created, plan.records.len()), (1, 1), "one read");
        let key = (ReferenceType::Note, NOTE.to_string());
        let expected = &plan.records[&key];
        let with_text = |text: Option<&str>| RemoteRecord {
            text: text.map(str::to_string),
            ..record(vec![attachment("A", "a.pdf", 10)])
        };
        let same = judge(
            &key,
            expected,
            Some(&with_text(Some("Hello\nthere\n"))),
            &plan,
        );
        assert_eq!(
            (same.note_checked, same.note_problem.is_none(), same.ok),
            (true, true, 1)
        );
        let edited = judge(&key, expected, Some(&with_text(Some("Hello there"))), &plan);
        let problem = edited.note_problem.unwrap();
        assert_eq!(
            (problem.verdict, problem.lines),
            (Verdict::Changed, vec![7])
        );
        let gone = judge(&key, expected, None, &plan);
        assert_eq!(gone.note_problem.unwrap().verdict, Verdict::Missing);
        assert_eq!(gone.problems[0].verdict, Verdict::Missing, "its row too");
    }

    #[test]
    fn rows_not_done_are_counted_by_state_and_name_no_record_to_read() {
        let mut pending = StoredRow::from(&NewRow::for_test(3, 1));
        pending.reference_id = "other".into();
        let mut failed = pending.clone();
        failed.state = RowState::Failed;
        let rows = [done(2, "a.pdf", 10, "A"), pending, failed];
        let plan = Plan::new(&rows, &[]);
        assert_eq!((plan.rows, plan.done), (3, 1));
        assert_eq!(
            plan.not_done,
            BTreeMap::from([("failed", 1), ("pending", 1)])
        );
        assert_eq!(plan.keys(), [(ReferenceType::Note, NOTE.to_string())]);
    }
}
