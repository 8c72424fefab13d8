//! Events (SPEC §8): published once, delivered to every matching subscriber;
//! deliveries checked with the CloudEvents SDK's own HTTP binding parser.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudevents::AttributesReader as _;
use http::{Request, Response};

use crate::common::*;

/// Topic `orders` with the given subscriptions (TOML after the topic), store in `dir`.
fn events_config(dir: &tempfile::TempDir, rest: &str) -> String {
    format!(
        "[store]\npath = \"{}/jobs.db\"\n[topics.orders]\n{rest}",
        dir.path().display()
    )
}

fn backend_toml(name: &str, url: &str) -> String {
    format!("[backends.{name}]\nurls = [\"{url}\"]\nretries = 0\n")
}

fn subscription(name: &str, backend: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nname = \"{name}\"\ntopic = \"orders\"\nbackend = \"{backend}\"\npath = \"/hook/{name}\"\n{extra}\n"
    )
}

/// Topic `orders` (with `topic_extra`) and one subscription `all` to `fun`.
async fn one_subscriber(dir: &tempfile::TempDir, fun: &Backend, topic_extra: &str) -> Gw {
    let rest = format!(
        "{topic_extra}{}{}",
        backend_toml("fn", &fun.url()),
        subscription("all", "fn", "")
    );
    Gw::start(&events_config(dir, &rest)).await
}

async fn publish(gw: &Gw, topic: &str, headers: &[(&str, &str)], body: &'static str) -> Answer {
    let mut req = Request::post(gw.url(&format!("/events/{topic}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(full(body)).unwrap()).await
}

const BINARY: [(&str, &str); 5] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "order-1"),
    ("ce-source", "/shop"),
    ("ce-type", "com.example.order.created"),
    ("content-type", "application/json"),
];

/// The delivery as an SDK receiver reads it.
fn sdk_event(seen: &Seen) -> cloudevents::Event {
    cloudevents::binding::http::to_event(&seen.headers, seen.body.to_vec())
        .unwrap_or_else(|e| panic!("not a CloudEvent: {e}: {:?}", seen.headers))
}

#[tokio::test]
async fn a_binary_event_reaches_every_subscriber_in_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let billing = Backend::echo("billing").await;
    let audit = Backend::echo("audit").await;
    let config = events_config(
        &dir,
        &format!(
            "{}{}{}{}",
            backend_toml("billing", &billing.url()),
            backend_toml("audit", &audit.url()),
            subscription("billing", "billing", ""),
            subscription("audit", "audit", "format = \"structured\""),
        ),
    );
    let gw = Gw::start(&config).await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = BINARY.to_vec();
    headers.push(("traceparent", tp));
    headers.push(("ce-subject", "caf%C3%A9"));
    let a = publish(&gw, "orders", &headers, r#"{"order":17}"#).await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(
        a.json(),
        serde_json::json!({"ids": ["order-1"], "deliveries": 2})
    );
    billing.wait_for(1).await;
    audit.wait_for(1).await;

    let b = &billing.seen()[0];
    assert_eq!(b.uri, "/hook/billing");
    let e = sdk_event(b);
    assert_eq!(e.id(), "order-1");
    assert_eq!(e.source().to_string(), "/shop");
    assert_eq!(e.ty(), "com.example.order.created");
    // Percent-encoded as the HTTP binding says (the SDK hands it over undecoded).
    assert_eq!(e.subject(), Some("caf%C3%A9"));
    assert_eq!(e.datacontenttype(), Some("application/json"));
    assert_eq!(b.body.as_ref(), br#"{"order":17}"#);
    assert_eq!(b.headers["idempotency-key"], "\"/shop order-1\"");
    assert_eq!(b.headers["x-fngate-attempt"], "1");
    assert_eq!(
        &b.headers["traceparent"].to_str().unwrap()[..36],
        &tp[..36],
        "in the publisher's trace"
    );

    let s = &audit.seen()[0];
    assert_eq!(
        s.headers["content-type"], "application/cloudevents+json",
        "structured mode"
    );
    let e = sdk_event(s);
    assert_eq!(e.id(), "order-1");
    match e.data() {
        Some(cloudevents::Data::Json(v)) => assert_eq!(v, &serde_json::json!({"order": 17})),
        other => panic!("{other:?}"),
    }
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_events_total{topic="orders",outcome="accepted"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn structured_batch_and_plain_json_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = one_subscriber(&dir, &fun, "").await;
    let structured = r#"{"specversion":"1.0","id":"s1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hello"}"#;
    let a = publish(
        &gw,
        "orders",
        &[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )],
        structured,
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    fun.wait_for(1).await;
    let e = sdk_event(&fun.seen()[0]);
    assert_eq!(e.id(), "s1");
    assert_eq!(fun.seen()[0].body.as_ref(), b"hello");

    let batch = r#"[{"specversion":"1.0","id":"b1","source":"/s","type":"t"},
                    {"specversion":"1.0","id":"b2","source":"/s","type":"t","data_base64":"AAEC"}]"#;
    let a = publish(
        &gw,
        "orders",
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(
        a.json(),
        serde_json::json!({"ids": ["b1", "b2"], "deliveries": 2})
    );
    fun.wait_for(3).await;
    let bodies: Vec<Vec<u8>> = fun.seen().iter().map(|s| s.body.to_vec()).collect();
    assert!(bodies.contains(&vec![0, 1, 2]), "data_base64 decoded");

    let a = publish(
        &gw,
        "orders",
        &[("content-type", "application/json")],
        r#"{"total": 3}"#,
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let id = a.json()["ids"][0].as_str().unwrap().to_owned();
    fun.wait_for(4).await;
    let seen = fun
        .seen()
        .into_iter()
        .find(|s| s.headers.get("ce-id").is_some_and(|v| v == id.as_str()))
        .expect("the wrapped event");
    let e = sdk_event(&seen);
    assert_eq!(e.source().to_string(), "/fngate/topics/orders");
    assert_eq!(e.ty(), "orders");
    assert_eq!(seen.body.as_ref(), br#"{"total":3}"#);
}

#[tokio::test]
async fn bad_events_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = one_subscriber(
        &dir,
        &fun,
        "max_event = \"64KiB\"
",
    )
    .await;
    for (missing, _) in &BINARY[..4] {
        let headers: Vec<_> = BINARY
            .iter()
            .filter(|(k, _)| k != missing)
            .copied()
            .collect();
        let a = publish(&gw, "orders", &headers, "{}").await;
        let attr = missing.strip_prefix("ce-").unwrap();
        // Without ce-specversion it is no longer binary mode: plain JSON, accepted.
        if attr == "specversion" {
            assert_eq!(a.status, 202, "{}", a.text());
            continue;
        }
        let p = a.problem(400);
        assert!(p["detail"].as_str().unwrap().contains(attr), "{p}");
    }
    let mut v03 = BINARY.to_vec();
    v03[0].1 = "0.3";
    let p = publish(&gw, "orders", &v03, "{}").await.problem(400);
    assert!(p["detail"].as_str().unwrap().contains("specversion"), "{p}");
    let p = publish(
        &gw,
        "orders",
        &[("content-type", "application/cloudevents+json")],
        r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","time":"noon"}"#,
    )
    .await
    .problem(400);
    assert!(p["detail"].as_str().unwrap().contains("time"), "{p}");
    publish(
        &gw,
        "orders",
        &[("content-type", "application/json")],
        "{not json",
    )
    .await
    .problem(400);
    publish(&gw, "orders", &[("content-type", "text/plain")], "hi")
        .await
        .problem(415);
    let big: &'static str = Box::leak(format!("\"{}\"", "x".repeat(70 << 10)).into_boxed_str());
    publish(&gw, "orders", &[("content-type", "application/json")], big)
        .await
        .problem(413);
    publish(&gw, "nope", &[("content-type", "application/json")], "{}")
        .await
        .problem(404);
    let get = gw.get("/events/orders").await;
    get.problem(405);
    assert_eq!(get.header("allow"), Some("POST"));
    // Only the plain-JSON publish above was stored.
    fun.wait_for(1).await;
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_events_total{topic="orders",outcome="accepted"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn filters_choose_subscribers_by_type_source_and_subject() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let config = events_config(
        &dir,
        &format!(
            "{}{}{}{}",
            backend_toml("fn", &fun.url()),
            subscription(
                "created",
                "fn",
                "filter = { type = \"com.example.order.created\" }"
            ),
            subscription(
                "eu",
                "fn",
                "filter = { source_prefix = \"/shop/eu/\", subject_prefix = \"vip-\" }"
            ),
            subscription("all", "fn", ""),
        ),
    );
    let gw = Gw::start(&config).await;
    let cases: [(&str, &str, Option<&str>, usize); 4] = [
        ("com.example.order.created", "/shop/us/1", None, 2),
        ("com.example.order.paid", "/shop/eu/2", Some("vip-ann"), 2),
        ("com.example.order.paid", "/shop/eu/3", Some("bob"), 1),
        ("com.example.order.created", "/shop/eu/4", Some("vip-cy"), 3),
    ];
    let mut total = 0;
    for (i, (ty, source, subject, n)) in cases.iter().enumerate() {
        let id = format!("e{i}");
        let mut req = Request::post(gw.url("/events/orders"))
            .header("ce-specversion", "1.0")
            .header("ce-id", &id)
            .header("ce-source", *source)
            .header("ce-type", *ty);
        if let Some(s) = subject {
            req = req.header("ce-subject", *s);
        }
        let a = send(req.body(empty()).unwrap()).await;
        assert_eq!(a.json()["deliveries"], *n, "{ty} {source} {subject:?}");
        total += n;
    }
    fun.wait_for(total).await;
    let mut by_hook: Vec<(String, String)> = fun
        .seen()
        .iter()
        .map(|s| {
            (
                s.uri.clone(),
                s.headers["ce-id"].to_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_hook.sort();
    assert_eq!(
        by_hook,
        [
            ("/hook/all", "e0"),
            ("/hook/all", "e1"),
            ("/hook/all", "e2"),
            ("/hook/all", "e3"),
            ("/hook/created", "e0"),
            ("/hook/created", "e3"),
            ("/hook/eu", "e1"),
            ("/hook/eu", "e3"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[tokio::test]
async fn the_same_source_and_id_within_the_window_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = one_subscriber(&dir, &fun, "").await;
    let a = publish(&gw, "orders", &BINARY, "{}").await;
    assert_eq!(a.json()["deliveries"], 1);
    let again = publish(&gw, "orders", &BINARY, "{}").await;
    assert_eq!(again.status, 202);
    assert_eq!(
        again.json(),
        serde_json::json!({"ids": ["order-1"], "deliveries": 0})
    );
    // Another source with the same id is another event.
    let mut other = BINARY.to_vec();
    other[2].1 = "/elsewhere";
    assert_eq!(
        publish(&gw, "orders", &other, "{}").await.json()["deliveries"],
        1
    );
    fun.wait_for(2).await;
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_events_total{topic="orders",outcome="duplicate"} 1"#),
        "{m}"
    );
    assert_eq!(fun.count(), 2);
}

#[tokio::test]
async fn an_event_whose_publisher_hung_up_at_once_is_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = one_subscriber(&dir, &fun, "").await;
    let mut head = String::from("POST /events/orders HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n");
    for (k, v) in BINARY {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n{}");
    let s = sent(gw.addr, head.as_bytes()).await;
    // Whole, then gone: hyper drops the request's future, often unpolled.
    drop(s);
    fun.wait_for(1).await;
    assert_eq!(sdk_event(&fun.seen()[0]).id(), "order-1");
}

#[tokio::test]
async fn a_dead_subscriber_neither_delays_a_live_one_nor_loses_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let live = Backend::echo("live").await;
    let dead = dead_addr().await;
    let config = events_config(
        &dir,
        &format!(
            "{}{}{}{}",
            backend_toml("live", &live.url()),
            backend_toml("dead", &format!("http://{dead}")),
            subscription("live", "live", ""),
            subscription(
                "dead",
                "dead",
                "[subscriptions.delivery]\nattempts = 2\nbackoff = [\"10ms\", \"10ms\"]"
            ),
        ),
    );
    let gw = Gw::start(&config).await;
    let started = Instant::now();
    for i in 0..20 {
        let id: &'static str = Box::leak(format!("e{i}").into_boxed_str());
        let mut h = BINARY.to_vec();
        h[1].1 = id;
        assert_eq!(
            publish(&gw, "orders", &h, "{}").await.json()["deliveries"],
            2
        );
    }
    live.wait_for(20).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The dead one's deliveries run out their attempts and are dead letters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = send(
            Request::get(format!("http://{}/jobs?state=dead&route=dead", gw.admin))
                .body(empty())
                .unwrap(),
        )
        .await
        .json();
        if list["jobs"].as_array().unwrap().len() == 20 {
            break list;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(list["jobs"][0]["attempts"], 2);
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_deliveries_total{subscription="dead",outcome="dead"} 20"#),
        "{m}"
    );
    assert!(
        m.contains(r#"fngate_deliveries_total{subscription="live",outcome="succeeded"} 20"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_410_pauses_the_subscription_until_it_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let g = gone.clone();
    let fun = Backend::with(move |_req| {
        let g = g.clone();
        async move {
            let status = if g.load(Ordering::SeqCst) { 410 } else { 200 };
            Response::builder().status(status).body(full("")).unwrap()
        }
    })
    .await;
    let config = events_config(
        &dir,
        &format!(
            "{}{}",
            backend_toml("fn", &fun.url()),
            subscription("hook", "fn", "")
        ),
    );
    let gw = Gw::start(&config).await;
    publish(&gw, "orders", &BINARY, "{}").await;
    fun.wait_for(1).await;
    let sub = |gw: &Gw| {
        let url = format!("http://{}/subscriptions/hook", gw.admin);
        async move { send(Request::get(url).body(empty()).unwrap()).await.json() }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sub(&gw).await["paused"] != true {
        assert!(Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Events keep arriving and are kept, not delivered.
    let mut second = BINARY.to_vec();
    second[1].1 = "order-2";
    publish(&gw, "orders", &second, "{}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fun.count(), 1, "nothing goes to a paused subscription");

    gone.store(false, Ordering::SeqCst);
    let r = send(
        Request::post(format!("http://{}/subscriptions/hook/resume", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    fun.wait_for(3).await;
    let ids: Vec<String> = fun.seen()[1..]
        .iter()
        .map(|s| s.headers["ce-id"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&"order-1".to_owned()) && ids.contains(&"order-2".to_owned()),
        "{ids:?}"
    );
    assert_eq!(sub(&gw).await["paused"], false);
}

#[tokio::test]
async fn events_of_one_partition_key_are_delivered_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let (i, o) = (in_flight.clone(), overlap.clone());
    let fun = Backend::with(move |_seen: Seen| {
        let (i, o) = (i.clone(), o.clone());
        async move {
            if i.fetch_add(1, Ordering::SeqCst) > 0 {
                o.fetch_add(1, Ordering::SeqCst);
            }
            // A random latency, so an unordered deliverer would reorder them.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..15))).await;
            i.fetch_sub(1, Ordering::SeqCst);
            Response::new(full(""))
        }
    })
    .await;
    let config = events_config(
        &dir,
        &format!(
            "{}{}",
            backend_toml("fn", &fun.url()),
            subscription(
                "ordered",
                "fn",
                "ordering = \"partitionkey\"\n[subscriptions.delivery]\nconcurrency = 16"
            )
        ),
    );
    let gw = Gw::start(&config).await;
    let n = 30;
    for i in 0..n {
        let id: &'static str = Box::leak(format!("{i}").into_boxed_str());
        let mut h = BINARY.to_vec();
        h[1].1 = id;
        h.push(("ce-partitionkey", "customer-7"));
        assert_eq!(publish(&gw, "orders", &h, "{}").await.status, 202);
    }
    fun.wait_for(n).await;
    let order: Vec<usize> = fun
        .seen()
        .iter()
        .map(|s| s.headers["ce-id"].to_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "accepted order");
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "one at a time");
}

#[tokio::test]
async fn subscriptions_and_topics_are_validated_with_their_position() {
    let cases = [
        (
            "[topics.orders]\n[[subscriptions]]\nname = \"s\"\ntopic = \"nope\"\nbackend = \"b\"\n[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n",
            "unknown topic `nope`",
        ),
        (
            "[topics.orders]\nmax_event = \"1KiB\"\n",
            "at least 64KiB",
        ),
        (
            "[topics.orders]\n[[subscriptions]]\nname = \"s\"\ntopic = \"orders\"\nbackend = \"b\"\nformat = \"xml\"\n[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n",
            "`xml` is not one of",
        ),
        (
            "[topics.orders]\n[[subscriptions]]\nname = \"s\"\ntopic = \"orders\"\nbackend = \"b\"\nfilter = { kind = \"x\" }\n[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n",
            "subscriptions[s].filter.kind",
        ),
        (
            "[topics.orders]\n[[subscriptions]]\nname = \"w\"\ntopic = \"orders\"\nbackend = \"b\"\n[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"w\"\npath = \"/w\"\nbackend = \"b\"\n",
            "names a subscription or schedule too",
        ),
        (
            "[topics.t]\n[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"e\"\npath = \"/events/x\"\nbackend = \"b\"\n",
            "server.events_path",
        ),
    ];
    // Without a topic, events_path is any route's to use.
    fngate::Config::parse(
        "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"e\"\npath = \"/events/x\"\nbackend = \"b\"\n",
        "r.toml",
        &|_| None,
    )
    .expect("no topic: allowed");
    for (text, expected) in cases {
        let err = fngate::Config::parse(text, "r.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{expected:?} in {err}");
        assert!(err.contains("r.toml:"), "{err}");
    }
}

#[tokio::test]
async fn an_event_accepted_while_its_subscriber_is_down_is_delivered_after_a_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Bound, not listening: refused until the subscriber comes up on it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        events_config(
            &dir,
            &format!(
                "{}{}",
                backend_toml("fn", &format!("http://{addr}")),
                subscription(
                    "hook",
                    "fn",
                    "[subscriptions.delivery]\nbackoff = [\"50ms\", \"100ms\"]"
                )
            ),
        ),
    )
    .unwrap();
    let config = path.display().to_string();
    let mut first = Proc::start(&config, &[]);
    let mut req = Request::post(format!("http://{}/events/orders", first.addr));
    for (k, v) in BINARY {
        req = req.header(k, v);
    }
    let a = send(req.body(full(r#"{"order":1}"#)).unwrap()).await;
    assert_eq!(a.json()["deliveries"], 1, "{}", a.text());
    first.line_with("outcome=\"retried\"");
    first.signal("-9");
    first.wait_exit();
    let fun = Backend::on(socket.listen(64).unwrap(), |_| async {
        Response::new(full(""))
    });
    let second = Proc::start(&config, &[]);
    fun.wait_for(1).await;
    let e = sdk_event(&fun.seen()[0]);
    assert_eq!(e.id(), "order-1");
    assert_eq!(fun.seen()[0].body.as_ref(), br#"{"order":1}"#);
    drop(second);
}

#[tokio::test]
async fn a_topics_auth_decides_who_may_publish() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    // sha256("demo-key-acme"), as in the shipped routes.toml.
    let auth = "[auth.partners]\ntype = \"api_key\"\nheader = \"x-api-key\"\n\
                keys = [{ id = \"acme\", sha256 = \"8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873\" }]\n";
    let config = format!(
        "{auth}{}",
        events_config(
            &dir,
            &format!(
                "auth = \"partners\"\n{}{}",
                backend_toml("fn", &fun.url()),
                subscription("all", "fn", "")
            )
        )
    );
    let gw = Gw::start(&config).await;
    let json = [("content-type", "application/json")];
    publish(&gw, "orders", &json, "{}").await.problem(401);
    let wrong = [("content-type", "application/json"), ("x-api-key", "nope")];
    publish(&gw, "orders", &wrong, "{}").await.problem(401);
    let key = [
        ("content-type", "application/json"),
        ("x-api-key", "demo-key-acme"),
    ];
    let a = publish(&gw, "orders", &key, "{}").await;
    assert_eq!(a.status, 202, "{}", a.text());
    fun.wait_for(1).await;
    assert!(
        fun.seen()[0].headers.get("x-api-key").is_none(),
        "the publisher's key does not reach subscribers"
    );
}
