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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::State;

pub(crate) use accept::{accept, wants_async};
pub(crate) use answer::{
    job_answer, status_document, time, JobRequest, X_FNGATE_JOB_ID, X_FNGATE_JOB_STATE,
};
pub(crate) use deliver::spawn as spawn_deliverer;
pub(crate) use store::{now_ms, Cancel, Job, JobState, ListFilter, Redrive, Store, StoreError};

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
    metrics: Arc<Metrics>,
    store: Mutex<Option<(PathBuf, Arc<dyn Store>)>>,
    /// This process, as a lease holder.
    owner: String,
    /// Rung when a job arrives or a slot frees, so the deliverer looks now.
    wake: Notify,
    /// Clients waiting (`Prefer: wait`) for a job to finish.
    waiters: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Attempts in flight here, to abort on cancel.
    running: Mutex<HashMap<String, CancellationToken>>,
    draining: AtomicBool,
    /// Cancelled when the drain is over: attempts still running stop.
    stop: CancellationToken,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("owner", &self.owner).finish()
    }
}

impl Jobs {
    pub(crate) fn new(state: Arc<State>) -> Arc<Self> {
        let metrics = state.metrics.clone();
        Arc::new(Self {
            state,
            metrics,
            store: Mutex::new(None),
            owner: new_id().unwrap_or_else(|| format!("pid-{}", std::process::id())),
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            stop: CancellationToken::new(),
        })
    }

    /// The store, opened on first need at the running config's `[store] path`.
    /// A later config naming another path takes effect at the next start.
    pub(crate) fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        let mut slot = self.store.lock().map_err(|_| StoreError::Closed)?;
        if let Some((path, store)) = &*slot {
            let wanted = &self.state.load().config.store.path;
            if wanted != path {
                tracing::warn!(running = %path.display(), configured = %wanted.display(),
                    "[store] path changed: the new path is used after a restart");
            }
            return Ok(store.clone());
        }
        let path = self.state.load().config.store.path.clone();
        match store::Sqlite::open(&path) {
            Ok(s) => {
                let s: Arc<dyn Store> = s;
                *slot = Some((path, s.clone()));
                self.metrics.store_up.set(1);
                tracing::info!(path = %slot.as_ref().map_or_else(String::new, |(p, _)| p.display().to_string()), "job store open");
                Ok(s)
            }
            Err(e) => {
                self.metrics.store_up.set(0);
                Err(e)
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<crate::state::Snapshot> {
        self.state.load()
    }

    /// The store if it is open already (the deliverer does not open one).
    fn opened(&self) -> Option<Arc<dyn Store>> {
        self.store
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, s)| s.clone()))
    }

    /// Times a store operation and keeps `fngate_store_up` true to its outcome.
    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = f.await;
        self.metrics.store_op(op, started.elapsed());
        self.metrics.store_up.set(i64::from(r.is_ok()));
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

    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Tells whoever waits on `id` that it finished.
    fn finished(&self, id: &str) {
        if let Some(tx) = self.waiters.lock().ok().and_then(|mut w| w.remove(id)) {
            tx.send_replace(true);
        }
    }

    fn waiter(&self, id: &str) -> watch::Receiver<bool> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(id.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn forget_waiter(&self, id: &str) {
        if let Ok(mut w) = self.waiters.lock() {
            if w.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
                w.remove(id);
            }
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

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let store = self.store()?;
        self.timed("get", store.get(id, true, now_ms())).await
    }

    pub(crate) async fn redrive(&self, id: &str) -> Result<Redrive, StoreError> {
        let store = self.store()?;
        let r = self.timed("redrive", store.redrive(id, now_ms())).await?;
        self.wake.notify_one();
        Ok(r)
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
            self.metrics.job(route, "cancelled");
            self.finished(id);
        }
        Ok(r)
    }
}

/// 128 random bits from the OS, as 32 hex digits: a job id is its own capability.
pub(crate) fn new_id() -> Option<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Some(out)
}
