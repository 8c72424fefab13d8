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
