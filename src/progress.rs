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

/// The time left: the slower of what the work finished so far has taken (`finished` of `total`
/// in `elapsed`) and what the API calls still needed take at the client's `rate` (`None`: no
/// limit). Shared by `run` (rows) and `verify` (records read).
pub fn eta(
    finished: u64,
    total: u64,
    elapsed: Duration,
    calls_left: u64,
    rate: Option<f64>,
) -> Option<Duration> {
    let left = total.saturating_sub(finished);
    if left == 0 {
        return Some(Duration::ZERO);
    }
    let elapsed = elapsed.as_secs_f64();
    let by_work = (finished > 0).then(|| elapsed / finished as f64 * left as f64);
    let by_rate = rate.map(|r| calls_left as f64 / r);
    match (by_work, by_rate) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
    .map(Duration::from_secs_f64)
}

/// A run's time left (see [`eta`]): its rows, and the API calls they still need.
fn run_eta(ctx: &Context, totals: Totals, started: Instant) -> Option<Duration> {
    let c = ctx.counts();
    eta(
        c.done + c.failed,
        totals.rows,
        started.elapsed(),
        totals.api_calls.saturating_sub(c.api_calls),
        ctx.gate.current_rate(),
    )
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
    let eta = run_eta(ctx, totals, started).map_or("unknown".to_string(), human_duration);
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

/// What a display shows at one moment.
pub struct Tick {
    /// How far along, of the display's length (the bar's position).
    pub position: u64,
    /// The bar's message, after its position.
    pub message: String,
    /// The plain line shown every 10 s when stderr is not a terminal.
    pub line: String,
}

/// Shows progress until the task is aborted (the bar is cleared when it is dropped).
pub async fn show(ctx: Arc<Context>, totals: Totals, mode: Mode) {
    let started = Instant::now();
    display(mode, totals.rows, "rows", move || {
        let c = ctx.counts();
        let message = status_text(&ctx, totals, started);
        Tick {
            position: c.done + c.failed,
            line: format!(
                "progress: {}/{} rows done · {message} · {} API calls",
                c.done, totals.rows, c.api_calls
            ),
            message,
        }
    })
    .await
}

/// Shows what `tick` tells, `len` `unit`s in all: a bar on a terminal (every 250 ms), a plain
/// line every 10 s otherwise, nothing with `Mode::Off`; until the future is dropped (the bar is
/// cleared then). `run`'s rows and `verify`'s records alike.
pub async fn display(mode: Mode, len: u64, unit: &str, tick: impl Fn() -> Tick) {
    match mode {
        Mode::Off => {}
        Mode::Lines => {
            let mut interval = tokio::time::interval(Duration::from_secs(10));
            interval.tick().await;
            loop {
                interval.tick().await;
                crate::say!("{}", tick().line);
            }
        }
        Mode::Bar => {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            // NO_COLOR: the bar without its colours.
            let bar_style = match crate::terminal::colour_allowed() {
                true => "{bar:30.cyan/blue}",
                false => "{bar:30}",
            };
            let template = format!(
                "{{elapsed_precise}} [{bar_style}] {{pos}}/{{len}} {unit} ({{per_sec}}) · {{msg}}"
            );
            bar.set_style(
                ProgressStyle::with_template(&template)
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
            let mut interval = tokio::time::interval(Duration::from_millis(250));
            loop {
                interval.tick().await;
                let now = tick();
                bar.0.set_position(now.position);
                bar.0.set_message(now.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_the_slower_of_the_work_so_far_and_the_calls_at_the_rate() {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64().round() as u64);
        let ten = Duration::from_secs(10);
        // 5 of 20 in 10 s: 30 s more by the work; 15 calls at 5/s: 3 s. The slower wins.
        assert_eq!(secs(eta(5, 20, ten, 15, Some(5.0))), Some(30));
        // 15 calls at 0.25/s: 60 s, slower than the work.
        assert_eq!(secs(eta(5, 20, ten, 15, Some(0.25))), Some(60));
        // Nothing finished yet: the rate alone; no rate either: unknown.
        assert_eq!(secs(eta(0, 20, ten, 20, Some(4.0))), Some(5));
        assert_eq!(eta(0, 20, ten, 20, None), None);
        // No client-side limit: the work alone.
        assert_eq!(secs(eta(10, 20, ten, 10, None)), Some(10));
        assert_eq!(eta(20, 20, ten, 0, Some(5.0)), Some(Duration::ZERO));
    }
}
