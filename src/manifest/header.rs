//! The header: which column each field of a record is, and every problem of the header at once.

use super::{COLUMNS, IGNORED_COLUMNS, Problem, ProblemKind, cut};

/// Required columns; `reference_id` may be left out of a manifest that has `note_text`.
const REQUIRED: [&str; 2] = ["file", "reference_id"];
/// A header needs at least one of these; a row gives exactly one.
const CONTACT_COLUMNS: [&str; 2] = ["contact_id", "contact_email"];

/// Maps each header position to the column it names (`None`: an ignored column).
///
/// Long (about 100 lines) for a reason: every header problem (unknown, duplicate, missing
/// columns, and how many of each are shown) is found in one pass and reported together.
pub(super) fn parse_header(
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

/// Whether a header record names `column` (as `parse_header` matches names).
pub(super) fn columns_named(header: &csv::ByteRecord, column: &str) -> bool {
    header
        .iter()
        .any(|f| std::str::from_utf8(f).is_ok_and(|t| t.trim().eq_ignore_ascii_case(column)))
}
