//! Where jobs live, behind one trait: the embedded SQLite store (default) and
//! Redis (SPEC §10, several instances sharing one) implement the same
//! operations, and one conformance suite (`tests.rs`, driving the trait) holds
//! both to them.
//!
//! Times are wall-clock milliseconds since the Unix epoch: a store outlives
//! processes and is shared between hosts, so a monotonic clock would not do.

mod redis;
mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub(crate) use redis::Redis;
pub(crate) use sqlite::Sqlite;

/// Milliseconds since the Unix epoch.
pub(crate) type Millis = i64;

pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// One store operation in flight. `'static`: it owns what it needs.
pub(crate) type Op<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("the job store at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("the job store failed: {0}")]
    Failed(String),
    #[error("the job store is closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "retrying" => Self::Retrying,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            _ => return None,
        })
    }

    pub(crate) fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead)
    }
}

/// What a job's deliveries follow, fixed when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) attempts: u32,
    pub(crate) backoff_ms: (u64, u64),
    pub(crate) max_age_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) result_ttl_ms: u64,
    pub(crate) max_result: u64,
}

/// The request as it is forwarded, kept until it is delivered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRequest {
    pub(crate) method: String,
    /// Path (before the endpoint's base path) and query.
    pub(crate) target: String,
    /// `name: value\n` lines (values cannot hold a newline).
    pub(crate) headers: Bytes,
    pub(crate) body: Bytes,
    /// The client's Host, for `preserve_host`.
    pub(crate) host: Option<String>,
}

/// A function's answer, as kept for the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobResult {
    pub(crate) status: u16,
    pub(crate) headers: Bytes,
    pub(crate) body: Bytes,
}

#[derive(Debug, Clone)]
pub(crate) struct Idempotency {
    /// Route and consumer (or client IP).
    pub(crate) scope: String,
    pub(crate) key: String,
    /// SHA-256 of method, target and body.
    pub(crate) fingerprint: [u8; 32],
}

/// What made a job: a request to an async route, or an event for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Route,
    Subscription,
    /// A schedule's tick (or manual run).
    Schedule,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Route => "route",
            Self::Subscription => "subscription",
            Self::Schedule => "schedule",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "subscription" => Self::Subscription,
            "schedule" => Self::Schedule,
            _ => Self::Route,
        }
    }
}

/// What the store keeps of a schedule: the tick it dealt with last, and its last fire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScheduleState {
    pub(crate) name: String,
    pub(crate) last_tick: Option<Millis>,
    pub(crate) last_fire: Option<Millis>,
    pub(crate) last_outcome: Option<String>,
    pub(crate) last_job: Option<String>,
}

/// One decision of the scheduler, made durable in one commit.
#[derive(Debug, Clone)]
pub(crate) struct Tick {
    pub(crate) schedule: String,
    /// Ticks up to this one are dealt with (never moves back).
    pub(crate) last_tick: Option<Millis>,
    /// The run to store, if any; its id names the tick, so a tick runs once.
    pub(crate) job: Option<NewJob>,
    /// Store no run while one of this schedule's is unfinished...
    pub(crate) forbid: bool,
    /// ...or delete the unfinished ones first.
    pub(crate) replace: bool,
    /// Recorded as the schedule's last outcome when a run is stored.
    pub(crate) outcome: &'static str,
    pub(crate) now: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fired {
    /// Stored; the unfinished runs `replace` deleted.
    Stored { replaced: Vec<String> },
    /// `forbid`, and a run was unfinished.
    Busy,
    /// This tick's run exists already.
    Duplicate,
    /// Only the tick was recorded.
    Recorded,
}

#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    /// The route's or the subscription's name.
    pub(crate) route: String,
    /// Jobs of one partition are delivered one at a time, in the order accepted.
    pub(crate) partition: Option<String>,
    pub(crate) backend: String,
    pub(crate) consumer: Option<String>,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) request: StoredRequest,
    pub(crate) traceparent: Option<String>,
    pub(crate) policy: Policy,
    pub(crate) now: Millis,
}

#[derive(Debug)]
pub(crate) enum Accepted {
    New(Job),
    /// The idempotency key named this job already, with the same payload.
    Existing(Job),
    /// ...with another payload.
    Mismatch,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    pub(crate) n: u32,
    pub(crate) at: Millis,
    pub(crate) status: Option<u16>,
    pub(crate) duration_ms: u64,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) id: String,
    /// Only a route's jobs are a client's to read; deliveries and runs are operators'.
    pub(crate) kind: Kind,
    pub(crate) route: String,
    pub(crate) backend: String,
    pub(crate) consumer: Option<String>,
    pub(crate) state: JobState,
    pub(crate) attempts: u32,
    pub(crate) created: Millis,
    pub(crate) updated: Millis,
    pub(crate) next_attempt: Option<Millis>,
    pub(crate) last_error: Option<String>,
    /// The last attempt ran out of time (a dead job without an answer is then 504).
    pub(crate) timed_out: bool,
    pub(crate) result: Option<JobResult>,
    /// Every attempt, when asked for.
    pub(crate) log: Vec<Attempt>,
}

/// A job taken for one attempt, under a lease.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) route: String,
    pub(crate) created: Millis,
    /// This attempt's number, from 1.
    pub(crate) attempt: u32,
    pub(crate) request: StoredRequest,
    pub(crate) traceparent: Option<String>,
    pub(crate) policy: Policy,
    /// When it was due: `max_age` is held to this, not to when a busy
    /// instance got round to it.
    pub(crate) due: Millis,
}

#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub(crate) backend: String,
    pub(crate) owner: String,
    pub(crate) now: Millis,
    pub(crate) lease_until: Millis,
    /// At most this many in all...
    pub(crate) limit: usize,
    /// ...and per route its free slots; a route not named has `other_free`.
    pub(crate) route_free: HashMap<String, usize>,
    pub(crate) other_free: usize,
}

/// What an attempt (or the lack of one) leaves the job as.
#[derive(Debug, Clone)]
pub(crate) enum Next {
    Succeeded(JobResult),
    Dead {
        result: Option<JobResult>,
        timed_out: bool,
    },
    Retry {
        at: Millis,
        timed_out: bool,
    },
    /// No attempt was made (no free slot, shutting down): the attempt is not spent.
    Release {
        at: Millis,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    Cancelled,
    Finished,
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redrive {
    Queued,
    NotDead,
    Missing,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub(crate) state: Option<JobState>,
    pub(crate) route: Option<String>,
    pub(crate) limit: usize,
}

/// One published event: its deliveries, unless (`source`, `id`) was seen on
/// the topic before `dedupe_until` of that first sighting.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) topic: String,
    pub(crate) source: String,
    pub(crate) id: String,
    /// When this sighting stops deduplicating; `None`: no deduplication.
    pub(crate) dedupe_until: Option<Millis>,
    pub(crate) deliveries: Vec<NewJob>,
}

/// What one claim took, and when the backend's next job is due (or the
/// soonest lease lapses), so the deliverer knows when to look again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims {
    pub(crate) jobs: Vec<Claimed>,
    pub(crate) next_due: Option<Millis>,
}

/// One backend's unfinished jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) backend: String,
    pub(crate) jobs: u64,
    /// When the oldest was created.
    pub(crate) oldest: Millis,
    /// The soonest one is due (or its lease lapses).
    pub(crate) next_due: Millis,
}

pub(crate) trait Store: Send + Sync + 'static {
    /// Durable before it returns: committed and on disk (or on Redis' replicas).
    fn accept(&self, job: NewJob) -> Op<Accepted>;
    /// A job not expired; with every attempt when `log`.
    fn get(&self, id: &str, log: bool, now: Millis) -> Op<Option<Job>>;
    fn claim(&self, claim: Claim) -> Op<Claims>;
    /// Extends a running attempt's lease; false when it is no longer ours (cancelled, taken over).
    fn renew(&self, id: &str, owner: &str, until: Millis) -> Op<bool>;
    /// Records an attempt's end; false when the lease was lost meanwhile (nothing is written).
    fn finish(
        &self,
        id: &str,
        owner: &str,
        attempt: Option<Attempt>,
        next: Next,
        now: Millis,
    ) -> Op<bool>;
    /// Stores every event's deliveries in one commit (durable, as `accept`);
    /// per event, whether it was new (false: a duplicate, nothing stored).
    fn publish(&self, events: Vec<NewEvent>, now: Millis) -> Op<Vec<bool>>;
    /// A subscription's deliveries wait until it is resumed (it answered 410).
    fn pause(&self, subscription: &str, now: Millis) -> Op<()>;
    /// Whether it was paused.
    fn resume(&self, subscription: &str) -> Op<bool>;
    fn paused(&self) -> Op<Vec<String>>;
    /// A random secret of 32 bytes kept under `name`, made on first ask.
    fn secret(&self, name: &str) -> Op<Vec<u8>>;
    fn schedules(&self) -> Op<Vec<ScheduleState>>;
    fn tick(&self, tick: Tick) -> Op<Fired>;
    fn cancel(&self, id: &str) -> Op<Cancel>;
    fn redrive(&self, id: &str, now: Millis) -> Op<Redrive>;
    fn purge(&self, id: &str) -> Op<bool>;
    fn list(&self, filter: ListFilter, now: Millis) -> Op<Vec<Job>>;
    /// Deletes finished jobs past their `result_ttl`; how many.
    fn sweep(&self, now: Millis) -> Op<u64>;
    /// Every backend with unfinished jobs.
    fn backlog(&self, now: Millis) -> Op<Vec<Pending>>;
}

/// `name: value\n` lines from headers, and back. Header values never hold a newline.
pub(crate) fn encode_headers(headers: &http::HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(headers.len() * 32);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.into()
}

pub(crate) fn decode_headers(raw: &[u8]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for line in raw.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

#[cfg(test)]
mod tests;
