//! One backend's endpoints: which one a request goes to, which ones are out
//! (passive ejection, active checks), the concurrency cap and the retry budget.
//!
//! All state is atomics: the request path takes no lock here.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::budget::RetryBudget;

use crate::clock::Clock;
use crate::config::{Backend, Balance};
use crate::metrics::Metrics;

/// How an attempt went, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// Connect error, timeout, reset, 502/504, 503 without Retry-After.
    Failure,
    /// 429, or 503 with Retry-After: the function is busy, not broken.
    Overload,
}

#[derive(Debug)]
struct EndpointState {
    in_flight: Arc<AtomicU32>,
    failures: AtomicU32,
    ejected_until: AtomicU64,
    /// False while active health checks fail.
    checks_pass: AtomicBool,
}

/// The state of one endpoint as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub healthy: bool,
    pub ejected_until: Option<String>,
    pub failing_checks: bool,
    pub consecutive_failures: u32,
    pub in_flight: u32,
}

pub(crate) struct Pool {
    backend: Arc<Backend>,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    in_flight: Arc<AtomicU32>,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
    clock: Clock,
}

/// Counts a request against the backend cap and its endpoint until dropped
/// (the proxy keeps it in the response body, so a streaming answer counts).
#[derive(Debug)]
pub(crate) struct InFlight {
    backend: Arc<AtomicU32>,
    endpoint: Option<Arc<AtomicU32>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.fetch_sub(1, Ordering::Relaxed);
        if let Some(e) = &self.endpoint {
            e.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Pool {
    pub(crate) fn new(backend: Arc<Backend>, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let endpoints = backend
            .endpoints
            .iter()
            .map(|ep| {
                metrics.endpoint_healthy(&backend.name, &ep.url, true);
                EndpointState {
                    in_flight: Arc::new(AtomicU32::new(0)),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    checks_pass: AtomicBool::new(true),
                }
            })
            .collect();
        let budget = RetryBudget::new(backend.retry_min_per_second, backend.retry_budget_percent);
        Self {
            endpoints,
            next: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicU32::new(0)),
            budget,
            metrics,
            backend,
            clock,
        }
    }

    /// Milliseconds on the pool's clock, never 0 (0 means "not ejected").
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(std::time::Instant::now())
    }

    /// [`Self::now_ms`] at `t`, without reading the clock.
    pub(crate) fn ms_at(&self, t: std::time::Instant) -> u64 {
        self.clock.at(t).as_millis() as u64 + 1
    }

    /// Admits a request under `max_in_flight`, or refuses it at once.
    pub(crate) fn admit(&self) -> Option<InFlight> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight {
            backend: self.in_flight.clone(),
            endpoint: None,
        };
        let cap = self.backend.max_in_flight;
        (cap == 0 || n <= cap).then_some(guard)
    }

    /// How many more requests `admit` would take now (`usize::MAX` without a cap).
    pub(crate) fn free_slots(&self) -> usize {
        match self.backend.max_in_flight {
            0 => usize::MAX,
            cap => cap.saturating_sub(self.in_flight.load(Ordering::Relaxed)) as usize,
        }
    }

    /// Counts the request's attempt on endpoint `i` too.
    pub(crate) fn attempt(&self, admitted: &mut InFlight, i: usize) {
        let c = &self.endpoints[i].in_flight;
        c.fetch_add(1, Ordering::Relaxed);
        // One endpoint counter per request: a retry moves it.
        if let Some(prev) = admitted.endpoint.replace(c.clone()) {
            prev.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Every request adds to the retry budget; every retry takes from it.
    pub(crate) fn deposit(&self, now_ms: u64) {
        self.budget.deposit((now_ms / 1000) as u32);
    }

    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw((self.now_ms() / 1000) as u32)
    }

    /// The endpoint for the next attempt, avoiding those already `tried` while
    /// another is available, at `now` (`now_ms`). `None`: nothing is
    /// available (503 at once).
    pub(crate) fn pick(&self, tried: &[usize], now: u64) -> Option<usize> {
        let n = self.endpoints.len();
        let fresh = |i: &usize| !tried.contains(i);
        match self.backend.balance {
            Balance::RoundRobin => {
                // One step of the rotation per request; a retry moves on from
                // the endpoint it just tried, so retries never skew the rotation.
                let start = match tried.last() {
                    None => self.next.fetch_add(1, Ordering::Relaxed),
                    Some(last) => last + 1,
                };
                let order = (0..n).map(|k| (start + k) % n);
                order
                    .clone()
                    .find(|i| fresh(i) && self.available(*i, now))
                    .or_else(|| order.clone().find(|i| self.available(*i, now)))
            }
            Balance::Random | Balance::LeastRequests => {
                let mut candidates: Vec<usize> = (0..n)
                    .filter(|i| fresh(i) && self.available(*i, now))
                    .collect();
                if candidates.is_empty() {
                    candidates = (0..n).filter(|i| self.available(*i, now)).collect();
                }
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len if self.backend.balance == Balance::Random => {
                        Some(candidates[fastrand::usize(..len)])
                    }
                    len => {
                        // Power of two choices: two distinct random candidates, the less busy wins.
                        let a = fastrand::usize(..len);
                        let b = (a + 1 + fastrand::usize(..len - 1)) % len;
                        let load = |i: usize| {
                            self.endpoints[candidates[i]]
                                .in_flight
                                .load(Ordering::Relaxed)
                        };
                        Some(candidates[if load(b) < load(a) { b } else { a }])
                    }
                }
            }
        }
    }

    fn available(&self, i: usize, now: u64) -> bool {
        let e = &self.endpoints[i];
        if !e.checks_pass.load(Ordering::Relaxed) {
            return false;
        }
        let until = e.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // The ejection is over; the first to notice logs the return.
        if e.ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let url = &self.backend.endpoints[i].url;
            tracing::info!(backend = %self.backend.name, endpoint = %url, "endpoint returns after ejection");
            self.metrics.endpoint_healthy(&self.backend.name, url, true);
        }
        true
    }

    /// Passive health: `eject_after` failures in a row eject an endpoint for
    /// `eject_for`, unless that would leave no endpoint available or pass
    /// `max_ejection_percent`. Overload neither counts nor resets.
    pub(crate) fn report(&self, i: usize, outcome: Outcome) {
        let e = &self.endpoints[i];
        match outcome {
            Outcome::Ok => e.failures.store(0, Ordering::Relaxed),
            Outcome::Overload => {}
            Outcome::Failure => {
                let failures = e.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.backend.eject_after {
                    self.try_eject(i);
                }
            }
        }
    }

    fn try_eject(&self, i: usize) {
        let now = self.now_ms();
        let n = self.endpoints.len();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let available = (0..n).filter(|&j| self.available(j, now)).count();
        let within_cap = (ejected + 1) * 100 <= self.backend.max_ejection_percent as usize * n;
        if available <= 1 || !within_cap || !self.available(i, now) {
            return;
        }
        let until = now + self.backend.eject_for.as_millis() as u64;
        let e = &self.endpoints[i];
        e.ejected_until.store(until, Ordering::Relaxed);
        e.failures.store(0, Ordering::Relaxed);
        let url = &self.backend.endpoints[i].url;
        tracing::warn!(
            backend = %self.backend.name,
            endpoint = %url,
            eject_for = ?self.backend.eject_for,
            "endpoint ejected after {} consecutive failures",
            self.backend.eject_after
        );
        self.metrics
            .endpoint_healthy(&self.backend.name, url, false);
    }

    /// Active health: the checker reports each endpoint's new state.
    pub(crate) fn set_checks_pass(&self, i: usize, pass: bool) {
        let e = &self.endpoints[i];
        if e.checks_pass.swap(pass, Ordering::Relaxed) != pass {
            let url = &self.backend.endpoints[i].url;
            if pass {
                tracing::info!(backend = %self.backend.name, endpoint = %url, "endpoint passes its health checks again");
            } else {
                tracing::warn!(backend = %self.backend.name, endpoint = %url, "endpoint fails its health checks; taken out");
            }
            let ejected = e.ejected_until.load(Ordering::Relaxed) > self.now_ms();
            self.metrics
                .endpoint_healthy(&self.backend.name, url, pass && !ejected);
        }
    }

    pub(crate) fn status(&self) -> Vec<EndpointStatus> {
        let now = self.now_ms();
        self.endpoints
            .iter()
            .zip(&self.backend.endpoints)
            .map(|(e, ep)| {
                let until = e.ejected_until.load(Ordering::Relaxed);
                let ejected = until > now;
                let checks = e.checks_pass.load(Ordering::Relaxed);
                EndpointStatus {
                    endpoint: ep.url.to_string(),
                    healthy: checks && !ejected,
                    ejected_until: ejected.then(|| {
                        let at = SystemTime::now() + Duration::from_millis(until - now);
                        humantime::format_rfc3339_seconds(at).to_string()
                    }),
                    failing_checks: !checks,
                    consecutive_failures: e.failures.load(Ordering::Relaxed),
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: &str, clock: &Clock) -> Pool {
        let text = format!(
            "[backends.b]\nurls = [\"http://10.0.0.1\", \"http://10.0.0.2\", \"http://10.0.0.3\"]\n{extra}\n\
             [[routes]]\nname = \"r\"\npath = \"/\"\nbackend = \"b\"\n"
        );
        let config = crate::Config::parse(&text, "t.toml", &|_| None).expect("valid");
        Pool::new(
            config.backends[0].clone(),
            Arc::new(Metrics::new()),
            clock.clone(),
        )
    }

    #[test]
    fn round_robin_skips_endpoints_already_tried() {
        let p = pool("", &Clock::default());
        let picks: Vec<usize> = (0..6)
            .map(|_| p.pick(&[], p.now_ms()).expect("pick"))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let again = p.pick(&[0, 1], p.now_ms()).expect("pick");
        assert_eq!(again, 2, "a retry goes to an endpoint not tried yet");
    }

    #[test]
    fn consecutive_failures_eject_until_eject_for_passes_on_the_clock() {
        let clock = Clock::default();
        let p = pool(
            "eject_after = 2\neject_for = \"30s\"\nmax_ejection_percent = 50",
            &clock,
        );
        p.report(0, Outcome::Failure);
        p.report(0, Outcome::Ok);
        p.report(0, Outcome::Failure);
        assert!(p.status()[0].healthy, "a success resets the count");
        p.report(0, Outcome::Failure);
        assert!(!p.status()[0].healthy, "two in a row eject");
        assert!((0..30).all(|_| p.pick(&[], p.now_ms()) != Some(0)));
        clock.advance(Duration::from_secs(29));
        assert!(!p.status()[0].healthy);
        clock.advance(Duration::from_secs(2));
        assert!(p.status()[0].healthy, "back after eject_for");
        assert!((0..3).any(|_| p.pick(&[], p.now_ms()) == Some(0)));
    }

    #[test]
    fn ejection_keeps_to_max_ejection_percent_and_overload_never_counts() {
        let p = pool(
            "eject_after = 1\nmax_ejection_percent = 50",
            &Clock::default(),
        );
        for _ in 0..5 {
            p.report(2, Outcome::Overload);
        }
        assert!(
            p.status()[2].healthy,
            "429 and 503 with Retry-After never eject"
        );
        p.report(0, Outcome::Failure);
        p.report(1, Outcome::Failure);
        let healthy: Vec<bool> = p.status().iter().map(|s| s.healthy).collect();
        assert_eq!(
            healthy,
            [false, true, true],
            "a second ejection would pass 50%"
        );
    }

    #[test]
    fn max_in_flight_admits_up_to_the_cap_and_frees_on_drop() {
        let p = pool("max_in_flight = 2", &Clock::default());
        let (a, b) = (p.admit(), p.admit());
        assert!(a.is_some() && b.is_some());
        assert!(p.admit().is_none(), "the third waits for nothing: refused");
        drop(a);
        assert!(p.admit().is_some(), "a finished request frees its slot");
    }
}
