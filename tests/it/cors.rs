//! Per-route CORS: preflights answered by fngate, headers on actual answers.

use crate::common;

use common::*;
use fngate::Config;
use http::Request;

const ROUTES: &str = r#"
[[routes]]
name = "api"
path = "/api/{id}"
methods = ["GET", "PUT"]
backend = "b"
cors = { origins = ["https://app.example"], headers = ["authorization", "content-type"], expose_headers = ["x-total"], credentials = true, max_age = "10m" }
[[routes]]
name = "open"
path = "/open"
methods = ["GET"]
backend = "b"
cors = { origins = ["*"] }
[[routes]]
name = "plain"
path = "/plain"
backend = "b"
"#;

fn preflight(gw: &Gw, path: &str, origin: &str, method: &str) -> Request<BoxBody> {
    Request::options(gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "authorization")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_even_without_options_in_methods() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ROUTES)).await;
    let a = send(preflight(&gw, "/api/1", "https://app.example", "PUT")).await;
    assert!(a.status.is_success(), "{:?}", a.status);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    let methods = a.header("access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("PUT"),
        "{methods}"
    );
    assert!(a
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    assert!(
        a.header("x-request-id").is_some(),
        "preflights carry the request id too"
    );

    // An origin that is not listed gets no permission.
    let a = send(preflight(&gw, "/api/1", "https://evil.example", "PUT")).await;
    assert_eq!(a.header("access-control-allow-origin"), None);
    assert_eq!(b.count(), 0, "a preflight never reaches the backend");

    // A plain OPTIONS to a route whose methods lack it is still 405.
    let a = send(Request::options(gw.url("/api/1")).body(empty()).unwrap()).await;
    a.problem(405);
    // A route without cors has no preflight: OPTIONS is forwarded like any method.
    let a = send(preflight(&gw, "/plain", "https://app.example", "GET")).await;
    assert_eq!(a.json()["method"], "OPTIONS");
    assert_eq!(a.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn actual_answers_carry_cors_headers() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ROUTES)).await;
    let a = send(
        Request::get(gw.url("/api/7"))
            .header("origin", "https://app.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(a.header("access-control-expose-headers"), Some("x-total"));
    assert!(a.header("vary").unwrap_or_default().contains("origin"));
    let a = send(
        Request::get(gw.url("/open"))
            .header("origin", "https://x.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn credentials_with_a_wildcard_are_refused_at_validation() {
    let text = config(
        "http://127.0.0.1:9",
        "[[routes]]\nname = \"r\"\npath = \"/r\"\nbackend = \"b\"\ncors = { origins = [\"*\"], credentials = true }\n",
    );
    let errors = Config::parse(&text, "routes.toml", &|_| None)
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 7);
    assert!(
        errors[0].key.contains("routes[r].cors.origins"),
        "{}",
        errors[0]
    );
    assert!(errors[0].message.contains("credentials"), "{}", errors[0]);
    let bad_origin = config(
        "http://127.0.0.1:9",
        "[[routes]]\nname = \"r\"\npath = \"/r\"\nbackend = \"b\"\ncors = { origins = [\"https://app.example/path\"] }\n",
    );
    assert!(Config::parse(&bad_origin, "routes.toml", &|_| None).is_err());
}
