//! Long-lived exchanges: WebSocket upgrades pass through, over HTTP/1.1 and
//! HTTP/2; idle and overlong tunnels are closed. (Server-sent events stream
//! unbuffered: `proxy::bodies_stream_both_ways_without_buffering`.)

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo function.
async fn ws_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    addr
}

fn ws_config(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[server]\n{extra}\n[backends.ws]\nurls = [\"http://{backend}\"]\n\
         [[routes]]\nname = \"chat\"\npath = \"/chat\"\nbackend = \"ws\"\n"
    )
}

#[tokio::test]
async fn a_websocket_echo_passes_through_the_gateway() {
    let gw = Gw::start(&ws_config(ws_echo().await, "")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{}/chat", gw.addr), tcp)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    assert!(
        res.headers().get("x-request-id").is_some(),
        "the 101 went through the stack"
    );
    for text in ["hello", "through", "fngate"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2]
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn an_idle_websocket_is_closed() {
    let gw = Gw::start(&ws_config(
        ws_echo().await,
        "websocket_idle_timeout = \"1s\"",
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/chat", gw.addr), tcp)
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "one"
    );
    // Nothing moves: the gateway closes the tunnel (the stream ends or errors).
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the idle tunnel is closed");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_websocket_is_closed_at_its_maximum_lifetime_even_while_busy() {
    let gw = Gw::start(&ws_config(
        ws_echo().await,
        "websocket_max_lifetime = \"300ms\"",
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/chat", gw.addr), tcp)
        .await
        .unwrap();
    // Keep it busy: ping-pong until the gateway ends the tunnel.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if ws.send(Message::text("busy")).await.is_err() {
                return;
            }
            match ws.next().await {
                Some(Ok(Message::Text(_))) => {}
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived websocket_max_lifetime");
}

#[tokio::test]
async fn a_websocket_over_http2_reaches_an_http11_function() {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let gw = Gw::start(&ws_config(ws_echo().await, "")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One exchange first, so the server's SETTINGS (extended CONNECT allowed) have arrived.
    let warm = Request::get(format!("http://{}/nothing-here", gw.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    assert_eq!(h2.send_request(warm).await.unwrap().status(), 404);

    let mut req = Request::connect(format!("http://{}/chat", gw.addr))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200, "RFC 8441 answers 200, not 101");
    assert!(res.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(res).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "over h2");
}

/// A function that answers every request with a switch to h2c and then records
/// whatever bytes arrive on the switched connection: the smuggling target.
async fn switches_to_h2c() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
                if tcp.write_all(answer).await.is_err() {
                    return;
                }
                // Everything after the switch is what a smuggled request would look like.
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            });
        }
    });
    (addr, rx)
}

/// Sends `head` on a fresh connection and returns the first answer's text and the stream.
async fn first_answer(gw: &Gw, head: &[u8]) -> (String, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(head).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    (String::from_utf8_lossy(&answer[..n]).to_lowercase(), tcp)
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded_and_opens_no_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (backend, mut seen) = switches_to_h2c().await;
    let gw = Gw::start(&ws_config(backend, "")).await;
    let (answer, mut tcp) = first_answer(
        &gw,
        b"GET /chat HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings\r\n\
          upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    let head = seen.recv().await.unwrap().to_lowercase();
    assert!(!head.contains("h2c"), "h2c was forwarded: {head}");
    assert!(!head.contains("http2-settings"), "{head}");
    // The next bytes are a new request to the gateway (no route: 404), not tunnel data.
    tcp.write_all(b"GET /internal/secret HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut next = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut next))
        .await
        .unwrap()
        .unwrap();
    let next = String::from_utf8_lossy(&next[..n]).to_lowercase();
    assert!(next.starts_with("http/1.1 404"), "{next}");
    while let Ok(more) = seen.try_recv() {
        assert!(!more.contains("/internal/secret"), "tunnelled: {more}");
    }
}

#[tokio::test]
async fn a_101_to_anything_but_the_forwarded_websocket_upgrade_is_a_502() {
    let (backend, mut seen) = switches_to_h2c().await;
    let gw = Gw::start(&ws_config(backend, "")).await;
    // No upgrade asked at all.
    let (answer, _) = first_answer(&gw, b"GET /chat HTTP/1.1\r\nhost: gw\r\n\r\n").await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    // A WebSocket upgrade asked for, another protocol switched to.
    let (answer, _) = first_answer(
        &gw,
        b"GET /chat HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: WebSocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    seen.recv().await.unwrap();
    let head = seen.recv().await.unwrap().to_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
}
