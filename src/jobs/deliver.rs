//! The deliverer (SPEC §7 "Delivery", "Fairness and back-pressure"): one loop
//! claims due jobs backend by backend, never more than the backend's free
//! `max_in_flight` slots nor a route's free `concurrency`, and runs each
//! attempt as its own task under a lease it renews. Each backend is claimed
//! from its own part of the store's due index, so one backend's burst never
//! stands in front of another's jobs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{
    decode_headers, encode_headers, Attempt, Claim, Claimed, JobResult, Kind, Millis, Next,
    Pending, Policy,
};
use super::{now_ms, Jobs};
use crate::config::{Action, Config, Delivery, HeaderEdits, Invoke, ScheduleTarget};
use crate::metrics::{BackendLabel, Metrics, Name};
use crate::telemetry::{KeyValue, Telemetry};
use crate::upstream::{Outgoing, Prepared, Traced, Upstream, UpstreamError};

/// How long an attempt's lease lasts; it is renewed at a third of that.
pub(crate) const LEASE: Duration = Duration::from_secs(30);
/// The longest a function's `Retry-After` is honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The most attempts one claim takes for a backend.
const CLAIM_MAX: usize = 256;
/// The whole backlog is read this often: for the gauges, and for work this
/// process did not see arrive (jobs found at start-up, leases that lapsed).
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// Finished jobs past their `result_ttl` are swept this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Attempts in flight here, per route, to keep each under its `concurrency`.
#[derive(Default)]
struct InFlight(Mutex<HashMap<String, usize>>);

impl InFlight {
    fn count(&self, route: &str) -> usize {
        self.0
            .lock()
            .map_or(0, |m| m.get(route).copied().unwrap_or(0))
    }

    fn add(self: &Arc<Self>, route: &str) -> Slot {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(route.to_owned()).or_insert(0) += 1;
        }
        Slot {
            of: self.clone(),
            route: route.to_owned(),
        }
    }
}

/// One attempt's place in its route's concurrency.
struct Slot {
    of: Arc<InFlight>,
    route: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.of.0.lock() {
            if let Some(n) = m.get_mut(&self.route) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Starts the deliverer; it returns once draining began and every attempt
/// ended (or was stopped by [`Jobs::stop`]).
pub(crate) fn spawn(jobs: Arc<Jobs>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(jobs))
}

async fn run(jobs: Arc<Jobs>) {
    let in_flight = Arc::new(InFlight::default());
    let tasks = TaskTracker::new();
    // A backend that answered 429 or 503 gets nothing before this.
    let paused: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // When each backend's next job is due: from the backlog, the hints of
    // this process' accepts and retries, and what each claim says.
    let mut due: HashMap<String, Millis> = HashMap::new();
    let mut last_backlog: Option<Instant> = None;
    let mut last_sweep: Option<Instant> = None;
    let mut warned_path = false;
    loop {
        if jobs.draining() {
            break;
        }
        let mut sleep = BACKLOG_EVERY;
        if let Some(store) = jobs.opened() {
            let snapshot = jobs.state.load();
            let configured = snapshot.config.store.location();
            if !warned_path && jobs.store_location() != Some(configured.as_str()) {
                warned_path = true;
                tracing::warn!(%configured,
                    "[store] changed: the store in use stays until a restart");
            }
            if last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY)
                || jobs.rescan.swap(false, Ordering::SeqCst)
            {
                last_backlog = Some(Instant::now());
                match jobs.timed("backlog", store.backlog(now_ms())).await {
                    Ok(pending) => {
                        publish(&jobs.state.metrics, &pending);
                        due = pending
                            .into_iter()
                            .map(|p| (p.backend, p.next_due))
                            .collect();
                    }
                    Err(e) => tracing::warn!("reading the job backlog failed: {e}"),
                }
                // Paused here or by another instance sharing the store.
                match jobs.timed("paused", store.paused()).await {
                    Ok(names) => {
                        if let Ok(mut p) = jobs.paused.lock() {
                            *p = names.into_iter().collect();
                        }
                    }
                    Err(e) => tracing::warn!("reading paused subscriptions failed: {e}"),
                }
            }
            if let Ok(mut hints) = jobs.hints.lock() {
                for (backend, at) in hints.drain() {
                    let t = due.entry(backend).or_insert(at);
                    *t = (*t).min(at);
                }
            }
            for upstream in snapshot.upstreams.iter() {
                let backend = &upstream.backend.name;
                let Some(&at) = due.get(&**backend) else {
                    continue;
                };
                let wall = now_ms();
                if at > wall {
                    sleep = sleep.min(Duration::from_millis((at - wall) as u64));
                    continue;
                }
                let now = Instant::now();
                if let Some(until) = paused.lock().ok().and_then(|p| p.get(&**backend).copied()) {
                    if until > now {
                        sleep = sleep.min(until - now);
                        continue;
                    }
                }
                // Due but no free slot: a finished attempt rings `wake`.
                let limit = upstream.free_slots().min(CLAIM_MAX);
                let route_free = {
                    let paused = jobs.paused.lock().map(|p| p.clone()).unwrap_or_default();
                    free_by_route(&snapshot.config, backend, &in_flight, &paused)
                };
                if limit == 0 || (!route_free.is_empty() && route_free.values().all(|&f| f == 0)) {
                    continue;
                }
                let claim = Claim {
                    backend: backend.to_string(),
                    owner: jobs.owner.clone(),
                    now: wall,
                    lease_until: wall + LEASE.as_millis() as Millis,
                    limit,
                    route_free,
                    // A job whose route was removed still goes out, at the default concurrency.
                    other_free: Delivery::default().concurrency,
                };
                let claims = match jobs.timed("claim", store.claim(claim)).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(backend = %backend, "claiming jobs failed: {e}");
                        continue;
                    }
                };
                match claims.next_due {
                    Some(next) => {
                        due.insert(backend.to_string(), next);
                        if next > wall {
                            sleep = sleep.min(Duration::from_millis((next - wall) as u64));
                        }
                    }
                    None => {
                        due.remove(&**backend);
                    }
                }
                for job in claims.jobs {
                    let edits = snapshot
                        .config
                        .route(&job.route)
                        .map(|r| r.response_headers.clone())
                        .unwrap_or_default();
                    let slot = in_flight.add(&job.route);
                    let token = jobs.stop.child_token();
                    if let Ok(mut r) = jobs.running.lock() {
                        r.insert(job.id.clone(), token.clone());
                    }
                    tasks.spawn(attempt(
                        jobs.clone(),
                        upstream.clone(),
                        job,
                        edits,
                        token,
                        paused.clone(),
                        slot,
                    ));
                }
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                if let Err(e) = jobs.timed("sweep", store.sweep(now_ms())).await {
                    tracing::warn!("sweeping expired jobs failed: {e}");
                }
            }
        }
        tokio::select! {
            () = jobs.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
    // Draining: no new attempt; those running finish, or stop with the grace.
    tasks.close();
    tasks.wait().await;
}

/// Each async route and subscription of `backend` with its free
/// `concurrency` slots; a paused subscription has none.
fn free_by_route(
    config: &Config,
    backend: &str,
    in_flight: &InFlight,
    paused: &HashSet<String>,
) -> HashMap<String, usize> {
    let routes = config
        .routes
        .iter()
        .filter(|r| r.invoke != Invoke::Sync)
        .filter(|r| matches!(&r.action, Action::Forward(f) if *f.backend.name == *backend))
        .map(|r| (&r.name, &r.delivery));
    let subscriptions = config
        .subscriptions
        .iter()
        .filter(|s| *s.backend.name == *backend)
        .map(|s| (&s.name, &s.delivery));
    let schedules = config
        .schedules
        .iter()
        .filter(|s| matches!(&s.target, ScheduleTarget::Backend { backend: b, .. } if *b.name == *backend))
        .map(|s| (&s.name, &s.delivery));
    routes
        .chain(subscriptions)
        .chain(schedules)
        .map(|(name, delivery)| {
            let free = if paused.contains(&**name) {
                0
            } else {
                delivery.concurrency.saturating_sub(in_flight.count(name))
            };
            (name.to_string(), free)
        })
        .collect()
}

/// `fngate_jobs_pending` and `fngate_job_oldest_seconds` from the backlog.
fn publish(metrics: &Metrics, backlog: &[Pending]) {
    metrics.jobs_pending.clear();
    metrics.job_oldest.clear();
    let wall = now_ms();
    for p in backlog {
        let label = BackendLabel {
            backend: Name(p.backend.as_str().into()),
        };
        metrics
            .jobs_pending
            .get_or_create(&label)
            .set(p.jobs as i64);
        metrics
            .job_oldest
            .get_or_create(&label)
            .set((wall - p.oldest).max(0) as f64 / 1000.0);
    }
}

/// How a finished attempt went, for the log and the metrics.
enum Outcome {
    Answered(u16),
    Failed(String),
    TimedOut,
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    jobs: Arc<Jobs>,
    upstream: Arc<Upstream>,
    job: Claimed,
    edits: HeaderEdits,
    token: CancellationToken,
    paused: Arc<Mutex<HashMap<String, Instant>>>,
    slot: Slot,
) {
    let Some(store) = jobs.opened() else { return };
    let policy = job.policy;
    let started_wall = now_ms();
    let started = Instant::now();
    let backend = upstream.backend.name.clone();
    let finish = |attempt: Option<Attempt>, next: Next| {
        let (store, jobs, id, backend) =
            (store.clone(), jobs.clone(), job.id.clone(), backend.clone());
        async move {
            let again = match next {
                Next::Retry { at, .. } | Next::Release { at } => Some(at),
                Next::Succeeded(_) | Next::Dead { .. } => None,
            };
            let recorded = jobs
                .timed(
                    "finish",
                    store.finish(&id, &jobs.owner, attempt, next, now_ms()),
                )
                .await;
            if let Err(e) = &recorded {
                tracing::warn!(job_id = %id, "recording an attempt failed: {e}");
            }
            let recorded = recorded.unwrap_or(false);
            if let (true, Some(at)) = (recorded, again) {
                jobs.due(&backend, at);
            }
            recorded
        }
    };

    // Due past max_age (released late, or its lease lapsed): dead. A retry
    // scheduled within max_age runs even if this instance is late to it.
    if job.due > job.created.saturating_add(policy.max_age_ms as Millis) {
        let next = Next::Dead {
            result: None,
            timed_out: false,
        };
        let a = Attempt {
            n: job.attempt,
            at: started_wall,
            status: None,
            duration_ms: 0,
            error: Some("max_age passed before the job was delivered".into()),
        };
        if finish(Some(a), next).await {
            done(&jobs, &job, "dead");
        }
        forget(&jobs, &job.id);
        return;
    }

    // The lease is renewed while the attempt runs; losing it (cancelled,
    // taken over) aborts the attempt. (The answer waits while a renewal is
    // written: a few milliseconds every ten seconds.)
    let timeout = Duration::from_millis(policy.timeout_ms);
    let signing = signing_for(&jobs, &job).await;
    let sent = tokio::time::timeout(
        timeout,
        send(
            &upstream,
            &job,
            &edits,
            timeout,
            policy.max_result,
            signing,
            jobs.state.load().telemetry.clone(),
        ),
    );
    tokio::pin!(sent);
    let mut renewals = tokio::time::interval_at(Instant::now() + LEASE / 3, LEASE / 3);
    let result = loop {
        tokio::select! {
            r = &mut sent => break Some(r.unwrap_or(Err(UpstreamError::Timeout { backend: backend.clone() }))),
            () = token.cancelled() => break None,
            _ = renewals.tick() => {
                let until = now_ms() + LEASE.as_millis() as Millis;
                match jobs.timed("renew", store.renew(&job.id, &jobs.owner, until)).await {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(e) => tracing::warn!(job_id = %job.id, "renewing a lease failed: {e}"),
                }
            }
        }
    };
    let elapsed = started.elapsed();
    let Some(result) = result else {
        // Cancelled (the job is gone) or stopped at shutdown: give the attempt back.
        if jobs.stop.is_cancelled() {
            let _ = finish(None, Next::Release { at: now_ms() }).await;
        }
        forget(&jobs, &job.id);
        return;
    };

    let now = now_ms();
    let deadline = job.created.saturating_add(policy.max_age_ms as Millis);
    // The next attempt, unless attempts are spent or it would start past max_age.
    let retry = |after: Option<Duration>| {
        let at = now
            + after
                .unwrap_or_else(|| backoff(&policy, job.attempt))
                .as_millis() as Millis;
        (job.attempt < policy.attempts && at <= deadline).then_some(at)
    };
    let mut past_max_age = false;
    let (outcome, next) = match result {
        Ok((410, ..)) if job.kind == Kind::Subscription => {
            // Gone: the subscription pauses with its events kept, this one
            // included, until an operator resumes it (SPEC §8).
            tracing::warn!(subscription = %job.route, job_id = %job.id,
                "the subscriber answered 410 Gone: the subscription is paused until resumed");
            if let Ok(mut p) = jobs.paused.lock() {
                p.insert(job.route.clone());
            }
            if let Err(e) = jobs.timed("pause", store.pause(&job.route, now)).await {
                tracing::warn!(subscription = %job.route, "recording the pause failed: {e}");
            }
            jobs.state.metrics.delivery(&job.route, "paused");
            let _ = finish(None, Next::Release { at: now }).await;
            forget(&jobs, &job.id);
            drop(slot);
            return;
        }
        Ok((status, result, retry_after)) => {
            let outcome = Outcome::Answered(status);
            let retryable = matches!(status, 408 | 429 | 500 | 502..=599);
            let next = match (status, retryable.then(|| retry(retry_after)).flatten()) {
                (200..=399, _) => Next::Succeeded(result),
                (_, Some(at)) => {
                    if matches!(status, 429 | 503) {
                        let pause = retry_after.unwrap_or_else(|| backoff(&policy, job.attempt));
                        if let Ok(mut p) = paused.lock() {
                            p.insert(backend.to_string(), Instant::now() + pause);
                        }
                    }
                    Next::Retry {
                        at,
                        timed_out: false,
                    }
                }
                _ => {
                    past_max_age = retryable && job.attempt < policy.attempts;
                    Next::Dead {
                        result: Some(result),
                        timed_out: false,
                    }
                }
            };
            (outcome, next)
        }
        Err(UpstreamError::Unavailable { reason, .. }) => {
            // No slot or no healthy endpoint: no attempt was made, none is spent.
            tracing::debug!(job_id = %job.id, "delivery waits: {reason}");
            let _ = finish(None, Next::Release { at: now + 250 }).await;
            forget(&jobs, &job.id);
            drop(slot);
            return;
        }
        Err(e) => {
            let timed_out = matches!(e, UpstreamError::Timeout { .. });
            let outcome = if timed_out {
                Outcome::TimedOut
            } else {
                Outcome::Failed(e.to_string())
            };
            let next = match retry(None) {
                Some(at) => Next::Retry { at, timed_out },
                None => {
                    past_max_age = job.attempt < policy.attempts;
                    Next::Dead {
                        result: None,
                        timed_out,
                    }
                }
            };
            (outcome, next)
        }
    };
    let (status, error) = match &outcome {
        Outcome::Answered(s) => (
            Some(*s),
            (*s >= 400).then(|| format!("the function answered {s}")),
        ),
        Outcome::Failed(e) => (None, Some(e.clone())),
        Outcome::TimedOut => (
            None,
            Some(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        ),
    };
    let error = match error {
        Some(e) if past_max_age => Some(format!("{e}; the next attempt would pass max_age")),
        e => e,
    };
    let label = match &next {
        Next::Succeeded(_) => "succeeded",
        Next::Dead { .. } => "dead",
        Next::Retry { .. } => "retried",
        Next::Release { .. } => "released",
    };
    tracing::info!(
        target: "fngate::access",
        ts = %humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        job_id = %job.id,
        attempt = job.attempt,
        route = %job.route,
        backend = %backend,
        method = %job.request.method,
        status = status.unwrap_or(0),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        outcome = label,
        error = error.as_deref().unwrap_or("-"),
    );
    let record = Attempt {
        n: job.attempt,
        at: started_wall,
        status,
        duration_ms: elapsed.as_millis() as u64,
        error,
    };
    let finished = matches!(next, Next::Succeeded(_) | Next::Dead { .. });
    if finish(Some(record), next).await {
        if finished {
            done(&jobs, &job, label);
        } else {
            count(&jobs, &job, "retried");
        }
    }
    forget(&jobs, &job.id);
    drop(slot);
    // A slot is free: the deliverer may have jobs waiting for it.
    jobs.wake.notify_one();
}

/// An outcome in `fngate_jobs_total` or, for an event's, `fngate_deliveries_total`.
fn count(jobs: &Jobs, job: &Claimed, outcome: &'static str) {
    match job.kind {
        Kind::Route | Kind::Schedule => jobs.state.metrics.job(&job.route, outcome),
        Kind::Subscription => jobs.state.metrics.delivery(&job.route, outcome),
    }
}

fn done(jobs: &Jobs, job: &Claimed, outcome: &'static str) {
    count(jobs, job, outcome);
    jobs.state
        .metrics
        .job_attempts
        .get_or_create(&crate::metrics::RouteLabel {
            route: Name(job.route.as_str().into()),
        })
        .observe(f64::from(job.attempt));
    jobs.finished(&job.id);
}

fn forget(jobs: &Jobs, id: &str) {
    if let Ok(mut r) = jobs.running.lock() {
        r.remove(id);
    }
}

/// What a delivery announcing an uploaded file needs to sign its URL: the
/// key, `files_path` and the upload route's `url_ttl`.
type Signing = (std::sync::Arc<[u8]>, String, Duration);

async fn signing_for(jobs: &Jobs, job: &Claimed) -> Option<Signing> {
    let marker = format!("{}:", crate::signed_url::FILE_MARKER);
    if !job
        .request
        .headers
        .windows(marker.len())
        .any(|w| w == marker.as_bytes())
    {
        return None;
    }
    let key = match jobs.files_key().await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(job_id = %job.id, "no key to sign the file URL: {e}");
            return None;
        }
    };
    let snapshot = jobs.state.load();
    let files = snapshot.config.server.files_path.clone();
    let headers = String::from_utf8_lossy(&job.request.headers);
    let ttl = snapshot
        .config
        .routes
        .iter()
        .find_map(|r| match &r.action {
            Action::Upload(u) if headers.contains(&format!("{files}/{}/", r.name)) => {
                Some(u.url_ttl)
            }
            _ => None,
        })
        .unwrap_or(Duration::from_secs(3600));
    Some((key, files, ttl))
}

/// Sends one attempt and reads the answer, keeping at most `max_result` of its body.
async fn send(
    upstream: &Upstream,
    job: &Claimed,
    edits: &HeaderEdits,
    timeout: Duration,
    max_result: u64,
    signing: Option<Signing>,
    telemetry: Option<Arc<Telemetry>>,
) -> Result<(u16, JobResult, Option<Duration>), UpstreamError> {
    let r = &job.request;
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.target.as_str(), None),
    };
    let mut headers = decode_headers(&r.headers);
    // An event's delivery carries the event's identity instead (SPEC §8).
    if !headers.contains_key("idempotency-key") {
        if let Ok(v) = HeaderValue::try_from(format!("\"{}\"", job.id)) {
            headers.insert("idempotency-key", v);
        }
    }
    if let Ok(v) = HeaderValue::try_from(&job.id) {
        headers.insert("x-fngate-job-id", v);
    }
    headers.insert("x-fngate-attempt", HeaderValue::from(job.attempt));
    // Traced, the attempt's span is the backend's parent, below the span that
    // accepted the job; else the backend gets a new parent id in the same trace.
    let traceparent = match &telemetry {
        Some(_) => job
            .traceparent
            .as_deref()
            .and_then(|tp| HeaderValue::try_from(tp).ok()),
        None => job
            .traceparent
            .as_deref()
            .and_then(crate::context::child_traceparent),
    };
    if let Some(tp) = traceparent {
        headers.insert("traceparent", tp);
    } else {
        headers.remove("traceparent");
    }
    let attributes = match &telemetry {
        Some(_) => vec![
            KeyValue::new("fngate.job.id", job.id.clone()),
            KeyValue::new("fngate.job.kind", job.kind.as_str()),
            KeyValue::new("fngate.job.attempt", i64::from(job.attempt)),
            KeyValue::new("fngate.route", job.route.clone()),
        ],
        None => Vec::new(),
    };
    let mut body = r.body.clone();
    if let Some((key, files, ttl)) = &signing {
        crate::signed_url::sign_delivery(&mut headers, &mut body, key, files, *ttl);
    }
    let started = Instant::now();
    let res = upstream
        .send(Outgoing {
            method: Method::from_bytes(r.method.as_bytes()).unwrap_or(Method::POST),
            path,
            query,
            client_target: None,
            headers,
            body: if body.is_empty() {
                Prepared::Empty
            } else {
                Prepared::Full(body)
            },
            host: r
                .host
                .as_deref()
                .and_then(|h| HeaderValue::try_from(h).ok()),
            started,
            deadline: started + timeout,
            max_body: u64::MAX,
            log: None,
            response_edits: edits,
            upgrade: false,
            attempt_timeout: Some(timeout),
            trace: telemetry.as_deref().map(|telemetry| Traced {
                telemetry,
                attributes: &attributes,
            }),
        })
        .await?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| retry_after(v.as_bytes()));
    let (mut parts, mut body) = res.into_parts();
    let mut kept = BytesMut::new();
    let mut dropped = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| UpstreamError::AnswerBody {
            backend: upstream.backend.name.clone(),
            source: e,
        })?;
        if let Ok(data) = frame.into_data() {
            if !dropped && (kept.len() + data.len()) as u64 <= max_result {
                kept.extend_from_slice(&data);
            } else {
                dropped = true;
                kept.clear();
            }
        }
    }
    if dropped {
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts.headers.insert(
            "x-fngate-result-dropped",
            HeaderValue::from_static("too-large"),
        );
    }
    Ok((
        status,
        JobResult {
            status,
            headers: encode_headers(&parts.headers),
            body: Bytes::from(kept),
        },
        retry_after,
    ))
}

/// `Retry-After` as seconds or an HTTP date, at most an hour.
fn retry_after(v: &[u8]) -> Option<Duration> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let after = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(s)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(after.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter, within the route's bounds: before
/// attempt n+1 the delay is uniform between the lower bound and
/// min(upper, lower * 2^(n-1)).
pub(crate) fn backoff(policy: &Policy, attempt: u32) -> Duration {
    let (lo, hi) = policy.backoff_ms;
    let cap = lo
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
        .min(hi)
        .max(lo);
    Duration::from_millis(fastrand::u64(lo..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(lo: u64, hi: u64) -> Policy {
        Policy {
            attempts: 8,
            backoff_ms: (lo, hi),
            max_age_ms: 1000,
            timeout_ms: 1000,
            result_ttl_ms: 1000,
            max_result: 10,
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_its_bounds() {
        let p = policy(100, 1000);
        for _ in 0..200 {
            assert_eq!(backoff(&p, 1), Duration::from_millis(100));
            let d = backoff(&p, 2).as_millis();
            assert!((100..=200).contains(&d), "{d}");
            let d = backoff(&p, 4).as_millis();
            assert!((100..=800).contains(&d), "{d}");
            let d = backoff(&p, 30).as_millis();
            assert!((100..=1000).contains(&d), "{d}");
        }
        // Jitter spreads the delays: not every draw is the same.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(&p, 5)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_caps_at_an_hour() {
        assert_eq!(retry_after(b"7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(b"999999"), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let d = retry_after(soon.as_bytes()).expect("date");
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(retry_after(b"soon"), None);
    }
}
