//! The Prometheus registry that layers record into (SPEC §6).
//!
//! Labels are route and backend names from the config, never raw paths or
//! client-chosen strings, so cardinality stays bounded by the config.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A config name used as a label value without copying it per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Name,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub backend: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub backend: Name,
    pub endpoint: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub route: Name,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AggregateLabels {
    pub route: Name,
    pub call: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct JobLabels {
    pub route: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    pub topic: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub subscription: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub schedule: Name,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric fngate exports. One instance per running gateway.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histograms<RouteLabel>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: Histograms<BackendLabel>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub config_version: Gauge,
    pub open_connections: Gauge,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub rate_limited: Family<RouteLabel, Counter>,
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    pub aggregate_calls: Family<AggregateLabels, Counter>,
    pub jobs: Family<JobLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub schedule_fires: Family<ScheduleLabels, Counter>,
    pub jobs_pending: Family<BackendLabel, Gauge>,
    pub job_oldest: Family<BackendLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub job_attempts: Histograms<RouteLabel>,
    pub store_up: Gauge,
    pub store_operation: Histograms<OpLabel>,
    pub spans_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A gateway's latency lives between 100µs and a few seconds.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fngate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        let request_duration: Histograms<RouteLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            request_duration.clone(),
        );
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "Upstream attempts by backend and outcome (ok, http_5xx, connect_error, timeout, error)",
            upstream_requests.clone(),
        );
        let upstream_duration: Histograms<BackendLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending an upstream request to its response head",
            upstream_duration.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Config reloads by result (ok, error; unchanged: the file was read and nothing had changed)",
            config_reloads.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version of the running config",
            config_version.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let endpoint_healthy = Family::default();
        registry.register(
            "upstream_endpoint_healthy",
            "1 while an endpoint takes traffic; 0 while ejected or failing its health checks",
            endpoint_healthy.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by route",
            rate_limited.clone(),
        );
        let auth_failures = Family::default();
        registry.register(
            "auth_failures",
            "Requests refused with 401 or 403, by route and reason",
            auth_failures.clone(),
        );
        let aggregate_calls = Family::default();
        registry.register(
            "aggregate_calls",
            "Calls of aggregate routes, by route, call and outcome (ok, error, timeout, skipped, fallback)",
            aggregate_calls.clone(),
        );
        let jobs = Family::default();
        registry.register(
            "jobs",
            "Background jobs by route and outcome (accepted, succeeded, retried, dead, cancelled, deduplicated)",
            jobs.clone(),
        );
        let events = Family::default();
        registry.register(
            "events",
            "Published events by topic and outcome (accepted, duplicate)",
            events.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Event deliveries by subscription and outcome (succeeded, retried, dead, paused)",
            deliveries.clone(),
        );
        let schedule_fires = Family::default();
        registry.register(
            "schedule_fires",
            "Schedule ticks by schedule and outcome (ok, skipped, missed, caught_up, manual)",
            schedule_fires.clone(),
        );
        let jobs_pending = Family::default();
        registry.register(
            "jobs_pending",
            "Jobs not finished (queued, running, waiting to retry), by backend",
            jobs_pending.clone(),
        );
        let job_oldest = Family::default();
        registry.register(
            "job_oldest_seconds",
            "Age of the oldest unfinished job, by backend",
            job_oldest.clone(),
        );
        let job_attempts: Histograms<RouteLabel> = Family::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0])
        });
        registry.register(
            "job_attempts",
            "Attempts a finished job took, by route",
            job_attempts.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the job store takes writes; 0 while they fail or it is not open",
            store_up.clone(),
        );
        let store_operation: Histograms<OpLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_operation_seconds",
            "Time of job store operations, by operation",
            store_operation.clone(),
        );
        let spans_dropped = Counter::default();
        registry.register(
            "spans_dropped",
            "Spans not exported: the export queue was full, or their batch failed for 10 s",
            spans_dropped.clone(),
        );
        Self {
            registry,
            spans_dropped,
            jobs,
            events,
            deliveries,
            schedule_fires,
            jobs_pending,
            job_oldest,
            job_attempts,
            store_up,
            store_operation,
            rate_limited,
            auth_failures,
            aggregate_calls,
            endpoint_healthy,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            config_reloads,
            config_version,
            open_connections,
        }
    }

    /// Counts an answered request; `duration` is the route's histogram when
    /// the snapshot resolved it (routed requests), else it is looked up.
    /// Counts one answered request. A matched route brings its series
    /// (`counters`, `duration`), resolved with the snapshot; an unmatched one
    /// is looked up by name.
    pub(crate) fn request(
        &self,
        route: &Arc<str>,
        method: &Method,
        status: u16,
        elapsed: Duration,
        resolved: Option<(&RouteRequests, &Histogram)>,
    ) {
        let method = method_label(method);
        if let Some((counters, duration)) = resolved {
            counters.inc(&self.requests, method, status);
            duration.observe(elapsed.as_secs_f64());
            return;
        }
        let route = Name(route.clone());
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }

    /// A route's `fngate_requests_total` series, resolved as they are first seen.
    pub(crate) fn route_requests(&self, route: &Arc<str>) -> Arc<RouteRequests> {
        Arc::new(RouteRequests {
            route: Name(route.clone()),
            seen: arc_swap::ArcSwap::default(),
        })
    }

    pub(crate) fn job(&self, route: &str, outcome: &'static str) {
        self.jobs
            .get_or_create(&JobLabels {
                route: Name(route.into()),
                outcome,
            })
            .inc();
    }

    pub(crate) fn event(&self, topic: &str, outcome: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                topic: Name(topic.into()),
                outcome,
            })
            .inc();
    }

    pub(crate) fn delivery(&self, subscription: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                subscription: Name(subscription.into()),
                outcome,
            })
            .inc();
    }

    pub(crate) fn schedule_fire(&self, schedule: &str, outcome: &'static str, n: u64) {
        self.schedule_fires
            .get_or_create(&ScheduleLabels {
                schedule: Name(schedule.into()),
                outcome,
            })
            .inc_by(n);
    }

    pub(crate) fn store_op(&self, op: &'static str, elapsed: Duration) {
        self.store_operation
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }

    /// A route's latency histogram, resolved once per snapshot.
    pub(crate) fn route_duration(&self, route: &Arc<str>) -> Histogram {
        self.request_duration
            .get_or_create(&RouteLabel {
                route: Name(route.clone()),
            })
            .clone()
    }

    /// One backend's upstream series, resolved once when its pool is built, so
    /// an attempt records without hashing a label set under a lock.
    pub(crate) fn upstream_series(&self, backend: &Arc<str>) -> UpstreamSeries {
        let name = Name(backend.clone());
        let counter = |outcome| {
            self.upstream_requests
                .get_or_create(&UpstreamLabels {
                    backend: name.clone(),
                    outcome,
                })
                .clone()
        };
        UpstreamSeries {
            outcomes: AttemptOutcome::ALL.map(|o| counter(o.as_str())),
            duration: self
                .upstream_duration
                .get_or_create(&BackendLabel {
                    backend: name.clone(),
                })
                .clone(),
        }
    }

    pub fn endpoint_healthy(&self, backend: &Arc<str>, endpoint: &Arc<str>, healthy: bool) {
        self.endpoint_healthy
            .get_or_create(&EndpointLabels {
                backend: Name(backend.clone()),
                endpoint: Name(endpoint.clone()),
            })
            .set(i64::from(healthy));
    }

    pub fn rate_limited(&self, route: &Arc<str>) {
        self.rate_limited
            .get_or_create(&RouteLabel {
                route: Name(route.clone()),
            })
            .inc();
    }

    pub fn auth_failed(&self, route: &Arc<str>, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels {
                route: Name(route.clone()),
                reason,
            })
            .inc();
    }

    pub fn aggregate_call(&self, route: &Arc<str>, call: &Arc<str>, outcome: &'static str) {
        self.aggregate_calls
            .get_or_create(&AggregateLabels {
                route: Name(route.clone()),
                call: Name(call.clone()),
                outcome,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reload_result(if ok { "ok" } else { "error" });
    }

    pub fn reload_result(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// How an upstream attempt ended (the `outcome` label of `fngate_upstream_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Ok,
    Http5xx,
    ConnectError,
    Timeout,
    Error,
}

impl AttemptOutcome {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Http5xx,
        Self::ConnectError,
        Self::Timeout,
        Self::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Http5xx => "http_5xx",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// One route's `fngate_requests_total` series by method and status. Each pair
/// is asked of the family (a lock and a SipHash of the label set) only the
/// first time; after that it is found by scanning a few entries.
#[derive(Debug)]
pub(crate) struct RouteRequests {
    route: Name,
    seen: arc_swap::ArcSwap<Vec<(&'static str, u16, Counter)>>,
}

/// Pairs kept per route; past them (a route answering every status there is)
/// the family is asked each time.
const MAX_PAIRS: usize = 48;

impl RouteRequests {
    fn inc(&self, family: &Family<RequestLabels, Counter>, method: &'static str, status: u16) {
        let seen = self.seen.load();
        if let Some((_, _, c)) = seen.iter().find(|(m, s, _)| *s == status && *m == method) {
            c.inc();
            return;
        }
        let counter = family
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                method,
                status,
            })
            .clone();
        counter.inc();
        if seen.len() < MAX_PAIRS {
            self.seen.rcu(|v| {
                let mut v = Vec::clone(v);
                if !v.iter().any(|(m, s, _)| *s == status && *m == method) {
                    v.push((method, status, counter.clone()));
                }
                v
            });
        }
    }
}

/// A backend's attempt counters and latency histogram, shared with the registry.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSeries {
    /// Indexed like `AttemptOutcome::ALL`.
    outcomes: [Counter; 5],
    duration: Histogram,
}

impl UpstreamSeries {
    pub(crate) fn record(&self, outcome: AttemptOutcome, elapsed: Duration) {
        self.outcomes[outcome as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Client-chosen extension methods would be unbounded label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_resolved_counters_are_the_registrys_past_the_cache_too() {
        let m = Metrics::new();
        let route: Arc<str> = "r".into();
        let series = (m.route_requests(&route), m.route_duration(&route));
        // More pairs than are kept: the first MAX_PAIRS come from the scan, the rest from the family.
        let statuses: Vec<u16> = (0..MAX_PAIRS as u16 + 10).map(|i| 200 + i).collect();
        for _ in 0..3 {
            for &status in &statuses {
                for method in [&Method::GET, &Method::POST] {
                    let resolved = Some((&*series.0, &series.1));
                    m.request(&route, method, status, Duration::ZERO, resolved);
                }
            }
        }
        assert_eq!(series.0.seen.load().len(), MAX_PAIRS);
        let text = m.encode();
        for &status in &statuses {
            for method in ["GET", "POST"] {
                let line = format!(
                    "fngate_requests_total{{route=\"r\",method=\"{method}\",status=\"{status}\"}} 3"
                );
                assert!(text.contains(&line), "{line} missing from\n{text}");
            }
        }
        assert!(
            text.contains("fngate_request_duration_seconds_count{route=\"r\"} 348"),
            "{text}"
        );
    }
}
