//! The command line, as DESIGN.md fixes it: clap derive, help text from these doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Migrate local documents into OnePageCRM from a CSV manifest: check it, upload every file through
/// OnePageCRM's three-step attachment flow, and resume exactly where a stopped run left off.
#[derive(Debug, Parser)]
#[command(name = "opcrm-import", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a manifest and every file it names, without uploading anything.
    ///
    /// Every problem of every row is reported with its line number; exit 0 when the manifest is
    /// valid (warnings allowed), 2 when it is not.
    ///
    /// Example: opcrm-import check samples/manifest.csv
    Check(CheckArgs),
    /// Upload every row of a manifest (not yet available in this version).
    Run(RunArgs),
    /// Show how far a migration has got (not yet available in this version).
    Status(StatusArgs),
    /// Write the rows of a migration as CSV (not yet available in this version).
    Report(ReportArgs),
    /// Serve a local OnePageCRM and S3 emulator on loopback (not yet available in this version).
    Emulator(EmulatorArgs),
    /// Run the sample migration against an in-process emulator (not yet available in this version).
    Demo,
}

/// How the manifest is read; shared by every command that reads one.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// The CSV manifest. Paths in it resolve against the manifest's folder.
    pub manifest: PathBuf,

    /// Field delimiter: `,` (default), `;`, `tab`, or any other single ASCII character.
    #[arg(long, short = 'd', default_value = ",", value_parser = parse_delimiter)]
    pub delimiter: u8,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// Skip the online storage-quota check (the only network call `check` makes).
    #[arg(long)]
    pub offline: bool,

    /// Print one JSON document on stdout instead of the readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,

    /// The checkpoint file; default `<manifest without .csv>.opcrm.sqlite` beside the manifest.
    #[arg(long)]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest whose default state file to read.
    pub manifest: Option<PathBuf>,

    /// The state file to read.
    #[arg(long, conflicts_with = "manifest")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The manifest whose default state file to read.
    pub manifest: Option<PathBuf>,

    /// The state file to read.
    #[arg(long, conflicts_with = "manifest")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; loopback only.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: String,
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
