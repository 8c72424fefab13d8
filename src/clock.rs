//! The process's monotonic clock, injectable: real time since the first
//! reading plus an offset that only tests move, so refill (rate limits) and
//! ejection expiry (upstream pools) are tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicU64>,
}

impl Clock {
    /// Time since the process's first reading, plus this clock's offset.
    pub fn now(&self) -> Duration {
        self.at(Instant::now())
    }

    /// The reading this clock gave, or would have given, at `t`: a request
    /// that read the clock when it arrived need not read it again.
    pub fn at(&self, t: Instant) -> Duration {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        t.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
            + Duration::from_nanos(self.offset.load(Ordering::Relaxed))
    }

    /// Moves this clock (and everything built on it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset
            .fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_at_an_instant_lies_between_the_readings_around_it() {
        let clock = Clock::default();
        clock.advance(Duration::from_secs(5));
        let before = clock.now();
        let t = Instant::now();
        let after = clock.now();
        let at = clock.at(t);
        assert!(before <= at && at <= after, "{before:?} {at:?} {after:?}");
        assert!(at >= Duration::from_secs(5), "the offset counts: {at:?}");
        // An instant from before the first reading is the clock's start.
        if let Some(early) = t.checked_sub(Duration::from_secs(3600)) {
            assert_eq!(Clock::default().at(early), Duration::ZERO);
        }
    }
}
