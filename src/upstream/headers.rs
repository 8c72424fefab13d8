//! Header rules between client and upstream (SPEC §3).

use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderEdits;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers and every header named in `Connection`.
/// `te: trailers` survives (gRPC needs it); other `te` values do not.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none, and most answers only `connection: keep-alive`:
    // one pass over the names finds what is there, and only that is removed
    // (a removal hashes the name even when it is absent).
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    if doomed.is_empty() {
        return;
    }
    for token in connection_tokens(headers) {
        // `keep-alive` and `close` are the usual tokens: the first is on the
        // list already, the second names no header.
        if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            if headers.contains_key(&name) {
                doomed.push(name);
            }
        }
    }
    let trailers = headers.get(TE).is_some_and(|te| {
        te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for name in doomed {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The tokens of every `Connection` line, trimmed, empty ones skipped.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// True when an `Upgrade` line names the `websocket` protocol (any case).
pub(crate) fn offers_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == TRAILER
        || *name == TE
        || *name == PROXY_AUTHENTICATE
        || *name == PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Prepares client headers for the upstream: hop-by-hop removed, forwarding
/// headers set, the route's and the backend's edits applied. `Host` is set
/// per attempt by the caller.
pub(crate) fn upstream_request(
    headers: &mut HeaderMap,
    peer: HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
    route_edits: &HeaderEdits,
    backend_headers: &[(HeaderName, HeaderValue)],
) {
    strip_hop_by_hop(headers);
    // The 100-continue exchange is between the client and us; hyper answered it.
    headers.remove(EXPECT);
    headers.remove(HOST);

    // Appended to what earlier hops sent; with none, the per-connection value is reused as is.
    if headers.contains_key(&X_FORWARDED_FOR) {
        let mut xff: Vec<u8> = Vec::new();
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            xff.extend_from_slice(prior.as_bytes());
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(peer.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&xff) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    apply(headers, route_edits);
    for (name, value) in backend_headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// Removes, then sets, as the route says.
pub(crate) fn apply(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, value) in &edits.set {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(CONNECTION));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(UPGRADE));
        assert_eq!(h.get(TE), Some(&HeaderValue::from_static("trailers")));
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn every_connection_line_counts_and_names_are_case_blind() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("close"));
        h.append(CONNECTION, HeaderValue::from_static(" X-Secret ,,x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn only_the_websocket_token_counts_as_a_websocket_offer() {
        let mut h = HeaderMap::new();
        h.append(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!offers_websocket(&h));
        h.append(UPGRADE, HeaderValue::from_static("foo, WebSocket"));
        assert!(offers_websocket(&h));
    }
}
