//! A future polled only when its own waker fired.
//!
//! `select!` polls every branch each time the task wakes. A connection's task
//! wakes for every read and every answer, and its rare branches (draining, the
//! idle watchdog) cost 620 instructions a request just to say "not yet".
//! Behind a [`Gated`], such a branch is skipped unless something it waits on
//! woke the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

pin_project_lite::pin_project! {
    pub(crate) struct Gated<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        // The waker handed to `inner`, made once.
        waker: Waker,
    }
}

/// Set by `inner`'s wake-ups, cleared when `inner` is polled.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            // The first poll goes through: `inner` has not registered anything yet.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read, so a wake-up in between is not lost.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set, waking its waker when asked.
    struct Probe {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.open.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_inner_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut gated = Box::pin(Gated::new(Probe {
            polls: polls.clone(),
            open: open.clone(),
            waker: inner_waker.clone(),
        }));
        let outer = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&waker);

        // The first poll reaches the inner future.
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Wakes of the task for other reasons do not.
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // The inner future's own wake-up wakes the task and lets the next poll through.
        open.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(outer.0.load(Ordering::SeqCst), 1);
        assert!(gated.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_still_fires() {
        let sleep = Gated::new(tokio::time::sleep(std::time::Duration::from_secs(30)));
        tokio::time::timeout(std::time::Duration::from_secs(31), sleep)
            .await
            .expect("the gated sleep ends before the outer timeout");
    }
}
