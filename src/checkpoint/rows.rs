//! The rows: one per manifest row, keyed by what it means, with its place in the three steps.
//! A row's types ([`NewRow`] to record, [`StoredRow`] as recorded, [`RowState`], the
//! [`Transition`]s); recording a manifest's rows, loading them all (`status`, `report`, a dry
//! run: a run reads its own back in batches, see [`this_run`](super::this_run)), and the
//! transitions the pipeline commits before (and after) each side effect; what a lost answer's
//! check reads (the attachments other rows claim, whether a key's form carried another upload).
//!
//! The functions over a connection run on the writer thread (see [`writer`](super::writer)) or,
//! for reading, on a read-only connection ([`StateReader`]); callers use the methods of
//! [`StateFile`] and `StateReader` below: from async code (the pipeline) awaited, from setup code
//! waited for.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::keys::{
    LinkRecord, RAW_BYTES, email_field, escape_bytes, is_raw_key, link_fields, link_row_key,
    note_row_key, note_row_key_by_email, raw_row_key, row_key, row_key_by_email, unescape_bytes,
};
use super::open::{notes_version, schema_version};
use super::{Pending, StateFile, StateReader, now};
use crate::failure::FailureKind;
use crate::manifest::{Row, Unparsed};
use crate::onepagecrm::{LinkType, ReferenceType};

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
    /// `undo` committed its intent to delete the row's attachment (by the id recorded): the
    /// delete may have been sent.
    Removing,
    /// `undo` deleted the row's attachment (or found it gone).
    Removed,
}

impl RowState {
    pub const ALL: [RowState; 9] = [
        Self::Pending,
        Self::Uploading,
        Self::Uploaded,
        Self::Attaching,
        Self::Done,
        Self::Failed,
        Self::Rejected,
        Self::Removing,
        Self::Removed,
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
            Self::Removing => "removing",
            Self::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Where the pin of a row's attachment stands (`pin_state`; `None`: nothing sent). The row's own
/// state stays `done` whatever becomes of its pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    /// The intent, committed before `PATCH /attachments/{id}/pin`: it may have been sent, and
    /// its outcome is unknown until recorded.
    Pinning,
    Pinned,
    /// The API kept failing (a retryable failure): a rerun tries again.
    Failed,
    /// The API refused the pin (a 4xx): only `--retry-failed` tries again.
    Refused,
}

impl PinState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinning => "pinning",
            Self::Pinned => "pinned",
            Self::Failed => "failed",
            Self::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pinning, Self::Pinned, Self::Failed, Self::Refused]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// A row as the state file holds it.
#[derive(Clone, Debug)]
pub struct StoredRow {
    /// Its id in the state file (its rowid), by which its transitions find it; 0 for a row not
    /// recorded yet (a dry run's plan).
    pub id: i64,
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
    /// Whether the manifest asks for its attachment to be pinned to its contact.
    pub pin: bool,
    /// Where that pin stands; `pin_error` says why it failed.
    pub pin_state: Option<PinState>,
    pub pin_error: Option<String>,
    /// The row's link columns, when it gives either (see [`StoredRow::is_link`]).
    pub link: Option<LinkColumns>,
}

/// A row's link columns: the URL and type of the link it attaches instead of a file (as written
/// for a rejected row, the type as the API names it for a valid one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkColumns {
    pub url: String,
    pub link_type: String,
    /// Its attach was (or may have been) sent: it was recorded as under way after a snapshot of
    /// its record (`snapshot_gen` is set). Read from the state file; false for a row to record.
    pub sent: bool,
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
    /// A failed row whose attach may have taken effect: uploaded (an ETag is recorded), or a
    /// link whose attach was sent, then failed in a way that leaves step 3's outcome open
    /// (retryable, or unsettled). Only a rerun of its own state file settles it.
    pub fn may_be_attached(&self) -> bool {
        self.state == RowState::Failed
            && (self.etag.is_some() || self.link_sent())
            && (self.retryable == Some(true)
                || self.error_kind == Some(FailureKind::AttachUnsettled))
    }

    /// A done row whose attachment is still to be pinned (the manifest asks for a pin that is
    /// not recorded as made).
    pub fn pin_owed(&self) -> bool {
        self.state == RowState::Done && self.pin && self.pin_state != Some(PinState::Pinned)
    }

    /// Whether the row attaches a link (its `link_url` is given) instead of a file.
    pub fn is_link(&self) -> bool {
        self.link.as_ref().is_some_and(|l| !l.url.is_empty())
    }

    /// The link a valid link row attaches: its URL and type.
    pub fn link_of(&self) -> Option<(&str, LinkType)> {
        let link = self.link.as_ref().filter(|l| !l.url.is_empty())?;
        Some((&link.url, LinkType::parse(&link.link_type)?))
    }

    /// A link row whose attach was (or may have been) sent (see [`LinkColumns::sent`]).
    pub fn link_sent(&self) -> bool {
        self.is_link() && self.link.as_ref().is_some_and(|l| l.sent)
    }

    /// What the row attaches, for a person: its file as written, or its link's URL.
    pub fn shown_file(&self) -> &str {
        match &self.link {
            Some(link) if !link.url.is_empty() => &link.url,
            _ => &self.file,
        }
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
    /// The manifest's `pin` (see [`StoredRow::pin`]).
    pub pin: bool,
    pub link: Option<LinkColumns>,
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
            id: 0,
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
            pin: n.pin,
            pin_state: None,
            pin_error: None,
            link: n.link.clone(),
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
        let link = row.link.as_ref().map(|l| LinkColumns {
            url: l.url.clone(),
            link_type: l.type_text().to_string(),
            sent: false,
        });
        Self {
            key: key_of(row),
            line: row.line,
            file: row.file.clone(),
            // A link has no file (the manifest's folder is no row's file).
            path: match row.link() {
                Some(_) => PathBuf::new(),
                None => path,
            },
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
            pin: row.pin,
            link,
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
        // So do the link columns (tagged: see `link_fields`).
        let [link_url, link_type] = &u.link_fields;
        let link = link_fields(link_url, link_type);
        all.extend(link.iter().flatten().map(Vec::as_slice));
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
            link: (!link_url.is_empty() || !link_type.is_empty()).then(|| LinkColumns {
                url: text(link_url),
                link_type: text(link_type),
                sent: false,
            }),
            key,
            note,
            // As written, so that the failed report gives it back (a value that is none is
            // lost: its row's message names it).
            pin: crate::manifest::pin_value(&u.pin) == Some(true),
        }
    }
}

/// A row's key (see `keys`): by its file or its link, its contact (by id or by email), its record
/// (by id, or the note its group creates), its name; or, with an unknown reference type, as
/// written.
fn key_of(row: &Row) -> String {
    let email = row
        .by_email()
        .then(|| crate::manifest::email_key(&row.contact_email));
    let contact = email.as_deref().unwrap_or(&row.contact_id);
    match (row.reference_type, &row.note, row.link()) {
        (Some(t), note, Some(link)) => {
            let record = match note {
                Some(note) => LinkRecord::NoteGroup(&note.group),
                None => LinkRecord::Reference(t, &row.reference_id),
            };
            let link = (link.url.as_str(), link.type_text());
            link_row_key(link, contact, email.is_some(), record, &row.name)
        }
        (Some(_), Some(note), None) => match &email {
            Some(email) => note_row_key_by_email(&row.file, email, &note.group, &row.name),
            None => note_row_key(&row.file, &row.contact_id, &note.group, &row.name),
        },
        (Some(t), None, None) => match &email {
            Some(email) => row_key_by_email(&row.file, email, t, &row.reference_id, &row.name),
            None => row_key(&row.file, &row.contact_id, t, &row.reference_id, &row.name),
        },
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
            let link = row
                .link
                .as_ref()
                .and_then(|l| link_fields(l.url.as_bytes(), l.link_type_text.as_bytes()));
            fields.extend(link.iter().flatten().map(Vec::as_slice));
            raw_row_key(&fields)
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
            pin: false,
            link: None,
        }
    }
}

/// Whether another row of the state file holds a key made from the same form's timestamp as
/// `key` (the same contact and form second, see [`form_prefix`]), i.e. whether the form `key` was
/// made from may have carried another upload. Two forms handed out in the same second look alike
/// here; that only errs on the side of "maybe reused".
pub(super) fn key_shares_form(conn: &Connection, key: &str) -> rusqlite::Result<bool> {
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

/// The upsert of one manifest row (see [`record_rows`]): a new row is inserted; a row known
/// before keeps its progress, and takes what the manifest says now where that cannot undo what was
/// sent.
const RECORD_ROW: &str = "INSERT INTO rows (row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
                           state, error_kind, last_error, retryable, created_at, updated_at, contact_email,
                           note_group, note_text, note_date, note_key, pin, link_url, link_type)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16, ?17, ?18, ?19, ?20,
                 ?21, ?22, ?23)
         ON CONFLICT (row_key) DO UPDATE SET
            line = excluded.line,
            -- As written now: `pin` is not part of the row's identity (a pin added to a done
            -- row is made by this run; one taken away unpins nothing).
            pin = excluded.pin,
            -- As written now (a link row's are part of its key; a rejected row's may change).
            link_url = excluded.link_url,
            link_type = excluded.link_type,
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
            OR rows.pin IS NOT excluded.pin
            OR rows.path IS NOT excluded.path
            OR rows.contact_email IS NOT excluded.contact_email
            OR rows.note_text IS NOT excluded.note_text
            OR rows.note_date IS NOT excluded.note_date
            OR rows.link_url IS NOT excluded.link_url
            OR rows.link_type IS NOT excluded.link_type
            OR ((rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL))
                AND rows.contact_id IS NOT excluded.contact_id)
            OR ((rows.state IN ('pending', 'rejected') OR (rows.state = 'failed' AND rows.etag IS NULL))
                AND (rows.size IS NOT excluded.size OR rows.mtime_ns IS NOT excluded.mtime_ns))
            OR (excluded.state = 'rejected' AND rows.state IN ('pending', 'failed'))
            OR (excluded.state = 'rejected' AND rows.state = 'rejected' AND rows.last_error IS NOT excluded.last_error)
            -- A row an earlier version recorded as `invalid` takes its problem's own kind.
            OR (excluded.state = 'rejected' AND rows.state = 'rejected' AND rows.error_kind IS NOT excluded.error_kind)
            OR (excluded.state = 'pending' AND rows.state = 'rejected')";

/// Records every row of the manifest before anything is sent: new valid rows as `pending`, new
/// invalid ones as `rejected`; rows already known keep their progress.
pub(super) fn record_rows(conn: &Connection, rows: &[NewRow]) -> rusqlite::Result<()> {
    let now = now();
    let mut insert = conn.prepare_cached(RECORD_ROW)?;
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
            r.pin,
            r.link.as_ref().map(|l| &l.url),
            r.link.as_ref().map(|l| &l.link_type),
        ])?;
    }
    super::notes::record_note_groups(conn, rows)?;
    Ok(())
}

pub(super) const ROW_COLUMNS: &str =
    "row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
     state, s3_key, etag, attachment_id, attempts, error_kind, last_error, retryable,
     note_group, note_text, note_date, note_key";
/// A row's link columns, and whether its attach was sent (see [`LinkColumns::sent`]): read after
/// its contact email and id (see [`stored_row`]).
pub(super) const LINK_COLUMNS: &str = "link_url, link_type, snapshot_gen IS NOT NULL";
/// As [`LINK_COLUMNS`], for a state file from before links (read by `status` and `report`).
const LINK_COLUMNS_BEFORE_LINKS: &str = "NULL, NULL, 0";
/// As [`ROW_COLUMNS`], for a state file from before notes (read by `status` and `report`).
const ROW_COLUMNS_BEFORE_NOTES: &str =
    "row_key, line, file, path, size, mtime_ns, contact_id, reference_type, reference_id, name,
     state, s3_key, etag, attachment_id, attempts, error_kind, last_error, retryable,
     NULL, NULL, NULL, NULL";

/// The pin columns, read after the row's id (see [`stored_row`]).
pub(super) const PIN_COLUMNS: &str = "pin, pin_state, pin_error";

/// A row as [`load_rows`] selects it: [`ROW_COLUMNS`], `contact_email` (22), the row's id (23),
/// then [`PIN_COLUMNS`] (24 to 26) and [`LINK_COLUMNS`] (27 to 29).
pub(super) fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
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
        id: r.get(23)?,
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
        pin: r.get(24)?,
        pin_state: match r.get::<_, Option<String>>(25)? {
            Some(s) => Some(PinState::parse(&s).ok_or_else(|| bad(25, "pin state"))?),
            None => None,
        },
        pin_error: r.get(26)?,
        link: stored_link(r)?,
    })
}

/// A row's link columns (27 to 29, after the pin's: see [`LINK_COLUMNS`]), when either is given.
fn stored_link(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<LinkColumns>> {
    let (url, link_type): (Option<String>, Option<String>) = (r.get(27)?, r.get(28)?);
    if url.is_none() && link_type.is_none() {
        return Ok(None);
    }
    Ok(Some(LinkColumns {
        url: url.unwrap_or_default(),
        link_type: link_type.unwrap_or_default(),
        sent: r.get(29)?,
    }))
}

/// Every row the state file holds, in manifest-line order.
pub(super) fn load_rows(conn: &Connection) -> rusqlite::Result<Vec<StoredRow>> {
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
    // One from before pins (schema 6 or less) has no pin columns: no row of it is pinned.
    let has_pin: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('rows') WHERE name = 'pin'",
        [],
        |r| r.get(0),
    )?;
    let pins = match has_pin {
        true => PIN_COLUMNS,
        false => "0, NULL, NULL",
    };
    let has_links: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('rows') WHERE name = 'link_url'",
        [],
        |r| r.get(0),
    )?;
    let links = match has_links {
        true => LINK_COLUMNS,
        false => LINK_COLUMNS_BEFORE_LINKS,
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {columns}, {email}, rowid, {pins}, {links} FROM rows ORDER BY line, row_key"
    ))?;
    stmt.query_map([], stored_row)?.collect()
}

/// A change of one row's state, with what the new state carries.
#[derive(Clone, Debug)]
pub enum Transition {
    /// Step 2 is about to start with this key (a new attempt from step 1).
    Uploading { s3_key: String },
    /// Step 2 ended with this ETag. A run now records the ETag with `Attaching` instead; state
    /// files of earlier versions hold rows in this state, and tests set it.
    Uploaded { etag: String },
    /// Step 3 is about to be sent; with the upload's ETag when step 2 just ended (one write
    /// for both: the row goes from `uploading` to `attaching` in one transition).
    Attaching {
        etag: Option<String>,
        /// The generation of the record's snapshot this attach is sent after, if one was taken.
        snapshot_gen: Option<i64>,
    },
    /// Attached as `attachment_id`; `pinning`: with the intent to pin it, committed in the same
    /// write when the pin follows at once (a row whose manifest asks for one).
    Done {
        attachment_id: String,
        pinning: bool,
    },
    Failed {
        kind: FailureKind,
        message: String,
        retryable: bool,
    },
    /// Back to the start (a changed file to upload again).
    Pending,
    /// A done row's pin is about to be sent (`PATCH /attachments/{id}/pin`).
    Pinning,
    /// A done row's attachment is pinned (the PATCH answered, or the contact's pinned
    /// attachments list it).
    Pinned,
    /// A done row's pin failed: the row stays done with its attachment.
    PinFailed { message: String, retryable: bool },
}

/// Applies a transition to the row of id `id`. `Uploading` fails with a UNIQUE violation when the
/// key is taken.
#[cfg(test)]
pub(super) fn transition(conn: &Connection, id: i64, t: &Transition) -> rusqlite::Result<()> {
    transition_of(conn, id, t, None)
}

/// [`transition`]; an `Uploading` one records `file` too (its size and modification time): the
/// file as it is when its upload starts, with the key made for it, in one write. (A file changed
/// since it was uploaded and sent again with `--reupload-changed` is recorded as changed until
/// then, so that a run stopped first leaves the change for the next.)
fn transition_of(
    conn: &Connection,
    id: i64,
    t: &Transition,
    file: Option<(u64, i64)>,
) -> rusqlite::Result<()> {
    let now = now();
    let (size, mtime_ns) = (file.map(|f| f.0 as i64), file.map(|f| f.1));
    let changed = match t {
        Transition::Uploading { s3_key } => conn.prepare_cached(
            "UPDATE rows SET state = 'uploading', s3_key = ?2, etag = NULL, attachment_id = NULL,
                 pin_state = NULL, pin_error = NULL,
                 attempts = attempts + 1, updated_at = ?3, size = COALESCE(?4, size),
                 mtime_ns = COALESCE(?5, mtime_ns)
             WHERE id = ?1")?.execute(params![id, s3_key, now, size, mtime_ns])?,
        Transition::Uploaded { etag } => conn.prepare_cached(
            "UPDATE rows SET state = 'uploaded', etag = ?2, updated_at = ?3 WHERE id = ?1")?.execute(params![id, etag, now])?,
        Transition::Attaching { etag, snapshot_gen } => conn.prepare_cached(
            "UPDATE rows SET state = 'attaching', etag = COALESCE(?2, etag), snapshot_gen = ?3, updated_at = ?4
             WHERE id = ?1")?.execute(params![id, etag, snapshot_gen, now])?,
        Transition::Done { attachment_id, pinning } => {
            let pin_state = pinning.then_some(PinState::Pinning.as_str());
            let changed = conn.prepare_cached(
                "UPDATE rows SET state = 'done', attachment_id = ?2, error_kind = NULL, last_error = NULL,
                     retryable = NULL, updated_at = ?3, done_at = ?3, pin_state = ?4, pin_error = NULL
                 WHERE id = ?1")?.execute(params![id, attachment_id, now, pin_state])?;
            super::snapshots::extend(conn, id, attachment_id)?;
            changed
        }
        Transition::Failed { kind, message, retryable } => conn.prepare_cached(
            "UPDATE rows SET state = 'failed', error_kind = ?2, last_error = ?3, retryable = ?4, updated_at = ?5
             WHERE id = ?1")?.execute(params![id, kind, message, retryable, now])?,
        Transition::Pending => conn.prepare_cached(
            "UPDATE rows SET state = 'pending', s3_key = NULL, etag = NULL, attachment_id = NULL, error_kind = NULL,
                 last_error = NULL, retryable = NULL, pin_state = NULL, pin_error = NULL, updated_at = ?2
             WHERE id = ?1")?.execute(params![id, now])?,
        // A pin changes the pin's columns alone: the row stays `done` (and `updated_at`, which
        // says when its attach was last under way, stays).
        Transition::Pinning | Transition::Pinned | Transition::PinFailed { .. } => {
            let (state, error) = match t {
                Transition::Pinning => (PinState::Pinning, None),
                Transition::PinFailed { message, retryable: true } => (PinState::Failed, Some(message)),
                Transition::PinFailed { message, retryable: false } => (PinState::Refused, Some(message)),
                _ => (PinState::Pinned, None),
            };
            conn.prepare_cached(
                "UPDATE rows SET pin_state = ?2, pin_error = ?3 WHERE id = ?1 AND state = 'done'")?
                .execute(params![id, state.as_str(), error])?
        }
    };
    if changed != 1 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    Ok(())
}

/// When the row of id `id` last changed state (RFC 3339, this machine's clock), if it is
/// recorded.
pub(super) fn updated_at(conn: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT updated_at FROM rows WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
}

/// The attachment ids that `done` rows other than the one of id `except` hold on one record for
/// one name and size (`None`: of any size, as a link's lost answer is checked).
pub(super) fn claimed_attachments(
    conn: &Connection,
    reference_type: ReferenceType,
    reference_id: &str,
    name: &str,
    size: Option<u64>,
    except: i64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT attachment_id FROM rows WHERE reference_type = ?1 AND reference_id = ?2 AND name = ?3
             AND (?4 IS NULL OR size = ?4)
             AND state = 'done' AND id <> ?5 AND attachment_id IS NOT NULL",
    )?;
    stmt.query_map(
        params![
            reference_type.as_str(),
            reference_id,
            name,
            size.map(|s| s as i64),
            except
        ],
        |r| r.get(0),
    )?
    .collect()
}

impl StateFile {
    /// Records `rows` (see [`record_rows`]); all or nothing.
    pub fn record_rows(&self, rows: Vec<NewRow>) -> Pending<()> {
        self.send(true, move |c| record_rows(c, &rows))
    }

    /// Every row, in manifest-line order.
    pub fn load_rows(&self) -> Pending<Vec<StoredRow>> {
        self.send(false, load_rows)
    }

    /// Applies a transition to `row`. `Uploading` fails with a UNIQUE violation when the key
    /// is taken, and records `row`'s file as it is now (see [`transition_of`]).
    pub fn transition(&self, row: &StoredRow, t: Transition) -> Pending<()> {
        let (id, file) = (row.id, (row.size, row.mtime_ns));
        self.send(false, move |c| transition_of(c, id, &t, Some(file)))
    }

    /// When `row` last changed state (RFC 3339, this machine's clock), if it is recorded.
    pub fn updated_at(&self, row: &StoredRow) -> Pending<Option<String>> {
        let id = row.id;
        self.send(false, move |c| updated_at(c, id))
    }

    /// Whether another row holds a key made from the same form as `key` (see
    /// [`key_shares_form`]).
    pub fn key_shares_form(&self, key: &str) -> Pending<bool> {
        let key = key.to_string();
        self.send(false, move |c| key_shares_form(c, &key))
    }

    /// What a lost attach answer of `row` is checked against: the attachments other `done` rows
    /// hold on its record with its name and size (of any size, for a link), and what the record
    /// held in the snapshot its attach was sent after (`None` when it was sent after none).
    pub fn claimed_and_held(
        &self,
        row: &StoredRow,
    ) -> Pending<(Vec<String>, Option<HashSet<String>>)> {
        let (rt, rid, name, size, id) = (
            row.reference_type,
            row.reference_id.clone(),
            row.name.clone(),
            (!row.is_link()).then_some(row.size),
            row.id,
        );
        self.send(false, move |c| {
            let held = match super::snapshots::row_generation(c, id)? {
                Some(g) => Some(super::snapshots::held(c, rt, &rid, g)?),
                None => None,
            };
            Ok((claimed_attachments(c, rt, &rid, &name, size, id)?, held))
        })
    }
}

impl StateReader {
    /// Every row, in manifest-line order (a state file of any schema, as it is).
    pub fn load_rows(&self) -> rusqlite::Result<Vec<StoredRow>> {
        load_rows(&self.conn)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::checkpoint::open::open;

    /// The id of the row of key `key`.
    pub(crate) fn id_of(conn: &Connection, key: &str) -> i64 {
        conn.query_row("SELECT id FROM rows WHERE row_key = ?1", [key], |r| {
            r.get(0)
        })
        .unwrap()
    }

    pub(crate) fn new_row(key: &str, rejected: Option<&str>) -> NewRow {
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
            pin: false,
            link: None,
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
                id_of(&conn, k),
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
    fn a_link_row_is_recorded_with_its_link_and_known_as_sent_once_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.sqlite")).unwrap();
        let id = "5a1b2c3d4e5f60718293a4b5";
        let manifest = dir.path().join("m.csv");
        std::fs::write(
            &manifest,
            format!(
                "file,contact_id,reference_id,link_url,link_type\n\
                 ,{id},{id},https://www.dropbox.com/s/x/a.pdf,Dropbox\n\
                 a.pdf,{id},{id},,\n"
            ),
        )
        .unwrap();
        let m = crate::manifest::read(&manifest, Default::default());
        let new: Vec<NewRow> = m
            .rows
            .iter()
            .map(|r| NewRow::from_row(r, m.path_of(r), 0, 0, None))
            .collect();
        // A link has no file: no path (the manifest's folder is no row's file).
        assert_eq!(new[0].path, PathBuf::new());
        assert_eq!(new[0].link.as_ref().unwrap().link_type, "dropbox");
        assert_ne!(new[0].key, new[1].key);
        record_rows(&conn, &new).unwrap();
        let rows = load_rows(&conn).unwrap();
        let (link, file) = (&rows[0], &rows[1]);
        assert!(link.is_link() && !file.is_link() && file.link.is_none());
        assert_eq!(
            link.link_of(),
            Some(("https://www.dropbox.com/s/x/a.pdf", LinkType::Dropbox))
        );
        assert_eq!(link.shown_file(), "https://www.dropbox.com/s/x/a.pdf");
        assert!(!link.link_sent());
        // Under way after a snapshot: sent, also once it failed.
        let attaching = Transition::Attaching {
            etag: None,
            snapshot_gen: Some(1),
        };
        transition(&conn, link.id, &attaching).unwrap();
        let failed = Transition::Failed {
            kind: FailureKind::Network,
            message: "lost".into(),
            retryable: true,
        };
        transition(&conn, link.id, &failed).unwrap();
        let link = &load_rows(&conn).unwrap()[0];
        assert!(link.link_sent() && link.may_be_attached());
        assert_eq!((link.s3_key.as_deref(), link.etag.as_deref()), (None, None));
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
            id_of(&conn, "k1"),
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
            id_of(&conn, "k2"),
            &Transition::Uploading {
                s3_key: "c/1/a.pdf".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
    }
}
