//! Trace export (SPEC §12) into an OTLP/HTTP receiver of our own: it decodes
//! every batch with `opentelemetry-proto` and keeps the spans, so each test
//! reads the span tree fngate sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::common::*;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    status: i32,
    attributes: HashMap<String, String>,
    /// The `x-api-key` of the export request that carried it.
    api_key: Option<String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on loopback.
struct Collector {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (spans2, arrived2) = (spans.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (spans, arrived) = (spans2.clone(), arrived2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (spans, arrived) = (spans.clone(), arrived.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let api_key = req
                                .headers()
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            let mut got = Vec::new();
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .map(|kv| value(kv.value.as_ref()))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for s in ss.spans {
                                        got.push(Span {
                                            service: service.clone(),
                                            trace_id: hex(&s.trace_id),
                                            span_id: hex(&s.span_id),
                                            parent: hex(&s.parent_span_id),
                                            name: s.name,
                                            kind: s.kind,
                                            status: s.status.map_or(0, |st| st.code),
                                            attributes: s
                                                .attributes
                                                .iter()
                                                .map(|kv| {
                                                    (kv.key.clone(), value(kv.value.as_ref()))
                                                })
                                                .collect(),
                                            api_key: api_key.clone(),
                                        });
                                    }
                                }
                            }
                            spans.lock().unwrap().extend(got);
                            arrived.notify_waiters();
                            Ok::<_, std::convert::Infallible>(Response::new(full(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            spans,
            arrived,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (on the receiver's signal, at most 15 s) until `done` holds for the spans so far.
    async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let arrived = self.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                tokio::time::timeout(left, arrived).await.is_ok(),
                "no {what} arrived: {spans:#?}"
            );
        }
    }

    /// The spans of `trace`, once `n` of them arrived.
    async fn trace(&self, trace: &str, n: usize) -> Vec<Span> {
        let of = |spans: &[Span]| -> Vec<Span> {
            spans
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect()
        };
        of(&self
            .until(&format!("{n} spans of trace {trace}"), |s| of(s).len() >= n)
            .await)
    }
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn telemetry(collector: &str, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"fngate-test\"\n{extra}\n"
    )
}

/// The trace id and parent id of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    (parts[1].to_owned(), parts[2].to_owned())
}

/// A gateway with one catch-all route to `b`, traced into `collector` (`extra`: more `[telemetry]` keys).
async fn traced_gw(collector: &Collector, extra: &str, b: &Backend) -> Gw {
    Gw::start(&format!(
        "{}{}",
        telemetry(&collector.url(), extra),
        config(&b.url(), ANY)
    ))
    .await
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn get_with_parent(gw: &Gw, path: &str, flags: &str) -> Answer {
    send(
        Request::get(gw.url(path))
            .header(
                "traceparent",
                format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}"),
            )
            .body(empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_proxied_request_is_a_server_span_with_one_client_span_below_it() {
    let collector = Collector::start().await;
    let b = Backend::echo("b").await;
    let gw = traced_gw(&collector, r#"headers = { "x-api-key" = "k-123" }"#, &b).await;
    let a = get_with_parent(&gw, "/things/1", "01").await;
    assert_eq!(a.status, 200);
    let spans = collector.trace(CLIENT_TRACE, 2).await;
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .expect("a server span");
    let client = spans
        .iter()
        .find(|s| s.kind == CLIENT)
        .expect("a client span");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(server.service, "fngate-test");
    assert!(
        spans.iter().all(|s| s.api_key.as_deref() == Some("k-123")),
        "[telemetry] headers go with every export"
    );
    assert_eq!(server.parent, CLIENT_SPAN, "below the caller's span");
    assert_eq!(server.name, "GET any");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("http.route", "any"),
        ("url.path", "/things/1"),
        ("http.response.status_code", "200"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(server.attr(k), Some(v), "{k}: {server:#?}");
    }
    assert_eq!(
        client.parent, server.span_id,
        "the attempt is the server span's child"
    );
    assert_eq!(client.name, "GET");
    assert_eq!(client.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr("server.port"),
        Some(b.addr.port().to_string().as_str())
    );
    assert_eq!(client.attr("fngate.attempt"), Some("1"));
    assert_eq!(client.attr("http.request.resend_count"), None);
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_ne!(client.status, STATUS_ERROR);
    // The backend's parent is the client span.
    let sent = a.upstream_header("traceparent").unwrap();
    assert_eq!(sent, format!("00-{CLIENT_TRACE}-{}-01", client.span_id));
}

#[tokio::test]
async fn a_retried_request_has_one_client_span_per_attempt() {
    let collector = Collector::start().await;
    // Two endpoints sharing one count: the first request anywhere is a 503.
    let count = Arc::new(AtomicUsize::new(0));
    let flaky = || {
        let count = count.clone();
        Backend::with(move |_| {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                Response::builder()
                    .status(if first { 503 } else { 200 })
                    .body(full("ok"))
                    .unwrap()
            }
        })
    };
    let (one, two) = (flaky().await, flaky().await);
    let gw = Gw::start(&format!(
        "{}[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 1\n{ANY}",
        telemetry(&collector.url(), ""),
        one.url(),
        two.url()
    ))
    .await;
    let a = gw.get("/again").await;
    assert_eq!(a.status, 200);
    let spans = collector
        .until("a server span", |s| s.iter().any(|s| s.kind == SERVER))
        .await;
    let trace = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .unwrap()
        .trace_id
        .clone();
    let spans = collector.trace(&trace, 3).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(
        server.parent, "",
        "a request without traceparent starts the trace"
    );
    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    attempts.sort_by_key(|s| s.attr("fngate.attempt").map(str::to_owned));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert!(attempts.iter().all(|s| s.parent == server.span_id));
    assert_eq!(attempts[0].attr("http.response.status_code"), Some("503"));
    assert_eq!(attempts[0].status, STATUS_ERROR);
    assert_eq!(attempts[0].attr("fngate.outcome"), Some("http_5xx"));
    assert_eq!(attempts[1].attr("fngate.outcome"), Some("ok"));
    assert_eq!(attempts[0].attr("http.request.resend_count"), None);
    assert_eq!(attempts[1].attr("http.response.status_code"), Some("200"));
    assert_eq!(attempts[1].attr("http.request.resend_count"), Some("1"));
    assert_ne!(
        attempts[0].attr("server.port"),
        attempts[1].attr("server.port"),
        "the retry went to the other endpoint"
    );
}

#[tokio::test]
async fn each_aggregate_call_is_a_client_span_below_the_server_span() {
    let collector = Collector::start().await;
    let users = Backend::echo("users").await;
    let orders = Backend::echo("orders").await;
    let gw = Gw::start(&format!(
        r#"{}
[backends.users]
urls = ["{}"]
[backends.orders]
urls = ["{}"]
[[routes]]
name = "profile"
path = "/profile/{{id}}"
[routes.aggregate]
calls = [
  {{ name = "user", backend = "users", path = "/users/{{id}}" }},
  {{ name = "orders", backend = "orders", path = "/orders?user={{id}}" }},
]
"#,
        telemetry(&collector.url(), ""),
        users.url(),
        orders.url()
    ))
    .await;
    let a = get_with_parent(&gw, "/profile/7", "01").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let spans = collector.trace(CLIENT_TRACE, 3).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(server.attr("http.route"), Some("profile"));
    let mut calls: Vec<&str> = spans
        .iter()
        .filter(|s| s.kind == CLIENT)
        .inspect(|s| assert_eq!(s.parent, server.span_id, "{s:#?}"))
        .filter_map(|s| s.attr("fngate.aggregate.call"))
        .collect();
    calls.sort_unstable();
    assert_eq!(calls, ["orders", "user"], "{spans:#?}");
    // Each function's parent is its own call's span.
    for (backend, call) in [(&users, "user"), (&orders, "orders")] {
        let sent = backend.seen()[0].headers["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        let span = spans
            .iter()
            .find(|s| s.attr("fngate.aggregate.call") == Some(call))
            .unwrap();
        assert_eq!(ids(&sent), (CLIENT_TRACE.to_owned(), span.span_id.clone()));
    }
}

#[tokio::test]
async fn an_async_job_is_delivered_later_in_the_trace_of_the_request_that_made_it() {
    let collector = Collector::start().await;
    let f = Backend::echo("f").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(&format!(
        "{}{}",
        telemetry(&collector.url(), ""),
        crate::jobs::async_config(&dir, &f.url(), "")
    ))
    .await;
    let a = send(
        Request::post(gw.url("/work"))
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
            .body(full("job"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 202);
    let job_id = a.json()["id"].as_str().unwrap().to_owned();
    f.wait_for(1).await;
    let spans = collector.trace(CLIENT_TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(server.attr("http.response.status_code"), Some("202"));
    let delivery = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(delivery.parent, server.span_id, "{spans:#?}");
    assert_eq!(delivery.attr("fngate.job.id"), Some(job_id.as_str()));
    assert_eq!(delivery.attr("fngate.job.kind"), Some("route"));
    assert_eq!(delivery.attr("fngate.job.attempt"), Some("1"));
    let sent = f.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ids(&sent),
        (CLIENT_TRACE.to_owned(), delivery.span_id.clone())
    );
}

#[tokio::test]
async fn a_callers_sampling_decision_is_kept_both_ways() {
    let collector = Collector::start().await;
    let b = Backend::echo("b").await;
    // Nothing that starts here is sampled; a sampled caller still is.
    let gw = traced_gw(&collector, "sample_ratio = 0.0", &b).await;
    let root = gw.get("/unsampled-root").await;
    let (root_trace, _) = ids(&root.upstream_header("traceparent").unwrap());
    let unsampled = get_with_parent(&gw, "/unsampled-parent", "00").await;
    assert!(
        unsampled
            .upstream_header("traceparent")
            .unwrap()
            .ends_with("-00"),
        "the decision travels on"
    );
    let sampled = get_with_parent(&gw, "/sampled", "01").await;
    assert_eq!(sampled.status, 200);
    collector.trace(CLIENT_TRACE, 2).await;
    // Spans leave in the order they ended: the earlier requests' would be here.
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.trace_id != root_trace), "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.attr("url.path") != Some("/unsampled-parent")),
        "{spans:#?}"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");

    // At ratio 1, an unsampled caller is still not exported; a new root is.
    let collector = Collector::start().await;
    let gw = traced_gw(&collector, "sample_ratio = 1.0", &b).await;
    get_with_parent(&gw, "/unsampled-parent", "00").await;
    let root = gw.get("/root").await;
    let (root_trace, _) = ids(&root.upstream_header("traceparent").unwrap());
    assert_ne!(root_trace, CLIENT_TRACE);
    let spans = collector.trace(&root_trace, 2).await;
    assert_eq!(collector.spans().len(), 2, "{spans:#?}");
}

/// `fngate_spans_dropped_total`, once it reached `at_least` (polled, at most 20 s).
async fn dropped(gw: &Gw, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = gw.metrics().await;
        let n = m
            .lines()
            .find_map(|l| l.strip_prefix("fngate_spans_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= at_least {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{n} spans dropped, not {at_least}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests through a gateway whose collector is `collector`: every one is
/// answered at once, and their spans are counted as dropped.
async fn served_without_the_collector(collector: String) {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "{}{}",
        telemetry(&collector, "export_timeout = \"1s\""),
        config(&b.url(), ANY)
    ))
    .await;
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let a = gw.get(&format!("/r/{i}")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(a.status, 200);
    }
    // An export that blocked a request would hold it for its 500 ms attempt.
    assert!(
        slowest < Duration::from_millis(300),
        "a request took {slowest:?}"
    );
    assert!(dropped(&gw, 80).await >= 80);
}

#[tokio::test]
async fn a_collector_that_refuses_costs_requests_nothing_and_its_spans_are_counted() {
    served_without_the_collector(format!("http://{}", dead_addr().await)).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing_and_its_spans_are_counted() {
    // Accepts connections and reads nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    served_without_the_collector(format!("http://{addr}")).await;
}

#[tokio::test]
async fn telemetry_is_turned_on_changed_and_off_by_a_reload() {
    let collector = Collector::start().await;
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let base = format!("[server]\nwatch = false\n{}", config(&b.url(), ANY));
    std::fs::write(&path, &base).unwrap();
    let gw = Gw::start_config(fngate::Config::load(&path).unwrap()).await;
    let state = &gw.gateway.as_ref().unwrap().state;
    let reload = |text: String| {
        std::fs::write(&path, text).unwrap();
        state.reload(fngate::state::Source::Reload)
    };
    let traced = |gw: &Gw, path: &'static str| {
        let url = gw.url(path);
        async move {
            let a = send(Request::get(url).body(empty()).unwrap()).await;
            ids(&a.upstream_header("traceparent").unwrap()).0
        }
    };

    let before = traced(&gw, "/before").await;
    reload(format!("{}{base}", telemetry(&collector.url(), "")))
        .await
        .unwrap();
    let first = state.load().telemetry.clone().expect("on after the reload");
    let on = traced(&gw, "/on").await;
    let spans = collector.trace(&on, 2).await;
    assert!(spans.iter().all(|s| s.service == "fngate-test"));

    // An unrelated change keeps the exporter; a changed [telemetry] replaces it.
    reload(format!(
        "{}{base}\n# touched\n",
        telemetry(&collector.url(), "")
    ))
    .await
    .unwrap();
    assert!(Arc::ptr_eq(
        &first,
        state.load().telemetry.as_ref().unwrap()
    ));
    let renamed = telemetry(&collector.url(), "").replace("fngate-test", "renamed");
    reload(format!("{renamed}{base}")).await.unwrap();
    assert!(!Arc::ptr_eq(
        &first,
        state.load().telemetry.as_ref().unwrap()
    ));
    drop(first);
    let changed = traced(&gw, "/changed").await;
    let spans = collector.trace(&changed, 2).await;
    assert!(spans.iter().all(|s| s.service == "renamed"), "{spans:#?}");

    reload(base).await.unwrap();
    assert!(state.load().telemetry.is_none());
    let off = traced(&gw, "/off").await;
    // The marker request after it is exported by a fresh pipeline; `off` never is.
    reload(format!(
        "{}{}",
        telemetry(&collector.url(), ""),
        config(&b.url(), ANY)
    ))
    .await
    .unwrap();
    let marker = traced(&gw, "/marker").await;
    collector.trace(&marker, 2).await;
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id != before && s.trace_id != off),
        "{spans:#?}"
    );
}

#[tokio::test]
async fn a_websocket_tunnel_is_a_span_that_ends_when_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let collector = Collector::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    let gw = Gw::start(&format!(
        "{}[backends.ws]\nurls = [\"http://{backend}\"]\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\nbackend = \"ws\"\n",
        telemetry(&collector.url(), "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = Request::get(format!("ws://{}/chat", gw.addr))
        .header("host", gw.addr.to_string())
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(())
        .unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    // The tunnel ends once both sides closed.
    drop(ws);
    let spans = collector.trace(CLIENT_TRACE, 3).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(server.attr("http.response.status_code"), Some("101"));
    let tunnel = spans
        .iter()
        .find(|s| s.name == "websocket")
        .expect("a tunnel span");
    assert_eq!(tunnel.kind, CLIENT);
    assert_eq!(tunnel.parent, server.span_id);
    assert_eq!(
        tunnel.attr("fngate.tunnel.end"),
        Some("closed"),
        "{tunnel:#?}"
    );
    let sent: i64 = tunnel
        .attr("fngate.tunnel.bytes_sent")
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 5, "the frame and the close went up: {tunnel:#?}");
    assert!(spans
        .iter()
        .any(|s| s.kind == CLIENT && s.attr("http.response.status_code") == Some("101")));
}

/// The real binary, traced into `collector`, in front of an echo backend, after
/// one GET of `path`: the process, the answer, its trace id, and what must
/// live as long as the process (its config's directory and the backend).
async fn traced_binary(
    collector: &Collector,
    extra: &str,
    path: &str,
) -> (Proc, Answer, String, (tempfile::TempDir, Backend)) {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    let text = format!(
        "{extra}{}{}",
        telemetry(&collector.url(), ""),
        config(&b.url(), ANY)
    );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start(cfg.to_str().unwrap(), &[]);
    let url = format!("http://{}{path}", p.addr);
    let a = send(Request::get(url).body(empty()).unwrap()).await;
    let (trace, _) = ids(&a.upstream_header("traceparent").unwrap());
    (p, a, trace, (dir, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_trace_the_server_span_started() {
    let collector = Collector::start().await;
    let (p, a, trace, _keep) = traced_binary(&collector, "", "/logged").await;
    let line = p.line_with(a.header("x-request-id").unwrap());
    assert!(line.contains(&format!("trace_id=\"{trace}\"")), "{line}");
    let spans = collector.trace(&trace, 2).await;
    assert!(spans
        .iter()
        .any(|s| s.kind == SERVER && s.parent.is_empty()));
}

#[tokio::test]
async fn a_failed_request_marks_its_server_and_client_spans_failed() {
    let collector = Collector::start().await;
    let gw = Gw::start(&format!(
        "{}[backends.b]\nurls = [\"http://{}\"]\nretries = 0\n[[routes]]\nname = \"down\"\npath = \"/down\"\nbackend = \"b\"\n",
        telemetry(&collector.url(), ""),
        dead_addr().await
    ))
    .await;
    let a = get_with_parent(&gw, "/down", "01").await;
    assert_eq!(a.status, 502);
    let spans = collector.trace(CLIENT_TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    assert_eq!(server.status, STATUS_ERROR, "{server:#?}");
    assert_eq!(server.attr("http.response.status_code"), Some("502"));
    assert_eq!(server.attr("error.type"), Some("http_status"));
    let client = spans.iter().find(|s| s.kind == CLIENT).unwrap();
    assert_eq!(client.status, STATUS_ERROR);
    assert_eq!(
        client.attr("error.type"),
        Some("connect_error"),
        "{client:#?}"
    );
    assert_eq!(client.attr("fngate.outcome"), Some("connect_error"));
    // A 404 is the client's mistake: its server span (no route, no attempt) did not fail.
    let unrouted = gw.get("/nothing").await;
    assert_eq!(unrouted.status, 404);
    let spans = collector
        .until("the 404's span", |s| {
            s.iter().any(|s| s.attr("url.path") == Some("/nothing"))
        })
        .await;
    let span = spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/nothing"))
        .unwrap();
    assert_eq!((span.kind, span.name.as_str()), (SERVER, "GET"));
    assert_eq!(span.attr("http.response.status_code"), Some("404"));
    assert_ne!(span.status, STATUS_ERROR);
    assert_eq!(span.attr("http.route"), None);
}

#[tokio::test]
async fn each_subscribers_delivery_is_a_client_span_in_the_publishers_trace() {
    let collector = Collector::start().await;
    let (billing, audit) = (Backend::echo("billing").await, Backend::echo("audit").await);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(&format!(
        "{}[store]\npath = \"{}/jobs.db\"\n[topics.orders]\n\
         [backends.billing]\nurls = [\"{}\"]\n[backends.audit]\nurls = [\"{}\"]\n\
         [[subscriptions]]\nname = \"billing\"\ntopic = \"orders\"\nbackend = \"billing\"\npath = \"/b\"\n\
         [[subscriptions]]\nname = \"audit\"\ntopic = \"orders\"\nbackend = \"audit\"\npath = \"/a\"\n",
        telemetry(&collector.url(), ""),
        dir.path().display(),
        billing.url(),
        audit.url()
    ))
    .await;
    let a = send(
        Request::post(gw.url("/events/orders"))
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "o-1")
            .header("ce-source", "/shop")
            .header("ce-type", "order.created")
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let spans = collector.trace(CLIENT_TRACE, 3).await;
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    let mut deliveries: Vec<&str> = spans
        .iter()
        .filter(|s| s.kind == CLIENT)
        .inspect(|s| {
            assert_eq!(s.parent, server.span_id, "{s:#?}");
            assert_eq!(s.attr("fngate.job.kind"), Some("subscription"));
            assert_eq!(s.attr("fngate.outcome"), Some("ok"));
        })
        .filter_map(|s| s.attr("fngate.route"))
        .collect();
    deliveries.sort_unstable();
    assert_eq!(
        deliveries,
        ["audit", "billing"],
        "one span per subscription: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_queued_at_shutdown_are_exported_before_the_process_ends() {
    let collector = Collector::start().await;
    let (mut p, _, trace, _keep) =
        traced_binary(&collector, "[server]\ndrain_delay = \"0s\"\n", "/last").await;
    // Well inside the 1 s batch delay: only the flush on the way out sends these.
    p.signal("-TERM");
    assert_eq!(p.wait_exit(), 0);
    let spans: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect();
    assert_eq!(spans.len(), 2, "{spans:#?}");
}
