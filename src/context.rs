//! What a request carries through the layers, as request extensions.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use http::{Extensions, HeaderValue};

use crate::hex::hex;
use crate::telemetry::Span;

/// The client connection, set by the server for every request.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, formatted once per connection for `x-forwarded-for`.
    pub peer_value: HeaderValue,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_value = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            peer,
            tls,
            peer_value,
        }
    }
}

/// A W3C `traceparent` in the same trace with a new parent id: what a hop
/// fngate makes on its own (a job's attempt) sends on.
pub(crate) fn child_traceparent(tp: &str) -> Option<HeaderValue> {
    let mut out: [u8; 55] = tp.as_bytes().try_into().ok()?;
    hex(&mut out[36..52], u128::from(fastrand::u64(1..)));
    HeaderValue::from_bytes(&out).ok()
}

/// The request's id (client-sent when sane, else generated), and whether the
/// client sent a valid `traceparent` (else the request starts a trace).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub HeaderValue, pub bool);

/// One request's context, one extension for every layer (each extension is
/// its own allocation, and a fourth grows the map): the connection, set by the
/// server; the request id, set by the request-id layer; and the facts the
/// access log needs that inner layers learn.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// When the request's head was read: the access log's duration and the
    /// proxy's deadline both start here (one clock reading).
    started: Instant,
    conn: Option<ConnInfo>,
    id: OnceLock<RequestId>,
    bytes_in: AtomicU64,
    fields: Mutex<LogFields>,
    /// The SERVER span, when traced; it ends with the log line.
    span: OnceLock<Mutex<Option<Span>>>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LogFields {
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<Arc<str>>,
    /// Each aggregate call's outcome: `user=ok orders=fallback`.
    pub calls: Option<Arc<str>>,
    /// The matched route's request counters and latency histogram, resolved with the snapshot.
    pub series: Option<(
        Arc<crate::metrics::RouteRequests>,
        prometheus_client::metrics::histogram::Histogram,
    )>,
}

/// The request's exchange, when it has one.
pub(crate) fn exchange(ext: &Extensions) -> Option<&Arc<Exchange>> {
    ext.get::<Arc<Exchange>>()
}

/// The client connection (every request the server reads has one).
pub(crate) fn conn(ext: &Extensions) -> Option<&ConnInfo> {
    exchange(ext)?.conn()
}

/// The request's id, once the request-id layer has set it.
pub(crate) fn request_id(ext: &Extensions) -> Option<&RequestId> {
    exchange(ext)?.id()
}

impl Default for Exchange {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            conn: None,
            id: OnceLock::new(),
            bytes_in: AtomicU64::new(0),
            fields: Mutex::default(),
            span: OnceLock::new(),
        }
    }
}

impl Exchange {
    pub(crate) fn new(conn: ConnInfo) -> Self {
        Self {
            conn: Some(conn),
            ..Self::default()
        }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The request's exchange, made if the request came without one.
    pub(crate) fn of_mut(ext: &mut Extensions) -> &Arc<Exchange> {
        ext.get_or_insert_default::<Arc<Exchange>>()
    }

    pub(crate) fn conn(&self) -> Option<&ConnInfo> {
        self.conn.as_ref()
    }

    pub(crate) fn id(&self) -> Option<&RequestId> {
        self.id.get()
    }

    /// Sets the request's id; the first one set stays.
    pub(crate) fn set_id(&self, id: RequestId) {
        let _ = self.id.set(id);
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LogFields)) {
        if let Ok(mut fields) = self.fields.lock() {
            f(&mut fields);
        }
    }

    /// The facts, moved out once the exchange is over (no copy of each `Arc`).
    pub(crate) fn take_fields(&self) -> LogFields {
        self.fields
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    pub(crate) fn set_span(&self, span: Span) {
        let _ = self.span.set(Mutex::new(Some(span)));
    }

    /// The SERVER span, once: whoever ends the exchange ends it.
    pub(crate) fn take_span(&self) -> Option<Span> {
        self.span.get()?.lock().ok()?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_parent() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(tp).expect("valid");
        let child = child.to_str().expect("ascii");
        assert_eq!(&child[..36], &tp[..36]);
        assert_eq!(&child[52..], &tp[52..]);
        assert_ne!(&child[36..52], &tp[36..52]);
        assert!(child_traceparent("00-short").is_none());
    }
}
