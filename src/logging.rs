//! Logs: tracing to stderr or a file, as text or JSON lines, at the level `-v` asks for.
//!
//! Nothing the tool logs carries a credential, a policy or a signature: requests are logged by
//! what they are about (a row, a step, a status), never by their headers or form fields.

use std::fs::OpenOptions;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

/// Sets up the global subscriber. `OPCRM_LOG` (e.g. `debug`), when set, wins over `-v`.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("OPCRM_LOG").unwrap_or_else(|_| {
        // Our own crate at the level asked for; libraries only when they warn.
        EnvFilter::new(format!("warn,opcrm_import={level}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match (&args.log_file, args.log_format) {
        (Some(path), format) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", path.display()))?;
            let builder = builder
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false);
            match format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
        // Above the progress bar, never over it; coloured on a terminal unless NO_COLOR says no.
        (None, LogFormat::Text) => builder
            .with_writer(|| crate::terminal::LogWriter)
            .with_ansi(std::io::stderr().is_terminal() && crate::terminal::colour_allowed())
            .init(),
        (None, LogFormat::Json) => builder
            .with_writer(|| crate::terminal::LogWriter)
            .json()
            .init(),
    }
    Ok(())
}
