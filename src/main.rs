//! The `opcrm-import` binary: parses the command line, sets up logging, hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use opcrm_import::{ExitStatus, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = opcrm_import::logging::init(&cli.log) {
        eprintln!("error: {err:#}");
        return ExitStatus::Usage.into();
    }
    match opcrm_import::run(cli) {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitStatus::Usage.into()
        }
    }
}
