//! Listeners, connections and the shutdown sequence of SPEC §5.

mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::body::{Body, BoxError};
use crate::config::Config;
use crate::context::{ConnInfo, Exchange};
use crate::gate::Gated;
use crate::idle::{self, Activity};
use crate::metrics::Metrics;
use crate::state::State;
use conn::{ConnIo, Protocol};

/// Command-line overrides of the file's addresses.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// The clock of rate limits and upstream ejections; tests pass one they can move forward.
    pub clock: Option<crate::clock::Clock>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin API would listen on {addr} (not loopback) but ${env} is not set: set a token or listen on 127.0.0.1")]
    AdminToken { addr: SocketAddr, env: String },
    /// The job store could not be opened (its path and why).
    #[error("{0}")]
    Store(String),
    #[error("cannot start the worker threads (server.workers): {0}")]
    Workers(std::io::Error),
    #[error("cannot watch {path} for changes (server.watch): {source}")]
    Watch { path: String, source: notify::Error },
}

/// A running gateway: its bound addresses and the handles to stop it.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS listener's address, when `[server.tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Gateway {
    /// Starts the drain (SPEC §5); [`Gateway::wait`] returns when it is over.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds every listener and starts serving. Returns once the gateway is ready.
pub async fn start(config: Config, opts: ServeOptions) -> Result<Gateway, StartError> {
    let listen = opts.listen.unwrap_or(config.server.listen);
    let admin_listen = opts.admin_listen.unwrap_or(config.admin.listen);
    // Validation checked the file's address; an override must pass the same rule.
    if !admin_listen.ip().is_loopback() && config.admin.token.is_none() {
        return Err(StartError::AdminToken {
            addr: admin_listen,
            env: config.admin.token_env.clone(),
        });
    }
    // Bound before anything starts, so a taken port fails the start cleanly.
    let workers = crate::worker::resolve(config.server.workers);
    let reuse_port = workers > 1;
    let listener = bind("server.listen", listen, reuse_port)?;
    let admin_listener = bind("admin.listen", admin_listen, false)?;
    let tls_listener = match &config.server.tls {
        Some(tls) => Some(bind("server.tls.listen", tls.listen, reuse_port)?),
        None => None,
    };
    let addr = listener.local_addr().unwrap_or(listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(admin_listen);
    let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Each further worker accepts on a socket of its own at the same address;
    // the kernel spreads new connections over them.
    let mut extra = Vec::new();
    for _ in 1..workers {
        let tls = match tls_addr {
            Some(a) => Some(bind("server.tls.listen", a, true)?),
            None => None,
        };
        extra.push((bind("server.listen", addr, true)?, tls));
    }
    let listener = from_std("server.listen", listen, listener)?;
    let admin_listener = from_std("admin.listen", admin_listen, admin_listener)?;
    // Started before the state is built: upstream pools keep a slot per worker.
    let workers = crate::worker::Workers::start(workers).map_err(StartError::Workers)?;

    let watch = config.server.watch.then(|| config.path.clone()).flatten();
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(State::new(
        config,
        metrics,
        opts.clock.clone().unwrap_or_default(),
    ));
    let shutdown = CancellationToken::new();
    if let Some(path) = watch {
        crate::state::watch::spawn(state.clone(), &path, shutdown.clone()).map_err(|source| {
            StartError::Watch {
                path: path.display().to_string(),
                source,
            }
        })?;
    }

    let jobs = crate::jobs::Jobs::new(state.clone());
    if state.load().config.needs_store() {
        jobs.store().map_err(|e| StartError::Store(e.to_string()))?;
        // One process per embedded store: partial uploads in its directories
        // are a dead one's. Instances sharing Redis may share an upload
        // directory too, and another's partial upload is in progress.
        let embedded = state.load().config.store.url.is_none();
        let swept = if embedded {
            crate::uploads::sweep_temps(&state.load().config)
        } else {
            0
        };
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed partial uploads left by a process that died"
            );
        }
    }
    let deliverer = crate::jobs::spawn_deliverer(jobs.clone());
    // Ends when draining starts: no tick fires during a shutdown.
    let _scheduler = crate::schedules::spawn(jobs.clone());

    // With a shared store, admin changes go to every instance (SPEC §10).
    let cluster = match &state.load().config.store.url {
        Some(_) => {
            let cluster = crate::cluster::Cluster::new(state.clone(), &state.load().config.store)
                .map_err(StartError::Store)?;
            state.set_publisher(cluster.clone());
            cluster.spawn(shutdown.clone());
            Some(cluster)
        }
        None => None,
    };

    let ready = Arc::new(AtomicBool::new(true));
    let stop_admin = CancellationToken::new();
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        crate::admin::AdminState::new(state.clone(), ready.clone(), jobs.clone(), cluster),
        stop_admin.clone(),
    ));

    let stop_accepting = CancellationToken::new();
    let draining = CancellationToken::new();
    // Read per answer, so a flag rather than a token (cloning a token locks).
    let draining_flag = Arc::new(AtomicBool::new(false));
    let tracker = TaskTracker::new();
    let drain = Drain {
        token: draining.clone(),
        flag: draining_flag.clone(),
    };
    // One stack for every listener; each connection clones it.
    let service = crate::middleware::stack(state.clone(), jobs.clone());
    let accept = |listener: TcpListener, tls: bool| {
        accept_loop(
            listener,
            tls,
            service.clone(),
            state.clone(),
            stop_accepting.clone(),
            drain.clone(),
            tracker.clone(),
        )
    };
    let mut accepts = vec![tokio::spawn(accept(listener, false))];
    if let Some(l) = tls_listener {
        let l = from_std("server.tls.listen", tls_addr.unwrap_or(listen), l)?;
        accepts.push(tokio::spawn(accept(l, true)));
    }
    for (handle, (plain, tls)) in workers.handles().iter().zip(extra) {
        // Registered with the worker's own reactor, and run by its runtime.
        let _worker = handle.enter();
        accepts.push(handle.spawn(accept(from_std("server.listen", addr, plain)?, false)));
        if let Some(l) = tls {
            let l = from_std("server.tls.listen", tls_addr.unwrap_or(addr), l)?;
            accepts.push(handle.spawn(accept(l, true)));
        }
    }

    let done = tokio::spawn({
        let state = state.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            let server = state.load().config.server.clone();
            ready.store(false, Ordering::SeqCst);
            // Async routes answer 503 from now on; attempts running go on.
            jobs.drain();
            tracing::info!(drain_delay = ?server.drain_delay, "shutting down: /readyz now fails");
            tokio::time::sleep(server.drain_delay).await;
            stop_accepting.cancel();
            for a in accepts {
                let _ = a.await;
            }
            draining_flag.store(true, Ordering::SeqCst);
            draining.cancel();
            tracker.close();
            let mut deliverer = deliverer;
            let grace = tokio::time::timeout(server.shutdown_grace, async {
                tracker.wait().await;
                let _ = (&mut deliverer).await;
            });
            if grace.await.is_err() {
                tracing::warn!(grace = ?server.shutdown_grace, "requests or job attempts still in flight after shutdown_grace; closing");
                // Attempts still running give their jobs back, queued for the next start.
                jobs.stop();
                let _ = tokio::time::timeout(Duration::from_secs(5), deliverer).await;
            }
            stop_admin.cancel();
            let _ = admin.await;
            workers.stop().await;
            // Spans of the last requests go out before the process ends; a
            // collector that does not answer holds the exit for 2 s at most.
            if let Some(t) = state.load().telemetry.clone() {
                let flush = tokio::task::spawn_blocking(move || t.flush());
                let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
            }
            tracing::info!("stopped");
        }
    });

    match tls_addr {
        Some(tls_addr) => tracing::info!(%addr, %admin_addr, %tls_addr, "fngate listening"),
        None => tracing::info!(%addr, %admin_addr, "fngate listening"),
    }
    Ok(Gateway {
        addr,
        admin_addr,
        tls_addr,
        state,
        shutdown,
        done,
    })
}

/// A listening socket at `addr`, shared with other workers' when `reuse_port`.
fn bind(
    key: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Socket, Type};
    let listen = || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // As tokio's bind: a restart need not wait out TIME_WAIT.
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    listen().map_err(|source| StartError::Bind { key, addr, source })
}

/// `listener` registered with the current runtime.
fn from_std(
    key: &'static str,
    addr: SocketAddr,
    listener: std::net::TcpListener,
) -> Result<TcpListener, StartError> {
    TcpListener::from_std(listener).map_err(|source| StartError::Bind { key, addr, source })
}

/// Runs until SIGTERM or SIGINT, reloading on SIGHUP.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), StartError> {
    let gateway = start(config, opts).await?;
    run_until_signalled(gateway).await;
    Ok(())
}

/// Reloads on SIGHUP; drains and returns on SIGTERM or SIGINT.
pub(crate) async fn run_until_signalled(gateway: Gateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    if let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = gateway.state.reload(crate::state::Source::Signal).await;
                }
            }
        }
    } else {
        tracing::error!("cannot install signal handlers; stopping");
    }
    gateway.shutdown();
    gateway.wait().await;
}

/// The data-path stack (`middleware::stack`), as every connection serves it.
trait Stack:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> Stack for S where
    S: Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The drain signal, as a token to wait on and a flag to read per answer.
#[derive(Clone)]
struct Drain {
    token: CancellationToken,
    flag: Arc<AtomicBool>,
}

async fn accept_loop<S>(
    listener: TcpListener,
    tls: bool,
    service: S,
    state: Arc<State>,
    stop: CancellationToken,
    draining: Drain,
    tracker: TaskTracker,
) where
    S: Stack,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(connection(
                    stream,
                    peer,
                    tls,
                    service.clone(),
                    state.clone(),
                    draining.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    service: S,
    state: Arc<State>,
    draining: Drain,
) where
    S: Stack,
{
    let metrics = state.metrics.clone();
    metrics.open_connections.inc();
    let _open = scopeguard(move || {
        metrics.open_connections.dec();
    });
    let _ = stream.set_nodelay(true);
    // Connection-level settings come from the config current at accept time.
    let limits = Limits::new(&state.load().config.server);
    let activity = Arc::new(Activity::new());
    let mut io = ConnIo::new(stream, activity.clone());
    let svc = HyperService {
        inner: service,
        conn: ConnInfo::new(peer, tls),
        activity: activity.clone(),
        draining: draining.flag.clone(),
    };
    if !tls {
        let protocol = match tokio::time::timeout(limits.header_read, io.sniff()).await {
            Ok(Ok(p)) => p,
            _ => return,
        };
        serve_io(
            TokioIo::new(io),
            protocol,
            svc,
            limits,
            &draining,
            &activity,
        )
        .await;
        return;
    }
    // The certificates of the snapshot current at accept time: a rotation
    // serves new connections and leaves open ones alone.
    let Some(config) = state.load().tls.clone() else {
        return;
    };
    // Boxed: the handshake and the TLS stream are three times a plain
    // connection's state, and every connection's task is as large as its
    // largest path (10 KiB per idle connection, not 3).
    Box::pin(serve_tls(
        io, config, peer, svc, limits, &draining, &activity,
    ))
    .await;
}

async fn serve_tls<S>(
    io: ConnIo,
    config: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
    svc: HyperService<S>,
    limits: Limits,
    draining: &Drain,
    activity: &Arc<Activity>,
) where
    S: Stack,
{
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let stream = match tokio::time::timeout(limits.header_read, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    serve_io(
        TokioIo::new(stream),
        protocol,
        svc,
        limits,
        draining,
        activity,
    )
    .await;
}

/// The settings a connection keeps from the config current at its accept:
/// copied, so an idle connection holds no clone of `[server]`'s strings and lists.
#[derive(Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
    max_header_size: usize,
}

impl Limits {
    fn new(server: &crate::config::Server) -> Self {
        Self {
            header_read: server.header_read_timeout,
            idle: server.idle_timeout,
            max_header_size: server.max_header_size,
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on a connection, plain or TLS.
///
/// Not an `async fn`: its arguments would stay in the task's state next to
/// the hyper connection that took them (about 300 bytes an idle connection
/// holds twice). The connection is built here and the future holds only it,
/// driven in place.
fn serve_io<'a, I, S>(
    io: TokioIo<I>,
    protocol: Protocol,
    svc: HyperService<S>,
    limits: Limits,
    draining: &'a Drain,
    activity: &'a Activity,
) -> impl Future<Output = ()> + Send + 'a
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Stack,
{
    let mut conn = match protocol {
        Protocol::Http1 => either::Either::Left(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_header_size(limits.max_header_size)
                .max_buf_size((limits.max_header_size + 8192).max(400 << 10))
                .keep_alive(true)
                .serve_connection(io, svc)
                // WebSocket: after a 101 the socket goes to the proxy's tunnel.
                .with_upgrades(),
        ),
        // Boxed for the same reason as TLS: HTTP/2's state would size every HTTP/1 task.
        Protocol::Http2 => either::Either::Right(Box::pin(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_size.min(u32::MAX as usize) as u32)
                // RFC 8441: WebSockets over HTTP/2.
                .enable_connect_protocol()
                .serve_connection(io, svc),
        )),
    };
    async move {
        let token = &draining.token;
        match &mut conn {
            either::Either::Left(h1) => {
                let head = Some(limits.header_read);
                drive(Pin::new(h1), token, activity, limits.idle, head).await;
            }
            either::Either::Right(h2) => {
                drive(h2.as_mut(), token, activity, limits.idle, None).await;
            }
        }
    }
}

/// The two hyper connection types, for one drive loop.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn drive<C: Graceful>(
    mut conn: Pin<&mut C>,
    draining: &CancellationToken,
    activity: &Activity,
    idle: Duration,
    head: Option<Duration>,
) {
    // The rare branches are gated: polled only when their own waker fired,
    // not on each of the connection's reads and answers.
    let cancelled = Gated::new(draining.cancelled());
    let expired = Gated::new(activity.expired(idle, head));
    tokio::pin!(cancelled, expired);
    let mut graceful = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            // HTTP/2 gets GOAWAY; HTTP/1 closes after the answer in flight.
            _ = cancelled.as_mut(), if !graceful => {
                conn.as_mut().graceful();
                graceful = true;
            }
            why = expired.as_mut() => {
                tracing::debug!("closing connection: {why}");
                return;
            }
        }
    }
}

/// Adapts the tower stack to hyper: boxes the body, attaches the connection
/// facts, and asks HTTP/1 clients to close while draining.
#[derive(Clone)]
struct HyperService<S> {
    inner: S,
    conn: ConnInfo,
    activity: Arc<Activity>,
    draining: Arc<AtomicBool>,
}

impl<S> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: Stack,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ServeFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.request_started();
        let version = req.version();
        let mut req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
        // Room for what the stack adds (request id, traceparent, forwarding
        // headers) in one allocation instead of repeated growth.
        req.headers_mut().reserve(8);
        // The one context every layer shares (context.rs).
        req.extensions_mut()
            .insert(Arc::new(Exchange::new(self.conn.clone())));
        // Called here, not on the first poll (`oneshot`): hyper may drop this
        // future unpolled when the client hangs up right after its request,
        // and the route layer must have seen a stored request by then (it
        // runs it on a task of its own). Every layer is always ready.
        ServeFuture {
            inner: self.inner.clone().call(req),
            in_flight: Some(in_flight),
            draining: self.draining.clone(),
            version,
        }
    }
}

pin_project_lite::pin_project! {
    struct ServeFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<idle::InFlight>,
        draining: Arc<AtomicBool>,
        version: Version,
    }
}

impl<F> Future for ServeFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        this.in_flight.take();
        if this.draining.load(Ordering::Relaxed) && *this.version <= Version::HTTP_11 {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        std::task::Poll::Ready(Ok(res))
    }
}

struct ScopeGuard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(Some(f))
}
