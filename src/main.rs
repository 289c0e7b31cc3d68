//! The `opcrm-import` binary: parses the command line, sets up logging, hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use opcrm_import::{ExitStatus, cli::Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--json` asks for one JSON document on stdout, even for a command line clap refuses.
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                let message = e.render().to_string();
                let message = message.trim().trim_start_matches("error: ");
                opcrm_import::print_json_error(&opcrm_import::error::CommandError::usage(message));
            }
            e.exit()
        }
    };
    if let Err(err) = opcrm_import::logging::init(&cli.log) {
        opcrm_import::say!("error: {err:#}");
        return ExitStatus::Usage.into();
    }
    let json = cli.wants_json();
    match opcrm_import::run(cli) {
        Ok(status) => status.into(),
        Err(err) => opcrm_import::exit_with(err, json),
    }
}
