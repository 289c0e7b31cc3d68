//! One record as a [`Row`]: each field decoded and checked, every problem with its column; a
//! record that cannot be a row kept as written (`unparsed`); and the rules of an email address
//! ([`check_email`], and [`email_key`], the form lookups and row keys use).

use std::path::Path;

use super::notes::note_spec;
use super::{
    LINK_COLUMNS, LinkSpec, MAX_EMAIL_BYTES, MAX_NAME_BYTES, NOTE_COLUMNS, Problem, ProblemKind,
    RECORD_COLUMNS, Row, Unparsed, shown,
};
use crate::onepagecrm::{LinkType, ReferenceType, is_object_id};

/// One record as a row, with every problem of every field at once, each with its column.
///
/// The rules of a row, in the order their problems are told: the fields decoded
/// (`text_fields`), the required ones given, the contact, the ids' format, the reference type,
/// the note columns (`note_spec`), the link columns (`link_spec`), the path and the attachment's
/// name.
pub(super) fn parse_row(
    record: &csv::ByteRecord,
    columns: &[Option<&'static str>],
    line: u64,
    problems: &mut Vec<Problem>,
) -> Option<Row> {
    let Fields {
        file,
        contact_id,
        contact_email,
        reference_type,
        reference_id,
        name,
        note,
        pin,
        link,
    } = text_fields(record, columns, line, problems)?;
    let has_note_column = columns.contains(&Some("note_text"));
    let has_note_text = note[0].is_some();
    let link = link_spec(&file, link, line, problems);
    let is_link = link.as_ref().is_some_and(|l| !l.url.is_empty());
    check_required(
        (&file, is_link, columns.contains(&Some("link_url"))),
        &reference_id,
        (has_note_column, has_note_text),
        line,
        problems,
    );
    check_contact(&contact_id, &contact_email, columns, line, problems);
    check_id_formats(&contact_id, &reference_id, line, problems);
    let (reference_type, unknown_reference_type) =
        reference_type_of(reference_type.as_deref(), line, problems);
    let note = note_spec(
        line,
        (&contact_id, &contact_email),
        &reference_id,
        reference_type,
        note,
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
    let name = match link.as_ref().filter(|_| is_link) {
        Some(link) => link_attachment_name(&link.url, name, line, problems),
        None => attachment_name(&file, name, line, problems),
    };
    let pin = pin_of(pin.as_deref(), line, problems);
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
        pin,
        link: link.map(Box::new),
    })
}

/// A record's fields as text, as the rules of a row take them.
struct Fields {
    /// As written (its own name may end in spaces).
    file: String,
    /// Trimmed; empty when the manifest has no such column.
    contact_id: String,
    /// Trimmed; empty when the manifest has no such column.
    contact_email: String,
    /// As written; `None` when the manifest has no such column.
    reference_type: Option<String>,
    /// Trimmed; empty when the manifest has no such column (it then has `note_text`).
    reference_id: String,
    /// As written; `None` when the manifest has no such column.
    name: Option<String>,
    /// `note_text` (`None` when blank), `note_date` and `note_key`, as `note_spec` takes them.
    note: [Option<String>; 3],
    /// As written; `None` when the manifest has no such column.
    pin: Option<String>,
    /// `link_url` and `link_type` as written; `None` when the manifest has no such column.
    link: [Option<String>; 2],
}

/// The text of each of a record's fields, or `None` when one is not UTF-8 (each such field is
/// an error on its column): the record is then kept as bytes, not as a row.
fn text_fields(
    record: &csv::ByteRecord,
    columns: &[Option<&'static str>],
    line: u64,
    problems: &mut Vec<Problem>,
) -> Option<Fields> {
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
    let pin = field("pin");
    let link_url = field("link_url");
    let link_type = field("link_type");
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
        && utf8("note_key", &note_key)
        && utf8("pin", &pin)
        && utf8("link_url", &link_url)
        && utf8("link_type", &link_type))
    {
        return None;
    }
    // A manifest of links may have no `file` column at all.
    let file = match file {
        None if !columns.contains(&Some("file")) => Some(String::new()),
        file => file,
    };
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
    Some(Fields {
        file,
        contact_id: contact_id.unwrap_or_default().trim().to_string(),
        contact_email: contact_email.unwrap_or_default().trim().to_string(),
        reference_type,
        reference_id: reference_id.trim().to_string(),
        name,
        note: [
            note_text.filter(|t| !t.trim().is_empty()),
            note_date,
            note_key,
        ],
        pin,
        link: [link_url, link_type],
    })
}

/// Every row needs a `file` (or a `link_url`), and a `reference_id` unless it gives a
/// `note_text` (the note it creates is its record): an empty one is an error on its column. The
/// first triple says whether the row gives a link and whether the manifest has a `link_url`
/// column, the pair whether it has a `note_text` column and whether this row gives a text in it.
fn check_required(
    (file, is_link, has_link_column): (&str, bool, bool),
    reference_id: &str,
    (has_note_column, has_note_text): (bool, bool),
    line: u64,
    problems: &mut Vec<Problem>,
) {
    for (col, value) in [("file", file), ("reference_id", reference_id)] {
        if (col == "reference_id" && has_note_text) || (col == "file" && is_link) {
            continue;
        }
        if value.trim().is_empty() {
            let message = match (col, has_note_column, has_link_column) {
                ("reference_id", true, _) => "neither `reference_id` nor `note_text` is given; every row needs the id of a note, deal, call or meeting, or a note_text to create a note".to_string(),
                ("file", _, true) => "neither `file` nor `link_url` is given; every row needs a file path, or a link (link_url and link_type) to attach instead".to_string(),
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
}

/// Whether a `pin` field as written asks for a pin: `true`, `yes` or `1` in any letter case,
/// surrounding spaces ignored (`None`: it is neither that nor `false`, `no`, `0` or empty).
pub fn pin_value(field: &[u8]) -> Option<bool> {
    match field.trim_ascii().to_ascii_lowercase().as_slice() {
        b"" | b"false" | b"no" | b"0" => Some(false),
        b"true" | b"yes" | b"1" => Some(true),
        _ => None,
    }
}

/// The `pin` field (see [`pin_value`]); empty or absent is not pinned. Anything else is an error
/// on the column, and the row is not pinned.
fn pin_of(text: Option<&str>, line: u64, problems: &mut Vec<Problem>) -> bool {
    let value = text.unwrap_or("").trim();
    match pin_value(value.as_bytes()) {
        Some(pin) => pin,
        None => {
            problems.push(Problem::error(
                Some(line),
                Some("pin"),
                ProblemKind::InvalidPin,
                format!(
                    "{} is not a pin value; use true or false (yes or no, 1 or 0), or leave it empty for no pin",
                    shown(value)
                ),
            ));
            false
        }
    }
}

/// An id that is not OnePageCRM's 24 hex digits is a warning, not an error: it may be right,
/// but it is more likely the wrong column.
fn check_id_formats(contact_id: &str, reference_id: &str, line: u64, problems: &mut Vec<Problem>) {
    for (col, value) in [("contact_id", contact_id), ("reference_id", reference_id)] {
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
}

/// The reference type a row gives (empty: a note), or, when it is no known type, an error and
/// the text as written (trimmed), so that the rejected row is recorded with it.
fn reference_type_of(
    text: Option<&str>,
    line: u64,
    problems: &mut Vec<Problem>,
) -> (Option<ReferenceType>, Option<Box<str>>) {
    match text.unwrap_or("").trim() {
        "" => (Some(ReferenceType::Note), None),
        t => match ReferenceType::parse(t) {
            Some(t) => (Some(t), None),
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
                (None, Some(t.into()))
            }
        },
    }
}

/// The attachment's name: the `name` column, or else the file's own name, checked as
/// OnePageCRM takes names (on the column it came from); a path with no name of its own (and no
/// `name`) is an error.
fn attachment_name(
    file: &str,
    name: Option<String>,
    line: u64,
    problems: &mut Vec<Problem>,
) -> String {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        check_name(&name, line, "name", problems);
        return name;
    }
    let own = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !file.trim().is_empty() {
        if own.is_empty() {
            problems.push(Problem::error(
                Some(line),
                Some("file"),
                ProblemKind::InvalidName,
                format!(
                    "{} has no file name to show in OnePageCRM; give one in the `name` column",
                    shown(file)
                ),
            ));
        } else {
            check_name(&own, line, "file", problems);
        }
    }
    own
}

/// The link columns of a row, when it gives either, each checked: a row gives a `file` or a
/// `link_url`, not both; a `link_type` only with a `link_url`; a link is an `https` URL with a
/// known type (`dropbox`, `google_drive` or `evernote`). Each problem is an error on its column
/// that names the value.
fn link_spec(
    file: &str,
    [url, link_type]: [Option<String>; 2],
    line: u64,
    problems: &mut Vec<Problem>,
) -> Option<LinkSpec> {
    let url = url.unwrap_or_default().trim().to_string();
    let link_type_text = link_type.unwrap_or_default().trim().to_string();
    if url.is_empty() && link_type_text.is_empty() {
        return None;
    }
    let mut error = |column, kind, message| {
        problems.push(Problem::error(Some(line), Some(column), kind, message));
    };
    let link_type = LinkType::parse(&link_type_text);
    if url.is_empty() {
        error(
            "link_type",
            ProblemKind::LinkConflict,
            format!(
                "`link_type` {} is given without a `link_url`; give the link's URL, or leave link_type empty for a file",
                shown(&link_type_text)
            ),
        );
        return Some(LinkSpec {
            url,
            link_type_text,
            link_type,
        });
    }
    if !file.trim().is_empty() {
        error(
            "link_url",
            ProblemKind::LinkConflict,
            format!(
                "the row gives both `file` {} and `link_url` {}; keep one of the two (a row attaches a file or a link)",
                shown(file),
                shown(&url)
            ),
        );
    }
    if let Err(why) = check_link_url(&url) {
        error(
            "link_url",
            ProblemKind::InvalidLinkUrl,
            format!(
                "{} is not an https URL ({why}); give the link as https://...",
                shown(&url)
            ),
        );
    }
    match (link_type_text.is_empty(), link_type) {
        (true, _) => error(
            "link_type",
            ProblemKind::MissingField,
            "`link_type` is empty; a link needs its type: dropbox, google_drive or evernote"
                .to_string(),
        ),
        (false, None) => error(
            "link_type",
            ProblemKind::UnknownLinkType,
            format!(
                "unknown link type {}; use dropbox, google_drive or evernote",
                shown(&link_type_text)
            ),
        ),
        (false, Some(_)) => {}
    }
    Some(LinkSpec {
        url,
        link_type_text,
        link_type,
    })
}

/// Why `url` is not a link OnePageCRM can be given: spaces or control characters, not a URL, not
/// `https`, no host.
fn check_link_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it holds a space or a control character".to_string());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("it is not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("it is {}, not https", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".to_string());
    }
    Ok(())
}

/// The name a link is shown by when its row gives none: its URL's last non-empty path segment,
/// percent-decoded (`https://x.example/a/Q3%20report.pdf?dl=0` is `Q3 report.pdf`); `None` when
/// the URL has no such segment, or it does not decode to UTF-8.
pub fn link_name(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.rev().find(|s| !s.is_empty())?;
    percent_encoding::percent_decode_str(last)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
        .filter(|d| !d.is_empty())
}

/// A link's attachment name: the `name` column, or else its URL's last path segment (see
/// [`link_name`]), checked as OnePageCRM takes names (on the column it came from); a URL with no
/// such segment (and no `name`) is an error.
fn link_attachment_name(
    url: &str,
    name: Option<String>,
    line: u64,
    problems: &mut Vec<Problem>,
) -> String {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        check_name(&name, line, "name", problems);
        return name;
    }
    match link_name(url) {
        Some(own) => {
            check_name(&own, line, "link_url", problems);
            own
        }
        None => {
            problems.push(Problem::error(
                Some(line),
                Some("link_url"),
                ProblemKind::InvalidName,
                format!(
                    "{} has no last path segment to name the attachment by; give one in the `name` column",
                    shown(url)
                ),
            ));
            String::new()
        }
    }
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

/// A record kept as written, its fields placed by the header's columns as far as both reach.
pub(super) fn unparsed(
    record: &csv::ByteRecord,
    columns: &[Option<&'static str>],
    line: u64,
) -> Unparsed {
    let mut fields: [Vec<u8>; 6] = Default::default();
    let mut note_fields: [Vec<u8>; 3] = Default::default();
    let mut pin = Vec::new();
    let mut link_fields: [Vec<u8>; 2] = Default::default();
    for (raw, col) in record.iter().zip(columns) {
        let Some(col) = col else { continue };
        if let Some(i) = RECORD_COLUMNS.iter().position(|k| k == col) {
            fields[i] = raw.to_vec();
        } else if let Some(i) = NOTE_COLUMNS.iter().position(|k| k == col) {
            note_fields[i] = raw.to_vec();
        } else if *col == "pin" {
            pin = raw.to_vec();
        } else if let Some(i) = LINK_COLUMNS.iter().position(|k| k == col) {
            link_fields[i] = raw.to_vec();
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
        pin,
        link_fields,
        extra,
    }
}

fn describe(column: &str) -> &'static str {
    match column {
        "file" => "file path",
        "contact_id" => "OnePageCRM contact id",
        _ => "note, deal, call or meeting id",
    }
}

fn check_name(name: &str, line: u64, column: &'static str, problems: &mut Vec<Problem>) {
    let whose = match column {
        "name" => "the name",
        "link_url" => "the link's last path segment (used as the attachment name)",
        _ => "the file's own name (used as the attachment name)",
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
