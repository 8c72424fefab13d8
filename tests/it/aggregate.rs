//! Aggregate routes against real backends that wait, fail and answer on
//! demand. Parallelism is proven with barriers (a backend answers only once
//! its siblings' requests have all arrived), never with timings.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::Barrier;

fn json_answer(v: Value) -> Response<BoxBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .unwrap()
}

/// A backend answering `v` once `barrier` has as many waiters as it was made for.
async fn at_barrier(barrier: Arc<Barrier>, v: Value) -> Backend {
    Backend::with(move |_| {
        let (barrier, v) = (barrier.clone(), v.clone());
        async move {
            barrier.wait().await;
            json_answer(v)
        }
    })
    .await
}

/// A backend that answers JSON describing the path it was called with.
async fn describing(extra: Value) -> Backend {
    Backend::with(move |seen: Seen| {
        let extra = extra.clone();
        async move {
            let mut v = json!({ "path": seen.uri });
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            json_answer(v)
        }
    })
    .await
}

async fn status(code: u16) -> Backend {
    Backend::with(move |_| async move {
        Response::builder()
            .status(code)
            .body(full("{\"error\":true}"))
            .unwrap()
    })
    .await
}

/// Backends named b0, b1, ... and `routes`.
fn gateway_config(backends: &[&Backend], routes: &str) -> String {
    let mut out = String::new();
    for (i, b) in backends.iter().enumerate() {
        out.push_str(&format!(
            "[backends.b{i}]\nurls = [\"{}\"]\nretries = 0\n",
            b.url()
        ));
    }
    out.push_str(routes);
    out
}

#[tokio::test]
async fn three_independent_calls_run_at_once() {
    let barrier = Arc::new(Barrier::new(3));
    let a = at_barrier(barrier.clone(), json!({"a": 1})).await;
    let b = at_barrier(barrier.clone(), json!({"b": 2})).await;
    let c = at_barrier(barrier.clone(), json!({"c": 3})).await;
    let gw = Gw::start(&gateway_config(
        &[&a, &b, &c],
        r#"
        [[routes]]
        name = "dash"
        path = "/dash"
        [routes.aggregate]
        timeout = "10s"
        [[routes.aggregate.calls]]
        name = "a"
        backend = "b0"
        path = "/a"
        [[routes.aggregate.calls]]
        name = "b"
        backend = "b1"
        path = "/b"
        [[routes.aggregate.calls]]
        name = "c"
        backend = "b2"
        path = "/c"
        "#,
    ))
    .await;
    let r = gw.get("/dash").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"a": {"a": 1}, "b": {"b": 2}, "c": {"c": 3}})
    );
    assert_eq!(r.header("x-fngate-completed"), Some("true"));
    assert_eq!(r.header("x-fngate-failed"), None);
}

#[tokio::test]
async fn a_chain_feeds_a_field_of_one_answer_into_the_next_path() {
    let users = describing(json!({"segment": "gold/vip", "id": 42})).await;
    let recs = describing(json!({"items": [1, 2], "internal": "x"})).await;
    let gw = Gw::start(&gateway_config(
        &[&users, &recs],
        r#"
        [[routes]]
        name = "dash"
        path = "/dash/{id}"
        [routes.aggregate]
        [[routes.aggregate.calls]]
        name = "recommendations"
        backend = "b1"
        path = "/recs/{user.segment}?n={query.n}&user={user.id}"
        select = ["items"]
        [[routes.aggregate.calls]]
        name = "user"
        backend = "b0"
        path = "/users/{id}"
        "#,
    ))
    .await;
    // Form-decoded (`+` is a space, `%2B` a plus), then encoded again.
    let r = gw.get("/dash/42?n=5+6%2B").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"]["path"], "/users/42");
    // The field is one path segment: its slash is escaped; `select` kept only `items`.
    assert_eq!(v["recommendations"], json!({"items": [1, 2]}));
    assert_eq!(recs.seen()[0].uri, "/recs/gold%2Fvip?n=5%206%2B&user=42");
}

#[tokio::test]
async fn a_diamond_runs_its_middle_calls_together() {
    let a = describing(json!({"k": "root"})).await;
    let barrier = Arc::new(Barrier::new(2));
    let b = at_barrier(barrier.clone(), json!({"x": "left"})).await;
    let c = at_barrier(barrier.clone(), json!({"y": "right"})).await;
    let d = describing(json!({})).await;
    let gw = Gw::start(&gateway_config(
        &[&a, &b, &c, &d],
        r#"
        [[routes]]
        name = "diamond"
        path = "/d"
        [routes.aggregate]
        timeout = "10s"
        [[routes.aggregate.calls]]
        name = "a"
        backend = "b0"
        path = "/a"
        [[routes.aggregate.calls]]
        name = "b"
        backend = "b1"
        path = "/b/{a.k}"
        [[routes.aggregate.calls]]
        name = "c"
        backend = "b2"
        path = "/c/{a.k}"
        [[routes.aggregate.calls]]
        name = "d"
        backend = "b3"
        path = "/d/{b.x}/{c.y}"
        "#,
    ))
    .await;
    let r = gw.get("/d").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["d"]["path"], "/d/left/right");
    assert_eq!(b.seen()[0].uri, "/b/root");
}

const PARTIAL: &str = r#"
[[routes]]
name = "page"
path = "/page"
[routes.aggregate]
timeout = "10s"
[[routes.aggregate.calls]]
name = "user"
backend = "b0"
path = "/user"
[[routes.aggregate.calls]]
name = "orders"
backend = "b1"
path = "/orders"
optional = true
fallback = { orders = [] }
[[routes.aggregate.calls]]
name = "ads"
backend = "b1"
path = "/ads"
optional = true
[[routes.aggregate.calls]]
name = "history"
backend = "b2"
path = "/history/{ads.id}"
optional = true
"#;

#[tokio::test]
async fn optional_failures_give_a_partial_200_and_skip_what_depended_on_them() {
    let user = describing(json!({"name": "alice"})).await;
    let failing = status(500).await;
    let history = describing(json!({})).await;
    let gw = Gw::start(&gateway_config(&[&user, &failing, &history], PARTIAL)).await;
    let r = gw.get("/page").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["user"]["name"], "alice");
    assert_eq!(v["orders"], json!({"orders": []}), "the fallback stands in");
    assert!(v.get("ads").is_none() && v.get("history").is_none(), "{v}");
    assert_eq!(r.header("x-fngate-completed"), Some("false"));
    assert_eq!(r.header("x-fngate-failed"), Some("orders, ads, history"));
    assert_eq!(
        history.count(),
        0,
        "a call whose input failed is never made"
    );
    let m = gw.metrics().await;
    for (call, outcome) in [
        ("user", "ok"),
        ("orders", "fallback"),
        ("ads", "error"),
        ("history", "skipped"),
    ] {
        let line = format!("fngate_aggregate_calls_total{{route=\"page\",call=\"{call}\",outcome=\"{outcome}\"}} 1");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn a_required_failure_is_502_naming_the_call() {
    let failing = status(503).await;
    let fine = describing(json!({})).await;
    let gw = Gw::start(&gateway_config(&[&failing, &fine, &fine], PARTIAL)).await;
    let r = gw.get("/page").await;
    let p = r.problem(502);
    assert!(p["detail"].as_str().unwrap().contains("`user`"), "{p}");
    assert_eq!(
        p["call"], "user",
        "the problem's `call` member names it: {p}"
    );
    // `history` is skipped too: the answer of `ads` has no `id`.
    assert_eq!(r.header("x-fngate-failed"), Some("user, history"));
    // Non-JSON and oversized answers are failures too.
    let text = Backend::with(|_| async { Response::new(full("plain text")) }).await;
    let big = Backend::with(|_| async { json_answer(json!({"blob": "x".repeat(4096)})) }).await;
    let gw = Gw::start(&gateway_config(
        &[&text, &big],
        r#"
        [[routes]]
        name = "t"
        path = "/t"
        [routes.aggregate]
        max_call_body = "1KiB"
        [[routes.aggregate.calls]]
        name = "text"
        backend = "b0"
        path = "/"
        optional = true
        [[routes.aggregate.calls]]
        name = "big"
        backend = "b1"
        path = "/"
        optional = true
        "#,
    ))
    .await;
    let r = gw.get("/t").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fngate-failed"), Some("text, big"));
}

/// A raw backend that reads one request head and reports when the gateway
/// closes the connection without waiting for an answer.
async fn never_answers() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                // Closed: before or after the head, the call was abandoned.
                let _ = tx.send(());
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_required_call_past_the_deadline_is_504_and_is_cancelled() {
    let (addr, closed) = never_answers().await;
    let fine = describing(json!({})).await;
    let gw = Gw::start(&format!(
        "[backends.slow]\nurls = [\"http://{addr}\"]\nretries = 0\ntimeout = \"60s\"\n\
         [backends.fine]\nurls = [\"{}\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/r\"\n[routes.aggregate]\ntimeout = \"500ms\"\n\
         [[routes.aggregate.calls]]\nname = \"slow\"\nbackend = \"slow\"\npath = \"/\"\n\
         [[routes.aggregate.calls]]\nname = \"fast\"\nbackend = \"fine\"\npath = \"/\"\n",
        fine.url()
    ))
    .await;
    let r = gw.get("/r").await;
    let p = r.problem(504);
    // Named first in config order, so named whatever a loaded machine does to `fast`.
    assert!(p["detail"].as_str().unwrap().contains("`slow`"), "{p}");
    assert_eq!(p["call"], "slow", "{p}");
    assert!(r.header("x-fngate-failed").unwrap().starts_with("slow"));
    // The abandoned call's connection is closed, not left in the pool.
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the backend sees the call cancelled")
        .unwrap();
}

#[tokio::test]
async fn flat_merge_lets_later_calls_win_in_config_order() {
    // The first call answers last; config order still decides.
    let barrier = Arc::new(Barrier::new(2));
    let slow_first = Backend::with({
        let barrier = barrier.clone();
        move |_| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                tokio::task::yield_now().await;
                json_answer(json!({"name": "first", "a": 1}))
            }
        }
    })
    .await;
    let second = at_barrier(barrier.clone(), json!({"name": "second", "b": 2})).await;
    let gw = Gw::start(&gateway_config(
        &[&slow_first, &second],
        r#"
        [[routes]]
        name = "flat"
        path = "/flat"
        [routes.aggregate]
        merge = "flat"
        timeout = "10s"
        [[routes.aggregate.calls]]
        name = "one"
        backend = "b0"
        path = "/"
        [[routes.aggregate.calls]]
        name = "two"
        backend = "b1"
        path = "/"
        "#,
    ))
    .await;
    let r = gw.get("/flat").await;
    assert_eq!(r.json(), json!({"name": "second", "a": 1, "b": 2}));
}

#[tokio::test]
async fn calls_carry_the_request_id_trace_and_consumer_but_not_credentials() {
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[backends.b0]\nurls = [\"{}\"]\n\
         [auth.keys]\ntype = \"api_key\"\nkeys = [{{ id = \"acme\", sha256 = \"8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873\" }}]\n\
         [[routes]]\nname = \"r\"\npath = \"/r\"\nauth = \"keys\"\n[routes.aggregate]\n\
         [[routes.aggregate.calls]]\nname = \"one\"\nbackend = \"b0\"\npath = \"/one\"\n\
         [[routes.aggregate.calls]]\nname = \"two\"\nbackend = \"b0\"\npath = \"/two\"\n",
        backend.url()
    ))
    .await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = send(
        Request::get(gw.url("/r"))
            .header("x-api-key", "demo-key-acme")
            .header("x-request-id", "agg-test-1")
            .header("traceparent", trace)
            .header("cookie", "session=secret")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for call in ["one", "two"] {
        let h = &r.json()[call]["headers"];
        assert_eq!(h["x-request-id"], "agg-test-1");
        assert_eq!(h["traceparent"], trace);
        assert_eq!(h["x-consumer-id"], "acme");
        assert!(
            h.get("x-api-key").is_none() && h.get("cookie").is_none(),
            "{h}"
        );
    }
    // Authentication ran once, before the fan-out: no key, no call.
    let r = gw.get("/r").await;
    r.problem(401);
    assert_eq!(backend.count(), 2);
}

#[test]
fn validate_names_the_route_for_cycles_and_bad_templates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(
        &cfg,
        r#"[backends.b]
urls = ["http://127.0.0.1:9"]
[[routes]]
name = "loop"
path = "/loop/{id}"
[routes.aggregate]
[[routes.aggregate.calls]]
name = "a"
backend = "b"
path = "/a/{b.x}"
[[routes.aggregate.calls]]
name = "b"
backend = "b"
path = "/b/{a.y}"
[[routes]]
name = "bad"
path = "/bad/{id}"
[routes.aggregate]
[[routes.aggregate.calls]]
name = "a"
backend = "b"
path = "/a/{nobody.x}/{query}"
"#,
    )
    .unwrap();
    let out = fngate()
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[loop].aggregate.calls: the calls form a cycle: a -> b -> a"),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[bad].aggregate.calls[a].path: the placeholder `{nobody.x}` has no source"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_access_log_line_names_each_calls_outcome() {
    let user = describing(json!({})).await;
    let failing = status(500).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(&cfg, gateway_config(&[&user, &failing, &user], PARTIAL)).unwrap();
    let mut p = Proc::start(cfg.to_str().unwrap(), &["--log-format", "json"]);
    let r = send(
        Request::get(format!("http://{}/page", p.addr))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let line: Value = serde_json::from_str(&p.line_with("\"route\":\"page\"")).unwrap();
    assert_eq!(
        line["calls"],
        "user=ok orders=fallback ads=error history=skipped"
    );
    p.signal("-TERM");
    tokio::task::spawn_blocking(move || p.wait_exit())
        .await
        .unwrap();
}
