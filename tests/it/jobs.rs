//! Background jobs (SPEC §7): accepted durably, delivered with retries, read
//! back by the client; against real function backends on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use crate::common::*;

/// A gateway with one async route `/work` to `url`, its store in `dir`.
pub(crate) fn async_config(dir: &tempfile::TempDir, url: &str, route_extra: &str) -> String {
    format!(
        r#"
[store]
path = "{}/jobs.db"
[backends.fn]
urls = ["{url}"]
retries = 0
[[routes]]
name = "work"
path = "/work"
backend = "fn"
invoke = "async"
{route_extra}
"#,
        dir.path().display()
    )
}

async fn post(gw: &Gw, path: &str, body: &'static str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::post(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(full(body)).unwrap()).await
}

/// Polls the job with `Prefer: wait` (the gateway answers once it finished) until it did.
async fn finished(gw: &Gw, location: &str, headers: &[(&str, &str)]) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut req = Request::get(gw.url(location)).header("prefer", "wait=10");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let a = send(req.body(empty()).unwrap()).await;
        if a.status != 202 {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "job never finished: {}",
            a.text()
        );
    }
}

async fn admin_job(gw: &Gw, id: &str) -> serde_json::Value {
    let a = send(
        Request::get(format!("http://{}/jobs/{id}", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

/// A function that takes `d` to answer `body`.
async fn sleepy(d: Duration, body: &'static str) -> Backend {
    Backend::with(move |_| async move {
        tokio::time::sleep(d).await;
        Response::new(full(body))
    })
    .await
}

/// A backend that answers each request with the next status of `script`
/// (the last repeats), with `extra` headers on every answer.
async fn scripted(
    script: &'static [u16],
    extra: &'static [(&'static str, &'static str)],
) -> Backend {
    let n = Arc::new(AtomicUsize::new(0));
    Backend::with(move |_| {
        let n = n.clone();
        async move {
            let i = n.fetch_add(1, Ordering::SeqCst).min(script.len() - 1);
            let mut res = Response::builder().status(script[i]);
            for (k, v) in extra {
                res = res.header(*k, *v);
            }
            res.body(full(format!("answer {}", i + 1))).unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn an_async_request_is_accepted_then_delivered_and_its_answer_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = post(&gw, "/work?size=3", "picture", &[("traceparent", tp)]).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let location = a.header("location").unwrap().to_owned();
    let id = location.strip_prefix("/jobs/").unwrap().to_owned();
    assert_eq!(id.len(), 32, "128 bits as hex");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(
        a.header("preference-applied"),
        None,
        "the client asked nothing"
    );
    let doc = a.json();
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["route"], "work");
    assert!(
        ["queued", "running"].contains(&doc["state"].as_str().unwrap()),
        "{doc}"
    );
    for key in [
        "attempts",
        "created",
        "updated",
        "next_attempt",
        "last_error",
    ] {
        assert!(doc.get(key).is_some(), "{key} in {doc}");
    }

    let done = finished(&gw, &location, &[]).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.header("x-fngate-job-state"), Some("succeeded"));
    assert_eq!(done.header("x-fngate-job-id"), Some(id.as_str()));
    assert_eq!(
        done.header("x-backend"),
        Some("fn"),
        "the function's own headers"
    );
    assert_eq!(
        done.header("x-hop"),
        None,
        "hop-by-hop rules apply to the result"
    );
    let seen = done.json();
    assert_eq!(seen["uri"], "/work?size=3");
    assert_eq!(seen["body"], "picture");
    assert_eq!(seen["headers"]["idempotency-key"], format!("\"{id}\""));
    assert_eq!(seen["headers"]["x-fngate-job-id"], id.as_str());
    assert_eq!(seen["headers"]["x-fngate-attempt"], "1");
    assert!(
        seen["headers"]["x-forwarded-for"].is_string(),
        "forwarded as synchronously"
    );
    let sent_tp = seen["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        &sent_tp[..36],
        &tp[..36],
        "the attempt is in the request's trace"
    );
    assert_eq!(fun.count(), 1);
}

#[tokio::test]
async fn either_routes_go_async_only_when_the_client_prefers() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let config = async_config(&dir, &fun.url(), "").replace("\"async\"", "\"either\"");
    let gw = Gw::start(&config).await;
    let sync = post(&gw, "/work", "x", &[]).await;
    assert_eq!(sync.status, 200);
    assert_eq!(sync.header("x-fngate-job-id"), None);
    let a = post(&gw, "/work", "x", &[("prefer", "respond-async")]).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("preference-applied"), Some("respond-async"));
    // Waiting a little: a fast function's answer comes inline.
    let w = post(&gw, "/work", "y", &[("prefer", "respond-async, wait=10")]).await;
    assert_eq!(w.status, 200, "{}", w.text());
    assert_eq!(w.header("preference-applied"), Some("wait=10"));
    assert_eq!(w.header("x-fngate-job-state"), Some("succeeded"));
    assert_eq!(w.json()["body"], "y");
}

#[tokio::test]
async fn prefer_wait_is_capped_by_max_wait_and_then_answers_202() {
    let dir = tempfile::tempdir().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let fun = Backend::with(move |_| {
        let r = r.clone();
        async move {
            r.notified().await;
            Response::new(full("late"))
        }
    })
    .await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nmax_wait = \"300ms\"",
    ))
    .await;
    let started = Instant::now();
    let a = post(&gw, "/work", "x", &[("prefer", "wait=30")]).await;
    assert_eq!(a.status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "max_wait caps the wait"
    );
    assert_eq!(a.header("preference-applied"), None);
    release.notify_waiters();
}

#[tokio::test]
async fn retryable_answers_are_retried_and_every_attempt_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let fun = scripted(&[503, 500, 408, 429, 200], &[]).await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nbackoff = [\"10ms\", \"40ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let location = a.header("location").unwrap().to_owned();
    let done = finished(&gw, &location, &[]).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.text(), "answer 5");
    let job = admin_job(&gw, location.trim_start_matches("/jobs/")).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 5);
    let statuses: Vec<u64> = job["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 500, 408, 429, 200]);
    let attempts: Vec<String> = fun
        .seen()
        .iter()
        .map(|s| s.headers["x-fngate-attempt"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4", "5"]);
    let m = gw.metrics().await;
    assert!(
        m.contains("fngate_jobs_total{route=\"work\",outcome=\"retried\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("fngate_jobs_total{route=\"work\",outcome=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fngate_jobs_total{route=\"work\",outcome=\"accepted\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fngate_job_attempts_sum{route=\"work\"} 5.0"),
        "{m}"
    );
    assert!(m.contains("fngate_store_up 1"), "{m}");
    assert!(
        m.contains("fngate_store_operation_seconds_count{op=\"accept\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_error_or_501_is_dead_at_once_with_the_functions_answer() {
    for status in [400u16, 404, 422, 501] {
        let dir = tempfile::tempdir().unwrap();
        let script: &'static [u16] = Box::leak(Box::new([status, 200]));
        let fun = scripted(script, &[]).await;
        let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
        let a = post(&gw, "/work", "x", &[]).await;
        let location = a.header("location").unwrap().to_owned();
        let done = finished(&gw, &location, &[]).await;
        assert_eq!(done.status, status);
        assert_eq!(done.header("x-fngate-job-state"), Some("dead"));
        assert_eq!(done.text(), "answer 1");
        assert_eq!(fun.count(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn attempts_run_out_on_connection_failures_and_the_job_is_dead_with_502() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_addr().await;
    let gw = Gw::start(&async_config(
        &dir,
        &format!("http://{dead}"),
        "[routes.delivery]\nattempts = 3\nbackoff = [\"10ms\", \"20ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let location = a.header("location").unwrap().to_owned();
    let done = finished(&gw, &location, &[]).await;
    done.problem(502);
    assert_eq!(done.header("x-fngate-job-state"), Some("dead"));
    let id = location.trim_start_matches("/jobs/");
    assert_eq!(done.header("x-fngate-job-id"), Some(id));
    let job = admin_job(&gw, id).await;
    assert_eq!(job["attempts"], 3);
    let log = job["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter()
            .all(|a| a["status"].is_null() && a["error"].is_string()),
        "{job}"
    );
    assert!(gw
        .metrics()
        .await
        .contains("fngate_jobs_total{route=\"work\",outcome=\"dead\"} 1"));
}

#[tokio::test]
async fn an_attempt_that_times_out_is_retried_and_a_dead_job_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let fun = sleepy(Duration::from_secs(5), "too late").await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nattempts = 2\ntimeout = \"100ms\"\nbackoff = [\"10ms\", \"10ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let done = finished(&gw, a.header("location").unwrap(), &[]).await;
    done.problem(504);
    assert_eq!(done.header("x-fngate-job-state"), Some("dead"));
    assert_eq!(fun.heads(), 2);
}

#[tokio::test]
async fn retry_after_from_the_function_sets_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let fun = scripted(&[429, 200], &[("retry-after", "1")]).await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nbackoff = [\"10ms\", \"10ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let started = Instant::now();
    let done = finished(&gw, a.header("location").unwrap(), &[]).await;
    assert_eq!(done.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the second attempt waited the function's Retry-After, not the 10ms backoff: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_503_with_retry_after_pauses_the_whole_backend() {
    let dir = tempfile::tempdir().unwrap();
    let times = Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let t = times.clone();
    let fun = Backend::with(move |seen: Seen| {
        let t = t.clone();
        async move {
            let body = String::from_utf8_lossy(&seen.body).into_owned();
            let first = t.lock().unwrap().is_empty();
            t.lock().unwrap().push((body, Instant::now()));
            let status = if first { 503 } else { 200 };
            Response::builder()
                .status(status)
                .header("retry-after", "1")
                .body(full("x"))
                .unwrap()
        }
    })
    .await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nbackoff = [\"10ms\", \"10ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "a", &[]).await;
    fun.wait_for(1).await;
    let b = post(&gw, "/work", "b", &[]).await;
    for j in [&a, &b] {
        assert_eq!(
            finished(&gw, j.header("location").unwrap(), &[])
                .await
                .status,
            200
        );
    }
    let times = times.lock().unwrap().clone();
    let (first, overloaded) = (&times[0].0, times[0].1);
    assert_eq!(first, "a");
    let b_sent = times.iter().find(|(body, _)| body == "b").unwrap().1;
    assert!(
        b_sent - overloaded >= Duration::from_millis(900),
        "another job went to the overloaded backend after {:?}",
        b_sent - overloaded
    );
}

#[tokio::test]
async fn an_answer_over_max_result_keeps_its_status_and_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::with(|_| async {
        Response::builder()
            .header("x-made", "yes")
            .body(full("a thumbnail far longer than ten bytes"))
            .unwrap()
    })
    .await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nmax_result = 10",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let done = finished(&gw, a.header("location").unwrap(), &[]).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.header("x-fngate-job-state"), Some("succeeded"));
    assert_eq!(done.header("x-made"), Some("yes"));
    assert_eq!(done.header("x-fngate-result-dropped"), Some("too-large"));
    assert!(done.body.is_empty(), "{}", done.text());
}

#[tokio::test]
async fn jobs_wait_for_a_free_max_in_flight_slot_without_spending_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let fun = Backend::with(move |_| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            p.fetch_max(n.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("ok"))
        }
    })
    .await;
    let config = async_config(&dir, &fun.url(), "[routes.delivery]\nattempts = 1")
        .replace("retries = 0", "retries = 0\nmax_in_flight = 1");
    let gw = Gw::start(&config).await;
    let mut locations = Vec::new();
    for _ in 0..4 {
        locations.push(
            post(&gw, "/work", "x", &[])
                .await
                .header("location")
                .unwrap()
                .to_owned(),
        );
    }
    for l in &locations {
        let done = finished(&gw, l, &[]).await;
        assert_eq!(
            done.status,
            200,
            "one attempt each, none spent waiting: {}",
            done.text()
        );
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_job_past_max_age_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let fun = scripted(&[500], &[]).await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nattempts = 1000\nmax_age = \"300ms\"\nbackoff = [\"50ms\", \"50ms\"]",
    ))
    .await;
    let a = post(&gw, "/work", "x", &[]).await;
    let location = a.header("location").unwrap().to_owned();
    let done = finished(&gw, &location, &[]).await;
    assert_eq!(done.status, 500, "dead with the last answer");
    assert_eq!(done.header("x-fngate-job-state"), Some("dead"));
    let job = admin_job(&gw, location.trim_start_matches("/jobs/")).await;
    assert!(
        job["last_error"].as_str().unwrap().contains("max_age"),
        "{job}"
    );
    assert!(
        fun.count() < 20,
        "stopped at max_age, not after 1000 attempts"
    );
}

#[tokio::test]
async fn idempotency_keys_name_one_job_per_payload() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
    let first = post(&gw, "/work", "order", &[("idempotency-key", "\"order-1\"")]).await;
    assert_eq!(first.status, 202);
    let again = post(&gw, "/work", "order", &[("idempotency-key", "\"order-1\"")]).await;
    assert!([200, 202].contains(&again.status.as_u16()));
    let location = first.header("location").unwrap().to_owned();
    if again.status == 202 {
        assert_eq!(
            again.header("location"),
            Some(location.as_str()),
            "the same job"
        );
    } else {
        assert_eq!(
            again.header("x-fngate-job-id"),
            Some(location.trim_start_matches("/jobs/"))
        );
    }
    let other = post(
        &gw,
        "/work",
        "another order",
        &[("idempotency-key", "\"order-1\"")],
    )
    .await;
    other.problem(422);
    let bad = post(&gw, "/work", "x", &[("idempotency-key", "\"unterminated")]).await;
    bad.problem(400);
    let second = post(&gw, "/work", "order", &[("idempotency-key", "order-2")]).await;
    assert_eq!(second.status, 202);
    assert_ne!(second.header("location"), Some(location.as_str()));
    finished(&gw, &location, &[]).await;
    finished(&gw, second.header("location").unwrap(), &[]).await;
    // Once finished, the key answers with the result.
    let replay = post(&gw, "/work", "order", &[("idempotency-key", "\"order-1\"")]).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("x-fngate-job-state"), Some("succeeded"));
    assert_eq!(fun.count(), 2, "one delivery per key");
    assert!(gw.metrics().await.contains("outcome=\"deduplicated\"} 2"));
}

#[tokio::test]
async fn a_job_whose_client_hung_up_before_the_202_is_still_counted_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
    let s = sent(
        gw.addr,
        b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\npicture",
    )
    .await;
    // Gone before the store committed: the job is kept all the same (the
    // client retries with an Idempotency-Key if it cares), so it counts.
    drop(s);
    fun.wait_for(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = gw.metrics().await;
        if m.contains(r#"fngate_jobs_total{route="work",outcome="succeeded"} 1"#) {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::task::yield_now().await;
    };
    assert!(
        m.contains(r#"fngate_jobs_total{route="work",outcome="accepted"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_pending_job_can_be_cancelled_a_finished_one_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let fun = sleepy(Duration::from_secs(30), "never read").await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
    let a = post(&gw, "/work", "x", &[]).await;
    let location = a.header("location").unwrap().to_owned();
    fun.wait_for(1).await;
    send(Request::put(gw.url(&location)).body(empty()).unwrap())
        .await
        .problem(405);
    let del = send(Request::delete(gw.url(&location)).body(empty()).unwrap()).await;
    assert_eq!(del.status, 204, "{}", del.text());
    gw.get(&location).await.problem(404);
    send(Request::delete(gw.url(&location)).body(empty()).unwrap())
        .await
        .problem(404);

    let echo = Backend::echo("fn").await;
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gw::start(&async_config(&dir2, &echo.url(), "")).await;
    let b = post(&gw2, "/work", "x", &[]).await;
    let loc = b.header("location").unwrap().to_owned();
    finished(&gw2, &loc, &[]).await;
    send(Request::delete(gw2.url(&loc)).body(empty()).unwrap())
        .await
        .problem(409);
    gw2.get("/jobs/00000000000000000000000000000000")
        .await
        .problem(404);
}

#[tokio::test]
async fn only_the_consumer_that_made_a_job_can_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    // sha256("a-key") and sha256("b-key")
    let auth = format!(
        "[auth.keys]\ntype = \"api_key\"\nkeys = [{{ id = \"alice\", sha256 = \"{}\" }}, {{ id = \"bob\", sha256 = \"{}\" }}]\n",
        sha256_hex("a-key"),
        sha256_hex("b-key")
    );
    let config = async_config(&dir, &fun.url(), "auth = \"keys\"").replacen(
        "[backends.fn]",
        &format!("{auth}[backends.fn]"),
        1,
    );
    let gw = Gw::start(&config).await;
    post(&gw, "/work", "x", &[]).await.problem(401);
    let a = post(&gw, "/work", "x", &[("x-api-key", "a-key")]).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let location = a.header("location").unwrap().to_owned();
    gw.get(&location).await.problem(401);
    let bob = finished(&gw, &location, &[("x-api-key", "b-key")]).await;
    bob.problem(404);
    let alice = finished(&gw, &location, &[("x-api-key", "a-key")]).await;
    assert_eq!(alice.status, 200);
    assert_eq!(
        alice.upstream_header("x-consumer-id").as_deref(),
        Some("alice")
    );
}

/// SHA-256 of a test key, as `sha256` in routes.toml wants it.
fn sha256_hex(key: &str) -> &'static str {
    match key {
        "a-key" => "2a8a1240f50636655520ac8ed22aa29473b8517b4abfdbc3bc03bcad73fc8849",
        "b-key" => "912cf63e4e97cfdaa27ba19112c7881169eaa82676c40b0ce253f165738dafd2",
        other => panic!("no hash for {other}"),
    }
}

#[tokio::test]
async fn delivery_never_exceeds_the_routes_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let fun = Backend::with(move |_| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let c = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(c, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("ok"))
        }
    })
    .await;
    let gw = Gw::start(&async_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nconcurrency = 2",
    ))
    .await;
    let mut locations = Vec::new();
    for _ in 0..12 {
        locations.push(
            post(&gw, "/work", "x", &[])
                .await
                .header("location")
                .unwrap()
                .to_owned(),
        );
    }
    for l in &locations {
        assert_eq!(finished(&gw, l, &[]).await.status, 200);
    }
    assert_eq!(fun.count(), 12);
    assert_eq!(peak.load(Ordering::SeqCst), 2, "two at a time, never more");
}

#[tokio::test]
async fn one_backends_slow_burst_does_not_delay_another_backends_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let slow = sleepy(Duration::from_millis(500), "slow").await;
    let fast = Backend::echo("fast").await;
    let config = format!(
        "{}\n[backends.fast]\nurls = [\"{}\"]\n[[routes]]\nname = \"quick\"\npath = \"/quick\"\nbackend = \"fast\"\ninvoke = \"async\"\n",
        async_config(&dir, &slow.url(), "[routes.delivery]\nconcurrency = 1"),
        fast.url()
    );
    let gw = Gw::start(&config).await;
    for _ in 0..20 {
        assert_eq!(post(&gw, "/work", "x", &[]).await.status, 202);
    }
    let started = Instant::now();
    let q = post(&gw, "/quick", "y", &[("prefer", "wait=10")]).await;
    assert_eq!(q.status, 200, "{}", q.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fast backend's job waited behind 10 s of slow ones: {:?}",
        started.elapsed()
    );
    assert!(slow.count() < 10, "the slow burst is still going");
    let m = gw.metrics().await;
    let pending = m
        .lines()
        .find_map(|l| l.strip_prefix("fngate_jobs_pending{backend=\"fn\"} "))
        .unwrap_or_else(|| panic!("no pending gauge for fn:\n{m}"));
    assert!(pending.parse::<u64>().unwrap() > 0, "{pending}");
    assert!(
        m.contains("fngate_job_oldest_seconds{backend=\"fn\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn operators_list_redrive_and_purge_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let fun = scripted(&[400, 200], &[]).await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "")).await;
    let a = post(&gw, "/work", "x", &[]).await;
    let location = a.header("location").unwrap().to_owned();
    let id = location.trim_start_matches("/jobs/").to_owned();
    assert_eq!(finished(&gw, &location, &[]).await.status, 400);
    let admin = |m: &str, p: &str| {
        Request::builder()
            .method(m)
            .uri(format!("http://{}{p}", gw.admin))
            .body(empty())
            .unwrap()
    };
    let dead = send(admin("GET", "/jobs?state=dead&route=work")).await;
    assert_eq!(dead.status, 200);
    let list = dead.json();
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    assert_eq!(list["jobs"][0]["attempt_log"][0]["status"], 400);
    let none = send(admin("GET", "/jobs?state=succeeded")).await.json();
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    send(admin("GET", "/jobs?state=bogus")).await.problem(400);
    send(admin("GET", "/jobs?limit=-1")).await.problem(400);

    let r = send(admin("POST", &format!("/jobs/{id}/redrive"))).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let done = finished(&gw, &location, &[]).await;
    assert_eq!(done.status, 200, "redriven, delivered again");
    assert_eq!(
        admin_job(&gw, &id).await["attempts"],
        1,
        "attempts were reset"
    );
    send(admin("POST", &format!("/jobs/{id}/redrive")))
        .await
        .problem(409);

    let p = send(admin("DELETE", &format!("/jobs/{id}"))).await;
    assert_eq!(p.status, 204);
    send(admin("GET", &format!("/jobs/{id}")))
        .await
        .problem(404);
    gw.get(&location).await.problem(404);
    let doc = send(admin("GET", "/openapi.json")).await.json();
    for path in ["/jobs", "/jobs/{id}", "/jobs/{id}/redrive"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} in the OpenAPI description"
        );
    }
}

#[tokio::test]
async fn body_limits_and_auth_run_before_a_job_exists() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let gw = Gw::start(&async_config(&dir, &fun.url(), "max_body = 4")).await;
    post(&gw, "/work", "far too long", &[]).await.problem(413);
    let list = send(
        Request::get(format!("http://{}/jobs", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        0,
        "no job for a refused request"
    );
}

#[tokio::test]
async fn job_settings_are_validated_with_their_position() {
    let bad = [
        ("[routes.delivery]\nattempts = 0", "attempts", "at least 1"),
        (
            "[routes.delivery]\nbackoff = [\"5m\", \"1s\"]",
            "backoff",
            "exceeds",
        ),
        (
            "[routes.delivery]\nbackoff = [\"1s\"]",
            "backoff",
            "two durations",
        ),
        (
            "[routes.delivery]\nconcurrency = 0",
            "concurrency",
            "at least 1",
        ),
        ("[routes.delivery]\nsurprise = 1", "surprise", "unknown key"),
    ];
    for (extra, key, words) in bad {
        let text = format!(
            "[backends.fn]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"work\"\npath = \"/work\"\nbackend = \"fn\"\ninvoke = \"async\"\n{extra}\n"
        );
        let err = fngate::Config::parse(&text, "r.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(words), "{extra}: {err}");
        assert!(err.contains("r.toml:"), "file:line:col in {err}");
    }
    let under = "[backends.fn]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"w\"\npath = \"/jobs/{id}\"\nbackend = \"fn\"\n";
    let err = fngate::Config::parse(under, "r.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("jobs_path"), "{err}");
    let moved = format!("[server]\njobs_path = \"/tasks\"\n{under}");
    assert!(fngate::Config::parse(&moved, "r.toml", &|_| None).is_ok());
    let invoke = "[backends.fn]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"w\"\npath = \"/w\"\nbackend = \"fn\"\ninvoke = \"later\"\n";
    let err = fngate::Config::parse(invoke, "r.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"sync\", \"async\", \"either\""), "{err}");
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_stops_start_up_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the store's parent directory should be.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let not_a_store = dir.path().join("garbage.db");
    std::fs::write(&not_a_store, vec![0x5a; 8192]).unwrap();
    // A store another fngate version laid out.
    let other_version = dir.path().join("older.db");
    let db = rusqlite::Connection::open(&other_version).unwrap();
    db.execute_batch("CREATE TABLE jobs (id TEXT); PRAGMA user_version = 7;")
        .unwrap();
    drop(db);
    for path in [blocker.join("jobs.db"), not_a_store, other_version.clone()] {
        let text = format!(
            "[store]\npath = \"{}\"\n[backends.fn]\nurls = [\"http://127.0.0.1:9\"]\n[[routes]]\nname = \"w\"\npath = \"/w\"\nbackend = \"fn\"\ninvoke = \"async\"\n",
            path.display()
        );
        let config = fngate::Config::parse(&text, "r.toml", &|_| None).unwrap();
        let opts = fngate::ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            clock: None,
        };
        let err = fngate::start(config, opts).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        if path == other_version {
            assert!(err.contains("schema is version 7"), "{err}");
        }
    }
}

// Crash safety: the real binary, killed with SIGKILL and started again.

fn write_config(dir: &tempfile::TempDir, url: &str, extra: &str) -> String {
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, async_config(dir, url, extra)).unwrap();
    path.display().to_string()
}

fn proc_post(p: &Proc, body: &'static str, key: Option<&str>) -> impl Future<Output = Answer> {
    let mut req = Request::post(format!("http://{}/work", p.addr));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    send(req.body(full(body)).unwrap())
}

use std::future::Future;

// Multi-threaded: the backend answers while the test blocks reading fngate's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_within_max_age_runs_when_the_instance_is_late_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let fun = scripted(&[500], &[]).await;
    let config = write_config(
        &dir,
        &fun.url(),
        "[routes.delivery]\nattempts = 5\nmax_age = \"3s\"\nbackoff = [\"1500ms\", \"1500ms\"]",
    );
    let p = Proc::start(&config, &[]);
    let posted = Instant::now();
    let a = proc_post(&p, "x", None).await;
    let id = a.header("x-fngate-job-id").unwrap().to_owned();
    // The first attempt is recorded, its retry due 1.5 s on (within max_age
    // with room for a loaded machine): the instance is stopped until past
    // max_age (busy, or paused), then goes on.
    p.line_with("outcome=\"retried\"");
    p.signal("-STOP");
    tokio::time::sleep_until((posted + Duration::from_millis(3500)).into()).await;
    p.signal("-CONT");
    let line = p.line_with("outcome=\"dead\"");
    assert!(
        line.contains("attempt=2") && line.contains("status=500"),
        "{line}"
    );
    assert_eq!(fun.count(), 2, "the retry due within max_age ran");
    let done = send(
        Request::get(format!("http://{}/jobs/{id}", p.addr))
            .header("prefer", "wait=10")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        done.status,
        500,
        "dead with the function's answer: {}",
        done.text()
    );
}

fn job_ids(b: &Backend) -> Vec<String> {
    b.seen()
        .iter()
        .map(|s| s.headers["x-fngate-job-id"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_job_accepted_while_its_function_is_down_is_delivered_after_a_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Bound, not listening: refused until the function comes up on it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let config = write_config(
        &dir,
        &format!("http://{addr}"),
        "[routes.delivery]\nbackoff = [\"50ms\", \"100ms\"]",
    );
    let mut first = Proc::start(&config, &[]);
    let a = proc_post(&first, "keep me", None).await;
    assert_eq!(a.status, 202);
    let id = a.header("x-fngate-job-id").unwrap().to_owned();
    // One access-log line per attempt.
    let line = first.line_with("outcome=\"retried\"");
    assert!(line.contains(&id) && line.contains("attempt=1"), "{line}");
    first.signal("-9");
    first.wait_exit();
    let fun = Backend::on(socket.listen(64).unwrap(), |_| async {
        Response::new(full("made it"))
    });
    let second = Proc::start(&config, &[]);
    fun.wait_for(1).await;
    assert_eq!(job_ids(&fun), std::slice::from_ref(&id));
    assert_eq!(fun.seen()[0].body, "keep me");
    drop(second);
}

#[tokio::test]
async fn an_attempt_in_flight_at_a_kill_is_delivered_again_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    // The first attempt never answers; the second does.
    let fun = Backend::stalls_first("second time").await;
    let config = write_config(&dir, &fun.url(), "");
    let mut first = Proc::start(&config, &[]);
    let a = proc_post(&first, "x", None).await;
    assert_eq!(a.status, 202);
    fun.wait_for(1).await;
    first.signal("-9");
    first.wait_exit();
    let second = Proc::start(&config, &[]);
    fun.wait_for(2).await;
    let seen = fun.seen();
    assert_eq!(
        seen[0].headers["idempotency-key"],
        seen[1].headers["idempotency-key"]
    );
    assert_eq!(seen[1].headers["x-fngate-attempt"], "2");
    let location = a.header("location").unwrap();
    let done = job_result(format!("http://{}{location}", second.addr)).await;
    assert_eq!(done.text(), "second time");
}

#[tokio::test]
async fn every_job_that_got_a_202_survives_a_kill_during_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::with(|_| async { Response::new(full("ok")) }).await;
    let config = write_config(&dir, &fun.url(), "");
    let mut first = Proc::start(&config, &[]);
    let url = format!("http://{}/work", first.addr);
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (url, accepted) = (url.clone(), accepted.clone());
        clients.push(tokio::spawn(async move {
            let client: hyper_util::client::legacy::Client<_, BoxBody> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            for _ in 0..63 {
                let req = Request::post(&url).body(full("burst")).unwrap();
                match client.request(req).await {
                    Ok(res) if res.status() == 202 => {
                        let id = res.headers()["x-fngate-job-id"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        accepted.lock().unwrap().push(id);
                    }
                    // Cut off by the kill: this client heard no 202, so nothing was promised.
                    _ => return,
                }
            }
        }));
    }
    // Kill mid-burst: once a few hundred were promised.
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the burst is too slow");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.signal("-9");
    first.wait_exit();
    for c in clients {
        let _ = c.await;
    }
    let promised = accepted.lock().unwrap().clone();
    assert!(
        promised.len() >= 300 && promised.len() < 1008,
        "{}",
        promised.len()
    );
    let second = Proc::start(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: std::collections::HashSet<String> = job_ids(&fun).into_iter().collect();
        let missing = promised.iter().filter(|id| !seen.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} promised jobs never delivered",
            promised.len()
        );
        fun.wait_for(fun.count() + 1).await;
    }
    drop(second);
}

/// Unmounts the small filesystem whatever the test did.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_never_a_202_that_was_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=384k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // CI runs as root (it installs with apt-get); a developer's unprivileged run cannot mount.
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let _guard = Mounted(mnt.clone());
    let dead = dead_addr().await;
    let config = format!(
        "[store]\npath = \"{}/jobs.db\"\n[backends.fn]\nurls = [\"http://{dead}\"]\nretries = 0\n\
         [[routes]]\nname = \"work\"\npath = \"/work\"\nbackend = \"fn\"\ninvoke = \"async\"\n\
         [routes.delivery]\nbackoff = [\"1h\", \"1h\"]\n",
        mnt.display()
    );
    let gw = Gw::start(&config).await;
    let chunk: &'static str = Box::leak("p".repeat(32 << 10).into_boxed_str());
    let mut promised = 0;
    let mut refused = None;
    let mut location = None;
    for _ in 0..64 {
        let a = post(&gw, "/work", chunk, &[]).await;
        match a.status.as_u16() {
            202 => {
                promised += 1;
                location = a.header("location").map(str::to_owned);
            }
            503 => {
                refused = Some(a);
                break;
            }
            other => panic!("{other}: {}", a.text()),
        }
    }
    let refused = refused.expect("a 384 KiB disk fills up within 2 MiB of jobs");
    refused.problem(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(promised > 0, "jobs were taken while there was room");
    let list = send(
        Request::get(format!("http://{}/jobs?limit=1000", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        promised,
        "every 202 is stored, no other"
    );
    // The store still reads (that list) but takes no job: it is not up.
    let m = gw.metrics().await;
    assert!(m.contains("fngate_store_up 0"), "{m}");
    // A write that needs no new page (a cancel) may pass on the full disk, as
    // the deliverer's updates do: the store is still down until an accept passes.
    let location = location.expect("a promised job");
    let cancelled = send(Request::delete(gw.url(&location)).body(empty()).unwrap()).await;
    assert!(
        matches!(cancelled.status.as_u16(), 204 | 503),
        "{}",
        cancelled.text()
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("fngate_store_up 0"),
        "cancel answered {}: {m}",
        cancelled.status
    );
}

// Multi-threaded: the function must answer while this thread blocks waiting for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_taking_jobs_and_lets_the_attempt_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let fun = sleepy(Duration::from_millis(500), "finished during the drain").await;
    let path = dir.path().join("routes.toml");
    let text = format!(
        "[server]\ndrain_delay = \"300ms\"\n{}",
        async_config(&dir, &fun.url(), "")
    );
    std::fs::write(&path, text).unwrap();
    let config = path.display().to_string();
    let mut p = Proc::start(&config, &[]);
    let a = proc_post(&p, "x", None).await;
    assert_eq!(a.status, 202);
    fun.wait_for_heads(1).await;
    p.signal("-TERM");
    p.line_with("shutting down");
    let refused = proc_post(&p, "y", None).await;
    refused.problem(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(p.wait_exit(), 0);
    let again = Proc::start(&config, &[]);
    let location = a.header("location").unwrap();
    let done = send(
        Request::get(format!("http://{}{location}", again.addr))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        done.status, 200,
        "the attempt finished and was recorded before exit"
    );
    assert_eq!(done.text(), "finished during the drain");
    assert_eq!(fun.heads(), 1, "delivered once");
}

#[tokio::test]
async fn polling_a_job_spends_none_of_the_routes_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fun = Backend::echo("fn").await;
    let config = async_config(&dir, &fun.url(), "rate_limit = [\"one\"]").replacen(
        "[backends.fn]",
        "[rate_limits.one]\nrequests = 1\nper = \"1h\"\nkey = \"ip\"\n[backends.fn]",
        1,
    );
    let gw = Gw::start(&config).await;
    let a = post(&gw, "/work", "x", &[]).await;
    assert_eq!(a.status, 202);
    post(&gw, "/work", "y", &[]).await.problem(429);
    let location = a.header("location").unwrap();
    assert_eq!(finished(&gw, location, &[]).await.status, 200);
    for _ in 0..3 {
        assert_eq!(gw.get(location).await.status, 200, "polls are not limited");
    }
}
