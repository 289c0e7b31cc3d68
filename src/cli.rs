//! The command line, as DESIGN.md fixes it: clap derive, help text from these doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Migrate local documents into OnePageCRM from a CSV manifest: check it, upload every file through
/// OnePageCRM's three-step attachment flow, and resume exactly where a stopped run left off.
#[derive(Debug, Parser)]
#[command(name = "opcrm-import", version, about, long_about = None, after_help = TOP_AFTER)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Cli {
    /// Whether the command was asked for one JSON document on stdout (`--json`): then whatever
    /// stops it says so in that document too.
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Check(a) => a.json,
            Command::Run(a) => a.json,
            Command::Status(a) => a.json,
            Command::Undo(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Rehearse(a) => a.json,
            _ => false,
        }
    }
}

/// Where logs go and how much of them; they never hold the API key, a policy or a signature.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// More log lines: -v for each row's retries and decisions, -vv for every request.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true, help_heading = "Logging")]
    pub verbose: u8,

    /// Write the log to this file (appended) instead of stderr.
    #[arg(long, value_name = "FILE", global = true, help_heading = "Logging")]
    pub log_file: Option<PathBuf>,

    /// The log's format: `text`, or `json` (one object per line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true, help_heading = "Logging")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The environment of the commands that call the API.
macro_rules! api_env {
    () => {
        "Environment:
  ONEPAGECRM_USER_ID   the OnePageCRM user id the API key belongs to
  ONEPAGECRM_API_KEY   the API key (or --api-key-file FILE); never on the command line
  ONEPAGECRM_API_URL   the API to use (default https://app.onepagecrm.com/api/v3; the
                       emulator's URL to rehearse against it)
  OPCRM_LOG            a log filter (for example `debug`); wins over -v"
    };
}

const CHECK_AFTER: &str = concat!(
    api_env!(),
    "

Exit codes: 0 valid (warnings allowed); 2 not valid (every problem listed); 3 an online check could
not be made, or the storage left is short."
);

const RUN_AFTER: &str = concat!(
    api_env!(),
    "

Exit codes: 0 every row done; 1 some rows failed for good (fix them, then rerun); 2 usage error or
invalid manifest, nothing uploaded; 3 credentials, quota or configuration stopped it; 4 only
retryable failures remain, or it stalled: rerun; 130 interrupted: the state is saved, rerun."
);

const UNDO_AFTER: &str = concat!(
    api_env!(),
    "

Exit codes: 0 everything asked was deleted (or nothing was to be); 1 something was not (named: undo
again), rows in doubt were left, or the question was answered no; 2 refused (no state file, a bad
--lines, no --yes off a terminal); 3 it could not start or go on (credentials, the state file
locked by a run)."
);

const VERIFY_AFTER: &str = concat!(
    api_env!(),
    "

Exit codes: 0 the account holds what the state file says; 1 some line or note does not (each
named); 2 no state file; 3 it could not check (credentials, a state file of another manifest, a
record that could not be read)."
);

const READ_AFTER: &str = "Environment:
  OPCRM_LOG            a log filter (for example `debug`); wins over -v

Exit codes: 0 done; 2 no state file (or bad arguments); 3 the state file cannot be read.";

const DEMO_AFTER: &str = "Environment: none needed (no credentials; nothing leaves this machine).

Exit codes: 0 the samples ran as they should; anything else is a bug of this tool: please report it.";

const WRITE_AFTER: &str = "Exit codes: 0 written; 2 it could not be written.";

const TOP_AFTER: &str = concat!(
    api_env!(),
    "

Exit codes: 0 done; 1 finished with failures for good; 2 usage error or invalid input, nothing sent;
3 stopped by credentials, quota or configuration; 4 only retryable failures left (rerun); 130
interrupted (rerun). Each command's --help says what its own mean.

Example: opcrm-import check manifest.csv && opcrm-import run manifest.csv"
);

const REHEARSE_AFTER: &str =
    "Environment: none needed (no credentials; nothing leaves this machine).

Exit codes: 0 every row would be done; 1 some rows would fail for good; 2 the manifest
is not valid (every problem listed, as `check` lists them); 4 only retryable failures.";

const EMULATOR_AFTER: &str = "Environment:
  ONEPAGECRM_USER_ID, ONEPAGECRM_API_KEY   the credentials it accepts (default: the demo's, printed)
  OPCRM_LOG            a log filter (for example `debug`); wins over -v

Exit codes: 0 stopped by Ctrl-C; 2 a refused address, seed or setting.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a manifest and every file it names, without uploading anything.
    ///
    /// Every problem of every row is reported with its line number; then, unless --offline and
    /// when credentials are set, the API is asked for the contacts named by email, for the
    /// records the rows attach to (each must exist and be the row's contact's), and whether the
    /// storage left covers the files. Exit 0 when valid (warnings allowed), 2 when not, 3 when
    /// an online check could not be made or the storage is short.
    ///
    /// Example: opcrm-import check samples/manifest.csv
    #[command(after_help = CHECK_AFTER)]
    Check(CheckArgs),
    /// Upload every row of a manifest, resuming where the last run stopped.
    ///
    /// Checks the manifest and the storage quota first; records every row in the state file;
    /// then takes each row through the three steps. Credentials come from ONEPAGECRM_USER_ID and
    /// ONEPAGECRM_API_KEY (or --api-key-file), never from the command line.
    ///
    /// Example: opcrm-import run samples/manifest.csv
    #[command(after_help = RUN_AFTER)]
    Run(RunArgs),
    /// Show how far a migration has got: rows by state, bytes, failures by kind, the runs.
    ///
    /// Reads the state file without changing it; safe while a run is going on.
    ///
    /// Example: opcrm-import status samples/manifest.csv
    #[command(after_help = READ_AFTER)]
    Status(StatusArgs),
    /// Write the rows of a migration as CSV.
    ///
    /// `--only failed` writes a manifest of the rows still to fix (with `error_kind` and `error`
    /// columns that `check` and `run` ignore): fix it, then run it.
    ///
    /// Example: opcrm-import report samples/manifest.csv --only failed -o fix.csv
    #[command(after_help = READ_AFTER)]
    Report(ReportArgs),
    /// Delete from OnePageCRM exactly what a migration's state file made: its attachments, then
    /// the notes it created that then hold no attachment.
    ///
    /// Nothing else is ever deleted: attachments by the ids the state file recorded, a note only
    /// when its listing shows no attachment (one that holds files someone else added is kept and
    /// named). Each delete's intent is recorded first, so an undo cut short resumes where it
    /// stopped and deletes nothing twice. Asks before deleting (--yes when not on a terminal);
    /// --dry-run lists what it would delete. Exit 0 when everything asked was deleted, 1 when
    /// something was not (named), 3 when it could not start. A deleted file's stored copy is kept
    /// by OnePageCRM for a while: the storage is not given back at once. `run` leaves removed
    /// rows alone unless --redo-removed.
    ///
    /// Example: opcrm-import undo samples/manifest.csv --dry-run
    #[command(after_help = UNDO_AFTER)]
    Undo(UndoArgs),
    /// Check the live account against the state file, line by line.
    ///
    /// Reads each record the done rows attach to once (through the run's rate limit, throttle
    /// gate and retries): the attachment recorded must be there with its name and size, a note
    /// the tool created there with its text, and no other attachment of a row's name and size
    /// beside it. One verdict per line: ok, missing, changed or duplicate. Exit 0 when all are
    /// ok, 1 when not, 3 when the account could not be read.
    ///
    /// Example: opcrm-import verify samples/manifest.csv
    #[command(after_help = VERIFY_AFTER)]
    Verify(VerifyArgs),
    /// Rehearse your own migration, whole, offline: against the built-in emulator seeded from
    /// the manifest itself.
    ///
    /// The emulator gets every contact the manifest names (by id; each email becomes one
    /// contact), every record its rows attach to, and room for every file; then the migration
    /// runs as `run` runs it (its checks, progress and summary) on a temporary state file, and
    /// what the account would hold is shown, with how long the real run takes at OnePageCRM's
    /// rate. Needs no credentials; nothing leaves this machine; the migration's own state file is
    /// not touched. A copy of the files' bytes is kept in a temporary folder until it ends.
    ///
    /// Example: opcrm-import rehearse manifest.csv
    #[command(after_help = REHEARSE_AFTER)]
    Rehearse(RehearseArgs),
    /// Serve a OnePageCRM API and S3 emulator on loopback, for rehearsals and tests.
    ///
    /// Prints one line when ready, with the API base URL, the S3 URL and the credentials it
    /// accepts; serves until Ctrl-C.
    ///
    /// Example: opcrm-import emulator --seed samples/emulator-seed.json --listen 127.0.0.1:0
    #[command(after_help = EMULATOR_AFTER)]
    Emulator(EmulatorArgs),
    /// Run the sample migrations against an in-process emulator, twice each, and show the result.
    ///
    /// Starts the emulator with samples/emulator-seed.json, runs samples/manifest.csv with a
    /// temporary state file, runs it again to show that nothing is sent twice, does the same with
    /// samples/from-another-crm.csv (contacts by email), and lists what the emulator then holds.
    /// Needs no credentials and sends nothing off this machine.
    ///
    /// Example: opcrm-import demo
    #[command(after_help = DEMO_AFTER)]
    Demo,
    /// Print the manual page (roff) of opcrm-import and its commands, or write one page per
    /// command into a folder.
    ///
    /// Example: opcrm-import man --dir ~/.local/share/man/man1 && man opcrm-import-run
    #[command(after_help = WRITE_AFTER)]
    Man {
        /// Write `opcrm-import.1` and one `opcrm-import-<command>.1` per command into this folder
        /// (made if missing) instead of printing the main page.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script.
    ///
    /// Example: opcrm-import completions bash > ~/.local/share/bash-completion/completions/opcrm-import
    #[command(after_help = WRITE_AFTER)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How the manifest is read; shared by every command that reads one.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The CSV manifest. Paths in it resolve against the manifest's folder.
    pub manifest: PathBuf,

    /// Field delimiter: `,` (default), `;`, `tab`, or any other single ASCII character.
    #[arg(long, short = 'd', default_value = ",", value_parser = parse_delimiter, help_heading = "Input")]
    pub delimiter: u8,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// Make no network call: no lookup by email, no record read, no storage-quota check.
    #[arg(long, help_heading = "Input")]
    pub offline: bool,

    /// Print one JSON document on stdout instead of the readable report.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// Read the API key from this file instead of ONEPAGECRM_API_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// The checkpoint file; default `<manifest without .csv>.opcrm.sqlite` beside the manifest.
    #[arg(long, value_name = "FILE", help_heading = "State")]
    pub state: Option<PathBuf>,

    /// Rows under way at once (and so S3 uploads at once).
    #[arg(long, value_name = "N", default_value_t = crate::pipeline::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256), help_heading = "Rate and retries")]
    pub concurrency: u16,

    /// API requests per second, on average (`off`: no client-side limit, for the emulator).
    #[arg(long, value_name = "R|off", default_value_t = Rate(Some(crate::pipeline::DEFAULT_RATE)), value_parser = parse_rate, help_heading = "Rate and retries")]
    // Spelt out so that clap takes `off` (None) as a parsed value, not as a missing flag.
    pub rate: Rate,

    /// API requests the client may send at once after a pause.
    #[arg(long, value_name = "B", default_value_t = crate::pipeline::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Rate and retries")]
    pub burst: u32,

    /// `auto`: a contact's upload form carries its next files while the form's policy allows
    /// it (about one API call per file instead of two); `off`: one form per file.
    #[arg(long, value_name = "auto|off", value_enum, default_value_t = crate::pipeline::FormReuse::Auto, help_heading = "Rate and retries")]
    pub form_reuse: crate::pipeline::FormReuse,

    /// Retries of a row's retryable failures (5xx, timeouts, dropped connections) in one run.
    #[arg(long, value_name = "N", default_value_t = crate::pipeline::DEFAULT_RETRIES, help_heading = "Rate and retries")]
    pub retries: u32,

    /// Stop the run (exit 4, state saved) when no API call has succeeded for this long: seconds,
    /// or with a unit (`90s`, `10m`, `1h`); `off` never stops.
    #[arg(long, value_name = "T|off", default_value_t = StallTimeout(Some(crate::pipeline::DEFAULT_STALL_TIMEOUT)), value_parser = parse_stall_timeout, help_heading = "Rate and retries")]
    // Spelt out so that clap takes `off` (None) as a parsed value, not as a missing flag.
    pub stall_timeout: StallTimeout,

    /// Show what a run would do (and check the quota) without uploading anything.
    #[arg(long, help_heading = "What to upload")]
    pub dry_run: bool,

    /// Record invalid rows as rejected and upload the valid ones.
    #[arg(long, help_heading = "What to upload")]
    pub skip_invalid: bool,

    /// Also retry rows that failed for good in an earlier run (and pins the API refused).
    #[arg(long, help_heading = "What to upload")]
    pub retry_failed: bool,

    /// Upload again a done row whose file changed since (it gets a second attachment).
    #[arg(long, help_heading = "What to upload")]
    pub reupload_changed: bool,

    /// Upload again the rows `undo` took back (without it they are counted as removed and left).
    #[arg(long, help_heading = "What to upload")]
    pub redo_removed: bool,

    /// After a lost answer, how long the record (or the contact's notes) is read again, with
    /// growing waits (5 s, 15 s, 45 s, ...), before the row is sent again: a listing may show a
    /// write late. Seconds or with a unit (`90s`, `2m`); `0` sends again at once.
    #[arg(long, value_name = "T", env = "OPCRM_SETTLE_WINDOW", default_value_t = SettleWindow(crate::pipeline::DEFAULT_SETTLE_WINDOW), value_parser = parse_settle_window, help_heading = "Rate and retries")]
    pub settle_window: SettleWindow,

    /// Take over a state file that belongs to this manifest at another path (the manifest was
    /// moved or renamed); its done rows stay done.
    #[arg(long, help_heading = "State")]
    pub adopt_state: bool,

    /// Print the summary as one JSON document on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, help_heading = "Output")]
    pub no_progress: bool,

    /// Read the API key from this file instead of ONEPAGECRM_API_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub api_key_file: Option<PathBuf>,

    /// After Ctrl-C or SIGTERM, seconds the rows under way get to finish (no new row starts).
    #[arg(long, value_name = "SECS", default_value_t = crate::defaults::DEFAULT_GRACE.as_secs(), help_heading = "Rate and retries")]
    pub grace: u64,
}

/// `--rate`: requests per second, or `None` for `off`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub Option<f64>);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{r}"),
            None => f.write_str("off"),
        }
    }
}

/// `--stall-timeout`: how long, or `None` for `off`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StallTimeout(pub Option<std::time::Duration>);

impl std::fmt::Display for StallTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.map(|d| d.as_secs()) {
            None => f.write_str("off"),
            Some(s) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            Some(s) if s % 60 == 0 => write!(f, "{}m", s / 60),
            Some(s) => write!(f, "{s}s"),
        }
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "off" {
        return Ok(Rate(None));
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 10_000.0 => Ok(Rate(Some(r))),
        _ => Err(format!(
            "{s:?} is not a rate: give requests per second above 0, or off"
        )),
    }
}

/// `600`, `90s`, `10m`, `1h`, or `off` (None).
fn parse_stall_timeout(s: &str) -> Result<StallTimeout, String> {
    if s == "off" {
        return Ok(StallTimeout(None));
    }
    match parse_seconds(s) {
        Some(d) if !d.is_zero() => Ok(StallTimeout(Some(d))),
        _ => Err(format!(
            "{s:?} is not a stall timeout: give seconds (600) or a number with s, m or h (90s, 10m, 1h), up to a week, or off"
        )),
    }
}

/// `--settle-window`: how long a lost answer's record is read again before the row is resent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SettleWindow(pub std::time::Duration);

impl std::fmt::Display for SettleWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_secs() {
            s if s > 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

/// `120`, `90s`, `2m`, `1h`, or `0`.
fn parse_settle_window(s: &str) -> Result<SettleWindow, String> {
    parse_seconds(s).map(SettleWindow).ok_or_else(|| {
        format!(
            "{s:?} is not a settle window: give seconds (120) or a number with s, m or h (90s, 2m), up to a week"
        )
    })
}

/// Seconds, or a whole number with `s`, `m` (`min`) or `h`, up to a week.
fn parse_seconds(s: &str) -> Option<std::time::Duration> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let seconds = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return None,
    };
    match number.parse::<u64>() {
        Ok(n) if n <= 7 * 24 * 3600 / seconds => Some(std::time::Duration::from_secs(n * seconds)),
        _ => None,
    }
}

#[derive(Debug, Args)]
pub struct RehearseArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// Rehearse the valid rows, the invalid ones recorded as rejected (as `run --skip-invalid`).
    #[arg(long, help_heading = "What to upload")]
    pub skip_invalid: bool,

    /// Print the run's summary as one JSON document on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, help_heading = "Output")]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest whose state file to read (`<manifest without .csv>.opcrm.sqlite`).
    pub manifest: Option<PathBuf>,

    /// The state file to read.
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    pub state: Option<PathBuf>,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UndoArgs {
    /// The manifest whose state file to undo (`<manifest without .csv>.opcrm.sqlite`).
    pub manifest: Option<PathBuf>,

    /// The state file to undo (instead of the manifest's).
    #[arg(long, value_name = "FILE", help_heading = "State")]
    pub state: Option<PathBuf>,

    /// List what would be deleted, and the calls and time it takes; delete nothing.
    #[arg(long, help_heading = "What to delete")]
    pub dry_run: bool,

    /// Delete without asking (needed when not on a terminal).
    #[arg(long, help_heading = "What to delete")]
    pub yes: bool,

    /// Only the rows of these manifest lines (for example `3,7-9`); a created note is deleted
    /// only once none of its rows holds an attachment.
    #[arg(long, value_name = "LIST", value_parser = parse_lines, help_heading = "What to delete")]
    pub lines: Option<Lines>,

    /// API requests per second, on average (`off`: no client-side limit, for the emulator).
    #[arg(long, value_name = "R|off", default_value_t = Rate(Some(crate::pipeline::DEFAULT_RATE)), value_parser = parse_rate, help_heading = "Rate and retries")]
    pub rate: Rate,

    /// API requests the client may send at once after a pause.
    #[arg(long, value_name = "B", default_value_t = crate::pipeline::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Rate and retries")]
    pub burst: u32,

    /// Retries of a delete's retryable failures (5xx, timeouts, dropped connections).
    #[arg(long, value_name = "N", default_value_t = crate::pipeline::DEFAULT_RETRIES, help_heading = "Rate and retries")]
    pub retries: u32,

    /// Print the outcome as one JSON document on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// Read the API key from this file instead of ONEPAGECRM_API_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub api_key_file: Option<PathBuf>,
}

/// `--lines`: manifest line numbers, as ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines(pub Vec<std::ops::RangeInclusive<u64>>);

impl Lines {
    pub fn contains(&self, line: u64) -> bool {
        self.0.iter().any(|r| r.contains(&line))
    }
}

fn parse_lines(s: &str) -> Result<Lines, String> {
    let number = |n: &str| {
        n.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{n:?} is not a line number (1, 2, ...)"))
    };
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => number(a)?..=number(b)?,
            None => number(part).map(|n| n..=n)?,
        };
        if range.is_empty() {
            return Err(format!("{part:?} runs backwards"));
        }
        ranges.push(range);
    }
    Ok(Lines(ranges))
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The manifest whose state file to read (`<manifest without .csv>.opcrm.sqlite`).
    pub manifest: Option<PathBuf>,

    /// The state file to read.
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    pub state: Option<PathBuf>,

    /// Which rows: `failed` (failed and rejected; the CSV is a manifest to fix and run), `done`,
    /// or `all`.
    #[arg(long, value_enum, default_value_t = ReportOnly::All)]
    pub only: ReportOnly,

    /// Write the CSV to this file instead of stdout (its `file` paths are relative to its folder).
    /// Never the state file or the manifest; an existing file only if it is a report.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Replace the `-o` file even when it is not a report this tool wrote.
    #[arg(long, requires = "output")]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportOnly {
    Failed,
    Done,
    All,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The manifest whose state file to check (`<manifest without .csv>.opcrm.sqlite`).
    pub manifest: PathBuf,

    /// The state file to check; default `<manifest without .csv>.opcrm.sqlite` beside the manifest.
    #[arg(long, value_name = "FILE", help_heading = "State")]
    pub state: Option<PathBuf>,

    /// Print one JSON document on stdout: every problem, and the counts.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, help_heading = "Output")]
    pub no_progress: bool,

    /// API requests per second, on average (`off`: no client-side limit, for the emulator).
    #[arg(long, value_name = "R|off", default_value_t = Rate(Some(crate::pipeline::DEFAULT_RATE)), value_parser = parse_rate, help_heading = "Rate and retries")]
    pub rate: Rate,

    /// API requests the client may send at once after a pause.
    #[arg(long, value_name = "B", default_value_t = crate::pipeline::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=100), help_heading = "Rate and retries")]
    pub burst: u32,

    /// Retries of a read's retryable failures (5xx, timeouts, dropped connections).
    #[arg(long, value_name = "N", default_value_t = crate::pipeline::DEFAULT_RETRIES, help_heading = "Rate and retries")]
    pub retries: u32,

    /// Read the API key from this file instead of ONEPAGECRM_API_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; loopback only. Port 0 picks a free port (printed when ready).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,

    /// Contacts, records and storage to start with (format: samples/README.md).
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,

    /// The API throttle per client: R requests/s on average in bursts of B, or `off`.
    #[arg(long, value_name = "R/B|off", default_value = "5/10", value_parser = crate::emulator::faults::parse_rate_limit)]
    // Spelt out so that clap takes `off` (None) as a parsed value, not as a missing flag.
    pub rate_limit: std::option::Option<crate::emulator::faults::RateLimit>,

    /// How the throttle reads R/B: `rack` (OnePageCRM's: a leaky bucket leaking R/s that every
    /// request, refused ones too, fills by 1 up to B; refused at B, so B-1 pass in a burst),
    /// `gcra` (B in a burst, then one every 1/R s) or `window` (at most B accepted in any B/R s).
    #[arg(long, value_enum, value_name = "MODEL", default_value_t = crate::emulator::faults::ThrottleModel::Rack)]
    pub throttle_model: crate::emulator::faults::ThrottleModel,

    /// Step 3 refuses (400, naming `key`) a second key made from one step-1 answer's timestamp:
    /// one form, one upload.
    #[arg(long)]
    pub single_use_forms: bool,

    /// Share of requests answered with an error (API 500, S3 503 SlowDown), 0 to 1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_rate: f64,

    /// Share of requests whose connection closes without an answer (half of them after the
    /// request took effect), 0 to 1.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub drop_rate: f64,

    /// Hold each request MIN..MAX milliseconds before answering.
    #[arg(long, value_name = "MIN..MAX", value_parser = crate::emulator::faults::parse_latency)]
    pub latency_ms: Option<(u64, u64)>,

    /// Seed of the fault generator: the same seed gives the same faults to the same requests.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fault_seed: u64,

    /// The Nth request of one route meets a fault, whatever the rates draw: `METHOD /route:N:FAULT`
    /// with N as `N`, `N-M` or `N-`, FAULT `error`, `drop-before`, `drop-after`, `late` (the
    /// clock first moves past a form's life) or `expired` (step 1 only: the form handed out has
    /// already expired) (repeatable; e.g. 'POST /api/v3/attachments:1:drop-after' loses the first
    /// attach's answer, 'POST /{bucket}/:1:late' makes the first upload's form expire).
    #[arg(long, value_name = "SPEC", value_parser = crate::emulator::faults::parse_fault_at)]
    pub fault_at: Vec<crate::emulator::faults::PlannedFault>,

    /// How the attachments' `url` is made: `presigned` (a SigV4 presigned GET of the object, as
    /// OnePageCRM's S3-hosted links are) or `opaque` (a link that does not show the object's key).
    #[arg(long, value_enum, value_name = "STYLE", default_value_t = crate::emulator::AttachmentUrls::Presigned)]
    pub attachment_urls: crate::emulator::AttachmentUrls,

    /// Attachments' `url` names only the file, as the API's documented example: no object key.
    ///
    /// The link is `<origin>/_emulator/files/<id>/<name>` and serves the file; the same as
    /// `--attachment-urls opaque`.
    #[arg(long, conflicts_with = "attachment_urls")]
    pub opaque_links: bool,

    /// Every step-1 answer carries this `timestamp` (Unix seconds) instead of the clock's: for
    /// rehearsing two uploads of one name to one contact in the same second.
    #[arg(long, value_name = "UNIX_SECS")]
    pub form_timestamp: Option<i64>,

    /// Listings hide notes and attachments younger than SECS by the emulator's clock.
    ///
    /// As a server whose lists lag behind its writes: judged by their `created_at`; `GET
    /// /notes/{id}` of a young note still answers; /_emulator/state shows everything. 0 hides
    /// nothing.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub list_lag: u32,

    /// A deleted attachment's bytes count against the storage until SECS after its deletion.
    ///
    /// By the emulator's clock (`POST /_emulator/clock` moves it), as OnePageCRM keeps deleted
    /// files a while. Default: never given back.
    #[arg(long, value_name = "SECS")]
    pub purge_after: Option<u64>,

    /// Start the emulator's clock SECS seconds ahead of this machine's (behind when negative).
    ///
    /// E.g. -7200. Everything it stamps or judges follows it: `timestamp`, `created_at`, forms'
    /// `x-amz-date` and expiration, presigned links. At most ten years either way; not with
    /// --s3-endpoint.
    #[arg(long, value_name = "SECS", default_value_t = 0, allow_negative_numbers = true, value_parser = parse_clock_offset)]
    pub clock_offset: i64,

    /// Every API answer's `timestamp` in Unix milliseconds (13 digits) instead of seconds, step 1's
    /// too (and `--form-timestamp`'s, given in seconds): as some servers answer.
    #[arg(long, conflicts_with = "no_timestamp")]
    pub timestamp_ms: bool,

    /// API answers carry no `timestamp` at all.
    #[arg(long, conflicts_with = "form_timestamp")]
    pub no_timestamp: bool,

    /// How long an upload form stays valid, in seconds (short values make forms expire).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub form_ttl: u64,

    /// Keep uploaded objects in this folder instead of in memory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Hand out forms for this S3 server instead of the built-in endpoint (loopback, path-style
    /// buckets, e.g. http://127.0.0.1:9000); step 3 then asks it whether the object is there.
    #[arg(long, value_name = "URL", help_heading = "External S3",
          requires_all = ["s3_bucket", "s3_access_key", "s3_secret_key"], conflicts_with = "data_dir")]
    pub s3_endpoint: Option<String>,

    /// The external server's bucket the forms upload into (it must exist).
    #[arg(
        long,
        value_name = "BUCKET",
        help_heading = "External S3",
        requires = "s3_endpoint"
    )]
    pub s3_bucket: Option<String>,

    /// The external server's access key.
    #[arg(
        long,
        value_name = "KEY",
        help_heading = "External S3",
        env = "OPCRM_EMULATOR_S3_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_access_key: Option<String>,

    /// The external server's secret key; prefer the environment variable, as other users of
    /// the machine can read a command line.
    #[arg(
        long,
        value_name = "SECRET",
        help_heading = "External S3",
        env = "OPCRM_EMULATOR_S3_SECRET_KEY",
        hide_env_values = true
    )]
    pub s3_secret_key: Option<crate::emulator::external::Secret>,

    /// The region the forms and requests are signed for.
    #[arg(
        long,
        value_name = "REGION",
        help_heading = "External S3",
        default_value = "us-east-1"
    )]
    pub s3_region: String,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

/// Whole seconds, signed, at most `emulator::clock::MAX_OFFSET` either way.
fn parse_clock_offset(s: &str) -> Result<i64, String> {
    let max = crate::emulator::clock::MAX_OFFSET.as_secs() as i64;
    match s.parse::<i64>() {
        Ok(n) if (-max..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a whole number of seconds from -{max} to {max} (about ten years)"
        )),
    }
}

/// Accepts a single ASCII character, or the words `tab`, `comma`, `semicolon`, `pipe`.
fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "tab" | "\\t" | "\t" => return Ok(b'\t'),
        "comma" => return Ok(b','),
        "semicolon" => return Ok(b';'),
        "pipe" => return Ok(b'|'),
        _ => {}
    }
    match s.as_bytes() {
        [b'"' | b'\n' | b'\r'] => Err(format!("{s:?} cannot be a delimiter")),
        [b] if b.is_ascii() && !b.is_ascii_alphanumeric() => Ok(*b),
        _ => Err(format!(
            "{s:?} is not a delimiter; use one ASCII character such as `,`, `;` or `tab`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_shown_by_help_parse_back_to_the_constants() {
        let rate = Rate(Some(crate::pipeline::DEFAULT_RATE));
        assert_eq!(parse_rate(&rate.to_string()), Ok(rate));
        let stall = StallTimeout(Some(crate::pipeline::DEFAULT_STALL_TIMEOUT));
        assert_eq!(stall.to_string(), "10m");
        assert_eq!(parse_stall_timeout(&stall.to_string()), Ok(stall));
        assert_eq!(parse_rate("off"), Ok(Rate(None)));
    }

    #[test]
    fn stall_timeouts_take_seconds_units_or_off() {
        let secs = |n| Ok(StallTimeout(Some(std::time::Duration::from_secs(n))));
        assert_eq!(parse_stall_timeout("600"), secs(600));
        assert_eq!(parse_stall_timeout("30s"), secs(30));
        assert_eq!(parse_stall_timeout("5m"), secs(300));
        assert_eq!(parse_stall_timeout("10min"), secs(600));
        assert_eq!(parse_stall_timeout("1h"), secs(3600));
        assert_eq!(parse_stall_timeout("off"), Ok(StallTimeout(None)));
        for bad in ["0", "", "m", "5x", "-1", "1.5m", "99999999999h", "8d"] {
            assert!(parse_stall_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_settle_window("0"),
            Ok(SettleWindow(std::time::Duration::ZERO))
        );
        assert_eq!(
            parse_settle_window("2m"),
            Ok(SettleWindow(std::time::Duration::from_secs(120)))
        );
        for bad in ["", "m", "-1", "1.5m", "8d"] {
            assert!(parse_settle_window(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["opcrm-import", "run", "m.csv"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args.stall_timeout,
            StallTimeout(Some(crate::pipeline::DEFAULT_STALL_TIMEOUT))
        );
    }

    #[test]
    fn clock_offsets_are_signed_seconds_within_ten_years() {
        assert_eq!(parse_clock_offset("-7200"), Ok(-7200));
        assert_eq!(parse_clock_offset("7200"), Ok(7200));
        assert_eq!(parse_clock_offset("+7200"), Ok(7200));
        for bad in ["", "2h", "1.5", "315360001", "-315360001", "x"] {
            assert!(parse_clock_offset(bad).is_err(), "{bad}");
        }
        let cli =
            Cli::try_parse_from(["opcrm-import", "emulator", "--clock-offset", "-7200"]).unwrap();
        let Command::Emulator(args) = cli.command else {
            panic!("not emulator")
        };
        assert_eq!(
            args.clock_offset, -7200,
            "a negative value is a value, not a flag"
        );
    }

    #[test]
    fn delimiter_accepts_words_and_single_characters() {
        assert_eq!(parse_delimiter("tab"), Ok(b'\t'));
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert_eq!(parse_delimiter("|"), Ok(b'|'));
        assert!(parse_delimiter("\"").is_err());
        assert!(parse_delimiter("ab").is_err());
        assert!(parse_delimiter("x").is_err());
        assert!(parse_delimiter("é").is_err());
    }
}
