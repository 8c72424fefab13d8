//! Connections of our own for plain HTTP/1.1 endpoints, on
//! `hyper::client::conn::http1`: per endpoint, a stack of idle senders.
//!
//! What it saves over hyper-util's pooled client, per request: no absolute
//! URI (the request goes out in origin form), no pool key hashed from the
//! authority, no task spawned to watch a connection become idle again (the
//! answer's body hands it back when it ends), and a request the connection
//! never took comes back (`try_send_request`), so a keep-alive connection the
//! server closed meanwhile costs neither an attempt nor a copy of the headers.
//! TLS and h2 endpoints keep hyper-util's client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::ProxyBody;
use crate::body::BoxError;
use crate::config::Endpoint;

/// An idle connection is closed after this long unused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; one checked in past this is closed.
pub(crate) const MAX_IDLE: usize = 1024;

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

/// One backend's HTTP/1.1 connections, by endpoint index and worker: a
/// connection runs on the worker that opened it (worker.rs), so a request
/// takes one of its own worker's and never wakes another thread.
pub(crate) struct Http1Pool {
    idle: Vec<Mutex<Vec<Idle>>>,
    workers: usize,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
}

/// Why an attempt got no answer.
#[derive(Debug)]
pub(crate) struct SendError {
    /// No connection could be made: nothing reached the backend.
    pub(crate) connect: bool,
    pub(crate) source: BoxError,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What failed; `chain` adds why (the source).
        f.write_str(if self.connect { "connect" } else { "request" })
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A connection to hand back once its answer's body has been read to the end.
pub(crate) struct Checkin {
    pool: Arc<Http1Pool>,
    /// The slot it came from: its endpoint's, on the worker that runs it.
    slot: usize,
    tx: SendRequest<ProxyBody>,
}

impl Checkin {
    pub(crate) fn done(self) {
        self.pool.put(self.slot, self.tx, Instant::now());
    }
}

impl Http1Pool {
    pub(crate) fn new(endpoints: usize, connect_timeout: Duration) -> Arc<Self> {
        Self::with_limits(endpoints, connect_timeout, MAX_IDLE, IDLE_TIMEOUT)
    }

    pub(crate) fn with_limits(
        endpoints: usize,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let workers = crate::worker::count();
        let pool = Arc::new(Self {
            idle: (0..endpoints * workers)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            workers,
            connect_timeout,
            max_idle,
            idle_timeout,
        });
        pool.spawn_sweep();
        pool
    }

    /// Closes connections idle past the timeout even where no request comes
    /// to find them; the task holds the pool weakly and ends with it.
    fn spawn_sweep(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (weak, every) = (Arc::downgrade(self), self.idle_timeout / 2);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                pool.sweep(Instant::now());
            }
        });
    }

    /// Drops (so closes) every idle connection past the timeout, or closed.
    fn sweep(&self, now: Instant) {
        for idle in &self.idle {
            if let Ok(mut idle) = idle.lock() {
                idle.retain(|c| {
                    now.duration_since(c.since) <= self.idle_timeout && !c.tx.is_closed()
                });
            }
        }
    }

    /// `endpoint`'s slot on the worker running this thread.
    fn slot(&self, endpoint: usize) -> usize {
        endpoint * self.workers + crate::worker::index() % self.workers
    }

    /// Live idle connections held for `endpoint` now, on this thread's worker.
    #[cfg(test)]
    fn idle(&self, endpoint: usize) -> usize {
        self.idle[self.slot(endpoint)]
            .lock()
            .map_or(0, |v| v.iter().filter(|c| !c.tx.is_closed()).count())
    }

    fn put(&self, slot: usize, tx: SendRequest<ProxyBody>, now: Instant) {
        if tx.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle[slot].lock() {
            if idle.len() < self.max_idle {
                idle.push(Idle { tx, since: now });
            }
        }
    }

    /// The most recently used live connection in `slot`, if any (LIFO keeps
    /// few warm); `now` is the attempt's start, so no clock is read here.
    fn take(&self, slot: usize, now: Instant) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle[slot].lock().ok()?;
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) > self.idle_timeout {
                // Everything below it is older still.
                idle.clear();
                return None;
            }
            if !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<ProxyBody>, SendError> {
        let connect_err = |source: BoxError| SendError {
            connect: true,
            source,
        };
        let host = endpoint.authority.host();
        let port = endpoint.authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
        )
        .await
        .map_err(|_| {
            connect_err(format!("no connection within {:?}", self.connect_timeout).into())
        })?
        .map_err(|e| connect_err(e.into()))?;
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(IDLE_TIMEOUT));
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(e.into()))?;
        // The connection runs on its own task; it ends when the sender and
        // any upgraded tunnel are gone.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(tx)
    }

    /// Sends `req` on an idle connection, or a new one. An idle connection
    /// found closed as it was used hands the request back, and the next one
    /// (or a new connection) takes it.
    ///
    /// Not an `async fn`, which would keep the request twice (the argument
    /// and the binding it moves to).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn send<'a>(
        self: &'a Arc<Self>,
        index: usize,
        endpoint: &'a Endpoint,
        mut req: Request<ProxyBody>,
        now: Instant,
    ) -> impl std::future::Future<Output = Result<(Response<Incoming>, Checkin), SendError>> + Send + 'a
    {
        async move {
            let slot = self.slot(index);
            loop {
                let (mut tx, fresh) = match self.take(slot, now) {
                    Some(tx) => (tx, false),
                    None => (self.connect(endpoint).await?, true),
                };
                // A connection that just finished an answer may need a moment to be ready.
                if tx.ready().await.is_err() {
                    if fresh {
                        return Err(SendError {
                            connect: true,
                            source: "the new connection closed at once".into(),
                        });
                    }
                    continue;
                }
                match tx.try_send_request(req).await {
                    Ok(res) => {
                        let checkin = Checkin {
                            pool: self.clone(),
                            slot,
                            tx,
                        };
                        return Ok((res, checkin));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent: an idle connection closed under us; try the next.
                        Some(back) if !fresh => req = back,
                        back => {
                            return Err(SendError {
                                // Not sent at all: as good as never connected.
                                connect: back.is_some(),
                                source: e.into_error().into(),
                            });
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
        Endpoint {
            url: format!("http://{addr}").into(),
            scheme: http::uri::Scheme::HTTP,
            authority: addr.to_string().parse().expect("authority"),
            base_path: String::new(),
            host: http::HeaderValue::from_str(&addr.to_string()).expect("host"),
        }
    }

    /// A hyper server on loopback answering "ok"; counts the connections it accepted.
    /// `keep_alive = false` answers with `connection: close`; `hold` makes each
    /// answer wait until that many requests are in.
    async fn server(keep_alive: bool, hold: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        server_closing(keep_alive, hold).await.0
    }

    /// As `server`, also counting the connections that ended.
    async fn server_closing(
        keep_alive: bool,
        hold: usize,
    ) -> ((std::net::SocketAddr, Arc<AtomicUsize>), Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(hold.max(1)));
        let count = accepted.clone();
        let ended = Arc::new(AtomicUsize::new(0));
        let ends = ended.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let barrier = barrier.clone();
                let ends = ends.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let barrier = barrier.clone();
                        async move {
                            barrier.wait().await;
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    ends.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        ((addr, accepted), ended)
    }

    fn get() -> Request<ProxyBody> {
        let mut req = Request::new(ProxyBody::empty());
        *req.uri_mut() = "/".parse().expect("uri");
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("test"));
        req
    }

    /// Sends one GET and reads its answer to the end, as the proxy does.
    async fn call(pool: &Arc<Http1Pool>, e: &Endpoint) -> Result<Bytes, SendError> {
        let (res, checkin) = pool.send(0, e, get(), Instant::now()).await?;
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        checkin.done();
        Ok(body)
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_its_answer_was_read() {
        let (addr, accepted) = server(true, 1).await;
        let e = endpoint(addr);
        let pool = Http1Pool::new(1, Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(call(&pool, &e).await.expect("answer"), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(0), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_discarded_and_the_next_request_opens_one() {
        // connection: close after each answer.
        let (addr, accepted) = server(false, 1).await;
        let e = endpoint(addr);
        let pool = Http1Pool::new(1, Duration::from_secs(1));
        for n in 1..=3 {
            assert_eq!(call(&pool, &e).await.expect("answer"), "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
        // A server that closes a kept-alive connection without a word: the
        // pool notices the close and does not hand that connection out.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let raw = endpoint(listener.local_addr().expect("addr"));
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            drop(s);
            let _ = closed_tx.send(());
            // The next connection answers too.
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        });
        assert_eq!(call(&pool, &raw).await.expect("answer"), "ok");
        closed.await.expect("closed");
        assert_eq!(
            call(&pool, &raw).await.expect("a new connection answers"),
            "ok"
        );
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_limit_close_and_old_ones_expire() {
        // Four requests at once: each answer waits for all four, so four connections.
        let (addr, accepted) = server(true, 4).await;
        let e = endpoint(addr);
        let pool = Http1Pool::with_limits(1, Duration::from_secs(1), 2, Duration::from_millis(200));
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (pool, e) = (pool.clone(), e.clone());
                tokio::spawn(async move { call(&pool, &e).await.map(drop) })
            })
            .collect();
        for c in calls {
            c.await.expect("task").expect("answer");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(pool.idle(0), 2, "two kept, two closed");
        // Unused past the idle timeout: not handed out again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            pool.take(0, Instant::now()).is_none(),
            "expired connections are dropped"
        );
        assert_eq!(pool.idle(0), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_by_the_sweep_with_no_request_to_find_them() {
        let ((addr, _), ended) = server_closing(true, 1).await;
        let e = endpoint(addr);
        let pool = Http1Pool::with_limits(1, Duration::from_secs(1), 8, Duration::from_millis(100));
        let (res, checkin) = pool
            .send(0, &e, get(), Instant::now())
            .await
            .expect("answer");
        let _ = res.into_body().collect().await.expect("body");
        checkin.done();
        assert_eq!(pool.idle(0), 1);
        // The sweep task (every 50 ms) drops it once it has been idle 100 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pool.idle[0].lock().expect("lock").is_empty() || ended.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never swept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and the backend saw the connection end.
        assert_eq!(ended.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = Http1Pool::new(1, Duration::from_secs(1));
        let err = pool
            .send(0, &endpoint(addr), get(), Instant::now())
            .await
            .err()
            .expect("refused");
        assert!(err.connect, "{err}");
    }
}
