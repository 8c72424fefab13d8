//! One backend's endpoints: which one a request goes to, which ones are out
//! (passive ejection, active checks), the concurrency cap and the retry budget.
//!
//! All state is atomics: the request path takes no lock here.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower::retry::budget::{Budget, TpsBudget};

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
    budget: TpsBudget,
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
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            backend.retry_min_per_second,
            backend.retry_budget_percent as f32 / 100.0,
        );
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
    fn now_ms(&self) -> u64 {
        self.clock.now().as_millis() as u64 + 1
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
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    pub(crate) fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// The endpoint for the next attempt, avoiding those already `tried` while
    /// another is available. `None`: nothing is available (503 at once).
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
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
