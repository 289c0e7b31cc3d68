//! What a problem of a manifest is: its severity, its kind, where it is, what it says; and how
//! a list of them is printed for a person (`check`, and `run` before it starts).

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

use crate::terminal::Printable;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A machine-readable name for each kind of problem (the `kind` of `check --json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    ManifestUnreadable,
    ManifestEmpty,
    NotText,
    UnknownColumn,
    DuplicateColumn,
    MissingColumn,
    NoRows,
    InvalidUtf8,
    FieldCount,
    MissingField,
    UnknownReferenceType,
    InvalidName,
    FileMissing,
    DanglingLink,
    NotRegularFile,
    FileUnreadable,
    FileTooLarge,
    DuplicateAttachment,
    /// `note_text` with a `reference_id` or another reference type; `note_date` or `note_key`
    /// without `note_text`.
    NoteConflict,
    InvalidNoteDate,
    NoteTooLong,
    /// One `note_key` of one contact given two different texts or dates.
    NoteKeyConflict,
    EmptyFile,
    IdFormat,
    /// A row gives both `contact_id` and `contact_email`.
    ContactIdAndEmail,
    /// `contact_email` is not an email address.
    InvalidEmail,
    /// No contact has the row's email (found online).
    ContactNotFound,
    /// Several contacts have the row's email (found online).
    ContactAmbiguous,
    /// No record of the row's type has its `reference_id` (found online).
    RecordNotFound,
    /// The row's record belongs to another contact than the row's (found online).
    RecordOfOtherContact,
    /// `pin` is not `true`/`false`, `yes`/`no`, `1`/`0` or empty.
    InvalidPin,
    /// `link_url` is not an `https` URL.
    InvalidLinkUrl,
    /// `link_type` is not `dropbox`, `google_drive` or `evernote`.
    UnknownLinkType,
    /// A row gives both `file` and `link_url`, or `link_type` without `link_url`.
    LinkConflict,
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 34] = [
        Self::ManifestUnreadable,
        Self::ManifestEmpty,
        Self::NotText,
        Self::UnknownColumn,
        Self::DuplicateColumn,
        Self::MissingColumn,
        Self::NoRows,
        Self::InvalidUtf8,
        Self::FieldCount,
        Self::MissingField,
        Self::UnknownReferenceType,
        Self::InvalidName,
        Self::FileMissing,
        Self::DanglingLink,
        Self::NotRegularFile,
        Self::FileUnreadable,
        Self::FileTooLarge,
        Self::DuplicateAttachment,
        Self::NoteConflict,
        Self::InvalidNoteDate,
        Self::NoteTooLong,
        Self::NoteKeyConflict,
        Self::EmptyFile,
        Self::IdFormat,
        Self::ContactIdAndEmail,
        Self::InvalidEmail,
        Self::ContactNotFound,
        Self::ContactAmbiguous,
        Self::RecordNotFound,
        Self::RecordOfOtherContact,
        Self::InvalidPin,
        Self::InvalidLinkUrl,
        Self::UnknownLinkType,
        Self::LinkConflict,
    ];

    /// The name `check --json` shows, and the one a rejected row of this kind is recorded with
    /// (its `error_kind` in the state file, `status` and `report`): one name everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ManifestUnreadable => "manifest_unreadable",
            Self::ManifestEmpty => "manifest_empty",
            Self::NotText => "not_text",
            Self::UnknownColumn => "unknown_column",
            Self::DuplicateColumn => "duplicate_column",
            Self::MissingColumn => "missing_column",
            Self::NoRows => "no_rows",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::FieldCount => "field_count",
            Self::MissingField => "missing_field",
            Self::UnknownReferenceType => "unknown_reference_type",
            Self::InvalidName => "invalid_name",
            Self::FileMissing => "file_missing",
            Self::DanglingLink => "dangling_link",
            Self::NotRegularFile => "not_regular_file",
            Self::FileUnreadable => "file_unreadable",
            Self::FileTooLarge => "file_too_large",
            Self::DuplicateAttachment => "duplicate_attachment",
            Self::NoteConflict => "note_conflict",
            Self::InvalidNoteDate => "invalid_note_date",
            Self::NoteTooLong => "note_too_long",
            Self::NoteKeyConflict => "note_key_conflict",
            Self::EmptyFile => "empty_file",
            Self::IdFormat => "id_format",
            Self::ContactIdAndEmail => "contact_id_and_email",
            Self::InvalidEmail => "invalid_email",
            Self::ContactNotFound => "contact_not_found",
            Self::ContactAmbiguous => "contact_ambiguous",
            Self::RecordNotFound => "record_not_found",
            Self::RecordOfOtherContact => "record_of_other_contact",
            Self::InvalidPin => "invalid_pin",
            Self::InvalidLinkUrl => "invalid_link_url",
            Self::UnknownLinkType => "unknown_link_type",
            Self::LinkConflict => "link_conflict",
        }
    }
}

/// One thing wrong (or worth a look) in a manifest, anchored to its line and column.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// The manifest line the row starts on (1 is the header); `None` for the manifest as a whole.
    pub line: Option<u64>,
    pub column: Option<&'static str>,
    pub kind: ProblemKind,
    pub message: String,
}

impl Problem {
    pub fn error(
        line: Option<u64>,
        column: Option<&'static str>,
        kind: ProblemKind,
        message: String,
    ) -> Self {
        Self {
            severity: Severity::Error,
            line,
            column,
            kind,
            message,
        }
    }

    pub fn warning(line: u64, column: &'static str, kind: ProblemKind, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            line: Some(line),
            column: Some(column),
            kind,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: ")?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: ")?,
            (Some(line), None) => write!(f, "line {line}: ")?,
            (None, _) => {}
        }
        f.write_str(&self.message)
    }
}

/// Problems of one kind shown before the rest of that kind are counted in one line.
const SHOWN_PER_KIND: usize = 20;

/// Writes problems one a line, in order, but only the first 20 of each kind: a manifest where
/// every one of 100,000 rows has the same mistake needs a few examples and a count, not 100,000
/// lines (`check --json` lists them all).
pub fn write_problems(out: &mut impl Write, problems: &[Problem]) -> io::Result<()> {
    // A problem quotes the manifest's own text (a path, a field): escaped for the terminal.
    let out = &mut Printable(out);
    let mut seen: Vec<(ProblemKind, Severity, usize)> = Vec::new();
    for problem in problems {
        let key = (problem.kind, problem.severity);
        let count = match seen.iter_mut().find(|(k, s, _)| (*k, *s) == key) {
            Some((_, _, n)) => n,
            None => {
                seen.push((problem.kind, problem.severity, 0));
                &mut seen.last_mut().expect("just pushed").2
            }
        };
        *count += 1;
        if *count <= SHOWN_PER_KIND {
            writeln!(out, "{problem}")?;
        }
    }
    for (kind, severity, n) in seen {
        if n > SHOWN_PER_KIND {
            let what = match severity {
                Severity::Error => "errors",
                Severity::Warning => "warnings",
            };
            let kind = serde_json::to_value(kind).unwrap_or_default();
            writeln!(
                out,
                "... and {} more {} {what} like those above (check --json lists every one)",
                n - SHOWN_PER_KIND,
                kind.as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}
