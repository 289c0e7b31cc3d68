//! `opcrm-import check`: runs preflight, then, unless `--offline` and when credentials are set,
//! the online checks (contacts by email with `lookup`, the records rows attach to with `records`,
//! the storage left with `quota`) through one context; prints what it found, for a person or as
//! JSON.

use crate::terminal::Printable;
use std::io::{self, Write};

use serde::Serialize;

use crate::ExitStatus;
use crate::cli::CheckArgs;
use crate::error::{CommandResult, ignore_broken_pipe};
use crate::lookup::{self, Lookups};
use crate::manifest::{Problem, ProblemKind, ReadOptions, shown, write_problems};
use crate::pipeline::Context;
use crate::preflight::{self, Checked, Summary, human_bytes};
use crate::quota::{self, Quota};
use crate::records::{self, Records};
use crate::remote::{self, Client, Credentials, RemoteError};

/// The document `check --json` prints (its shape is documented in docs/check.md).
#[derive(Serialize)]
struct JsonReport<'a> {
    manifest: String,
    valid: bool,
    lookups: &'a LookupStatus,
    records: &'a RecordStatus,
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

/// What `check` found out about the records the rows attach to (`records` in `check --json`).
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecordStatus {
    /// `--offline`.
    Offline,
    /// Not read, and why (no credentials).
    NotChecked { reason: String },
    /// Read (with no row naming a record: nothing to read, all counts 0).
    Checked(Records),
    /// A read itself failed (credentials refused, API unreachable).
    Failed { error: String },
}

/// Why `check` has no API client: not set up, or set up wrong.
enum NoClient {
    NotChecked(String),
    Failed(String),
}

/// The API client from the environment, or why there is none.
fn client(api_key_file: Option<&std::path::Path>) -> Result<Client, NoClient> {
    let credentials = Credentials::from_env(api_key_file)
        .map_err(|e| NoClient::NotChecked(format!("{e}; or pass --offline")))?;
    remote::api_url_from_env()
        .and_then(|url| Client::new(url, credentials))
        .map_err(|e| NoClient::Failed(format!("{e:#}")))
}

/// What `check` found online: the email lookups, the records, the storage.
struct Online {
    lookups: LookupStatus,
    records: RecordStatus,
    quota: Quota,
}

impl Online {
    fn offline() -> Self {
        Self {
            lookups: LookupStatus::Offline,
            records: RecordStatus::Offline,
            quota: Quota::Offline,
        }
    }

    /// Nothing checked online, every part for one reason.
    fn without(why: NoClient) -> Self {
        match why {
            NoClient::NotChecked(reason) => Self {
                lookups: LookupStatus::NotChecked {
                    reason: reason.clone(),
                },
                records: RecordStatus::NotChecked {
                    reason: reason.clone(),
                },
                quota: Quota::NotChecked { reason },
            },
            NoClient::Failed(error) => Self {
                lookups: LookupStatus::Failed {
                    error: error.clone(),
                },
                records: RecordStatus::Failed {
                    error: error.clone(),
                },
                quota: Quota::Failed { error },
            },
        }
    }
}

/// The lookups, the records and the quota, in that order (the records of rows by email need
/// their lookups; the quota, a valid manifest), sent through one context: one rate limit and
/// one throttle gate for all of `check`'s calls, as in a run.
fn check_online(checked: &mut Checked, api_key_file: Option<&std::path::Path>) -> Online {
    let client = match client(api_key_file) {
        Ok(client) => client,
        Err(why) => return Online::without(why),
    };
    let online = quota::with_context(client, async |ctx| {
        let lookups = check_lookups(ctx, checked).await;
        let records = check_records(ctx, checked).await;
        let quota = check_quota(ctx, checked).await;
        Online {
            lookups,
            records,
            quota,
        }
    });
    online.unwrap_or_else(|error| Online::without(NoClient::Failed(error)))
}

/// Every distinct email of the manifest looked up once; the rows whose email found no contact,
/// or several, get their problems.
async fn check_lookups(ctx: &Context, checked: &mut Checked) -> LookupStatus {
    let rows = &checked.manifest.rows;
    if lookup::emails(rows).is_empty() {
        return LookupStatus::Checked(Lookups::default());
    }
    match lookup::look_up(ctx, &lookup::emails(rows), &Default::default()).await {
        Ok(lookups) => {
            let problems = lookup::problems(rows, &lookups);
            checked.resolved = lookups.resolved_ids();
            checked.add_problems(problems);
            LookupStatus::Checked(lookups)
        }
        Err(e) => LookupStatus::Failed {
            error: format!("GET /contacts?email=: {e}"),
        },
    }
}

/// Every record the rows attach to read once (rows whose email found no contact are left out);
/// the rows whose record does not exist, or is another contact's, get their problems.
async fn check_records(ctx: &Context, checked: &mut Checked) -> RecordStatus {
    let rows = &checked.manifest.rows;
    match records::read(ctx, rows, &checked.resolved).await {
        Ok(found) => {
            let problems = records::problems(rows, &checked.resolved, &found);
            checked.add_problems(problems);
            RecordStatus::Checked(found)
        }
        Err(e) => RecordStatus::Failed {
            error: format!("reading the records: {e}"),
        },
    }
}

/// One step-1 call for the first valid row's contact (its id, or the one its email resolved
/// to), compared with the bytes to upload.
async fn check_quota(ctx: &Context, checked: &mut Checked) -> Quota {
    if !checked.is_valid() {
        return Quota::NotChecked {
            reason: "the manifest is invalid".into(),
        };
    }
    let Some((line, contact_id)) = checked
        .manifest
        .rows
        .iter()
        .find_map(|r| records::contact_of(r, &checked.resolved).map(|c| (r.line, c)))
    else {
        return Quota::NotChecked {
            reason: "no row's contact is known (the emails were not looked up)".into(),
        };
    };
    let bytes = checked.summary.bytes_to_upload;
    match quota::storage_left(ctx, &contact_id).await {
        // Step 1 answers 404 for a contact that does not exist: the mistake is the rows' that
        // name it, to be fixed on their lines, and says nothing of the storage.
        Err(RemoteError::Api { status: 404, .. }) => {
            let problems = contact_missing(checked, &contact_id);
            checked.add_problems(problems);
            Quota::NotChecked {
                reason: format!(
                    "the manifest is invalid (contact {contact_id} of line {line} does not exist)"
                ),
            }
        }
        answer => quota::judge(answer, line, bytes),
    }
}

/// The problems of the rows of `contact_id`, which step 1 said does not exist.
fn contact_missing(checked: &Checked, contact_id: &str) -> Vec<Problem> {
    let rows = checked.manifest.rows.iter();
    rows.filter(|r| records::contact_of(r, &checked.resolved).as_deref() == Some(contact_id))
        .map(|r| {
            let (column, given) = match r.contact_id.is_empty() {
                false => ("contact_id", format!("no contact has the id {contact_id}")),
                true => (
                    "contact_email",
                    format!(
                        "the contact {contact_id} found for {} does not exist",
                        shown(&r.contact_email)
                    ),
                ),
            };
            Problem::error(
                Some(r.line),
                Some(column),
                ProblemKind::ContactNotFound,
                format!(
                    "{given} (step 1 of the storage check answered 404); fix the row's {column}"
                ),
            )
        })
        .collect()
}

pub fn run(args: &CheckArgs) -> CommandResult {
    let options = ReadOptions {
        delimiter: args.manifest.delimiter,
    };
    let mut checked = preflight::check(&args.manifest.manifest, options);
    let online = match args.offline {
        true => Online::offline(),
        false => check_online(&mut checked, args.api_key_file.as_deref()),
    };
    let status = match &online {
        _ if !checked.is_valid() => ExitStatus::Usage,
        Online {
            lookups: LookupStatus::Failed { .. },
            ..
        }
        | Online {
            records: RecordStatus::Failed { .. },
            ..
        }
        | Online {
            quota: Quota::Checked { enough: false, .. } | Quota::Failed { .. },
            ..
        } => ExitStatus::Stopped,
        _ => ExitStatus::Success,
    };
    let print = || -> io::Result<()> {
        let mut out = io::stdout().lock();
        if args.json {
            let report = JsonReport {
                manifest: checked.manifest.path.display().to_string(),
                valid: checked.is_valid(),
                lookups: &online.lookups,
                records: &online.records,
                quota: &online.quota,
                summary: &checked.summary,
                problems: &checked.manifest.problems,
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            // File names and the server's messages, escaped (see `terminal`).
            write_text(&mut Printable(&mut out), &checked, &online)?;
        }
        out.flush()
    };
    // A reader that closed stdout (`check m.csv | head`) does not change what was found.
    ignore_broken_pipe(print())?;
    Ok(status)
}

/// The readable report: the problems, then the summary lines (docs/check.md shows it): the
/// manifest's, what was found online, the result.
fn write_text(out: &mut impl Write, checked: &Checked, online: &Online) -> io::Result<()> {
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
    if s.links_to_attach > 0 {
        writeln!(
            out,
            "To link:   {} {} (no upload)",
            s.links_to_attach,
            plural(s.links_to_attach, "link", "links")
        )?;
    }
    if let Some(l) = &s.largest_file {
        writeln!(
            out,
            "Largest:   {} ({}, line {})",
            l.file,
            human_bytes(l.size),
            l.line
        )?;
    }
    write_online(out, checked, online)?;
    write_result(out, checked, online)
}

/// The report's lines on the contacts, the records and the storage.
fn write_online(out: &mut impl Write, checked: &Checked, online: &Online) -> io::Result<()> {
    let Online {
        lookups,
        records,
        quota,
    } = online;
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
    match records {
        RecordStatus::Checked(r) if r.records == 0 && r.rows_not_checked == 0 => {}
        RecordStatus::Offline => writeln!(out, "Records:   not read (--offline)")?,
        RecordStatus::NotChecked { reason } => writeln!(out, "Records:   not read: {reason}")?,
        RecordStatus::Checked(r) => writeln!(out, "Records:   {}", records::describe(r))?,
        RecordStatus::Failed { error } => writeln!(out, "Records:   the check failed: {error}")?,
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
    Ok(())
}

/// The report's last line: what the manifest's checks and the online ones come to.
fn write_result(out: &mut impl Write, checked: &Checked, online: &Online) -> io::Result<()> {
    let Online {
        lookups,
        records,
        quota,
    } = online;
    if matches!(lookups, LookupStatus::Failed { .. }) && checked.is_valid() {
        writeln!(
            out,
            "Result:    valid offline, but the contacts could not be looked up (see Contacts)"
        )?;
    } else if matches!(records, RecordStatus::Failed { .. }) && checked.is_valid() {
        writeln!(
            out,
            "Result:    valid offline, but the records could not be read (see Records)"
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
