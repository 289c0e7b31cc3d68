//! `opcrm-import demo`: the whole job on the samples, against an emulator in this process, so a
//! person sees on a fresh machine what a migration looks like, and that a rerun sends nothing.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use crate::ExitStatus;
use crate::emulator::{self, Config, DEMO_API_KEY, DEMO_USER_ID};
use crate::error::CommandResult;
use crate::preflight::human_bytes;
use crate::remote::Credentials;
use crate::run::{self, Remote, RunConfig};

/// `println!`, but a closed stdout (`demo | head -2`) ends the demo quietly instead of a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

/// `samples/` in the current folder, else the one this binary was built from.
fn samples() -> anyhow::Result<PathBuf> {
    let here = PathBuf::from("samples");
    if here.join("manifest.csv").is_file() {
        return Ok(here);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    anyhow::ensure!(
        built.join("manifest.csv").is_file(),
        "cannot find samples/manifest.csv; run the demo from the opcrm-import folder"
    );
    Ok(built)
}

pub fn run() -> CommandResult {
    let samples = samples()?;
    let manifest = samples.join("manifest.csv");
    let temp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let state = temp.path().join("demo.opcrm.sqlite");
    let from_crm = samples.join("from-another-crm.csv");
    let from_crm_state = temp.path().join("from-another-crm.opcrm.sqlite");

    // The emulator runs on its own runtime; `run` makes its own.
    let emulator_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut config = Config::new("127.0.0.1:0".parse().expect("an address"));
    config.seed = Some(samples.join("emulator-seed.json"));
    config.user_id = DEMO_USER_ID.into();
    config.api_key = DEMO_API_KEY.into();
    let emu = emulator_runtime.block_on(emulator::start(config))?;
    let url = reqwest::Url::parse(&emu.app.api_base()).map_err(anyhow::Error::from)?;
    let remote = || Remote {
        url: url.clone(),
        credentials: Credentials::new(DEMO_USER_ID.into(), DEMO_API_KEY.into()),
    };
    say!(
        "Demo: {} and {} against an emulator at {}",
        manifest.display(),
        from_crm.display(),
        emu.app.api_base()
    );
    say!(
        "(the emulator throttles its API like OnePageCRM, about 5 requests/s: this takes a few seconds)\n"
    );
    let requests = || emu.app.state().requests.values().sum::<u64>();
    let mut statuses = Vec::new();
    for (what, manifest, state) in [
        (
            "the sample manifest (contacts and records by id)",
            &manifest,
            &state,
        ),
        (
            "an export from another CRM (contacts by email)",
            &from_crm,
            &from_crm_state,
        ),
    ] {
        let config = || RunConfig::defaults(manifest.clone(), state.clone(), remote());
        say!("== {what}: first run, every row through the three steps");
        let before = requests();
        statuses.push(run::run_with(&config())?);
        let first = requests() - before;
        say!("\n== The same command again: every row is done, so nothing is sent");
        let before = requests();
        statuses.push(run::run_with(&config())?);
        say!(
            "The emulator got {first} requests in the first run (its API calls, and one S3 upload a file) and {} in the second.\n",
            requests() - before
        );
    }

    say!("\n== What the emulator holds now");
    print_holdings(&emu.app.state().snapshot())?;
    emulator_runtime.block_on(emu.stop());
    Ok(statuses
        .into_iter()
        .find(|s| *s != ExitStatus::Success)
        .unwrap_or(ExitStatus::Success))
}

fn print_holdings(state: &Value) -> std::io::Result<()> {
    let contacts: std::collections::HashMap<&str, String> = state["contacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["id"].as_str()?,
                format!("{} {}", c["first_name"].as_str()?, c["last_name"].as_str()?),
            ))
        })
        .collect();
    let attachments = state["attachments"].as_array().cloned().unwrap_or_default();
    for a in &attachments {
        let text = |k: &str| a[k].as_str().unwrap_or_default().to_string();
        say!(
            "  {:<38} {:>10}  on {} {} of {}",
            text("filename"),
            human_bytes(a["size"].as_u64().unwrap_or(0)),
            text("reference_type"),
            text("reference_id"),
            contacts
                .get(a["contact_id"].as_str().unwrap_or_default())
                .cloned()
                .unwrap_or_default()
        );
    }
    say!(
        "{} attachments, {} stored objects, {} of storage left",
        attachments.len(),
        state["objects"].as_array().map_or(0, Vec::len),
        human_bytes(state["storage_left"].as_u64().unwrap_or(0))
    );
    Ok(())
}
