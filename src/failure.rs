//! Why a row failed, as one enum every part shares: the remote client says which kind a failure
//! is, the pipeline carries it, the state file stores its stable name, and `status`, `report` and
//! the run's summary show and explain it.

use serde::{Serialize, Serializer};

use crate::manifest::ProblemKind;

/// A row's failure kind. Its name (`as_str`) is what the state file, `--json` and the reports
/// hold: stable across versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    Throttled,
    Credentials,
    Quota,
    ServerError,
    ApiRejected,
    S3Busy,
    S3Rejected,
    Timeout,
    Network,
    EtagMismatch,
    /// S3 answered that it stored the upload under another key than the one sent.
    S3KeyMismatch,
    FileChanged,
    FileUnreadable,
    Protocol,
    StateFile,
    AttachUnsettled,
    Stalled,
    /// The note the row attaches to (a `note_text` row) could not be created.
    NoteFailed,
    /// Invalid in preflight: the name state files of earlier versions hold for every rejected
    /// row. Still read; a rejected row is recorded with its problem's own kind now.
    Invalid,
    /// Rejected: `contact_email` is not an email address.
    InvalidEmail,
    /// Rejected: no contact has the row's email.
    ContactNotFound,
    /// Rejected: several contacts have the row's email.
    ContactAmbiguous,
    /// The row's record (note, deal, call or meeting) does not exist.
    RecordNotFound,
    /// The row's record belongs to another contact than the row's.
    RecordOfOtherContact,
    /// The row's file is attached, but pinning it to its contact (`pin`) failed: the row stays
    /// done with its attachment.
    PinFailed,
    /// Rejected in preflight for this problem, under the problem's own name (`file_too_large`),
    /// the one `check --json` shows: one failure has one name everywhere.
    Problem(ProblemKind),
    /// A name this version does not know (a state file of a newer version).
    Other,
}

impl FailureKind {
    pub const ALL: [FailureKind; 26] = [
        Self::Throttled,
        Self::Credentials,
        Self::Quota,
        Self::ServerError,
        Self::ApiRejected,
        Self::S3Busy,
        Self::S3Rejected,
        Self::Timeout,
        Self::Network,
        Self::EtagMismatch,
        Self::S3KeyMismatch,
        Self::FileChanged,
        Self::FileUnreadable,
        Self::Protocol,
        Self::StateFile,
        Self::AttachUnsettled,
        Self::Stalled,
        Self::NoteFailed,
        Self::Invalid,
        Self::InvalidEmail,
        Self::ContactNotFound,
        Self::ContactAmbiguous,
        Self::RecordNotFound,
        Self::RecordOfOtherContact,
        Self::PinFailed,
        Self::Other,
    ];

    /// The stable name the state file stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Credentials => "credentials",
            Self::Quota => "quota",
            Self::ServerError => "server_error",
            Self::ApiRejected => "api_rejected",
            Self::S3Busy => "s3_busy",
            Self::S3Rejected => "s3_rejected",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::EtagMismatch => "etag_mismatch",
            Self::S3KeyMismatch => "s3_key_mismatch",
            Self::FileChanged => "file_changed",
            Self::FileUnreadable => "file_unreadable",
            Self::Protocol => "protocol",
            Self::StateFile => "state_file",
            Self::AttachUnsettled => "attach_unsettled",
            Self::Stalled => "stalled",
            Self::NoteFailed => "note_failed",
            Self::Invalid => "invalid",
            Self::InvalidEmail => "invalid_email",
            Self::ContactNotFound => "contact_not_found",
            Self::ContactAmbiguous => "contact_ambiguous",
            Self::RecordNotFound => "record_not_found",
            Self::RecordOfOtherContact => "record_of_other_contact",
            Self::PinFailed => "pin_failed",
            Self::Problem(p) => p.as_str(),
            Self::Other => "other",
        }
    }

    /// The kind a stored name means; a name this version does not know is `Other`.
    pub fn parse(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .or_else(|| {
                ProblemKind::ALL
                    .into_iter()
                    .find(|p| p.as_str() == name)
                    .map(Self::Problem)
            })
            .unwrap_or(Self::Other)
    }

    /// The kind a row rejected for `problem` is recorded with: a kind of its own when one has
    /// the problem's name (`contact_not_found`), so that a name never means two values.
    pub fn of_problem(problem: ProblemKind) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == problem.as_str())
            .unwrap_or(Self::Problem(problem))
    }

    /// What the kind means, in words a person can act on.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Throttled => "the API kept throttling",
            Self::Credentials => "the API refused the credentials",
            Self::Quota => "the account's storage is full",
            Self::ServerError => "the API kept failing (5xx)",
            Self::ApiRejected => "the API refused the request (check the contact and record ids)",
            Self::S3Busy => "S3 kept failing or asking to slow down",
            Self::S3Rejected => "S3 refused the upload",
            Self::Timeout => "requests kept timing out",
            Self::Network => "the network kept failing",
            Self::EtagMismatch => "uploads arrived damaged",
            Self::S3KeyMismatch => {
                "S3 stored the upload under another key than the one sent, so it was not attached"
            }
            Self::FileChanged => "the file changed during the upload",
            Self::FileUnreadable => "the file could not be read",
            Self::Protocol => "unexpected answers",
            Self::StateFile => "the state file could not be written",
            Self::AttachUnsettled => {
                "whether it was attached is not known yet (a rerun reads the record again and settles it)"
            }
            Self::Stalled => "the run stopped (it stalled) before this row could finish",
            Self::NoteFailed => "the note this row attaches to could not be created",
            Self::Invalid => "the row is invalid",
            Self::InvalidEmail => "contact_email is not an email address",
            Self::ContactNotFound => {
                "no contact has this email (fix the email, or the contact in OnePageCRM)"
            }
            Self::ContactAmbiguous => {
                "several contacts have this email (give the row a contact_id instead)"
            }
            Self::RecordNotFound => {
                "its reference_id names no record of its reference_type (fix the manifest)"
            }
            Self::RecordOfOtherContact => {
                "its record belongs to another contact (fix contact_id or reference_id)"
            }
            Self::PinFailed => {
                "the file is attached (and stays so), but pinning it to its contact failed"
            }
            Self::Problem(_) => "the row is invalid (its message says why)",
            Self::Other => "an error",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl rusqlite::ToSql for FailureKind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for FailureKind {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        value.as_str().map(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        let names: std::collections::HashSet<&str> =
            FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), FailureKind::ALL.len());
        for k in FailureKind::ALL {
            assert_eq!(FailureKind::parse(k.as_str()), k);
            assert!(!k.describe().is_empty());
        }
        for p in ProblemKind::ALL {
            let k = FailureKind::of_problem(p);
            assert_eq!(k.as_str(), p.as_str());
            assert_eq!(FailureKind::parse(p.as_str()), k);
        }
        // What earlier versions recorded for every rejected row.
        assert_eq!(FailureKind::parse("invalid"), FailureKind::Invalid);
        assert_eq!(
            FailureKind::parse("from_a_newer_version"),
            FailureKind::Other
        );
        assert_eq!(
            serde_json::to_string(&FailureKind::AttachUnsettled).unwrap(),
            "\"attach_unsettled\""
        );
    }
}
