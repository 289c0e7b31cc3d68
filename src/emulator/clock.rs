//! The emulator's one clock: the wall clock plus an offset that only grows, so that a test can
//! make time pass (a form expire, a presigned link run out) without waiting for it.
//!
//! Every moment the emulator stamps or judges (forms and their expiry, presigned links, envelope
//! timestamps, `created_at`, new ids) is read from here. Durations it measures between requests
//! (the throttle's bucket, injected latency) stay on the monotonic clock: they are rates and
//! waits, not moments, and moving them would only refill the throttle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The farthest the clock goes ahead of the wall clock (about a century), so that a moment it
/// gives can always be written down.
pub const MAX_AHEAD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Default)]
pub struct Clock {
    /// How far ahead of the wall clock this clock is, in milliseconds.
    ahead_ms: AtomicU64,
}

impl Clock {
    /// The wall clock, as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.ahead()
    }

    /// Moves the clock forward by `by` (up to `MAX_AHEAD` in all), and says the new time.
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        let max = MAX_AHEAD.as_millis() as u64;
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                Some(a.saturating_add(ms).min(max))
            });
        self.now()
    }

    /// How far ahead of the wall clock it is.
    pub fn ahead(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.ahead_ms.load(Ordering::SeqCst) as i64)
    }
}

/// `2026-01-31T09:30:00Z`: the API's way of writing a moment.
pub fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_clock_shows_the_wall_clock() {
        let before = Utc::now();
        let now = Clock::new().now();
        assert!(now >= before && now <= Utc::now());
    }

    #[test]
    fn advancing_moves_now_forward_by_that_much_and_adds_up() {
        let clock = Clock::new();
        let before = Utc::now();
        let said = clock.advance(Duration::from_secs(3601));
        assert_eq!(clock.ahead(), chrono::Duration::seconds(3601));
        assert!(said >= before + chrono::Duration::seconds(3601));
        assert!(said <= Utc::now() + chrono::Duration::seconds(3601));
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.ahead(), chrono::Duration::milliseconds(3_601_500));
        assert!(clock.now() >= said);
    }

    #[test]
    fn a_huge_advance_stops_at_the_limit_and_now_still_works() {
        let clock = Clock::new();
        clock.advance(Duration::from_secs(u64::MAX));
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            clock.ahead(),
            chrono::Duration::from_std(MAX_AHEAD).unwrap()
        );
        assert!(clock.now() > Utc::now());
    }

    #[test]
    fn iso_is_seconds_in_utc() {
        let t = DateTime::parse_from_rfc3339("2026-01-31T09:30:00.750Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iso(t), "2026-01-31T09:30:00Z");
    }
}
