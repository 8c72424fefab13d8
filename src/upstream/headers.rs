//! Header rules between client and upstream (SPEC §3).

use http::header::Entry;
use http::header::{
    CONNECTION, EXPECT, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderEdits;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The names the rules below look for, one bit each: a pass over a map's
/// names says which are there, so only those are hashed and looked up (a
/// lookup or removal hashes the name even when it is absent). The first
/// nine are the hop-by-hop headers.
const WATCHED: [HeaderName; 12] = [
    CONNECTION,
    TRANSFER_ENCODING,
    UPGRADE,
    TRAILER,
    TE,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    EXPECT,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
];
const HOP_BY_HOP: u16 = (1 << 9) - 1;
const BIT_CONNECTION: u16 = 1 << 0;
const BIT_TE: u16 = 1 << 4;
const BIT_EXPECT: u16 = 1 << 9;
const BIT_X_FORWARDED_FOR: u16 = 1 << 10;
const BIT_X_FORWARDED_HOST: u16 = 1 << 11;

/// `name`'s bit in [`WATCHED`], or 0.
fn watched(name: &HeaderName) -> u16 {
    let i = match name.as_str() {
        "connection" => 0,
        "transfer-encoding" => 1,
        "upgrade" => 2,
        "trailer" => 3,
        "te" => 4,
        "proxy-authenticate" => 5,
        "proxy-authorization" => 6,
        "keep-alive" => 7,
        "proxy-connection" => 8,
        "expect" => 9,
        "x-forwarded-for" => 10,
        "x-forwarded-host" => 11,
        _ => return 0,
    };
    1 << i
}

/// Which of [`WATCHED`] `headers` holds.
fn present(headers: &HeaderMap) -> u16 {
    headers.keys().fold(0, |bits, name| bits | watched(name))
}

/// Removes hop-by-hop headers and every header named in `Connection`.
/// `te: trailers` survives (gRPC needs it); other `te` values do not.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, present(headers));
}

/// [`strip_hop_by_hop`], given what [`present`] found.
fn strip(headers: &mut HeaderMap, present: u16) {
    // Most requests carry none, and most answers only `connection: keep-alive`.
    let present = present & HOP_BY_HOP;
    if present == 0 {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if present & BIT_CONNECTION != 0 {
        // One lookup reads and removes every `Connection` line.
        if let Entry::Occupied(lines) = headers.entry(CONNECTION) {
            for line in lines.iter().filter(|l| !names_no_header(l.as_bytes())) {
                for token in tokens(line).filter(|t| !names_no_header(t.as_bytes())) {
                    if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                        if watched(&name) & HOP_BY_HOP == 0 {
                            named.push(name);
                        }
                    }
                }
            }
            lines.remove_entry_mult();
        }
    }
    let trailers = present & BIT_TE != 0
        && headers.get(TE).is_some_and(|te| {
            te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for (i, name) in WATCHED.iter().enumerate() {
        if present & !BIT_CONNECTION & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// `keep-alive` and `close`, the usual `Connection` values (a whole line is
/// checked before it is split): the first is on the list already, the second
/// names no header.
fn names_no_header(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
}

/// The tokens of every `Connection` line, trimmed, empty ones skipped.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(CONNECTION).iter().flat_map(tokens)
}

/// One line's comma-separated tokens, trimmed, empty ones skipped.
fn tokens(line: &HeaderValue) -> impl Iterator<Item = &str> {
    line.to_str()
        .into_iter()
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
    let found = present(headers);
    strip(headers, found);
    // The 100-continue exchange is between the client and us; hyper answered it.
    if found & BIT_EXPECT != 0 {
        headers.remove(EXPECT);
    }

    // Appended to what earlier hops sent; with none, the per-connection value is reused as is.
    if found & BIT_X_FORWARDED_FOR != 0 {
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
        None if found & BIT_X_FORWARDED_HOST != 0 => headers.remove(&X_FORWARDED_HOST),
        None => None,
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
    use http::header::HOST;

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
    fn the_usual_connection_values_are_dropped_and_the_lines_after_them_still_read() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(CONNECTION, HeaderValue::from_static("CLOSE"));
        h.append(CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("content-length", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-length"));
    }

    #[test]
    fn each_watched_name_has_its_own_bit() {
        for (i, name) in WATCHED.iter().enumerate() {
            assert_eq!(watched(name), 1 << i, "{name}");
        }
        assert_eq!(watched(&HOST), 0);
        assert_eq!(watched(&HeaderName::from_static("x-forwarded-proto")), 0);
    }

    #[test]
    fn the_request_rules_act_only_on_what_is_there_and_still_act_on_it() {
        let peer = HeaderValue::from_static("10.1.1.1");
        let edits = HeaderEdits::default();
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("gw"));
        h.insert(EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        upstream_request(&mut h, peer.clone(), false, None, &edits, &[]);
        assert!(!h.contains_key(EXPECT));
        assert_eq!(h[HOST], "gw", "each attempt replaces it");
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.1.1.1");
        assert!(
            !h.contains_key(&X_FORWARDED_HOST),
            "no client host: a sent one is dropped"
        );
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("api.example");
        upstream_request(&mut h, peer, true, Some(&host), &edits, &[]);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.1.1");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
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
