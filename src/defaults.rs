//! Defaults that both the flags (`cli`, which shows them in `--help`) and the code that runs
//! (`run`) use, kept below both so that neither has to import the other for them.

use std::time::Duration;

/// How long rows under way get to finish after Ctrl-C or SIGTERM (`--grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
