//! The admin API of SPEC §5 against a real gateway with a config file.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fngate::Config;
use http::{Method, Request};

const TOKEN: &str = "test-admin-token";

/// A gateway on a config file (comments included), with an admin token.
async fn gateway(dir: &Path, extra: &str, backend: &Backend) -> (Gw, PathBuf) {
    std::env::set_var("FNGATE_TEST_ADMIN_TOKEN", TOKEN);
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        format!(
            "# the file's own comment\n[server]\nwatch = false\n{extra}\n[admin]\ntoken_env = \"FNGATE_TEST_ADMIN_TOKEN\"\n\n\
             [backends.b]  # the only backend\nurls = [\"{}\"]\nheaders = {{ \"x-fn-key\" = \"s3cret-key\" }}\n\n\
             # first route\n[[routes]]\nname = \"one\"\npath = \"/one\"\nbackend = \"b\"\n",
            backend.url()
        ),
    )
    .unwrap();
    (Gw::start_config(Config::load(&path).unwrap()).await, path)
}

async fn admin(
    gw: &Gw,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.admin))
        .header("authorization", format!("Bearer {TOKEN}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        req.body(body.map_or_else(empty, |b| full(b.to_owned())))
            .unwrap(),
    )
    .await
}

fn admin_problem(a: &Answer, status: u16) -> serde_json::Value {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    a.json()
}

#[tokio::test]
async fn the_token_is_required_except_on_open_endpoints_and_every_answer_has_an_etag() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = gateway(dir.path(), "", &b).await;
    let url = |p: &str| format!("http://{}{p}", gw.admin);
    let a = send(Request::get(url("/routes")).body(empty()).unwrap()).await;
    admin_problem(&a, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"fngate-admin\"")
    );
    let a = send(
        Request::get(url("/routes"))
            .header("authorization", "Bearer wrong")
            .body(empty())
            .unwrap(),
    )
    .await;
    admin_problem(&a, 401);
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let a = send(Request::get(url(open)).body(empty()).unwrap()).await;
        assert_eq!(a.status, 200, "{open}");
    }
    let a = admin(&gw, Method::GET, "/routes", None, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(a.json()[0]["name"], "one");
    let spec: serde_json::Value = send(Request::get(url("/openapi.json")).body(empty()).unwrap())
        .await
        .json();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{spec}"
    );
    // Each collection has its own paths with its own typed bodies (no `/{collection}`).
    for (list, one, schema) in [
        ("/routes", "/routes/{name}", "Route"),
        ("/backends", "/backends/{name}", "Backend"),
        ("/auth", "/auth/{name}", "Auth"),
        ("/rate_limits", "/rate_limits/{name}", "RateLimit"),
    ] {
        let reference = format!("#/components/schemas/{schema}");
        let paths = &spec["paths"];
        let items = &paths[list]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["items"];
        assert_eq!(items["$ref"], reference, "{list}: {items}");
        let put = &paths[one]["put"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(put["$ref"], reference, "{one}: {put}");
        assert!(paths[one]["get"].is_object() && paths[one]["delete"].is_object());
        let props = &spec["components"]["schemas"][schema]["properties"];
        assert!(props.is_object(), "{schema} is typed: {props}");
        assert_eq!(
            spec["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema}: unknown keys are errors"
        );
    }
    assert!(spec["paths"]["/{collection}/{name}"].is_null());
    assert!(spec["components"]["schemas"]["Route"]["properties"]["max_body"].is_object());
    // An unknown collection is still a problem answer.
    admin_problem(&admin(&gw, Method::GET, "/nothing", None, &[]).await, 404);
    admin_problem(
        &admin(&gw, Method::PUT, "/nothing/x", Some("{}"), &[]).await,
        404,
    );
}

#[tokio::test]
async fn routes_are_created_replaced_and_deleted_and_written_back_with_comments() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    gw.get("/two").await.problem(404);

    let a = admin(
        &gw,
        Method::PUT,
        "/routes/two",
        Some(r#"{"path": "/two", "backend": "b", "methods": ["GET"]}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.json()["version"], 2);
    assert_eq!(a.header("etag"), Some("\"2\""));
    assert_eq!(
        gw.get("/two").await.status,
        200,
        "served as soon as the admin answered"
    );

    let file = std::fs::read_to_string(&path).unwrap();
    for kept in [
        "# the file's own comment",
        "[backends.b]  # the only backend",
        "# first route",
    ] {
        assert!(file.contains(kept), "`{kept}` survives:\n{file}");
    }
    let running = Config::load(&path).unwrap();
    assert_eq!(
        running.route("two").unwrap().path.raw,
        "/two",
        "the file parses and holds the change"
    );

    let a = admin(
        &gw,
        Method::PUT,
        "/routes/two",
        Some(r#"{"name": "two", "path": "/deux", "backend": "b"}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(gw.get("/deux").await.status, 200);
    assert_eq!(
        admin(&gw, Method::GET, "/routes/two", None, &[])
            .await
            .json()["path"],
        "/deux"
    );

    let a = admin(&gw, Method::DELETE, "/routes/two", None, &[]).await;
    assert_eq!(a.status, 204);
    gw.get("/deux").await.problem(404);
    admin_problem(
        &admin(&gw, Method::DELETE, "/routes/two", None, &[]).await,
        404,
    );
    admin_problem(
        &admin(&gw, Method::GET, "/routes/two", None, &[]).await,
        404,
    );
    admin_problem(&admin(&gw, Method::GET, "/nonsense", None, &[]).await, 404);
}

#[tokio::test]
async fn bad_changes_get_400_409_412_and_422_with_every_error() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    let before = std::fs::read_to_string(&path).unwrap();

    admin_problem(
        &admin(&gw, Method::PUT, "/routes/x", Some("not json"), &[]).await,
        400,
    );
    let p = admin_problem(
        &admin(
            &gw,
            Method::PUT,
            "/routes/x",
            Some(r#"{"path": "no-slash", "backend": "nope", "typo": 1}"#),
            &[],
        )
        .await,
        422,
    );
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{p}");
    assert!(errors.iter().any(|e| e["key"] == "routes[x].backend"
        && e["message"].as_str().unwrap().contains("unknown backend")));
    assert!(errors.iter().all(|e| e["line"].as_u64().unwrap() > 0));
    admin_problem(
        &admin(
            &gw,
            Method::PUT,
            "/routes/x",
            Some(r#"{"name": "y", "path": "/x", "backend": "b"}"#),
            &[],
        )
        .await,
        422,
    );

    let p = admin_problem(
        &admin(&gw, Method::DELETE, "/backends/b", None, &[]).await,
        409,
    );
    assert!(p["detail"].as_str().unwrap().contains("one"), "{p}");

    let body = r#"{"path": "/x", "backend": "b"}"#;
    admin_problem(
        &admin(
            &gw,
            Method::PUT,
            "/routes/x",
            Some(body),
            &[("if-match", "\"7\"")],
        )
        .await,
        412,
    );
    let a = admin(
        &gw,
        Method::PUT,
        "/routes/x",
        Some(body),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(a.status, 201);
    admin_problem(
        &admin(
            &gw,
            Method::PUT,
            "/routes/x",
            Some(body),
            &[("if-match", "\"1\"")],
        )
        .await,
        412,
    );

    assert_ne!(std::fs::read_to_string(&path).unwrap(), before);
    assert_eq!(gw.get("/one").await.status, 200);
}

#[tokio::test]
async fn secrets_are_hidden_and_a_get_answer_put_back_is_accepted_unchanged() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    let config = admin(&gw, Method::GET, "/config", None, &[]).await;
    assert!(!config.text().contains("s3cret-key"), "{}", config.text());
    assert_eq!(
        config.json()["backends"]["b"]["headers"]["x-fn-key"],
        "<hidden>"
    );
    assert!(!config.text().contains(TOKEN));

    let backend = admin(&gw, Method::GET, "/backends/b", None, &[])
        .await
        .text();
    let a = admin(&gw, Method::PUT, "/backends/b", Some(&backend), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("s3cret-key"),
        "the hidden value is kept"
    );
    assert_eq!(
        gw.get("/one").await.upstream_header("x-fn-key").as_deref(),
        Some("s3cret-key")
    );
}

#[tokio::test]
async fn validate_reload_versions_and_rollback() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;

    let good = std::fs::read_to_string(&path).unwrap();
    let a = admin(
        &gw,
        Method::POST,
        "/validate",
        Some(&good),
        &[("content-type", "application/toml")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["routes"], 1);
    let p = admin_problem(
        &admin(
            &gw,
            Method::POST,
            "/validate",
            Some("[server]\nnope = 1\nworkers = \"x\"\n"),
            &[],
        )
        .await,
        422,
    );
    assert_eq!(p["errors"].as_array().unwrap().len(), 2);

    std::fs::write(&path, good.replace("path = \"/one\"", "path = \"/uno\"")).unwrap();
    let a = admin(&gw, Method::POST, "/reload", None, &[]).await;
    assert_eq!(a.json()["version"], 2);
    assert_eq!(gw.get("/uno").await.status, 200);
    std::fs::write(&path, "broken = [").unwrap();
    admin_problem(&admin(&gw, Method::POST, "/reload", None, &[]).await, 422);
    assert_eq!(gw.get("/uno").await.status, 200, "the old config stays");

    let a = admin(&gw, Method::POST, "/rollback/1", None, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["version"], 3);
    assert_eq!(gw.get("/one").await.status, 200);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("path = \"/one\""),
        "written back like any change"
    );
    admin_problem(
        &admin(&gw, Method::POST, "/rollback/99", None, &[]).await,
        404,
    );

    let v = admin(&gw, Method::GET, "/versions", None, &[]).await.json();
    let sources: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["rollback", "reload", "start"]);
    assert!(v[0]["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_failed_write_leaves_the_running_config_unchanged() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("gone");
    std::fs::create_dir(&sub).unwrap();
    let (gw, _) = gateway(&sub, "", &b).await;
    // The file and its folder disappear: neither a rename nor an in-place write can succeed.
    std::fs::remove_dir_all(&sub).unwrap();
    let a = admin(
        &gw,
        Method::PUT,
        "/routes/two",
        Some(r#"{"path": "/two", "backend": "b"}"#),
        &[],
    )
    .await;
    admin_problem(&a, 500);
    gw.get("/two").await.problem(404);
    assert_eq!(
        admin(&gw, Method::GET, "/routes", None, &[])
            .await
            .header("etag"),
        Some("\"1\"")
    );
}

#[tokio::test]
async fn memory_persistence_serves_changes_without_touching_the_file() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[admin]\n", "[admin]\npersist = \"memory\"\n");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        admin(&gw, Method::POST, "/reload", None, &[]).await.status,
        200
    );
    let a = admin(
        &gw,
        Method::PUT,
        "/routes/two",
        Some(r#"{"path": "/two", "backend": "b"}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(gw.get("/two").await.status, 200);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the file is untouched"
    );
    let v = admin(&gw, Method::GET, "/versions", None, &[]).await.json();
    assert_eq!(v[0]["persisted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    let gw = std::sync::Arc::new(gw);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gw, stop) = (gw.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok + failed < 5_000 {
                if gw.get("/one").await.status == 200 {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let base = std::fs::read_to_string(&path).unwrap();
    for i in 0..20 {
        let route = format!("r{i}");
        let valid = i % 2 == 0;
        if i % 4 < 2 {
            // File edits, through /reload so the test waits on the answer, not on a watcher.
            let extra = if valid {
                format!("[[routes]]\nname = \"{route}\"\npath = \"/{route}\"\nbackend = \"b\"\n")
            } else {
                "[[routes]]\nname = \"bad\"\n".to_owned()
            };
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            let a = admin(&gw, Method::POST, "/reload", None, &[]).await;
            assert_eq!(
                a.status.as_u16(),
                if valid { 200 } else { 422 },
                "{}",
                a.text()
            );
        } else {
            let body = if valid {
                format!(r#"{{"path": "/{route}", "backend": "b"}}"#)
            } else {
                r#"{"path": "/x", "backend": "nope"}"#.to_owned()
            };
            let a = admin(
                &gw,
                Method::PUT,
                &format!("/routes/{route}"),
                Some(&body),
                &[],
            )
            .await;
            assert_eq!(
                a.status.as_u16(),
                if valid { 201 } else { 422 },
                "{}",
                a.text()
            );
        }
        if valid {
            let answered = Instant::now();
            assert_eq!(gw.get(&format!("/{route}")).await.status, 200);
            assert!(answered.elapsed() < Duration::from_secs(1));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 0);
}

#[tokio::test]
async fn an_aggregate_route_can_be_put_and_read_back_as_json() {
    let backend = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &backend).await;
    let route = r#"{"path": "/agg/{id}", "aggregate": {"timeout": "2s", "calls": [
        {"name": "user", "backend": "b", "path": "/users/{id}"},
        {"name": "more", "backend": "b", "path": "/more/{user.method}", "optional": true, "fallback": {"more": []}}
    ]}}"#;
    let a = admin(&gw, Method::PUT, "/routes/agg", Some(route), &[]).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let r = gw.get("/agg/7").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["more"]["uri"], "/more/GET");
    let a = admin(&gw, Method::GET, "/routes/agg", None, &[]).await;
    assert_eq!(
        a.json()["aggregate"]["calls"][1]["fallback"]["more"],
        serde_json::json!([])
    );
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("/more/{user.method}"));
}

#[tokio::test]
async fn concurrent_puts_of_different_routes_all_survive() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, path) = gateway(dir.path(), "", &b).await;
    let gw = std::sync::Arc::new(gw);
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"path": "/c{i}", "backend": "b"}}"#);
                admin(&gw, Method::PUT, &format!("/routes/c{i}"), Some(&body), &[]).await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for put in puts {
        let a = put.await.unwrap();
        assert_eq!(a.status, 201, "{}", a.text());
        versions.push(a.json()["version"].as_u64().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..18).collect::<Vec<_>>(),
        "one version per change"
    );
    let file = Config::load(&path).unwrap();
    for i in 0..16 {
        let name = format!("c{i}");
        assert!(file.route(&name).is_some(), "{name} missing from the file");
        assert_eq!(gw.get(&format!("/c{i}")).await.status, 200, "{name} serves");
    }
}

#[tokio::test]
async fn topics_and_subscriptions_are_managed_live_and_refused_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::echo("b").await;
    let store = format!("[store]\npath = \"{}/jobs.db\"", dir.path().display());
    let (gw, path) = gateway(dir.path(), &store, &b).await;
    let put = |what: &'static str, body: &'static str| {
        let gw = &gw;
        async move { admin(gw, Method::PUT, what, Some(body), &[]).await }
    };
    let a = put("/topics/orders", r#"{"dedupe_window": "1h"}"#).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let a = put(
        "/subscriptions/billing",
        r#"{"topic": "orders", "backend": "b", "path": "/billing", "filter": {"type_prefix": "order."}}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    // Live at once: a published event is delivered to the new subscription.
    let published = send(
        Request::post(gw.url("/events/orders"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "1")
            .header("ce-source", "/shop")
            .header("ce-type", "order.created")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(published.json()["deliveries"], 1, "{}", published.text());
    b.wait_for(1).await;
    assert_eq!(b.seen()[0].uri, "/billing");
    let s = admin(&gw, Method::GET, "/subscriptions/billing", None, &[])
        .await
        .json();
    assert_eq!(s["topic"], "orders");
    assert_eq!(s["paused"], false);
    // Written back to the file, as TOML the loader reads.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("[topics.orders]") && text.contains("[[subscriptions]]"),
        "{text}"
    );
    assert!(text.contains("# the file's own comment"));
    Config::load(&path).unwrap();

    // Bad references are 422 with the loader's message; what is in use is 409.
    let bad = put("/subscriptions/x", r#"{"topic": "nope", "backend": "b"}"#).await;
    let p = admin_problem(&bad, 422);
    assert!(p.to_string().contains("unknown topic `nope`"), "{p}");
    let p = admin_problem(
        &admin(&gw, Method::DELETE, "/topics/orders", None, &[]).await,
        409,
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("subscriptions: billing"),
        "{p}"
    );
    let p = admin_problem(
        &admin(&gw, Method::DELETE, "/backends/b", None, &[]).await,
        409,
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("subscriptions: billing"),
        "{p}"
    );
    let r = admin(&gw, Method::POST, "/subscriptions/nope/resume", None, &[]).await;
    admin_problem(&r, 404);

    let d = admin(&gw, Method::DELETE, "/subscriptions/billing", None, &[]).await;
    assert_eq!(d.status, 204, "{}", d.text());
    let d = admin(&gw, Method::DELETE, "/topics/orders", None, &[]).await;
    assert_eq!(d.status, 204, "{}", d.text());
    let gone = send(
        Request::post(gw.url("/events/orders"))
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap(),
    )
    .await;
    gone.problem(404);
}

#[tokio::test]
async fn schedules_are_managed_live_and_their_backend_cannot_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::echo("b").await;
    let store = format!("[store]\npath = \"{}/jobs.db\"", dir.path().display());
    let (gw, path) = gateway(dir.path(), &store, &b).await;
    let a = admin(
        &gw,
        Method::PUT,
        "/schedules/beat",
        Some(r#"{"cron": "* * * * * *", "backend": "b", "path": "/beat"}"#),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    // Live at once: it fires within the next seconds.
    b.wait_for(1).await;
    assert_eq!(b.seen()[0].uri, "/beat");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("[[schedules]]"));
    let p = admin_problem(
        &admin(&gw, Method::DELETE, "/backends/b", None, &[]).await,
        409,
    );
    assert!(
        p["detail"].as_str().unwrap().contains("schedules: beat"),
        "{p}"
    );
    let bad = admin(
        &gw,
        Method::PUT,
        "/schedules/x",
        Some(r#"{"cron": "nope", "backend": "b"}"#),
        &[],
    )
    .await;
    admin_problem(&bad, 422);
    let d = admin(&gw, Method::DELETE, "/schedules/beat", None, &[]).await;
    assert_eq!(d.status, 204, "{}", d.text());
    admin_problem(
        &admin(&gw, Method::GET, "/schedules/beat", None, &[]).await,
        404,
    );
}

#[tokio::test]
async fn alone_get_cluster_lists_this_instance_at_its_config_version() {
    let backend = Backend::echo("fn").await;
    let gw = Gw::start(&config(&backend.url(), ANY)).await;
    let put = admin(
        &gw,
        Method::PUT,
        "/routes/extra",
        Some(r#"{"path": "/extra", "backend": "b"}"#),
        &[],
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let c = admin(&gw, Method::GET, "/cluster", None, &[]).await.json();
    let list = c["instances"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{c}");
    assert_eq!(list[0]["id"], "local");
    assert_eq!(list[0]["applied_version"], 2);
    assert!(list[0]["last_heartbeat"].as_str().unwrap().ends_with('Z'));
}
