//! `fngate explain` and `fngate demo`, through the real binary.

use crate::common;

use common::*;
use http::Request;

#[tokio::test]
async fn explain_names_the_match_the_near_misses_and_contacts_no_backend() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(
        &cfg,
        config(
            &format!("{}/base", b.url()),
            r#"
            [[routes]]
            name = "read"
            path = "/orders/{id}"
            methods = ["GET"]
            backend = "b"
            rewrite = "/o/{id}"
            [[routes]]
            name = "tenant-read"
            path = "/orders/{id}"
            methods = ["GET"]
            host = "*.tenant.example"
            backend = "b"
            "#,
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let run = |args: &[&str]| {
        let out = fngate()
            .arg("explain")
            .args(["--config", &cfg])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["GET", "/orders/9?full=1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("matched route `read`"), "{out}");
    assert!(
        out.contains(&format!("upstream  {}/base/o/9?full=1", b.url())),
        "{out}"
    );
    assert!(out.contains(
        "`tenant-read` (/orders/{id}): the path matches, but the host must be *.tenant.example"
    ));

    let (code, out) = run(&["GET", "/orders/9", "-H", "Host: eu.tenant.example"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("matched route `tenant-read`"), "{out}");

    let (code, out) = run(&["delete", "/orders/9"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("405 Method Not Allowed (Allow: GET)"), "{out}");
    assert!(
        out.contains("`read` (/orders/{id}): the path matches, but its methods are GET"),
        "{out}"
    );

    let (code, out) = run(&["GET", "/nothing"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("404 Not Found"), "{out}");
    assert_eq!(b.count(), 0, "explain sends no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_answers_and_stops_cleanly_on_free_ports() {
    // The shipped routes.toml, with its demo ports moved to free ones. A port
    // found free can be taken by another test before the demo binds it; then
    // the demo is refused ("address already in use") and tries fresh ones.
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Key files are found relative to the config file.
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    for file in ["demo-jwks.json", "localhost.pem", "localhost-key.pem"] {
        std::fs::copy(
            format!("{}/certs/{file}", env!("CARGO_MANIFEST_DIR")),
            dir.path().join("certs").join(file),
        )
        .unwrap();
    }
    let cfg = dir.path().join("routes.toml");
    let cfg = cfg.display().to_string();
    let mut tries = 0;
    let mut p = loop {
        let mut text = shipped.replace("127.0.0.1:8443", "127.0.0.1:0");
        for port in ["9101", "9102", "9103", "9104", "9105", "9106"] {
            let free = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            text = text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
        }
        assert_ne!(text, shipped);
        std::fs::write(&cfg, text).unwrap();
        match Proc::try_spawn(&[
            "demo",
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]) {
            Ok(p) => break p,
            Err(stderr) if stderr.contains("Address already in use") && tries < 4 => tries += 1,
            Err(stderr) => panic!("the demo did not start:\n{stderr}"),
        }
    };

    let a = send(
        Request::get(format!("http://{}/users/42", p.addr))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["function"], "users");
    assert_eq!(a.header("x-powered-by"), None, "the route removes it");
    let a = send(
        Request::post(format!("http://{}/orders", p.addr))
            .body(full("{\"item\":\"book\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.json()["path"], "/api/orders");
    assert_eq!(a.json()["body"], "{\"item\":\"book\"}");
    // CQRS: the write went to its own function, the read goes to another.
    assert_eq!(a.json()["function"], "orders-write");
    // The background job: 202 and a job URL; the slow function's answer is kept.
    let a = send(
        Request::post(format!("http://{}/thumbnails", p.addr))
            .body(full("cat.jpg"))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let job = send(
        Request::get(format!(
            "http://{}{}",
            p.addr,
            a.header("location").unwrap()
        ))
        .header("prefer", "wait=10")
        .body(empty())
        .unwrap(),
    )
    .await;
    assert_eq!(job.status, 200, "{}", job.text());
    assert_eq!(job.json()["function"], "thumbnails");
    assert_eq!(job.json()["body"], "cat.jpg");
    assert!(
        dir.path().join("data/fngate.db").exists(),
        "the store beside the config"
    );
    let a = send(
        Request::get(format!("http://{}/orders", p.addr))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.json()["function"], "orders");

    // The protected route, end to end with a token from `fngate token`.
    let me = format!("http://{}/me/orders", p.addr);
    let a = send(Request::get(&me).body(empty()).unwrap()).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"fngate\"")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fngate"))
        .args([
            "token",
            "--sub",
            "alice",
            "--scope",
            "orders:read",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let a = send(
        Request::get(&me)
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["seen_headers"]["x-user-id"], "alice");
    // The aggregate route: three functions, one of them fed by another's answer.
    let a = send(
        Request::get(format!("http://{}/dashboard/42", p.addr))
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-fngate-completed"), Some("true"));
    assert_eq!(
        a.json()["recommendations"]["items"][0],
        "gold-pick-1",
        "{}",
        a.text()
    );
    let a = send(
        Request::get(format!("http://{}/partner/orders", p.addr))
            .header("x-api-key", "demo-key-acme")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["seen_headers"]["x-consumer-id"], "acme");

    p.signal("-TERM");
    assert_eq!(
        tokio::task::spawn_blocking(move || p.wait_exit())
            .await
            .unwrap(),
        0
    );
}

#[test]
fn explain_shows_the_auth_policy_and_limits_in_the_order_they_run() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml");
    let out = fngate()
        .args(["explain", "--config", shipped, "GET", "/me/orders"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("auth      demo (JWT), scopes orders:read"),
        "{out}"
    );
    let ip = out.find("limit     per_ip:").expect("per_ip listed");
    let consumer = out
        .find("limit     per_consumer:")
        .expect("per_consumer listed");
    assert!(ip < consumer, "ip limits run before authentication:\n{out}");
    assert!(out.contains("by consumer"), "{out}");
}

#[test]
fn explain_schedule_lists_the_next_five_fires_in_utc_and_its_time_zone() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml");
    let out = fngate()
        .args([
            "explain",
            "--config",
            shipped,
            "--schedule",
            "nightly-report",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let fires: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(fires.len(), 5, "{text}");
    for line in &fires {
        // 03:00 in Paris is 02:00 UTC in winter, 01:00 in summer.
        let (utc, local) = line.trim().split_once("  ").expect("two times");
        assert!(
            utc.ends_with(":00:00Z") && (utc.contains("T02:") || utc.contains("T01:")),
            "{line}"
        );
        assert!(local.contains("T03:00:00+0"), "{line}");
    }
    assert!(
        text.contains("Europe/Paris") && text.contains("orders-write"),
        "{text}"
    );
    let missing = fngate()
        .args(["explain", "--config", shipped, "--schedule", "nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nightly-report"));
}

#[test]
fn explain_shows_an_aggregates_calls_and_what_each_waits_for() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml");
    let out = fngate()
        .args(["explain", "--config", shipped, "GET", "/dashboard/42"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("aggregate 3 calls, 800ms deadline, merge object"),
        "{out}"
    );
    assert!(
        out.contains("call      user: GET /users/{id} on users\n"),
        "{out}"
    );
    assert!(
        out.contains("call      recommendations: GET /recs/{user.segment} on recs, after user"),
        "{out}"
    );
    assert!(
        out.contains("orders?user={id} on orders, optional"),
        "{out}"
    );
}

#[tokio::test]
async fn log_format_is_a_global_flag_before_or_after_the_subcommand() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(&cfg, config(&b.url(), ANY)).unwrap();
    let cfg = cfg.display().to_string();
    let local = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let before = [
        &["--log-format", "json", "serve", "--config", &cfg][..],
        &local,
    ]
    .concat();
    let after = [
        &["serve", "--config", &cfg, "--log-format", "json"][..],
        &local,
    ]
    .concat();
    for args in [before, after] {
        let p = Proc::spawn(&args);
        let a = send(
            Request::get(format!("http://{}/x", p.addr))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 200);
        // The access-log line of that request, as one JSON object.
        let line = p.line_with("\"status\":200");
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{args:?} logs JSON: {e}: {line}"));
        assert_eq!(json["path"], "/x", "{json}");
    }
    // Serve flags before a subcommand would be silently ignored by it: refused instead.
    let out = fngate()
        .args(["--config", &cfg, "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("go after the subcommand"));
}

#[tokio::test]
async fn explain_and_the_data_path_resolve_every_request_alike() {
    let (read, write, tenant) = (
        Backend::echo("read").await,
        Backend::echo("write").await,
        Backend::echo("tenant").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
            [backends.read]
            urls = ["{}"]
            balance = "least_requests"
            [backends.write]
            urls = ["{}"]
            balance = "random"
            [backends.tenant]
            urls = ["{}"]
            [[routes]]
            name = "read"
            path = "/orders/{{id}}"
            methods = ["GET"]
            backend = "read"
            [[routes]]
            name = "write"
            path = "/orders/{{id}}"
            methods = ["PUT"]
            backend = "write"
            cors = {{ origins = ["https://app.example"] }}
            [[routes]]
            name = "tenant"
            path = "/orders/{{id}}"
            methods = ["GET"]
            host = "*.tenant.example"
            backend = "tenant"
            "#,
            read.url(),
            write.url(),
            tenant.url()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let p = Proc::start(&cfg, &[]);
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
    ];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Headers); 6] = [
        ("GET", "/orders/1", &[]),
        ("PUT", "/orders/1", &[]),
        ("GET", "/orders/1", &[("host", "eu.tenant.example")]),
        ("OPTIONS", "/orders/1", &preflight),
        ("DELETE", "/orders/1", &[]),
        ("GET", "/nothing", &[]),
    ];
    for (method, path, headers) in cases {
        let mut args = vec!["explain", "--config", &cfg, method, path];
        let flat: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        for h in &flat {
            args.extend(["-H", h]);
        }
        let out = fngate().args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", p.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let a = send(req.body(empty()).unwrap()).await;
        let said = text
            .lines()
            .find_map(|l| l.strip_prefix("matched route `"))
            .map(|l| l.trim_end_matches('`').to_owned());
        let case = format!("{method} {path} {headers:?}");
        match a.header("x-backend") {
            Some(served) => assert_eq!(said.as_deref(), Some(served), "{case}\n{text}"),
            None if text.contains("CORS preflight for PUT") => {
                assert!(a.status.is_success(), "{case}: {}", a.status);
                assert_eq!(said.as_deref(), Some("write"), "{case}\n{text}");
            }
            None => {
                assert_eq!(out.status.code(), Some(1), "{case}\n{text}");
                assert!(
                    text.contains(&format!("=> {}", a.status.as_u16())),
                    "{case}: the gateway said {}\n{text}",
                    a.status
                );
            }
        }
    }
    let out = fngate()
        .args(["explain", "--config", &cfg, "GET", "/orders/1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("backend   read (least requests over 1 endpoint"),
        "{text}"
    );
}
