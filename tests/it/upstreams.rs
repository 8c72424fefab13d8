//! Upstreams over TLS with a private CA, HTTP/2 upstreams, and a gRPC unary
//! call whose trailers travel end to end.

use crate::common;

use std::convert::Infallible;

use bytes::Bytes;
use common::tls::{HttpsServer, TestCa};
use common::*;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Answers with the protocol version it was reached over.
async fn version_echo(req: Request<Incoming>) -> Response<BoxBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(
            serde_json::json!({ "version": format!("{:?}", req.version()), "path": req.uri().path() })
                .to_string(),
        ))
        .unwrap()
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path());
    let server = HttpsServer::start(ca.server_config(&["localhost"]), version_echo).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let config = |extra: &str| {
        format!(
            "[backends.b]\nurls = [\"{url}\"]\nretries = 0\n{extra}\n[[routes]]\nname = \"r\"\npath = \"/r\"\nbackend = \"b\"\n"
        )
    };
    // Trusted through `ca`, over HTTP/1.1 by default.
    let gw = Gw::start(&config(&format!("ca = \"{ca_path}\""))).await;
    let r = gw.get("/r").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/1.1");
    // protocol = "h2": ALPN agrees on HTTP/2.
    let gw2 = Gw::start(&config(&format!("ca = \"{ca_path}\"\nprotocol = \"h2\""))).await;
    let r = gw2.get("/r").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/2.0");
    // Without the CA (system roots only) the certificate is refused: 502.
    let gw3 = Gw::start(&config("")).await;
    gw3.get("/r").await.problem(502);
}

/// A gRPC-like function over h2c: checks the framing headers, answers one
/// message and then the status in trailers.
async fn grpc_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let te_ok = req.headers().get("te").is_some_and(|v| v == "trailers");
                    let grpc = req
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v == "application/grpc");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    // Echo the message back with a reply prefix, in gRPC framing.
                    let reply = [b"re:".as_slice(), &body[5..]].concat();
                    let mut framed = vec![0u8];
                    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&reply);
                    let mut trailers = HeaderMap::new();
                    trailers.insert(
                        "grpc-status",
                        if te_ok && grpc { "0" } else { "3" }.parse().unwrap(),
                    );
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = StreamBody::new(futures_stream(frames));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A stream of ready items, without a futures dependency.
fn futures_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Unpin {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn a_grpc_unary_call_passes_with_its_trailers() {
    let backend = grpc_backend().await;
    let gw = Gw::start(&format!(
        "[backends.grpc]\nurls = [\"http://{backend}\"]\nprotocol = \"h2\"\n\
         [[routes]]\nname = \"greeter\"\npath = \"/helloworld.Greeter/{{method}}\"\nmethods = [\"POST\"]\nbackend = \"grpc\"\n"
    ))
    .await;
    // A gRPC client: HTTP/2 with prior knowledge to the plain listener.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut message = vec![0u8, 0, 0, 0, 5];
    message.extend_from_slice(b"alice");
    let req = Request::post(format!("http://{}/helloworld.Greeter/SayHello", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(message)))
        .unwrap();
    let res = client.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(
        trailers["grpc-status"], "0",
        "te: trailers and the content type reached the function"
    );
    assert_eq!(trailers["grpc-message"], "ok");
    let body = collected.to_bytes();
    assert_eq!(&body[5..], b"re:alice");
}
