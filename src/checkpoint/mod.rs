//! The checkpoint: one SQLite file per manifest that records every row's state, so that a rerun
//! after any stop resumes exactly where the last run left off.
//!
//! The schema lives in `migrations/` as numbered SQL files applied in order at open (keyed on
//! SQLite's `user_version`). All access goes through the writer thread of [`store`].

pub mod snapshots;
pub mod store;
pub mod this_run;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use sha2::{Digest, Sha256};

use crate::failure::FailureKind;
use crate::manifest::{Row, Unparsed};
use crate::onepagecrm::ReferenceType;
pub use store::{Store, StoreError, StoreThread};

/// The schema, one entry per file in `migrations/`, in order. Landed files are never edited.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        "0002_contact_lookups.sql",
        include_str!("../../migrations/0002_contact_lookups.sql"),
    ),
    (
        "0003_notes.sql",
        include_str!("../../migrations/0003_notes.sql"),
    ),
    (
        "0004_snapshots.sql",
        include_str!("../../migrations/0004_snapshots.sql"),
    ),
];

/// The first schema version (`user_version`) with the notes table and the rows' note columns:
/// the place of `0003_notes.sql` in [`MIGRATIONS`] (found, not written down, so that a migration
/// merged before it moves it without anyone having to remember this).
fn notes_version() -> i64 {
    MIGRATIONS
        .iter()
        .position(|(name, _)| *name == "0003_notes.sql")
        .map_or(i64::MAX, |i| i as i64 + 1)
}

/// Marks a SQLite file as this tool's (`PRAGMA application_id`): "OPCR", set by the first migration.
const APPLICATION_ID: i32 = 0x4F50_4352;

/// A row's place in the three steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowState {
    Pending,
    Uploading,
    Uploaded,
    Attaching,
    Done,
    Failed,
    Rejected,
}

impl RowState {
    pub const ALL: [RowState; 7] = [
        Self::Pending,
        Self::Uploading,
        Self::Uploaded,
        Self::Attaching,
        Self::Done,
        Self::Failed,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Uploading => "uploading",
            Self::Uploaded => "uploaded",
            Self::Attaching => "attaching",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A row's identity: a hash of what it means, so reordering or extending a manifest is safe.
pub fn row_key(
    file: &str,
    contact_id: &str,
    reference_type: ReferenceType,
    reference_id: &str,
    name: &str,
) -> String {
    tagged_key(&[
        "v1",
        file,
        contact_id,
        reference_type.as_str(),
        reference_id,
        name,
    ])
}

/// A hash of `parts` (a tag first), each ended by a NUL so that field boundaries count: the
/// identity of a row of every kind, told apart by its tag.
fn tagged_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The identity of a row that names its contact by email (`email` as [`email_key`] makes it):
/// the same parts as [`row_key`] under another tag, so it can never equal the key of a row that
/// gives a contact id, and it does not change when the email resolves to a contact.
///
/// [`email_key`]: crate::manifest::email_key
pub fn row_key_by_email(
    file: &str,
    email: &str,
    reference_type: ReferenceType,
    reference_id: &str,
    name: &str,
) -> String {
    tagged_key(&[
        "v1-email",
        file,
        email,
        reference_type.as_str(),
        reference_id,
        name,
    ])
}

/// The key of a row that creates (or shares) a note: a hash of its file, contact, note group and
/// name under a prefix of its own (`n1`), so it can never equal the key of a row that names its
/// record by `reference_id` (those hash `v1`), and rows of other groups never share one.
pub fn note_row_key(file: &str, contact_id: &str, group: &str, name: &str) -> String {
    tagged_key(&["n1", file, contact_id, group, name])
}

/// The key of a row by email that creates (or shares) a note (`email` as [`email_key`] makes
/// it): the parts of [`note_row_key`] under another tag (`n1-email`), so it never equals the key
/// of a row that gives a contact id, and it does not change when the email resolves.
///
/// [`email_key`]: crate::manifest::email_key
pub fn note_row_key_by_email(file: &str, email: &str, group: &str, name: &str) -> String {
    tagged_key(&["n1-email", file, email, group, name])
}

/// The key of a row recorded as written because it could not be read as a row (a wrong field
/// count, a field that is not UTF-8, an unknown reference type). Such a row is always
/// `rejected`. Its key is a hash of its fields as written under its own prefix, so it is stable
/// and can never be a valid row's key (those are 32 hex digits): a fixed row is a new row.
/// `raw:` rows hold their fields as text; `rawb:` rows have a field that is not UTF-8, and hold
/// every field as [`escape_bytes`] writes it.
pub fn raw_row_key(fields: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(b"raw1\0");
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    let prefix = match fields.iter().all(|f| std::str::from_utf8(f).is_ok()) {
        true => RAW_TEXT,
        false => RAW_BYTES,
    };
    format!("{prefix}{}", hex::encode(&h.finalize()[..16]))
}

/// Whether `key` is one of a row recorded as written (see [`raw_row_key`]).
pub fn is_raw_key(key: &str) -> bool {
    key.starts_with(RAW_TEXT) || key.starts_with(RAW_BYTES)
}

/// A row's email as one field of a raw key: `None` when empty (the key is then what it was
/// before the column existed), else tagged so that it cannot pass for a field past the header's.
fn email_field(email: &[u8]) -> Option<Vec<u8>> {
    (!email.is_empty()).then(|| [b"\0contact_email=".as_slice(), email].concat())
}

const RAW_TEXT: &str = "raw:";
const RAW_BYTES: &str = "rawb:";

/// Bytes as text the state file can hold: UTF-8 as it is, but `\` as `\\` and each byte that is
/// not UTF-8 as `\xNN`. Readable in `status`, and [`unescape_bytes`] gives the bytes back.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The bytes [`escape_bytes`] wrote.
pub fn unescape_bytes(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'x')
                && let Some(b) = text
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A row as the state file holds it.
#[derive(Clone, Debug)]
pub struct StoredRow {
    pub key: String,
    pub line: u64,
    pub file: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// The contact: as the manifest gave it, or the one its email resolved to (empty until then).
    pub contact_id: String,
    /// The email the manifest named the contact by, as written; empty for a row by contact id.
    pub contact_email: String,
    /// For a row recorded as written with an unknown type (see [`raw_row_key`]) this is `note`
    /// and means nothing: such a row is rejected and never sent. `reference_type_text` has it.
    pub reference_type: ReferenceType,
    /// The reference type as the state file holds it: as written for a raw row.
    pub reference_type_text: String,
    pub reference_id: String,
    pub name: String,
    pub state: RowState,
    pub s3_key: Option<String>,
    pub etag: Option<String>,
    pub attachment_id: Option<String>,
    pub attempts: u32,
    pub error_kind: Option<FailureKind>,
    pub last_error: Option<String>,
    pub retryable: Option<bool>,
    pub note: NoteColumns,
}

/// A row's note columns: the group it belongs to (a valid row with `note_text`), and the three
/// columns as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoteColumns {
    pub group: Option<String>,
    pub text: Option<String>,
    pub date: Option<String>,
    pub key: Option<String>,
}

impl NoteColumns {
    pub fn is_empty(&self) -> bool {
        self.group.is_none() && self.text.is_none() && self.date.is_none() && self.key.is_none()
    }
}

impl StoredRow {
    /// A failed row whose attach may have taken effect: uploaded (an ETag is recorded), then
    /// failed in a way that leaves step 3's outcome open (retryable, or unsettled). Only a rerun
    /// of its own state file settles it.
    pub fn may_be_attached(&self) -> bool {
        self.state == RowState::Failed
            && self.etag.is_some()
            && (self.retryable == Some(true)
                || self.error_kind == Some(FailureKind::AttachUnsettled))
    }
}

/// A manifest row as preflight saw it, to be recorded.
#[derive(Clone, Debug)]
pub struct NewRow {
    pub key: String,
    pub line: u64,
    pub file: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// The contact: as the manifest gave it, or the one its email resolved to (empty when the
    /// email did not resolve).
    pub contact_id: String,
    /// The email the manifest named the contact by, as written; empty for a row by contact id.
    pub contact_email: String,
    /// `note` (meaning nothing) for a raw row with an unknown type; see `reference_type_text`.
    pub reference_type: ReferenceType,
    /// What the state file records as the reference type: as written for a raw row.
    pub reference_type_text: String,
    pub reference_id: String,
    pub name: String,
    /// `None` when valid; the reason when rejected.
    pub rejected: Option<String>,
    /// Why it is rejected: its (first) problem's kind.
    pub rejected_kind: FailureKind,
    pub note: NoteColumns,
}

impl StoredRow {
    /// Whether this row was recorded as written (see [`raw_row_key`]).
    pub fn is_raw(&self) -> bool {
        is_raw_key(&self.key)
    }

    /// A text field of this row as the manifest had it, in bytes (a `rawb:` row's fields are
    /// escaped in the state file).
    pub fn field_bytes(&self, text: &str) -> Vec<u8> {
        match self.key.starts_with(RAW_BYTES) {
            true => unescape_bytes(text),
            false => text.as_bytes().to_vec(),
        }
    }
}

/// A row not yet recorded, as the state file will hold it (for a dry run's plan).
impl From<&NewRow> for StoredRow {
    fn from(n: &NewRow) -> Self {
        StoredRow {
            key: n.key.clone(),
            line: n.line,
            file: n.file.clone(),
            path: n.path.clone(),
            size: n.size,
            mtime_ns: n.mtime_ns,
            contact_id: n.contact_id.clone(),
            contact_email: n.contact_email.clone(),
            reference_type: n.reference_type,
            reference_type_text: n.reference_type_text.clone(),
            reference_id: n.reference_id.clone(),
            name: n.name.clone(),
            state: if n.rejected.is_some() {
                RowState::Rejected
            } else {
                RowState::Pending
            },
            s3_key: None,
            etag: None,
            attachment_id: None,
            attempts: 0,
            error_kind: n.rejected.is_some().then_some(n.rejected_kind),
            last_error: n.rejected.clone(),
            retryable: None,
            note: n.note.clone(),
        }
    }
}

impl NewRow {
    pub fn from_row(
        row: &Row,
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
        rejected: Option<String>,
    ) -> Self {
        let email = row
            .by_email()
            .then(|| crate::manifest::email_key(&row.contact_email));
        let key = match (row.reference_type, &row.note, &email) {
            (Some(_), Some(note), Some(email)) => {
                note_row_key_by_email(&row.file, email, &note.group, &row.name)
            }
            (Some(_), Some(note), None) => {
                note_row_key(&row.file, &row.contact_id, &note.group, &row.name)
            }
            (Some(t), None, Some(email)) => {
                row_key_by_email(&row.file, email, t, &row.reference_id, &row.name)
            }
            (Some(t), None, None) => {
                row_key(&row.file, &row.contact_id, t, &row.reference_id, &row.name)
            }
            // An unknown type: rejected, and recorded with the type as written.
            (None, _, _) => {
                let mut fields = vec![
                    row.file.as_bytes(),
                    row.contact_id.as_bytes(),
                    row.reference_type_text().as_bytes(),
                    row.reference_id.as_bytes(),
                    row.name.as_bytes(),
                ];
                let email = email_field(row.contact_email.as_bytes());
                if let Some(email) = &email {
                    fields.push(email);
                }
                raw_row_key(&fields)
            }
        };
        Self {
            key,
            line: row.line,
            file: row.file.clone(),
            path,
            size,
            mtime_ns,
            contact_id: row.contact_id.clone(),
            contact_email: row.contact_email.clone(),
            rejected_kind: FailureKind::Invalid,
            reference_type: row.reference_type.unwrap_or(ReferenceType::Note),
            reference_type_text: row.reference_type_text().to_string(),
            reference_id: row.reference_id.clone(),
            name: row.name.clone(),
            rejected,
            note: match &row.note {
                Some(n) => NoteColumns {
                    group: Some(n.group.clone()),
                    text: Some(n.text.clone()),
                    date: n.date.clone(),
                    key: n.key.clone(),
                },
                None => NoteColumns::default(),
            },
        }
    }

    /// A record the manifest reader could not read as a row, recorded as written and rejected
    /// with `reason`. `base` is the manifest's folder.
    pub fn from_unparsed(u: &Unparsed, base: &Path, reason: String) -> Self {
        let [
            file,
            contact_id,
            reference_type,
            reference_id,
            name,
            contact_email,
        ] = &u.fields;
        let mut all: Vec<&[u8]> = [file, contact_id, reference_type, reference_id, name]
            .iter()
            .map(|f| f.as_slice())
            .collect();
        // Only when given, so that the keys of rows recorded before the column existed stay.
        let email = email_field(contact_email);
        if let Some(email) = &email {
            all.push(email);
        }
        // The note columns count only when one is given: a record of a manifest without them
        // keeps the key it had before they existed.
        let has_note = u.note_fields.iter().any(|f| !f.is_empty());
        if has_note {
            all.extend(u.note_fields.iter().map(Vec::as_slice));
        }
        all.extend(u.extra.iter().map(Vec::as_slice));
        let key = raw_row_key(&all);
        let text = |b: &[u8]| match key.starts_with(RAW_BYTES) {
            true => escape_bytes(b),
            false => String::from_utf8_lossy(b).into_owned(),
        };
        let note_field = |b: &Vec<u8>| (!b.is_empty()).then(|| text(b));
        let note = NoteColumns {
            group: None,
            text: note_field(&u.note_fields[0]),
            date: note_field(&u.note_fields[1]),
            key: note_field(&u.note_fields[2]),
        };
        // The path as bytes, so that a file name that is not UTF-8 survives.
        let path = if file.is_empty() {
            String::new()
        } else if file.starts_with(b"/") {
            text(file)
        } else {
            let mut joined = base.as_os_str().as_encoded_bytes().to_vec();
            joined.push(b'/');
            joined.extend_from_slice(file);
            text(&joined)
        };
        Self {
            line: u.line,
            file: text(file),
            path: PathBuf::from(path),
            size: 0,
            mtime_ns: 0,
            contact_id: text(contact_id),
            contact_email: text(contact_email),
            rejected_kind: FailureKind::Invalid,
            reference_type: ReferenceType::Note,
            reference_type_text: text(reference_type),
            reference_id: text(reference_id),
            name: text(name),
            rejected: Some(reason),
            key,
            note,
        }
    }
}

#[cfg(test)]
impl NewRow {
    /// A valid row of `a.pdf` (`size` bytes) on line `line`, for tests.
    pub fn for_test(line: u64, size: u64) -> Self {
        Self {
            key: "k".into(),
            line,
            file: "a.pdf".into(),
            path: "a.pdf".into(),
            size,
            mtime_ns: 0,
            contact_id: "c".into(),
            contact_email: String::new(),
            reference_type: ReferenceType::Note,
            reference_type_text: "note".into(),
            reference_id: "r".into(),
            name: "a.pdf".into(),
            rejected: None,
            rejected_kind: FailureKind::Invalid,
            note: NoteColumns::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} is not an opcrm-import state file (it is another SQLite database); give another --state"
    )]
    Foreign { path: String },
    #[error("{path} is not a SQLite file; give another --state")]
    NotSqlite { path: String },
    #[error(
        "{path} exists but is not an opcrm-import state file (it is empty); it is left as it is: give another --state, or remove it if it is yours (a path that does not exist is created)"
    )]
    NotOurs { path: String },
    #[error(
        "state file {path} was written by a newer opcrm-import (schema {found}, this one knows {known}); use that version"
    )]
    Newer {
        path: String,
        found: i64,
        known: usize,
    },
    #[error(
        "state file {path} is {what}, not a regular file; give the path of a file with --state (it is created if missing)"
    )]
    NotRegular { path: String, what: &'static str },
    #[error(
        "state file {path} has {links} names (hard links); SQLite keeps the journal of recent progress beside the name it was opened by, so another name can miss it and go back on rows already done. Use the state file by the name it was made with, and remove the other names (`ls -i` shows them)"
    )]
    HardLinked { path: String, links: u64 },
    #[error("cannot open state file {path}: {reason}")]
    Other { path: String, reason: String },
}

/// Refuses a state path that exists and is not a regular file (`/dev/null`, a folder, a pipe):
/// SQLite would read it as an empty database, or the lock and journal files would land beside a
/// device. `:memory:` is SQLite's own name, not a path.
pub fn check_regular(path: &Path) -> Result<(), OpenError> {
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // missing (created at open) or unreadable (open says why)
    };
    let what = if meta.is_file() {
        return single_name(path, &meta);
    } else if meta.is_dir() {
        "a folder"
    } else {
        "a device, pipe or socket"
    };
    Err(OpenError::NotRegular {
        path: path.display().to_string(),
        what,
    })
}

/// Refuses a state file with several names (hard links; a symbolic link is fine: SQLite
/// follows it to the file's own name): SQLite's write-ahead log lives beside the name a file is
/// opened by, so after a crash progress committed through one name is not seen through another.
#[cfg(unix)]
fn single_name(path: &Path, meta: &std::fs::Metadata) -> Result<(), OpenError> {
    use std::os::unix::fs::MetadataExt;
    match meta.nlink() {
        0 | 1 => Ok(()),
        links => Err(OpenError::HardLinked {
            path: path.display().to_string(),
            links,
        }),
    }
}

#[cfg(not(unix))]
fn single_name(_: &Path, _: &std::fs::Metadata) -> Result<(), OpenError> {
    Ok(())
}

/// Whether `path` names something already (a dangling symbolic link too): only a path that does
/// not is made a new state file.
pub fn exists(path: &Path) -> bool {
    path.as_os_str() != ":memory:" && std::fs::symlink_metadata(path).is_ok()
}

/// Opens (creating if needed) the state file and brings its schema up to date.
pub fn open(path: &Path) -> Result<Connection, OpenError> {
    open_as(path, exists(path))
}

/// [`open`], for a caller that made the file itself (the run lock does) and saw beforehand
/// whether it `existed`.
pub fn open_as(path: &Path, existed: bool) -> Result<Connection, OpenError> {
    let shown = path.display().to_string();
    let other = |e: &dyn std::fmt::Display| OpenError::Other {
        path: shown.clone(),
        reason: e.to_string(),
    };
    check_regular(path)?;
    // Only a path that does not exist is made a new state file: an existing one that is not ours
    // (even an empty one, which SQLite reads as an empty database) may be someone else's file, or
    // a state file whose content was lost, and taking it as new would upload every row again.
    // `:memory:` is SQLite's own name for a database that lives and dies with the connection.
    let mut conn = Connection::open(path).map_err(|e| other(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| other(&e))?;
    let app_id: i32 = match conn.query_row("PRAGMA application_id", [], |r| r.get(0)) {
        Ok(id) => id,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(OpenError::NotSqlite { path: shown });
        }
        Err(e) => return Err(other(&e)),
    };
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                OpenError::NotSqlite {
                    path: shown.clone(),
                }
            }
            e => other(&e),
        })?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(OpenError::Foreign { path: shown });
    }
    if app_id != APPLICATION_ID && existed {
        return Err(OpenError::NotOurs { path: shown });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| other(&e))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(OpenError::Newer {
            path: shown,
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| other(&e))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| other(&e))?;
    let migrations = Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect());
    migrations.to_latest(&mut conn).map_err(|e| other(&e))?;
    Ok(conn)
}

/// Opens an existing state file for reading only (for `status` and `report`): never creates,
/// migrates or changes it.
pub fn open_read_only(path: &Path) -> Result<Connection, OpenError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(OpenError::Other {
            path: shown,
            reason: "it does not exist (no run has used it yet)".into(),
        });
    }
    check_regular(path)?;
    let other = |e: &dyn std::fmt::Display| OpenError::Other {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| other(&e))?;
    let not_sqlite = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            OpenError::NotSqlite {
                path: shown.clone(),
            }
        }
        e => other(&e),
    };
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(not_sqlite)?;
    if app_id != APPLICATION_ID {
        return Err(OpenError::Foreign { path: shown });
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_sqlite)?;
    if version > MIGRATIONS.len() as i64 {
        return Err(OpenError::Newer {
            path: shown,
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    Ok(conn)
}

/// One run as the runs table holds it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub rows_done: i64,
    pub rows_failed: i64,
    pub api_calls: i64,
    pub retries: i64,
    pub throttles: i64,
}

pub fn load_runs(conn: &Connection) -> rusqlite::Result<Vec<RunRecord>> {
    let mut stmt = conn.prepare(
        "SELECT id, started_at, finished_at, exit_code, rows_done, rows_failed, api_calls, retries, throttles
         FROM runs ORDER BY id",
    )?;
    stmt.query_map([], |r| {
        Ok(RunRecord {
            id: r.get(0)?,
            started_at: r.get(1)?,
            finished_at: r.get(2)?,
            exit_code: r.get(3)?,
            rows_done: r.get(4)?,
            rows_failed: r.get(5)?,
            api_calls: r.get(6)?,
            retries: r.get(7)?,
            throttles: r.get(8)?,
        })
    })?
    .collect()
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The manifest a state file belongs to, recorded at its first run.
pub fn manifest_of(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = 'manifest'", [], |r| {
        r.get(0)
    })
    .optional()
}

pub fn set_manifest(conn: &Connection, manifest: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('manifest', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [manifest],
    )
    .map(drop)
}

/// Why form reuse is off for this state file, if a run turned it off (step 3 or S3 refused an
/// upload made with a reused form while a fresh form's was accepted): later runs of this file get
/// one form per file.
pub fn form_reuse_off(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'form_reuse_off'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Turns form reuse off for every later run of this state file, saying why.
pub fn set_form_reuse_off(conn: &Connection, why: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('form_reuse_off', ?1) ON CONFLICT (key) DO NOTHING",
        [why],
    )
    .map(drop)
}

/// Whether another row of the state file holds a key made from the same form's timestamp as
/// `key` (the same contact and form second, see [`form_prefix`]), i.e. whether the form `key` was
/// made from may have carried another upload. Two forms handed out in the same second look alike
/// here; that only errs on the side of "maybe reused".
pub fn key_shares_form(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
    let Some(prefix) = form_prefix(key) else {
        return Ok(false);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT s3_key FROM rows WHERE s3_key >= ?1 AND s3_key < ?2 AND s3_key != ?3",
    )?;
    let keys = stmt.query_map(
        params![format!("{prefix}0"), format!("{prefix}:"), key],
        |r| r.get::<_, String>(0),
    )?;
    for other in keys {
        if form_prefix(&other?).as_deref() == Some(prefix.as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Digits of the form's second at the head of a key's timestamp part (Unix seconds, until 2286).
const FORM_SECOND_DIGITS: usize = 10;

/// `<contact>/<form second>` of a key the tool made. Today's keys have 19 digits,
/// `<contact>/<10 digits of seconds, or 13 of milliseconds><random digits>/<name>`: the
/// random part's length depends on the unit, which the key does not tell, so a form is known by
/// its second. Keys of earlier versions, `<contact>/<timestamp><12 random digits>/<name>` (22 or
/// 25 digits), open with the form's second too, and are known alike.
fn form_prefix(key: &str) -> Option<String> {
    let (contact, rest) = key.split_once('/')?;
    let (stamp, name) = rest.split_once('/')?;
    let ok = !contact.is_empty()
        && !name.is_empty()
        && [crate::remote::api::KEY_STAMP_DIGITS, 22, 25].contains(&stamp.len())
        && stamp.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| format!("{contact}/{}", &stamp[..FORM_SECOND_DIGITS]))
}

/// Records every row of the manifest before anything is sent: new valid rows as `pending`, new
/// invalid ones as `rejected`; rows already known keep their progress.
pub fn record_rows(conn: &Connection, rows: &[NewRow]) -> rusqlite::Result<()> {
    let now = now();
    let mut insert = conn.prepare_cached(
        "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
                           state, error_kind, last_error, retryable, created_at, updated_at, contact_email,
                           note_group, note_text, note_date, note_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16, ?17, ?18, ?19, ?20)
         ON CONFLICT (row_key) DO UPDATE SET
            line = excluded.line,
            -- As written now (a note_key's text may be edited; the key keeps the row's identity).
            note_text = excluded.note_text,
            note_date = excluded.note_date,
            path = excluded.path,
            -- A row by email takes the contact its email resolved to now, unless its file may
            -- already be on S3 under the old contact's key (a row by id has its id in its key).
            contact_id = CASE WHEN rows.state IN ('pending', 'rejected')
                                   OR (rows.state = 'failed' AND rows.etag IS NULL)
                              THEN excluded.contact_id ELSE rows.contact_id END,
            contact_email = excluded.contact_email,
            -- A row not yet uploaded takes the file as it is now; a failed row that was uploaded
            -- (it has an ETag) keeps the uploaded file's size: its step 3 may have been sent.
            size = CASE WHEN rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL)
                THEN excluded.size ELSE rows.size END,
            mtime_ns = CASE WHEN rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL)
                THEN excluded.mtime_ns ELSE rows.mtime_ns END,
            state = CASE
                WHEN excluded.state = 'rejected' AND rows.state IN ('pending', 'failed', 'rejected') THEN 'rejected'
                WHEN excluded.state = 'pending' AND rows.state = 'rejected' THEN 'pending'
                ELSE rows.state END,
            error_kind = CASE
                WHEN excluded.state = 'rejected' AND rows.state IN ('pending', 'failed', 'rejected') THEN excluded.error_kind
                WHEN excluded.state = 'pending' AND rows.state = 'rejected' THEN NULL
                ELSE rows.error_kind END,
            last_error = CASE
                WHEN excluded.state = 'rejected' AND rows.state IN ('pending', 'failed', 'rejected') THEN excluded.last_error
                WHEN excluded.state = 'pending' AND rows.state = 'rejected' THEN NULL
                ELSE rows.last_error END,
            updated_at = excluded.updated_at
         -- Rows that nothing changes are not written: a rerun of a done manifest writes nothing.
         WHERE rows.line IS NOT excluded.line
            OR rows.path IS NOT excluded.path
            OR rows.contact_email IS NOT excluded.contact_email
            OR rows.note_text IS NOT excluded.note_text
            OR rows.note_date IS NOT excluded.note_date
            OR ((rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL))
                AND rows.contact_id IS NOT excluded.contact_id)
            OR ((rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL))
                AND (rows.size IS NOT excluded.size OR rows.mtime_ns IS NOT excluded.mtime_ns))
            OR (excluded.state = 'rejected' AND rows.state IN ('pending', 'failed'))
            OR (excluded.state = 'rejected' AND rows.state = 'rejected' AND rows.last_error IS NOT excluded.last_error)
            -- A row an earlier version recorded as `invalid` takes its problem's own kind.
            OR (excluded.state = 'rejected' AND rows.state = 'rejected' AND rows.error_kind IS NOT excluded.error_kind)
            OR (excluded.state = 'pending' AND rows.state = 'rejected')",
    )?;
    for r in rows {
        let (state, kind, error, retryable) = match &r.rejected {
            None => ("pending", None, None, None),
            Some(reason) => (
                "rejected",
                Some(r.rejected_kind),
                Some(reason.as_str()),
                Some(false),
            ),
        };
        insert.execute(params![
            r.key,
            r.line as i64,
            r.file,
            r.path.to_string_lossy(),
            r.size as i64,
            r.mtime_ns,
            r.contact_id,
            r.reference_type_text,
            r.reference_id,
            r.name,
            state,
            kind,
            error,
            retryable,
            now,
            r.contact_email,
            r.note.group,
            r.note.text,
            r.note.date,
            r.note.key,
        ])?;
    }
    record_note_groups(conn, rows)?;
    Ok(())
}

/// Records the note group of every valid row that creates a note (`pending`, nothing sent), and
/// gives the rows of groups already created their note's id as `reference_id` (a row added to
/// the manifest later joins its group's note).
///
/// A group's contact is the row's `contact_id`: as the manifest gave it, or, for a row by email,
/// the contact its email resolved to (the lookups run before the rows are recorded). A row by
/// email whose contact is not known is not valid, so its group is not recorded.
fn record_note_groups(conn: &Connection, rows: &[NewRow]) -> rusqlite::Result<()> {
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
        conn.execute(
            "UPDATE rows SET reference_id = (SELECT note_id FROM notes WHERE group_key = rows.note_group)
             WHERE note_group IS NOT NULL AND reference_id = ''
               AND EXISTS (SELECT 1 FROM notes WHERE group_key = rows.note_group AND note_id IS NOT NULL)",
            [],
        )?;
    }
    Ok(())
}

/// A note group's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteState {
    Pending,
    Intent,
    Created,
}

impl NoteState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Intent => "intent",
            Self::Created => "created",
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

/// The state file's schema version (`user_version`).
fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Every note group (none in a state file from before notes).
pub fn load_notes(conn: &Connection) -> rusqlite::Result<Vec<NoteGroup>> {
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
pub fn note_intent(conn: &Connection, group: &str) -> rusqlite::Result<String> {
    let now = now();
    conn.prepare_cached(
        "UPDATE notes SET state = 'intent', intent_at = COALESCE(intent_at, ?2)
         WHERE group_key = ?1 AND state <> 'created'",
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
pub fn note_created(
    conn: &Connection,
    group: &str,
    note_id: &str,
    adopted: bool,
) -> rusqlite::Result<()> {
    let changed = conn.execute(
        "UPDATE notes SET state = 'created', note_id = ?2, created_at = ?3, adopted = ?4
         WHERE group_key = ?1 AND state <> 'created'",
        params![group, note_id, now(), adopted],
    )?;
    if changed != 1 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    conn.execute(
        "UPDATE rows SET reference_id = ?2 WHERE note_group = ?1 AND reference_id = ''",
        params![group, note_id],
    )?;
    Ok(())
}

/// The note ids the groups of this state file hold (a note one of them holds is never adopted
/// by another).
pub fn claimed_notes(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT note_id FROM notes WHERE note_id IS NOT NULL")?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Forgets the rejected rows that the manifest no longer has (`keys` are its rows) and that never
/// reached S3. A row fixed in the manifest can be a new row (a row recorded as written always is,
/// see [`raw_row_key`]); its old rejected self would stay in `status` and the failed report for
/// ever. A rejected row sent nothing, so forgetting it loses nothing.
pub fn forget_stale_rejected(
    conn: &Connection,
    keys: &std::collections::HashSet<&str>,
) -> rusqlite::Result<usize> {
    let stale: Vec<String> = conn
        .prepare("SELECT row_key FROM rows WHERE state = 'rejected' AND s3_key IS NULL")?
        .query_map([], |r| r.get::<_, String>(0))?
        .filter(|k| k.as_ref().map_or(true, |k| !keys.contains(k.as_str())))
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare("DELETE FROM rows WHERE row_key = ?1 AND state = 'rejected'")?;
    for key in &stale {
        delete.execute([key])?;
    }
    Ok(stale.len())
}

const ROW_COLUMNS: &str =
    "row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
     state, s3_key, etag, attachment_id, attempts, error_kind, last_error, retryable,
     note_group, note_text, note_date, note_key";
/// As [`ROW_COLUMNS`], for a state file from before notes (read by `status` and `report`).
const ROW_COLUMNS_BEFORE_NOTES: &str =
    "row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
     state, s3_key, etag, attachment_id, attempts, error_kind, last_error, retryable,
     NULL, NULL, NULL, NULL";

pub(crate) fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    let reference_type_text: String = r.get(7)?;
    let state: String = r.get(10)?;
    let state = RowState::parse(&state).ok_or_else(|| bad(10, "state"))?;
    let reference_type = match ReferenceType::parse(&reference_type_text) {
        Some(t) => t,
        // A raw row with the type as written; it is rejected, so never sent.
        None if state == RowState::Rejected => ReferenceType::Note,
        None => return Err(bad(7, "reference type")),
    };
    Ok(StoredRow {
        key: r.get(0)?,
        line: r.get::<_, i64>(1)? as u64,
        file: r.get(2)?,
        path: PathBuf::from(r.get::<_, String>(3)?),
        size: r.get::<_, i64>(4)? as u64,
        mtime_ns: r.get(5)?,
        contact_id: r.get(6)?,
        contact_email: r.get(22)?,
        reference_type,
        reference_type_text,
        reference_id: r.get(8)?,
        name: r.get(9)?,
        state,
        s3_key: r.get(11)?,
        etag: r.get(12)?,
        attachment_id: r.get(13)?,
        attempts: r.get::<_, i64>(14)? as u32,
        error_kind: r.get(15)?,
        last_error: r.get(16)?,
        retryable: r.get(17)?,
        note: NoteColumns {
            group: r.get(18)?,
            text: r.get(19)?,
            date: r.get(20)?,
            key: r.get(21)?,
        },
    })
}

/// Every row the state file holds, in manifest-line order.
pub fn load_rows(conn: &Connection) -> rusqlite::Result<Vec<StoredRow>> {
    // `status` and `report` read a state file as it is, without migrating it: one of a version
    // before contacts by email has no `contact_email` (all its rows give a contact id), and one
    // from before notes has no note columns (schema 1 has neither, 2 the email, 3 both).
    let has_email: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('rows') WHERE name = 'contact_email'",
        [],
        |r| r.get(0),
    )?;
    let email = if has_email {
        "contact_email"
    } else {
        "'' AS contact_email"
    };
    let columns = match schema_version(conn)? < notes_version() {
        true => ROW_COLUMNS_BEFORE_NOTES,
        false => ROW_COLUMNS,
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {columns}, {email} FROM rows ORDER BY line, row_key"
    ))?;
    stmt.query_map([], stored_row)?.collect()
}

/// A change of one row's state, with what the new state carries.
#[derive(Clone, Debug)]
pub enum Transition {
    /// Step 2 is about to start with this key (a new attempt from step 1).
    Uploading {
        s3_key: String,
    },
    /// Step 2 ended with this ETag. A run now records the ETag with `Attaching` instead; state
    /// files of earlier versions hold rows in this state, and tests set it.
    Uploaded {
        etag: String,
    },
    /// Step 3 is about to be sent; with the upload's ETag when step 2 just ended (one write
    /// for both: the row goes from `uploading` to `attaching` in one transition).
    Attaching {
        etag: Option<String>,
        /// The generation of the record's snapshot this attach is sent after, if one was taken.
        snapshot_gen: Option<i64>,
    },
    Done {
        attachment_id: String,
    },
    Failed {
        kind: FailureKind,
        message: String,
        retryable: bool,
    },
    /// Back to the start (a changed file to upload again).
    Pending,
}

/// Applies a transition. `Uploading` fails with a UNIQUE violation when the key is taken.
pub fn transition(conn: &Connection, key: &str, t: &Transition) -> rusqlite::Result<()> {
    let now = now();
    let changed = match t {
        Transition::Uploading { s3_key } => conn.prepare_cached(
            "UPDATE rows SET state = 'uploading', s3_key = ?2, etag = NULL, attachment_id = NULL,
                 attempts = attempts + 1, updated_at = ?3 WHERE row_key = ?1")?.execute(params![key, s3_key, now])?,
        Transition::Uploaded { etag } => conn.prepare_cached(
            "UPDATE rows SET state = 'uploaded', etag = ?2, updated_at = ?3 WHERE row_key = ?1")?.execute(params![key, etag, now])?,
        Transition::Attaching { etag, snapshot_gen } => conn.prepare_cached(
            "UPDATE rows SET state = 'attaching', etag = COALESCE(?2, etag), snapshot_gen = ?3, updated_at = ?4
             WHERE row_key = ?1")?.execute(params![key, etag, snapshot_gen, now])?,
        Transition::Done { attachment_id } => {
            let changed = conn.prepare_cached(
                "UPDATE rows SET state = 'done', attachment_id = ?2, error_kind = NULL, last_error = NULL,
                     retryable = NULL, updated_at = ?3, done_at = ?3 WHERE row_key = ?1")?.execute(params![key, attachment_id, now])?;
            snapshots::extend(conn, key, attachment_id)?;
            changed
        }
        Transition::Failed { kind, message, retryable } => conn.prepare_cached(
            "UPDATE rows SET state = 'failed', error_kind = ?2, last_error = ?3, retryable = ?4, updated_at = ?5
             WHERE row_key = ?1")?.execute(params![key, kind, message, retryable, now])?,
        Transition::Pending => conn.prepare_cached(
            "UPDATE rows SET state = 'pending', s3_key = NULL, etag = NULL, attachment_id = NULL, error_kind = NULL,
                 last_error = NULL, retryable = NULL, updated_at = ?2 WHERE row_key = ?1")?.execute(params![key, now])?,
    };
    if changed != 1 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(())
}

/// When `key`'s row last changed state (RFC 3339, this machine's clock), if it is recorded.
pub fn updated_at(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT updated_at FROM rows WHERE row_key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Updates the recorded size and modification time of a row about to be uploaded again.
pub fn refresh_file(
    conn: &Connection,
    key: &str,
    size: u64,
    mtime_ns: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE rows SET size = ?2, mtime_ns = ?3 WHERE row_key = ?1",
        params![key, size as i64, mtime_ns],
    )
    .map(drop)
}

/// The attachment ids that `done` rows other than `except` hold on one record for one name and size.
pub fn claimed_attachments(
    conn: &Connection,
    reference_type: ReferenceType,
    reference_id: &str,
    name: &str,
    size: u64,
    except: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attachment_id FROM rows WHERE reference_type = ?1 AND reference_id = ?2 AND name = ?3 AND size = ?4
             AND state = 'done' AND row_key <> ?5 AND attachment_id IS NOT NULL",
    )?;
    stmt.query_map(
        params![
            reference_type.as_str(),
            reference_id,
            name,
            size as i64,
            except
        ],
        |r| r.get(0),
    )?
    .collect()
}

/// The emails resolved in earlier runs (trimmed and lower-cased) and their contacts.
/// (A state file of a version before lookups, read without migrating it, has none: an error.)
pub fn load_lookups(
    conn: &Connection,
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    conn.prepare("SELECT email, contact_id FROM lookups")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Records that `email` (trimmed and lower-cased) resolved to `contact_id`, so that no later run
/// looks it up again. Only a lookup that found exactly one contact is recorded.
pub fn record_lookup(conn: &Connection, email: &str, contact_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO lookups (email, contact_id, looked_up_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (email) DO UPDATE SET contact_id = excluded.contact_id, looked_up_at = excluded.looked_up_at",
    )?
    .execute(params![email, contact_id, now()])
    .map(drop)
}

/// What one run did, for the runs table.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCounts {
    pub rows_done: u64,
    pub rows_failed: u64,
    pub api_calls: u64,
    pub retries: u64,
    pub throttles: u64,
}

pub fn start_run(conn: &Connection) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO runs (started_at, pid) VALUES (?1, ?2)",
        params![now(), std::process::id()],
    )?;
    Ok(conn.last_insert_rowid())
}

pub fn finish_run(
    conn: &Connection,
    id: i64,
    exit_code: i32,
    c: RunCounts,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET finished_at = ?2, exit_code = ?3, rows_done = ?4, rows_failed = ?5, api_calls = ?6,
             retries = ?7, throttles = ?8 WHERE id = ?1",
        params![
            id,
            now(),
            exit_code,
            c.rows_done as i64,
            c.rows_failed as i64,
            c.api_calls as i64,
            c.retries as i64,
            c.throttles as i64
        ],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(n, _)| *n).collect();
        assert_eq!(files, listed);
        assert!(
            Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect())
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn row_keys_depend_on_meaning_only() {
        let a = row_key("a.pdf", "c", ReferenceType::Note, "n", "a.pdf");
        assert_eq!(a, row_key("a.pdf", "c", ReferenceType::Note, "n", "a.pdf"));
        assert_ne!(a, row_key("a.pdf", "c", ReferenceType::Deal, "n", "a.pdf"));
        assert_ne!(a, row_key("a.pdf", "c", ReferenceType::Note, "n", "b.pdf"));
        // Field boundaries count: "ab"+"c" is not "a"+"bc".
        assert_ne!(
            row_key("ab", "c", ReferenceType::Note, "n", "x"),
            row_key("a", "bc", ReferenceType::Note, "n", "x")
        );
    }

    #[test]
    fn escaped_bytes_come_back_and_raw_keys_differ_from_row_keys() {
        for bytes in [
            &b"caf\xE9.pdf"[..],
            b"C:\\x\\a.pdf",
            b"\\xZZ",
            b"\xFF\xFE",
            b"",
        ] {
            assert_eq!(unescape_bytes(&escape_bytes(bytes)), bytes);
        }
        assert_eq!(escape_bytes(b"caf\xE9\\"), "caf\\xE9\\\\");
        let raw = raw_row_key(&[b"a.pdf", b"c", b"task", b"n", b"a.pdf"]);
        assert!(raw.starts_with("raw:"), "{raw}");
        assert!(raw_row_key(&[b"caf\xE9"]).starts_with("rawb:"));
        assert_ne!(raw_row_key(&[b"ab", b"c"]), raw_row_key(&[b"a", b"bc"]));
        assert_eq!(row_key("a", "b", ReferenceType::Note, "c", "d").len(), 32);
    }

    #[test]
    fn rows_by_email_have_keys_of_their_own_and_rows_by_id_keep_theirs() {
        // The key of a row by id is what version 1 made (a state file of then keeps matching).
        assert_eq!(
            row_key("a.pdf", "c", ReferenceType::Note, "n", "a.pdf"),
            "d4bb064c73d4f61646eeab7cf19f93c9"
        );
        let by_email = row_key_by_email("a.pdf", "a@b.example", ReferenceType::Note, "n", "a.pdf");
        assert_ne!(
            by_email,
            row_key("a.pdf", "a@b.example", ReferenceType::Note, "n", "a.pdf")
        );
        assert_eq!(by_email.len(), 32);
    }

    fn new_row(key: &str, rejected: Option<&str>) -> NewRow {
        NewRow {
            key: key.into(),
            line: 2,
            file: "a.pdf".into(),
            path: "/x/a.pdf".into(),
            size: 10,
            mtime_ns: 1,
            contact_id: "c".into(),
            contact_email: String::new(),
            reference_type: ReferenceType::Note,
            reference_type_text: "note".into(),
            reference_id: "n".into(),
            name: "a.pdf".into(),
            rejected: rejected.map(str::to_string),
            rejected_kind: FailureKind::Invalid,
            note: NoteColumns::default(),
        }
    }

    #[test]
    fn keys_share_a_form_when_their_contact_and_timestamp_part_match() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.sqlite")).unwrap();
        record_rows(
            &conn,
            &[
                new_row("k1", None),
                new_row("k2", None),
                new_row("k3", None),
            ],
        )
        .unwrap();
        let key = |k: &str, s3_key: &str| {
            transition(
                &conn,
                k,
                &Transition::Uploading {
                    s3_key: s3_key.into(),
                },
            )
            .unwrap()
        };
        key("k1", "c1/1764496800000000000001/a.pdf");
        key("k2", "c2/1764496800000000000002/a.pdf");
        key("k3", "c1/1764496801000000000003/a.pdf");
        // Alone on its contact's timestamp: another contact's, or another second's, do not count.
        assert!(!key_shares_form(&conn, "c1/1764496800000000000001/a.pdf").unwrap());
        // A key of one more digit's timestamp is not of that form either.
        key("k2", "c1/17644968000000000000021/a.pdf");
        assert!(!key_shares_form(&conn, "c1/1764496800000000000001/a.pdf").unwrap());
        key("k2", "c1/1764496800999999999999/b.pdf");
        assert!(key_shares_form(&conn, "c1/1764496800000000000001/a.pdf").unwrap());
        assert!(key_shares_form(&conn, "c1/1764496800123456789012/z.pdf").unwrap());
        // Today's keys (19 digits, after seconds or milliseconds) are told by the form's second,
        // and keys of earlier versions of that second count.
        assert!(key_shares_form(&conn, "c1/1764496800123456789/n.pdf").unwrap());
        assert!(key_shares_form(&conn, "c1/1764496800123123456/m.pdf").unwrap());
        assert!(!key_shares_form(&conn, "c1/1764496802123456789/n.pdf").unwrap());
        key("k3", "c1/1764496803000000001/a.pdf");
        assert!(key_shares_form(&conn, "c1/1764496803999999999/b.pdf").unwrap());
        assert!(!key_shares_form(&conn, "c1/1764496803000000001/a.pdf").unwrap());
        // Keys not of the tool's shape share nothing.
        for odd in [
            "c1/1/a.pdf",
            "c1/x764496800000000000001/a.pdf",
            "nothing",
            "c1//a",
        ] {
            assert!(!key_shares_form(&conn, odd).unwrap(), "{odd}");
        }
    }

    #[test]
    fn recording_again_keeps_progress_and_revives_fixed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.sqlite")).unwrap();
        record_rows(
            &conn,
            &[new_row("k1", None), new_row("k2", Some("file missing"))],
        )
        .unwrap();
        transition(
            &conn,
            "k1",
            &Transition::Uploading {
                s3_key: "c/1/a.pdf".into(),
            },
        )
        .unwrap();
        record_rows(&conn, &[new_row("k1", None), new_row("k2", None)]).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!(rows[0].state, RowState::Uploading);
        assert_eq!(rows[0].s3_key.as_deref(), Some("c/1/a.pdf"));
        assert_eq!(rows[1].state, RowState::Pending);
        assert_eq!(rows[1].last_error, None);
        // A key can be held by one row only.
        let err = transition(
            &conn,
            "k2",
            &Transition::Uploading {
                s3_key: "c/1/a.pdf".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
    }

    #[test]
    fn a_state_file_of_schema_1_is_read_as_it_is_and_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(MIGRATIONS[0].1).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        record_rows_v1(&old);
        drop(old);
        // `status` and `report` read it without migrating it: its rows are rows by id.
        let read = open_read_only(&path).unwrap();
        let rows = load_rows(&read).unwrap();
        assert_eq!(
            (rows[0].contact_id.as_str(), rows[0].contact_email.as_str()),
            ("c", "")
        );
        assert!(load_lookups(&read).is_err());
        drop(read);
        // A run's open migrates it; the row keeps its key and progress.
        let conn = open(&path).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!(
            (rows[0].key.as_str(), rows[0].state),
            ("k1", RowState::Done)
        );
        record_lookup(&conn, "a@b.example", "c").unwrap();
        assert_eq!(load_lookups(&conn).unwrap()["a@b.example"], "c");
    }

    /// A done row as version 1 recorded it.
    fn record_rows_v1(conn: &Connection) {
        conn.execute(
            "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                 reference_id, name, state, created_at, updated_at)
             VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 1, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't')",
            [],
        )
        .unwrap();
    }

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
    fn a_state_file_from_before_notes_is_read_as_it_is_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(MIGRATIONS[0].1)])
                .to_latest(&mut conn)
                .unwrap();
            record_rows_before_notes(&conn);
        }
        // `status` and `report` read it unchanged.
        let rows = load_rows(&open_read_only(&path).unwrap()).unwrap();
        assert_eq!(
            (rows[0].state, rows[0].note.is_empty()),
            (RowState::Done, true)
        );
        assert!(
            load_notes(&open_read_only(&path).unwrap())
                .unwrap()
                .is_empty()
        );
        // `run` migrates it; the done row keeps its key and state.
        let conn = open(&path).unwrap();
        record_rows(&conn, &[new_row("k1", None)]).unwrap();
        let rows = load_rows(&conn).unwrap();
        assert_eq!((rows.len(), rows[0].state), (1, RowState::Done));
    }

    fn record_rows_before_notes(conn: &Connection) {
        conn.execute(
            "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id,
                 name, state, created_at, updated_at)
             VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 10, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't')",
            [],
        )
        .unwrap();
    }

    #[test]
    fn a_state_file_of_schema_2_is_read_as_it_is_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(MIGRATIONS[0].1), M::up(MIGRATIONS[1].1)])
                .to_latest(&mut conn)
                .unwrap();
            conn.execute(
                "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type,
                     reference_id, name, state, created_at, updated_at, contact_email)
                 VALUES ('k1', 2, 'a.pdf', '/x/a.pdf', 10, 1, 'c', 'note', 'n', 'a.pdf', 'done', 't', 't',
                     'Ada@X.example')",
                [],
            )
            .unwrap();
            record_lookup(&conn, "ada@x.example", "c").unwrap();
        }
        // `status` and `report` read it unchanged: its row by email, no notes.
        let read = open_read_only(&path).unwrap();
        let rows = load_rows(&read).unwrap();
        assert_eq!(
            (
                rows[0].contact_email.as_str(),
                rows[0].state,
                rows[0].note.is_empty()
            ),
            ("Ada@X.example", RowState::Done, true)
        );
        assert!(load_notes(&read).unwrap().is_empty());
        drop(read);
        // `run` migrates it: the row keeps its key, state and email, the lookup stays.
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len() as i64);
        let rows = load_rows(&conn).unwrap();
        assert_eq!(
            (
                rows[0].key.as_str(),
                rows[0].state,
                rows[0].contact_email.as_str()
            ),
            ("k1", RowState::Done, "Ada@X.example")
        );
        assert_eq!(load_lookups(&conn).unwrap()["ada@x.example"], "c");
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

    #[test]
    fn note_rows_have_keys_of_their_own_and_old_keys_stay() {
        // The key of a row by reference_id is what it was before notes existed.
        assert_eq!(
            row_key("a.pdf", "c", ReferenceType::Note, "n", "a.pdf"),
            "d4bb064c73d4f61646eeab7cf19f93c9"
        );
        let a = note_row_key("a.pdf", "c", "g1", "a.pdf");
        assert_ne!(a, note_row_key("a.pdf", "c", "g2", "a.pdf"));
        assert_ne!(a, row_key("a.pdf", "c", ReferenceType::Note, "g1", "a.pdf"));
        assert_ne!(a, row_key("a.pdf", "c", ReferenceType::Note, "", "a.pdf"));
    }

    #[test]
    fn rows_by_email_that_create_notes_have_keys_of_their_own() {
        let group = crate::manifest::note_group_by_email("a@b.example", "t", None, None);
        assert_ne!(
            group,
            crate::manifest::note_group("a@b.example", "t", None, None)
        );
        let a = note_row_key_by_email("a.pdf", "a@b.example", &group, "a.pdf");
        assert_ne!(a, note_row_key("a.pdf", "a@b.example", &group, "a.pdf"));
        assert_ne!(
            a,
            row_key_by_email("a.pdf", "a@b.example", ReferenceType::Note, "", "a.pdf")
        );
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn foreign_newer_and_non_sqlite_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("other.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE x (y)")
            .unwrap();
        assert!(matches!(open(&foreign), Err(OpenError::Foreign { .. })));

        let text = dir.path().join("notes.txt");
        let words = "just some text, long enough not to be mistaken for a database header";
        std::fs::write(&text, words).unwrap();
        assert!(matches!(open(&text), Err(OpenError::NotSqlite { .. })));
        assert_eq!(std::fs::read_to_string(&text).unwrap(), words);
        assert!(!dir.path().join("notes.txt-wal").exists());

        let newer = dir.path().join("newer.sqlite");
        drop(open(&newer).unwrap());
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            open(&newer),
            Err(OpenError::Newer { found: 99, .. })
        ));
    }

    #[test]
    fn an_existing_empty_state_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.sqlite");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(open(&empty), Err(OpenError::NotOurs { .. })));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["empty.sqlite"]);

        // A SQLite file with nothing in it (a header, no tables) is not ours either.
        let bare = dir.path().join("bare.sqlite");
        Connection::open(&bare)
            .unwrap()
            .pragma_update(None, "user_version", 0)
            .unwrap();
        Connection::open(&bare)
            .unwrap()
            .execute_batch("VACUUM")
            .unwrap();
        assert!(open(&bare).is_err());

        // A path that does not exist is created, and opens again as ours.
        let new = dir.path().join("new.sqlite");
        drop(open(&new).unwrap());
        drop(open(&new).unwrap());
    }
}
