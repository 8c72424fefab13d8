//! Live config: file-watch reloads, and metrics of what was served.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use fngate::Config;

/// Replaces the file the way editors do: write a sibling, rename it over.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn eventually_status(gw: &Gw, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gw.get(path).await.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_edited_file_is_served_within_a_second_and_a_broken_one_is_refused() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let base = format!("[backends.b]\nurls = [\"{}\"]\n", b.url());
    let route = |name: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nbackend = \"b\"\n")
    };
    std::fs::write(&path, format!("{base}{}", route("one"))).unwrap();
    let gw = Gw::start_config(Config::load(&path).unwrap()).await;
    assert_eq!(gw.get("/one").await.status, 200);

    let written = Instant::now();
    replace(&path, &format!("{base}{}", route("two")));
    eventually_status(&gw, "/two", 200).await;
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        written.elapsed()
    );
    assert_eq!(gw.get("/one").await.status, 404);

    replace(
        &path,
        &format!("{base}{}[[routes]]\nname = \"broken\"\n", route("three")),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .metrics()
        .await
        .contains("fngate_config_reloads_total{result=\"error\"} 1")
    {
        assert!(Instant::now() < deadline, "the broken file was never seen");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        gw.get("/two").await.status,
        200,
        "the running config keeps serving"
    );
    assert_eq!(gw.get("/three").await.status, 404);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_upstream_outcome() {
    let b = Backend::echo("b").await;
    let gw = Gw::start(&config(&b.url(), ANY)).await;
    gw.get("/a").await;
    gw.get("/b").await;
    gw.get("/").await; // no route: "/{*rest}" needs one character
                       // Requests are counted when their answer's body is done, just after the client has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = gw.metrics().await;
    while !m.contains("status=\"404\"} 1") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        m = gw.metrics().await;
    }
    for line in [
        "fngate_requests_total{route=\"any\",method=\"GET\",status=\"200\"} 2",
        "fngate_requests_total{route=\"-\",method=\"GET\",status=\"404\"} 1",
        "fngate_upstream_requests_total{backend=\"b\",outcome=\"ok\"} 2",
        "fngate_request_duration_seconds_count{route=\"any\"} 2",
        "fngate_config_version 1",
        "fngate_open_connections",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
}

#[tokio::test]
async fn a_reload_keeps_unchanged_pools_and_stops_the_checks_of_removed_backends() {
    let b = Backend::echo("b").await;
    let checked = Backend::echo("checked").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let base = format!(
        "[server]\nwatch = false\n[backends.b]\nurls = [\"{}\"]\n{ANY}",
        b.url()
    );
    let with_checks = format!(
        "{base}[backends.c]\nurls = [\"{}\"]\n[backends.c.health]\npath = \"/health\"\ninterval = \"20ms\"\n",
        checked.url()
    );
    std::fs::write(&path, &with_checks).unwrap();
    let gw = Gw::start_config(Config::load(&path).unwrap()).await;
    let state = &gw.gateway.as_ref().unwrap().state;
    let pool_before = state.load().upstreams[0].clone();
    checked.wait_for(3).await;

    // The backend with checks goes away; `b` is unchanged and keeps its pool.
    std::fs::write(&path, &base).unwrap();
    state.reload(fngate::state::Source::Reload).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&pool_before, &state.load().upstreams[0]),
        "unchanged backend, same pool"
    );
    drop(pool_before);
    // A check already under way may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settled = checked.count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        checked.count(),
        settled,
        "the removed backend's health checks stopped"
    );
}

#[tokio::test]
async fn the_watcher_ignores_the_admins_own_write_back() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, config(&b.url(), ANY)).unwrap();
    let gw = Gw::start_config(Config::load(&path).unwrap()).await;
    let put = send(
        http::Request::put(format!("http://{}/routes/two", gw.admin))
            .body(full(r#"{"path": "/two", "backend": "b"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(put.status, 201);
    // Give the watcher its debounce and a reload's time; nothing must follow the admin's version.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let versions = send(
        http::Request::get(format!("http://{}/versions", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    let sources: Vec<String> = versions
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sources,
        ["admin", "start"],
        "no second reload from the file watcher"
    );
}

#[tokio::test]
async fn a_reload_reading_the_files_does_not_trigger_another() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, config(&b.url(), ANY)).unwrap();
    let gw = Gw::start_config(Config::load(&path).unwrap()).await;
    replace(&path, &format!("# edited\n{}", config(&b.url(), ANY)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .metrics()
        .await
        .contains("fngate_config_reloads_total{result=\"ok\"} 1")
    {
        assert!(Instant::now() < deadline, "the edit was never reloaded");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Every reload opens the file, and opening is an inotify event too. Over a few
    // debounce periods, reads must not have set off reloads of their own.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = gw.metrics().await;
    let unchanged = m
        .lines()
        .find(|l| l.starts_with("fngate_config_reloads_total{result=\"unchanged\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        unchanged <= 1,
        "{unchanged} reloads followed the edit:\n{m}"
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_backends_connections_and_a_changed_one_opens_new() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = counting_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    // One worker: each worker keeps connections of its own (worker.rs).
    let text = |extra: &str| {
        format!("[server]\nworkers = 1\n[backends.b]\nurls = [\"{url}\"]\n{extra}\n{ANY}")
    };
    std::fs::write(&path, text("")).unwrap();
    let gw = Gw::start_config(Config::load(&path).unwrap()).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/a").await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    // An unrelated change: the backend's connection serves on.
    replace(
        &path,
        &text("[rate_limits.unused]\nrequests = 5\nper = \"1s\""),
    );
    let state = gw.gateway.as_ref().unwrap().state.clone();
    state.reload(fngate::state::Source::Reload).await.unwrap();
    for _ in 0..3 {
        assert_eq!(gw.get("/a").await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the same connection after the reload"
    );
    // The backend itself changed: a new pool, a new connection.
    replace(
        &path,
        &format!("[backends.b]\nurls = [\"{url}\"]\ntimeout = \"7s\"\n{ANY}"),
    );
    state.reload(fngate::state::Source::Reload).await.unwrap();
    assert_eq!(gw.get("/a").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
