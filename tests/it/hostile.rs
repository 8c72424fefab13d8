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
