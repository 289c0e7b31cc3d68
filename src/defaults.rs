//! Defaults that both the flags (`cli`, which shows them in `--help`) and the code that runs
//! (`run`) use, kept below both so that neither has to import the other for them.

use std::time::Duration;

/// How long rows under way get to finish after Ctrl-C or SIGTERM (`--grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Rows a run reads, checks and records at a time (its manifest's chunks, and its rows read
/// back from the state file): memory holds this many rows, however long the manifest.
pub const BATCH_ROWS: usize = 4096;

/// [`BATCH_ROWS`], or `OPCRM_BATCH_ROWS` when set (at least 1): tests make it small, so that a
/// sample manifest crosses many batches' edges.
pub fn batch_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("OPCRM_BATCH_ROWS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(BATCH_ROWS, |n| n.max(1))
    })
}
