//! Reads a CSV manifest into rows, and finds every problem that a row shows on its own.
//!
//! Nothing here touches the files a manifest names (that is `preflight`): this module owns the
//! CSV format, the header, the columns and their meaning, and the line numbers that every message
//! a user sees is anchored to.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::onepagecrm::{ReferenceType, is_object_id};

/// The longest attachment name OnePageCRM stores, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The columns a manifest may have, in the order they are documented.
/// (`contact_email` came later, and is listed after the first five so that the list earlier
/// versions showed stays as it was; the note columns came after it.)
pub const COLUMNS: [&str; 9] = [
    "file",
    "contact_id",
    "reference_type",
    "reference_id",
    "name",
    "contact_email",
    "note_text",
    "note_date",
    "note_key",
];
/// The columns of a row recorded as written, in the order its key hashes them (`contact_email`
/// and the three note columns count only when given, so that older rows keep their keys).
pub const RECORD_COLUMNS: [&str; 6] = [
    "file",
    "contact_id",
    "reference_type",
    "reference_id",
    "name",
    "contact_email",
];
/// The columns that create a note, in [`COLUMNS`] order.
pub const NOTE_COLUMNS: [&str; 3] = ["note_text", "note_date", "note_key"];
/// The longest note text the API takes, in characters (OpenAPI `Note.text.maxLength`).
pub const MAX_NOTE_CHARS: usize = 7168;
/// Columns that `report --only failed` adds; accepted and ignored so that report is a manifest.
pub const IGNORED_COLUMNS: [&str; 2] = ["error_kind", "error"];
/// Required columns; `reference_id` may be left out of a manifest that has `note_text`.
const REQUIRED: [&str; 2] = ["file", "reference_id"];
/// A header needs at least one of these; a row gives exactly one.
const CONTACT_COLUMNS: [&str; 2] = ["contact_id", "contact_email"];
/// The longest email address a mail system accepts (RFC 5321's path limit), in bytes.
pub const MAX_EMAIL_BYTES: usize = 254;

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
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 30] = [
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

/// One data row as the manifest states it. Fields a row lacks are empty; `reference_type` is
/// `None` only when the row holds an unknown type (already reported).
#[derive(Clone, Debug)]
pub struct Row {
    pub line: u64,
    /// The `file` field as written (resolve it with [`Manifest::path_of`]).
    pub file: String,
    /// The contact's id; empty when the row gives `contact_email` instead.
    pub contact_id: String,
    /// The contact's email as written (trimmed); empty when the row gives `contact_id`. Looked
    /// up online (case does not matter: see [`email_key`]).
    pub contact_email: String,
    pub reference_type: Option<ReferenceType>,
    /// The `reference_type` field as written (trimmed) when it is no known type, so that the row,
    /// rejected, is recorded and reported with the type it has. (Boxed: a million valid rows
    /// should not pay for it.)
    pub unknown_reference_type: Option<Box<str>>,
    pub reference_id: String,
    /// The attachment name: the `name` column, or the file's own name.
    pub name: String,
    /// The note this row creates (or shares) and attaches to, when it gives `note_text`.
    pub note: Option<Box<NoteSpec>>,
}

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

impl Row {
    /// Whether the row names its contact by `contact_email` (its `contact_id` is empty).
    pub fn by_email(&self) -> bool {
        self.contact_id.is_empty() && !self.contact_email.is_empty()
    }

    /// The contact as the row gives it: its id, or its email as written.
    pub fn contact_given(&self) -> &str {
        match self.by_email() {
            true => &self.contact_email,
            false => &self.contact_id,
        }
    }

    /// The reference type as written: the known type's name, or the unknown text.
    pub fn reference_type_text(&self) -> &str {
        match (&self.unknown_reference_type, self.reference_type) {
            (Some(text), _) => text,
            (None, Some(t)) => t.as_str(),
            (None, None) => "",
        }
    }
}

/// A data record that could not be read as a [`Row`]: it has more or fewer fields than the
/// header, or a field that is not UTF-8. It is kept with its fields as written, so that a run
/// records it as rejected and a failed-rows report gives it back as the user wrote it.
#[derive(Clone, Debug)]
pub struct Unparsed {
    pub line: u64,
    /// The first six columns' fields as written, in [`RECORD_COLUMNS`] order (empty when the
    /// record has no such field).
    pub fields: [Vec<u8>; 6],
    /// `note_text`, `note_date` and `note_key` as written (empty when the record has none).
    pub note_fields: [Vec<u8>; 3],
    /// Fields past the header's width, as written.
    pub extra: Vec<Vec<u8>>,
}

/// A manifest as read: its rows, and the problems found while reading them.
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// The manifest's folder, absolute: the rows' paths resolve against it.
    pub base: PathBuf,
    pub rows: Vec<Row>,
    /// Records that could not be read as rows (each has an error in `problems`).
    pub unparsed: Vec<Unparsed>,
    pub problems: Vec<Problem>,
    /// False when the manifest could not be read as a whole (missing, binary, bad header); then
    /// `rows` is empty and `problems` says why.
    pub readable: bool,
}

/// How to read a manifest.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    pub delimiter: u8,
}

impl Manifest {
    /// A row's file, resolved against the manifest's folder (computed, not stored: a million
    /// rows would otherwise hold a million copies of the folder's path).
    pub fn path_of(&self, row: &Row) -> PathBuf {
        self.base.join(&row.file)
    }
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { delimiter: b',' }
    }
}

/// Reads `path` as a manifest. Never fails: whatever goes wrong is a problem in the result.
pub fn read(path: &Path, options: ReadOptions) -> Manifest {
    // Absolute, so that the paths recorded in the state file mean the same from any folder. A
    // bare `m.csv` has the folder `""`, which `absolute` refuses: that is the current folder.
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = match std::env::current_dir() {
        Ok(cwd) if base == Path::new(".") => cwd,
        _ => std::path::absolute(&base).unwrap_or(base),
    };
    let mut manifest = Manifest {
        path: path.to_path_buf(),
        base,
        rows: Vec::new(),
        unparsed: Vec::new(),
        problems: Vec::new(),
        readable: false,
    };
    match read_rows(path, options, &mut manifest) {
        Ok(()) => manifest.readable = true,
        Err(problem) => manifest.problems.push(problem),
    }
    manifest
}

fn whole(kind: ProblemKind, message: String) -> Problem {
    Problem::error(None, None, kind, message)
}

fn header_problem(kind: ProblemKind, message: String) -> Problem {
    Problem::error(Some(1), None, kind, message)
}

fn read_rows(path: &Path, options: ReadOptions, manifest: &mut Manifest) -> Result<(), Problem> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot read manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    if meta.is_dir() {
        return Err(whole(
            ProblemKind::ManifestUnreadable,
            format!("{shown} is a directory; give the path of the CSV manifest file"),
        ));
    }
    let file = File::open(path).map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot open manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let head = input.fill_buf().map_err(|e| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot read manifest {shown}: {}", io_reason(&e)),
        )
    })?;
    if is_utf16(head) {
        return Err(whole(
            ProblemKind::NotText,
            format!(
                "{shown} is UTF-16 text, not UTF-8; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8 in.csv > out.csv) or save it from the spreadsheet as \"CSV UTF-8\""
            ),
        ));
    }
    if head.contains(&0) {
        return Err(whole(
            ProblemKind::NotText,
            format!("{shown} is a binary file, not a CSV manifest (it holds NUL bytes)"),
        ));
    }
    read_csv(path, options, input, manifest)
}

fn read_csv(
    path: &Path,
    options: ReadOptions,
    input: impl BufRead,
    manifest: &mut Manifest,
) -> Result<(), Problem> {
    let shown = path.display();
    let mut reader = Records::new(input, options.delimiter);
    let mut record = csv::ByteRecord::new();
    let io_problem = |e: io::Error| {
        whole(
            ProblemKind::ManifestUnreadable,
            format!("cannot read manifest {shown}: {}", io_reason(&e)),
        )
    };

    // The header: the first record that is not blank.
    let header_line = loop {
        let Some(line) = reader.next(&mut record).map_err(io_problem)? else {
            return Err(whole(
                ProblemKind::ManifestEmpty,
                format!(
                    "manifest {shown} is empty; it needs a header row ({})",
                    COLUMNS.join(", ")
                ),
            ));
        };
        if !is_blank(&record) {
            break line;
        }
    };
    let columns = parse_header(&record, header_line, options.delimiter)?;
    // A failed-rows report (it has both error columns) neutralizes spreadsheet formulas with a
    // leading `'`; reading it back undoes exactly that (see `formula_unescape`).
    let report = IGNORED_COLUMNS.iter().all(|c| columns_named(&record, c));
    let mut unescaped = csv::ByteRecord::new();
    while let Some(line) = reader.next(&mut record).map_err(io_problem)? {
        if is_blank(&record) {
            continue;
        }
        let record = if report {
            unescaped.clear();
            for field in record.iter() {
                unescaped.push_field(formula_unescape(field));
            }
            &unescaped
        } else {
            &record
        };
        if record.len() != columns.len() {
            manifest.problems.push(Problem::error(
                Some(line),
                None,
                ProblemKind::FieldCount,
                format!(
                    "{} fields, but the header has {}; quote any field that holds the delimiter {:?}",
                    record.len(),
                    columns.len(),
                    options.delimiter as char
                ),
            ));
            manifest.unparsed.push(unparsed(record, &columns, line));
            continue;
        }
        match parse_row(record, &columns, line, &mut manifest.problems) {
            Some(row) => manifest.rows.push(row),
            None => manifest.unparsed.push(unparsed(record, &columns, line)),
        }
    }
    check_note_keys(&manifest.rows, &mut manifest.problems);
    if manifest.rows.is_empty() && manifest.problems.is_empty() {
        return Err(header_problem(
            ProblemKind::NoRows,
            format!("manifest {shown} has a header but no rows; add one row per file to upload"),
        ));
    }
    Ok(())
}

/// CSV records with the line each starts on, on csv's own parser (csv_core).
///
/// csv's `Reader` stamps a record with the position where the previous one ended, before blank
/// lines are skipped and before a CRLF's `\n` is consumed, so its line numbers drift; every message
/// here names a line, so the lines are counted from the bytes the parser consumes.
struct Records<R> {
    core: csv_core::Reader,
    input: R,
    /// The line the next unconsumed byte is on.
    line: u64,
    consumed: u64,
    /// The last byte consumed was a CR (so an LF now ends no new line).
    after_cr: bool,
    output: Vec<u8>,
    ends: Vec<usize>,
}

impl<R: BufRead> Records<R> {
    fn new(input: R, delimiter: u8) -> Self {
        let core = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
        Self {
            core,
            input,
            line: 1,
            consumed: 0,
            after_cr: false,
            output: vec![0; 4096],
            ends: vec![0; 16],
        }
    }

    /// Reads the next record into `record`; returns the line it starts on, `None` at the end.
    fn next(&mut self, record: &mut csv::ByteRecord) -> io::Result<Option<u64>> {
        let (mut nout, mut nends) = (0, 0);
        let mut start = None;
        loop {
            let input = self.input.fill_buf()?;
            let (result, nin, out, end) =
                self.core
                    .read_record(input, &mut self.output[nout..], &mut self.ends[nends..]);
            for (i, &b) in input[..nin].iter().enumerate() {
                let in_bom = self.consumed + (i as u64) < 3 && matches!(b, 0xEF | 0xBB | 0xBF);
                if start.is_none() && !matches!(b, b'\r' | b'\n') && !in_bom {
                    start = Some(self.line);
                }
                // A line ends at LF, CRLF, or a lone CR (old Mac exports): the parser takes all
                // three as record ends, so the count must too. A CR counts at once; the LF of a
                // CRLF then does not, even when the two arrive in separate reads.
                match b {
                    b'\r' => self.line += 1,
                    b'\n' if !self.after_cr => self.line += 1,
                    _ => {}
                }
                self.after_cr = b == b'\r';
            }
            self.consumed += nin as u64;
            self.input.consume(nin);
            nout += out;
            nends += end;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    let len = self.output.len() * 2;
                    self.output.resize(len, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    record.clear();
                    let mut from = 0;
                    for &to in &self.ends[..nends] {
                        record.push_field(&self.output[from..to]);
                        from = to;
                    }
                    return Ok(Some(start.unwrap_or(self.line)));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }
}

/// A record whose fields are all empty or whitespace (a blank line, or one made of delimiters).
fn is_blank(record: &csv::ByteRecord) -> bool {
    record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

/// Maps each header position to the column it names (`None`: an ignored column).
///
/// Long (about 100 lines) for a reason: every header problem (unknown, duplicate, missing
/// columns, and how many of each are shown) is found in one pass and reported together.
fn parse_header(
    record: &csv::ByteRecord,
    line: u64,
    delimiter: u8,
) -> Result<Vec<Option<&'static str>>, Problem> {
    let mut columns = Vec::with_capacity(record.len());
    let mut problems = Vec::new();
    let known = || {
        format!(
            "{} (and {}, which are ignored)",
            COLUMNS.join(", "),
            IGNORED_COLUMNS.join(", ")
        )
    };
    // A header of a million unknown columns must not make a message of a million lines.
    const SHOWN_UNKNOWN: usize = 20;
    let mut unknown = 0;
    let mut unknown_problem = |problems: &mut Vec<String>, message: String| {
        unknown += 1;
        if unknown <= SHOWN_UNKNOWN {
            problems.push(message);
        }
    };
    for (i, raw) in record.iter().enumerate() {
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(Problem::error(
                Some(line),
                None,
                ProblemKind::InvalidUtf8,
                "the header row is not valid UTF-8; save the manifest as UTF-8 CSV".to_string(),
            ));
        };
        let name = text.trim().to_ascii_lowercase();
        if let Some(col) = COLUMNS.iter().find(|c| **c == name) {
            if columns.contains(&Some(*col)) {
                problems.push(format!("column `{col}` appears twice"));
            }
            columns.push(Some(*col));
        } else if IGNORED_COLUMNS.contains(&name.as_str()) {
            columns.push(None);
        } else if name.is_empty() {
            unknown_problem(
                &mut problems,
                format!(
                    "header field {} is empty; the known columns are {}",
                    i + 1,
                    known()
                ),
            );
            columns.push(None);
        } else {
            unknown_problem(
                &mut problems,
                format!(
                    "unknown column `{}`; the known columns are {}",
                    cut(text.trim()),
                    known()
                ),
            );
            columns.push(None);
        }
    }
    if unknown > SHOWN_UNKNOWN {
        problems.push(format!(
            "and {} more unknown or empty columns",
            unknown - SHOWN_UNKNOWN
        ));
    }
    if !CONTACT_COLUMNS.iter().any(|c| columns.contains(&Some(*c))) {
        problems.push(
            "missing required column `contact_id` (or `contact_email`, to find each contact by email)"
                .to_string(),
        );
    }
    for required in REQUIRED {
        // A manifest whose rows create their notes need not name any.
        if required == "reference_id" && columns.contains(&Some("note_text")) {
            continue;
        }
        if !columns.contains(&Some(required)) {
            let hint = if record.len() == 1 && delimiter == b',' {
                " (if the manifest uses `;` or tabs, pass --delimiter)"
            } else {
                ""
            };
            let or = if required == "reference_id" {
                " (or `note_text`, to create the notes the files attach to)"
            } else {
                ""
            };
            problems.push(format!("missing required column `{required}`{or}{hint}"));
        }
    }
    if problems.is_empty() {
        return Ok(columns);
    }
    let kind = if problems
        .iter()
        .any(|p| p.starts_with("unknown") || p.starts_with("header field"))
    {
        ProblemKind::UnknownColumn
    } else if problems.iter().any(|p| p.contains("twice")) {
        ProblemKind::DuplicateColumn
    } else {
        ProblemKind::MissingColumn
    };
    Err(Problem::error(
        Some(line),
        None,
        kind,
        format!("bad header: {}; no row was checked", problems.join("; ")),
    ))
}

/// One record as a row, with every problem of every field at once, each with its column.
///
/// Long (about 140 lines) for a reason: it is one pass over the columns in the manifest's
/// order, each field's own checks beside its decoding, so that a reader sees every rule of a
/// row in one place; split up, the shared `problems` and row state would travel through every
/// piece.
fn parse_row(
    record: &csv::ByteRecord,
    columns: &[Option<&'static str>],
    line: u64,
    problems: &mut Vec<Problem>,
) -> Option<Row> {
    let mut field = |col: &'static str| -> Option<String> {
        let i = columns.iter().position(|c| *c == Some(col))?;
        let raw = &record[i];
        match std::str::from_utf8(raw) {
            Ok(s) => Some(s.to_string()),
            Err(e) => {
                let at = e.valid_up_to();
                problems.push(Problem::error(
                    Some(line),
                    Some(col),
                    ProblemKind::InvalidUtf8,
                    format!(
                        "not valid UTF-8 (byte 0x{:02X} after {}); save the manifest as UTF-8 CSV",
                        raw[at],
                        shown(&String::from_utf8_lossy(&raw[..at]))
                    ),
                ));
                None
            }
        }
    };
    let file = field("file");
    let contact_id = field("contact_id");
    let contact_email = field("contact_email");
    let reference_type = field("reference_type");
    let reference_id = field("reference_id");
    let name = field("name");
    let note_text = field("note_text");
    let note_date = field("note_date");
    let note_key = field("note_key");
    // A field that is not UTF-8 (each one reported above) makes the record unparsed: it is
    // kept as bytes, so that its real values reach the state file and the failed-rows report.
    let utf8 = |col: &'static str, value: &Option<String>| {
        value.is_some() || !columns.contains(&Some(col))
    };
    if !(utf8("reference_type", &reference_type)
        && utf8("name", &name)
        && utf8("contact_id", &contact_id)
        && utf8("contact_email", &contact_email)
        && utf8("note_text", &note_text)
        && utf8("note_date", &note_date)
        && utf8("note_key", &note_key))
    {
        return None;
    }
    let has_note_column = columns.contains(&Some("note_text"));
    // A manifest with `note_text` may have no `reference_id` column at all.
    let reference_id = match reference_id {
        Some(r) => Some(r),
        None if has_note_column && !columns.contains(&Some("reference_id")) => Some(String::new()),
        None => None,
    };
    let (Some(file), Some(reference_id)) = (file, reference_id) else {
        return None;
    };
    let note_text = note_text.filter(|t| !t.trim().is_empty());
    let contact_id = contact_id.unwrap_or_default().trim().to_string();
    let contact_email = contact_email.unwrap_or_default().trim().to_string();
    let reference_id = reference_id.trim().to_string();

    for (col, value) in [("file", file.as_str()), ("reference_id", &reference_id)] {
        if col == "reference_id" && note_text.is_some() {
            continue;
        }
        if value.trim().is_empty() {
            let message = match (col, has_note_column) {
                ("reference_id", true) => "neither `reference_id` nor `note_text` is given; every row needs the id of a note, deal, call or meeting, or a note_text to create a note".to_string(),
                _ => format!("`{col}` is empty; every row needs a {}", describe(col)),
            };
            problems.push(Problem::error(
                Some(line),
                Some(col),
                ProblemKind::MissingField,
                message,
            ));
        }
    }
    check_contact(&contact_id, &contact_email, columns, line, problems);
    for (col, value) in [("contact_id", &contact_id), ("reference_id", &reference_id)] {
        if !value.is_empty() && !is_object_id(value) {
            problems.push(Problem::warning(
                line,
                col,
                ProblemKind::IdFormat,
                format!(
                    "{} is not a 24-hex-digit OnePageCRM id; check that it is the right column",
                    shown(value)
                ),
            ));
        }
    }

    let mut unknown_reference_type = None;
    let reference_type = match reference_type.as_deref().unwrap_or("").trim() {
        "" => Some(ReferenceType::Note),
        t => match ReferenceType::parse(t) {
            Some(t) => Some(t),
            None => {
                problems.push(Problem::error(
                    Some(line),
                    Some("reference_type"),
                    ProblemKind::UnknownReferenceType,
                    format!(
                        "unknown reference type {}; use note, deal, call or meeting",
                        shown(t)
                    ),
                ));
                unknown_reference_type = Some(t.into());
                None
            }
        },
    };

    let note = note_spec(
        line,
        (&contact_id, &contact_email),
        &reference_id,
        reference_type,
        [note_text, note_date, note_key],
        problems,
    );

    if file.contains('\0') {
        problems.push(Problem::error(
            Some(line),
            Some("file"),
            ProblemKind::FileMissing,
            "the path holds a NUL character".to_string(),
        ));
    }
    let name = match name.filter(|n| !n.is_empty()) {
        Some(name) => {
            check_name(&name, line, "name", problems);
            name
        }
        None => {
            let own = Path::new(&file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !file.trim().is_empty() {
                if own.is_empty() {
                    problems.push(Problem::error(
                        Some(line),
                        Some("file"),
                        ProblemKind::InvalidName,
                        format!("{} has no file name to show in OnePageCRM; give one in the `name` column", shown(&file)),
                    ));
                } else {
                    check_name(&own, line, "file", problems);
                }
            }
            own
        }
    };
    Some(Row {
        line,
        file,
        contact_id,
        contact_email,
        reference_type,
        unknown_reference_type,
        reference_id,
        name,
        note: note.map(Box::new),
    })
}

/// A row names its contact by exactly one of `contact_id` and `contact_email`; an email must
/// look like one (the lookup itself is online, see `lookup`).
fn check_contact(
    contact_id: &str,
    contact_email: &str,
    columns: &[Option<&'static str>],
    line: u64,
    problems: &mut Vec<Problem>,
) {
    let has_email_column = columns.contains(&Some("contact_email"));
    match (contact_id.is_empty(), contact_email.is_empty()) {
        (true, true) if has_email_column => problems.push(Problem::error(
            Some(line),
            Some("contact_id"),
            ProblemKind::MissingField,
            "`contact_id` and `contact_email` are both empty; give the contact's OnePageCRM id or its email (one of the two)".to_string(),
        )),
        (true, true) => problems.push(Problem::error(
            Some(line),
            Some("contact_id"),
            ProblemKind::MissingField,
            format!("`contact_id` is empty; every row needs a {}", describe("contact_id")),
        )),
        (false, false) => problems.push(Problem::error(
            Some(line),
            Some("contact_email"),
            ProblemKind::ContactIdAndEmail,
            format!(
                "the row gives both `contact_id` {} and `contact_email` {}; keep one of the two (the email is looked up only when `contact_id` is empty)",
                shown(contact_id),
                shown(contact_email)
            ),
        )),
        (true, false) => {
            if let Err(why) = check_email(contact_email) {
                problems.push(Problem::error(
                    Some(line),
                    Some("contact_email"),
                    ProblemKind::InvalidEmail,
                    format!(
                        "{} is not an email address ({why}); give the contact's email as name@domain, or its contact_id",
                        shown(contact_email)
                    ),
                ));
            }
        }
        (false, true) => {}
    }
}

/// Whether `email` has an email address's shape: one `@`, something before it, a domain with a
/// dot after it, no spaces, control characters, commas, brackets or quotes, at most 254 bytes.
/// (Deliverability is not judged: the lookup decides whether a contact has it.)
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err("over 254 bytes");
    }
    if let Some(c) = email
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ",;<>()[]\\\"".contains(*c))
    {
        return Err(match c {
            c if c.is_whitespace() => "it holds a space",
            c if c.is_control() => "it holds a control character",
            _ => "it holds one of , ; < > ( ) [ ] \\ \"",
        });
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("no @");
    };
    if domain.contains('@') {
        return Err("more than one @");
    }
    if local.is_empty() {
        return Err("nothing before the @");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return Err("the part after the @ is not a domain like example.com");
    }
    Ok(())
}

/// The form of an email that lookups and row identities use: trimmed and lower-cased, so that
/// `Ada@X.example` and `ada@x.example` are one contact and one lookup.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The note a row creates, with every problem of its three columns: `note_text` with a
/// `reference_id` or another reference type, a text over the API's limit, a date that is not
/// `YYYY-MM-DD`, a date or key without a text.
fn note_spec(
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

/// One `note_key` of one contact must mean one note: a row that gives it another text or date
/// than its first row is an error (on the column that differs), naming that first line. The
/// contact is as the rows give it (the group holds it): an email, in any letter case, is one
/// contact.
fn check_note_keys(rows: &[Row], problems: &mut Vec<Problem>) {
    let mut first: std::collections::HashMap<&str, (u64, &NoteSpec)> =
        std::collections::HashMap::new();
    for row in rows {
        let Some(note) = &row.note else { continue };
        if note.key.is_none() {
            continue;
        }
        let Some((line, seen)) = first.get(note.group.as_str()) else {
            first.insert(&note.group, (row.line, note));
            continue;
        };
        let key = note.key.as_deref().unwrap_or_default();
        let words = |t: &str| crate::onepagecrm::normalize_line_ends(t).trim().to_string();
        if words(&seen.text) != words(&note.text) {
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
        if seen.date != note.date {
            problems.push(Problem::error(
                Some(row.line),
                Some("note_date"),
                ProblemKind::NoteKeyConflict,
                format!(
                    "note_key {} of contact {} has the date {} on line {line}; rows with one note_key share one note, so give them one date",
                    shown(key),
                    cut(row.contact_given()),
                    seen.date.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
}

/// A record kept as written, its fields placed by the header's columns as far as both reach.
fn unparsed(record: &csv::ByteRecord, columns: &[Option<&'static str>], line: u64) -> Unparsed {
    let mut fields: [Vec<u8>; 6] = Default::default();
    let mut note_fields: [Vec<u8>; 3] = Default::default();
    for (raw, col) in record.iter().zip(columns) {
        let Some(col) = col else { continue };
        if let Some(i) = RECORD_COLUMNS.iter().position(|k| k == col) {
            fields[i] = raw.to_vec();
        } else if let Some(i) = NOTE_COLUMNS.iter().position(|k| k == col) {
            note_fields[i] = raw.to_vec();
        }
    }
    let extra = record
        .iter()
        .skip(columns.len())
        .map(<[u8]>::to_vec)
        .collect();
    Unparsed {
        line,
        fields,
        note_fields,
        extra,
    }
}

/// Whether a header record names `column` (as `parse_header` matches names).
fn columns_named(header: &csv::ByteRecord, column: &str) -> bool {
    header
        .iter()
        .any(|f| std::str::from_utf8(f).is_ok_and(|t| t.trim().eq_ignore_ascii_case(column)))
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP's list).
const FORMULA_STARTS: [u8; 6] = [b'=', b'+', b'-', b'@', b'\t', b'\r'];

/// Whether `value` is some `'`s (maybe none) and then a formula character.
fn quotes_then_formula(value: &[u8]) -> Option<usize> {
    let quotes = value.iter().take_while(|b| **b == b'\'').count();
    value
        .get(quotes)
        .is_some_and(|b| FORMULA_STARTS.contains(b))
        .then_some(quotes)
}

/// A report cell that a spreadsheet will not run as a formula: a value that starts with
/// `= + - @`, TAB or CR, after any number of `'`, gets one more `'` in front (OWASP's advice;
/// the extra `'`s keep the escape reversible for a value that itself starts with `'=`).
pub fn formula_escape(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match quotes_then_formula(value) {
        Some(_) => {
            let mut escaped = Vec::with_capacity(value.len() + 1);
            escaped.push(b'\'');
            escaped.extend_from_slice(value);
            escaped.into()
        }
        None => value.into(),
    }
}

/// Undoes [`formula_escape`]: one `'` is removed from a value that is one or more `'`s and then
/// a formula character. Applied only to files with both error columns (failed-rows reports).
pub fn formula_unescape(value: &[u8]) -> &[u8] {
    match quotes_then_formula(value) {
        Some(quotes) if quotes > 0 => &value[1..],
        _ => value,
    }
}

/// Text in UTF-16 (a BOM, or ASCII with a NUL in every other byte), as some spreadsheets save
/// "Unicode text".
fn is_utf16(head: &[u8]) -> bool {
    if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        return true;
    }
    let sample = &head[..head.len().min(4096) & !1];
    if sample.len() < 4 {
        return false;
    }
    let (mut even, mut odd) = (0, 0);
    for (i, b) in sample.iter().enumerate() {
        if *b == 0 {
            if i % 2 == 0 {
                even += 1;
            } else {
                odd += 1;
            }
        }
    }
    // Most code units of a CSV are ASCII: their high byte is NUL, their low byte never is.
    let half = sample.len() / 2;
    (odd * 2 >= half && even == 0) || (even * 2 >= half && odd == 0)
}

/// The longest value a message shows whole, in bytes.
const SHOWN_BYTES: usize = 200;

/// `value` for a message: whole when short, else its first 200 bytes and its length, so that a
/// 50 MB field does not make a 50 MB message.
pub fn cut(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= SHOWN_BYTES {
        return value.into();
    }
    let mut end = SHOWN_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &value[..end], value.len()).into()
}

/// `value` quoted for a message (as `{:?}` does), cut as [`cut`] does.
pub fn shown(value: &str) -> String {
    if value.len() <= SHOWN_BYTES {
        return format!("{value:?}");
    }
    let mut end = SHOWN_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

fn describe(column: &str) -> &'static str {
    match column {
        "file" => "file path",
        "contact_id" => "OnePageCRM contact id",
        _ => "note, deal, call or meeting id",
    }
}

fn check_name(name: &str, line: u64, column: &'static str, problems: &mut Vec<Problem>) {
    let whose = if column == "name" {
        "the name"
    } else {
        "the file's own name (used as the attachment name)"
    };
    let mut invalid = |message: String| {
        problems.push(Problem::error(
            Some(line),
            Some(column),
            ProblemKind::InvalidName,
            message,
        ));
    };
    if name == "." || name == ".." {
        invalid(format!(
            "{whose} {name:?} is not a file name (it would end the object key in `/{name}`); give a name"
        ));
    }
    if name.contains('/') {
        invalid(format!(
            "{whose} {} contains `/`; attachment names cannot hold a path",
            shown(name)
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        invalid(format!(
            "{whose} {} contains the control character U+{:04X}",
            shown(name),
            c as u32
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        invalid(format!(
            "{whose} is {} bytes long; OnePageCRM allows at most {MAX_NAME_BYTES} bytes",
            name.len()
        ));
    }
}

/// A short reason for an I/O error, without Rust's `(os error N)` suffix.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each problem's line, column and kind.
    fn lines_columns_kinds(m: &Manifest) -> Vec<(u64, Option<&str>, ProblemKind)> {
        m.problems
            .iter()
            .map(|p| (p.line.unwrap(), p.column, p.kind))
            .collect()
    }

    fn parse(text: &[u8]) -> Manifest {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, text).unwrap();
        read(&path, ReadOptions::default())
    }

    const ID: &str = "5a1b2c3d4e5f60718293a4b5";
    const ID2: &str = "5a1b2c3d4e5f60718293a4b6";

    #[test]
    fn reads_rows_with_defaults() {
        let m = parse(format!("file,contact_id,reference_id\na.pdf,{ID},{ID}\n").as_bytes());
        assert!(m.readable);
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        let row = &m.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.reference_type, Some(ReferenceType::Note));
        assert_eq!(row.name, "a.pdf");
        assert!(m.path_of(row).ends_with("a.pdf"));
        assert!(m.path_of(row).is_absolute());
    }

    #[test]
    fn bom_crlf_quotes_and_blank_lines() {
        let text = format!(
            "\u{feff}File , contact_id,reference_id,name\r\n\r\n\"a, \"\"b\"\".pdf\",{ID},{ID},\"x\r\ny\"\r\n,,,\r\nc.pdf,{ID},{ID},c\r\n"
        );
        let m = parse(text.as_bytes());
        assert!(m.readable, "{:?}", m.problems);
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.rows[0].file, "a, \"b\".pdf");
        assert_eq!(m.rows[0].line, 3);
        // The multi-line name is a control character, reported on the row's first line.
        assert_eq!(m.problems.len(), 1);
        assert_eq!(m.problems[0].line, Some(3));
        assert_eq!(m.problems[0].kind, ProblemKind::InvalidName);
        assert_eq!(m.rows[1].line, 6);
    }

    #[test]
    fn non_utf8_field_names_line_and_column() {
        let mut text = b"file,contact_id,reference_id\n".to_vec();
        text.extend_from_slice(format!("ok.pdf,{ID},{ID}\ncaf").as_bytes());
        text.push(0xE9);
        text.extend_from_slice(format!(".pdf,{ID},{ID}\n").as_bytes());
        let m = parse(&text);
        assert_eq!(m.problems.len(), 1);
        let p = &m.problems[0];
        assert_eq!(
            (p.line, p.column, p.kind),
            (Some(3), Some("file"), ProblemKind::InvalidUtf8)
        );
        assert!(p.message.contains("0xE9"), "{}", p.message);
    }

    #[test]
    fn header_problems_are_reported_together() {
        let m = parse(b"file,contact,reference_id,colour\n");
        assert!(!m.readable);
        let msg = &m.problems[0].message;
        assert!(msg.contains("unknown column `contact`"), "{msg}");
        assert!(msg.contains("unknown column `colour`"), "{msg}");
        assert!(
            msg.contains("missing required column `contact_id`"),
            "{msg}"
        );
        assert!(
            msg.contains("file, contact_id, reference_type, reference_id, name"),
            "{msg}"
        );
    }

    #[test]
    fn empty_header_only_and_binary_are_whole_manifest_errors() {
        assert_eq!(parse(b"").problems[0].kind, ProblemKind::ManifestEmpty);
        assert_eq!(
            parse(b"\xEF\xBB\xBF\n\n").problems[0].kind,
            ProblemKind::ManifestEmpty
        );
        assert_eq!(
            parse(b"file,contact_id,reference_id\n").problems[0].kind,
            ProblemKind::NoRows
        );
        assert_eq!(
            parse(b"PK\x03\x04\x00\x00binary").problems[0].kind,
            ProblemKind::NotText
        );
    }

    #[test]
    fn field_count_and_row_checks() {
        let text = format!(
            "file,contact_id,reference_type,reference_id,name\n\
             a.pdf,{ID},note\n\
             b.pdf,{ID},task,{ID},\n\
             ,,note,{ID},x/y\n\
             d.pdf,abc,deal,{ID},{}\n",
            "n".repeat(256)
        );
        let m = parse(text.as_bytes());
        let got = lines_columns_kinds(&m);
        assert_eq!(
            got,
            vec![
                (2, None, ProblemKind::FieldCount),
                (3, Some("reference_type"), ProblemKind::UnknownReferenceType),
                (4, Some("file"), ProblemKind::MissingField),
                (4, Some("contact_id"), ProblemKind::MissingField),
                (4, Some("name"), ProblemKind::InvalidName),
                (5, Some("contact_id"), ProblemKind::IdFormat),
                (5, Some("name"), ProblemKind::InvalidName),
            ]
        );
    }

    #[test]
    fn texts_that_differ_only_in_line_ends_or_surrounding_space_are_one_note_group() {
        let g = |t: &str| note_group("c", t, None, None);
        assert_eq!(g("Hello\r\nWorld"), g("Hello\nWorld"));
        assert_eq!(g("Hello\rWorld"), g("Hello\nWorld"));
        assert_eq!(g("Trail  "), g("Trail"));
        assert_ne!(g("Hello World"), g("Hello\nWorld"));
    }

    #[test]
    fn a_row_names_its_contact_by_exactly_one_of_id_and_email() {
        let text = format!(
            "file,contact_id,contact_email,reference_id\n\
             a.pdf,,Ada@Analytical.example,{ID}\n\
             b.pdf,{ID},ada@analytical.example,{ID}\n\
             c.pdf,,,{ID}\n\
             d.pdf,,ada at analytical,{ID}\n\
             e.pdf,{ID},,{ID}\n"
        );
        let m = parse(text.as_bytes());
        let got = lines_columns_kinds(&m);
        assert_eq!(
            got,
            vec![
                (3, Some("contact_email"), ProblemKind::ContactIdAndEmail),
                (4, Some("contact_id"), ProblemKind::MissingField),
                (5, Some("contact_email"), ProblemKind::InvalidEmail),
            ]
        );
        assert_eq!(m.rows[0].contact_email, "Ada@Analytical.example");
        assert_eq!(m.rows[0].contact_id, "");
        assert_eq!(
            email_key(&m.rows[0].contact_email),
            "ada@analytical.example"
        );
        // A header with the email column alone is a manifest; one with neither is not.
        let m =
            parse(format!("file,contact_email,reference_id\na.pdf,a@b.example,{ID}\n").as_bytes());
        assert!(m.readable && m.problems.is_empty(), "{:?}", m.problems);
        let m = parse(format!("file,reference_id\na.pdf,{ID}\n").as_bytes());
        assert_eq!(m.problems[0].kind, ProblemKind::MissingColumn);
        assert!(
            m.problems[0].message.contains("contact_email"),
            "{}",
            m.problems[0].message
        );
    }

    #[test]
    fn note_columns_make_notes_and_every_mistake_has_its_line_and_column() {
        let long = "x".repeat(MAX_NOTE_CHARS + 1);
        let text = format!(
            "file,contact_id,reference_type,reference_id,name,note_text,note_date,note_key\n\
             a.pdf,{ID},,,,\"Hi, \"\"you\"\"\nthere\",2024-03-15,k1\n\
             b.pdf,{ID},note,,,\"Hi, \"\"you\"\"\nthere\",2024-03-15,k1\n\
             c.pdf,{ID},,{ID},,Text,,\n\
             d.pdf,{ID},deal,,,Text,,\n\
             e.pdf,{ID},,,,Text,2024-02-30,\n\
             f.pdf,{ID},,,,Other text,2024-03-16,k1\n\
             g.pdf,{ID},,,,{long},,\n\
             h.pdf,{ID},,,,,2024-03-15,\n\
             i.pdf,{ID},,,,,,\n"
        );
        let m = parse(text.as_bytes());
        let got: Vec<_> = m
            .problems
            .iter()
            .map(|p| (p.line.unwrap(), p.column.unwrap_or("-"), p.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                // Rows 2 and 3 take two lines each (their text holds a newline).
                (6, "note_text", ProblemKind::NoteConflict),
                (7, "note_text", ProblemKind::NoteConflict),
                (8, "note_date", ProblemKind::InvalidNoteDate),
                (10, "note_text", ProblemKind::NoteTooLong),
                (11, "reference_id", ProblemKind::MissingField),
                (11, "note_date", ProblemKind::NoteConflict),
                (12, "reference_id", ProblemKind::MissingField),
                // Found once every row is read (preflight sorts problems by line).
                (9, "note_text", ProblemKind::NoteKeyConflict),
                (9, "note_date", ProblemKind::NoteKeyConflict),
            ]
        );
        let (a, b) = (&m.rows[0], &m.rows[1]);
        let note = a.note.as_ref().unwrap();
        assert_eq!(note.text, "Hi, \"you\"\nthere");
        assert_eq!(note.date.as_deref(), Some("2024-03-15"));
        assert_eq!(a.note, b.note, "one key, one group");
        assert!(note.group.starts_with('g'));
        // Without a key, the text and the date make the group.
        assert_eq!(
            note_group(ID, "t", Some("2024-03-15"), None),
            note_group(ID, "t", Some("2024-03-15"), None)
        );
        assert_ne!(
            note_group(ID, "t", Some("2024-03-15"), None),
            note_group(ID, "t", None, None)
        );
        assert_ne!(
            note_group(ID, "t", None, Some("k")),
            note_group(ID2, "t", None, Some("k"))
        );
    }

    #[test]
    fn rows_by_email_form_note_groups_by_the_email_as_given_in_any_letter_case() {
        let text = format!(
            "file,contact_id,contact_email,note_text,note_date,note_key\n\
             a.pdf,,Ada@X.example,Kick-off,2024-03-15,k1\n\
             b.pdf,,ada@x.example,Kick-off,2024-03-15,k1\n\
             c.pdf,,grace@x.example,Kick-off,2024-03-15,k1\n\
             d.pdf,{ID},,Kick-off,2024-03-15,k1\n\
             e.pdf,,ADA@X.EXAMPLE,Another text,2024-03-15,k1\n\
             f.pdf,,grace@x.example,Same words,,\n\
             g.pdf,,Grace@X.example,Same words,,\n"
        );
        let m = parse(text.as_bytes());
        let got: Vec<_> = m
            .problems
            .iter()
            .map(|p| (p.line.unwrap(), p.column.unwrap_or("-"), p.kind))
            .collect();
        // One note_key of one email (in any case) is one note: line 6 gives it another text.
        assert_eq!(got, vec![(6, "note_text", ProblemKind::NoteKeyConflict)]);
        assert!(
            m.problems[0].message.contains("ADA@X.EXAMPLE"),
            "{}",
            m.problems[0].message
        );
        let group = |i: usize| m.rows[i].note.as_ref().unwrap().group.clone();
        assert_eq!(group(0), group(1), "one email in two cases: one group");
        assert_ne!(group(0), group(2), "two emails never share a group");
        assert_ne!(group(0), group(3), "an email's group is not a contact id's");
        assert_eq!(group(5), group(6), "by text, in any case");
        assert_eq!(
            group(0),
            note_group_by_email("ada@x.example", "Kick-off", Some("2024-03-15"), Some("k1"))
        );
        assert_ne!(
            note_group_by_email(ID, "t", None, None),
            note_group(ID, "t", None, None)
        );
    }

    #[test]
    fn a_manifest_with_note_text_needs_no_reference_id_column() {
        let m = parse(format!("file,contact_id,note_text\na.pdf,{ID},Hello\n").as_bytes());
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.rows[0].reference_id, "");
        assert_eq!(m.rows[0].note.as_ref().unwrap().text, "Hello");
        let m = parse(format!("file,contact_id\na.pdf,{ID}\n").as_bytes());
        assert!(
            m.problems[0]
                .message
                .contains("`reference_id` (or `note_text`")
        );
    }

    #[test]
    fn malformed_emails_are_told_apart_from_plausible_ones() {
        for ok in [
            "a@b.example",
            "first.last+tag@sub.example.co.uk",
            "ünï@example.de",
        ] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
        }
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@b..example",
            "a@@b.example",
            "a@b@c.example",
            "a b@c.example",
            "a,b@c.example",
            "<a@b.example>",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_email(&format!("{}@b.example", "a".repeat(250))).is_err());
    }

    #[test]
    fn long_fields_and_lines_after_them() {
        let long = "d/".repeat(5000) + "a.pdf";
        let text = format!("file,contact_id,reference_id\n\n{long},{ID},{ID}\nb.pdf,{ID},{ID}\n");
        let m = parse(text.as_bytes());
        assert_eq!(m.rows[0].file, long);
        assert_eq!((m.rows[0].line, m.rows[1].line), (3, 4));
    }

    #[test]
    fn formula_escape_is_undone_exactly() {
        for value in [
            "=SUM(1)",
            "+cmd|x",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "'=x",
            "''+x",
            "'",
            "''",
            "'a",
            "a=b",
            "",
            "plain.pdf",
            "-",
        ] {
            let escaped = formula_escape(value.as_bytes());
            assert!(
                !matches!(
                    escaped.first(),
                    Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
                ),
                "{value:?}"
            );
            assert_eq!(formula_unescape(&escaped), value.as_bytes(), "{value:?}");
        }
        assert_eq!(&*formula_escape(b"=x"), b"'=x");
        assert_eq!(&*formula_escape(b"'a"), b"'a");
    }

    #[test]
    fn utf16_is_told_from_utf8_and_binary() {
        let text = "file,contact_id\n";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert!(is_utf16(&le) && is_utf16(&be));
        assert!(is_utf16(b"\xFF\xFEf\x00"));
        assert!(!is_utf16(text.as_bytes()));
        assert!(!is_utf16(b"PK\x03\x04\x00\x00binary"));
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(150);
        let shown = cut(&long);
        assert!(shown.ends_with("… (300 bytes)"), "{shown}");
        assert!(shown.len() < 220);
        assert!(super::shown(&long).starts_with("\"é"));
    }
}
