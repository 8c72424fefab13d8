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
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed()
            + Duration::from_nanos(self.offset.load(Ordering::Relaxed))
    }

    /// Moves this clock (and everything built on it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset
            .fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}
