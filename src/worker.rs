//! Worker threads: with `workers = N`, the caller's runtime is worker 0 and
//! N - 1 threads each run a single-threaded runtime of their own, accepting on
//! their own `SO_REUSEPORT` socket (server/mod.rs), as nginx runs worker
//! processes. A connection and everything its requests do stay on the worker
//! that accepted it. Tokio's multi-threaded runtime cost about 8 µs more per
//! request here: tasks stolen and woken across threads, and a shared queue.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any gateway in this process runs; per-worker state
/// (upstream connections) is sized by it.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The worker running this thread: 0 on the caller's runtime (and any thread
/// not a worker's), below [`count`] on a worker's.
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many slots per-worker state needs.
pub(crate) fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// `workers` from the config: 0 is one per core.
pub(crate) fn resolve(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// The worker threads beyond the first, running until [`Workers::stop`].
pub(crate) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `total - 1` threads (none for one worker). Call before any
    /// per-worker state is built, so it is sized for them.
    pub(crate) fn start(total: usize) -> std::io::Result<Self> {
        COUNT.fetch_max(total.max(1), Ordering::Relaxed);
        let stop = CancellationToken::new();
        let mut workers = Self {
            handles: Vec::new(),
            stop: stop.clone(),
            done: Vec::new(),
        };
        for i in 1..total {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            workers.handles.push(runtime.handle().clone());
            workers.done.push(rx);
            let stop = stop.clone();
            // On an error the threads already started end as `workers` drops.
            std::thread::Builder::new()
                .name(format!("fngate-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    runtime.block_on(stop.cancelled());
                    // Whatever still runs here (idle upstream connections) ends now.
                    drop(runtime);
                    let _ = tx.send(());
                })?;
        }
        Ok(workers)
    }

    /// The runtimes of workers 1 and up, to spawn their accept loops on.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Ends every worker's runtime and waits until each has.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        for done in std::mem::take(&mut self.done) {
            let _ = done.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // A gateway that failed to start, or was dropped without a drain.
        self.stop.cancel();
    }
}
