//! Forwards one request to its route's backend: the target path, the header
//! rules, and the tunnel after a WebSocket upgrade. The sending itself
//! (endpoints, retries, deadlines) is `upstream/`.

mod tunnel;

use http::{HeaderValue, Method, Request, Response, Version};
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{Forward, Target};
use crate::context;
use crate::state::RouteContext;
use crate::telemetry::{KeyValue, Kind, TRACEPARENT};
use crate::upstream::{self, prepare, Outgoing, Traced, Upstream, UpstreamError};

/// Forwards a routed request to the route's backend, tunnelling a WebSocket
/// upgrade once the backend switched protocols.
pub(crate) async fn forward(
    mut req: Request<Body>,
    ctx: &RouteContext,
    to: &Forward,
    upstream: &Upstream,
) -> Result<Response<Body>, UpstreamError> {
    let log = context::exchange(req.extensions()).cloned();
    // x-forwarded-for records the hop we saw, which is the client itself only
    // when no trusted proxy stands between.
    let (peer, tls) = peer_of(&req);
    let route = &ctx.active().config;
    let server = &ctx.snapshot.config.server;
    let started = log
        .as_ref()
        .map_or_else(Instant::now, |l| Instant::from_std(l.started()));
    let deadline = started + route.timeout.unwrap_or(server.request_timeout);

    // An HTTP/1.1 Upgrade (WebSocket): the client's side of the tunnel, for after the 101.
    let tunnel = tunnel_of(&req);
    let client_upgrade = tunnel.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let suffix = prepare_parts(&mut parts, ctx, to, peer, tls);
    let query = parts.uri.query();
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
    let client_host = if to.preserve_host {
        ctx.host.clone()
    } else {
        None
    };

    let telemetry = ctx.snapshot.telemetry.as_deref();
    // A tunnel's span is a sibling of the attempt that opened it.
    let parent = telemetry
        .filter(|_| upgrade.is_some())
        .and_then(|_| parts.headers.get(&TRACEPARENT).cloned());
    let prepared = prepare(body, route.max_body, log.as_ref()).await?;
    let mut res = upstream
        .send(Outgoing {
            method: parts.method,
            path: &suffix,
            query,
            client_target: parts.uri.path_and_query(),
            headers: parts.headers,
            body: prepared,
            host: client_host,
            started,
            deadline,
            max_body: route.max_body,
            log,
            response_edits: &route.response_headers,
            upgrade: upgrade.is_some(),
            attempt_timeout: None,
            trace: telemetry.map(|telemetry| Traced {
                telemetry,
                attributes: &[],
            }),
        })
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
            let span = telemetry.map(|t| {
                t.span(Kind::Client, parent.as_ref(), || {
                    let attributes = vec![
                        KeyValue::new("fngate.route", crate::telemetry::shared(&route.name)),
                        KeyValue::new("fngate.backend", crate::telemetry::shared(&to.backend.name)),
                    ];
                    ("websocket".into(), attributes)
                })
            });
            tokio::spawn(tunnel::run(
                client,
                upstream,
                server.websocket_idle_timeout,
                server.websocket_max_lifetime,
                span,
            ));
        }
    }
    Ok(res)
}

/// The request as it goes to the backend: the target path (returned, before
/// the endpoint's base path) and the header rules (hop-by-hop, forwarded,
/// the route's and the backend's). A job stores this, less the client's
/// `Host`, which each attempt replaces.
pub(crate) fn prepare_parts<'a>(
    parts: &mut http::request::Parts,
    ctx: &'a RouteContext,
    to: &Forward,
    peer: HeaderValue,
    tls: bool,
) -> std::borrow::Cow<'a, str> {
    let params: Vec<&str> = match to.target {
        Target::Rewrite(_) => ctx.params().collect(),
        _ => Vec::new(),
    };
    let suffix = to.target.render(&ctx.path, &params);
    upstream::headers::upstream_request(
        &mut parts.headers,
        peer,
        tls,
        ctx.host.as_ref(),
        &ctx.active().config.request_headers,
        &to.backend.headers,
    );
    suffix
}

/// The hop the request came from, and whether over TLS.
pub(crate) fn peer_of<B>(req: &Request<B>) -> (HeaderValue, bool) {
    match context::conn(req.extensions()) {
        Some(c) => (c.peer_value.clone(), c.tls),
        None => (HeaderValue::from_static("unknown"), false),
    }
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
    let asks = upstream::headers::connection_tokens(req.headers())
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    (asks && upstream::headers::offers_websocket(req.headers())).then_some(Tunnel::Upgrade)
}

/// RFC 8441: `CONNECT` with `:protocol = websocket`. Routed as the GET it stands for.
pub(crate) fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}
