//! Reads a CSV manifest into rows, and finds every problem that a row shows on its own.
//!
//! Nothing here touches the files a manifest names (that is `preflight`): this module owns the
//! CSV format, the header, the columns and their meaning, and the line numbers that every message
//! a user sees is anchored to.
//!
//! One file per concern: `reader` reads the file's CSV records with their lines and drives the
//! rest, `header` maps the header to columns, `row` makes a record a row with the problems of its
//! fields, `notes` the note columns and their groups, `problems` what a problem is. This file
//! holds what the rest of the crate reads: [`Row`], [`Unparsed`] and [`Manifest`], the column
//! lists, [`read`], and how a value is shown in a message ([`cut`], [`shown`]).

mod header;
mod notes;
mod problems;
mod reader;
mod row;

use std::io;
use std::path::{Path, PathBuf};

use crate::onepagecrm::{LinkType, ReferenceType};

pub use notes::{NoteSpec, is_note_date, note_group, note_group_by_email};
pub use problems::{Problem, ProblemKind, Severity, write_problems};
#[cfg(test)]
use reader::is_utf16;
pub use reader::{Reader, formula_escape, formula_unescape};
pub use row::{check_email, email_key, link_name, pin_value};

/// The longest attachment name OnePageCRM stores, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The columns a manifest may have, in the order they are documented.
/// (`contact_email` came later, and is listed after the first five so that the list earlier
/// versions showed stays as it was; the note columns came after it, `pin` after them, and the
/// link columns after that.)
pub const COLUMNS: [&str; 12] = [
    "file",
    "contact_id",
    "reference_type",
    "reference_id",
    "name",
    "contact_email",
    "note_text",
    "note_date",
    "note_key",
    "pin",
    "link_url",
    "link_type",
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
/// The columns of a row that attaches a link instead of a file, in [`COLUMNS`] order.
pub const LINK_COLUMNS: [&str; 2] = ["link_url", "link_type"];
/// The longest note text the API takes, in characters (OpenAPI `Note.text.maxLength`).
pub const MAX_NOTE_CHARS: usize = 7168;
/// Columns that `report --only failed` adds; accepted and ignored so that report is a manifest.
pub const IGNORED_COLUMNS: [&str; 2] = ["error_kind", "error"];
/// The longest email address a mail system accepts (RFC 5321's path limit), in bytes.
pub const MAX_EMAIL_BYTES: usize = 254;

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
    /// Whether the attachment is pinned to its contact after it is attached (`pin`; not part
    /// of the row's identity: a pin added to a done row is made by the next run).
    pub pin: bool,
    /// The link columns, when the row gives either (boxed, as `note`: a million rows of files
    /// do not pay for them).
    pub link: Option<Box<LinkSpec>>,
}

/// A row's link columns as given: the row attaches a link to a file in cloud storage instead of
/// uploading a file when `url` is not empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// `link_url`, trimmed (empty when not given).
    pub url: String,
    /// `link_type`, trimmed, as written (empty when not given).
    pub link_type_text: String,
    /// `link_type` when it is a known type.
    pub link_type: Option<LinkType>,
}

impl LinkSpec {
    /// `link_type` as a row key and the state file hold it: the known type's name, else as
    /// written.
    pub fn type_text(&self) -> &str {
        match self.link_type {
            Some(t) => t.as_str(),
            None => &self.link_type_text,
        }
    }
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

    /// The row's link, when it attaches one (`link_url` is given) instead of a file.
    pub fn link(&self) -> Option<&LinkSpec> {
        self.link.as_deref().filter(|l| !l.url.is_empty())
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
    /// `pin` as written (empty when the record has none).
    pub pin: Vec<u8>,
    /// `link_url` and `link_type` as written (empty when the record has none).
    pub link_fields: [Vec<u8>; 2],
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
    let mut manifest = Manifest {
        path: path.to_path_buf(),
        base: base_of(path),
        rows: Vec::new(),
        unparsed: Vec::new(),
        problems: Vec::new(),
        readable: false,
    };
    let read = stream(path, options).and_then(|mut reader| {
        while let Some(chunk) = reader.next_chunk(usize::MAX)? {
            manifest.rows.extend(chunk.rows);
            manifest.unparsed.extend(chunk.unparsed);
            manifest.problems.extend(chunk.problems);
        }
        Ok(())
    });
    match read {
        Ok(()) => manifest.readable = true,
        Err(problem) => manifest.problems.push(problem),
    }
    manifest
}

/// Opens `path` to be read chunk by chunk (see [`Reader::next_chunk`]): a manifest of any
/// length in little memory. An error: it cannot be read at all.
pub fn stream(path: &Path, options: ReadOptions) -> Result<Reader, Problem> {
    reader::open(path, options, base_of(path))
}

/// The manifest's folder, absolute, so that the paths recorded in the state file mean the same
/// from any folder. A bare `m.csv` has the folder `""`, which `absolute` refuses: that is the
/// current folder.
fn base_of(path: &Path) -> PathBuf {
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::env::current_dir() {
        Ok(cwd) if base == Path::new(".") => cwd,
        _ => std::path::absolute(&base).unwrap_or(base),
    }
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
    fn pin_takes_true_false_yes_no_1_0_in_any_case_and_anything_else_is_an_error_on_its_line() {
        let text = format!(
            "file,contact_id,reference_id,pin\n\
             a.pdf,{ID},{ID},true\n\
             b.pdf,{ID},{ID}, YES \n\
             c.pdf,{ID},{ID},1\n\
             d.pdf,{ID},{ID},False\n\
             e.pdf,{ID},{ID},no\n\
             f.pdf,{ID},{ID},0\n\
             g.pdf,{ID},{ID},\n\
             h.pdf,{ID},{ID},pinned\n"
        );
        let m = parse(text.as_bytes());
        let pins: Vec<bool> = m.rows.iter().map(|r| r.pin).collect();
        assert_eq!(pins, [true, true, true, false, false, false, false, false]);
        assert_eq!(
            lines_columns_kinds(&m),
            vec![(9, Some("pin"), ProblemKind::InvalidPin)]
        );
        assert!(
            m.problems[0].message.contains("\"pinned\""),
            "{}",
            m.problems[0].message
        );
        // Without the column, no row is pinned.
        let m = parse(format!("file,contact_id,reference_id\na.pdf,{ID},{ID}\n").as_bytes());
        assert!(!m.rows[0].pin);
    }

    #[test]
    fn link_rows_are_read_and_every_mistake_has_its_line_and_column() {
        let text = format!(
            "file,contact_id,reference_id,name,link_url,link_type\n\
             ,{ID},{ID},,https://www.dropbox.com/s/abc/Q3%20report.pdf?dl=0,Dropbox\n\
             ,{ID},{ID},Plan,https://drive.google.com/file/d/xyz/view,google_drive\n\
             ,{ID},{ID},,http://www.dropbox.com/s/abc/a.pdf,dropbox\n\
             ,{ID},{ID},,https://www.dropbox.com/s/abc/b.pdf,onedrive\n\
             c.pdf,{ID},{ID},,https://www.dropbox.com/s/abc/c.pdf,dropbox\n\
             ,{ID},{ID},,,\n\
             d.pdf,{ID},{ID},,,evernote\n\
             ,{ID},{ID},,https://www.evernote.com/,evernote\n\
             ,{ID},{ID},,https://www.dropbox.com/s/abc/e.pdf,\n\
             ,{ID},{ID},,https://x.example/a b.pdf,dropbox\n"
        );
        let m = parse(text.as_bytes());
        let got = lines_columns_kinds(&m);
        assert_eq!(
            got,
            vec![
                (4, Some("link_url"), ProblemKind::InvalidLinkUrl),
                (5, Some("link_type"), ProblemKind::UnknownLinkType),
                (6, Some("link_url"), ProblemKind::LinkConflict),
                (7, Some("file"), ProblemKind::MissingField),
                (8, Some("link_type"), ProblemKind::LinkConflict),
                (9, Some("link_url"), ProblemKind::InvalidName),
                (10, Some("link_type"), ProblemKind::MissingField),
                (11, Some("link_url"), ProblemKind::InvalidLinkUrl),
            ]
        );
        // Each message names the value.
        let message = |line: u64| {
            let p = m.problems.iter().find(|p| p.line == Some(line)).unwrap();
            p.message.clone()
        };
        assert!(
            message(4).contains("http://www.dropbox.com/s/abc/a.pdf"),
            "{}",
            message(4)
        );
        assert!(message(5).contains("\"onedrive\""), "{}", message(5));
        assert!(message(6).contains("c.pdf"), "{}", message(6));
        assert!(message(8).contains("\"evernote\""), "{}", message(8));
        // A link's name: the URL's last path segment, percent-decoded, or the `name` given.
        let (a, b) = (&m.rows[0], &m.rows[1]);
        assert_eq!(a.name, "Q3 report.pdf");
        let link = a.link().unwrap();
        assert_eq!(link.link_type, Some(LinkType::Dropbox));
        assert_eq!(link.type_text(), "dropbox");
        assert_eq!(b.name, "Plan");
        assert_eq!(b.link().unwrap().link_type, Some(LinkType::GoogleDrive));
        assert!(m.rows[6].link().is_none(), "a link_type alone is no link");
        // A manifest of links needs no `file` column.
        let m = parse(
            format!(
                "contact_id,reference_id,link_url,link_type\n{ID},{ID},https://x.example/a.pdf,evernote\n"
            )
            .as_bytes(),
        );
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(
            (m.rows[0].file.as_str(), m.rows[0].name.as_str()),
            ("", "a.pdf")
        );
        let m = parse(format!("contact_id,reference_id\n{ID},{ID}\n").as_bytes());
        assert!(
            m.problems[0]
                .message
                .contains("missing required column `file` (or `link_url`"),
            "{}",
            m.problems[0].message
        );
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
