//! The `opcrm-import` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use opcrm_import::{ExitStatus, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; OPCRM_LOG (e.g. `info`, `debug`) says how much, warnings by default.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OPCRM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match opcrm_import::run(cli) {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitStatus::Usage.into()
        }
    }
}
