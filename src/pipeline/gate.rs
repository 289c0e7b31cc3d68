//! The shared limit on API calls, and the gate a throttled answer closes for every worker: how
//! fast the client knocks, how long it waits after a refusal, and how it slows down when
//! refusals keep coming and speeds up again when they stop (AIMD).
//!
//! Everything here runs on tokio's clock (the limiter too, rather than `governor`'s own clock),
//! so that tests drive the gate with tokio's paused clock against the emulator's throttle models.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The client's default limit on API calls: 4.8 requests/s, one at a time (a burst of 1: no two
/// calls are granted closer than 1/4.8 s, 208 ms). OnePageCRM (and the emulator) throttle at 5/s
/// in bursts of 10, and every reading of that the emulator offers lets this pace through:
/// its leaky bucket (`rack`, OnePageCRM's documented throttle) leaks 1.04 requests between two
/// calls and gains 1, so it stays near 1 of its 10 and 8 calls that network jitter bunches up
/// still pass; GCRA at 5/s never refuses calls 200 ms apart or more; and the strictest reading
/// (`window`: at most 10 accepted in any 2 s) needs 11 calls to span more than 2 s, which calls
/// 208 ms apart do with 83 ms to spare for jitter. A larger burst is refused under `window`
/// whenever it follows a full window, and a higher rate leaves no room for jitter; this one uses
/// 96% of what the API allows.
pub const DEFAULT_RATE: f64 = 4.8;
pub const DEFAULT_BURST: u32 = 1;

/// Throttled answers in a row (refused knocks, not stragglers) after which the call gives up
/// (as a retryable failure).
pub(super) const MAX_CONSECUTIVE_THROTTLES: u32 = 30;
/// The longest pause one throttled answer closes the gate for: a `Retry-After` is honoured up
/// to this (a server asking for 999999999 s would otherwise stop the run for good, in silence).
pub(super) const MAX_THROTTLE_PAUSE: Duration = Duration::from_secs(60);
/// A throttle pause at least this long is announced (a warning), so a waiting run is not silent.
pub(super) const ANNOUNCED_PAUSE: Duration = Duration::from_secs(5);
/// This many refusals after an accepted call (the first of each run of refusals; stragglers and
/// refused probes aside) within `SLOW_DOWN_WINDOW` lower the rate: one now and then is network
/// jitter, several close together mean the client is too fast. The probes of an outage that
/// refuses everything for a while do not count: they say nothing of the client's pace.
const THROTTLES_TO_SLOW_DOWN: usize = 3;
const SLOW_DOWN_WINDOW: Duration = Duration::from_secs(20);
/// How much slowing down lowers the rate, and the rate it never goes below.
const SLOW_DOWN: f64 = 0.8;
const MIN_RATE: f64 = 0.2;
/// After this long without a throttled answer (or a change of rate) the rate goes up a step, up
/// to the rate asked for: a days-long run is not held back for good by a bad minute.
const QUIET_TO_SPEED_UP: Duration = Duration::from_secs(60);
const SPEED_UP: f64 = 1.1;
/// With `--rate off`, slowing down installs a limiter as if the client had been sending at this
/// rate, and speeding up past it lifts the limiter again. (A throttled answer's pause is then one
/// call's worth at `DEFAULT_RATE`, what OnePageCRM's bucket needs to let one through.)
const UNLIMITED_AS: f64 = 10.0;
/// The longest gap between two calls the limiter keeps (a rate far below any use stays finite).
const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// One call's worth of time at `rate`.
fn period(rate: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(MAX_PERIOD)
        .clamp(Duration::from_nanos(1), MAX_PERIOD)
}

/// A GCRA on tokio's clock: a call is granted when the theoretical arrival time is at most
/// `burst - 1` periods ahead of now, and each grant moves it one period later. With a burst of
/// 1, grants are at least a period apart.
#[derive(Debug)]
struct Limiter {
    period: Duration,
    burst: u32,
    /// The theoretical arrival time of the next call (`None`: never used).
    tat: Option<Instant>,
}

impl Limiter {
    fn new(rate: f64, burst: u32) -> Self {
        Self {
            period: period(rate),
            burst: burst.max(1),
            tat: None,
        }
    }

    /// Grants a call at `now`, or says when one may be granted.
    fn grant(&mut self, now: Instant) -> Result<(), Instant> {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let tolerance = self.period.saturating_mul(self.burst - 1).min(MAX_PERIOD);
        if tat <= now + tolerance {
            self.tat = Some(tat + self.period);
            Ok(())
        } else {
            Err(tat - tolerance)
        }
    }

    fn set_rate(&mut self, rate: f64) {
        self.period = period(rate);
    }
}

/// The shared limit on API calls, and the gate a throttled answer closes for every worker.
pub struct ApiGate {
    /// The rate asked for (`--rate`; `None`: no limit): speeding up never goes past it.
    asked: Option<f64>,
    burst: u32,
    state: Mutex<State>,
    /// Woken when a probe ends or the gate closes, for calls waiting for a probe's answer.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// The rate in force (`None`: no limit).
    rate: Option<f64>,
    limiter: Option<Limiter>,
    /// No API call starts before this instant.
    resume_at: Option<Instant>,
    /// How many times a throttled answer closed the gate: a refused call granted before the
    /// last closing is a straggler (it was already on its way), and says nothing new.
    closings: u64,
    /// The last answer (stragglers aside) was a throttle: then only one call at a time (a probe)
    /// may be in flight, since every refused knock fills a leaky bucket further.
    refused: bool,
    /// A probe is in flight.
    probing: bool,
    /// Refused knocks in a row (stragglers aside).
    consecutive: u32,
    /// When the recent refused knocks came, for slowing down.
    recent: VecDeque<Instant>,
    /// The last throttled answer or change of rate: speeding up waits for a quiet period after it.
    calm_since: Instant,
}

/// A call the gate let through; its answer is reported with it (`throttled` or `answered`).
/// Dropped unanswered (a call cut short), it frees the probe's place if it held it.
#[must_use]
pub(super) struct Ticket<'a> {
    gate: &'a ApiGate,
    /// `State::closings` when the call was granted.
    closings: u64,
    /// This call is the one knock allowed while refused.
    probe: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.probe) {
            self.gate.lock().probing = false;
            self.gate.changed.notify_waiters();
        }
    }
}

/// What one throttled answer did to the gate.
#[derive(Debug)]
pub(super) struct Throttle {
    /// Refused knocks in a row, this one included unless it is a straggler.
    pub n: u32,
    /// The pause every API call now waits, when this answer made the gate close later.
    pub pause: Option<Duration>,
}

/// A random share of `max`.
fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::rng().random::<f64>())
}

impl ApiGate {
    pub fn new(rate: Option<f64>, burst: u32) -> Self {
        Self {
            asked: rate,
            burst,
            state: Mutex::new(State {
                rate,
                limiter: rate.map(|r| Limiter::new(r, burst)),
                resume_at: None,
                closings: 0,
                refused: false,
                probing: false,
                consecutive: 0,
                recent: VecDeque::new(),
                calm_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the gate is open, no probe is in flight while refused, and the limiter grants
    /// a call. All three are judged at once, at the moment of the grant: a grant waited for while
    /// another call was refused does not knock.
    pub(super) async fn turn(&self) -> Ticket<'_> {
        loop {
            // Made before the state is read, so that a change after it wakes this wait.
            let changed = self.changed.notified();
            let until = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.resume_at {
                    Some(t) if t > now => Some(t),
                    _ if s.refused && s.probing => None,
                    _ => match s.limiter.as_mut().map(|l| l.grant(now)) {
                        Some(Err(t)) => Some(t),
                        _ => {
                            let probe = s.refused;
                            s.probing |= probe;
                            return Ticket {
                                gate: self,
                                closings: s.closings,
                                probe,
                            };
                        }
                    },
                }
            };
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => changed.await,
            }
        }
    }

    /// A throttled answer to `ticket`'s call. Unless it is a straggler (granted before the gate
    /// last closed), it closes the gate for everybody for about one call's worth at the current
    /// rate (what a leaky bucket needs to let one through), doubled for each refused knock in a
    /// row, plus up to a tenth of that in jitter; a `Retry-After` is honoured instead. Either is
    /// capped at `MAX_THROTTLE_PAUSE`. Several close together slow the client down. A straggler's
    /// refusal changes nothing, except that its `Retry-After` (the server's own word) is honoured.
    pub(super) fn throttled(
        &self,
        mut ticket: Ticket<'_>,
        retry_after: Option<Duration>,
    ) -> Throttle {
        let now = Instant::now();
        let mut s = self.lock();
        let was_probe = std::mem::take(&mut ticket.probe);
        s.probing &= !was_probe;
        if ticket.closings != s.closings {
            let n = s.consecutive;
            let pause = retry_after.map(|r| r.min(MAX_THROTTLE_PAUSE));
            let later = pause.filter(|p| s.resume_at.is_none_or(|r| r < now + *p));
            if let Some(p) = later {
                s.resume_at = Some(now + p);
            }
            drop(s);
            if was_probe {
                self.changed.notify_waiters();
            }
            return Throttle { n, pause: later };
        }
        s.consecutive = s.consecutive.saturating_add(1);
        s.closings += 1;
        s.refused = true;
        let n = s.consecutive;
        let one_call = period(s.rate.unwrap_or(DEFAULT_RATE));
        let wanted = retry_after
            .unwrap_or_else(|| one_call.saturating_mul(1 << (n - 1).min(20)))
            .min(MAX_THROTTLE_PAUSE);
        let pause = (wanted + jitter(wanted / 10)).min(MAX_THROTTLE_PAUSE);
        let at = now + pause;
        let extended = s.resume_at.is_none_or(|r| r < at);
        if extended {
            s.resume_at = Some(at);
        }
        s.calm_since = now;
        if n == 1 {
            s.recent.push_back(now);
        }
        while s
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > SLOW_DOWN_WINDOW)
        {
            s.recent.pop_front();
        }
        if s.recent.len() >= THROTTLES_TO_SLOW_DOWN {
            s.recent.clear();
            self.slow_down(&mut s);
        }
        drop(s);
        self.changed.notify_waiters();
        Throttle {
            n,
            pause: extended.then_some(pause),
        }
    }

    /// An answer that was not a throttle to `ticket`'s call. Unless it is a straggler's, the
    /// client is no longer refused; after a quiet period the rate goes up a step.
    pub(super) fn answered(&self, mut ticket: Ticket<'_>) {
        let now = Instant::now();
        let mut s = self.lock();
        let was_probe = std::mem::take(&mut ticket.probe);
        s.probing &= !was_probe;
        let was_refused = s.refused;
        if ticket.closings == s.closings {
            s.refused = false;
            s.consecutive = 0;
        }
        self.speed_up_when_calm(&mut s, now);
        let wake = was_probe || (was_refused && !s.refused);
        drop(s);
        if wake {
            self.changed.notify_waiters();
        }
    }

    /// Lowers the rate by `SLOW_DOWN` (not below `MIN_RATE`), and says so.
    fn slow_down(&self, s: &mut State) {
        let new = (s.rate.unwrap_or(UNLIMITED_AS) * SLOW_DOWN).max(MIN_RATE);
        if s.rate.is_some_and(|r| new >= r) {
            return;
        }
        warn!(
            "the API keeps throttling; lowering the request rate from {} to {new:.2}/s (it goes back up after {} s without a throttled answer)",
            s.rate
                .map_or("unlimited".to_string(), |r| format!("{r:.2}/s")),
            QUIET_TO_SPEED_UP.as_secs()
        );
        s.rate = Some(new);
        match &mut s.limiter {
            Some(l) => l.set_rate(new),
            None => s.limiter = Some(Limiter::new(new, self.burst)),
        }
    }

    /// Raises the rate by `SPEED_UP`, up to the rate asked for, when no throttled answer came for
    /// `QUIET_TO_SPEED_UP` (nor a change of rate: one step per quiet period).
    fn speed_up_when_calm(&self, s: &mut State, now: Instant) {
        let Some(rate) = s.rate else { return };
        let ceiling = self.asked.unwrap_or(UNLIMITED_AS);
        if rate >= ceiling || now.duration_since(s.calm_since) < QUIET_TO_SPEED_UP {
            return;
        }
        s.calm_since = now;
        let new = (rate * SPEED_UP).min(ceiling);
        match self.asked {
            None if new >= ceiling => {
                info!("no throttled answer for a while; lifting the request rate limit again");
                s.rate = None;
                s.limiter = None;
                return;
            }
            Some(asked) if new >= asked => {
                info!("no throttled answer for a while; back to {asked:.2} requests/s");
            }
            _ => debug!("no throttled answer for a while; raising the request rate to {new:.2}/s"),
        }
        s.rate = Some(new);
        if let Some(l) = &mut s.limiter {
            l.set_rate(new);
        }
    }

    /// The rate in force (`None`: no limit); the progress ETA reads it.
    pub fn current_rate(&self) -> Option<f64> {
        self.lock().rate
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::emulator::faults::{Model, RateLimit, ThrottleModel};

    // Every test below runs on tokio's paused clock: it moves only when every task waits,
    // straight to the next timer, so what the gate waits is measured exactly, whatever the
    // machine's speed.

    fn resume_at(gate: &ApiGate) -> Option<Instant> {
        gate.lock().resume_at
    }

    /// A call refused by the server: granted, then throttled.
    async fn refused(gate: &ApiGate, retry_after: Option<Duration>) -> Throttle {
        let ticket = gate.turn().await;
        gate.throttled(ticket, retry_after)
    }

    /// A refused call, then one that passes: the client knocked too early once.
    async fn refused_once(gate: &ApiGate) {
        refused(gate, None).await;
        let ticket = gate.turn().await;
        gate.answered(ticket);
    }

    /// What a simulated run of `calls` API calls by `workers` workers through the client's
    /// default gate met from the server's throttle `model` (5/s in bursts of 10): calls accepted,
    /// calls throttled, simulated seconds. Each call reaches the server 0-100 ms after its grant
    /// and its answer comes back 0-100 ms later (drawn from a seeded generator), so calls reach
    /// the server up to 100 ms closer together than they were granted.
    async fn simulate(model: ThrottleModel, workers: usize, calls: usize) -> (usize, usize, f64) {
        let gate = Arc::new(ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST));
        let server = Arc::new(Mutex::new(Model::new(model, RateLimit::ONEPAGECRM)));
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(14)));
        let (accepted, throttled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let (gate, server, rng) = (gate.clone(), server.clone(), rng.clone());
            let (accepted, throttled) = (accepted.clone(), throttled.clone());
            tasks.spawn(async move {
                while accepted.load(Ordering::SeqCst) < calls {
                    let ticket = gate.turn().await;
                    let latency =
                        || Duration::from_millis(rng.lock().unwrap().random_range(0..=100));
                    tokio::time::sleep(latency()).await;
                    let passed = server.lock().unwrap().admit("client", start.elapsed());
                    tokio::time::sleep(latency()).await;
                    if passed {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        gate.answered(ticket);
                    } else {
                        throttled.fetch_add(1, Ordering::SeqCst);
                        gate.throttled(ticket, None);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        (
            accepted.load(Ordering::SeqCst),
            throttled.load(Ordering::SeqCst),
            start.elapsed().as_secs_f64(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_defaults_meet_every_throttle_model() {
        for model in [
            ThrottleModel::Rack,
            ThrottleModel::Gcra,
            ThrottleModel::Window,
        ] {
            let (accepted, throttled, seconds) = simulate(model, 8, 2400).await;
            let share = throttled as f64 / (accepted + throttled) as f64;
            let use_of_limit = accepted as f64 / seconds / 5.0;
            eprintln!(
                "{model:?}: {accepted} accepted, {throttled} throttled in {seconds:.1} s: {use_of_limit:.3} of 5/s"
            );
            if model != ThrottleModel::Window {
                assert_eq!(throttled, 0, "{model:?}");
            }
            assert!(
                share <= 0.01,
                "{model:?}: {throttled} of {} throttled",
                accepted + throttled
            );
            assert!(use_of_limit >= 0.90, "{model:?}: {use_of_limit:.3} of 5/s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_one_throttled_answer_the_next_call_waits_one_calls_worth() {
        let gate = ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST);
        let throttle = refused(&gate, None).await;
        assert_eq!(throttle.n, 1);
        let one_call = Duration::from_secs_f64(1.0 / DEFAULT_RATE);
        let before = Instant::now();
        let ticket = gate.turn().await;
        let waited = before.elapsed();
        // Tokio's timers round up to the millisecond.
        assert!(
            waited >= one_call && waited <= one_call.mul_f64(1.1) + Duration::from_millis(1),
            "{waited:?}"
        );
        assert_eq!(
            throttle.pause.map(|p| p <= one_call.mul_f64(1.1)),
            Some(true)
        );
        gate.answered(ticket);
        assert_eq!(gate.lock().consecutive, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_knocks_in_a_row_double_the_pause_and_stragglers_do_not() {
        let gate = ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST);
        let one_call = Duration::from_secs_f64(1.0 / DEFAULT_RATE);
        // Two calls on their way; the first is refused, then the second (a straggler: it was
        // sent before the gate closed).
        let (first, second) = (gate.turn().await, gate.turn().await);
        let closed = gate.throttled(first, None);
        assert_eq!(closed.n, 1);
        let resume = resume_at(&gate);
        let straggler = gate.throttled(second, None);
        assert_eq!(straggler.n, 1, "not a new refusal in a row");
        assert!(straggler.pause.is_none());
        assert_eq!(resume_at(&gate), resume, "the pause did not grow");
        // The probe after the pause is refused too: that is a second refusal in a row.
        let probe = refused(&gate, None).await;
        assert_eq!(probe.n, 2);
        let pause = probe.pause.unwrap();
        assert!(
            pause >= one_call * 2 && pause <= (one_call * 2).mul_f64(1.1),
            "{pause:?}"
        );
        // And a third, twice as long again.
        let pause = refused(&gate, None).await.pause.unwrap();
        assert!(
            pause >= one_call * 4 && pause <= (one_call * 4).mul_f64(1.1),
            "{pause:?}"
        );
        // One answer that passes starts over.
        let ticket = gate.turn().await;
        gate.answered(ticket);
        assert_eq!(refused(&gate, None).await.n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn while_refused_only_one_call_is_in_flight() {
        let gate = Arc::new(ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST));
        refused(&gate, None).await;
        let granted = Arc::new(AtomicUsize::new(0));
        // Each call's answer comes when the test lets it.
        let answers = Arc::new(tokio::sync::Semaphore::new(0));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (gate, granted, answers) = (gate.clone(), granted.clone(), answers.clone());
            calls.spawn(async move {
                let ticket = gate.turn().await;
                granted.fetch_add(1, Ordering::SeqCst);
                answers.acquire().await.unwrap().forget();
                gate.answered(ticket);
            });
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(granted.load(Ordering::SeqCst), 1, "one probe");
        // The probe's answer passes: the others go, at the limiter's pace.
        answers.add_permits(1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(granted.load(Ordering::SeqCst), 5);
        answers.add_permits(4);
        while calls.join_next().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_cut_short_lets_another_call_probe() {
        let gate = ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST);
        refused(&gate, None).await;
        let probe = gate.turn().await;
        assert!(probe.probe);
        drop(probe);
        let next = gate.turn().await;
        assert!(next.probe, "still refused: the next call is a probe too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_waited_for_while_another_call_is_refused_does_not_knock() {
        let gate = Arc::new(ApiGate::new(Some(DEFAULT_RATE), DEFAULT_BURST));
        let first = gate.turn().await;
        // The second call waits for the limiter (208 ms) while the first is refused at 100 ms.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let ticket = gate.turn().await;
                (Instant::now(), ticket.probe, ticket.closings)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.throttled(first, None);
        let resume = resume_at(&gate).unwrap();
        let (granted_at, probe, closings) = waiting.await.unwrap();
        assert!(granted_at >= resume, "it waited for the gate");
        assert!(probe, "and knocked as the probe");
        assert_eq!(closings, 1, "after the closing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_honoured_up_to_the_cap() {
        let gate = ApiGate::new(None, 5);
        for asked in [999_999_999, u64::MAX] {
            let ticket = gate.turn().await;
            let before = Instant::now();
            gate.throttled(ticket, Some(Duration::from_secs(asked)));
            let resume = resume_at(&gate).unwrap();
            assert!(
                resume <= before + MAX_THROTTLE_PAUSE,
                "{asked}: the gate is closed for {:?}",
                resume - before
            );
        }
        // Three calls on their way, all refused; the second and third are stragglers (sent
        // before the first closed the gate), whose Retry-After is honoured when it is later.
        let gate = ApiGate::new(None, 5);
        let (a, b, c) = (gate.turn().await, gate.turn().await, gate.turn().await);
        let pause = gate
            .throttled(a, Some(Duration::from_secs(7)))
            .pause
            .unwrap();
        assert!(pause >= Duration::from_secs(7) && pause < Duration::from_secs(8));
        let sooner = gate.throttled(b, Some(Duration::ZERO));
        assert!(sooner.pause.is_none(), "not later");
        let later = gate.throttled(c, Some(Duration::from_secs(30)));
        assert_eq!(later.pause, Some(Duration::from_secs(30)));
        assert_eq!(later.n, 1, "a straggler is no refusal in a row");
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_close_together_lower_the_rate_and_quiet_brings_it_back_to_the_asked_rate() {
        let gate = ApiGate::new(Some(4.0), 1);
        // Refusals far apart (a bad moment now and then) change nothing.
        for _ in 0..THROTTLES_TO_SLOW_DOWN {
            refused_once(&gate).await;
            tokio::time::sleep(SLOW_DOWN_WINDOW + Duration::from_secs(1)).await;
        }
        assert_eq!(gate.current_rate(), Some(4.0));
        // Refused knocks in a row (an outage that refuses everything) change nothing either.
        for _ in 0..THROTTLES_TO_SLOW_DOWN * 3 {
            refused(&gate, None).await;
        }
        let ticket = gate.turn().await;
        gate.answered(ticket);
        assert_eq!(gate.current_rate(), Some(4.0));
        // Several refusals after accepted calls, close together, lower it.
        for _ in 0..THROTTLES_TO_SLOW_DOWN {
            refused_once(&gate).await;
        }
        assert_eq!(gate.current_rate(), Some(4.0 * SLOW_DOWN));
        // Answers that pass soon after do not raise it.
        let ticket = gate.turn().await;
        gate.answered(ticket);
        assert_eq!(gate.current_rate(), Some(4.0 * SLOW_DOWN));
        // A quiet period at a time raises it a step, up to the asked rate and never above.
        let mut rates = Vec::new();
        for _ in 0..10 {
            tokio::time::sleep(QUIET_TO_SPEED_UP).await;
            let ticket = gate.turn().await;
            gate.answered(ticket);
            rates.push(gate.current_rate().unwrap());
        }
        assert!(rates.windows(2).all(|w| w[0] <= w[1]), "{rates:?}");
        assert!(rates[0] > 4.0 * SLOW_DOWN && rates[0] < 4.0, "{rates:?}");
        assert!(rates.iter().all(|r| *r <= 4.0), "{rates:?}");
        assert_eq!(rates.last(), Some(&4.0));
        // The limiter follows: calls are granted at the asked rate again.
        let before = Instant::now();
        for _ in 0..9 {
            let ticket = gate.turn().await;
            gate.answered(ticket);
        }
        let spent = before.elapsed();
        assert!(spent >= Duration::from_secs(2), "{spent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_never_goes_below_its_floor() {
        let gate = ApiGate::new(Some(0.3), 1);
        for _ in 0..THROTTLES_TO_SLOW_DOWN * 4 {
            for _ in 0..THROTTLES_TO_SLOW_DOWN {
                refused_once(&gate).await;
            }
        }
        assert_eq!(gate.current_rate(), Some(MIN_RATE));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_throttles_still_pause_and_slow_down_until_quiet_lifts_it() {
        let gate = ApiGate::new(None, 1);
        let before = Instant::now();
        let throttle = refused(&gate, None).await;
        let pause = throttle.pause.unwrap();
        assert!(pause >= period(DEFAULT_RATE) && pause < Duration::from_secs(1));
        let ticket = gate.turn().await;
        assert!(before.elapsed() >= pause, "the gate paused");
        gate.answered(ticket);
        refused_once(&gate).await;
        refused_once(&gate).await;
        assert_eq!(gate.current_rate(), Some(UNLIMITED_AS * SLOW_DOWN));
        for _ in 0..5 {
            tokio::time::sleep(QUIET_TO_SPEED_UP).await;
            let ticket = gate.turn().await;
            gate.answered(ticket);
        }
        assert_eq!(gate.current_rate(), None, "the limit is lifted again");
        assert!(gate.lock().limiter.is_none());
    }
}
