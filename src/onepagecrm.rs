//! Facts of OnePageCRM's API that both sides rely on: the client that checks and uploads a
//! manifest, and the emulator that stands in for OnePageCRM in every test.
//!
//! They live here, and not in the client's modules, so that the emulator depends on what
//! OnePageCRM is and not on how the client happens to be built: the per-file size limit, the
//! records a file attaches to, the form of an id, and the one place besides OnePageCRM itself that
//! either side talks to over plain http (loopback).

use std::fmt;

use serde::Serialize;

/// OnePageCRM's per-file limit; a file of exactly this size is allowed.
pub const MAX_FILE_SIZE: u64 = 10_485_760;

/// What a file attaches to: a note, deal, call or meeting of a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceType {
    Note,
    Deal,
    Call,
    Meeting,
}

impl ReferenceType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "note" => Some(Self::Note),
            "deal" => Some(Self::Deal),
            "call" => Some(Self::Call),
            "meeting" => Some(Self::Meeting),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Note => "note",
            Self::Deal => "deal",
            Self::Call => "call",
            Self::Meeting => "meeting",
        }
    }
}

impl fmt::Display for ReferenceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a linked file lives: `POST /attachments` takes one of these as `link_type` (with
/// `external_url`, instead of an uploaded key), and the attachment shows it as its
/// `storage_provider` (whose other value, `amazon`, is an uploaded file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkType {
    Dropbox,
    GoogleDrive,
    Evernote,
}

impl LinkType {
    pub const ALL: [LinkType; 3] = [Self::Dropbox, Self::GoogleDrive, Self::Evernote];

    /// The type as the API writes it, in any letter case (as a manifest may give it).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dropbox => "dropbox",
            Self::GoogleDrive => "google_drive",
            Self::Evernote => "evernote",
        }
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OnePageCRM ids are MongoDB object ids: 24 hex digits.
pub fn is_object_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A note's `text` is at most this many characters (Unicode scalar values, as the API counts a
/// string's length), counted on the text as it is sent.
pub const MAX_NOTE_TEXT_CHARS: usize = 7168;

/// A note's text as the API may return it: every line end (`\r\n` or a lone `\r`) made `\n`,
/// nothing else changed. The emulator stores notes so; a client that looks for a note it created
/// compares texts after this.
pub fn normalize_line_ends(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// A note's `date`: exactly `YYYY-MM-DD`, a day of the calendar.
pub fn parse_note_date(s: &str) -> Option<chrono::NaiveDate> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return None;
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Whether `url` names this machine: a loopback address or `localhost`. Plain http goes only
/// there (the client to an emulator, the emulator to a local S3 server).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids() {
        assert!(is_object_id("5a1b2c3d4e5f60718293a4b5"));
        assert!(!is_object_id("5a1b2c3d4e5f60718293a4b"));
        assert!(!is_object_id("5a1b2c3d4e5f60718293a4bz"));
    }

    #[test]
    fn line_ends_become_lf_and_nothing_else_changes() {
        assert_eq!(normalize_line_ends("a\r\nb\rc\nd"), "a\nb\nc\nd");
        assert_eq!(normalize_line_ends("\r\r\n\n"), "\n\n\n");
        assert_eq!(
            normalize_line_ends("  Müller, \"x\"\t "),
            "  Müller, \"x\"\t "
        );
    }

    #[test]
    fn note_dates_are_exactly_yyyy_mm_dd_of_the_calendar() {
        assert_eq!(
            parse_note_date("2024-02-29"),
            chrono::NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        for bad in [
            "2023-02-29",
            "2024-2-29",
            "2024-02-9",
            "24-02-29",
            "2024/02/29",
            "2024-02-29T00:00:00Z",
            " 2024-02-29",
            "+202-02-29",
            "2024-13-01",
            "",
        ] {
            assert_eq!(parse_note_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn reference_types_read_in_any_case_and_show_in_lower_case() {
        for t in [
            ReferenceType::Note,
            ReferenceType::Deal,
            ReferenceType::Call,
            ReferenceType::Meeting,
        ] {
            assert_eq!(ReferenceType::parse(t.as_str()), Some(t));
            assert_eq!(ReferenceType::parse(&t.as_str().to_uppercase()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.as_str())
            );
        }
        assert_eq!(ReferenceType::parse("task"), None);
    }

    #[test]
    fn loopback_is_this_machine_only() {
        let yes = |u: &str| is_loopback(&url::Url::parse(u).unwrap());
        assert!(yes("http://127.0.0.1:8787/api/v3"));
        assert!(yes("http://127.1.2.3/"));
        assert!(yes("http://[::1]:9000/"));
        assert!(yes("http://LOCALHOST:9000/"));
        assert!(!yes("http://10.0.0.5/"));
        assert!(!yes("http://localhost.example.com/"));
        assert!(!yes("https://app.onepagecrm.com/api/v3"));
    }
}
