//! Rate limits (SPEC §2–§4) on governor's GCRA, keyed per policy.
//!
//! A policy's buckets belong to the policy, so every route naming it shares
//! them. Keys carry their kind (an IP, a header value, global), so one kind
//! cannot collide with another. Memory is bounded: at most `max_keys` buckets
//! per policy; beyond that, requests share one overflow bucket until the
//! periodic sweep drops buckets that are full again (idle keys). The map
//! keeps std's SipHash: header keys are client-chosen, so no hash flooding.

use std::convert::Infallible;
use std::fmt::Write as _;
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

use crate::config::{LimitKey, RateLimit};
use crate::context::{RequestId, RouteContext};
use crate::error::{self, Body};
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

/// A bucket's key. Header values are cut to 256 bytes so that a key's memory
/// is bounded whatever `max_header_size` allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(std::net::IpAddr),
    Header(HeaderValue),
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
    /// `RateLimit-Policy` item, computed once, and as a header value.
    policy_item: String,
    policy_value: HeaderValue,
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
        let small_cap = policy.max_keys <= COUNT_EVERY as usize;
        let limiter = Arc::new(Self {
            policy,
            keyed,
            clock,
            checks: AtomicU64::new(0),
            over_cap: std::sync::atomic::AtomicBool::new(false),
            near_cap: std::sync::atomic::AtomicBool::new(small_cap),
            policy_value: HeaderValue::try_from(policy_item.clone())
                .unwrap_or(HeaderValue::from_static("")),
            burst_value: HeaderValue::from(burst.get()),
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

    fn key(&self, ctx: &RouteContext, headers: &HeaderMap) -> Key {
        match &self.policy.key {
            LimitKey::Ip => Key::Ip(ctx.client_ip),
            LimitKey::Global => Key::Global,
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

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

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

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RouteContext>() else {
            return Either::Left(self.inner.call(req));
        };
        let limits = &ctx.active().limits;
        if limits.is_empty() {
            return Either::Left(self.inner.call(req));
        }
        // Checked in order; a policy that refuses does not give back what earlier ones took.
        let mut state = String::new();
        let mut least: Option<(&Limiter, u32, u64)> = None;
        let mut refused = None;
        for l in limits {
            let v = l.check(l.key(ctx, req.headers()));
            if !state.is_empty() {
                state.push_str(", ");
            }
            let _ = write!(
                state,
                "\"{}\";r={};t={}",
                l.policy.name, v.remaining, v.reset
            );
            if least.is_none_or(|(_, r, _)| v.remaining < r) {
                least = Some((l, v.remaining, v.reset));
            }
            if !v.allowed {
                refused = Some(RateLimited {
                    policy: l.policy.name.clone(),
                    retry_after: v.wait,
                });
                break;
            }
        }
        let fields = least.map(|(l, remaining, reset)| Fields {
            policy: match limits.as_slice() {
                [one] => one.policy_value.clone(),
                many => {
                    let joined: Vec<&str> = many.iter().map(|l| l.policy_item.as_str()).collect();
                    HeaderValue::try_from(joined.join(", "))
                        .unwrap_or_else(|_| l.policy_value.clone())
                }
            },
            state: HeaderValue::try_from(state).unwrap_or(HeaderValue::from_static("")),
            limit: l.burst_value.clone(),
            remaining,
            reset,
        });
        match refused {
            Some(limited) => {
                self.metrics.rate_limited(&ctx.active().config.name);
                let id = req.extensions().get::<RequestId>().map(|r| &r.0);
                let mut res = error::respond(limited, id);
                if let Some(f) = fields {
                    f.write(res.headers_mut());
                }
                Either::Right(Either::Left(std::future::ready(Ok(res))))
            }
            None => Either::Right(Either::Right(Headed {
                inner: self.inner.call(req),
                fields,
            })),
        }
    }
}

/// The rate-limit fields of one answer.
struct Fields {
    policy: HeaderValue,
    state: HeaderValue,
    limit: HeaderValue,
    remaining: u32,
    reset: u64,
}

impl Fields {
    fn write(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.state);
        headers.insert(RATELIMIT_LIMIT.clone(), self.limit);
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            number(u64::from(self.remaining)),
        );
        headers.insert(RATELIMIT_RESET.clone(), number(self.reset));
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
        fields: Option<Fields>,
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
        if let Some(f) = this.fields.take() {
            f.write(res.headers_mut());
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
