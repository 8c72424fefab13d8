//! The floor for bench/: a bare hyper reverse proxy with no routing, no
//! headers work, no logging. `bench/run.py --bare` loads it beside fngate so
//! the cost of fngate's own layers can be read off the difference.
//!
//!     cargo run --release --example bare_proxy -- 127.0.0.1:8090 127.0.0.1:9101

use std::convert::Infallible;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: fngate::alloc::MiMalloc = fngate::alloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().ok_or("usage: bare_proxy LISTEN UPSTREAM")?;
    let upstream = args.next().ok_or("usage: bare_proxy LISTEN UPSTREAM")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            let client: Client<HttpConnector, Incoming> =
                Client::builder(TokioExecutor::new()).build_http();
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        let client = client.clone();
                        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let uri: Result<Uri, _> = format!("http://{upstream}{pq}").parse();
                        async move {
                            if let Ok(uri) = uri {
                                *req.uri_mut() = uri;
                            }
                            match client.request(req).await {
                                Ok(res) => {
                                    Ok::<_, Infallible>(res.map(http_body_util::Either::Left))
                                }
                                Err(_) => {
                                    let mut res = http::Response::new(
                                        http_body_util::Either::Right(http_body_util::Empty::new()),
                                    );
                                    *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                                    Ok(res)
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
