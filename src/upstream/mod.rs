//! The client side of the proxy: one backend's endpoints, their connections,
//! balancing, ejection and health, and the attempt loop that sends one
//! request with retries within a budget and a deadline. Proxied requests,
//! aggregate calls and job deliveries all send through here.

mod body;
mod budget;
mod conn;
pub(crate) mod headers;
mod health;
mod pool;
mod retry;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::body::{chain, Body, BoxError};
use crate::clock::Clock;
use crate::config::{Backend, Endpoint, Protocol};
use crate::context::Exchange;
use crate::metrics::{AttemptOutcome, Metrics, UpstreamSeries};
use crate::telemetry::{KeyValue, Kind, Span, Telemetry, TRACEPARENT};

pub(crate) use body::{prepare, BodyError, Prepared, ProxyBody};
use conn::{Checkin, Http1Pool, SendError};
pub(crate) use pool::EndpointStatus;
use pool::{InFlight, Outcome, Pool};
use retry::{Attempt, Decision};

/// Why a request could not be sent, or got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("request body over the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("reading the request body failed: {}", chain(&**.0))]
    ClientBody(BoxError),
    #[error(
        "connecting to backend `{backend}` at {endpoint} failed: {}",
        chain(source)
    )]
    Connect {
        backend: Arc<str>,
        endpoint: Arc<str>,
        source: SendError,
    },
    #[error("backend `{backend}` at {endpoint} failed: {}", chain(source))]
    Failed {
        backend: Arc<str>,
        endpoint: Arc<str>,
        source: SendError,
    },
    #[error(
        "backend `{backend}` at {endpoint} answered 101 to a request that was no WebSocket upgrade"
    )]
    UnexpectedSwitch {
        backend: Arc<str>,
        endpoint: Arc<str>,
    },
    #[error("reading the answer of backend `{backend}` failed: {}", chain(&**source))]
    AnswerBody { backend: Arc<str>, source: BoxError },
    #[error("cannot build the upstream URI for backend `{backend}`: {source}")]
    BadTarget {
        backend: Arc<str>,
        source: http::Error,
    },
    #[error("backend `{backend}` did not answer in time")]
    Timeout { backend: Arc<str> },
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        backend: Arc<str>,
        reason: Unavailable,
    },
}

/// Why a backend took no request at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unavailable {
    #[error("max_in_flight reached")]
    MaxInFlight,
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
}

/// A backend's runtime half: its connection pool, endpoint health and
/// balancing state. Kept across reloads while the backend's settings do not
/// change; its health-check tasks stop when it is dropped.
pub struct Upstream {
    pub backend: Arc<Backend>,
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// Plain HTTP/1.1 endpoints' connections (TLS and h2 go through `client`).
    http1: Option<Arc<Http1Pool>>,
    pool: Pool,
    series: UpstreamSeries,
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
    pub fn new(backend: Arc<Backend>, metrics: Arc<Metrics>, clock: Clock) -> Arc<Self> {
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
            series: metrics.upstream_series(&backend.name),
            pool: Pool::new(backend.clone(), metrics, clock),
            http1: (backend.protocol == Protocol::Http1)
                .then(|| Http1Pool::new(backend.endpoints.len(), backend.connect_timeout)),
            backend,
            client,
            _checks: stop.clone().drop_guard(),
        });
        upstream.spawn_checks(stop);
        upstream
    }

    /// Whether a request would be admitted now (`max_in_flight`); a job waits for a slot.
    pub(crate) fn free_slots(&self) -> usize {
        self.pool.free_slots()
    }

    /// Each endpoint's state, for the admin API.
    pub fn status(&self) -> Vec<EndpointStatus> {
        self.pool.status()
    }
}

/// One request for an upstream, ready to send (a proxied request or one call of an aggregate).
pub(crate) struct Outgoing<'a> {
    pub(crate) method: Method,
    /// The path before the endpoint's base path.
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    /// The client's path and query as received: sent as they are (no copy, no
    /// second check) when `path` and `query` are them and the endpoint has no base path.
    pub(crate) client_target: Option<&'a PathAndQuery>,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Prepared,
    /// The client's Host (`preserve_host`); else each endpoint's own.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    pub(crate) max_body: u64,
    pub(crate) log: Option<Arc<Exchange>>,
    pub(crate) response_edits: &'a crate::config::HeaderEdits,
    /// A 101 answer keeps its `Connection` and `Upgrade`.
    pub(crate) upgrade: bool,
    /// Replaces the backend's `timeout` (a job's `delivery.timeout`).
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) trace: Option<Traced<'a>>,
}

/// A traced request: each attempt is a CLIENT span below the span its
/// `traceparent` names, with these attributes besides the attempt's own.
#[derive(Clone, Copy)]
pub(crate) struct Traced<'a> {
    pub(crate) telemetry: &'a Telemetry,
    pub(crate) attributes: &'a [KeyValue],
}

impl Upstream {
    /// Sends through the pool: admission, endpoint choice, retries within the
    /// budget and the deadline.
    ///
    /// Not an `async fn`: one would keep the whole `Outgoing` beside the
    /// fields taken out of it for as long as it runs (344 bytes more to move).
    pub(crate) fn send<'a>(
        &'a self,
        out: Outgoing<'a>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a {
        let Outgoing {
            method,
            path,
            query,
            client_target,
            mut headers,
            body: mut prepared,
            host: client_host,
            started,
            deadline,
            max_body,
            log,
            response_edits,
            upgrade,
            attempt_timeout,
            trace,
        } = out;
        async move {
            let backend = &self.backend;
            let name = || backend.name.clone();
            let pool = &self.pool;
            let mut admitted = pool.admit().ok_or(UpstreamError::Unavailable {
                backend: name(),
                reason: Unavailable::MaxInFlight,
            })?;
            // The request's arrival is the deposit's and the first endpoint choice's time.
            let now = pool.ms_at(started.into_std());
            pool.deposit(now);
            let idempotent = is_idempotent(&method);
            // Endpoints already tried, on the stack (retries are at most 10).
            let mut tried = [0usize; 11];
            let mut last = UpstreamError::Timeout { backend: name() };
            for attempt in 0..=backend.retries as usize {
                // The first attempt starts now; later ones read the clock again.
                let sent = if attempt == 0 {
                    started
                } else {
                    Instant::now()
                };
                if sent >= deadline {
                    last = UpstreamError::Timeout { backend: name() };
                    break;
                }
                let now = if attempt == 0 {
                    now
                } else {
                    pool.ms_at(sent.into_std())
                };
                let Some(i) = pool.pick(&tried[..attempt], now) else {
                    if attempt == 0 {
                        return Err(UpstreamError::Unavailable {
                            backend: name(),
                            reason: Unavailable::NoHealthyEndpoint,
                        });
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
                let retries_left = attempt < backend.retries as usize;
                let mut span =
                    trace.map(|t| attempt_span(t, &method, endpoint, backend, attempt, &headers));
                // Built in a block that ends before the await, so the future
                // does not keep a moved-from copy of the request.
                let send = {
                    let mut up = Request::new(body);
                    *up.method_mut() = method.clone();
                    let own = self
                        .http1
                        .as_ref()
                        .filter(|_| endpoint.scheme == http::uri::Scheme::HTTP);
                    // Our own connections take the origin form; hyper-util's client the absolute one.
                    let uri = match own {
                        Some(_) => origin_form(endpoint, path, query, client_target).map(Uri::from),
                        None => upstream_uri(endpoint, path, query, client_target),
                    };
                    *up.uri_mut() = uri.map_err(|source| UpstreamError::BadTarget {
                        backend: name(),
                        source,
                    })?;
                    *up.version_mut() = Version::HTTP_11;
                    // Each attempt's Host is set on the request's own map, which has
                    // room for it, so a copy is made at its final size (set on the
                    // copy, it grew the copy: 300 instructions).
                    let host = client_host.clone().unwrap_or_else(|| endpoint.host.clone());
                    headers.insert(http::header::HOST, host);
                    // The last attempt takes the headers; earlier ones send a copy.
                    *up.headers_mut() = if retries_left {
                        headers.clone()
                    } else {
                        std::mem::take(&mut headers)
                    };
                    if let Some(tp) = span.as_ref().and_then(Span::outgoing) {
                        // The backend's parent is this attempt.
                        up.headers_mut().insert(TRACEPARENT.clone(), tp);
                    }
                    if let Some(log) = &log {
                        let url = endpoint.url.clone();
                        log.update(|f| f.upstream = Some(url));
                    }

                    // A deadline, not a duration: no clock reading to start the timer.
                    let until = sent
                        .checked_add(attempt_timeout.unwrap_or(backend.timeout))
                        .map_or(deadline, |t| t.min(deadline));
                    tokio::time::timeout_at(until, async move {
                        match own {
                            Some(http1) => http1
                                .send(i, endpoint, up, sent)
                                .await
                                .map(|(res, checkin)| (res, Some(checkin))),
                            None => self
                                .client
                                .request(up)
                                .await
                                .map(|res| (res, None))
                                .map_err(|e| SendError {
                                    connect: e.is_connect(),
                                    source: Box::new(e),
                                }),
                        }
                    })
                };
                let result = send.await;
                let done = Instant::now();
                let elapsed = done.saturating_duration_since(sent);
                let mut replayable = slot.is_none();
                let (outcome, answer) = match result {
                    Ok(Ok((res, checkin))) => {
                        // A switch of protocols we did not forward would be a tunnel
                        // nobody routed or authenticated.
                        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS
                            && !(upgrade && headers::offers_websocket(res.headers()))
                        {
                            pool.report(i, Outcome::Failure);
                            self.series.record(AttemptOutcome::Error, elapsed);
                            if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                                span.fail(
                                    "unexpected_switch",
                                    "101 to a request that was no upgrade",
                                );
                            }
                            return Err(UpstreamError::UnexpectedSwitch {
                                backend: name(),
                                endpoint: endpoint.url.clone(),
                            });
                        }
                        let status = res.status().as_u16();
                        // Only an overloaded answer's Retry-After counts (a lookup saved on the rest).
                        let retry_after = matches!(status, 429 | 503)
                            .then(|| res.headers().get(http::header::RETRY_AFTER))
                            .flatten()
                            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
                        let outcome = Attempt::Answered {
                            status,
                            // A Retry-After that is a date still means "overloaded".
                            retry_after: retry_after.map(|s| s.unwrap_or(u64::MAX)),
                        };
                        let label = if res.status().is_server_error() {
                            AttemptOutcome::Http5xx
                        } else {
                            AttemptOutcome::Ok
                        };
                        self.series.record(label, elapsed);
                        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                            span.set(KeyValue::new("fngate.outcome", label.as_str()));
                            let status = res.status();
                            span.set(KeyValue::new(
                                "http.response.status_code",
                                i64::from(status.as_u16()),
                            ));
                            // OpenTelemetry's HTTP conventions: a client span fails on 4xx and 5xx.
                            if status.as_u16() >= 400 {
                                span.fail("http_status", status.as_str().to_owned());
                            }
                        }
                        (outcome, Some((res, checkin)))
                    }
                    Ok(Err(e)) => {
                        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                            let kind = if e.connect { "connect_error" } else { "error" };
                            span.set(KeyValue::new("fngate.outcome", kind));
                            span.fail(kind, chain(&e));
                        }
                        if let Some(b) = body::body_error(&e) {
                            return Err(match b {
                                BodyError::TooLarge(limit) => {
                                    UpstreamError::BodyTooLarge { limit: *limit }
                                }
                                BodyError::Client(inner) => {
                                    UpstreamError::ClientBody(inner.to_string().into())
                                }
                            });
                        }
                        let connect = e.connect;
                        let label = if connect {
                            AttemptOutcome::ConnectError
                        } else {
                            AttemptOutcome::Error
                        };
                        self.series.record(label, elapsed);
                        tracing::debug!(backend = %backend.name, attempt, "upstream attempt failed: {}", chain(&e));
                        // A streamed body that was never polled can go to the next endpoint.
                        if let Some(b) = slot.and_then(|s| s.lock().ok().and_then(|mut s| s.take()))
                        {
                            prepared = Prepared::Stream(b);
                            replayable = connect;
                        }
                        let (endpoint, backend) = (endpoint.url.clone(), name());
                        last = if connect {
                            UpstreamError::Connect {
                                backend,
                                endpoint,
                                source: e,
                            }
                        } else {
                            UpstreamError::Failed {
                                backend,
                                endpoint,
                                source: e,
                            }
                        };
                        let outcome = if connect {
                            Attempt::ConnectFailed
                        } else {
                            Attempt::Failed
                        };
                        (outcome, None)
                    }
                    Err(_) => {
                        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
                            span.set(KeyValue::new("fngate.outcome", "timeout"));
                            span.fail("timeout", "the attempt timed out");
                        }
                        self.series.record(AttemptOutcome::Timeout, elapsed);
                        last = UpstreamError::Timeout { backend: name() };
                        (Attempt::TimedOut, None)
                    }
                };
                pool.report(
                    i,
                    if outcome.failed() {
                        Outcome::Failure
                    } else if outcome.overloaded() {
                        Outcome::Overload
                    } else {
                        Outcome::Ok
                    },
                );
                // The attempt's span ends with its answer's head (or its failure).
                drop(span);
                let circumstances = retry::Request {
                    idempotent,
                    replayable,
                    retries_left,
                    remaining: deadline.saturating_duration_since(done),
                };
                match retry::decide(outcome, circumstances, || pool.withdraw()) {
                    Decision::Retry { after } => {
                        if !after.is_zero() {
                            tokio::time::sleep(after).await;
                        }
                    }
                    Decision::Stop => match answer {
                        Some((res, checkin)) => {
                            return Ok(response(res, response_edits, admitted, upgrade, checkin))
                        }
                        None => break,
                    },
                }
            }
            Err(last)
        }
    }
}

/// The CLIENT span of one attempt, below the span `headers` names.
fn attempt_span(
    t: Traced<'_>,
    method: &Method,
    endpoint: &Endpoint,
    backend: &Backend,
    attempt: usize,
    headers: &http::HeaderMap,
) -> Span {
    t.telemetry
        .span(Kind::Client, headers.get(&TRACEPARENT), || {
            let port = endpoint.authority.port_u16().unwrap_or(
                if endpoint.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                },
            );
            let mut attributes = Vec::with_capacity(6 + t.attributes.len());
            attributes.extend([
                KeyValue::new("http.request.method", crate::telemetry::method(method)),
                KeyValue::new("server.address", endpoint.authority.host().to_owned()),
                KeyValue::new("server.port", i64::from(port)),
                KeyValue::new("fngate.backend", crate::telemetry::shared(&backend.name)),
                KeyValue::new("fngate.attempt", attempt as i64 + 1),
            ]);
            if attempt > 0 {
                attributes.push(KeyValue::new("http.request.resend_count", attempt as i64));
            }
            attributes.extend_from_slice(t.attributes);
            (crate::telemetry::method(method), attributes)
        })
}

/// The absolute URI of `path` and `query` at `endpoint` (see [`origin_form`]).
pub(crate) fn upstream_uri(
    endpoint: &Endpoint,
    path: &str,
    query: Option<&str>,
    client: Option<&PathAndQuery>,
) -> Result<Uri, http::Error> {
    Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(origin_form(endpoint, path, query, client)?)
        .build()
}

/// The endpoint's base path, the path and the query. When that is exactly
/// what the client sent (`client`), its own value is reused: no copy, no
/// second validation.
fn origin_form(
    endpoint: &Endpoint,
    path: &str,
    query: Option<&str>,
    client: Option<&PathAndQuery>,
) -> Result<PathAndQuery, http::Error> {
    if let Some(pq) = client
        .filter(|pq| endpoint.base_path.is_empty() && pq.path() == path && pq.query() == query)
    {
        return Ok(pq.clone());
    }
    let mut pq = String::with_capacity(
        endpoint.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&endpoint.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Ok(PathAndQuery::try_from(pq)?)
}

fn response(
    res: Response<hyper::body::Incoming>,
    edits: &crate::config::HeaderEdits,
    in_flight: InFlight,
    upgrade: bool,
    checkin: Option<Checkin>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    let switching = upgrade && parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let protocol = switching
        .then(|| parts.headers.get(http::header::UPGRADE).cloned())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        parts.headers.insert(http::header::UPGRADE, p);
    }
    headers::apply(&mut parts.headers, edits);
    // The request counts as in flight until its answer's body is done; then
    // its connection is free for the next (an upgraded one never is).
    let mut checkin = checkin.filter(|_| parts.status != http::StatusCode::SWITCHING_PROTOCOLS);
    if http_body::Body::is_end_stream(&body) {
        if let Some(c) = checkin.take() {
            c.done();
        }
    }
    let body = Counted {
        inner: body,
        _in_flight: in_flight,
        checkin,
    };
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

pin_project_lite::pin_project! {
    struct Counted {
        #[pin]
        inner: hyper::body::Incoming,
        _in_flight: InFlight,
        checkin: Option<Checkin>,
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // Read to its end: the connection goes back (the server may stop
        // polling once the body says it is done, so that counts too).
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => {
                this.checkin.take();
                false
            }
        };
        if ended {
            if let Some(c) = this.checkin.take() {
                c.done();
            }
        }
        Poll::Ready(frame)
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
