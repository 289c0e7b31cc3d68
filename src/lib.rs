//! opcrm-import: migrates local documents into OnePageCRM from a CSV manifest.
//!
//! The binary only parses the command line and calls [`run`]; everything else lives here, a
//! module per concern.

pub mod check;
pub mod cli;
pub mod manifest;
pub mod preflight;

use std::process::ExitCode;

use cli::{Cli, Command};

/// The exit codes of DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every row done (for `check`: the manifest is valid).
    Success = 0,
    /// The run finished and some rows failed for good.
    Failed = 1,
    /// Usage error or invalid manifest; nothing uploaded.
    Usage = 2,
    /// Credentials, quota or configuration stopped the run.
    Stopped = 3,
    /// The run finished and only retryable failures remain.
    Retryable = 4,
    /// Interrupted; the state is saved and a rerun resumes.
    Interrupted = 130,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status as u8)
    }
}

/// Runs one command line to its end.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Run(_) => not_yet("run"),
        Command::Status(_) => not_yet("status"),
        Command::Report(_) => not_yet("report"),
        Command::Emulator(_) => not_yet("emulator"),
        Command::Demo => not_yet("demo"),
    }
}

fn not_yet(command: &str) -> anyhow::Result<ExitStatus> {
    eprintln!(
        "opcrm-import {command} is not yet available in this version; `opcrm-import check MANIFEST` is"
    );
    Ok(ExitStatus::Usage)
}
