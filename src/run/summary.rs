//! The end of a run: what happened to the rows, the exit status that says it, and the next
//! command to type (the exact command that resumes this run), for people and for `--json`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::config::RunConfig;
use super::execute::Executed;
use super::plan::Work;
use crate::ExitStatus;
use crate::checkpoint::{RowState, RunCounts};
use crate::failure::FailureKind;
use crate::lookup::Lookups;
use crate::pipeline::{Context, DEFAULT_BURST, DEFAULT_CONCURRENCY, DEFAULT_RATE, FormReuse};
use crate::pipeline::{DEFAULT_RETRIES, DEFAULT_STALL_TIMEOUT, Outcome, Stop};
use crate::preflight::human_bytes;
use crate::progress::human_duration;

/// Why a run stopped before every row had its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    Credentials,
    Quota,
    Interrupted,
    StateFile,
    Stalled,
}

/// The end of a run, for people and for `--json`.
#[derive(Serialize)]
pub struct Summary {
    manifest: String,
    state: String,
    rows: usize,
    done_before: usize,
    pub done_now: usize,
    /// Of `done_now`, the rows that attached a link (no upload).
    links_attached: usize,
    pub failed_permanent: usize,
    pub failed_retryable: usize,
    rejected: usize,
    not_started: usize,
    /// Rows `undo` took back, not uploaded again (`--redo-removed` does).
    removed: usize,
    changed_since_upload: Vec<ChangedFile>,
    failures: Vec<FailureLine>,
    /// Distinct emails the manifest names contacts by.
    contacts_by_email: usize,
    /// Emails looked up in this run that found exactly one contact.
    contacts_resolved: usize,
    /// Emails an earlier run resolved (from the state file; not looked up again).
    contacts_known: usize,
    /// Emails looked up in this run that found no contact, or several.
    contacts_not_found: usize,
    contacts_ambiguous: usize,
    bytes_uploaded: u64,
    elapsed_seconds: f64,
    pub api_calls: u64,
    pub retries: u64,
    pub throttles: u64,
    /// Notes recorded for note groups in this run (created, or adopted after a lost answer).
    notes_created: u64,
    notes_adopted: u64,
    /// Attachments pinned to their contacts in this run (`pin`): pinned now, or found pinned
    /// after an answer that was lost.
    pinned: u64,
    /// Upload forms fetched (step 1), and uploads that went on a form another had carried.
    forms_fetched: u64,
    uploads_on_reused_forms: u64,
    /// `on` (`--form-reuse auto`), `off` (`--form-reuse off`, or turned off for the state file by
    /// an earlier run), or `turned_off` (by this run: see `form_reuse_turned_off`).
    form_reuse: &'static str,
    form_reuse_turned_off: Option<String>,
    stopped: Option<Stopped>,
    /// Why the run stalled (`stopped` is then `"stalled"`), for the readable summary.
    #[serde(skip)]
    stall: Option<String>,
    #[serde(skip)]
    status: ExitStatus,
    exit_code: u8,
}

#[derive(Serialize)]
struct ChangedFile {
    line: u64,
    file: String,
}

#[derive(Serialize)]
struct FailureLine {
    line: u64,
    file: String,
    /// `failed`, or `rejected` (invalid in preflight, with `--skip-invalid`), or `done` for a
    /// row whose file is attached and whose pin failed (kind `pin_failed`).
    state: &'static str,
    kind: FailureKind,
    retryable: bool,
    message: String,
}

/// The rows' outcomes counted.
#[derive(Default)]
struct Tally {
    done_now: usize,
    failed_permanent: usize,
    failed_retryable: usize,
    not_started: usize,
    failures: Vec<FailureLine>,
}

impl Tally {
    /// The rows failed for good in earlier runs, then what happened in this one.
    fn of(work: &Work, executed: &Executed) -> Self {
        let mut t = Tally::default();
        for row in &work.failed_permanent {
            t.failed_permanent += 1;
            // A done row failed for good is one whose pin the API refused.
            let line = match row.state {
                RowState::Done => FailureLine {
                    line: row.line,
                    file: row.shown_file().to_string(),
                    state: "done",
                    kind: FailureKind::PinFailed,
                    retryable: false,
                    message: row.pin_error.clone().unwrap_or_default(),
                },
                _ => FailureLine {
                    line: row.line,
                    file: row.shown_file().to_string(),
                    state: "failed",
                    kind: row.error_kind.unwrap_or(FailureKind::Other),
                    retryable: false,
                    message: row.last_error.clone().unwrap_or_default(),
                },
            };
            t.failures.push(line);
        }
        // Rejected rows are listed too: a `rejected` count alone leaves a script to guess which
        // rows and why.
        for row in &work.rejected_rows {
            t.failures.push(FailureLine {
                line: row.line,
                file: row.shown_file().to_string(),
                state: "rejected",
                kind: row.error_kind.unwrap_or(FailureKind::Invalid),
                retryable: false,
                message: row.last_error.clone().unwrap_or_default(),
            });
        }
        t.done_now = executed.ended.done;
        t.not_started = executed.ended.not_started;
        for (row, outcome) in &executed.ended.failed {
            let Outcome::Failed {
                kind,
                retryable,
                message,
            } = outcome
            else {
                continue;
            };
            match retryable {
                true => t.failed_retryable += 1,
                false => t.failed_permanent += 1,
            }
            t.failures.push(FailureLine {
                line: row.line,
                file: row.shown_file().to_string(),
                state: match kind {
                    FailureKind::PinFailed => "done",
                    _ => "failed",
                },
                kind: *kind,
                retryable: *retryable,
                message: message.clone(),
            });
        }
        t.failures.sort_by_key(|f| f.line);
        // Rows cut short by an interruption have no outcome.
        t.not_started += work.todo().saturating_sub(executed.ended.rows);
        t
    }
}

/// The exit status of a run that ended so.
fn exit_status(stopped: Option<Stopped>, t: &Tally, rejected: usize) -> ExitStatus {
    match stopped {
        Some(Stopped::Interrupted) => ExitStatus::Interrupted,
        Some(Stopped::Stalled) => ExitStatus::Retryable,
        Some(_) => ExitStatus::Stopped,
        None if t.failed_permanent + rejected > 0 => ExitStatus::Failed,
        None if t.failed_retryable + t.not_started > 0 => ExitStatus::Retryable,
        None => ExitStatus::Success,
    }
}

impl Summary {
    pub fn new(
        cfg: &RunConfig,
        rows: usize,
        work: &Work,
        executed: &Executed,
        ctx: &Context,
        lookups: &Lookups,
    ) -> Self {
        let tally = Tally::of(work, executed);
        let stopped = match ctx.stop_reason() {
            Stop::None if executed.interrupted => Some(Stopped::Interrupted),
            Stop::None => None,
            Stop::Credentials => Some(Stopped::Credentials),
            Stop::Quota => Some(Stopped::Quota),
            Stop::StateFile => Some(Stopped::StateFile),
            Stop::Stalled => Some(Stopped::Stalled),
        };
        let status = exit_status(stopped, &tally, work.rejected);
        let c = ctx.counts();
        let (forms_fetched, uploads_on_reused_forms) = ctx.forms.counts();
        Summary {
            manifest: cfg.manifest.display().to_string(),
            state: cfg.state.display().to_string(),
            rows,
            done_before: work.already_done,
            done_now: tally.done_now,
            links_attached: executed.ended.links_done,
            failed_permanent: tally.failed_permanent,
            failed_retryable: tally.failed_retryable,
            rejected: work.rejected,
            not_started: tally.not_started,
            removed: work.removed,
            changed_since_upload: work
                .changed
                .iter()
                .map(|r| ChangedFile {
                    line: r.line,
                    file: r.file.clone(),
                })
                .collect(),
            failures: tally.failures,
            contacts_by_email: lookups.emails,
            contacts_resolved: lookups.resolved,
            contacts_known: lookups.known,
            contacts_not_found: lookups.not_found,
            contacts_ambiguous: lookups.ambiguous,
            bytes_uploaded: c.bytes_uploaded,
            elapsed_seconds: executed.elapsed.as_secs_f64(),
            api_calls: c.api_calls,
            retries: c.retries,
            throttles: c.throttles,
            notes_created: c.notes_created,
            notes_adopted: c.notes_adopted,
            pinned: c.pinned,
            forms_fetched,
            uploads_on_reused_forms,
            form_reuse: match (ctx.forms.turned_off(), ctx.settings.form_reuse) {
                (Some(_), _) => "turned_off",
                (None, FormReuse::Auto) => "on",
                (None, FormReuse::Off) => "off",
            },
            form_reuse_turned_off: ctx.forms.turned_off().map(str::to_string),
            stopped,
            stall: ctx.stall_detail().map(str::to_string),
            status,
            exit_code: status as u8,
        }
    }

    pub fn status(&self) -> ExitStatus {
        self.status
    }

    /// What the runs table keeps of this run.
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            rows_done: self.done_now as u64,
            rows_failed: (self.failed_permanent + self.failed_retryable) as u64,
            api_calls: self.api_calls,
            retries: self.retries,
            throttles: self.throttles,
        }
    }

    /// Prints the summary on stdout: one JSON document, or the readable lines and the next
    /// command to type.
    pub fn print(&self, cfg: &RunConfig) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if cfg.json {
            serde_json::to_writer_pretty(&mut out, self)?;
            return writeln!(out);
        }
        // The server's messages and the manifest's file names, escaped (see `terminal`).
        let mut out = crate::terminal::Printable(out);
        self.write_counts(&mut out)?;
        for f in &self.failures {
            let what = match (f.state, f.retryable) {
                ("rejected", _) => "was rejected",
                (_, true) => "failed retryable",
                (_, false) => "failed for good",
            };
            writeln!(
                out,
                "  line {}: {} {what}: {}: {}",
                f.line,
                crate::manifest::cut(&f.file),
                f.kind.describe(),
                f.message
            )?;
        }
        writeln!(out, "Result: {}", self.next_step(cfg))
    }

    fn write_counts(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "Run of {} (state {})", self.manifest, self.state)?;
        writeln!(out, "  rows:               {}", self.rows)?;
        writeln!(out, "  done before:        {}", self.done_before)?;
        writeln!(out, "  done in this run:   {}", self.done_now)?;
        if self.links_attached > 0 {
            writeln!(
                out,
                "  links attached:     {} (of those)",
                self.links_attached
            )?;
        }
        writeln!(out, "  failed for good:    {}", self.failed_permanent)?;
        writeln!(out, "  failed, retryable:  {}", self.failed_retryable)?;
        writeln!(out, "  rejected (invalid): {}", self.rejected)?;
        writeln!(out, "  not started:        {}", self.not_started)?;
        if self.removed > 0 {
            writeln!(
                out,
                "  removed by undo:    {} (not uploaded again; --redo-removed does)",
                self.removed
            )?;
        }
        if self.contacts_by_email > 0 {
            writeln!(
                out,
                "  contacts by email:  {} ({} resolved in this run, {} by an earlier run, {} not found, {} ambiguous)",
                self.contacts_by_email,
                self.contacts_resolved,
                self.contacts_known,
                self.contacts_not_found,
                self.contacts_ambiguous
            )?;
        }
        if self.notes_created > 0 {
            let adopted = match self.notes_adopted {
                0 => String::new(),
                n => format!(" ({n} adopted after a lost answer)"),
            };
            writeln!(out, "  notes created:      {}{adopted}", self.notes_created)?;
        }
        if self.pinned > 0 {
            writeln!(out, "  pinned:             {}", self.pinned)?;
        }
        writeln!(
            out,
            "  uploaded:           {} ({} bytes)",
            human_bytes(self.bytes_uploaded),
            self.bytes_uploaded
        )?;
        writeln!(
            out,
            "  elapsed:            {}",
            human_duration(Duration::from_secs_f64(self.elapsed_seconds))
        )?;
        writeln!(
            out,
            "  API calls:          {} ({} retries, {} throttled)",
            self.api_calls, self.retries, self.throttles
        )?;
        if self.forms_fetched > 0 {
            writeln!(
                out,
                "  upload forms:       {} fetched, {} uploads on a reused form (form reuse {})",
                self.forms_fetched,
                self.uploads_on_reused_forms,
                self.form_reuse.replace('_', " ")
            )?;
        }
        if let Some(why) = &self.form_reuse_turned_off {
            writeln!(
                out,
                "  form reuse turned off: {why}; this state file's later runs use one form per file"
            )?;
        }
        Ok(())
    }

    /// The `Result:` line: what happened, and the command to type next.
    fn next_step(&self, cfg: &RunConfig) -> String {
        let rerun = resume_command(cfg);
        match self.stopped {
            Some(Stopped::Credentials) => "stopped: the API refused the credentials; fix ONEPAGECRM_USER_ID / ONEPAGECRM_API_KEY, then rerun".to_string(),
            Some(Stopped::Interrupted) => format!("interrupted; the state is saved, rerun to resume: {rerun}"),
            Some(Stopped::StateFile) => format!("stopped: the state file could not be written (is the disk full or read-only?); fix it, then rerun: {rerun}"),
            Some(Stopped::Stalled) => format!(
                "stopped: {}; the state is saved, rerun later to resume (when the API answers again): {rerun}",
                self.stall.as_deref().unwrap_or("no API call succeeded for --stall-timeout")
            ),
            Some(Stopped::Quota) => format!("stopped: the account's storage is full; free some, then rerun: {rerun}"),
            None => match self.status {
                ExitStatus::Success if self.removed > 0 => format!(
                    "all rows done but {} that undo took back (--redo-removed uploads them again)",
                    self.removed
                ),
                ExitStatus::Success => "all rows done".to_string(),
                ExitStatus::Failed if self.pins_refused() > 0 => self.pins_refused_step(cfg),
                ExitStatus::Failed => {
                    let what = match (self.failed_permanent, self.rejected) {
                        (0, _) => "some rows are invalid (rejected)",
                        (_, 0) => "some rows failed for good",
                        _ => "some rows failed for good or are invalid",
                    };
                    let fix = format!(
                        "list them with `{}`, fix them there, then run that file",
                        report_command(cfg)
                    );
                    // Rows still to finish go first: a fix file of rows whose attach may have
                    // taken effect would attach them again under another state file.
                    match self.failed_retryable + self.not_started {
                        0 => format!("{what}: {fix}"),
                        // The command last, so that the line ends with what to paste.
                        _ => format!(
                            "{what}: once the others are done, {fix}; some rows are not done yet: rerun first to finish them: {rerun}"
                        ),
                    }
                }
                _ => format!("some rows are not done yet; rerun to finish: {rerun}"),
            },
        }
    }
}

impl Summary {
    /// Rows whose pin the API refused for good (their files are attached).
    fn pins_refused(&self) -> usize {
        self.failures
            .iter()
            .filter(|f| f.kind == FailureKind::PinFailed && !f.retryable)
            .count()
    }

    /// The `Result:` line of a run some of whose pins were refused: a rerun of this state file
    /// with `--retry-failed` pins them (a fix file, a state file of its own, would upload their
    /// files again), and a report lists the other rows failed for good, if any.
    fn pins_refused_step(&self, cfg: &RunConfig) -> String {
        let mut retry = resume_command(cfg);
        if !cfg.choices.retry_failed {
            retry.push_str(" --retry-failed");
        }
        let pins = format!(
            "the API refused to pin the attachments of {} rows (their files are attached); once the cause is fixed, pin them with a rerun of this state file, which finishes the other rows too",
            self.pins_refused()
        );
        match self.failed_permanent + self.rejected - self.pins_refused() {
            0 => format!("{pins}: {retry}"),
            _ => format!(
                "{pins}; other rows failed for good or are invalid: list them with `{}` and fix them there; rerun first: {retry}",
                report_command(cfg)
            ),
        }
    }
}

/// A path as a command to paste anywhere names it: absolute (the command may be typed in another
/// folder than the run's).
fn anywhere(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// This program as the next command should name it: as it was started. A bare name (found on
/// `PATH`) stays bare; a path (`target/release/opcrm-import`, or what `cargo run` starts) is made
/// absolute, as the manifest is, so that the command works from any folder.
pub fn program() -> String {
    let Some(argv0) = std::env::args_os().next() else {
        return "opcrm-import".into();
    };
    match Path::new(&argv0).components().count() > 1 {
        true => shell_quote(anywhere(Path::new(&argv0)).as_os_str()),
        false => shell_quote(&argv0),
    }
}

/// `s` as one word of a POSIX shell command: as it is when that is safe, else in single quotes.
fn shell_quote(s: &std::ffi::OsStr) -> String {
    let text = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.into_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The flags of this run that a command resuming it must repeat: the state file, how the
/// manifest is read, where the key comes from, and every flag that changes what is sent or how.
fn resume_flags(cfg: &RunConfig) -> Vec<String> {
    let mut flags = Vec::new();
    let mut path = |flag: &str, value: &Path| {
        let value = match value.as_os_str() == ":memory:" {
            true => value.to_path_buf(),
            false => anywhere(value),
        };
        flags.push(format!("{flag} {}", shell_quote(value.as_os_str())));
    };
    if let Some(state) = &cfg.state_given {
        path("--state", state);
    }
    if let Some(key_file) = &cfg.api_key_file {
        path("--api-key-file", key_file);
    }
    let delimiter = cfg.read.delimiter;
    if delimiter != b',' {
        let d = match delimiter {
            b'\t' => "tab".to_string(),
            d => shell_quote(std::ffi::OsStr::new(&char::from(d).to_string())),
        };
        flags.push(format!("--delimiter {d}"));
    }
    let s = &cfg.settings;
    if s.rate != Some(DEFAULT_RATE) {
        flags.push(format!("--rate {}", crate::cli::Rate(s.rate)));
    }
    if s.stall_timeout != Some(DEFAULT_STALL_TIMEOUT) {
        let t = crate::cli::StallTimeout(s.stall_timeout);
        flags.push(format!("--stall-timeout {t}"));
    }
    for (flag, value, default) in [
        ("--burst", s.burst, DEFAULT_BURST),
        (
            "--concurrency",
            s.concurrency as u32,
            u32::from(DEFAULT_CONCURRENCY),
        ),
        ("--retries", s.retries, DEFAULT_RETRIES),
    ] {
        if value != default {
            flags.push(format!("{flag} {value}"));
        }
    }
    // Not `--settle-window`: a rerun with the default window only waits longer for a listing
    // that lags, never sends anything twice.
    if s.form_reuse == FormReuse::Off {
        flags.push("--form-reuse off".into());
    }
    let c = &cfg.choices;
    for (flag, on) in [
        ("--skip-invalid", c.skip_invalid),
        ("--retry-failed", c.retry_failed),
        ("--reupload-changed", c.reupload_changed),
    ] {
        if on {
            flags.push(flag.into());
        }
    }
    flags
}

/// The exact command that resumes this run, ready to paste into a shell.
pub fn resume_command(cfg: &RunConfig) -> String {
    let mut words = vec![
        format!("{} run", program()),
        shell_quote(anywhere(&cfg.manifest).as_os_str()),
    ];
    words.extend(resume_flags(cfg));
    words.join(" ")
}

/// The command that lists this run's failed rows as a manifest to fix.
fn report_command(cfg: &RunConfig) -> String {
    let target = match &cfg.state_given {
        Some(state) => format!("--state {}", shell_quote(anywhere(state).as_os_str())),
        None => shell_quote(anywhere(&cfg.manifest).as_os_str()),
    };
    format!("{} report {target} --only failed -o fix.csv", program())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_the_shell_needs_it() {
        let q = |s: &str| shell_quote(std::ffi::OsStr::new(s));
        assert_eq!(q("a/b-c_d.csv"), "a/b-c_d.csv");
        assert_eq!(q("my state.sqlite"), "'my state.sqlite'");
        assert_eq!(q("o'brien"), r"'o'\''brien'");
        assert_eq!(q("$HOME;rm"), "'$HOME;rm'");
        assert_eq!(q(""), "''");
    }
}
