//! Time as the pipeline sees it: the system clock in production, a clock that tests
//! move by hand (so that leases and requeue delays pass without sleeping).
//!
//! Timestamps in job records are RFC 3339 strings; the helpers here write and compare
//! them against the clock's now.

use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time, and the record timestamps derived from it.
pub trait Clock: Send + Sync + Debug {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// Now as an RFC 3339 timestamp.
    fn timestamp(&self) -> String {
        format(self.now())
    }

    /// `duration` from now as an RFC 3339 timestamp.
    fn after(&self, duration: Duration) -> String {
        format(self.now() + duration)
    }

    /// True when `timestamp` plus `delay` is not in the future (or `timestamp` is
    /// unreadable: a record with a broken time must not block a job forever).
    fn has_passed_by(&self, timestamp: &str, delay: Duration) -> bool {
        OffsetDateTime::parse(timestamp, &Rfc3339).map_or(true, |t| t + delay <= self.now())
    }

    /// Whole seconds from `timestamp` to now (0 when it is unreadable or ahead).
    fn seconds_since(&self, timestamp: &str) -> u64 {
        OffsetDateTime::parse(timestamp, &Rfc3339).map_or(0, |t| {
            u64::try_from((self.now() - t).whole_seconds()).unwrap_or(0)
        })
    }

    /// True when `timestamp` is not in the future (or unreadable).
    fn has_passed(&self, timestamp: &str) -> bool {
        self.has_passed_by(timestamp, Duration::ZERO)
    }
}

/// Whole seconds from `start` to `end` (RFC 3339 timestamps), or None when either
/// is unreadable.
pub fn seconds_between(start: &str, end: &str) -> Option<i64> {
    let parse = |t: &str| OffsetDateTime::parse(t, &Rfc3339).ok();
    Some((parse(end)? - parse(start)?).whole_seconds())
}

fn format(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_pass_when_the_clock_moves_past_them() {
        let clock = ManualClock::new(time::macros::datetime!(2026-12-02 12:00 UTC));
        let lease = clock.after(Duration::from_secs(60));
        assert_eq!(lease, "2026-12-02T12:01:00Z");
        assert!(!clock.has_passed(&lease));
        clock.advance(Duration::from_secs(60));
        assert!(clock.has_passed(&lease));
        assert!(!clock.has_passed_by(&lease, Duration::from_secs(1)));
        assert!(clock.has_passed("not a time"));
    }
}
