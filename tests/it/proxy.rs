use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

#[tokio::test]
async fn forwarding_headers_request_id_and_traceparent_are_set() {
    std::env::set_var("FNGATE_TEST_FN_KEY", "from-env");
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\"]\nheaders = {{ \"x-functions-key\" = \"${{FNGATE_TEST_FN_KEY}}\" }}\n{ANY}",
        b.url()
    ))
    .await;
    let a = send(
        Request::get(gw.url("/x"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-functions-key", "client-forged")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        a.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        a.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        a.upstream_header("x-functions-key").as_deref(),
        Some("from-env"),
        "backend headers win"
    );
    let id = a
        .header("x-request-id")
        .expect("generated id echoed")
        .to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(a.upstream_header("x-request-id"), Some(id));
    let tp = a
        .upstream_header("traceparent")
        .expect("traceparent created");
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = send(
        Request::get(gw.url("/x"))
            .header("x-request-id", "client-id-1")
            .header("traceparent", tp)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.header("x-request-id"), Some("client-id-1"));
    assert_eq!(
        a.upstream_header("x-request-id").as_deref(),
        Some("client-id-1")
    );
    assert_eq!(a.upstream_header("traceparent").as_deref(), Some(tp));
    let a = send(
        Request::get(gw.url("/x"))
            .header("x-request-id", "bad id\"")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_ne!(
        a.header("x-request-id"),
        Some("bad id\""),
        "an insane id is replaced"
    );
}

#[tokio::test]
async fn trusted_proxies_decide_the_client_ip_but_forwarded_for_records_the_hop() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        config(&b.url(), ANY)
    ))
    .await;
    let a = send(
        Request::get(gw.url("/x"))
            .header("x-forwarded-for", "198.51.100.7")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        a.upstream_header("x-forwarded-for").as_deref(),
        Some("198.51.100.7, 127.0.0.1")
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let a = send(
        Request::get(gw.url("/x"))
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("proxy-authorization", "Basic Zm9v")
            .header("te", "trailers")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.upstream_header("x-private"), None);
    assert_eq!(a.upstream_header("proxy-authorization"), None);
    assert_eq!(
        a.upstream_header("te").as_deref(),
        Some("trailers"),
        "te: trailers is kept for gRPC"
    );
    // The echo backend names x-hop in Connection: it must not reach the client.
    assert_eq!(a.header("x-hop"), None);
    assert_eq!(a.header("x-backend"), Some("b"));
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    // Server-sent events: the backend sends its first event, then waits for a
    // signal before the next; the first must reach the client meanwhile.
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let b = Backend::with(move |_seen| {
        let rx = rx.clone();
        async move {
            let mut rx = rx.lock().await.take().expect("one request");
            let stream = async_stream(move |yield_| async move {
                yield_(Bytes::from("data: first\n\n")).await;
                rx.recv().await;
                yield_(Bytes::from("data: second\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(stream)
                .unwrap()
        }
    })
    .await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let client: hyper_util::client::legacy::Client<_, BoxBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let res = client
        .request(Request::get(gw.url("/events")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event arrives while the backend is still open")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\n");

    // Upload: a chunked body larger than the replay buffer streams through whole.
    let big = vec![b'x'; 300_000];
    let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = big
        .chunks(10_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_stream(chunks)).boxed();
    let echo = Backend::echo("e").await;
    let gw2 = Gw::start(&config(&echo.url(), ANY)).await;
    let a = send(Request::post(gw2.url("/up")).body(body).unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(echo.seen()[0].body.len(), 300_000);
}

#[tokio::test]
async fn oversized_bodies_get_413_with_content_length_or_chunked() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[server]\nmax_body = \"1KiB\"\n{}",
        config(&b.url(), ANY)
    ))
    .await;
    let a = send(
        Request::post(gw.url("/x"))
            .body(full(vec![b'a'; 2048]))
            .unwrap(),
    )
    .await;
    a.problem(413);
    let chunk = "a".repeat(0x400);
    let head = format!("POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n400\r\n{chunk}\r\n400\r\n{chunk}\r\n0\r\n\r\n");
    let r = raw(gw.addr, head.as_bytes()).await;
    // 0x400 + 0x400 bytes > 1 KiB: refused while streaming, never completed upstream.
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(b
        .seen()
        .iter()
        .all(|s| !s.body_complete || s.body.len() <= 1024));
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[server]\nmax_header_size = \"8KiB\"\n{}",
        config(&b.url(), ANY)
    ))
    .await;
    let big = "a".repeat(10_000);
    let r = raw(
        gw.addr,
        format!("GET /x HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn dead_backend_gets_502_and_slow_backend_gets_504() {
    let dead = dead_addr().await;
    let slow = Backend::with(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(empty())
    })
    .await;
    let gw = Gw::start(&format!(
        r#"
        [backends.dead]
        urls = ["http://{dead}"]
        [backends.slow]
        urls = ["{}"]
        timeout = "300ms"
        retries = 0
        [[routes]]
        name = "dead"
        path = "/dead"
        backend = "dead"
        [[routes]]
        name = "slow"
        path = "/slow"
        backend = "slow"
        [[routes]]
        name = "slow-route"
        path = "/slow-route"
        backend = "slow"
        timeout = "100ms"
        "#,
        slow.url()
    ))
    .await;
    let p = gw.get("/dead").await.problem(502);
    assert!(
        !p["detail"].as_str().unwrap().contains("127.0.0.1"),
        "internal detail does not leak: {p}"
    );
    gw.get("/slow").await.problem(504);
    let started = std::time::Instant::now();
    gw.get("/slow-route").await.problem(504);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn retries_go_to_another_endpoint_and_round_robin_spreads_load() {
    let dead = dead_addr().await;
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let gw = Gw::start(&format!(
        r#"
        [backends.pool]
        urls = ["http://{dead}", "{}"]
        retries = 1
        [backends.rr]
        urls = ["{}", "{}"]
        [[routes]]
        name = "pool"
        path = "/pool"
        backend = "pool"
        [[routes]]
        name = "rr"
        path = "/rr"
        backend = "rr"
        "#,
        one.url(),
        one.url(),
        two.url()
    ))
    .await;
    for _ in 0..4 {
        let a = gw.get("/pool").await;
        assert_eq!(a.status, 200, "a dead endpoint is retried on the live one");
    }
    // A POST with a streamed body is retried after a connect failure too: it was never read.
    for _ in 0..2 {
        let chunks: Vec<Chunk> = vec![Ok(Frame::data(Bytes::from("payload")))];
        let body = StreamBody::new(futures_stream(chunks)).boxed();
        let a = send(Request::post(gw.url("/pool")).body(body).unwrap()).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["body"], "payload");
    }
    let before = (one.count(), two.count());
    for _ in 0..6 {
        gw.get("/rr").await;
    }
    assert_eq!(one.count() - before.0, 3);
    assert_eq!(two.count() - before.1, 3);
}

#[tokio::test]
async fn idempotent_requests_retry_on_502_but_posts_do_not() {
    let bad =
        Backend::with(|_| async { Response::builder().status(502).body(full("bad")).unwrap() })
            .await;
    let good = Backend::echo("good").await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 1\n{ANY}",
        bad.url(),
        good.url()
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let statuses: Vec<u16> = futures_join(
        (0..2)
            .map(|_| send(Request::post(gw.url("/x")).body(full("p")).unwrap()))
            .collect(),
    )
    .await
    .iter()
    .map(|a| a.status.as_u16())
    .collect();
    assert!(
        statuses.contains(&502),
        "a POST answered 502 is passed on: {statuses:?}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let client: hyper_util::client::legacy::Client<_, BoxBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let res = client
        .request(Request::get(gw.url("/h2")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["uri"], "/h2");
    assert_eq!(json["headers"]["host"], b.addr.to_string());
}

#[tokio::test]
async fn an_h2_answer_sends_its_request_id_never_indexed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
                                                         // :method GET, :scheme http (static table), :path /h2 (a literal, not indexed).
    let block = [&[0x82, 0x86, 0x04, 3][..], b"/h2"].concat();
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]); // HEADERS, END_STREAM|END_HEADERS
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();
    let block = loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await.unwrap();
        if head[3] == 1 {
            break payload;
        }
    };
    // RFC 7541 §6: walk the representations, counting the never-indexed ones.
    fn int(buf: &[u8], i: &mut usize, bits: u32) -> usize {
        let mask = (1usize << bits) - 1;
        let mut v = usize::from(buf[*i]) & mask;
        *i += 1;
        if v == mask {
            let mut shift = 0;
            loop {
                let b = buf[*i];
                *i += 1;
                v += usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        v
    }
    let skip_string = |i: &mut usize| {
        let len = int(&block, i, 7);
        *i += len;
    };
    let (mut i, mut fields, mut never) = (0, 0, 0);
    while i < block.len() {
        let first = block[i];
        if first & 0x80 != 0 {
            int(&block, &mut i, 7);
        } else if first & 0x20 != 0 && first & 0x40 == 0 {
            int(&block, &mut i, 5); // a table size update, no field
            continue;
        } else {
            let bits = if first & 0x40 != 0 { 6 } else { 4 };
            if int(&block, &mut i, bits) == 0 {
                skip_string(&mut i);
            }
            skip_string(&mut i);
            never += usize::from(first & 0xf0 == 0x10);
        }
        fields += 1;
    }
    assert!(fields >= 4, "{fields} fields in {block:?}");
    // x-request-id, new on every answer, stays out of the connection's table.
    assert_eq!(never, 1, "{block:?}");
}

// --- small stream helpers, so the tests need no extra crates ---

type Chunk = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

fn futures_stream(items: Vec<Chunk>) -> impl futures_core::Stream<Item = Chunk> + Send + Sync {
    let mut items = std::collections::VecDeque::from(items);
    poll_stream(move |_| std::task::Poll::Ready(items.pop_front()))
}

/// A body whose frames come from an async producer.
fn async_stream<F, Fut>(producer: F) -> BoxBody
where
    F: FnOnce(
        Box<
            dyn Fn(Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
                + Send
                + Sync,
        >,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let yield_ = Box::new(move |b: Bytes| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(b).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    });
    tokio::spawn(producer(yield_));
    let stream = poll_stream(move |cx| rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
    StreamBody::new(stream).boxed()
}

fn poll_stream<T, F>(f: F) -> PollStream<F>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<T>>,
{
    PollStream(f)
}

struct PollStream<F>(F);

impl<T, F> futures_core::Stream for PollStream<F>
where
    F: FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Option<T>> + Unpin,
{
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        (self.0)(cx)
    }
}

async fn futures_join<T>(futs: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn h2_streams_in_flight_finish_when_the_gateway_drains() {
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let r = release.clone();
    let slow = Backend::with(move |_| {
        let r = r.clone();
        async move {
            let _permit = r.acquire().await;
            Response::new(full("finished"))
        }
    })
    .await;
    let gw = Gw::start(&config(&slow.url(), ANY)).await;
    let client: hyper_util::client::legacy::Client<_, BoxBody> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let url = gw.url("/slow");
    let c = client.clone();
    let in_flight =
        tokio::spawn(async move { c.request(Request::get(url).body(empty()).unwrap()).await });
    slow.wait_for_heads(1).await;

    gw.gateway.as_ref().unwrap().shutdown();
    // The drain has begun once the listener refuses connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New streams are refused (GOAWAY, then the closed listener)...
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(Request::get(gw.url("/late")).body(empty()).unwrap()),
    )
    .await
    .expect("answered or refused in time");
    assert!(
        refused.is_err() || refused.is_ok_and(|r| r.status() != 200),
        "no new work after the drain began"
    );
    // ...while the stream already in flight finishes.
    release.add_permits(2);
    let res = in_flight
        .await
        .unwrap()
        .expect("the in-flight stream completes");
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "finished"
    );
    assert_eq!(slow.heads(), 1);
}

/// A chunked body of `mib` MiB in 64 KiB frames, never held whole by the client.
fn streamed_mib(mib: usize) -> BoxBody {
    let frames = (0..mib * 16).map(|_| Ok(Frame::data(Bytes::from(vec![b's'; 64 << 10]))));
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn a_route_max_body_overrides_the_server_limit_and_zero_lifts_it() {
    // The backend answers with the length it received, so nothing big is echoed back.
    let b = Backend::with(|seen: Seen| async move {
        Response::new(full(format!("{} {}", seen.body_complete, seen.body.len())))
    })
    .await;
    let gw = Gw::start(&format!(
        "[server]\nmax_body = \"16MiB\"\n[backends.b]\nurls = [\"{}\"]\n\
         [[routes]]\nname = \"stream\"\npath = \"/stream\"\nbackend = \"b\"\nmax_body = 0\n\
         [[routes]]\nname = \"small\"\npath = \"/small\"\nbackend = \"b\"\nmax_body = \"1KiB\"\n\
         [[routes]]\nname = \"default\"\npath = \"/default\"\nbackend = \"b\"\n",
        b.url()
    ))
    .await;
    let post = |path: &str, body: BoxBody| send(Request::post(gw.url(path)).body(body).unwrap());
    let a = post("/stream", streamed_mib(24)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), format!("true {}", 24 << 20));
    post("/default", streamed_mib(24)).await.problem(413);
    post("/small", full(vec![b'a'; 2048])).await.problem(413);
    assert_eq!(post("/small", full(vec![b'a'; 1024])).await.status, 200);
}

/// One route, `/small`, that takes bodies of up to 1 KiB.
fn small_route(b: &Backend) -> String {
    format!(
        "[backends.b]\nurls = [\"{}\"]\n\
         [[routes]]\nname = \"small\"\npath = \"/small\"\nbackend = \"b\"\nmax_body = \"1KiB\"\n",
        b.url()
    )
}

/// A client that sends its whole body before it reads (curl, most SDKs) still
/// reads the early 413: the gateway reads and discards the rest instead of
/// closing on unread bytes, which would reset the connection and lose it.
#[tokio::test]
async fn an_early_413_reaches_a_client_still_sending_its_body() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&small_route(&b)).await;
    let size = 8 << 20;
    let head = format!("POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    let mut s = sent(gw.addr, head.as_bytes()).await;
    // Far more than the socket buffers hold: written only if the gateway reads on.
    let chunk = vec![b'a'; 64 << 10];
    for _ in 0..size / chunk.len() {
        tokio::io::AsyncWriteExt::write_all(&mut s, &chunk)
            .await
            .expect("the gateway reads the rest of the body");
    }
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(b.count(), 0);
}

/// The lingering read is bounded: a client that never stops sending is cut
/// off (at 5 s), after it got its 413.
#[tokio::test]
async fn a_client_that_never_stops_sending_is_cut_off_after_its_413() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&small_route(&b)).await;
    let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    let started = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let head = "POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000000\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut tx, head.as_bytes()).await?;
        let chunk = vec![b'a'; 64 << 10];
        loop {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &chunk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut answer),
    )
    .await
    .expect("the gateway closes its side");
    assert!(read.is_ok(), "{read:?}");
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let cut = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the gateway stops reading")
        .unwrap();
    assert!(cut.is_err());
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(4), "cut off after {after:?}");
}

/// `workers = 2`: each worker accepts on a socket of its own and keeps upstream
/// connections of its own. Sequential requests, each on a new client
/// connection the kernel hands to either worker, end on two upstream
/// connections: one per worker, each reused. (One shared pool kept one; all 24
/// on one worker has odds of 2^-23.)
#[tokio::test]
async fn each_worker_serves_and_keeps_its_own_upstream_connection() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = counting_backend().await;
    let gw = Gw::start(&format!("[server]\nworkers = 2\n{}", config(&url, ANY))).await;
    for _ in 0..24 {
        assert_eq!(gw.get("/a").await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one upstream connection per worker"
    );
}
