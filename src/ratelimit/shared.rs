//! Buckets on Redis (SPEC §10): every instance naming one Redis shares each
//! policy's buckets. One Lua script per check reads Redis' clock (`TIME`),
//! applies GCRA to the bucket's theoretical arrival time and stores it, so a
//! quota is exact across instances under any concurrency and no instance's
//! clock matters.
//!
//! A check waits at most `store.rate_limit_timeout` (50 ms). When Redis fails, the policy's
//! `rate_limits_on_error` answers instead (the instance's own buckets, pass,
//! or 503), at once for `BACKOFF` and then Redis is asked again, so the
//! fallback gives way within a second of Redis' return.
//!
//! The connection is made and the script loaded when the policy set is built,
//! not by the first check: a cold burst would each meet `NOSCRIPT` and load the
//! script (three round trips), past the timeout, and fall back all at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;

use crate::config::OnError;

/// After a failure, how long checks go straight to the fallback.
const BACKOFF: Duration = Duration::from_secs(1);
/// How long the warm-up keeps trying before the first checks find Redis themselves.
const WARM_UP: Duration = Duration::from_secs(2);

/// ARGV: key, emission interval T (µs), tolerance tau = T × burst (µs).
/// Answers {allowed (1|0), remaining, µs until allowed}.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau = tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', ARGV[1]) or now)
if tat < now then tat = now end
local new = tat + T
local ahead = new - now
if ahead > tau then
  return {0, 0, ahead - tau}
end
redis.call('SET', ARGV[1], new, 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((tau - ahead) / T), 0}
"#,
    )
});

/// What Redis said, or that it could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Checked {
        allowed: bool,
        remaining: u32,
        wait: Duration,
    },
    Unavailable,
}

pub struct Shared {
    conn: ConnectionManager,
    pub(crate) on_error: OnError,
    /// The Redis it was made for (URL and CA): a reload naming another makes a new one.
    store: crate::config::Store,
    /// Until when (µs since `epoch`) checks skip Redis.
    skip_until: AtomicU64,
    epoch: Instant,
    /// The warm-up is over, loaded or not (`/readyz` waits for it).
    warm: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.store.location())
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl Shared {
    /// Within a runtime: the warm-up is spawned on it.
    pub fn new(store: &crate::config::Store) -> Result<Arc<Self>, String> {
        let shared = Arc::new(Self {
            conn: crate::redis_client::connect(store, store.rate_limit_timeout)?,
            on_error: store.rate_limits_on_error,
            skip_until: AtomicU64::new(0),
            epoch: Instant::now(),
            store: store.clone(),
            warm: AtomicBool::new(false),
        });
        tokio::spawn(shared.clone().warm_up());
        Ok(shared)
    }

    /// Connects and loads the script, retrying for `WARM_UP`.
    async fn warm_up(self: Arc<Self>) {
        let deadline = tokio::time::Instant::now() + WARM_UP;
        let mut conn = self.conn.clone();
        loop {
            match GCRA.prepare_invoke().load_async(&mut conn).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        "rate limits: Redis not ready at start ({e}); each check tries it"
                    );
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.warm.store(true, Ordering::Release);
    }

    /// Whether the warm-up is over.
    pub fn warm(&self) -> bool {
        self.warm.load(Ordering::Acquire)
    }

    /// Whether this names the same Redis (URL and CA) with the same fallback.
    pub fn same(&self, store: &crate::config::Store) -> bool {
        self.store.url == store.url
            && self.store.ca == store.ca
            && self.on_error == store.rate_limits_on_error
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Spends one request from `key`'s bucket: T per request, a burst of `burst`.
    pub(crate) async fn check(&self, key: &[u8], per_request: Duration, burst: u32) -> Answer {
        if self.now_us() < self.skip_until.load(Ordering::Relaxed) {
            return Answer::Unavailable;
        }
        let t = (per_request.as_micros() as u64).max(1);
        let mut call = GCRA.prepare_invoke();
        call.arg(key).arg(t).arg(t.saturating_mul(u64::from(burst)));
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            self.store.rate_limit_timeout,
            call.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((allowed, remaining, wait_us))) => Answer::Checked {
                allowed: allowed == 1,
                remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                wait: Duration::from_micros(wait_us.max(0) as u64),
            },
            failed => {
                let was = self.skip_until.swap(
                    self.now_us() + BACKOFF.as_micros() as u64,
                    Ordering::Relaxed,
                );
                if was == 0 || self.now_us() > was + BACKOFF.as_micros() as u64 {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!(
                            "no answer within {} ms",
                            self.store.rate_limit_timeout.as_millis()
                        ),
                    };
                    tracing::warn!(on_error = ?self.on_error,
                        "rate limits: Redis failed ({why}); the fallback decides until it answers");
                }
                Answer::Unavailable
            }
        }
    }
}
