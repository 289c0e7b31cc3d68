//! The storage quota check, one for `check` and `run`: one step-1 call for the first row's
//! contact (the form's answer carries `storage_left`), sent like every other call of a run:
//! through the client's rate limit and the throttle gate, with retries, so that a throttled
//! answer is waited out instead of failing the check. A run keeps that form for its first row.

use std::sync::Arc;

use serde::Serialize;

use crate::pipeline::{Context, Settings, Stateless};
use crate::remote::api::Form;
use crate::remote::{Client, RemoteError};

/// Step 1 for `contact_id`: its answer tells the account's storage left.
pub async fn first_form(ctx: &Context, contact_id: &str) -> Result<Form, RemoteError> {
    ctx.api_retrying(|| ctx.client.s3_form(contact_id)).await
}

/// The account's storage left, as step 1 for `contact_id` tells it.
pub async fn storage_left(ctx: &Context, contact_id: &str) -> Result<u64, RemoteError> {
    first_form(ctx, contact_id)
        .await
        .map(|form| form.storage_left)
}

/// What `check` found out about the storage.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Quota {
    /// `--offline`.
    Offline,
    /// Not checked, and why (no credentials, or the manifest is invalid anyway).
    NotChecked { reason: String },
    /// Checked: `storage_left` covers the bytes to upload, or not.
    Checked {
        storage_left: u64,
        bytes_to_upload: u64,
        enough: bool,
    },
    /// The check itself failed (credentials refused, API unreachable).
    Failed { error: String },
}

/// `check`'s quota: the storage left, as step 1 for the row on `line` told it, compared with
/// `bytes_to_upload`.
pub fn judge(storage_left: Result<u64, RemoteError>, line: u64, bytes_to_upload: u64) -> Quota {
    match storage_left {
        Ok(storage_left) => Quota::Checked {
            storage_left,
            bytes_to_upload,
            enough: bytes_to_upload <= storage_left,
        },
        Err(e) => Quota::Failed {
            error: format!("step 1 for line {line}: {e}"),
        },
    }
}

/// Runs `f` on a runtime of its own with a pipeline context of the run's default limits and
/// retries, for the calls `check` makes (the email lookups, the records, the quota) outside any
/// run. The context records nothing.
pub fn with_context<T>(client: Client, f: impl AsyncFnOnce(&Context) -> T) -> Result<T, String> {
    with_settings(client, Settings::default(), async |ctx: &Arc<Context>| {
        f(ctx.as_ref()).await
    })
}

/// [`with_context`] with `settings` (`verify`'s `--rate`, `--burst`, `--retries`), handing `f`
/// the context itself, so that it can watch it (the stall watch, the progress display).
pub fn with_settings<T>(
    client: Client,
    settings: Settings,
    f: impl AsyncFnOnce(&Arc<Context>) -> T,
) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stateless = Stateless::new(client, settings).map_err(|e| e.to_string())?;
    let answer = runtime.block_on(f(&stateless.ctx));
    stateless.close();
    Ok(answer)
}
