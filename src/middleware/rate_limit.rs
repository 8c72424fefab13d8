//! Rate limits (SPEC §2–§4) on governor's GCRA, keyed per policy.
//!
//! A policy's buckets belong to the policy, so every route naming it shares
//! them. Keys carry their kind (an IP, a header value, global), so one kind
//! cannot collide with another. Memory is bounded: at most `max_keys` buckets
//! per policy; beyond that, requests share one overflow bucket until the
//! periodic sweep drops buckets that are full again (idle keys). The map
//! keeps std's SipHash: header keys are client-chosen, so no hash flooding.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use either::Either;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::auth::Verified;
use crate::config::{LimitKey, RateLimit};
use crate::context::{RequestId, RouteContext};
use crate::body::Body;
use crate::error;
use crate::metrics::Metrics;

/// Limit state is swept this often: buckets that are full again are dropped.
const SWEEP: Duration = Duration::from_secs(10);

/// The limiters' clock: real monotonic time, plus an offset that only tests
/// move (`advance`), so refill is tested without sleeping.
#[derive(Debug, Clone, Default)]
pub struct LimitClock {
    offset: Arc<AtomicU64>,
}

impl LimitClock {
    /// Moves this clock (and every limiter built on it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset
            .fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let real = EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64;
        Nanos::from(real + self.offset.load(Ordering::Relaxed))
    }
}

/// A bucket's key. Header and claim values are cut to 256 bytes so that a
/// key's memory is bounded whatever `max_header_size` allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(std::net::IpAddr),
    Header(HeaderValue),
    Consumer(Arc<str>),
    Claim(Box<str>),
    Global,
    Overflow,
}

type Keyed = RateLimiter<Key, DashMapStateStore<Key>, LimitClock, StateInformationMiddleware>;

/// How often (in checks) the bucket count is compared with `max_keys`:
/// counting locks every shard of the map, so it is not done per request.
const COUNT_EVERY: u64 = 256;

/// One policy's buckets. Kept across reloads while the policy is unchanged.
pub struct Limiter {
    pub policy: Arc<RateLimit>,
    keyed: Keyed,
    clock: LimitClock,
    checks: AtomicU64,
    over_cap: std::sync::atomic::AtomicBool,
    /// Within `COUNT_EVERY` of the cap: count on every check, so the cap holds exactly.
    near_cap: std::sync::atomic::AtomicBool,
    /// `RateLimit-Policy` item, computed once.
    policy_item: String,
    /// The start of its `RateLimit` item: `"name";r=`.
    state_prefix: String,
    /// `RateLimit-Limit`: the burst.
    burst_value: HeaderValue,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.policy.name)
            .finish()
    }
}

/// How one policy answered one request.
struct Verdict {
    allowed: bool,
    remaining: u32,
    /// Seconds until the bucket is full (allowed) or until a retry may pass (refused).
    reset: u64,
    wait: u64,
}

impl Limiter {
    pub fn new(policy: Arc<RateLimit>, clock: LimitClock) -> Arc<Self> {
        let period = policy.per / policy.requests;
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let keyed = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        let policy_item = policy_item(&policy);
        let state_prefix = format!("\"{}\";r=", policy.name);
        let small_cap = policy.max_keys <= COUNT_EVERY as usize;
        let limiter = Arc::new(Self {
            policy,
            keyed,
            clock,
            checks: AtomicU64::new(0),
            over_cap: std::sync::atomic::AtomicBool::new(false),
            near_cap: std::sync::atomic::AtomicBool::new(small_cap),
            burst_value: HeaderValue::from(burst.get()),
            state_prefix,
            policy_item,
        });
        Self::spawn_sweep(&limiter);
        limiter
    }

    /// Buckets held now (bounded by `max_keys` plus the overflow bucket).
    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
    }

    /// Drops buckets that are full again, off the request path; the task
    /// holds the limiter weakly and ends when a reload drops it.
    fn spawn_sweep(limiter: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let weak = Arc::downgrade(limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(l) = weak.upgrade() else { return };
                l.keyed.retain_recent();
                l.keyed.shrink_to_fit();
                l.count();
            }
        });
    }

    /// Counts the buckets: at most `COUNT_EVERY` keys can be added between
    /// two counts far from the cap, and near it every check counts.
    fn count(&self) {
        let len = self.keyed.len();
        self.over_cap
            .store(len >= self.policy.max_keys, Ordering::Relaxed);
        self.near_cap.store(
            len + COUNT_EVERY as usize >= self.policy.max_keys,
            Ordering::Relaxed,
        );
    }

    fn key(&self, ctx: &RouteContext, req: &Request<Body>) -> Key {
        let headers = req.headers();
        let verified = || req.extensions().get::<Arc<Verified>>();
        match &self.policy.key {
            LimitKey::Ip => Key::Ip(ctx.client_ip),
            LimitKey::Global => Key::Global,
            // Anonymous requests (no auth, no `sub`) are keyed by their client IP.
            LimitKey::Consumer => match verified().and_then(|v| v.consumer.clone()) {
                Some(c) if c.len() <= 256 => Key::Consumer(c),
                Some(c) => Key::Consumer(truncate(&c).into()),
                None => Key::Ip(ctx.client_ip),
            },
            LimitKey::Claim(name) => {
                let value = verified().and_then(|v| match v.claims.get(&**name) {
                    Some(serde_json::Value::String(s)) => Some(truncate(s).into()),
                    Some(n @ serde_json::Value::Number(_)) => Some(n.to_string().into()),
                    _ => None,
                });
                value.map_or(Key::Ip(ctx.client_ip), Key::Claim)
            }
            // A client-chosen header is only as strong as whatever sets it;
            // without one, the request is keyed by its client IP.
            LimitKey::Header(name) => match headers.get(name) {
                Some(v) if v.len() <= 256 => Key::Header(v.clone()),
                Some(v) => {
                    HeaderValue::from_bytes(&v.as_bytes()[..256]).map_or(Key::Overflow, Key::Header)
                }
                None => Key::Ip(ctx.client_ip),
            },
        }
    }

    fn check(&self, key: Key) -> Verdict {
        // Past the cap, requests share one bucket until the sweep frees room.
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n % COUNT_EVERY == 0 || self.near_cap.load(Ordering::Relaxed) {
            self.count();
        }
        let key = if self.over_cap.load(Ordering::Relaxed) {
            Key::Overflow
        } else {
            key
        };
        let per_request = self.policy.per.as_secs_f64() / f64::from(self.policy.requests);
        match self.keyed.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = self.policy.burst.saturating_sub(remaining);
                Verdict {
                    allowed: true,
                    remaining,
                    reset: (f64::from(missing) * per_request).ceil() as u64,
                    wait: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(self.clock.now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64;
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset: (f64::from(self.policy.burst) * per_request).ceil() as u64,
                    wait,
                }
            }
        }
    }
}

/// A route's `RateLimit-Policy` field: every policy, in the order checked.
pub fn policy_field<'a>(limits: impl IntoIterator<Item = &'a Arc<Limiter>>) -> Option<HeaderValue> {
    let items: Vec<&str> = limits.into_iter().map(|l| l.policy_item.as_str()).collect();
    if items.is_empty() {
        return None;
    }
    HeaderValue::try_from(items.join(", ")).ok()
}

/// At most 256 bytes, cut on a character boundary.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `"name";q=100;w=60`. The draft's window is whole seconds, so a window
/// such as 1500ms is stated over the next whole second (q scaled down).
fn policy_item(p: &RateLimit) -> String {
    let secs = p.per.as_secs_f64();
    let w = secs.ceil().max(1.0);
    let q = if p.per.subsec_nanos() == 0 && p.per.as_secs() > 0 {
        u64::from(p.requests)
    } else {
        (f64::from(p.requests) * w / secs).floor() as u64
    };
    format!("\"{}\";q={q};w={w}", p.name)
}

/// Why a request was refused (rendered by `error.rs`).
#[derive(Debug, thiserror::Error)]
#[error("rate limit `{policy}` exceeded; retry after {retry_after}s")]
pub struct RateLimited {
    pub policy: Arc<str>,
    pub retry_after: u64,
}

/// Which of a route's policies a layer checks (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `ip` and `global`: before authentication, so floods never cost a signature check.
    BeforeAuth,
    /// The others, which may need the consumer or its claims.
    AfterAuth,
}

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    metrics: Arc<Metrics>,
    phase: Phase,
}

impl RateLimitLayer {
    pub fn new(metrics: Arc<Metrics>, phase: Phase) -> Self {
        Self { metrics, phase }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            metrics: self.metrics.clone(),
            phase: self.phase,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    phase: Phase,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

/// What the checks of one request found so far; carried from the first
/// phase to the second in the request's extensions.
#[derive(Clone, Default)]
struct Report {
    /// `RateLimit` items of the policies checked.
    state: String,
    /// The policy with the least remaining: (limiter, remaining, reset).
    least: Option<(Arc<Limiter>, u32, u64)>,
}

impl Report {
    fn check(
        &mut self,
        l: &Arc<Limiter>,
        ctx: &RouteContext,
        req: &Request<Body>,
    ) -> Option<RateLimited> {
        let v = l.check(l.key(ctx, req));
        // `"name";r=R;t=T`, without the formatting machinery: this runs per request.
        let mut n = itoa::Buffer::new();
        if self.state.is_empty() {
            self.state.reserve(l.state_prefix.len() + 24);
        } else {
            self.state.push_str(", ");
        }
        self.state.push_str(&l.state_prefix);
        self.state.push_str(n.format(v.remaining));
        self.state.push_str(";t=");
        self.state.push_str(n.format(v.reset));
        if self.least.as_ref().is_none_or(|(_, r, _)| v.remaining < *r) {
            self.least = Some((l.clone(), v.remaining, v.reset));
        }
        (!v.allowed).then(|| RateLimited {
            policy: l.policy.name.clone(),
            retry_after: v.wait,
        })
    }

    fn fields(self, policy: &HeaderValue) -> Fields {
        Fields {
            policy: policy.clone(),
            state: HeaderValue::try_from(self.state).ok(),
            least: self
                .least
                .map(|(l, remaining, reset)| (l.burst_value.clone(), remaining, reset)),
        }
    }
}

impl<S> Service<Request<Body>> for RateLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Either<Ready, Headed<S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RouteContext>() else {
            return Either::Left(self.inner.call(req));
        };
        let active = ctx.active();
        let Some(policy) = &active.limit_policy else {
            return Either::Left(self.inner.call(req));
        };
        let (limits, mut report) = match self.phase {
            Phase::BeforeAuth => (&active.limits_before, Report::default()),
            Phase::AfterAuth => (
                &active.limits_after,
                req.extensions()
                    .get::<Report>()
                    .cloned()
                    .unwrap_or_default(),
            ),
        };
        // Checked in order; a policy that refuses does not give back what earlier ones took.
        let refused = limits.iter().find_map(|l| report.check(l, ctx, &req));
        if let Some(limited) = refused {
            self.metrics.rate_limited(&active.config.name);
            let id = req.extensions().get::<RequestId>().map(|r| &r.0);
            let mut res = error::respond(limited, id);
            report.fields(policy).write(res.headers_mut(), true);
            return Either::Right(Either::Left(std::future::ready(Ok(res))));
        }
        // The first phase's fields stand unless the second phase ran (an
        // answer refused by authentication carries them too). Only then is
        // the report copied, for the second phase to continue.
        let (fields, overwrite) = match self.phase {
            Phase::BeforeAuth if !active.limits_after.is_empty() => {
                let fields = report.clone().fields(policy);
                req.extensions_mut().insert(report);
                (fields, false)
            }
            _ => (report.fields(policy), true),
        };
        Either::Right(Either::Right(Headed {
            inner: self.inner.call(req),
            fields: Some((fields, overwrite)),
        }))
    }
}

/// The rate-limit fields of one answer.
struct Fields {
    policy: HeaderValue,
    state: Option<HeaderValue>,
    /// `RateLimit-Limit` (the burst), remaining and reset of the policy with the least remaining.
    least: Option<(HeaderValue, u32, u64)>,
}

impl Fields {
    fn write(self, headers: &mut HeaderMap, overwrite: bool) {
        if !overwrite && headers.contains_key(&RATELIMIT_POLICY) {
            return;
        }
        // Room for all five at once: one growth of the map, not several.
        headers.reserve(5);
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        if let Some(state) = self.state.filter(|s| !s.is_empty()) {
            headers.insert(RATELIMIT.clone(), state);
        }
        if let Some((limit, remaining, reset)) = self.least {
            headers.insert(RATELIMIT_LIMIT.clone(), limit);
            headers.insert(RATELIMIT_REMAINING.clone(), number(u64::from(remaining)));
            headers.insert(RATELIMIT_RESET.clone(), number(reset));
        }
    }
}

/// Small numbers are the common case: their header values are made once.
fn number(n: u64) -> HeaderValue {
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let small = SMALL.get_or_init(|| (0..1024u64).map(HeaderValue::from).collect());
    small
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

pin_project_lite::pin_project! {
    /// Adds the rate-limit headers to an allowed request's answer.
    pub struct Headed<F> {
        #[pin]
        inner: F,
        fields: Option<(Fields, bool)>,
    }
}

impl<F> std::future::Future for Headed<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some((f, overwrite)) = this.fields.take() {
            f.write(res.headers_mut(), overwrite);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(requests: u32, per_ms: u64) -> RateLimit {
        RateLimit {
            name: "p".into(),
            requests,
            per: Duration::from_millis(per_ms),
            burst: requests,
            key: LimitKey::Ip,
            max_keys: 10,
        }
    }

    #[test]
    fn policy_items_state_whole_second_windows() {
        assert_eq!(policy_item(&policy(100, 60_000)), "\"p\";q=100;w=60");
        assert_eq!(policy_item(&policy(10, 500)), "\"p\";q=20;w=1");
        assert_eq!(policy_item(&policy(1, 1_500)), "\"p\";q=1;w=2");
    }
}
