//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once
//! the backend answered 101, bytes are copied both ways until either side
//! closes, the tunnel is idle for `websocket_idle_timeout`, or it reaches
//! `websocket_max_lifetime`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Joins the client's and the backend's upgraded connections.
pub(crate) async fn run(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, max: Duration) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        inner: TokioIo::new(client),
        moved: moved.clone(),
    };
    let mut upstream = Tracked {
        inner: TokioIo::new(upstream),
        moved: moved.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::select! {
        res = copy => {
            if let Err(e) = res {
                tracing::debug!("tunnel ended: {e}");
            }
        }
        () = idle_for(&moved, idle) => tracing::debug!("tunnel closed: idle"),
        () = tokio::time::sleep(max) => tracing::debug!("tunnel closed: max lifetime"),
    }
}

/// Resolves once no byte has moved for `idle` (sampled every quarter of it).
async fn idle_for(moved: &AtomicU64, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(5));
    let mut seen = moved.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = moved.load(Ordering::Relaxed);
        if now == seen {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
    }
}

/// An IO that counts the calls that moved bytes.
struct Tracked<T> {
    inner: T,
    moved: Arc<AtomicU64>,
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
            self.moved.fetch_add(1, Ordering::Relaxed);
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
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
