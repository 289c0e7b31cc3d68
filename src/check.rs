//! `opcrm-import check`: runs preflight and prints what it found, for a person or as JSON.

use std::io::{self, Write};

use serde::Serialize;

use crate::ExitStatus;
use crate::cli::CheckArgs;
use crate::error::{CommandResult, ignore_broken_pipe};
use crate::lookup::{self, Lookups};
use crate::manifest::{Problem, ProblemKind, ReadOptions, Severity};
use crate::preflight::{self, Checked, Summary, human_bytes};
use crate::quota::{self, Quota};
use crate::remote::{self, Client, Credentials};

/// The document `check --json` prints (its shape is documented in README.md).
#[derive(Serialize)]
struct JsonReport<'a> {
    manifest: String,
    valid: bool,
    lookups: &'a LookupStatus,
    quota: &'a Quota,
    summary: &'a Summary,
    problems: &'a [Problem],
}

/// What `check` found out about the contacts named by email (`lookups` in `check --json`).
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LookupStatus {
    /// `--offline`.
    Offline,
    /// Not looked up, and why (no credentials).
    NotChecked { reason: String },
    /// Looked up (with no row by email: nothing to look up, all counts 0).
    Checked(Lookups),
    /// A lookup itself failed (credentials refused, API unreachable).
    Failed { error: String },
}

/// The API client from the environment, or why there is none: not set up (`NotChecked`), or set
/// up wrong (`Failed`).
fn client(api_key_file: Option<&std::path::Path>) -> Result<Client, Quota> {
    let credentials = Credentials::from_env(api_key_file).map_err(|e| Quota::NotChecked {
        reason: format!("{e}; or pass --offline"),
    })?;
    remote::api_url_from_env()
        .and_then(|url| Client::new(url, credentials))
        .map_err(|e| Quota::Failed {
            error: format!("{e:#}"),
        })
}

/// Every distinct email of the manifest looked up once; the rows whose email found no contact,
/// or several, get their problems.
fn check_lookups(checked: &mut Checked, client: &Result<Client, Quota>) -> LookupStatus {
    if lookup::emails(&checked.manifest.rows).is_empty() {
        return LookupStatus::Checked(Lookups::default());
    }
    let client = match client {
        Ok(client) => client.clone(),
        Err(Quota::NotChecked { reason }) => {
            return LookupStatus::NotChecked {
                reason: reason.clone(),
            };
        }
        Err(Quota::Failed { error }) => {
            return LookupStatus::Failed {
                error: error.clone(),
            };
        }
        Err(_) => {
            return LookupStatus::NotChecked {
                reason: "no API client".into(),
            };
        }
    };
    let rows = &checked.manifest.rows;
    let known = Default::default();
    match quota::with_context(client, async |ctx| lookup::look_up(ctx, rows, &known).await) {
        Ok(Ok(lookups)) => {
            let problems = lookup::problems(rows, &lookups);
            checked.resolved = lookups.resolved_ids();
            checked.add_problems(problems);
            LookupStatus::Checked(lookups)
        }
        Ok(Err(e)) => LookupStatus::Failed {
            error: format!("GET /contacts?email=: {e}"),
        },
        Err(error) => LookupStatus::Failed { error },
    }
}

/// One step-1 call for the first valid row's contact (its id, or the one its email resolved
/// to), compared with the bytes to upload.
fn check_quota(checked: &Checked, client: Result<Client, Quota>) -> Quota {
    if !checked.is_valid() {
        return Quota::NotChecked {
            reason: "the manifest is invalid".into(),
        };
    }
    let contact = |r: &crate::manifest::Row| match r.contact_id.is_empty() {
        false => Some(r.contact_id.clone()),
        true => checked
            .resolved
            .get(&crate::manifest::email_key(&r.contact_email))
            .cloned(),
    };
    let Some((first, contact_id)) = checked
        .manifest
        .rows
        .iter()
        .find_map(|r| contact(r).map(|c| (r, c)))
    else {
        return Quota::NotChecked {
            reason: "no row's contact is known (the emails were not looked up)".into(),
        };
    };
    match client {
        Ok(client) => quota::check(
            client,
            &contact_id,
            first.line,
            checked.summary.bytes_to_upload,
        ),
        Err(not_checked) => not_checked,
    }
}

pub fn run(args: &CheckArgs) -> CommandResult {
    let options = ReadOptions {
        delimiter: args.manifest.delimiter,
    };
    let mut checked = preflight::check(&args.manifest.manifest, options);
    let (lookups, quota) = if args.offline {
        (LookupStatus::Offline, Quota::Offline)
    } else {
        let client = client(args.api_key_file.as_deref());
        let lookups = check_lookups(&mut checked, &client);
        (lookups, check_quota(&checked, client))
    };
    let status = match (&lookups, &quota) {
        _ if !checked.is_valid() => ExitStatus::Usage,
        (LookupStatus::Failed { .. }, _) => ExitStatus::Stopped,
        (_, Quota::Checked { enough: false, .. } | Quota::Failed { .. }) => ExitStatus::Stopped,
        _ => ExitStatus::Success,
    };
    let print = || -> io::Result<()> {
        let mut out = io::stdout().lock();
        if args.json {
            let report = JsonReport {
                manifest: checked.manifest.path.display().to_string(),
                valid: checked.is_valid(),
                lookups: &lookups,
                quota: &quota,
                summary: &checked.summary,
                problems: &checked.manifest.problems,
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            write_text(&mut out, &checked, &lookups, &quota)?;
        }
        out.flush()
    };
    // A reader that closed stdout (`check m.csv | head`) does not change what was found.
    ignore_broken_pipe(print())?;
    Ok(status)
}

/// Problems of one kind shown before the rest of that kind are counted in one line.
const SHOWN_PER_KIND: usize = 20;

/// Writes problems one a line, in order, but only the first 20 of each kind: a manifest where
/// every one of 100,000 rows has the same mistake needs a few examples and a count, not 100,000
/// lines (`check --json` lists them all).
pub fn write_problems(out: &mut impl Write, problems: &[Problem]) -> io::Result<()> {
    let mut seen: Vec<(ProblemKind, Severity, usize)> = Vec::new();
    for problem in problems {
        let key = (problem.kind, problem.severity);
        let count = match seen.iter_mut().find(|(k, s, _)| (*k, *s) == key) {
            Some((_, _, n)) => n,
            None => {
                seen.push((problem.kind, problem.severity, 0));
                &mut seen.last_mut().expect("just pushed").2
            }
        };
        *count += 1;
        if *count <= SHOWN_PER_KIND {
            writeln!(out, "{problem}")?;
        }
    }
    for (kind, severity, n) in seen {
        if n > SHOWN_PER_KIND {
            let what = match severity {
                Severity::Error => "errors",
                Severity::Warning => "warnings",
            };
            let kind = serde_json::to_value(kind).unwrap_or_default();
            writeln!(
                out,
                "... and {} more {} {what} like those above (check --json lists every one)",
                n - SHOWN_PER_KIND,
                kind.as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

/// The readable report: the problems, then the summary lines (README shows it).
///
/// Long (about 110 lines) for a reason: it is the report's text, line by line, in the order it
/// is printed; split, the layout would be harder to see.
fn write_text(
    out: &mut impl Write,
    checked: &Checked,
    lookups: &LookupStatus,
    quota: &Quota,
) -> io::Result<()> {
    write_problems(out, &checked.manifest.problems)?;
    if !checked.manifest.problems.is_empty() {
        writeln!(out)?;
    }
    let s = &checked.summary;
    writeln!(out, "Manifest:  {}", checked.manifest.path.display())?;
    if !checked.manifest.readable {
        writeln!(
            out,
            "Result:    not readable as a manifest; nothing was checked or uploaded"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Rows:      {} ({} valid, {} invalid), {} {}, {} {}",
        s.rows,
        s.valid,
        s.invalid,
        s.errors,
        plural(s.errors, "error", "errors"),
        s.warnings,
        plural(s.warnings, "warning", "warnings")
    )?;
    writeln!(
        out,
        "To upload: {} {}, {} ({} bytes)",
        s.files_to_upload,
        plural(s.files_to_upload, "file", "files"),
        human_bytes(s.bytes_to_upload),
        s.bytes_to_upload
    )?;
    if let Some(l) = &s.largest_file {
        writeln!(
            out,
            "Largest:   {} ({}, line {})",
            l.file,
            human_bytes(l.size),
            l.line
        )?;
    }
    let by_email = lookup::emails(&checked.manifest.rows).len();
    match lookups {
        _ if by_email == 0 => {}
        LookupStatus::Offline => writeln!(
            out,
            "Contacts:  {by_email} by email, not looked up (--offline)"
        )?,
        LookupStatus::NotChecked { reason } => writeln!(
            out,
            "Contacts:  {by_email} by email, not looked up: {reason}"
        )?,
        LookupStatus::Checked(l) => writeln!(out, "Contacts:  {}", lookup::describe(l))?,
        LookupStatus::Failed { error } => {
            writeln!(out, "Contacts:  the lookup by email failed: {error}")?
        }
    }
    match quota {
        Quota::Offline => writeln!(out, "Quota:     storage left not checked (--offline)")?,
        Quota::NotChecked { reason } => {
            writeln!(out, "Quota:     storage left not checked: {reason}")?
        }
        Quota::Checked {
            storage_left,
            enough: true,
            ..
        } => writeln!(
            out,
            "Quota:     enough: {} of storage left",
            human_bytes(*storage_left)
        )?,
        Quota::Checked {
            storage_left,
            bytes_to_upload,
            enough: false,
        } => writeln!(
            out,
            "Quota:     NOT ENOUGH: the files need {} ({bytes_to_upload} bytes) and the account has {} ({storage_left} bytes) left",
            human_bytes(*bytes_to_upload),
            human_bytes(*storage_left)
        )?,
        Quota::Failed { error } => writeln!(out, "Quota:     the check failed: {error}")?,
    }
    if matches!(lookups, LookupStatus::Failed { .. }) && checked.is_valid() {
        writeln!(
            out,
            "Result:    valid offline, but the contacts could not be looked up (see Contacts)"
        )?;
    } else if matches!(
        quota,
        Quota::Checked { enough: false, .. } | Quota::Failed { .. }
    ) && checked.is_valid()
    {
        writeln!(
            out,
            "Result:    valid, but the storage check did not pass (see Quota)"
        )?;
    } else if checked.is_valid() {
        writeln!(out, "Result:    valid")?;
    } else {
        writeln!(
            out,
            "Result:    invalid; fix the errors above and check again (nothing was uploaded)"
        )?;
    }
    Ok(())
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
