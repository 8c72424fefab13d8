//! Idle deadlines without a clock on the IO path: IO wrappers count the calls
//! that moved bytes, and a watchdog samples the count. Client connections
//! (`server/`) and WebSocket tunnels (`proxy/`) both use it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the IO wrapper records for the watchdog: no clock on the IO path,
/// just a counter of IO calls that moved bytes and a "head pending" flag.
/// The connection's own task is the only writer, so plain load/store suffices.
#[derive(Debug)]
pub(crate) struct Activity {
    moved: AtomicU64,
    head_pending: AtomicBool,
    in_flight: AtomicU32,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            moved: AtomicU64::new(0),
            // A new connection owes us a request head from the moment it opens.
            head_pending: AtomicBool::new(true),
            in_flight: AtomicU32::new(0),
        }
    }

    /// A read moved bytes; with no request in flight, a new head is arriving.
    pub(crate) fn read(&self) {
        self.touch();
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_pending.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn touch(&self) {
        self.moved.store(
            self.moved.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_pending.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the connection has been silent for `idle`, or when a
    /// request head has been arriving for longer than `head` (HTTP/1 only).
    /// It samples every quarter of the shorter deadline, so a deadline is
    /// enforced within +25% of its value.
    pub(crate) async fn expired(&self, idle: Duration, head: Option<Duration>) -> &'static str {
        let tick = (head.map_or(idle, |h| h.min(idle)) / 4).max(Duration::from_millis(5));
        let mut seen = self.moved.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        let mut head_since = self
            .head_pending
            .load(Ordering::Relaxed)
            .then_some(quiet_since);
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let moved = self.moved.load(Ordering::Relaxed);
            if moved != seen {
                seen = moved;
                quiet_since = now;
            }
            if now.duration_since(quiet_since) >= idle {
                return "idle timeout";
            }
            let Some(head) = head else { continue };
            if self.head_pending.load(Ordering::Relaxed)
                && self.in_flight.load(Ordering::Relaxed) == 0
            {
                let since = *head_since.get_or_insert(now);
                if now.duration_since(since) >= head {
                    return "request head not received in time";
                }
            } else {
                head_since = None;
            }
        }
    }
}

/// Counts a request as in flight until dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO that tells its [`Activity`] when bytes move.
pub(crate) struct Tracked<T> {
    pub(crate) inner: T,
    pub(crate) activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
