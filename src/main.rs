//! The `opcrm-import` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use opcrm_import::{ExitStatus, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match opcrm_import::run(cli) {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitStatus::Usage.into()
        }
    }
}
