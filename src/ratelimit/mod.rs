//! Rate limits (SPEC §2–§4) on governor's GCRA, keyed per policy.
//!
//! A policy's buckets belong to the policy, so every route naming it shares
//! them. Keys carry their kind (an IP, a header value, global), so one kind
//! cannot collide with another. Memory is bounded: at most `max_keys` buckets
//! per policy; beyond that, requests share one overflow bucket until the
//! periodic sweep drops buckets that are full again (idle keys). The map
//! keeps std's SipHash: header keys are client-chosen, so no hash flooding.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};

use crate::auth::Verified;
use crate::clock::Clock;
use crate::config::{LimitKey, OnError, RateLimit};

mod shared;

pub(crate) use shared::Shared;

/// Limit state is swept this often: buckets that are full again are dropped.
const SWEEP: Duration = Duration::from_secs(10);

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.now().as_nanos() as u64)
    }
}

/// A bucket's key. Header and claim values are cut to 256 bytes so that a
/// key's memory is bounded whatever `max_header_size` allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(std::net::IpAddr),
    Header(HeaderValue),
    Consumer(Arc<str>),
    Claim(Box<str>),
    Global,
    Overflow,
}

type Keyed = RateLimiter<Key, DashMapStateStore<Key>, Clock, StateInformationMiddleware>;

/// How often (in checks) the bucket count is compared with `max_keys`:
/// counting locks every shard of the map, so it is not done per request.
const COUNT_EVERY: u64 = 256;

/// One policy's buckets. Kept across reloads while the policy is unchanged.
pub struct Limiter {
    pub policy: Arc<RateLimit>,
    keyed: Keyed,
    clock: Clock,
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
    /// The buckets on Redis, when instances share them; `keyed` is then the fallback.
    shared: Option<Arc<Shared>>,
    /// `fngate:rl:"name"\n`: the start of its Redis keys.
    shared_prefix: Vec<u8>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.policy.name)
            .finish()
    }
}

/// How one policy answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub remaining: u32,
    /// Seconds until the bucket is full (allowed) or until a retry may pass (refused).
    pub reset: u64,
    pub wait: u64,
}

impl Limiter {
    pub fn new(policy: Arc<RateLimit>, clock: Clock, shared: Option<Arc<Shared>>) -> Arc<Self> {
        let period = policy.per / policy.requests.get();
        let burst = policy.burst;
        // Validation refuses a period under 1 ns and `max` keeps it there, so
        // `with_period` (None only for zero) always has its quota.
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(policy.requests))
            .allow_burst(burst);
        let keyed = RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        let policy_item = policy_item(&policy);
        let state_prefix = format!("\"{}\";r=", policy.name);
        let shared_prefix = format!("fngate:rl:{}\n", policy.name).into_bytes();
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
            shared,
            shared_prefix,
        });
        Self::spawn_sweep(&limiter);
        limiter
    }

    /// Its buckets are on Redis, so a check awaits an answer.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether it keeps its buckets on this Redis (None: locally).
    pub fn shares(&self, shared: Option<&Arc<Shared>>) -> bool {
        match (&self.shared, shared) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Checks the bucket on Redis, or as `rate_limits_on_error` says while it
    /// is unreachable; `None`: refuse the request as unavailable (`closed`).
    pub async fn check_shared(&self, key: Key) -> Option<Verdict> {
        let Some(shared) = &self.shared else {
            return Some(self.check(key));
        };
        let per_request = self.policy.per / self.policy.requests.get();
        let burst = self.policy.burst.get();
        let mut redis_key = self.shared_prefix.clone();
        key.write(&mut redis_key);
        match shared.check(&redis_key, per_request, burst).await {
            shared::Answer::Checked {
                allowed,
                remaining,
                wait,
            } => {
                let per = per_request.as_secs_f64();
                Some(if allowed {
                    Verdict {
                        allowed,
                        remaining,
                        reset: (f64::from(burst.saturating_sub(remaining)) * per).ceil() as u64,
                        wait: 0,
                    }
                } else {
                    Verdict {
                        allowed,
                        remaining: 0,
                        reset: (f64::from(burst) * per).ceil() as u64,
                        wait: wait.as_secs_f64().ceil().max(1.0) as u64,
                    }
                })
            }
            shared::Answer::Unavailable => match shared.on_error {
                OnError::Local => Some(self.check(key)),
                OnError::Open => Some(Verdict {
                    allowed: true,
                    remaining: burst,
                    reset: 0,
                    wait: 0,
                }),
                OnError::Closed => None,
            },
        }
    }

    /// The start of its `RateLimit` item: `"name";r=`.
    pub fn state_prefix(&self) -> &str {
        &self.state_prefix
    }

    /// `RateLimit-Limit`: the burst.
    pub fn burst_value(&self) -> &HeaderValue {
        &self.burst_value
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

    /// The bucket a request falls in: by its client IP, its headers, or what
    /// authentication verified of it.
    pub fn key(&self, client_ip: IpAddr, headers: &HeaderMap, verified: Option<&Verified>) -> Key {
        let verified = || verified;
        match &self.policy.key {
            LimitKey::Ip => Key::Ip(client_ip),
            LimitKey::Global => Key::Global,
            // Anonymous requests (no auth, no `sub`) are keyed by their client IP.
            LimitKey::Consumer => match verified().and_then(|v| v.consumer.clone()) {
                Some(c) if c.len() <= 256 => Key::Consumer(c),
                Some(c) => Key::Consumer(truncate(&c).into()),
                None => Key::Ip(client_ip),
            },
            LimitKey::Claim(name) => {
                let value = verified().and_then(|v| match v.claims.get(&**name) {
                    Some(serde_json::Value::String(s)) => Some(truncate(s).into()),
                    Some(n @ serde_json::Value::Number(_)) => Some(n.to_string().into()),
                    _ => None,
                });
                value.map_or(Key::Ip(client_ip), Key::Claim)
            }
            // A client-chosen header is only as strong as whatever sets it;
            // without one, the request is keyed by its client IP.
            LimitKey::Header(name) => match headers.get(name) {
                Some(v) if v.len() <= 256 => Key::Header(v.clone()),
                Some(v) => {
                    HeaderValue::from_bytes(&v.as_bytes()[..256]).map_or(Key::Overflow, Key::Header)
                }
                None => Key::Ip(client_ip),
            },
        }
    }

    pub fn check(&self, key: Key) -> Verdict {
        // Past the cap, requests share one bucket until the sweep frees room.
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(COUNT_EVERY) || self.near_cap.load(Ordering::Relaxed) {
            self.count();
        }
        let key = if self.over_cap.load(Ordering::Relaxed) {
            Key::Overflow
        } else {
            key
        };
        let per_request = self.policy.per.as_secs_f64() / f64::from(self.policy.requests.get());
        match self.keyed.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = self.policy.burst.get().saturating_sub(remaining);
                Verdict {
                    allowed: true,
                    remaining,
                    reset: (f64::from(missing) * per_request).ceil() as u64,
                    wait: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(governor::clock::Clock::now(&self.clock))
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64;
                Verdict {
                    allowed: false,
                    remaining: 0,
                    reset: (f64::from(self.policy.burst.get()) * per_request).ceil() as u64,
                    wait,
                }
            }
        }
    }
}

/// A route's `RateLimit-Policy` field: every policy, in the order checked.
pub(crate) fn policy_field<'a>(
    limits: impl IntoIterator<Item = &'a Arc<Limiter>>,
) -> Option<HeaderValue> {
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
        u64::from(p.requests.get())
    } else {
        (f64::from(p.requests.get()) * w / secs).floor() as u64
    };
    format!("\"{}\";q={q};w={w}", p.name)
}

/// Why a request was refused (rendered by `error.rs`).
#[derive(Debug, thiserror::Error)]
#[error("rate limit `{policy}` exceeded; retry after {retry_after}s")]
pub(crate) struct RateLimited {
    pub policy: Arc<str>,
    pub retry_after: u64,
    /// Not exceeded: its buckets on Redis could not be checked (`rate_limits_on_error = "closed"`).
    pub unavailable: bool,
}

impl Key {
    /// The key as bytes, its kind first, after a Redis key's prefix.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                out.extend_from_slice(ip.to_string().as_bytes());
            }
            Self::Header(v) => {
                out.extend_from_slice(b"h:");
                out.extend_from_slice(v.as_bytes());
            }
            Self::Consumer(c) => {
                out.extend_from_slice(b"c:");
                out.extend_from_slice(c.as_bytes());
            }
            Self::Claim(c) => {
                out.extend_from_slice(b"claim:");
                out.extend_from_slice(c.as_bytes());
            }
            Self::Global => out.extend_from_slice(b"global"),
            Self::Overflow => out.extend_from_slice(b"overflow"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn policy(requests: u32, per_ms: u64) -> RateLimit {
        RateLimit {
            name: "p".into(),
            requests: NonZeroU32::new(requests).expect("positive"),
            per: Duration::from_millis(per_ms),
            burst: NonZeroU32::new(requests).expect("positive"),
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
