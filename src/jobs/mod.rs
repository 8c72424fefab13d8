//! Background jobs (SPEC §7): a request stored durably and answered `202`, then
//! delivered to its function at least once, with retries, and its answer kept
//! for the client to fetch.
//!
//! `store/` keeps them (one trait; SQLite embedded by default), `accept.rs`
//! takes them at the door, `deliver.rs` sends them, `answer.rs` renders the
//! status document and results. Events and schedules (SPEC §8, §9) will become
//! jobs of their own and reuse the store and the deliverer.

mod accept;
mod answer;
mod deliver;
mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::state::State;

pub(crate) use accept::{accept, idempotency_key, policy_of, read_body, wants_async};
pub(crate) use answer::{
    job_answer, status_document, time, JobRequest, X_FNGATE_JOB_ID, X_FNGATE_JOB_STATE,
};
pub(crate) use deliver::spawn as spawn_deliverer;
pub(crate) use store::{
    decode_headers, encode_headers, now_ms, Cancel, Fired, Job, JobState, Kind, ListFilter, Millis,
    NewEvent, NewJob, Redrive, ScheduleState, Store, StoreError, StoredRequest, Tick,
};

/// Why a job request was refused (rendered by `error.rs`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the gateway is shutting down and takes no new jobs")]
    Draining,
    #[error("Idempotency-Key is not a string: {0}")]
    BadKey(&'static str),
    #[error("this Idempotency-Key was used for another request")]
    KeyReused,
    #[error("no such job")]
    NotFound,
    #[error("the job has finished and cannot be cancelled")]
    Finished,
    #[error("jobs are read with GET and cancelled with DELETE")]
    Method,
    #[error("job {id} is dead without an answer from its function")]
    Dead { id: String, timed_out: bool },
    #[error(transparent)]
    Body(#[from] crate::upstream::UpstreamError),
}

/// The jobs runtime of one gateway: the store, the deliverer's wake-up, and
/// who waits for which job.
pub(crate) struct Jobs {
    state: Arc<State>,
    /// The open store and where it is (`Store::location`); set once.
    store: OnceLock<(String, Arc<dyn Store>)>,
    /// Held while the store is being opened, so it is opened once.
    opening: Mutex<()>,
    /// The store is Redis, shared with other instances.
    shared: AtomicBool,
    /// This process, as a lease holder.
    owner: String,
    /// Rung when a job arrives or a slot frees, so the deliverer looks now.
    wake: Notify,
    /// When each backend may next have a job due, as this process learnt it
    /// (accepts, retries); the deliverer takes these between its backlog reads.
    hints: Mutex<HashMap<String, Millis>>,
    /// Set when a change (a redrive) may have made work due anywhere.
    rescan: AtomicBool,
    /// The key that signs file URLs, when the store made it (`server.files_key` wins).
    files_key: tokio::sync::OnceCell<Arc<[u8]>>,
    /// Subscriptions paused by a 410 (kept in the store; read back each backlog).
    paused: Mutex<HashSet<String>>,
    /// Clients waiting (`Prefer: wait`) for a job to finish.
    waiters: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Attempts in flight here, to abort on cancel.
    running: Mutex<HashMap<String, CancellationToken>>,
    draining: AtomicBool,
    /// The kinds of write whose last try failed, one bit each (`write_bit`).
    failing: AtomicU32,
    /// Cancelled when the drain is over: attempts still running stop.
    stop: CancellationToken,
}

/// One bit per kind of store write, for `Jobs::failing`.
fn write_bit(op: &str) -> u32 {
    let i = [
        "accept",
        "cancel",
        "claim",
        "files_key",
        "finish",
        "pause",
        "publish",
        "purge",
        "redrive",
        "renew",
        "resume",
        "secret",
        "sweep",
        "tick",
    ]
    .iter()
    .position(|w| *w == op)
    .unwrap_or(31);
    1 << i
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("owner", &self.owner).finish()
    }
}

impl Jobs {
    pub(crate) fn new(state: Arc<State>) -> Arc<Self> {
        Arc::new(Self {
            state,
            store: OnceLock::new(),
            opening: Mutex::new(()),
            shared: AtomicBool::new(false),
            owner: new_id().unwrap_or_else(|| format!("pid-{}", std::process::id())),
            wake: Notify::new(),
            hints: Mutex::new(HashMap::new()),
            rescan: AtomicBool::new(true),
            paused: Mutex::new(HashSet::new()),
            files_key: tokio::sync::OnceCell::new(),
            waiters: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            failing: AtomicU32::new(0),
            stop: CancellationToken::new(),
        })
    }

    /// The store, opened on first need where the running config's `[store]`
    /// says. A later config naming another store takes effect at the next start.
    pub(crate) fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        if let Some(s) = self.opened() {
            return Ok(s);
        }
        let _one = self.opening.lock().map_err(|_| StoreError::Closed)?;
        if let Some(s) = self.opened() {
            return Ok(s);
        }
        let config = self.state.load().config.store.clone();
        let location = config.location();
        let store: Arc<dyn Store> = match &config.url {
            // Connects lazily: whether Redis is up shows at the first operation.
            Some(_) => {
                self.shared.store(true, Ordering::Relaxed);
                store::Redis::open(&config)?
            }
            None => {
                let opened = store::Sqlite::open(&config.path);
                self.state.metrics.store_up.set(i64::from(opened.is_ok()));
                opened?
            }
        };
        tracing::info!(store = %location, "job store open");
        Ok(self.store.get_or_init(|| (location, store)).1.clone())
    }

    /// The store if it is open already (the deliverer and the scheduler open none).
    pub(crate) fn opened(&self) -> Option<Arc<dyn Store>> {
        self.store.get().map(|(_, s)| s.clone())
    }

    /// Where the open store is.
    fn store_location(&self) -> Option<&str> {
        self.store.get().map(|(l, _)| l.as_str())
    }

    /// Times a store operation and keeps `fngate_store_up` current. On Redis
    /// every answer counts, so the deliverer's backlog read each second keeps
    /// the gauge current. On the embedded store only writes count, and the
    /// store is up when no kind of write failed its last try: a full disk
    /// refuses an accept while a cancel or an attempt's update that needs no
    /// new page still passes, and that pass must not read as "up".
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.state.metrics.store_op(op, started.elapsed());
        if self.shared.load(Ordering::Relaxed) {
            self.state.metrics.store_up.set(i64::from(r.is_ok()));
        } else if !matches!(op, "get" | "list" | "backlog" | "paused" | "schedules") {
            let bit = write_bit(op);
            let failing = if r.is_ok() {
                self.failing.fetch_and(!bit, Ordering::Relaxed) & !bit
            } else {
                self.failing.fetch_or(bit, Ordering::Relaxed) | bit
            };
            self.state.metrics.store_up.set(i64::from(failing == 0));
        }
        r
    }

    /// From now on async routes answer 503 and the deliverer takes no new attempt.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Attempts still running after the grace are aborted; their jobs stay queued.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stores the deliveries of published events in one commit (on a task of
    /// its own, as an accept); per event, whether it was new.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        topic: &str,
        events: Vec<NewEvent>,
        now: Millis,
    ) -> Result<Vec<bool>, JobError> {
        let store = self.store()?;
        let jobs = self.clone();
        let topic = topic.to_owned();
        let committed = tokio::spawn(async move {
            let hints: Vec<String> = events
                .iter()
                .flat_map(|e| e.deliveries.iter().map(|d| d.backend.clone()))
                .collect();
            let r = jobs.timed("publish", store.publish(events, now)).await;
            if let Ok(fresh) = &r {
                for new in fresh {
                    jobs.state
                        .metrics
                        .event(&topic, if *new { "accepted" } else { "duplicate" });
                }
                if fresh.iter().any(|n| *n) {
                    for backend in hints {
                        jobs.due(&backend, now);
                    }
                }
            }
            r
        });
        Ok(committed
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))??)
    }

    /// The key that signs file URLs: `server.files_key`, else one the store keeps.
    pub(crate) async fn files_key(&self) -> Result<Arc<[u8]>, StoreError> {
        if let Some(k) = &self.state.load().config.server.files_key {
            return Ok(k.0.clone());
        }
        self.files_key
            .get_or_try_init(|| async {
                let store = self.store()?;
                let key = self.timed("secret", store.secret("files_key")).await?;
                Ok::<_, StoreError>(Arc::from(key))
            })
            .await
            .cloned()
    }

    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// What the store keeps of every schedule.
    pub(crate) async fn schedule_states(&self) -> Result<Vec<ScheduleState>, StoreError> {
        let store = self.store()?;
        self.timed("schedules", store.schedules()).await
    }

    /// Records a scheduler decision (and stores its run): on a task of its
    /// own, as an accept. Replaced runs in flight here are aborted.
    pub(crate) async fn tick(self: &Arc<Self>, tick: Tick) -> Result<Fired, StoreError> {
        let store = self.store()?;
        let jobs = self.clone();
        let committed = tokio::spawn(async move {
            let due = tick.job.as_ref().map(|j| (j.backend.clone(), j.now));
            let r = jobs.timed("tick", store.tick(tick)).await;
            if let Ok(Fired::Stored { replaced }) = &r {
                for id in replaced {
                    jobs.abort(id);
                    jobs.finished(id);
                }
                if let Some((backend, at)) = due {
                    jobs.due(&backend, at);
                }
            }
            r
        });
        committed
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
    }

    /// A job of `backend` is due at `at`: the deliverer looks then.
    fn due(&self, backend: &str, at: Millis) {
        if let Ok(mut h) = self.hints.lock() {
            match h.get_mut(backend) {
                Some(t) => *t = (*t).min(at),
                None => {
                    h.insert(backend.to_owned(), at);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Tells whoever waits on `id` that it finished.
    fn finished(&self, id: &str) {
        if let Some(tx) = self.waiters.lock().ok().and_then(|mut w| w.remove(id)) {
            tx.send_replace(true);
        }
    }

    /// The job once it finished, or as it is after `wait`. Subscribed before
    /// the first read, so a finish in between is not missed.
    async fn finished_within(&self, id: &str, wait: Duration) -> Result<Option<Job>, StoreError> {
        let store = self.store()?;
        let mut rx = self
            .waiters
            .lock()
            .map_err(|_| StoreError::Closed)?
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        let now = self.timed("get", store.get(id, false, now_ms())).await;
        if matches!(&now, Ok(Some(j)) if !j.state.finished()) {
            let _ = tokio::time::timeout(wait, rx.wait_for(|d| *d)).await;
        }
        drop(rx);
        if let Ok(mut w) = self.waiters.lock() {
            if w.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
                w.remove(id);
            }
        }
        match now {
            Ok(Some(j)) if !j.state.finished() => {
                self.timed("get", store.get(id, false, now_ms())).await
            }
            other => other,
        }
    }

    /// Aborts the attempt in flight here for `id`, if any.
    fn abort(&self, id: &str) {
        if let Some(t) = self.running.lock().ok().and_then(|mut r| r.remove(id)) {
            t.cancel();
        }
    }

    // The admin API's operations (SPEC §11).

    pub(crate) async fn list(&self, filter: ListFilter) -> Result<Vec<Job>, StoreError> {
        let store = self.store()?;
        self.timed("list", store.list(filter, now_ms())).await
    }

    /// A job not expired; with every attempt when `log`.
    pub(crate) async fn get(&self, id: &str, log: bool) -> Result<Option<Job>, StoreError> {
        let store = self.store()?;
        self.timed("get", store.get(id, log, now_ms())).await
    }

    pub(crate) async fn redrive(&self, id: &str) -> Result<Redrive, StoreError> {
        let store = self.store()?;
        let r = self.timed("redrive", store.redrive(id, now_ms())).await?;
        self.rescan.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        Ok(r)
    }

    /// The subscriptions paused by a 410.
    pub(crate) async fn paused_subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let store = self.store()?;
        self.timed("paused", store.paused()).await
    }

    /// Resumes a paused subscription; whether it was paused.
    pub(crate) async fn resume(&self, subscription: &str) -> Result<bool, StoreError> {
        let store = self.store()?;
        let was = self.timed("resume", store.resume(subscription)).await?;
        if let Ok(mut p) = self.paused.lock() {
            p.remove(subscription);
        }
        self.rescan.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        Ok(was)
    }

    pub(crate) async fn purge(&self, id: &str) -> Result<bool, StoreError> {
        let store = self.store()?;
        let r = self.timed("purge", store.purge(id)).await?;
        self.abort(id);
        Ok(r)
    }

    /// Client cancel: a job not finished is removed and its attempt aborted.
    pub(crate) async fn cancel(&self, id: &str, route: &str) -> Result<Cancel, StoreError> {
        let store = self.store()?;
        let r = self.timed("cancel", store.cancel(id)).await?;
        if r == Cancel::Cancelled {
            self.abort(id);
            self.state.metrics.job(route, "cancelled");
            self.finished(id);
        }
        Ok(r)
    }
}

/// 32 hex digits: the time in milliseconds (48 bits), then 80 random bits
/// from the OS, as UUIDv7 lays them out. The time first keeps the store's id
/// index appended to rather than written all over; the random bits make an
/// id unguessable, which a job URL relies on.
pub(crate) fn new_id() -> Option<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes[6..]).ok()?;
    let ms = u64::try_from(now_ms()).unwrap_or(0).to_be_bytes();
    bytes[..6].copy_from_slice(&ms[2..]);
    let mut out = [0u8; 32];
    crate::hex::hex(&mut out, u128::from_be_bytes(bytes));
    String::from_utf8(out.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_begin_with_the_time_and_end_unguessable() {
        let before = now_ms();
        let ids: Vec<String> = (0..1000).map(|_| new_id().expect("randomness")).collect();
        let after = now_ms();
        for id in &ids {
            assert_eq!(id.len(), 32);
            let ms = i64::from_str_radix(&id[..12], 16).expect("hex");
            assert!((before..=after).contains(&ms), "{id}");
        }
        // Later ids sort after earlier ones (the store's index is appended to)...
        let (first, last) = (&ids[0], &ids[999]);
        assert!(first[..12] <= last[..12]);
        // ...and none repeats: 80 random bits each.
        let unique: std::collections::HashSet<&str> = ids.iter().map(|i| &i[12..]).collect();
        assert_eq!(unique.len(), ids.len());
    }
}
