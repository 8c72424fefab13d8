//! Bad input: malformed heads, smuggling attempts, slow and idle clients.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_backend() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    for bad in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /x HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: x\r\nx-nul: a\0b\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
    ] {
        let r = raw(gw.addr, bad).await;
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "{:?} -> {r}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn differing_content_lengths_get_400() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let r = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn content_length_with_chunked_forwards_one_request_and_closes() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    // A classic CL.TE smuggle: the "body" per Content-Length hides a second request.
    let r = raw(
        gw.addr,
        b"POST /first HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        r.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then the connection closes: {r}"
    );
    let seen = b.seen();
    assert_eq!(seen.len(), 1, "the backend receives exactly one request");
    assert_eq!(seen[0].uri, "/first");
    assert!(seen[0].body_complete);
    assert!(seen.iter().all(|s| !s.uri.contains("smuggled")));
    assert_eq!(
        seen[0].headers.get("content-length"),
        None,
        "the ambiguous length is not forwarded"
    );
}

#[tokio::test]
async fn bad_chunking_aborts_the_upstream_request() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    // The upstream request has begun streaming; now the framing breaks.
    b.wait_for_heads(1).await;
    s.write_all(b"zz-not-hex\r\nmore\r\n").await.unwrap();
    let _ = read_to_close(&mut s).await;
    // The backend records the request once its body read ends: it must end in error.
    b.wait_for(1).await;
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].body_complete,
        "the upstream request must not be completed"
    );
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_after_header_read_timeout() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"30s\"\n{}",
        config(&b.url(), ANY)
    ))
    .await;
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let r = read_to_close(&mut s).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}: {r}"
    );
    assert_eq!(b.count(), 0);
    // A client that connects and says nothing is cut off the same way.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    read_to_close(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_idle_timeout_not_header_timeout() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&format!(
        "[server]\nheader_read_timeout = \"200ms\"\nidle_timeout = \"1s\"\n{}",
        config(&b.url(), ANY)
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let rest = read_to_close(&mut s).await;
    let idle = answered.elapsed();
    assert!(rest.is_empty(), "{rest}");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "an idle keep-alive connection lives idle_timeout (1s), not header_read_timeout: closed after {idle:?}"
    );
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening streams and resetting
/// them at once is cut off with a GOAWAY after a few dozen, other clients are
/// served throughout, and no connection of it stays behind.
#[tokio::test]
async fn http2_rapid_reset_leaves_nothing_behind_and_others_are_served() {
    // Slow enough that every forwarded stream is still waiting when it is reset.
    let slow = Backend::with(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        http::Response::new(full("late"))
    })
    .await;
    let fast = Backend::echo("fast").await;
    let gw = Gw::start(&format!(
        "{}[backends.fast]\nurls = [\"{}\"]\n\
         [[routes]]\nname = \"fast\"\npath = \"/fast\"\nbackend = \"fast\"\n",
        config(&slow.url(), ANY),
        fast.url()
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let addr = gw.addr;
    let flood = tokio::spawn(async move {
        let mut opened = 0;
        for _ in 0..5000 {
            let Ok(mut c) = client.clone().ready().await else {
                break; // the gateway ended the connection
            };
            let req = http::Request::get(format!("http://{addr}/slow"))
                .body(())
                .unwrap();
            let Ok((answer, mut stream)) = c.send_request(req, true) else {
                break;
            };
            // Let the connection task write the HEADERS, then reset the stream.
            tokio::task::yield_now().await;
            stream.send_reset(h2::Reason::CANCEL);
            drop(answer);
            opened += 1;
        }
        opened
    });
    let mut served = 0;
    while !flood.is_finished() || served == 0 {
        assert_eq!(gw.get("/fast").await.status, 200, "served during the flood");
        served += 1;
    }
    let opened = flood.await.unwrap();
    assert!(opened > 0, "no stream opened");
    // The gateway cut the flood off long before its 5000 streams: GOAWAY
    // ENHANCE_YOUR_CALM, as h2 answers too many resets.
    assert!(
        opened < 1000,
        "{opened} streams opened and reset before a GOAWAY"
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection ends")
        .expect("the connection task");
    let ended = ended.expect_err("the gateway ends the connection");
    // The gateway writes its GOAWAY and closes. A client still writing resets
    // may hit the closed socket (broken pipe, reset) before it reads the GOAWAY.
    if ended.is_io() {
        let kind = ended.get_io().map(std::io::Error::kind);
        assert!(
            matches!(
                kind,
                Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            ),
            "{ended}"
        );
    } else {
        assert_eq!(
            ended.reason(),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{ended}"
        );
        assert!(ended.is_go_away() && ended.is_remote(), "{ended}");
    }
    // The flood's connection is gone once the client is (and no other is left).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        let open = m
            .lines()
            .find(|l| l.starts_with("fngate_open_connections"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if open == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "connections still open:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slow.heads() <= opened,
        "{} heads for {opened} streams",
        slow.heads()
    );
}
