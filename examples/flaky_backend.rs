//! A backend for bench/flaky.py: answers every second request with 503 (no
//! Retry-After), the rest with 200; deterministic, so runs compare.
//!
//!     cargo run --release --example flaky_backend -- 127.0.0.1:9201

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .ok_or("usage: flaky_backend LISTEN")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            let count = Arc::new(AtomicU64::new(0));
            loop {
                let (stream, _) = listener.accept().await?;
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = count.fetch_add(1, Ordering::Relaxed);
                        let mut res = Response::new(Full::new(Bytes::from_static(
                            b"hello from the function\n",
                        )));
                        if n % 2 == 1 {
                            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
