//! The header: which column each field of a record is, and every problem of the header at once.

use super::{COLUMNS, IGNORED_COLUMNS, Problem, ProblemKind, cut};

/// Required columns; `reference_id` may be left out of a manifest that has `note_text`, and
/// `file` out of one that has `link_url`.
const REQUIRED: [&str; 2] = ["file", "reference_id"];
/// A header needs at least one of these; a row gives exactly one.
const CONTACT_COLUMNS: [&str; 2] = ["contact_id", "contact_email"];

/// Maps each header position to the column it names (`None`: an ignored column).
///
/// Every header problem (unknown, duplicate, missing columns, and how many of each are shown) is
/// found before any is reported: all of them come back together, as one problem of the header.
pub(super) fn parse_header(
    record: &csv::ByteRecord,
    line: u64,
    delimiter: u8,
) -> Result<Vec<Option<&'static str>>, Problem> {
    let (columns, mut problems) = name_columns(record, line)?;
    problems.extend(missing_columns(&columns, record.len(), delimiter));
    if problems.is_empty() {
        return Ok(columns);
    }
    Err(bad_header(line, problems))
}

/// The column each header field names, with what is wrong with the names: a column twice, an
/// unknown or empty name (the first 20 of those told, the rest counted). A header that is not
/// UTF-8 is refused at once.
fn name_columns(
    record: &csv::ByteRecord,
    line: u64,
) -> Result<(Vec<Option<&'static str>>, Vec<String>), Problem> {
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
    Ok((columns, problems))
}

/// The required columns a header lacks, one message each: a contact column (`contact_id` or
/// `contact_email`), `file` unless the header has `link_url`, and `reference_id` unless it has
/// `note_text`. A header of
/// one field read with `,` may be a manifest of another delimiter: the message says so.
fn missing_columns(columns: &[Option<&'static str>], fields: usize, delimiter: u8) -> Vec<String> {
    let mut problems = Vec::new();
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
        // A manifest of links need not name any file.
        if required == "file" && columns.contains(&Some("link_url")) {
            continue;
        }
        if !columns.contains(&Some(required)) {
            let hint = if fields == 1 && delimiter == b',' {
                " (if the manifest uses `;` or tabs, pass --delimiter)"
            } else {
                ""
            };
            let or = match required {
                "reference_id" => " (or `note_text`, to create the notes the files attach to)",
                _ => " (or `link_url` and `link_type`, to attach links to files in cloud storage)",
            };
            problems.push(format!("missing required column `{required}`{or}{hint}"));
        }
    }
    problems
}

/// The one problem of a bad header, all its messages joined; its kind is the first that
/// applies of unknown (or empty) column, duplicate column, missing column.
fn bad_header(line: u64, problems: Vec<String>) -> Problem {
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
    Problem::error(
        Some(line),
        None,
        kind,
        format!("bad header: {}; no row was checked", problems.join("; ")),
    )
}

/// Whether a header record names `column` (as `parse_header` matches names).
pub(super) fn columns_named(header: &csv::ByteRecord, column: &str) -> bool {
    header
        .iter()
        .any(|f| std::str::from_utf8(f).is_ok_and(|t| t.trim().eq_ignore_ascii_case(column)))
}
