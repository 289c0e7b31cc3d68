//! Row keys: a row's identity in the state file, a hash of what it means (file, contact,
//! reference, name) under a tag of its kind, and the escaping that lets a state file hold the
//! bytes of a field that is not UTF-8.
//!
//! Pure functions, for any thread: no connection here.

use sha2::{Digest, Sha256};

use crate::onepagecrm::ReferenceType;

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

/// What a link row attaches to, for its key: a record by its type and id, or the note its group
/// creates.
#[derive(Clone, Copy, Debug)]
pub enum LinkRecord<'a> {
    Reference(ReferenceType, &'a str),
    NoteGroup(&'a str),
}

/// The key of a row that attaches a link instead of a file (its URL and type, its contact, its
/// record, its name): the same parts as a file row's under tags of their own (`l1`, `l1-email`,
/// `ln1`, `ln1-email`, as the file rows' `v1`, `v1-email`, `n1`, `n1-email`), so that it never
/// equals the key of a row of a file (whose tags are those), and no file row's key changes.
/// `contact` is the contact id, or the email as [`email_key`] makes it when `by_email`.
///
/// [`email_key`]: crate::manifest::email_key
pub fn link_row_key(
    (url, link_type): (&str, &str),
    contact: &str,
    by_email: bool,
    record: LinkRecord<'_>,
    name: &str,
) -> String {
    match (record, by_email) {
        (LinkRecord::Reference(t, id), false) => {
            tagged_key(&["l1", url, link_type, contact, t.as_str(), id, name])
        }
        (LinkRecord::Reference(t, id), true) => {
            tagged_key(&["l1-email", url, link_type, contact, t.as_str(), id, name])
        }
        (LinkRecord::NoteGroup(group), false) => {
            tagged_key(&["ln1", url, link_type, contact, group, name])
        }
        (LinkRecord::NoteGroup(group), true) => {
            tagged_key(&["ln1-email", url, link_type, contact, group, name])
        }
    }
}

/// A row's link columns as fields of a raw key: none when both are empty (the key is then what
/// it was before the columns existed), else each tagged, so that they cannot pass for fields
/// past the header's.
pub(super) fn link_fields(url: &[u8], link_type: &[u8]) -> Option<[Vec<u8>; 2]> {
    (!url.is_empty() || !link_type.is_empty()).then(|| {
        [
            [b"\0link_url=".as_slice(), url].concat(),
            [b"\0link_type=".as_slice(), link_type].concat(),
        ]
    })
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
pub(super) fn email_field(email: &[u8]) -> Option<Vec<u8>> {
    (!email.is_empty()).then(|| [b"\0contact_email=".as_slice(), email].concat())
}

const RAW_TEXT: &str = "raw:";
pub(super) const RAW_BYTES: &str = "rawb:";

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn link_rows_have_keys_of_their_own_and_never_a_file_rows() {
        let url = "https://www.dropbox.com/s/abc/a.pdf";
        let note = ReferenceType::Note;
        let link =
            |by_email, record| link_row_key((url, "dropbox"), "c", by_email, record, "a.pdf");
        let by_ref = link(false, LinkRecord::Reference(note, "n"));
        // A file row named like the link, in every field it has, keeps its own key.
        assert_ne!(by_ref, row_key(url, "c", note, "n", "a.pdf"));
        assert_ne!(by_ref, row_key("", "c", note, "n", "a.pdf"));
        assert_eq!(
            row_key("a.pdf", "c", note, "n", "a.pdf"),
            "d4bb064c73d4f61646eeab7cf19f93c9"
        );
        let all = [
            by_ref.clone(),
            link(true, LinkRecord::Reference(note, "n")),
            link(false, LinkRecord::NoteGroup("n")),
            link(true, LinkRecord::NoteGroup("n")),
            row_key_by_email(url, "c", note, "n", "a.pdf"),
            note_row_key(url, "c", "n", "a.pdf"),
            note_row_key_by_email(url, "c", "n", "a.pdf"),
        ];
        let distinct: std::collections::HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        // The type, the URL and the record count.
        assert_ne!(
            by_ref,
            link_row_key(
                (url, "evernote"),
                "c",
                false,
                LinkRecord::Reference(note, "n"),
                "a.pdf"
            )
        );
        assert_ne!(
            by_ref,
            link_row_key(
                ("https://x.example/a.pdf", "dropbox"),
                "c",
                false,
                LinkRecord::Reference(note, "n"),
                "a.pdf"
            )
        );
        assert_ne!(
            by_ref,
            link(false, LinkRecord::Reference(ReferenceType::Deal, "n"))
        );
        assert_eq!(by_ref.len(), 32);
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
}
