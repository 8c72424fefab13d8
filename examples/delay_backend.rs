//! A backend for bench/aggregate.py: answers every request with a small JSON
//! object after a fixed delay, like a function doing 10 ms of work.
//!
//!     cargo run --release --example delay_backend -- 10 127.0.0.1:9301 127.0.0.1:9302

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let delay: u64 = args
        .next()
        .ok_or("usage: delay_backend DELAY_MS LISTEN...")?
        .parse()?;
    let listens: Vec<String> = args.collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut servers = Vec::new();
            for listen in listens {
                let listener = TcpListener::bind(&listen).await?;
                servers.push(tokio::spawn(serve(listener, Duration::from_millis(delay))));
            }
            for s in servers {
                let _ = s.await;
            }
            Ok(())
        })
}

async fn serve(listener: TcpListener, delay: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                tokio::time::sleep(delay).await;
                let mut res = Response::new(Full::new(Bytes::from_static(
                    b"{\"ok\":true,\"items\":[1,2,3],\"segment\":\"gold\"}",
                )));
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(res)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
