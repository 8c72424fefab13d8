//! One client connection: protocol detection, activity tracking and the
//! deadlines hyper does not enforce the way SPEC §2 asks.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, so it would cap `idle_timeout`. Instead the
//! IO wrapper records that bytes moved and that a new request head began to
//! arrive, and a watchdog (`idle.rs`) closes the connection when either
//! deadline passes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::{Activity, Tracked};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a closed connection still reads what its client sends (`linger`).
const LINGER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// The client socket, with the bytes read while sniffing the protocol replayed first.
pub(crate) struct ConnIo {
    inner: Tracked<TcpStream>,
    prefix: BytesMut,
}

impl ConnIo {
    pub(crate) fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            inner: Tracked { inner, activity },
            prefix: BytesMut::new(),
        }
    }

    /// Reads until the bytes tell HTTP/2 prior knowledge from HTTP/1.
    pub(crate) async fn sniff(&mut self) -> io::Result<Protocol> {
        // Only the preface's length: an idle connection waiting for its first
        // bytes holds 24 bytes, not a read buffer; hyper reads the rest itself.
        let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
        loop {
            if self.inner.inner.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.inner.activity.touch();
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                self.prefix = buf;
                return Ok(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                self.prefix = buf;
                return Ok(Protocol::Http2);
            }
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Replayed: the buffer is not kept for the connection's life.
                self.prefix = BytesMut::new();
                // The rest of the head has usually arrived with the sniffed
                // bytes: read it in the same call. Handed only the prefix,
                // hyper parses a partial head and reserves again, which
                // doubles its 8 KiB read buffer to 16 KiB (copying the 8)
                // on every connection. An error here is left to the next
                // read, which finds the socket closed.
                let before = buf.filled().len();
                if buf.remaining() > 0
                    && matches!(
                        Pin::new(&mut self.inner.inner).poll_read(cx, buf),
                        Poll::Ready(Ok(()))
                    )
                    && buf.filled().len() > before
                {
                    self.inner.activity.read();
                }
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        // Reads bypass `Tracked`: a read also tells whether a new request head began.
        let polled = Pin::new(&mut self.inner.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.inner.activity.read();
        }
        polled
    }
}

/// Closed with request bytes still unread (an answer before the body ended:
/// 413 mid-upload, an early error), the kernel would answer them with a
/// reset that destroys the answer before the client reads it. So the socket
/// lives on for a while, its write side shut, reading and discarding until
/// the client closes: nginx's lingering close. A socket with nothing unread
/// (the usual close) costs one `recv` that says so.
impl Drop for ConnIo {
    fn drop(&mut self) {
        let stream = &self.inner.inner;
        // Asked of the socket itself: tokio's `try_read` answers "would block"
        // without a syscall while its readiness is cleared, which it is after
        // the read that last drained the socket, however much arrived since.
        let mut byte = [std::mem::MaybeUninit::uninit()];
        if !matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A second descriptor: this one closes now, the socket when `linger` ends.
        let Ok(fd) = std::os::fd::AsFd::as_fd(stream).try_clone_to_owned() else {
            return;
        };
        handle.spawn(linger(std::net::TcpStream::from(fd)));
    }
}

async fn linger(stream: std::net::TcpStream) {
    let Ok(mut stream) = TcpStream::from_std(stream) else {
        return;
    };
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    let mut buf = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Writes go through the same activity tracking as a tunnel's.
impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A loopback client and the server side of its connection.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn the_first_read_after_the_sniff_returns_the_whole_head() {
        let (mut client, server) = connected().await;
        let head = b"GET /a/path/longer/than/the/preface HTTP/1.1\r\nhost: test\r\n\r\n";
        client.write_all(head).await.expect("write");
        // Every byte has arrived before the sniff reads.
        let mut peeked = [0u8; 128];
        while server.peek(&mut peeked).await.expect("peek") < head.len() {}
        let mut io = ConnIo::new(server, Arc::new(Activity::new()));
        assert_eq!(io.sniff().await.expect("sniff"), Protocol::Http1);
        // As hyper reads: one call into an 8 KiB buffer. Only the sniffed
        // bytes here would make hyper grow its buffer to 16 KiB.
        let mut buf = vec![0u8; 8192];
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], &head[..]);
    }

    #[tokio::test]
    async fn bytes_that_arrive_after_the_last_read_still_get_a_lingering_close() {
        let (mut client, server) = connected().await;
        let mut io = ConnIo::new(server, Arc::new(Activity::new()));
        client.write_all(b"a").await.expect("write");
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.expect("read"), 1);
        // The socket is drained: this read finds nothing, and tokio clears
        // its readiness until the reactor hears of new bytes.
        let drained = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut io).poll_read(cx, &mut rb).is_pending())
        })
        .await;
        assert!(drained);
        // Written without yielding, so the reactor has not run: the bytes are
        // in the socket and tokio does not know.
        client.write_all(b"more").await.expect("write");
        drop(io);
        // A close with bytes unread would reset the connection; lingering,
        // the gateway shuts its side and the client reads the end.
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the gateway closes its side");
        assert_eq!(n.expect("no reset"), 0);
    }
}
