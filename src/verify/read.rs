//! The reads of `verify`: each record once (`GET /{notes|deals|calls|meetings}/{id}`, which lists
//! its attachments and a note's text), through a pipeline context as `check`'s online checks
//! get one (`quota::with_settings`): the client's rate limit, the throttle gate and the retries of
//! a run, the stall watch beside them, and the progress display with its ETA from the rate.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use super::judge::RecordKey;
use crate::pipeline::{Context, Settings, Stop, watch_stall};
use crate::progress::{self, Mode, Tick};
use crate::remote::api::RemoteRecord;
use crate::remote::{Client, RemoteError};

/// A record as read: `None` when it is gone (404).
pub type Read = Result<Option<RemoteRecord>, RemoteError>;

/// What the reads cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub api_calls: u64,
    pub retries: u64,
    pub throttles: u64,
}

/// Reads every record of `keys`, `settings.concurrency` at once (the limiter paces them), and
/// hands each to `each` as it comes, which says how many problems it found there (for the
/// progress display). After the credentials are refused, or once the reads stalled, no read is
/// sent: the records left get that error. `Err` only when no runtime could be made.
pub fn read_all(
    client: Client,
    settings: Settings,
    keys: Vec<RecordKey>,
    mode: Mode,
    mut each: impl FnMut(&RecordKey, Read) -> usize,
) -> Result<Cost, String> {
    crate::quota::with_settings(client, settings, async |ctx: &Arc<Context>| {
        let (read, problems) = (Cell::new(0u64), Cell::new(0u64));
        let total = keys.len() as u64;
        let started = Instant::now();
        let reads = with_stall_watch(ctx, async {
            let mut reads = futures_util::stream::iter(keys)
                .map(|key| async move {
                    let answer = read_one(ctx, &key).await;
                    (key, answer)
                })
                .buffer_unordered(ctx.settings.concurrency.max(1));
            while let Some((key, answer)) = reads.next().await {
                problems.set(problems.get() + each(&key, answer) as u64);
                read.set(read.get() + 1);
            }
        });
        let tick = || tick(ctx, read.get(), total, problems.get(), started);
        // The display never ends on its own (with `Mode::Off` it shows nothing and waits).
        let show = async {
            progress::display(mode, total, "records", tick).await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = reads => {}
            () = show => {}
        }
        let c = ctx.counts();
        Cost {
            api_calls: c.api_calls,
            retries: c.retries,
            throttles: c.throttles,
        }
    })
}

/// One record, with the retries of a run; a read not sent because the reads stopped is the
/// error that stopped them.
async fn read_one(ctx: &Arc<Context>, (reference_type, id): &RecordKey) -> Read {
    match ctx.stop_reason() {
        Stop::None => {}
        Stop::Credentials => {
            let why = "the API refused the credentials".to_string();
            return Err(RemoteError::Stopped(why));
        }
        _ => {
            let why = ctx.stall_detail().unwrap_or("stopped").to_string();
            return Err(RemoteError::Stopped(why));
        }
    }
    match ctx
        .api_retrying(|| ctx.client.record(*reference_type, id))
        .await
    {
        Ok(record) => Ok(Some(record)),
        Err(RemoteError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the display shows: records read of `total`, problems so far, retries, throttling, and
/// the time left (one API call a record, at the client's rate, or as the reads so far went).
fn tick(ctx: &Context, read: u64, total: u64, problems: u64, started: Instant) -> Tick {
    let c = ctx.counts();
    let eta = progress::eta(
        read,
        total,
        started.elapsed(),
        total.saturating_sub(read),
        ctx.gate.current_rate(),
    )
    .map_or("unknown".to_string(), progress::human_duration);
    let message = format!(
        "{problems} {} · {} retrying · {} throttled · ETA {eta}",
        if problems == 1 { "problem" } else { "problems" },
        c.retrying,
        c.throttles
    );
    Tick {
        position: read,
        line: format!(
            "progress: {read}/{total} records read · {message} · {} API calls",
            c.api_calls
        ),
        message,
    }
}

/// Runs the stall watch of `ctx` beside `reads`; when no API call has succeeded for
/// `--stall-timeout` it aborts the context, and every call waiting ends at once.
async fn with_stall_watch<T>(ctx: &Arc<Context>, reads: impl Future<Output = T>) -> T {
    let watch = watch_stall(Arc::downgrade(ctx));
    tokio::pin!(reads);
    tokio::select! {
        biased;
        out = &mut reads => out,
        _ = watch => reads.await,
    }
}
