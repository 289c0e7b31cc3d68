//! The settings of one run, resolved once from the flags and the environment and checked before
//! anything is read or sent: planning, the dry run, the summary and `demo` take this, not clap's
//! struct.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RunArgs;
use crate::defaults::DEFAULT_GRACE;
use crate::error::CommandError;
use crate::manifest::ReadOptions;
use crate::pipeline::Settings;
use crate::remote::{self, Credentials};

/// Where to send requests, and as whom.
pub struct Remote {
    pub url: reqwest::Url,
    pub credentials: Credentials,
}

/// What a run is asked to do beyond the three steps of each row.
#[derive(Clone, Copy, Debug, Default)]
pub struct Choices {
    pub dry_run: bool,
    pub skip_invalid: bool,
    pub retry_failed: bool,
    pub reupload_changed: bool,
    pub adopt_state: bool,
    /// `--redo-removed`: rows `undo` took back are uploaded again.
    pub redo_removed: bool,
}

/// One run's settings, validated.
pub struct RunConfig {
    pub manifest: PathBuf,
    pub read: ReadOptions,
    /// The state file: `--state`, or the default beside the manifest.
    pub state: PathBuf,
    /// `--state` as given (`None`: the default), for the commands the run suggests.
    pub state_given: Option<PathBuf>,
    pub remote: Remote,
    /// `--api-key-file` as given, for the commands the run suggests.
    pub api_key_file: Option<PathBuf>,
    pub settings: Settings,
    pub grace: Duration,
    pub choices: Choices,
    pub json: bool,
    pub no_progress: bool,
}

/// `<manifest without .csv>.opcrm.sqlite`, beside the manifest.
pub fn default_state_path(manifest: &Path) -> PathBuf {
    let stem = match manifest.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => manifest.with_extension(""),
        _ => manifest.to_path_buf(),
    };
    let mut name = stem
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".opcrm.sqlite");
    stem.with_file_name(name)
}

impl RunConfig {
    /// From the command line, with the API and credentials from the environment.
    pub fn from_args(args: &RunArgs) -> Result<Self, CommandError> {
        let credentials =
            Credentials::from_env(args.api_key_file.as_deref()).map_err(CommandError::stopped)?;
        let url =
            remote::api_url_from_env().map_err(|e| CommandError::stopped(format!("{e:#}")))?;
        Ok(Self::with_remote(args, Remote { url, credentials }))
    }

    /// From the command line, against `remote`.
    pub fn with_remote(args: &RunArgs, remote: Remote) -> Self {
        let manifest = args.manifest.manifest.clone();
        Self {
            state: args
                .state
                .clone()
                .unwrap_or_else(|| default_state_path(&manifest)),
            state_given: args.state.clone(),
            read: ReadOptions {
                delimiter: args.manifest.delimiter,
            },
            manifest,
            remote,
            api_key_file: args.api_key_file.clone(),
            settings: Settings {
                concurrency: usize::from(args.concurrency),
                rate: args.rate.0,
                burst: args.burst,
                retries: args.retries,
                stall_timeout: args.stall_timeout.0,
                form_reuse: args.form_reuse,
                settle_window: args.settle_window.0,
            },
            grace: Duration::from_secs(args.grace),
            choices: Choices {
                dry_run: args.dry_run,
                skip_invalid: args.skip_invalid,
                retry_failed: args.retry_failed,
                reupload_changed: args.reupload_changed,
                adopt_state: args.adopt_state,
                redo_removed: args.redo_removed,
            },
            json: args.json,
            no_progress: args.no_progress,
        }
    }

    /// Every default, for `manifest` and `state` against `remote` (the demo's run).
    pub fn defaults(manifest: PathBuf, state: PathBuf, remote: Remote) -> Self {
        Self {
            manifest,
            read: ReadOptions::default(),
            state_given: Some(state.clone()),
            state,
            remote,
            api_key_file: None,
            settings: Settings::default(),
            grace: DEFAULT_GRACE,
            choices: Choices::default(),
            json: false,
            no_progress: false,
        }
    }

    /// An in-memory state (`--state :memory:`) lives and dies with this process: no lock, no
    /// resume.
    pub fn state_in_memory(&self) -> bool {
        self.state.as_os_str() == ":memory:"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_sits_beside_the_manifest() {
        assert_eq!(
            default_state_path(Path::new("a/b/manifest.csv")),
            Path::new("a/b/manifest.opcrm.sqlite")
        );
        assert_eq!(
            default_state_path(Path::new("m.CSV")),
            Path::new("m.opcrm.sqlite")
        );
        assert_eq!(
            default_state_path(Path::new("list.txt")),
            Path::new("list.txt.opcrm.sqlite")
        );
    }
}
