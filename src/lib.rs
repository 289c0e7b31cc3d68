//! opcrm-import: migrates local documents into OnePageCRM from a CSV manifest.
//!
//! The binary only parses the command line and calls [`run()`]; everything else lives here, a
//! module per concern. Each command is a module of its own (`check`, `run`, `status`, `report`,
//! `demo`; the `emulator` command's server in `emulator`), and [`run()`] picks one by the command
//! line's [`Command`]. How the modules fit together: ARCHITECTURE.md.

pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod defaults;
pub mod demo;
pub mod emulator;
pub mod error;
pub mod failure;
pub mod logging;
pub mod lookup;
pub mod manifest;
pub mod onepagecrm;
pub mod pipeline;
pub mod preflight;
pub mod progress;
pub mod quota;
pub mod records;
pub mod rehearse;
pub mod remote;
pub mod report;
pub mod run;
pub mod status;
pub mod terminal;
pub mod undo;
pub mod verify;

use std::process::ExitCode;

use cli::{Cli, Command};
use error::{CommandError, CommandResult};

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

/// The JSON document of a command stopped by `err`, on stdout.
pub fn print_json_error(err: &CommandError) {
    use std::io::Write;
    let doc = err.json();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{doc:#}");
    let _ = out.flush();
}

/// Says what stopped a command, with its whole chain of causes and what to do next, on stderr
/// (and, when the command was asked for `--json`, as its one JSON document on stdout); hands back
/// the exit code. A closed stdout is not a failure of the command: nothing is said, exit 0, as
/// ripgrep does.
pub fn exit_with(err: CommandError, json: bool) -> ExitCode {
    if err.is_broken_pipe() {
        return ExitCode::SUCCESS;
    }
    say!("error: {}", err.chain());
    if let Some(hint) = err.hint() {
        say!("hint: {hint}");
    }
    if json {
        print_json_error(&err);
    }
    err.status().into()
}

/// Runs one command line to its end.
pub fn run(cli: Cli) -> CommandResult {
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Undo(args) => undo::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Rehearse(args) => rehearse::run(&args),
        Command::Emulator(args) => emulator_command(args)
            .map(|()| ExitStatus::Success)
            // A refused address, endpoint or seed: the emulator's configuration.
            .map_err(|e| CommandError::from(e).with_status(ExitStatus::Usage)),
        Command::Demo => demo::run(),
        Command::Man { dir } => man(dir.as_deref()).map(|()| ExitStatus::Success),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Made whole first: clap_complete panics when stdout is closed (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "opcrm-import", &mut script);
            error::ignore_broken_pipe(std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                &script,
            ))?;
            Ok(ExitStatus::Success)
        }
    }
}

/// `opcrm-import man`: the main page on stdout, or every page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<(), CommandError> {
    use clap::CommandFactory;
    let cannot = |e: std::io::Error| CommandError::usage(format!("cannot write the manual: {e}"));
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(cannot)?;
            clap_mangen::generate_to(Cli::command(), dir).map_err(cannot)
        }
        None => {
            // Made whole first, so that a closed stdout (`| head`) is the only way to fail.
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(cannot)?;
            error::ignore_broken_pipe(std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                &page,
            ))
            .map_err(CommandError::from)
        }
    }
}

fn emulator_command(args: cli::EmulatorArgs) -> anyhow::Result<()> {
    let listen = parse_listen(&args.listen)?;
    let mut config = emulator::Config::new(listen);
    config.seed = args.seed;
    config.rate_limit = args.rate_limit;
    config.throttle_model = args.throttle_model;
    config.single_use_forms = args.single_use_forms;
    config.timestamp_ms = args.timestamp_ms;
    config.no_timestamp = args.no_timestamp;
    config.faults = emulator::faults::FaultConfig {
        fault_rate: args.fault_rate,
        drop_rate: args.drop_rate,
        latency_ms: args.latency_ms,
        seed: args.fault_seed,
        planned: args.fault_at,
    };
    config.attachment_urls = if args.opaque_links {
        emulator::AttachmentUrls::Opaque
    } else {
        args.attachment_urls
    };
    config.form_timestamp = args.form_timestamp;
    config.clock_offset = args.clock_offset;
    config.list_lag = std::time::Duration::from_secs(args.list_lag.into());
    config.purge_after = args.purge_after.map(std::time::Duration::from_secs);
    config.form_ttl = std::time::Duration::from_secs(args.form_ttl);
    config.data_dir = args.data_dir;
    if let Some(endpoint) = &args.s3_endpoint {
        // clap makes `--s3-endpoint` require the other three.
        let missing = || {
            anyhow::anyhow!("--s3-endpoint needs --s3-bucket, --s3-access-key and --s3-secret-key")
        };
        config.external_s3 = Some(emulator::external::ExternalS3::new(
            endpoint,
            args.s3_bucket.as_deref().ok_or_else(missing)?,
            &args.s3_region,
            args.s3_access_key.as_deref().ok_or_else(missing)?,
            args.s3_secret_key.ok_or_else(missing)?,
        )?);
    }
    emulator::serve_forever(config)
}

/// `127.0.0.1:8787`, `[::1]:0` or `localhost:8787`.
fn parse_listen(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    if let Some(port) = s.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    anyhow::bail!("--listen {s:?} is not an address and port such as 127.0.0.1:8787")
}
