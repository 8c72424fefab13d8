//! What a request carries through the layers, as request extensions.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

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

/// The request's id (client-sent when sane, else generated).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub HeaderValue);

/// Facts the access log needs that inner layers learn.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    bytes_in: AtomicU64,
    fields: Mutex<LogFields>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LogFields {
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<Arc<str>>,
    /// Each aggregate call's outcome: `user=ok orders=fallback`.
    pub calls: Option<Arc<str>>,
    /// The matched route's latency histogram, resolved with the snapshot.
    pub duration: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl RequestLog {
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

    pub(crate) fn fields(&self) -> LogFields {
        self.fields.lock().map(|f| f.clone()).unwrap_or_default()
    }
}
