//! The emulator's one clock: the wall clock plus an offset, set at start (`--clock-offset`, ahead
//! or behind) and then only growing, so that a test can play a server whose clock is wrong and
//! make time pass (a form expire, a presigned link run out) without waiting for it.
//!
//! Every moment the emulator stamps or judges (forms and their expiry, presigned links, envelope
//! timestamps, `created_at`, new ids) is read from here. Durations it measures between requests
//! (the throttle's bucket, injected latency) stay on the monotonic clock: they are rates and
//! waits, not moments, and moving them would only refill the throttle.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The farthest the clock goes ahead of the wall clock (about a century), so that a moment it
/// gives can always be written down.
pub const MAX_AHEAD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The farthest `--clock-offset` sets the clock from the wall clock, either way (about ten
/// years): behind, every moment stays after 1970, so Unix timestamps and new ids stay positive.
pub const MAX_OFFSET: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Default)]
pub struct Clock {
    /// How far ahead of the wall clock this clock is, in milliseconds (behind when negative).
    ahead_ms: AtomicI64,
}

impl Clock {
    /// The wall clock, as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// The wall clock moved `seconds` ahead (behind when negative), at most `MAX_OFFSET` either
    /// way.
    pub fn with_offset(seconds: i64) -> Self {
        let max = MAX_OFFSET.as_secs() as i64;
        Self {
            ahead_ms: AtomicI64::new(seconds.clamp(-max, max) * 1000),
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.ahead()
    }

    /// Moves the clock forward by `by` (until it is `MAX_AHEAD` ahead of the wall clock), and
    /// says the new time. Never back: a moment it gave stays in the past.
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        let max = MAX_AHEAD.as_millis() as i64;
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                Some(a.saturating_add(ms).min(max).max(a))
            });
        self.now()
    }

    /// How far ahead of the wall clock it is (negative: behind).
    pub fn ahead(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.ahead_ms.load(Ordering::SeqCst))
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
    fn an_offset_clock_starts_ahead_or_behind_and_still_only_moves_forward() {
        for seconds in [7200, -7200] {
            let before = Utc::now();
            let clock = Clock::with_offset(seconds);
            let now = clock.now();
            let offset = chrono::Duration::seconds(seconds);
            assert_eq!(clock.ahead(), offset);
            assert!(now >= before + offset && now <= Utc::now() + offset);
            clock.advance(Duration::from_secs(60));
            assert_eq!(clock.ahead(), offset + chrono::Duration::seconds(60));
        }
        let behind = Clock::with_offset(-7200);
        behind.advance(Duration::from_secs(u64::MAX));
        assert_eq!(
            behind.ahead(),
            chrono::Duration::from_std(MAX_AHEAD).unwrap(),
            "behind, a huge advance still stops at the limit ahead"
        );
    }

    #[test]
    fn an_offset_past_the_limit_is_held_at_it() {
        let max = chrono::Duration::from_std(MAX_OFFSET).unwrap();
        assert_eq!(Clock::with_offset(i64::MAX).ahead(), max);
        assert_eq!(Clock::with_offset(i64::MIN).ahead(), -max);
        assert!(Clock::with_offset(i64::MIN).now().timestamp() > 0);
    }

    #[test]
    fn iso_is_seconds_in_utc() {
        let t = DateTime::parse_from_rfc3339("2026-01-31T09:30:00.750Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iso(t), "2026-01-31T09:30:00Z");
    }
}
