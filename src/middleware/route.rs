//! Route match: the snapshot is loaded once here, the host checked, the path
//! normalised and matched. Unroutable requests are answered here and never
//! reach a backend.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use either::Either;
use http::header::{ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::Action;
use crate::context;
use crate::error;
use crate::jobs::{JobError, JobRequest, Jobs};
use crate::normalize::normalize_path;
use crate::router::{host_only, Lookup, RouteError};
use crate::state::{ActiveAction, RouteContext, Snapshot, State};
use crate::telemetry::{KeyValue, Kind, Telemetry, TRACEPARENT};

#[derive(Debug, Clone)]
pub(crate) struct RouteLayer {
    state: Arc<State>,
    jobs: Arc<Jobs>,
}

impl RouteLayer {
    pub(crate) fn new(state: Arc<State>, jobs: Arc<Jobs>) -> Self {
        Self { state, jobs }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            state: self.state.clone(),
            jobs: self.jobs.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RouteService<S> {
    inner: S,
    state: Arc<State>,
    jobs: Arc<Jobs>,
}

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;
type Boxed = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Either<Ready, Boxed>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let snapshot = self.state.load();
        if let Some(id) = job_id(&snapshot.config.server.jobs_path, &req) {
            let inner = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, inner);
            let jobs = self.jobs.clone();
            return Either::Right(Either::Right(Box::pin(job_request(
                inner, jobs, snapshot, id, req,
            ))));
        }
        if snapshot.config.serves_files
            && under(&snapshot.config.server.files_path, req.uri().path())
        {
            if let Some(t) = &snapshot.telemetry {
                server_span(t, &mut req, None, None);
            }
            // A signed URL is its own authority: no route's policies apply.
            let jobs = self.jobs.clone();
            let (parts, _) = req.into_parts();
            return Either::Right(Either::Right(Box::pin(async move {
                let id = context::request_id(&parts.extensions).map(|r| r.0.clone());
                Ok(crate::uploads::serve(&jobs, &snapshot, &parts)
                    .await
                    .unwrap_or_else(|e| error::respond(e, id.as_ref())))
            })));
        }
        let traced = snapshot.telemetry.is_some();
        match route(snapshot, &req) {
            Ok(ctx) => {
                if let Some(t) = &ctx.snapshot.telemetry {
                    server_span(
                        t,
                        &mut req,
                        Some(&ctx.active().config.name),
                        Some(ctx.client_ip),
                    );
                }
                if let Some(log) = context::exchange(req.extensions()) {
                    let active = ctx.active();
                    let name = active.config.name.clone();
                    let series = (active.requests.clone(), active.duration.clone());
                    let ip = ctx.client_ip;
                    log.update(|f| {
                        f.route = Some(name);
                        f.client_ip = Some(ip);
                        f.series = Some(series);
                    });
                }
                let durable = durable(&ctx, req.headers());
                req.extensions_mut().insert(ctx);
                if durable {
                    // Received whole, a job, an event or an upload is taken even if
                    // its client hangs up at once: hyper then drops this future
                    // (often before its first poll), not the task. A body cut
                    // short still fails there, and nothing is stored.
                    let id = context::request_id(req.extensions()).map(|r| r.0.clone());
                    let call = tokio::spawn(self.inner.call(req));
                    return Either::Right(Either::Right(Box::pin(async move {
                        call.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "a stored request's task failed");
                            Ok(error::respond(error::Error::TaskFailed, id.as_ref()))
                        })
                    })));
                }
                Either::Left(self.inner.call(req))
            }
            Err(e) => {
                // The snapshot went into the failed match; traced, it is loaded again.
                if traced {
                    if let Some(t) = &self.state.load().telemetry {
                        server_span(t, &mut req, None, None);
                    }
                }
                let id = context::request_id(req.extensions()).map(|r| &r.0);
                Either::Right(Either::Left(std::future::ready(Ok(error::respond(e, id)))))
            }
        }
    }
}

/// Whether the request, once routed, is stored rather than forwarded: a job
/// (SPEC §7), an event (§8) or an upload.
fn durable(ctx: &RouteContext, headers: &HeaderMap) -> bool {
    let active = ctx.active();
    match &active.action {
        ActiveAction::Forward { .. } => crate::jobs::wants_async(active.config.invoke, headers),
        ActiveAction::Publish(_) | ActiveAction::Upload(_) => true,
        ActiveAction::Aggregate(_) => false,
    }
}

/// Routes `{jobs_path}/{id}` as the job's route, so its CORS and authentication
/// apply; the dispatcher answers from the store. An unknown job is 404 here.
async fn job_request<S>(
    mut inner: S,
    jobs: Arc<Jobs>,
    snapshot: Arc<Snapshot>,
    id: String,
    mut req: Request<Body>,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    let rid = context::request_id(req.extensions()).map(|r| r.0.clone());
    let host = match request_host(&req) {
        Ok(h) => h.map(|h| h.0),
        Err(e) => return Ok(error::respond(e, rid.as_ref())),
    };
    let job = match jobs.get(&id, false).await {
        // An event's delivery or a schedule's run (whose id is its tick, so
        // guessable) is not a client's: the admin API shows those.
        Ok(Some(job)) if job.kind == crate::jobs::Kind::Route => job,
        Ok(Some(_)) => return Ok(error::respond(JobError::NotFound, rid.as_ref())),
        Ok(None) => return Ok(error::respond(JobError::NotFound, rid.as_ref())),
        Err(e) => return Ok(error::respond(JobError::Store(e), rid.as_ref())),
    };
    let route = snapshot
        .config
        .routes
        .iter()
        .position(|r| *r.name == job.route);
    let peer = context::conn(req.extensions()).map_or(IpAddr::from([0, 0, 0, 0]), |c| c.peer.ip());
    let client_ip = client_ip(peer, req.headers(), &snapshot.config.server.trusted_proxies);
    let name: Arc<str> = job.route.as_str().into();
    if let Some(t) = &snapshot.telemetry {
        server_span(t, &mut req, Some(&name), Some(client_ip));
    }
    if let Some(log) = context::exchange(req.extensions()) {
        log.update(|f| {
            f.route = Some(name);
            f.client_ip = Some(client_ip);
        });
    }
    // A job whose route is gone keeps no policy to check: its consumer check alone decides.
    let job = JobRequest {
        job,
        snapshot: snapshot.clone(),
    };
    if let Some(route) = route {
        let path = req.uri().path().to_owned();
        req.extensions_mut().insert(RouteContext {
            route,
            params: Vec::new(),
            path,
            host,
            client_ip,
            snapshot,
        });
    }
    req.extensions_mut().insert(job);
    // Boxed so this future never holds `S::Future` (see middleware/auth.rs).
    let call: Boxed = Box::pin(inner.call(req));
    call.await
}

/// Traced, starts the request's SERVER span: below the client's span when it
/// sent a `traceparent`, else a new trace's root. The request's `traceparent`
/// then names it, so every child (an attempt, a job) hangs below it; the access
/// log ends it with the answer.
fn server_span(
    t: &Telemetry,
    req: &mut Request<Body>,
    route: Option<&Arc<str>>,
    client: Option<IpAddr>,
) {
    let parent = context::request_id(req.extensions())
        .filter(|id| id.1)
        .and_then(|_| req.headers().get(&TRACEPARENT));
    let span = t.span(Kind::Server, parent, || {
        let conn = context::conn(req.extensions());
        let tls = conn.is_some_and(|c| c.tls);
        let method = crate::telemetry::method(req.method());
        let mut attributes = Vec::with_capacity(7);
        attributes.extend([
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
            KeyValue::new(
                "network.protocol.version",
                match req.version() {
                    Version::HTTP_2 => "2",
                    Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
            ),
        ]);
        // The peer's address is formatted once per connection already.
        let address = match (client, conn) {
            (Some(ip), Some(c)) if ip != c.peer.ip() => Some(ip.to_string()),
            (Some(ip), None) => Some(ip.to_string()),
            (_, Some(c)) => c.peer_value.to_str().ok().map(str::to_owned),
            (None, None) => None,
        };
        if let Some(address) = address {
            attributes.push(KeyValue::new("client.address", address));
        }
        let name = match route {
            Some(r) => {
                attributes.push(KeyValue::new("http.route", crate::telemetry::shared(r)));
                format!("{method} {r}").into()
            }
            None => method,
        };
        (name, attributes)
    });
    if let Some(tp) = span.outgoing() {
        req.headers_mut().insert(TRACEPARENT.clone(), tp);
    }
    if let Some(log) = context::exchange(req.extensions()) {
        log.set_span(span);
    }
}

/// Whether `path` lies under the prefix `base` (`/files/...`).
fn under(base: &str, path: &str) -> bool {
    path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}

/// The id in `{jobs_path}/{id}`, when that is the path.
fn job_id(jobs_path: &str, req: &Request<Body>) -> Option<String> {
    let rest = req
        .uri()
        .path()
        .strip_prefix(jobs_path)?
        .strip_prefix('/')?;
    (!rest.is_empty()
        && rest.len() <= 128
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_@.".contains(&b)))
    .then(|| rest.to_owned())
}

/// Matches the request in `snapshot`: host, normalised path, method. A path
/// under `events_path` is a topic's, whatever the routes say.
fn route(snapshot: Arc<Snapshot>, req: &Request<Body>) -> Result<RouteContext, RouteError> {
    let host = request_host(req)?;
    let events = &snapshot.config.server.events_path;
    if let Some(topic) = req
        .uri()
        .path()
        .strip_prefix(events.as_str())
        .and_then(|p| p.strip_prefix('/'))
        .filter(|_| !snapshot.config.topics.is_empty())
    {
        let route = snapshot
            .config
            .routes
            .iter()
            .position(|r| matches!(&r.action, Action::Publish(t) if *t.name == *topic))
            .ok_or_else(|| RouteError::UnknownTopic(topic.to_owned()))?;
        if req.method() != Method::POST {
            return Err(RouteError::MethodNotAllowed {
                allow: HeaderValue::from_static("POST"),
            });
        }
        let path = req.uri().path().to_owned();
        return Ok(context(snapshot, req, route, Vec::new(), path, host));
    }
    let path = normalize_path(req.uri().path())?.into_owned();
    // Lower-cased and without its port only for a table that routes by host.
    let hostname = host
        .as_ref()
        .filter(|_| snapshot.table.by_host())
        .map(|h| host_only(h.1));
    let lookup = Lookup {
        host: hostname.as_deref(),
        // A WebSocket over HTTP/2 (extended CONNECT) goes where its HTTP/1.1 GET would.
        method: if crate::proxy::is_h2_websocket(req) {
            &Method::GET
        } else {
            req.method()
        },
        path: &path,
        preflight: preflight_method(req),
    };
    let found = snapshot.table.resolve(&lookup)?.found;
    Ok(context(
        snapshot,
        req,
        found.route,
        found.params,
        path,
        host,
    ))
}

fn context(
    snapshot: Arc<Snapshot>,
    req: &Request<Body>,
    route: usize,
    params: Vec<std::ops::Range<usize>>,
    path: String,
    host: Option<(HeaderValue, &str)>,
) -> RouteContext {
    let peer = context::conn(req.extensions()).map_or(IpAddr::from([0, 0, 0, 0]), |c| c.peer.ip());
    let client_ip = client_ip(peer, req.headers(), &snapshot.config.server.trusted_proxies);
    RouteContext {
        route,
        params,
        path,
        host: host.map(|h| h.0),
        client_ip,
        snapshot,
    }
}

/// The method a CORS preflight asks about, when this request is one.
fn preflight_method(req: &Request<Body>) -> Option<Method> {
    let h = req.headers();
    crate::router::preflight_method(
        req.method(),
        h.contains_key(ORIGIN),
        h.get(ACCESS_CONTROL_REQUEST_METHOD)
            .map(HeaderValue::as_bytes),
    )
}

/// The host the request addresses, as sent: the URI authority (HTTP/2
/// `:authority`, absolute-form) or else `Host`. A `Host` that differs from the authority is
/// refused, so routing and the backend cannot disagree about the target.
fn request_host(req: &Request<Body>) -> Result<Option<(HeaderValue, &str)>, RouteError> {
    let header = req.headers().get(HOST);
    let (value, raw) = match (req.uri().authority(), header) {
        (Some(auth), Some(h)) => {
            if !h.as_bytes().eq_ignore_ascii_case(auth.as_str().as_bytes()) {
                return Err(RouteError::HostMismatch {
                    host: h.clone(),
                    authority: auth.to_string(),
                });
            }
            (h.clone(), auth.as_str())
        }
        (Some(auth), None) => (
            HeaderValue::from_str(auth.as_str()).map_err(|_| RouteError::MissingHost)?,
            auth.as_str(),
        ),
        (None, Some(h)) => (h.clone(), h.to_str().map_err(|_| RouteError::MissingHost)?),
        (None, None) if req.version() == Version::HTTP_11 => return Err(RouteError::MissingHost),
        (None, None) => return Ok(None),
    };
    Ok(Some((value, raw)))
}

/// The peer, unless it is a trusted proxy: then the right-most address in
/// `x-forwarded-for` that is not itself a trusted proxy.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|n| n.contains(&ip)) => continue,
            Ok(ip) => return ip,
            Err(_) => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.0.0.7"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let stranger: IpAddr = "8.8.8.8".parse().expect("ip");
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
    }
}
