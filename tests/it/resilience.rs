//! Backends that refuse, fail, hang or flap: ejection, health checks,
//! balancing, the concurrency cap and the retry budget.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Request, Response};
use tokio::sync::Notify;

/// A backend answering `status` (and `Retry-After: 0` when asked) to everything.
async fn answering(status: u16, retry_after: bool) -> Backend {
    Backend::with(move |_| async move {
        let mut r = Response::builder().status(status);
        if retry_after {
            r = r.header("retry-after", "0");
        }
        r.body(full("no")).unwrap()
    })
    .await
}

/// Opens once; whoever waits before or after that gets through.
#[derive(Default)]
struct Latch {
    open: AtomicBool,
    notify: Notify,
}

impl Latch {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A backend that holds every request until `release` opens.
async fn holding(release: Arc<Latch>) -> Backend {
    Backend::with(move |_| {
        let release = release.clone();
        async move {
            release.wait().await;
            Response::new(full("held"))
        }
    })
    .await
}

async fn status_of(gw: &Gw, backend: &str) -> serde_json::Value {
    let a = send(
        Request::get(format!("http://{}/backends/{backend}", gw.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    a.json()["status"].clone()
}

/// Waits (bounded) until the admin API shows `check` for backend `name`.
async fn until_status(gw: &Gw, name: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status_of(gw, name).await;
        if check(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn failing_endpoints_are_ejected_for_eject_for_then_get_traffic_again() {
    let bad = answering(502, false).await;
    let good = Backend::echo("good").await;
    let text = format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 1\neject_after = 2\neject_for = \"30s\"\n{ANY}",
        bad.url(),
        good.url()
    );
    let clock = fngate::clock::Clock::default();
    let config = fngate::Config::parse(&text, "test.toml", &|_| None).unwrap();
    let gw = Gw::start_with_clock(config, Some(clock.clone())).await;
    for _ in 0..10 {
        assert_eq!(
            gw.get("/x").await.status,
            200,
            "a failed attempt is retried on the good endpoint"
        );
    }
    assert_eq!(
        bad.count(),
        2,
        "ejected after 2 consecutive failures, then left alone"
    );
    let status = status_of(&gw, "b").await;
    assert_eq!(status[0]["healthy"], false, "{status}");
    assert!(status[0]["ejected_until"].is_string());
    assert!(gw.metrics().await.contains(&format!(
        "fngate_upstream_endpoint_healthy{{backend=\"b\",endpoint=\"{}\"}} 0",
        bad.url()
    )));

    // The ejection is a span of time on the pool's clock: move past it, and the
    // endpoint gets traffic again (no sleeping).
    clock.advance(Duration::from_secs(31));
    for _ in 0..4 {
        gw.get("/x").await;
    }
    assert!(bad.count() > 2, "traffic returns after eject_for");
}

#[tokio::test]
async fn refusing_and_hanging_endpoints_are_ejected_too() {
    let refusing = dead_addr().await;
    let release = Arc::new(Latch::default());
    let hanging = holding(release.clone()).await;
    let good = Backend::echo("good").await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"http://{refusing}\", \"{}\", \"{}\"]\nretries = 2\ntimeout = \"100ms\"\n\
         eject_after = 2\nmax_ejection_percent = 100\n{ANY}",
        hanging.url(),
        good.url()
    ))
    .await;
    for _ in 0..8 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    let status = status_of(&gw, "b").await;
    assert_eq!(
        status[0]["healthy"], false,
        "connection refused counts as failure: {status}"
    );
    assert_eq!(
        status[1]["healthy"], false,
        "a timeout counts as failure: {status}"
    );
    assert_eq!(
        status[2]["healthy"], true,
        "the last endpoint stays in: {status}"
    );
    assert_eq!(
        hanging.heads(),
        2,
        "no traffic to the hanging endpoint once ejected"
    );
    release.open();
}

#[tokio::test]
async fn ejection_never_empties_a_pool_and_a_one_endpoint_pool_stays_in() {
    let bad = answering(502, false).await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\"]\nretries = 0\neject_after = 1\n{ANY}",
        bad.url()
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(
            gw.get("/x").await.status,
            502,
            "the failure is passed on, never a 503 for an empty pool"
        );
    }
    assert_eq!(bad.count(), 5);
    assert_eq!(status_of(&gw, "b").await[0]["healthy"], true);
}

#[tokio::test]
async fn overload_answers_are_passed_on_or_retried_but_never_eject() {
    let busy = answering(503, true).await;
    let good = Backend::echo("good").await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 1\neject_after = 1\n{ANY}",
        busy.url(),
        good.url()
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(
            gw.get("/x").await.status,
            200,
            "Retry-After: 0 is waited out and retried elsewhere"
        );
    }
    assert_eq!(
        busy.count(),
        3,
        "still in rotation: 503 with Retry-After is overload, not failure"
    );
    assert_eq!(status_of(&gw, "b").await[0]["healthy"], true);
}

#[tokio::test]
async fn active_checks_take_an_endpoint_out_and_bring_it_back() {
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    let flappy = Backend::with(move |seen| {
        let flag = flag.clone();
        async move {
            let ok = !seen.uri.starts_with("/health") || flag.load(Ordering::SeqCst);
            Response::builder()
                .status(if ok { 200 } else { 500 })
                .body(full("flappy"))
                .unwrap()
        }
    })
    .await;
    let steady = Backend::echo("steady").await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\n[backends.b.health]\npath = \"/health\"\ninterval = \"30ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\
         [backends.solo]\nurls = [\"{}\"]\n[backends.solo.health]\npath = \"/health\"\ninterval = \"30ms\"\nunhealthy_threshold = 2\n\
         [[routes]]\nname = \"b\"\npath = \"/b\"\nbackend = \"b\"\n[[routes]]\nname = \"solo\"\npath = \"/solo\"\nbackend = \"solo\"\n",
        flappy.url(),
        steady.url(),
        flappy.url()
    ))
    .await;
    up.store(false, Ordering::SeqCst);
    until_status(&gw, "b", "the flappy endpoint out", |s| {
        s[0]["failing_checks"] == true
    })
    .await;
    let before = flappy
        .seen()
        .iter()
        .filter(|s| !s.uri.starts_with("/health"))
        .count();
    for _ in 0..6 {
        assert_eq!(gw.get("/b").await.status, 200);
    }
    let after = flappy
        .seen()
        .iter()
        .filter(|s| !s.uri.starts_with("/health"))
        .count();
    assert_eq!(
        before, after,
        "no traffic to an endpoint failing its checks"
    );
    until_status(&gw, "solo", "the solo endpoint out", |s| {
        s[0]["failing_checks"] == true
    })
    .await;
    gw.get("/solo").await.problem(503);

    up.store(true, Ordering::SeqCst);
    until_status(&gw, "b", "the flappy endpoint back", |s| {
        s[0]["healthy"] == true
    })
    .await;
    for _ in 0..4 {
        gw.get("/b").await;
    }
    let back = flappy
        .seen()
        .iter()
        .filter(|s| !s.uri.starts_with("/health"))
        .count();
    assert!(back > after, "traffic returns once the checks pass");
}

#[tokio::test]
async fn least_requests_sends_the_next_request_to_the_less_busy_endpoint() {
    let (hold_a, hold_b) = (Arc::new(Latch::default()), Arc::new(Latch::default()));
    let a = holding(hold_a.clone()).await;
    let b = holding(hold_b.clone()).await;
    let gw = Arc::new(
        Gw::start(&format!(
            "[backends.b]\nurls = [\"{}\", \"{}\"]\nbalance = \"least_requests\"\n{ANY}",
            a.url(),
            b.url()
        ))
        .await,
    );
    // One at a time, so each choice sees the last: four requests must split 2 and 2.
    let mut held = Vec::new();
    for n in 1..=4 {
        let g = gw.clone();
        held.push(tokio::spawn(async move { g.get("/x").await.status }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.heads() + b.heads() < n {
            assert!(Instant::now() < deadline, "request {n} never arrived");
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        (a.heads(), b.heads()),
        (2, 2),
        "the less busy endpoint gets each request"
    );
    // b finishes its two (and answers at once from now on); a still holds two.
    hold_b.open();
    b.wait_for(2).await;
    until_status(&gw, "b", "b idle", |s| s[1]["in_flight"] == 0).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    assert_eq!(
        (a.heads(), b.heads()),
        (2, 7),
        "every new request goes to the endpoint with fewer in flight"
    );
    hold_a.open();
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn random_balance_spreads_requests_over_the_pool() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nbalance = \"random\"\n{ANY}",
        a.url(),
        b.url()
    ))
    .await;
    for _ in 0..200 {
        assert_eq!(gw.get("/x").await.status, 200);
    }
    // Binomial(200, 0.5): below 60 on either side has a probability under 1e-8.
    assert!(
        a.count() >= 60 && b.count() >= 60,
        "{} / {}",
        a.count(),
        b.count()
    );
}

#[tokio::test]
async fn max_in_flight_answers_503_at_once_while_admitted_requests_succeed() {
    let release = Arc::new(Latch::default());
    let slow = holding(release.clone()).await;
    let gw = Arc::new(
        Gw::start(&format!(
            "[backends.b]\nurls = [\"{}\"]\nmax_in_flight = 2\n{ANY}",
            slow.url()
        ))
        .await,
    );
    let admitted: Vec<_> = (0..2)
        .map(|_| {
            let g = gw.clone();
            tokio::spawn(async move { g.get("/x").await.status })
        })
        .collect();
    slow.wait_for_heads(2).await;
    let started = Instant::now();
    gw.get("/x").await.problem(503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not queued"
    );
    release.open();
    for a in admitted {
        assert_eq!(a.await.unwrap(), 200);
    }
    // Counted until each answer's body was done; then the cap is free again.
    until_status(&gw, "b", "no request in flight", |s| s[0]["in_flight"] == 0).await;
}

#[tokio::test]
async fn a_post_is_never_retried_once_sent() {
    let bad = answering(502, false).await;
    let other = answering(502, false).await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 3\neject_after = 100\n{ANY}",
        bad.url(),
        other.url()
    ))
    .await;
    let a = send(Request::post(gw.url("/x")).body(full("once")).unwrap()).await;
    assert_eq!(a.status, 502);
    assert_eq!(bad.count() + other.count(), 1, "one attempt only");
}

#[tokio::test]
async fn the_retry_budget_holds_retries_to_its_share_under_a_failing_backend() {
    let one = answering(502, false).await;
    let two = answering(502, false).await;
    let gw = Gw::start(&format!(
        "[backends.b]\nurls = [\"{}\", \"{}\"]\nretries = 1\neject_after = 1000\nretry_budget_percent = 20\nretry_min_per_second = 0\n{ANY}",
        one.url(),
        two.url()
    ))
    .await;
    for _ in 0..100 {
        assert_eq!(gw.get("/x").await.status, 502);
    }
    let attempts = one.count() + two.count();
    let retries = attempts - 100;
    assert!(
        (10..=25).contains(&retries),
        "{retries} retries for 100 failing requests; the budget allows ~20%"
    );
}
