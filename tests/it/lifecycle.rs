//! The binary's life: start-up failures, signals, reloads and its logs.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};

/// Runs fngate to completion; returns (exit code, stdout, last stderr line).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = fngate().args(args).output().expect("fngate runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "no panic text: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        last,
    )
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn start_up_failures_exit_1_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body = \"lots\"\n",
    );
    let (code, _, last) = run(&["--config", &bad]);
    assert_eq!(code, 1);
    assert!(
        last.contains(&format!("{bad}:3:12: server.max_body")),
        "{last}"
    );

    let missing = dir.path().join("absent.toml").display().to_string();
    let (code, _, last) = run(&["serve", "--config", &missing]);
    assert_eq!(code, 1);
    assert!(
        last.contains(&missing) && last.contains("cannot read"),
        "{last}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let cfg = write(
        dir.path(),
        &format!("[server]\nlisten = \"{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let (code, _, last) = run(&["--config", &cfg]);
    assert_eq!(code, 1);
    assert!(
        last.contains(&format!("cannot listen on {port} (server.listen)")),
        "{last}"
    );
}

#[test]
fn validate_reports_every_error_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n",
    );
    let (code, stdout, _) = run(&["validate", "--config", &good]);
    assert_eq!(code, 0);
    assert!(stdout.contains("valid"), "{stdout}");
    let out = fngate()
        .args(["validate"])
        .env(
            "FNGATE_CONFIG",
            write(dir.path(), "a = 1\n[server]\nb = 2\n"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":1:1: a: unknown key") && stderr.contains(":3:1: server.b: unknown key"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 errors"));
}

async fn get(url: String) -> Answer {
    send(Request::get(url).body(empty()).unwrap()).await
}

/// Polls `check` until it holds; there is no event to wait on across processes.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// With two workers: the requests in flight on either finish, and neither
/// worker's listener accepts once the drain begins (the kernel would hand a
/// connection to any socket still open on the port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readyz_drains_in_flight_requests_and_exits_0() {
    const IN_FLIGHT: usize = 8;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let slow = Backend::with(move |_| {
        let r = r.clone();
        async move {
            r.notified().await;
            Response::new(full("done"))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &format!(
            "[server]\nworkers = 2\ndrain_delay = \"300ms\"\n[backends.b]\nurls = [\"{}\"]\n{ANY}",
            slow.url()
        ),
    );
    let mut p = Proc::start(&cfg, &[]);
    assert_eq!(get(format!("http://{}/readyz", p.admin)).await.status, 200);
    // Each on a connection of its own: both workers hold some (all on one: 2^-7).
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let url = format!("http://{}/slow", p.addr);
            tokio::spawn(async move { send(Request::get(url).body(empty()).unwrap()).await })
        })
        .collect();
    slow.wait_for_heads(IN_FLIGHT).await;

    p.signal("-TERM");
    let admin = p.admin;
    eventually("/readyz answers 503", async || {
        get(format!("http://{admin}/readyz")).await.status == 503
    })
    .await;
    let addr = p.addr;
    eventually("the data listener closes", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    release.notify_waiters();
    for a in in_flight {
        let a = a.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "done", "the in-flight request finished");
        assert_eq!(
            a.header("connection"),
            Some("close"),
            "HTTP/1.1 answers carry Connection: close while draining"
        );
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || p.wait_exit())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[server]\nwatch = false\n[backends.b]\nurls = [\"{}\"]\n",
        b.url()
    );
    let route = |name: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nbackend = \"b\"\n")
    };
    let cfg = write(dir.path(), &format!("{base}{}", route("one")));
    let p = Proc::start(&cfg, &[]);
    assert_eq!(get(format!("http://{}/one", p.addr)).await.status, 200);

    write(dir.path(), &format!("{base}{}", route("two")));
    p.signal("-HUP");
    p.line_with("config reloaded");
    assert_eq!(get(format!("http://{}/two", p.addr)).await.status, 200);
    assert_eq!(get(format!("http://{}/one", p.addr)).await.status, 404);

    write(dir.path(), &format!("{base}{}bogus = 1\n", route("three")));
    p.signal("-HUP");
    let refused = p.line_with("config reload refused");
    assert!(refused.contains("bogus"), "{refused}");
    assert_eq!(
        get(format!("http://{}/two", p.addr)).await.status,
        200,
        "the old config keeps serving"
    );
    let m = get(format!("http://{}/metrics", p.admin)).await.text();
    assert!(
        m.contains("fngate_config_reloads_total{result=\"error\"} 1"),
        "{m}"
    );
    assert!(m.contains("fngate_config_version 2"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_one_object_per_request() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &format!(
            "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[backends.b]\nurls = [\"{}\"]\n{ANY}",
            b.url()
        ),
    );
    let p = Proc::start(&cfg, &["--log-format", "json"]);
    let a = send(
        Request::post(format!("http://{}/logged?q=1", p.addr))
            .body(full("12345"))
            .unwrap(),
    )
    .await;
    let id = a.header("x-request-id").unwrap().to_owned();
    let line = p.line_with(&id);
    let log: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(log["route"], "any");
    assert_eq!(log["method"], "POST");
    assert_eq!(log["path"], "/logged");
    assert_eq!(log["status"], 200);
    assert_eq!(log["bytes_in"], 5);
    assert_eq!(log["bytes_out"], a.body.len());
    assert_eq!(log["upstream"], b.url());
    assert_eq!(log["client_ip"], "127.0.0.1");
    // Untraced, the trace is the one the function was called in.
    let sent = a.upstream_header("traceparent").unwrap();
    assert_eq!(log["trace_id"], sent[3..35], "{line}");
    for key in ["ts", "duration_ms", "consumer"] {
        assert!(!log[key].is_null(), "{key} missing: {line}");
    }
    // RFC 3339 with milliseconds, UTC; the line's own timestamp has microseconds.
    let ts = log["ts"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts}"
    );
    assert_eq!(log["timestamp"].as_str().unwrap().len(), 27, "{line}");
    // Sent through a trusted proxy, the client is the one it names.
    let a = send(
        Request::get(format!("http://{}/proxied", p.addr))
            .header("x-forwarded-for", "198.51.100.7")
            .body(empty())
            .unwrap(),
    )
    .await;
    let line = p.line_with(a.header("x-request-id").unwrap());
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["client_ip"], "198.51.100.7", "{line}");
}

/// Lines are written by a thread of their own: each request's line is on
/// stdout while the process serves, and every one by the time it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_log_line_is_written_while_serving_and_before_exit() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        &format!(
            "[server]\ndrain_delay = \"0s\"\n[backends.b]\nurls = [\"{}\"]\n{ANY}",
            b.url()
        ),
    );
    let mut p = Proc::start(&cfg, &["--log-format", "json"]);
    // One line shows up without any exit to flush it.
    let first = get(format!("http://{}/first", p.addr)).await;
    p.line_with(first.header("x-request-id").unwrap());
    let n = 300;
    let mut ids = std::collections::HashSet::new();
    let answers =
        futures_util::future::join_all((0..n).map(|i| get(format!("http://{}/burst/{i}", p.addr))))
            .await;
    for a in &answers {
        assert_eq!(a.status, 200);
        ids.insert(a.header("x-request-id").unwrap().to_owned());
    }
    p.signal("-TERM");
    assert_eq!(
        tokio::task::spawn_blocking(move || {
            let code = p.wait_exit();
            // The reader ends at EOF, once the process is gone.
            let logged: Vec<String> = p.lines.iter().collect();
            (code, logged)
        })
        .await
        .map(|(code, logged)| {
            let seen = logged
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|l| l["route"] == "any")
                .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
                .filter(|id| ids.contains(id))
                .count();
            (code, seen)
        })
        .unwrap(),
        (0, n),
        "exit 0 with every burst request's line on stdout"
    );
}
