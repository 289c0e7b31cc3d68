//! What a person sees while a run goes on: a bar on a terminal, a plain line every 10 s
//! otherwise, nothing with `--no-progress`. Always on stderr, so stdout (and `--json`) stays clean.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::Context;
use crate::preflight::human_bytes;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Off,
}

impl Mode {
    /// A bar when stderr is a terminal, plain lines otherwise, nothing when asked.
    pub fn choose(no_progress: bool) -> Self {
        match (no_progress, std::io::stderr().is_terminal()) {
            (true, _) => Mode::Off,
            (false, true) => Mode::Bar,
            (false, false) => Mode::Lines,
        }
    }
}

/// The work of a run, to measure progress against.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    pub rows: u64,
    pub bytes: u64,
    /// API calls the rows still need (see `Work::api_calls`: with form reuse, an attach per file
    /// and a form per contact).
    pub api_calls: u64,
}

/// The time left: the slower of what the rows have been taking and what the API calls still
/// needed take at the client's rate.
fn eta(ctx: &Context, totals: Totals, started: Instant) -> Option<Duration> {
    let c = ctx.counts();
    let finished = c.done + c.failed;
    let left = totals.rows.saturating_sub(finished);
    if left == 0 {
        return Some(Duration::ZERO);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let by_rows = (finished > 0).then(|| elapsed / finished as f64 * left as f64);
    let calls_left = totals.api_calls.saturating_sub(c.api_calls);
    let by_rate = ctx.gate.current_rate().map(|r| calls_left as f64 / r);
    match (by_rows, by_rate) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
    .map(Duration::from_secs_f64)
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn status_text(ctx: &Context, totals: Totals, started: Instant) -> String {
    let c = ctx.counts();
    let eta = eta(ctx, totals, started).map_or("unknown".to_string(), human_duration);
    let notes = match c.notes_created {
        0 => String::new(),
        n => format!("{n} notes created · "),
    };
    format!(
        "{}/{} · {notes}{} failed · {} retrying · {} throttled · ETA {eta}",
        human_bytes(c.bytes_uploaded),
        human_bytes(totals.bytes),
        c.failed,
        c.retrying,
        c.throttles,
    )
}

/// Shows progress until the task is aborted (the bar is cleared when it is dropped).
pub async fn show(ctx: Arc<Context>, totals: Totals, mode: Mode) {
    let started = Instant::now();
    match mode {
        Mode::Off => {}
        Mode::Lines => {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let c = ctx.counts();
                crate::say!(
                    "progress: {}/{} rows done · {} · {} API calls",
                    c.done,
                    totals.rows,
                    status_text(&ctx, totals, started),
                    c.api_calls
                );
            }
        }
        Mode::Bar => {
            let bar =
                ProgressBar::with_draw_target(Some(totals.rows), ProgressDrawTarget::stderr());
            // NO_COLOR: the bar without its colours.
            let template = match crate::terminal::colour_allowed() {
                true => {
                    "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} rows ({per_sec}) · {msg}"
                }
                false => "{elapsed_precise} [{bar:30}] {pos}/{len} rows ({per_sec}) · {msg}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            struct Clear(ProgressBar);
            impl Drop for Clear {
                fn drop(&mut self) {
                    crate::terminal::set_bar(None);
                    self.0.finish_and_clear();
                }
            }
            // Log lines and messages go above the bar from now on.
            crate::terminal::set_bar(Some(bar.clone()));
            let bar = Clear(bar);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let c = ctx.counts();
                bar.0.set_position(c.done + c.failed);
                bar.0.set_message(status_text(&ctx, totals, started));
            }
        }
    }
}
