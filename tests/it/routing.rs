use crate::common;

use common::*;
use http::Request;

#[tokio::test]
async fn params_rewrite_base_path_and_query_reach_the_backend() {
    let b = Backend::echo("users").await;
    let gw = Gw::start(&format!(
        r#"
        [backends.users]
        urls = ["{}/api"]
        [[routes]]
        name = "get-user"
        path = "/users/{{id}}"
        methods = ["GET"]
        backend = "users"
        rewrite = "/v2/people/{{id}}"
        [[routes]]
        name = "files"
        path = "/files/{{*rest}}"
        backend = "users"
        [[routes]]
        name = "legacy"
        path = "/legacy/{{*rest}}"
        backend = "users"
        strip_prefix = "/legacy"
        "#,
        b.url()
    ))
    .await;
    let a = gw.get("/users/42?fields=name&x=1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["uri"], "/api/v2/people/42?fields=name&x=1");
    let a = gw.get("/files/a/b/c.txt").await;
    assert_eq!(a.json()["uri"], "/api/files/a/b/c.txt");
    let a = gw.get("/legacy/users/7?q").await;
    assert_eq!(a.json()["uri"], "/api/users/7?q");
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(
        &b.url(),
        r#"
        [[routes]]
        name = "read"
        path = "/orders/{id}"
        methods = ["GET"]
        backend = "b"
        [[routes]]
        name = "write"
        path = "/orders/{order_id}"
        methods = ["PUT", "DELETE"]
        backend = "b"
        "#,
    ))
    .await;
    gw.get("/nope").await.problem(404);
    let a = send(Request::post(gw.url("/orders/1")).body(empty()).unwrap()).await;
    a.problem(405);
    assert_eq!(a.header("allow"), Some("GET, PUT, DELETE"));
    assert_eq!(b.count(), 0, "refused requests never reach the backend");
}

#[tokio::test]
async fn cqrs_routes_split_one_path_by_method() {
    let reads = Backend::echo("reads").await;
    let writes = Backend::echo("writes").await;
    let gw = Gw::start(&format!(
        r#"
        [backends.reads]
        urls = ["{}"]
        [backends.writes]
        urls = ["{}"]
        [[routes]]
        name = "list"
        path = "/orders"
        methods = ["GET"]
        backend = "reads"
        [[routes]]
        name = "create"
        path = "/orders"
        methods = ["POST"]
        backend = "writes"
        "#,
        reads.url(),
        writes.url()
    ))
    .await;
    assert_eq!(gw.get("/orders").await.json()["backend"], "reads");
    let a = send(Request::post(gw.url("/orders")).body(full("{}")).unwrap()).await;
    assert_eq!(a.json()["backend"], "writes");
    assert_eq!(a.json()["body"], "{}");
}

#[tokio::test]
async fn hosts_match_exact_then_wildcard_then_any_ignoring_port() {
    let exact = Backend::echo("exact").await;
    let wild = Backend::echo("wild").await;
    let any = Backend::echo("any").await;
    let gw = Gw::start(&format!(
        r#"
        [backends.exact]
        urls = ["{}"]
        [backends.wild]
        urls = ["{}"]
        [backends.any]
        urls = ["{}"]
        [[routes]]
        name = "exact"
        path = "/x"
        host = "api.example.com"
        backend = "exact"
        [[routes]]
        name = "wild"
        path = "/x"
        host = "*.example.com"
        backend = "wild"
        [[routes]]
        name = "any"
        path = "/x"
        backend = "any"
        "#,
        exact.url(),
        wild.url(),
        any.url()
    ))
    .await;
    let with_host = |h: &str| {
        Request::get(gw.url("/x"))
            .header("host", h)
            .body(empty())
            .unwrap()
    };
    assert_eq!(
        send(with_host("api.example.com:8080")).await.json()["backend"],
        "exact"
    );
    assert_eq!(
        send(with_host("API.EXAMPLE.COM")).await.json()["backend"],
        "exact"
    );
    assert_eq!(
        send(with_host("eu.web.example.com")).await.json()["backend"],
        "wild"
    );
    assert_eq!(
        send(with_host("example.com")).await.json()["backend"],
        "any"
    );
    // Absolute-form: the URI authority decides; a different Host is refused.
    let r = raw(gw.addr, b"GET http://api.example.com/x HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n\r\n").await;
    assert!(r.contains("\"backend\":\"exact\""), "{r}");
    let r = raw(
        gw.addr,
        b"GET http://api.example.com/x HTTP/1.1\r\nhost: other.org\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("application/problem+json"), "{r}");
}

#[tokio::test]
async fn paths_are_normalised_before_matching_and_forwarding() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(
        &b.url(),
        r#"
        [[routes]]
        name = "users"
        path = "/users/{id}"
        backend = "b"
        [[routes]]
        name = "exact"
        path = "/users"
        backend = "b"
        "#,
    ))
    .await;
    let a = gw.get("/admin/../users/%41%2Fb").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json()["uri"],
        "/users/A%2Fb",
        "%2F stays encoded and is no separator"
    );
    assert_eq!(gw.get("//users/./7").await.json()["uri"], "/users/7");
    assert_eq!(gw.get("/users/%2e%2e/users").await.json()["uri"], "/users");
    gw.get("/users/").await.problem(404);
    let r = raw(
        gw.addr,
        b"GET /../etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    gw.get("/users/%2e%2e/%2e%2e/etc").await.problem(400);
    assert_eq!(
        b.count(),
        2 + 1,
        "only the three valid requests reached the backend"
    );
}

#[tokio::test]
async fn preserve_host_and_header_edits_apply() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(
        &b.url(),
        r#"
        [[routes]]
        name = "keep"
        path = "/keep"
        backend = "b"
        preserve_host = true
        request_headers = { set = { "x-env" = "prod" }, remove = ["cookie"] }
        response_headers = { set = { "cache-control" = "no-store" }, remove = ["x-backend"] }
        [[routes]]
        name = "own"
        path = "/own"
        backend = "b"
        "#,
    ))
    .await;
    let req = |p: &str| {
        Request::get(gw.url(p))
            .header("host", "client.example")
            .header("cookie", "session=1")
            .body(empty())
            .unwrap()
    };
    let a = send(req("/keep")).await;
    assert_eq!(a.upstream_header("host").as_deref(), Some("client.example"));
    assert_eq!(a.upstream_header("x-env").as_deref(), Some("prod"));
    assert_eq!(a.upstream_header("cookie"), None);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("x-backend"), None);
    let a = send(req("/own")).await;
    assert_eq!(a.upstream_header("host"), Some(b.addr.to_string()));
    assert_eq!(
        a.upstream_header("x-forwarded-host").as_deref(),
        Some("client.example")
    );
    assert_eq!(a.upstream_header("cookie").as_deref(), Some("session=1"));
}
