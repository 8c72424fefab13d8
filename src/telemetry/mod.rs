//! Trace export (SPEC §12). The request path only builds spans: a SERVER span
//! per request, a CLIENT span per upstream attempt, aggregate call, delivery
//! attempt and WebSocket tunnel. Ended spans go to the batch processor's own
//! thread, which POSTs them as OTLP/HTTP protobuf; a full queue or a failed
//! batch drops spans (counted), never delays or fails a request.
//!
//! The `traceparent` header of the request is the current span as it passes
//! the layers: the route layer points it at the server span, and whoever makes
//! a child (an attempt, a job accepted for later) takes its parent from there.

mod export;

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config;
use crate::hex::hex;
use crate::metrics::Metrics;

/// The W3C header that carries a trace from hop to hop (and, inside fngate,
/// names the request's current span).
pub(crate) static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

pub(crate) use opentelemetry::trace::SpanKind as Kind;
pub(crate) use opentelemetry::KeyValue;

/// Why telemetry could not start (the config is served without it).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry needs a running tokio runtime")]
    NoRuntime,
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// One exporting pipeline: a tracer, its provider and batch thread. Kept
/// across reloads while `[telemetry]` is unchanged.
pub struct Telemetry {
    pub config: config::Telemetry,
    tracer: SdkTracer,
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces_url", &self.config.traces_url)
            .finish()
    }
}

impl Telemetry {
    pub fn start(
        config: config::Telemetry,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, TelemetryError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let processor = export::processor(&config, runtime, metrics.spans_dropped.clone())?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // `span` decides first (a parent's flag, else the ratio) and hands
            // the SDK only spans it will record.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name(config.service_name.to_string())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("fngate");
        Ok(Arc::new(Self {
            config,
            tracer,
            provider: Some(provider),
        }))
    }

    /// Starts a span below `parent` (a `traceparent`), or a new trace's root.
    /// Parent-based sampling: a caller's decision, sampled or not, is kept;
    /// `sample_ratio` decides only for traces that start here. A span that is
    /// not sampled never calls `describe` (its name and attributes) nor
    /// reaches the SDK: it is only the context to pass on.
    pub(crate) fn span(
        &self,
        kind: SpanKind,
        parent: Option<&HeaderValue>,
        describe: impl FnOnce() -> (Cow<'static, str>, Vec<KeyValue>),
    ) -> Span {
        let parent = parent.and_then(|p| parse_traceparent(p.as_bytes()));
        let sampled = match &parent {
            Some(sc) => sc.is_sampled(),
            None => fastrand::f64() < self.config.sample_ratio,
        };
        if !sampled {
            // Nobody records this trace: a caller's context passes on as it
            // came; a new trace gets ids (and the unsampled flag) once.
            return Span(match parent {
                Some(sc) => Inner::Silent(sc, false),
                None => Inner::Silent(
                    SpanContext::new(
                        TraceId::from(fastrand::u128(1..)),
                        SpanId::from(fastrand::u64(1..)),
                        TraceFlags::NOT_SAMPLED,
                        false,
                        TraceState::NONE,
                    ),
                    true,
                ),
            });
        }
        let cx = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let (name, attributes) = describe();
        let builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        Span(Inner::Recording(Box::new(
            self.tracer.build_with_context(builder, &cx),
        )))
    }

    /// Exports what is queued; for a graceful exit. Blocks: not on a runtime thread.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Shutting down waits for the last export (up to its timeout), so it
        // runs on a thread of its own, never on the runtime's.
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::Builder::new()
                .name("fngate-otlp-stop".into())
                .spawn(move || {
                    let _ = provider.shutdown();
                });
        }
    }
}

/// A config name as an attribute value, shared rather than copied.
pub(crate) fn shared(name: &Arc<str>) -> opentelemetry::Value {
    opentelemetry::Value::String(opentelemetry::StringValue::from(name.clone()))
}

/// A method's name, not copied when it is a standard one.
pub(crate) fn method(m: &http::Method) -> Cow<'static, str> {
    use http::Method as M;
    Cow::Borrowed(match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => return Cow::Owned(m.as_str().to_owned()),
    })
}

/// A started span; it ends when dropped.
pub(crate) struct Span(Inner);

enum Inner {
    /// Boxed: the SDK's span is large, and only sampled requests have one.
    Recording(Box<opentelemetry_sdk::trace::Span>),
    /// Not sampled: only its context, to pass on, and whether it is new
    /// (else it is the parent's, already in the request).
    Silent(SpanContext, bool),
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Span")
    }
}

impl Span {
    fn context(&self) -> &SpanContext {
        match &self.0 {
            Inner::Recording(s) => opentelemetry::trace::Span::span_context(&**s),
            Inner::Silent(sc, _) => sc,
        }
    }

    /// The `traceparent` the request it makes must carry, when that is not
    /// the one it already has (its parent's, passed on by a silent span).
    pub(crate) fn outgoing(&self) -> Option<HeaderValue> {
        match self.0 {
            Inner::Silent(_, false) => None,
            _ => Some(self.traceparent()),
        }
    }

    /// The `traceparent` naming this span.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        format_traceparent(self.context())
    }

    /// Its trace id in lower-case hex, for the access log.
    pub(crate) fn trace_id(&self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        hex(
            &mut buf,
            u128::from_be_bytes(self.context().trace_id().to_bytes()),
        );
        buf
    }

    /// Whether it is exported: attributes known only later are worth making.
    pub(crate) fn recording(&self) -> bool {
        matches!(self.0, Inner::Recording(_))
    }

    pub(crate) fn set(&mut self, attribute: KeyValue) {
        if let Inner::Recording(s) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(&mut **s, attribute);
        }
    }

    /// Marks the span failed, with why (`error.type` as well).
    pub(crate) fn fail(&mut self, kind: &'static str, description: impl Into<Cow<'static, str>>) {
        if let Inner::Recording(s) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(&mut **s, KeyValue::new("error.type", kind));
            opentelemetry::trace::Span::set_status(&mut **s, Status::error(description));
        }
    }
}

/// A span context as a W3C `traceparent` (version 00).
pub(crate) fn format_traceparent(sc: &SpanContext) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(
        &mut buf[3..35],
        u128::from_be_bytes(sc.trace_id().to_bytes()),
    );
    hex(
        &mut buf[36..52],
        u128::from(u64::from_be_bytes(sc.span_id().to_bytes())),
    );
    hex(&mut buf[53..55], u128::from(sc.trace_flags().to_u8()));
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

/// Lower-case hex digits' values; 0xff for any other byte (W3C ids are lower-case).
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Up to 16 lower-case hex digits (a table lookup a digit: this runs per request).
fn hex64(s: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for &b in s {
        let d = NIBBLE[b as usize];
        if d == 0xff {
            return None;
        }
        n = n << 4 | u64::from(d);
    }
    Some(n)
}

/// A W3C `traceparent` (version 00, or a later one read as 00) as a remote parent.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55
        || v[2] != b'-'
        || v[35] != b'-'
        || v[52] != b'-'
        || (v.len() > 55 && v[55] != b'-')
    {
        return None;
    }
    let version = hex64(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    let high = u128::from(hex64(&v[3..19])?);
    let trace_id = TraceId::from(high << 64 | u128::from(hex64(&v[19..35])?));
    let span_id = SpanId::from(hex64(&v[36..52])?);
    let flags = TraceFlags::new(hex64(&v[53..55])? as u8 & 1);
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID)
        .then(|| SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector that takes connections and never answers: every export
    /// waits out its attempt, so nothing leaves the queue meanwhile.
    fn blackhole() -> (std::net::TcpListener, config::Telemetry) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let config = config::Telemetry {
            traces_url: url.parse().expect("url"),
            service_name: "t".into(),
            sample_ratio: 1.0,
            export_timeout: config::MAX_EXPORT_TIMEOUT,
            headers: Vec::new(),
        };
        (listener, config)
    }

    #[tokio::test]
    async fn spans_past_the_queue_are_dropped_and_counted_at_once() {
        let (_listener, config) = blackhole();
        let metrics = Metrics::new();
        let t = Telemetry::start(config, &metrics).expect("starts");
        for _ in 0..export::QUEUE + 100 {
            drop(t.span(SpanKind::Internal, None, || ("s".into(), Vec::new())));
        }
        assert_eq!(metrics.spans_dropped.get(), 100);
        // Ending spans never waited for the export; dropping the pipeline does not either.
        let started = std::time::Instant::now();
        drop(t);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_parents_decision_is_kept_and_a_root_follows_the_ratio() {
        let (_listener, mut config) = blackhole();
        config.sample_ratio = 0.0;
        let metrics = Metrics::new();
        let t = Telemetry::start(config, &metrics).expect("starts");
        let sampled =
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let unsampled =
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let child = t.span(SpanKind::Server, Some(&sampled), || {
            ("c".into(), Vec::new())
        });
        let tp = child.traceparent();
        let tp = tp.to_str().expect("ascii");
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && tp.ends_with("-01"),
            "{tp}"
        );
        assert_ne!(&tp[36..52], "b7ad6b7169203331", "a span of its own");
        assert!(t
            .span(SpanKind::Server, Some(&unsampled), || unreachable!(
                "not described"
            ))
            .traceparent()
            .to_str()
            .expect("ascii")
            .ends_with("-00"));
        assert!(
            t.span(SpanKind::Server, None, || unreachable!("not described"))
                .traceparent()
                .to_str()
                .expect("ascii")
                .ends_with("-00"),
            "ratio 0: a root is not sampled"
        );
        assert_eq!(metrics.spans_dropped.get(), 0);
    }

    #[test]
    fn traceparents_parse_as_w3c_says() {
        let sc = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .expect("valid");
        assert_eq!(
            format!("{}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(format!("{}", sc.span_id()), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        let unsampled =
            parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .expect("valid");
        assert!(!unsampled.is_sampled());
        // A later version may append fields; version 00 may not.
        assert!(parse_traceparent(
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
        )
        .is_some());
        for bad in [
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
