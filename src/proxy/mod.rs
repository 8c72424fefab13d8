//! Forwards one request to one backend pool: endpoint choice, retries,
//! deadlines, header rules and streaming in both directions.

mod body;
mod headers;
mod pool;
mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::config::{Backend, Endpoint, Protocol, Target};
use crate::context::{ConnInfo, RequestId, RequestLog};
use crate::error;
use crate::metrics::Metrics;
use crate::state::RouteContext;

pub use body::{BodyError, ProxyBody};
pub(crate) use headers::{apply as apply_edits, strip_hop_by_hop, upstream_request};
pub use pool::EndpointStatus;
use pool::{InFlight, Outcome, Pool};

/// Bodies up to this size with a known length are buffered, so a failed
/// attempt can be retried (SPEC §2 `retries`).
const REPLAY_LIMIT: u64 = 64 << 10;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body over the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    ClientBody(BoxError),
    #[error("connecting to backend `{backend}` failed: {detail}")]
    Connect { backend: Arc<str>, detail: String },
    #[error("backend `{backend}` failed: {detail}")]
    Upstream { backend: Arc<str>, detail: String },
    #[error("backend `{backend}` did not answer in time")]
    Timeout { backend: Arc<str> },
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        backend: Arc<str>,
        reason: &'static str,
    },
}

/// A backend's runtime half: its connection pool, endpoint health and
/// balancing state. Kept across reloads while the backend's settings do not
/// change; its health-check tasks stop when it is dropped.
pub struct Upstream {
    pub backend: Arc<Backend>,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    pool: Pool,
    _checks: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("backend", &self.backend.name)
            .finish()
    }
}

impl Upstream {
    pub fn new(backend: Arc<Backend>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(backend.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.enforce_http(false);
        // https:// endpoints verify against `ca` or the system roots; ALPN
        // offers only the protocol the backend is configured for.
        let tls = crate::tls::client_config(
            backend.ca.as_deref(),
            &format!("backends.{}.ca", backend.name),
        );
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match backend.protocol {
            Protocol::Http1 => https.enable_http1().wrap_connector(http),
            Protocol::H2 => https.enable_http2().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60));
        if backend.protocol == Protocol::H2 {
            // Prior knowledge over plain TCP (h2c); over TLS, ALPN agreed on h2.
            client.http2_only(true).timer(TokioTimer::new());
        }
        let client = client.build(https);
        let stop = tokio_util::sync::CancellationToken::new();
        let upstream = Arc::new(Self {
            pool: Pool::new(backend.clone(), metrics),
            backend,
            client,
            _checks: stop.clone().drop_guard(),
        });
        upstream.spawn_checks(stop);
        upstream
    }

    /// Each endpoint's state, for the admin API.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.pool.status()
    }

    /// One task per endpoint, off the request path; they hold the upstream
    /// weakly and stop when it is dropped (a reload that changed the backend).
    fn spawn_checks(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(check) = self.backend.health.clone() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        for i in 0..self.backend.endpoints.len() {
            let (weak, stop, check) = (Arc::downgrade(self), stop.clone(), check.clone());
            tokio::spawn(async move {
                let (mut passes, mut fails) = (0u32, 0u32);
                loop {
                    let Some(up) = weak.upgrade() else { return };
                    let ok = tokio::select! {
                        _ = stop.cancelled() => return,
                        ok = up.check(i, &check) => ok,
                    };
                    if ok {
                        (passes, fails) = (passes + 1, 0);
                        if passes >= check.healthy_threshold {
                            up.pool.set_checks_pass(i, true);
                        }
                    } else {
                        (passes, fails) = (0, fails + 1);
                        if fails >= check.unhealthy_threshold {
                            up.pool.set_checks_pass(i, false);
                        }
                    }
                    drop(up);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(check.interval) => {}
                    }
                }
            });
        }
    }

    async fn check(&self, i: usize, check: &crate::config::HealthCheck) -> bool {
        let ep = &self.backend.endpoints[i];
        let Ok(uri) = upstream_uri(ep, &check.path, None) else {
            return false;
        };
        let mut req = Request::new(ProxyBody::empty());
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(http::header::HOST, ep.host.clone());
        matches!(
            tokio::time::timeout(check.timeout, self.client.request(req)).await,
            Ok(Ok(res)) if res.status().is_success()
        )
    }
}

/// The innermost service: forwards a routed request.
#[derive(Debug, Clone)]
pub struct Proxy {
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let plan = req
                .extensions()
                .get::<RouteContext>()
                .and_then(|c| c.active().aggregate.clone());
            if let Some(plan) = plan {
                return Ok(crate::aggregate::run(req, &plan, &metrics).await);
            }
            let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
            Ok(match forward(req, &metrics).await {
                Ok(res) => res,
                Err(e) => error::respond(e, id.as_ref()),
            })
        })
    }
}

pub(crate) enum Prepared {
    Empty,
    Full(Bytes),
    Stream(Body),
}

async fn forward(mut req: Request<Body>, metrics: &Metrics) -> Result<Response<Body>, ProxyError> {
    let Some(ctx) = req.extensions_mut().remove::<RouteContext>() else {
        // The route layer always runs first; without it there is nothing to forward to.
        return Err(ProxyError::Upstream {
            backend: "-".into(),
            detail: "request reached the proxy unrouted".into(),
        });
    };
    let log = req.extensions().get::<Arc<RequestLog>>().cloned();
    // x-forwarded-for records the hop we saw, which is the client itself only
    // when no trusted proxy stands between.
    let (peer, tls) = match req.extensions().get::<ConnInfo>() {
        Some(c) => (c.peer_value.clone(), c.tls),
        None => (HeaderValue::from_static("unknown"), false),
    };
    let active = ctx.active();
    let route = &active.config;
    let Some(upstream) = &active.upstream else {
        return Err(ProxyError::Upstream {
            backend: "-".into(),
            detail: "the route has no backend".into(),
        });
    };
    let backend = &upstream.backend;
    let server = &ctx.snapshot.config.server;
    let started = Instant::now();
    let deadline = started + route.timeout.unwrap_or(server.request_timeout);

    // An HTTP/1.1 Upgrade (WebSocket): the client's side of the tunnel, for after the 101.
    let tunnel = tunnel_of(&req);
    let client_upgrade = tunnel.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let params: Vec<&str> = match route.target {
        Target::Rewrite(_) => ctx.params().collect(),
        _ => Vec::new(),
    };
    let suffix = route.target.render(&ctx.path, &params);
    let query = parts.uri.query();
    headers::upstream_request(
        &mut parts.headers,
        peer,
        tls,
        ctx.host.as_ref(),
        &route.request_headers,
        &backend.headers,
    );
    let upgrade = match &tunnel {
        Some(Tunnel::Upgrade) => Some(HeaderValue::from_static("websocket")),
        Some(Tunnel::H2WebSocket) => {
            // The backend gets the HTTP/1.1 handshake the client did not send.
            parts.method = Method::GET;
            let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            if let Ok(key) = HeaderValue::from_str(&key) {
                parts.headers.insert(http::header::SEC_WEBSOCKET_KEY, key);
            }
            parts
                .headers
                .entry(http::header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
            Some(HeaderValue::from_static("websocket"))
        }
        None => None,
    };
    if let Some(protocol) = &upgrade {
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        parts
            .headers
            .insert(http::header::UPGRADE, protocol.clone());
    }
    let client_host = if route.preserve_host {
        ctx.host.clone()
    } else {
        None
    };

    let prepared = prepare(body, route.max_body, log.as_ref()).await?;
    let mut res = upstream
        .send(
            Outgoing {
                method: parts.method,
                path: &suffix,
                query,
                headers: parts.headers,
                body: prepared,
                host: client_host,
                started,
                deadline,
                max_body: route.max_body,
                log,
                response_edits: &route.response_headers,
                upgrade: upgrade.is_some(),
            },
            metrics,
        )
        .await?;
    if let Some(client) = client_upgrade {
        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut res);
            if matches!(tunnel, Some(Tunnel::H2WebSocket)) {
                // RFC 8441: the HTTP/2 client gets a 200 and no handshake fields.
                *res.status_mut() = http::StatusCode::OK;
                let h = res.headers_mut();
                for name in [
                    http::header::CONNECTION,
                    http::header::UPGRADE,
                    http::header::SEC_WEBSOCKET_ACCEPT,
                ] {
                    h.remove(name);
                }
            }
            tokio::spawn(tunnel::run(
                client,
                upstream,
                server.websocket_idle_timeout,
                server.websocket_max_lifetime,
            ));
        }
    }
    Ok(res)
}

/// A request that asks for a tunnel.
enum Tunnel {
    /// HTTP/1.1 `Connection: upgrade` with `Upgrade: websocket`.
    Upgrade,
    /// An HTTP/2 extended CONNECT for `websocket` (RFC 8441), sent to the
    /// backend as an HTTP/1.1 WebSocket upgrade.
    H2WebSocket,
}

/// Only WebSocket upgrades are tunnelled. Any other token (`h2c` above all) is
/// dropped with the hop-by-hop headers: a backend that switched protocols for it
/// would open a raw tunnel past routing, authentication and rate limits.
fn tunnel_of(req: &Request<Body>) -> Option<Tunnel> {
    if is_h2_websocket(req) {
        return Some(Tunnel::H2WebSocket);
    }
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = headers::connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"));
    (asks && headers::offers_websocket(req.headers())).then_some(Tunnel::Upgrade)
}

/// RFC 8441: `CONNECT` with `:protocol = websocket`. Routed as the GET it stands for.
pub(crate) fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// One request for an upstream, ready to send (a proxied request or one call of an aggregate).
pub(crate) struct Outgoing<'a> {
    pub(crate) method: Method,
    /// The path before the endpoint's base path.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Prepared,
    /// The client's Host (`preserve_host`); else each endpoint's own.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) max_body: u64,
    pub(crate) log: Option<Arc<RequestLog>>,
    pub(crate) response_edits: &'a crate::config::HeaderEdits,
    /// A 101 answer keeps its `Connection` and `Upgrade`.
    pub(crate) upgrade: bool,
}

impl Upstream {
    /// Sends through the pool: admission, endpoint choice, retries within the
    /// budget and the deadline.
    pub(crate) async fn send(
        &self,
        out: Outgoing<'_>,
        metrics: &Metrics,
    ) -> Result<Response<Body>, ProxyError> {
        let Outgoing {
            method,
            path: suffix,
            query,
            headers,
            body: mut prepared,
            host: client_host,
            started,
            deadline,
            max_body,
            log,
            response_edits,
            upgrade,
        } = out;
        let mut parts_headers = headers;
        let backend = &self.backend;
        let idempotent = is_idempotent(&method);
        let pool = &self.pool;
        let unavailable = |reason| ProxyError::Unavailable {
            backend: backend.name.clone(),
            reason,
        };
        let mut admitted = pool
            .admit()
            .ok_or_else(|| unavailable("max_in_flight reached"))?;
        pool.deposit();
        // Endpoints already tried, on the stack (retries are at most 10).
        let mut tried = [0usize; 11];
        let mut last = ProxyError::Timeout {
            backend: backend.name.clone(),
        };
        for attempt in 0..=backend.retries as usize {
            // The first attempt starts now; later ones read the clock again.
            let sent = if attempt == 0 {
                started
            } else {
                Instant::now()
            };
            let remaining = deadline.saturating_duration_since(sent);
            if remaining.is_zero() {
                last = ProxyError::Timeout {
                    backend: backend.name.clone(),
                };
                break;
            }
            let Some(i) = pool.pick(&tried[..attempt]) else {
                if attempt == 0 {
                    return Err(unavailable("no healthy endpoint"));
                }
                break;
            };
            tried[attempt] = i;
            pool.attempt(&mut admitted, i);
            let endpoint = &backend.endpoints[i];
            // Buffered bodies are cloned for each attempt; a stream goes once
            // (it comes back only if a connect failure left it unread).
            let (body, slot) = match std::mem::replace(&mut prepared, Prepared::Empty) {
                Prepared::Empty => (ProxyBody::empty(), None),
                Prepared::Full(bytes) => {
                    prepared = Prepared::Full(bytes.clone());
                    (ProxyBody::full(bytes), None)
                }
                Prepared::Stream(b) => {
                    let (body, slot) = ProxyBody::stream(b, max_body, log.clone());
                    (body, Some(slot))
                }
            };
            let replayable = slot.is_none();
            let mut up = Request::new(body);
            *up.method_mut() = method.clone();
            *up.uri_mut() = upstream_uri(endpoint, suffix, query)?;
            *up.version_mut() = Version::HTTP_11;
            *up.headers_mut() = if attempt == backend.retries as usize {
                std::mem::take(&mut parts_headers)
            } else {
                parts_headers.clone()
            };
            let host = client_host.clone().unwrap_or_else(|| endpoint.host.clone());
            up.headers_mut().insert(http::header::HOST, host);
            if let Some(log) = &log {
                let url = endpoint.url.clone();
                log.update(|f| f.upstream = Some(url));
            }

            let result =
                tokio::time::timeout(backend.timeout.min(remaining), self.client.request(up)).await;
            let elapsed = sent.elapsed();
            let retries_left = attempt < backend.retries as usize;
            match result {
                Ok(Ok(res)) => {
                    // A switch of protocols we did not forward would be a tunnel
                    // nobody routed or authenticated.
                    if res.status() == http::StatusCode::SWITCHING_PROTOCOLS
                        && !(upgrade && headers::offers_websocket(res.headers()))
                    {
                        pool.report(i, Outcome::Failure);
                        metrics.upstream(&backend.name, "error", elapsed);
                        return Err(ProxyError::Upstream {
                            backend: backend.name.clone(),
                            detail: format!(
                                "{}: answered 101 to a request that was no WebSocket upgrade",
                                endpoint.url
                            ),
                        });
                    }
                    let status = res.status().as_u16();
                    let retry_after = res.headers().get(http::header::RETRY_AFTER);
                    let overload = status == 429 || (status == 503 && retry_after.is_some());
                    let failure = !overload && matches!(status, 502..=504);
                    pool.report(
                        i,
                        if failure {
                            Outcome::Failure
                        } else if overload {
                            Outcome::Overload
                        } else {
                            Outcome::Ok
                        },
                    );
                    metrics.upstream(
                        &backend.name,
                        if status >= 500 { "http_5xx" } else { "ok" },
                        elapsed,
                    );
                    // A busy function asked for a short pause: wait it out only
                    // within the deadline, and only when a retry is allowed anyway.
                    let pause = if overload {
                        retry_after
                            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                            .filter(|s| *s <= 1)
                            .map(Duration::from_secs)
                    } else {
                        None
                    };
                    let worth_retrying = failure
                        || pause.is_some_and(|p| {
                            p < deadline.saturating_duration_since(Instant::now())
                        });
                    if worth_retrying && idempotent && replayable && retries_left && pool.withdraw()
                    {
                        if let Some(p) = pause {
                            tokio::time::sleep(p).await;
                        }
                        continue;
                    }
                    return Ok(response(res, response_edits, admitted, upgrade));
                }
                Ok(Err(e)) => {
                    if let Some(b) = body::body_error(&e) {
                        return Err(match b {
                            BodyError::TooLarge(limit) => {
                                ProxyError::BodyTooLarge { limit: *limit }
                            }
                            BodyError::Client(inner) => {
                                ProxyError::ClientBody(inner.to_string().into())
                            }
                        });
                    }
                    let connect = e.is_connect();
                    pool.report(i, Outcome::Failure);
                    metrics.upstream(
                        &backend.name,
                        if connect { "connect_error" } else { "error" },
                        elapsed,
                    );
                    let detail = format!("{}: {}", endpoint.url, error_chain(&e));
                    tracing::debug!(backend = %backend.name, attempt, "upstream attempt failed: {detail}");
                    // A streamed body that was never polled can go to the next endpoint.
                    let reclaimed = slot.and_then(|s| s.lock().ok().and_then(|mut s| s.take()));
                    let can_retry = if connect {
                        replayable || reclaimed.is_some()
                    } else {
                        idempotent && replayable
                    };
                    if let Some(b) = reclaimed {
                        prepared = Prepared::Stream(b);
                    }
                    last = if connect {
                        ProxyError::Connect {
                            backend: backend.name.clone(),
                            detail,
                        }
                    } else {
                        ProxyError::Upstream {
                            backend: backend.name.clone(),
                            detail,
                        }
                    };
                    if !(can_retry && retries_left && pool.withdraw()) {
                        break;
                    }
                }
                Err(_) => {
                    pool.report(i, Outcome::Failure);
                    metrics.upstream(&backend.name, "timeout", elapsed);
                    last = ProxyError::Timeout {
                        backend: backend.name.clone(),
                    };
                    if !(idempotent && replayable && retries_left && pool.withdraw()) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

pub(crate) fn upstream_uri(
    endpoint: &Endpoint,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, ProxyError> {
    let mut pq = String::with_capacity(
        endpoint.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&endpoint.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|e| ProxyError::Upstream {
        backend: "-".into(),
        detail: format!("cannot build the upstream path: {e}"),
    })?;
    Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Upstream {
            backend: "-".into(),
            detail: format!("cannot build the upstream URI: {e}"),
        })
}

/// Decides how the body travels: small known-length bodies are buffered so
/// they can be replayed; the rest stream with the limit counted on the way.
async fn prepare(
    body: Body,
    limit: u64,
    log: Option<&Arc<RequestLog>>,
) -> Result<Prepared, ProxyError> {
    if body.is_end_stream() {
        return Ok(Prepared::Empty);
    }
    match body.size_hint().exact() {
        Some(n) if n > limit => Err(ProxyError::BodyTooLarge { limit }),
        Some(0) => Ok(Prepared::Empty),
        Some(n) if n <= REPLAY_LIMIT => {
            let bytes = body
                .collect()
                .await
                .map_err(ProxyError::ClientBody)?
                .to_bytes();
            if let Some(log) = log {
                log.add_bytes_in(bytes.len() as u64);
            }
            Ok(Prepared::Full(bytes))
        }
        _ => Ok(Prepared::Stream(body)),
    }
}

fn response(
    res: Response<hyper::body::Incoming>,
    edits: &crate::config::HeaderEdits,
    in_flight: InFlight,
    upgrade: bool,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    let switching = upgrade && parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let protocol = switching
        .then(|| parts.headers.get(http::header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        parts.headers.insert(http::header::UPGRADE, p);
    }
    headers::apply(&mut parts.headers, edits);
    // The request counts as in flight until its answer's body is done.
    let body = Counted {
        inner: body,
        _in_flight: in_flight,
    };
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

pin_project_lite::pin_project! {
    struct Counted {
        #[pin]
        inner: hyper::body::Incoming,
        _in_flight: InFlight,
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
