//! Rate limits: 429 with Retry-After, the IETF draft and legacy headers,
//! buckets per key and per policy, refill on an injected clock, bounded memory.

use crate::common;

use std::time::Duration;

use common::*;
use fngate::clock::Clock;
use fngate::state::Source;
use fngate::Config;
use http::Request;

const POLICIES: &str = r#"
[rate_limits.per_ip]
requests = 3
per = "1m"
[rate_limits.per_key]
requests = 2
per = "10s"
key = "header:x-api-key"
max_keys = 50
[rate_limits.wide]
requests = 100
per = "1m"
burst = 10
[[routes]]
name = "ip"
path = "/ip"
backend = "b"
rate_limit = ["per_ip"]
[[routes]]
name = "ip-too"
path = "/ip-too"
backend = "b"
rate_limit = ["per_ip"]
[[routes]]
name = "keyed"
path = "/keyed"
backend = "b"
rate_limit = ["wide", "per_key"]
[[routes]]
name = "free"
path = "/free"
backend = "b"
[[routes]]
name = "by-key"
path = "/by-key"
backend = "b"
rate_limit = ["per_key"]
"#;

async fn gateway(backend: &Backend, clock: &Clock) -> Gw {
    let text = config(&backend.url(), POLICIES);
    let config = Config::parse(&text, "test.toml", &|_| None).unwrap();
    Gw::start_with_clock(config, Some(clock.clone())).await
}

fn keyed(gw: &Gw, key: Option<&str>) -> Request<BoxBody> {
    let mut r = Request::get(gw.url("/keyed"));
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    r.body(empty()).unwrap()
}

#[tokio::test]
async fn a_burst_passes_then_429_with_retry_after_and_the_headers() {
    let b = Backend::echo("b").await;
    let clock = Clock::default();
    let gw = gateway(&b, &clock).await;
    for left in [2, 1, 0] {
        let a = gw.get("/ip").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("ratelimit-policy"), Some("\"per_ip\";q=3;w=60"));
        assert_eq!(
            a.header("ratelimit-remaining"),
            Some(left.to_string().as_str()),
            "Remaining counts down"
        );
        assert_eq!(a.header("ratelimit-limit"), Some("3"));
        let state = a.header("ratelimit").unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"per_ip\";r={left};t=")),
            "{state}"
        );
    }
    let a = gw.get("/ip").await;
    let p = a.problem(429);
    assert!(p["detail"].as_str().unwrap().contains("per_ip"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "one request per 20 s: {retry}");
    assert_eq!(a.header("ratelimit-remaining"), Some("0"));
    // Routes naming the same policy share its buckets.
    gw.get("/ip-too").await.problem(429);
    assert_eq!(b.count(), 3, "refused requests never reach the backend");
    // An unlimited route carries no rate-limit headers.
    assert_eq!(gw.get("/free").await.header("ratelimit-policy"), None);
    assert!(gw
        .metrics()
        .await
        .contains("fngate_rate_limited_total{route=\"ip\"} 1"));
}

#[tokio::test]
async fn buckets_refill_with_time_on_the_injected_clock() {
    let b = Backend::echo("b").await;
    let clock = Clock::default();
    let gw = gateway(&b, &clock).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/ip").await.status, 200);
    }
    gw.get("/ip").await.problem(429);
    clock.advance(Duration::from_secs(20));
    assert_eq!(
        gw.get("/ip").await.status,
        200,
        "one request's worth refilled after 20 s"
    );
    gw.get("/ip").await.problem(429);
}

#[tokio::test]
async fn keys_do_not_share_buckets_and_a_missing_key_falls_back_to_the_ip() {
    let b = Backend::echo("b").await;
    let clock = Clock::default();
    let gw = gateway(&b, &clock).await;
    for _ in 0..2 {
        assert_eq!(send(keyed(&gw, Some("alice"))).await.status, 200);
    }
    send(keyed(&gw, Some("alice"))).await.problem(429);
    assert_eq!(
        send(keyed(&gw, Some("bob"))).await.status,
        200,
        "bob has a bucket of his own"
    );
    assert_eq!(
        send(keyed(&gw, None)).await.status,
        200,
        "no key: keyed by the client IP"
    );
    let a = send(keyed(&gw, Some("bob"))).await;
    // Both policies are listed; the legacy fields follow the one with least remaining.
    assert_eq!(
        a.header("ratelimit-policy"),
        Some("\"wide\";q=100;w=60, \"per_key\";q=2;w=10")
    );
    assert!(
        a.header("ratelimit").unwrap().contains("\"per_key\";r=0;"),
        "{:?}",
        a.header("ratelimit")
    );
    assert_eq!(a.header("ratelimit-limit"), Some("2"));
}

#[tokio::test]
async fn a_refusing_policy_does_not_give_back_what_earlier_ones_took() {
    let b = Backend::echo("b").await;
    let clock = Clock::default();
    let gw = gateway(&b, &clock).await;
    for _ in 0..2 {
        send(keyed(&gw, Some("carol"))).await;
    }
    let a = send(keyed(&gw, Some("carol"))).await;
    a.problem(429);
    // "wide" (burst 10) was checked first on all three and keeps what they took.
    assert!(
        a.header("ratelimit").unwrap().starts_with("\"wide\";r=7;"),
        "{:?}",
        a.header("ratelimit")
    );
}

#[tokio::test]
async fn a_flood_of_distinct_keys_keeps_the_table_bounded() {
    let b = Backend::echo("b").await;
    let clock = Clock::default();
    let gw = gateway(&b, &clock).await;
    let mut refused = 0;
    for i in 0..200 {
        let req = Request::get(gw.url("/by-key"))
            .header("x-api-key", format!("spoofed-{i}"))
            .body(empty())
            .unwrap();
        if send(req).await.status == 429 {
            refused += 1;
        }
    }
    let state = gw.gateway.as_ref().unwrap().state.load();
    let per_key = state
        .limiters
        .iter()
        .find(|l| &*l.policy.name == "per_key")
        .unwrap();
    assert!(
        (50..=51).contains(&per_key.len()),
        "{} buckets for max_keys = 50 (+ the overflow bucket)",
        per_key.len()
    );
    // Each key asked once; only keys past the cap, sharing one bucket of 2, were refused.
    assert_eq!(
        refused,
        200 - 50 - 2,
        "keys past the cap share the overflow bucket"
    );
}

#[tokio::test]
async fn a_reload_keeps_unchanged_policies_and_restarts_changed_ones() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    let text = format!("[server]\nwatch = false\n{}", config(&b.url(), POLICIES));
    std::fs::write(&path, &text).unwrap();
    let clock = Clock::default();
    let gw = Gw::start_with_clock(Config::load(&path).unwrap(), Some(clock.clone())).await;
    for _ in 0..3 {
        gw.get("/ip").await;
    }
    gw.get("/ip").await.problem(429);
    let state = &gw.gateway.as_ref().unwrap().state;

    std::fs::write(
        &path,
        text.replace(
            "name = \"free\"\npath = \"/free\"",
            "name = \"free\"\npath = \"/gratis\"",
        ),
    )
    .unwrap();
    state.reload(Source::Reload).await.unwrap();
    gw.get("/ip").await.problem(429);

    std::fs::write(&path, text.replace("requests = 3\n", "requests = 4\n")).unwrap();
    state.reload(Source::Reload).await.unwrap();
    let a = gw.get("/ip").await;
    assert_eq!(a.status, 200, "a changed policy starts fresh");
    assert_eq!(a.header("ratelimit-remaining"), Some("3"));
}

#[test]
fn policies_are_validated() {
    let bad = config(
        "http://127.0.0.1:9",
        "[rate_limits.c]\nrequests = 1\nper = \"1s\"\nkey = \"claim:\"\n[rate_limits.z]\nrequests = 0\nper = \"0s\"\n\
         [[routes]]\nname = \"r\"\npath = \"/r\"\nbackend = \"b\"\nrate_limit = [\"nope\"]\n",
    );
    let errors = Config::parse(&bad, "routes.toml", &|_| None).unwrap_err().0;
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |s: &str| text.iter().any(|e| e.contains(s));
    assert!(has("rate_limits.c.key: `claim:`: expected"), "{text:?}");
    assert!(
        has("rate_limits.z.requests: must be at least 1"),
        "{text:?}"
    );
    assert!(
        has("rate_limits.z.per: must be longer than zero"),
        "{text:?}"
    );
    assert!(
        has("routes[r].rate_limit: unknown rate limit `nope`"),
        "{text:?}"
    );
}

const HASH_ACME: &str = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873"; // demo-key-acme

fn authed(backend: &Backend, globex_key_hash: &str) -> String {
    config(
        &backend.url(),
        &format!(
            "[auth.partners]\ntype = \"api_key\"\nkeys = [{{ id = \"acme\", sha256 = \"{HASH_ACME}\" }}, {{ id = \"globex\", sha256 = \"{globex_key_hash}\" }}]\n\
             [rate_limits.per_consumer]\nrequests = 2\nper = \"1m\"\nkey = \"consumer\"\n\
             [rate_limits.per_ip]\nrequests = 3\nper = \"1m\"\n\
             [[routes]]\nname = \"c\"\npath = \"/c\"\nbackend = \"b\"\nauth = \"partners\"\nrate_limit = [\"per_consumer\"]\n\
             [[routes]]\nname = \"c2\"\npath = \"/c2\"\nbackend = \"b\"\nauth = \"partners\"\nrate_limit = [\"per_consumer\"]\n\
             [[routes]]\nname = \"guarded\"\npath = \"/guarded\"\nbackend = \"b\"\nauth = \"partners\"\nrate_limit = [\"per_consumer\", \"per_ip\"]\n"
        ),
    )
}

fn with_key(gw: &Gw, path: &str, key: &str) -> Request<BoxBody> {
    Request::get(gw.url(path))
        .header("x-api-key", key)
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn two_consumers_do_not_share_a_bucket_and_one_consumer_shares_it_across_routes() {
    let backend = Backend::echo("b").await;
    let globex = "globex-secret-key";
    let hash = ring_sha256(globex);
    let gw = Gw::start(&authed(&backend, &hash)).await;
    // Both requests come from the same IP: only the consumer tells them apart.
    assert_eq!(send(with_key(&gw, "/c", "demo-key-acme")).await.status, 200);
    assert_eq!(
        send(with_key(&gw, "/c2", "demo-key-acme")).await.status,
        200
    );
    let a = send(with_key(&gw, "/c", "demo-key-acme")).await;
    a.problem(429);
    assert_eq!(a.header("ratelimit"), Some("\"per_consumer\";r=0;t=60"));
    let a = send(with_key(&gw, "/c", globex)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("ratelimit-remaining"), Some("1"));
}

#[tokio::test]
async fn ip_limits_cut_a_flood_off_before_any_credential_is_checked() {
    let backend = Backend::echo("b").await;
    let gw = Gw::start(&authed(&backend, &"0".repeat(64))).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let a = send(with_key(&gw, "/guarded", "wrong")).await;
        statuses.push(a.status.as_u16());
        // Refused by authentication or not, the answer carries the limit fields.
        assert!(a.header("ratelimit-policy").is_some(), "{:?}", a.headers);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    let m = gw.metrics().await;
    assert!(
        m.contains("fngate_auth_failures_total{route=\"guarded\",reason=\"unknown_api_key\"} 3"),
        "only the first three were checked:\n{m}"
    );
}

fn ring_sha256(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
