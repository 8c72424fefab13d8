//! The request path as one tower stack, composed top to bottom in [`stack`].

mod access_log;
mod auth;
pub(crate) mod cors;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
mod route;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use tower::{Service, ServiceBuilder};

pub(crate) use access_log::AccessLogLayer;
pub(crate) use auth::AuthLayer;
pub(crate) use request_id::RequestIdLayer;
pub(crate) use route::RouteLayer;

use crate::body::Body;
use crate::dispatch::Dispatch;
use crate::jobs::Jobs;
use crate::middleware::rate_limit::Phase;
use crate::state::State;

/// Builds the data-path service. Every layer is always ready; rejections are
/// answers rendered through `error.rs`, never `Err`.
pub(crate) fn stack(
    state: Arc<State>,
    jobs: Arc<Jobs>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let metrics = state.metrics.clone();
    ServiceBuilder::new()
        // First, so every answer (even a 404) carries the id and the log line has it.
        .layer(RequestIdLayer)
        // Outside the router, so unroutable requests are logged and counted too.
        .layer(AccessLogLayer::new(metrics.clone()))
        // Loads the snapshot once; everything below sees the same config.
        .layer(RouteLayer::new(state, jobs.clone()))
        // Preflights are answered before any rate limit or auth (SPEC §3).
        .layer(cors::CorsLayer)
        // Everything that refuses comes before the proxy, so a refused request
        // never reaches a backend. `ip` and `global` limits come before
        // authentication, so a flood is cut off before any signature check;
        // the others after it, as they may key on the consumer (SPEC §3).
        .layer(rate_limit::RateLimitLayer::new(
            metrics.clone(),
            Phase::BeforeAuth,
        ))
        .layer(AuthLayer::new(metrics.clone()))
        .layer(rate_limit::RateLimitLayer::new(
            metrics.clone(),
            Phase::AfterAuth,
        ))
        // Forward or aggregate, by the route's action.
        .service(Dispatch::new(metrics, jobs))
}

/// The stack driven as a service (`oneshot`), no sockets: what each layer
/// answers on its own. The socket-level suite is tests/it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    const CONFIG: &str = r#"
        [backends.dead]
        urls = ["http://127.0.0.1:9"]
        retries = 0
        [auth.keys]
        type = "api_key"
        keys = [{ id = "acme", sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" }]
        [rate_limits.one]
        requests = 1
        per = "1h"
        key = "ip"
        [[routes]]
        name = "read"
        path = "/items/{id}"
        methods = ["GET"]
        backend = "dead"
        [[routes]]
        name = "guarded"
        path = "/guarded"
        backend = "dead"
        auth = "keys"
        rate_limit = ["one"]
    "#;

    fn service(
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
        let config = crate::Config::parse(CONFIG, "t.toml", &|_| None).expect("valid");
        let state = Arc::new(State::new(
            config,
            Arc::new(Metrics::new()),
            Clock::default(),
        ));
        let jobs = Jobs::new(state.clone());
        stack(state, jobs)
    }

    fn request(method: &str, path: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gw")
            .body(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .expect("request")
    }

    async fn problem(res: Response<Body>) -> serde_json::Value {
        assert_eq!(
            res.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..])
        );
        let body = res.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&body).expect("json")
    }

    #[tokio::test]
    async fn the_router_answers_404_405_and_400_itself() {
        let res = service()
            .oneshot(request("GET", "/nothing"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), 404);
        assert!(res.headers().contains_key("x-request-id"));
        let res = service()
            .oneshot(request("DELETE", "/items/1"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()["allow"], "GET");
        let res = service()
            .oneshot(request("GET", "/items/%2e%2e/%2e%2e"))
            .await
            .expect("infallible");
        assert_eq!(problem(res).await["status"], 400);
    }

    #[tokio::test]
    async fn the_ip_limit_runs_before_authentication_and_both_answer_themselves() {
        let svc = service();
        let res = svc
            .clone()
            .oneshot(request("GET", "/guarded"))
            .await
            .expect("infallible");
        assert_eq!(
            res.status(),
            401,
            "the first request passes the limit, fails auth"
        );
        assert_eq!(res.headers()["www-authenticate"], "Key realm=\"fngate\"");
        assert!(
            res.headers().contains_key("ratelimit"),
            "the limit checked before auth is reported"
        );
        let res = svc
            .oneshot(request("GET", "/guarded"))
            .await
            .expect("infallible");
        assert_eq!(
            res.status(),
            429,
            "the second is limited before any key is checked"
        );
        assert!(res.headers().contains_key("retry-after"));
    }

    #[tokio::test]
    async fn dispatch_answers_502_when_the_backend_refuses() {
        let res = service()
            .oneshot(request("GET", "/items/7"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), 502);
        let p = problem(res).await;
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains("`dead`")),
            "{p}"
        );
    }
}
