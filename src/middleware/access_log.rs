//! One access-log line and the request metrics per request, emitted when the
//! response body ends (or the client goes away), so sizes and durations are
//! those of the whole exchange.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::context::{ConnInfo, Exchange};
use crate::error::ErrorDetail;
use crate::log_json::Line;
use crate::metrics::Metrics;
use crate::telemetry::{KeyValue, TRACEPARENT};

/// The access log's tracing target: `RUST_LOG=fngate::access=off` silences it.
const TARGET: &str = "fngate::access";

/// Requests that match no route are counted under this route label.
const UNMATCHED: &str = "-";

#[derive(Debug, Clone)]
pub(crate) struct AccessLogLayer {
    metrics: Arc<Metrics>,
    unmatched: Arc<str>,
}

impl AccessLogLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            unmatched: UNMATCHED.into(),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

struct Entry {
    start: Instant,
    method: Method,
    path: Option<String>,
    status: u16,
    trace_id: Option<[u8; 32]>,
    log: Arc<Exchange>,
    detail: Option<ErrorDetail>,
    layer: AccessLogLayer,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let log = Exchange::of_mut(req.extensions_mut()).clone();
        let start = log.started();
        let method = req.method().clone();
        // The path is only copied when a log line will be written.
        let path = tracing::enabled!(target: TARGET, tracing::Level::INFO)
            .then(|| req.uri().path().to_owned());
        // The trace as the request arrived; a SERVER span, when traced, may start a new one.
        let trace_id = path.as_ref().and_then(|_| {
            let v = req.headers().get(&TRACEPARENT)?;
            let id: [u8; 32] = v.as_bytes().get(3..35)?.try_into().ok()?;
            Some(id)
        });
        let start_entry = Pending {
            start,
            method,
            path,
            trace_id,
            log,
            layer: self.layer.clone(),
        };
        AccessLogFuture {
            inner: self.inner.call(req),
            pending: Some(start_entry),
        }
    }
}

/// What is known before the answer arrives.
struct Pending {
    start: Instant,
    method: Method,
    path: Option<String>,
    trace_id: Option<[u8; 32]>,
    log: Arc<Exchange>,
    layer: AccessLogLayer,
}

pin_project_lite::pin_project! {
    /// Wraps the answer's body so the log line is written when it ends.
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let Some(p) = this.pending.take() else {
            return Poll::Ready(Ok(res));
        };
        let (parts, body) = res.into_parts();
        let entry = Entry {
            start: p.start,
            method: p.method,
            path: p.path,
            status: parts.status.as_u16(),
            trace_id: p.trace_id,
            log: p.log,
            detail: parts.extensions.get::<ErrorDetail>().cloned(),
            layer: p.layer,
        };
        let body = Logged {
            inner: body,
            bytes_out: 0,
            entry: Some(entry),
        };
        Poll::Ready(Ok(Response::from_parts(parts, body.boxed_unsync())))
    }
}

/// The response body, counted; writes the log line when dropped.
struct Logged {
    inner: Body,
    bytes_out: u64,
    entry: Option<Entry>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes_out += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(e) = self.entry.take() else { return };
        let elapsed = e.start.elapsed();
        let fields = e.log.take_fields();
        let route = fields.route.unwrap_or_else(|| e.layer.unmatched.clone());
        e.layer.metrics.request(
            &route,
            &e.method,
            e.status,
            elapsed,
            fields.series.as_ref().map(|(c, h)| (&**c, h)),
        );
        let mut span = e.log.take_span();
        if let Some(span) = span.as_mut().filter(|s| s.recording()) {
            span.set(KeyValue::new(
                "http.response.status_code",
                i64::from(e.status),
            ));
            // OpenTelemetry's HTTP conventions: a server span fails on 5xx only.
            if e.status >= 500 {
                let why = e
                    .detail
                    .as_ref()
                    .map_or_else(|| e.status.to_string(), |d| d.0.to_string());
                span.fail("http_status", why);
            }
        }
        let Some(path) = e.path else { return };
        // A server span may have started a trace of its own: the log names that one.
        let trace_id = span.as_ref().map(|s| s.trace_id()).or(e.trace_id);
        // The connection and the request id are the exchange's own.
        let client_ip = Text::ip(fields.client_ip, e.log.conn());
        Record {
            request_id: e.log.id().and_then(|id| id.0.to_str().ok()).unwrap_or("-"),
            trace_id: trace_id
                .as_ref()
                .and_then(|t| std::str::from_utf8(t).ok())
                .unwrap_or("-"),
            route: &route,
            method: e.method.as_str(),
            path: &path,
            status: e.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: fields.upstream.as_deref().unwrap_or("-"),
            bytes_in: e.log.bytes_in(),
            bytes_out: self.bytes_out,
            client_ip: client_ip.as_str(),
            consumer: fields.consumer.as_deref().unwrap_or("-"),
            calls: fields.calls.as_deref().unwrap_or("-"),
            error: e.detail.as_ref().map_or("-", |d| &*d.0),
        }
        .write();
    }
}

/// One access-log line's fields, in the order they are written.
struct Record<'a> {
    request_id: &'a str,
    trace_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    upstream: &'a str,
    bytes_in: u64,
    bytes_out: u64,
    client_ip: &'a str,
    consumer: &'a str,
    calls: &'a str,
    error: &'a str,
}

impl Record<'_> {
    /// With `--log-format json`, the line is written directly (log_json.rs);
    /// otherwise it is a tracing event, formatted by the text layer. The two
    /// give the same JSON object (tested below).
    fn write(&self) {
        match Line::direct(tracing::Level::INFO) {
            Some(mut line) => {
                self.json(&mut line);
                line.write(TARGET);
            }
            None => self.event(),
        }
    }

    fn json(&self, line: &mut Line) {
        line.str("ts", crate::timestamp::millis().as_str());
        line.str("request_id", self.request_id);
        line.str("trace_id", self.trace_id);
        line.str("route", self.route);
        line.str("method", self.method);
        line.str("path", self.path);
        line.u64("status", u64::from(self.status));
        line.f64("duration_ms", self.duration_ms);
        line.str("upstream", self.upstream);
        line.u64("bytes_in", self.bytes_in);
        line.u64("bytes_out", self.bytes_out);
        line.str("client_ip", self.client_ip);
        line.str("consumer", self.consumer);
        line.str("calls", self.calls);
        line.str("error", self.error);
    }

    fn event(&self) {
        tracing::info!(
            target: TARGET,
            ts = %crate::timestamp::millis().as_str(),
            request_id = self.request_id,
            trace_id = self.trace_id,
            route = self.route,
            method = self.method,
            path = self.path,
            status = self.status,
            duration_ms = self.duration_ms,
            upstream = self.upstream,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            client_ip = %self.client_ip,
            consumer = self.consumer,
            calls = self.calls,
            error = self.error,
        );
    }
}

/// The client's address as the log writes it: the peer's text when the client
/// is the peer (no formatting per request), else formatted.
enum Text<'a> {
    Peer(&'a HeaderValue),
    Formatted(String),
    Unknown,
}

impl<'a> Text<'a> {
    fn ip(client: Option<IpAddr>, conn: Option<&'a ConnInfo>) -> Self {
        match (client, conn) {
            (None, Some(c)) => Self::Peer(&c.peer_value),
            (Some(ip), Some(c)) if ip == c.peer.ip() => Self::Peer(&c.peer_value),
            (Some(ip), _) => Self::Formatted(ip.to_string()),
            (None, None) => Self::Unknown,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Peer(v) => v.to_str().unwrap_or("-"),
            Self::Formatted(s) => s,
            Self::Unknown => "-",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` with the value of each string field in `keys` blanked (each line reads its own clock).
    fn untimed(mut s: String, keys: &[&str]) -> String {
        for key in keys {
            let start = s.find(&format!("\"{key}\":\"")).expect(key) + key.len() + 4;
            let len = s[start..].find('"').expect("a value");
            s.replace_range(start..start + len, &"x".repeat(len));
        }
        s
    }

    /// The line written directly is byte for byte the one the tracing event
    /// gives through the JSON formatter: same keys, order, escapes and numbers.
    #[test]
    fn the_direct_line_is_the_events_line() {
        let record = Record {
            request_id: "r1",
            trace_id: "-",
            route: "fn",
            method: "GET",
            path: "/a\"b\\c\n\u{1}é",
            status: 503,
            duration_ms: 0.123456,
            upstream: "http://127.0.0.1:1",
            bytes_in: 7,
            bytes_out: 0,
            client_ip: "::1",
            consumer: "alice",
            calls: "a=ok b=fallback",
            error: "upstream \"x\" refused",
        };
        let mut line = Line::new(tracing::Level::INFO);
        record.json(&mut line);
        let direct = line.finish(TARGET);
        let event = crate::log_json::captured(|| record.event());
        assert_eq!(event.len(), 1);
        let keys = ["timestamp", "ts"];
        assert_eq!(
            untimed(direct.trim_end().to_owned(), &keys),
            untimed(event[0].clone(), &keys)
        );
        let v: serde_json::Value = serde_json::from_str(&direct).expect("json");
        assert_eq!(v["path"], record.path);
        assert_eq!(v["status"], 503);
    }
}
