//! The note columns (`note_text`, `note_date`, `note_key`): the note a row creates, the group
//! of rows that share one note, and the rules a group's rows must agree on.

use super::{MAX_NOTE_CHARS, Problem, ProblemKind, Row, cut, email_key, shown};
use crate::onepagecrm::ReferenceType;

/// A note to create from the manifest, as a row gives it. Rows of one contact with one
/// `note_key` (or, without a key, with one text and date) share one note: its `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSpec {
    /// The text as written (sent as it is).
    pub text: String,
    /// `YYYY-MM-DD`, or `None` for the API's default (today).
    pub date: Option<String>,
    pub key: Option<String>,
    /// The group's identity: a hash of the contact and the key (or the text and date).
    pub group: String,
}

/// The identity of a note group: the contact and the `note_key`, or, without one, the contact,
/// the text and the date. Hashed with a prefix of its own, so it never equals a row's key.
pub fn note_group(contact_id: &str, text: &str, date: Option<&str>, key: Option<&str>) -> String {
    group_hash("g1", contact_id, text, date, key)
}

/// The identity of the note group of rows that name their contact by email (`email` as
/// [`email_key`] makes it): the same parts as [`note_group`] under another tag, so that an
/// email's group never equals a contact id's, two emails never share one, and the group does
/// not change when the email resolves (the note is created on the contact it resolved to).
pub fn note_group_by_email(
    email: &str,
    text: &str,
    date: Option<&str>,
    key: Option<&str>,
) -> String {
    group_hash("g1-email", email, text, date, key)
}

fn group_hash(
    tag: &str,
    contact: &str,
    text: &str,
    date: Option<&str>,
    key: Option<&str>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // The words as the API keeps them (line ends made LF, no surrounding space): texts that
    // differ only so would make notes that look the same, so they are one group.
    let text = crate::onepagecrm::normalize_line_ends(text);
    let text = text.trim();
    let parts: Vec<&str> = match key {
        Some(key) => vec![tag, contact, "key", key],
        None => vec![tag, contact, "text", text, date.unwrap_or("")],
    };
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("g{}", hex::encode(&h.finalize()[..16]))
}

/// Whether `date` is a calendar date written `YYYY-MM-DD`.
pub fn is_note_date(date: &str) -> bool {
    date.len() == 10 && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
}

/// The note a row creates, with every problem of its three columns: `note_text` with a
/// `reference_id` or another reference type, a text over the API's limit, a date that is not
/// `YYYY-MM-DD`, a date or key without a text.
pub(super) fn note_spec(
    line: u64,
    (contact_id, contact_email): (&str, &str),
    reference_id: &str,
    reference_type: Option<ReferenceType>,
    [text, date, key]: [Option<String>; 3],
    problems: &mut Vec<Problem>,
) -> Option<NoteSpec> {
    let date = date.map(|d| d.trim().to_string()).filter(|d| !d.is_empty());
    let key = key.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
    let mut error = |column: &'static str, kind: ProblemKind, message: String| {
        problems.push(Problem::error(Some(line), Some(column), kind, message));
    };
    let Some(text) = text else {
        for (column, given) in [("note_date", date.is_some()), ("note_key", key.is_some())] {
            if given {
                error(
                    column,
                    ProblemKind::NoteConflict,
                    format!(
                        "`{column}` is given but `note_text` is empty; give the note's text, or leave `{column}` empty"
                    ),
                );
            }
        }
        return None;
    };
    if !reference_id.is_empty() {
        error(
            "note_text",
            ProblemKind::NoteConflict,
            format!(
                "`note_text` creates a note, but `reference_id` already names the record {}; give one of the two",
                shown(reference_id)
            ),
        );
    }
    if let Some(t) = reference_type.filter(|t| *t != ReferenceType::Note) {
        error(
            "note_text",
            ProblemKind::NoteConflict,
            format!(
                "`note_text` creates a note, but `reference_type` is {}; leave it empty or `note`",
                t.as_str()
            ),
        );
    }
    let chars = text.chars().count();
    if chars > MAX_NOTE_CHARS {
        error(
            "note_text",
            ProblemKind::NoteTooLong,
            format!(
                "the note text is {chars} characters long; OnePageCRM takes at most {MAX_NOTE_CHARS}"
            ),
        );
    }
    if let Some(d) = date.as_deref().filter(|d| !is_note_date(d)) {
        error(
            "note_date",
            ProblemKind::InvalidNoteDate,
            format!(
                "{} is not a real day written YYYY-MM-DD (e.g. 2024-03-15)",
                shown(d)
            ),
        );
    }
    // The contact as the row gives it: a row by email keeps its group when the email resolves.
    let group = match contact_id.is_empty() && !contact_email.is_empty() {
        true => note_group_by_email(
            &email_key(contact_email),
            &text,
            date.as_deref(),
            key.as_deref(),
        ),
        false => note_group(contact_id, &text, date.as_deref(), key.as_deref()),
    };
    Some(NoteSpec {
        text,
        date,
        key,
        group,
    })
}

/// The first row of each `note_key` group seen so far: its line, text (as compared: line ends
/// normalized, trimmed) and date. Kept across the chunks of a manifest read as a stream (one
/// entry per group, not per row).
#[derive(Default)]
pub(super) struct NoteKeys {
    first: std::collections::HashMap<String, (u64, String, Option<String>)>,
}

/// A note text as the note-key rule compares it.
fn words(text: &str) -> String {
    crate::onepagecrm::normalize_line_ends(text)
        .trim()
        .to_string()
}

impl NoteKeys {
    /// One `note_key` of one contact must mean one note: a row that gives it another text or
    /// date than its first row is an error (on the column that differs), naming that first
    /// line. The contact is as the rows give it (the group holds it): an email, in any letter
    /// case, is one contact.
    pub(super) fn check(&mut self, rows: &[Row], problems: &mut Vec<Problem>) {
        for row in rows {
            let Some(note) = &row.note else { continue };
            let Some(key) = note.key.as_deref() else {
                continue;
            };
            let Some((line, text, date)) = self.first.get(note.group.as_str()) else {
                self.first.insert(
                    note.group.clone(),
                    (row.line, words(&note.text), note.date.clone()),
                );
                continue;
            };
            if *text != words(&note.text) {
                problems.push(Problem::error(
                    Some(row.line),
                    Some("note_text"),
                    ProblemKind::NoteKeyConflict,
                    format!(
                        "note_key {} of contact {} has another text on line {line}; rows with one note_key share one note, so give them one text",
                        shown(key),
                        cut(row.contact_given())
                    ),
                ));
            }
            if *date != note.date {
                problems.push(Problem::error(
                    Some(row.line),
                    Some("note_date"),
                    ProblemKind::NoteKeyConflict,
                    format!(
                        "note_key {} of contact {} has the date {} on line {line}; rows with one note_key share one note, so give them one date",
                        shown(key),
                        cut(row.contact_given()),
                        date.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
}
