//! Schedules (SPEC §9) in real time, kept short: seconds-resolution cron. The
//! rules (catch-up, deadline, window, time zones and daylight saving) are unit
//! tests of `schedules::plan` on chosen clocks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use crate::common::*;

fn schedule_config(dir: &tempfile::TempDir, url: &str, schedule: &str) -> String {
    format!(
        "[store]\npath = \"{}/jobs.db\"\n[backends.fn]\nurls = [\"{url}\"]\nretries = 0\n\
         [[schedules]]\nname = \"tick\"\nbackend = \"fn\"\npath = \"/tick\"\n{schedule}\n",
        dir.path().display()
    )
}

fn rfc_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

fn header(s: &Seen, name: &str) -> String {
    s.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn admin_json(gw: &Gw, method: http::Method, path: &str) -> Answer {
    send(
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn an_every_second_schedule_fires_on_each_second_without_drift() {
    let dir = tempfile::tempdir().unwrap();
    let arrived = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = arrived.clone();
    let fun = Backend::with(move |_s: Seen| {
        a.lock()
            .unwrap()
            .push(chrono::Utc::now().timestamp_millis());
        async { Response::new(full("")) }
    })
    .await;
    let gw = Gw::start(&schedule_config(
        &dir,
        &fun.url(),
        "cron = \"* * * * * *\"\nbody = '{\"full\": false}'",
    ))
    .await;
    fun.wait_for(4).await;
    let seen = fun.seen();
    let ticks: Vec<i64> = seen
        .iter()
        .map(|s| rfc_ms(&header(s, "x-fngate-scheduled-time")))
        .collect();
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "one tick a second, on the second: {ticks:?}"
        );
    }
    assert_eq!(ticks[0] % 1000, 0);
    let arrived = arrived.lock().unwrap().clone();
    for (tick, at) in ticks.iter().zip(&arrived) {
        let late = at - tick;
        assert!((0..1000).contains(&late), "fired {late} ms after its tick");
    }
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/tick");
    assert_eq!(s.body.as_ref(), br#"{"full": false}"#);
    assert_eq!(header(s, "content-type"), "application/json");
    let id = format!("tick@{}", header(s, "x-fngate-scheduled-time"));
    assert_eq!(header(s, "x-fngate-job-id"), id);
    assert_eq!(header(s, "idempotency-key"), format!("\"{id}\""));
    assert_eq!(header(s, "x-fngate-past-due"), "");
    // A run's id is its tick, so guessable: the data path does not show it.
    gw.get(&format!("/jobs/{id}")).await.problem(404);
    let admin_view = admin_json(&gw, http::Method::GET, &format!("/jobs/{id}")).await;
    assert_eq!(
        admin_view.status,
        200,
        "operators see it: {}",
        admin_view.text()
    );
    // The admin API shows the schedule's fires.
    let doc = admin_json(&gw, http::Method::GET, "/schedules/tick")
        .await
        .json();
    assert_eq!(doc["cron"], "* * * * * *");
    assert_eq!(doc["last_outcome"], "ok");
    assert!(
        doc["next_fire"].is_string() && doc["last_fire"].is_string(),
        "{doc}"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_schedule_fires_total{schedule="tick",outcome="ok"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn forbid_skips_ticks_while_a_run_is_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (i, m) = (in_flight.clone(), most.clone());
    let fun = Backend::with(move |_s: Seen| {
        let (i, m) = (i.clone(), m.clone());
        async move {
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            i.fetch_sub(1, Ordering::SeqCst);
            Response::new(full(""))
        }
    })
    .await;
    let gw = Gw::start(&schedule_config(&dir, &fun.url(), "cron = \"* * * * * *\"")).await;
    fun.wait_for(2).await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two runs at once");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"fngate_schedule_fires_total{schedule="tick",outcome="skipped"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn replace_cancels_the_unfinished_run_for_the_new_tick() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::with(|_s: Seen| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full(""))
    })
    .await;
    let gw = Gw::start(&schedule_config(
        &dir,
        &fun.url(),
        "cron = \"* * * * * *\"\nconcurrency = \"replace\"",
    ))
    .await;
    fun.wait_for(2).await;
    let ids: Vec<String> = fun
        .seen()
        .iter()
        .map(|s| header(s, "x-fngate-job-id"))
        .collect();
    assert_ne!(ids[0], ids[1]);
    // The first run is gone from the store: the second replaced it.
    let first = admin_json(&gw, http::Method::GET, &format!("/jobs/{}", ids[0])).await;
    assert_eq!(first.status, 404, "{}", first.text());
    let list = admin_json(&gw, http::Method::GET, "/jobs?route=tick&state=running")
        .await
        .json();
    assert!(list["jobs"].as_array().unwrap().len() <= 1, "{list}");
}

#[tokio::test]
async fn a_disabled_schedule_fires_only_when_run_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&schedule_config(
        &dir,
        &fun.url(),
        "cron = \"* * * * * *\"\nenabled = false",
    ))
    .await;
    let r = admin_json(&gw, http::Method::POST, "/schedules/tick/run").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("tick@manual-"), "{id}");
    fun.wait_for(1).await;
    assert_eq!(header(&fun.seen()[0], "x-fngate-job-id"), id);
    // Over two seconds of ticks, nothing fires by itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fun.count(), 1);
    let r = admin_json(&gw, http::Method::POST, "/schedules/nope/run").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_schedule_can_publish_to_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let config = format!(
        "[store]\npath = \"{}/jobs.db\"\n[backends.fn]\nurls = [\"{}\"]\n[topics.ticks]\n\
         [[subscriptions]]\nname = \"sub\"\ntopic = \"ticks\"\nbackend = \"fn\"\npath = \"/t\"\n\
         [[schedules]]\nname = \"clock\"\ncron = \"* * * * * *\"\ntopic = \"ticks\"\n",
        dir.path().display(),
        fun.url()
    );
    let _gw = Gw::start(&config).await;
    fun.wait_for(1).await;
    let s = &fun.seen()[0];
    assert_eq!(header(s, "ce-type"), "fngate.schedule.tick");
    assert_eq!(header(s, "ce-source"), "/fngate/schedules/clock");
    assert!(header(s, "ce-id").starts_with("clock@"), "{:?}", s.headers);
    let data: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(data["schedule"], "clock");
}

#[tokio::test]
async fn missed_ticks_are_caught_up_after_a_kill_and_none_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let fun = Backend::on(socket.listen(64).unwrap(), |_| async {
        Response::new(full(""))
    });
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        schedule_config(
            &dir,
            &format!("http://{addr}"),
            "cron = \"* * * * * *\"\ncatch_up = \"all\"\nstarting_deadline = \"1m\"\nconcurrency = \"allow\"",
        ),
    )
    .unwrap();
    let config = path.display().to_string();
    let mut first = Proc::start(&config, &[]);
    fun.wait_for(1).await;
    first.signal("-9");
    first.wait_exit();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = fun.count();
    let _second = Proc::start(&config, &[]);
    // At least the two seconds it was down, caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fun.seen()[before..]
        .iter()
        .any(|s| header(s, "x-fngate-past-due") == "true")
    {
        assert!(Instant::now() < deadline, "nothing was caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fun.wait_for(before + 3).await;
    let seen = fun.seen();
    let ids: Vec<String> = seen.iter().map(|s| header(s, "x-fngate-job-id")).collect();
    // One job per tick. A run in flight at the kill is delivered again
    // (at least once), as its next attempt and with the same key.
    let runs: Vec<(String, String)> = seen
        .iter()
        .map(|s| (header(s, "idempotency-key"), header(s, "x-fngate-attempt")))
        .collect();
    let unique: std::collections::HashSet<&(String, String)> = runs.iter().collect();
    assert_eq!(
        unique.len(),
        runs.len(),
        "a tick's job was created twice: {runs:?}"
    );
    // Every second from the first fire on is there, none lost while down,
    // and what ran late says so.
    let mut ticks: Vec<i64> = seen
        .iter()
        .map(|s| rfc_ms(&header(s, "x-fngate-scheduled-time")))
        .collect();
    ticks.sort();
    ticks.dedup();
    for w in ticks.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "a tick was lost: {ids:?} ({:?} down)",
            down.elapsed()
        );
    }
    assert!(seen[before..]
        .iter()
        .any(|s| header(s, "x-fngate-past-due") == "true"));
}

#[tokio::test]
async fn schedules_are_validated_with_their_position() {
    let base =
        "[backends.b]\nurls = [\"http://127.0.0.1:9\"]\n[topics.t]\n[[schedules]]\nname = \"s\"\n";
    for (extra, expected) in [
        (
            "cron = \"61 * * * *\"\nbackend = \"b\"",
            "not a cron expression",
        ),
        ("cron = \"* * *\"\nbackend = \"b\"", "has 3 fields"),
        ("cron = \"@every 0s\"\nbackend = \"b\"", "at least 1s"),
        (
            "cron = \"@hourly\"\nbackend = \"b\"\ntimezone = \"Mars/Olympus\"",
            "not an IANA time zone",
        ),
        (
            "cron = \"@hourly\"\nbackend = \"b\"\ntopic = \"t\"",
            "not both",
        ),
        ("cron = \"@hourly\"\nbackend = \"nope\"", "unknown backend"),
        (
            "cron = \"@hourly\"\nbackend = \"b\"\nbody = \"{oops\"",
            "must be JSON",
        ),
        (
            "cron = \"@hourly\"\nbackend = \"b\"\nconcurrency = \"queue\"",
            "`queue` is not one of",
        ),
        (
            "cron = \"@hourly\"\ntopic = \"t\"\npath = \"/x\"",
            "for a backend target",
        ),
    ] {
        let text = format!("{base}{extra}\n");
        let err = fngate::Config::parse(&text, "r.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{expected:?} in {err}");
        assert!(err.contains("r.toml:"), "{err}");
    }
    // Aliases, 5 and 6 fields and @every are all fine.
    for cron in ["@daily", "*/5 * * * *", "0 */15 * * * *", "@every 90s"] {
        let text = format!("{base}cron = \"{cron}\"\nbackend = \"b\"\n");
        fngate::Config::parse(&text, "r.toml", &|_| None).unwrap_or_else(|e| panic!("{cron}: {e}"));
    }
}
