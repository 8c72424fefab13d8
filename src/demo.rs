//! `fngate demo`: small function backends on the loopback URLs of the config,
//! then the gateway in front of them, so a newcomer's first `curl` works.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::server::{ServeOptions, StartError};

/// Starts a demo function at every loopback endpoint of the config, then serves.
pub async fn run(config: Config, opts: ServeOptions) -> Result<(), StartError> {
    let mut functions: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    for b in &config.backends {
        for ep in &b.endpoints {
            let port = ep.authority.port_u16().unwrap_or(80);
            let host = ep.authority.host();
            let ip = if host == "localhost" {
                "127.0.0.1"
            } else {
                host
            };
            if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
                if ip.is_loopback() {
                    functions
                        .entry(SocketAddr::new(ip, port))
                        .or_default()
                        .push(b.name.to_string());
                }
            }
        }
    }
    for (addr, names) in functions {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                key: "backends (demo function)",
                addr,
                source,
            })?;
        tracing::info!(%addr, functions = %names.join(","), "demo function listening");
        tokio::spawn(function(listener, names.join(",")));
    }
    let gateway = crate::server::start(config, opts).await?;
    let base = format!("http://{}", gateway.addr);
    println!(
        "\nfngate demo is running. Try:\n\n  curl -i {base}/users/42\n  curl -i {base}/orders\n  curl -i -X POST {base}/orders -d '{{\"item\":\"book\"}}'\n  curl -i {base}/v1/orders/7/files/invoices/2026.pdf?dl=1\n  curl -i {base}/legacy/users/1\n  curl -i -X OPTIONS {base}/users/42 -H 'origin: http://localhost:3000' -H 'access-control-request-method: GET'\n  curl -i {base}/nope\n  curl -s http://{}/metrics | grep fngate_requests\n\nCtrl-C stops it.\n",
        gateway.admin_addr
    );
    crate::server::run_until_signalled(gateway).await;
    Ok(())
}

/// One demo function: answers JSON describing what it received.
async fn function(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let instance = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (name, instance) = (name.clone(), instance.clone());
                async move { Ok::<_, Infallible>(answer(req, &name, &instance).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, name: &str, instance: &str) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let json = serde_json::json!({
        "function": name,
        "instance": instance,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "body": String::from_utf8_lossy(&body),
        "seen_headers": {
            "host": header("host"),
            "x-request-id": header("x-request-id"),
            "traceparent": header("traceparent"),
            "x-forwarded-for": header("x-forwarded-for"),
            "x-function-name": header("x-function-name"),
        },
    });
    let mut res = Response::new(Full::new(Bytes::from(json.to_string())));
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // Shows `response_headers.remove` at work on the get-user route.
    headers.insert(
        "x-powered-by",
        http::HeaderValue::from_static("fngate-demo"),
    );
    res
}
