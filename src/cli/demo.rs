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
    let https = gateway.tls_addr.map_or(String::new(), |a| {
        format!(
            "  curl -i --cacert certs/ca.pem https://localhost:{}/users/42   # HTTPS (dev certificate)\n",
            a.port()
        )
    });
    println!(
        "\nfngate demo is running. Try:\n\n  curl -i {base}/users/42\n  curl -i {base}/orders\n  curl -i -X POST {base}/orders -d '{{\"item\":\"book\"}}'\n  curl -i {base}/v1/orders/7/files/invoices/2026.pdf?dl=1\n  curl -i {base}/legacy/users/1\n  curl -i {base}/me/orders -H \"authorization: Bearer $(cargo run -q --release -- token --sub alice --scope orders:read)\"\n  curl -i {base}/partner/orders -H 'x-api-key: demo-key-acme'\n  curl -i {base}/dashboard/42 -H \"authorization: Bearer $(cargo run -q --release -- token --sub alice)\"\n  curl -i -X OPTIONS {base}/users/42 -H 'origin: http://localhost:3000' -H 'access-control-request-method: GET'\n  curl -i {base}/nope\n  curl -i -X POST {base}/thumbnails -d 'cat.jpg'   # 202 and a job URL; then: curl -i {base}/jobs/<id>\n  curl -i {base}/events/orders -H 'ce-specversion: 1.0' -H 'ce-id: 1' -H 'ce-source: /shop' -H 'ce-type: com.example.order.created' -H 'content-type: application/json' -d '{{\"order\":17}}'\n{https}  curl -s http://{}/metrics | grep fngate_requests\n\nCtrl-C stops it.\n",
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
    // The background-job demo's function is slow on purpose.
    if name.split(',').any(|n| n == "thumbnails") {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
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
            "x-user-id": header("x-user-id"),
            "x-consumer-id": header("x-consumer-id"),
        },
    });
    let mut json = json;
    // A little data for the aggregate demo: users have a segment, recs have items.
    if let Some(id) = parts.uri.path().strip_prefix("/users/") {
        json["id"] = id.into();
        json["segment"] = if id.len() % 2 == 0 { "gold" } else { "silver" }.into();
    }
    if let Some(segment) = parts.uri.path().strip_prefix("/recs/") {
        json["items"] =
            serde_json::json!([format!("{segment}-pick-1"), format!("{segment}-pick-2")]);
    }
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

/// The demo policy's issuer and audience (routes.toml `[auth.demo]`).
pub const DEMO_ISSUER: &str = "https://demo.fngate.invalid/";
pub const DEMO_AUDIENCE: &str = "fngate-demo";

/// Mints an ES256 token with the development key in certs/ (kid `demo`).
/// Dev only: the private key is public, in this repository.
pub fn token(sub: &str, scope: Option<&str>, ttl: std::time::Duration) -> Result<String, String> {
    const KEY: &[u8] = include_bytes!("../../certs/demo-jwt.key.pem");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(KEY).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": sub,
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(scope) = scope {
        claims["scope"] = scope.into();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo".into());
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}
