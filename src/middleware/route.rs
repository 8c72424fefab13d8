//! Route match: the snapshot is loaded once here, the host checked, the path
//! normalised and matched. Unroutable requests are answered here and never
//! reach a backend.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use either::Either;
use http::header::{ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::body::Body;
use crate::context::{ConnInfo, RequestId, RequestLog};
use crate::error;
use crate::normalize::normalize_path;
use crate::router::{host_only, Lookup, RouteError};
use crate::state::RouteContext;
use crate::state::State;

#[derive(Debug, Clone)]
pub(crate) struct RouteLayer {
    state: Arc<State>,
}

impl RouteLayer {
    pub(crate) fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RouteService<S> {
    inner: S,
    state: Arc<State>,
}

type Ready = std::future::Ready<Result<Response<Body>, Infallible>>;

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.route(&req) {
            Ok(ctx) => {
                if let Some(log) = req.extensions().get::<Arc<RequestLog>>() {
                    let active = ctx.active();
                    let (name, duration) = (active.config.name.clone(), active.duration.clone());
                    let ip = ctx.client_ip;
                    log.update(|f| {
                        f.route = Some(name);
                        f.client_ip = Some(ip);
                        f.duration = Some(duration);
                    });
                }
                req.extensions_mut().insert(ctx);
                Either::Left(self.inner.call(req))
            }
            Err(e) => {
                let id = req.extensions().get::<RequestId>().map(|r| &r.0);
                Either::Right(std::future::ready(Ok(error::respond(e, id))))
            }
        }
    }
}

impl<S> RouteService<S> {
    fn route(&self, req: &Request<Body>) -> Result<RouteContext, RouteError> {
        let snapshot = self.state.load();
        let host = request_host(req)?;
        let path = normalize_path(req.uri().path())?.into_owned();
        let lookup = Lookup {
            host: host.as_ref().map(|h| h.1.as_str()),
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
        let peer = req
            .extensions()
            .get::<ConnInfo>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.peer.ip());
        let client_ip = client_ip(peer, req.headers(), &snapshot.config.server.trusted_proxies);
        Ok(RouteContext {
            route: found.route,
            params: found.params,
            path,
            host: host.map(|h| h.0),
            client_ip,
            snapshot,
        })
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

/// The host the request addresses: the URI authority (HTTP/2 `:authority`,
/// absolute-form) or else `Host`. A `Host` that differs from the authority is
/// refused, so routing and the backend cannot disagree about the target.
fn request_host(req: &Request<Body>) -> Result<Option<(HeaderValue, String)>, RouteError> {
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
    let host = host_only(raw).into_owned();
    Ok(Some((value, host)))
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
