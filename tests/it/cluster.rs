//! Scale-out (SPEC §10): several real fngate processes on one real
//! redis-server, each test with its own Redis on a free loopback port.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use crate::common::redis::Redis;
use crate::common::*;

/// Writes `routes.toml` for one instance (its own directory) on `redis`, and starts it.
fn instance(redis: &Redis, body: &str) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, format!("[store]\nurl = \"{}\"\n{body}", redis.url())).unwrap();
    let p = Proc::start(&path.display().to_string(), &[]);
    (p, dir)
}

/// `n` instances of one config.
fn instances(redis: &Redis, n: usize, body: &str) -> Vec<(Proc, tempfile::TempDir)> {
    (0..n).map(|_| instance(redis, body)).collect()
}

async fn admin(p: &Proc, method: http::Method, path: &str, body: &str) -> Answer {
    send(
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", p.admin))
            .header("content-type", "application/json")
            .body(full(body.to_owned()))
            .unwrap(),
    )
    .await
}

/// Polls `/readyz` until the instance has synced with the cluster.
async fn ready(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if admin(p, http::Method::GET, "/readyz", "").await.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{} never got ready", p.admin);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(p: &Proc, path: &str, body: &'static str) -> Answer {
    send(
        Request::post(format!("http://{}{path}", p.addr))
            .body(full(body))
            .unwrap(),
    )
    .await
}

/// Waits until `cond` holds, checking every 20 ms, for at most `secs`.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No tick reached the function twice.
fn each_tick_once(fun: &Backend) {
    let times = fun.header_values("x-fngate-scheduled-time");
    let unique: HashSet<&String> = times.iter().collect();
    assert_eq!(unique.len(), times.len(), "a tick ran twice: {times:?}");
}

const ASYNC: &str = "[backends.fn]\nurls = [\"URL\"]\nretries = 0\n\
    [[routes]]\nname = \"work\"\npath = \"/work\"\nbackend = \"fn\"\ninvoke = \"async\"\n";

#[tokio::test]
async fn a_shared_limit_admits_exactly_its_quota_across_instances() {
    let redis = Redis::start();
    let fun = Backend::echo("fn").await;
    // Exact only while Redis answers in time: on a loaded machine 120 checks
    // at once can take longer than the default 50 ms, and the local buckets
    // (by design) then admit more.
    let body = format!(
        "rate_limit_timeout = \"2s\"\n\
         [backends.b]\nurls = [\"{}\"]\n\
         [rate_limits.shared]\nrequests = 30\nper = \"1h\"\nkey = \"global\"\n\
         [[routes]]\nname = \"limited\"\npath = \"/limited\"\nbackend = \"b\"\nrate_limit = [\"shared\"]\n",
        fun.url()
    );
    let gws = instances(&redis, 3, &body);
    for (p, _) in &gws {
        ready(p).await;
    }
    // Ready means the script is loaded: a cold burst would otherwise have each
    // request load it, miss the check's 50 ms and fall back to local buckets.
    let loads = script_loads(&redis);
    assert!(loads >= 3, "each instance loaded its script: {loads}");
    // 120 requests at once, spread over the three: exactly 30 pass.
    let mut tasks = Vec::new();
    for i in 0..120 {
        let url = format!("http://{}/limited", gws[i % 3].0.addr);
        tasks.push(tokio::spawn(async move {
            send(Request::get(url).body(empty()).unwrap()).await
        }));
    }
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let mut remaining = HashSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        *by_status.entry(a.status.as_u16()).or_default() += 1;
        if a.status == 200 {
            remaining.insert(a.header("ratelimit-remaining").unwrap().to_owned());
        } else {
            assert_eq!(a.status, 429, "{}", a.text());
            assert!(a.header("retry-after").is_some());
        }
    }
    assert_eq!(by_status.get(&200), Some(&30), "{by_status:?}");
    assert_eq!(by_status.get(&429), Some(&90), "{by_status:?}");
    // Each admitted request saw its own place in the one shared bucket.
    assert_eq!(remaining.len(), 30, "{remaining:?}");
    assert_eq!(fun.count(), 30);
    assert_eq!(
        script_loads(&redis),
        loads,
        "no check loaded the script again"
    );
}

/// How many `SCRIPT LOAD`s Redis has served.
fn script_loads(redis: &Redis) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_script|load:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_job_accepted_on_one_instance_is_read_and_delivered_by_the_others() {
    let redis = Redis::start();
    let fun = Backend::with(|_| async { Response::new(full("done")) }).await;
    let gws = instances(&redis, 3, &ASYNC.replace("URL", &fun.url()));
    let a = post(&gws[0].0, "/work", "payload").await;
    assert_eq!(a.status, 202, "{}", a.text());
    let location = a.header("location").unwrap().to_owned();
    // Another instance answers for it: the result, once delivered.
    let done = job_result(format!("http://{}{location}", gws[2].0.addr)).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.text(), "done");
    assert_eq!(done.header("x-fngate-job-state"), Some("succeeded"));
    // Delivered once, whichever instance took it.
    assert_eq!(fun.count(), 1);
    assert_eq!(fun.seen()[0].body, "payload");
}

#[tokio::test]
async fn an_attempt_held_by_a_killed_instance_is_delivered_by_another_after_the_lease() {
    let redis = Redis::start();
    // The first attempt never answers; the next does.
    let fun = Backend::stalls_first("second time").await;
    let body = ASYNC.replace("URL", &fun.url());
    // Alone at first, so the first attempt is surely this instance's.
    let (mut holder, _d) = instance(&redis, &body);
    let a = post(&holder, "/work", "x").await;
    assert_eq!(a.status, 202);
    fun.wait_for(1).await;
    let others = instances(&redis, 2, &body);
    let killed = Instant::now();
    holder.signal("-9");
    holder.wait_exit();
    until(40, "the second attempt", || fun.count() >= 2).await;
    let took = killed.elapsed();
    // Taken up once the 30 s lease lapsed (SPEC: within 35 s of the death).
    assert!(took < Duration::from_secs(35), "{took:?}");
    let seen = fun.seen();
    assert_eq!(seen[1].headers["x-fngate-attempt"], "2");
    assert_eq!(
        seen[0].headers["idempotency-key"],
        seen[1].headers["idempotency-key"]
    );
    let location = a.header("location").unwrap();
    let done = job_result(format!("http://{}{location}", others[1].0.addr)).await;
    assert_eq!(done.text(), "second time");
}

#[tokio::test]
async fn each_event_is_delivered_once_per_subscription_not_once_per_instance() {
    let redis = Redis::start();
    let billing = Backend::with(|_| async { Response::new(full("")) }).await;
    let audit = Backend::with(|_| async { Response::new(full("")) }).await;
    let body = format!(
        "[backends.billing]\nurls = [\"{}\"]\n[backends.audit]\nurls = [\"{}\"]\n\
         [topics.orders]\n\
         [[subscriptions]]\nname = \"billing\"\ntopic = \"orders\"\nbackend = \"billing\"\npath = \"/b\"\n\
         [[subscriptions]]\nname = \"audit\"\ntopic = \"orders\"\nbackend = \"audit\"\npath = \"/a\"\n",
        billing.url(),
        audit.url()
    );
    let gws = instances(&redis, 3, &body);
    // 30 events, each published on one instance; 10 of them published twice
    // (on two instances): one delivery per subscription all the same.
    for i in 0..30 {
        let event = |p: &Proc| {
            send(
                Request::post(format!("http://{}/events/orders", p.addr))
                    .header("ce-id", format!("e{i}"))
                    .header("ce-source", "/shop")
                    .header("ce-specversion", "1.0")
                    .header("ce-type", "order.created")
                    .body(full(format!("{{\"n\":{i}}}")))
                    .unwrap(),
            )
        };
        let a = event(&gws[i % 3].0).await;
        assert_eq!(a.status, 202, "{}", a.text());
        assert_eq!(a.json()["deliveries"], 2);
        if i % 3 == 0 {
            let again = event(&gws[(i + 1) % 3].0).await;
            assert_eq!(
                again.json()["deliveries"],
                0,
                "a duplicate on another instance"
            );
        }
    }
    billing.wait_for(30).await;
    audit.wait_for(30).await;
    // Every delivery has finished, so none can follow: the counts are final.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = admin(
            &gws[0].0,
            http::Method::GET,
            "/jobs?state=running&limit=100",
            "",
        )
        .await
        .json();
        let queued = admin(
            &gws[0].0,
            http::Method::GET,
            "/jobs?state=queued&limit=100",
            "",
        )
        .await
        .json();
        if open["jobs"].as_array().unwrap().is_empty()
            && queued["jobs"].as_array().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sub in [&billing, &audit] {
        let ids = sub.header_values("ce-id");
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!((ids.len(), unique.len()), (30, 30), "{ids:?}");
    }
}

#[tokio::test]
async fn each_schedule_tick_runs_once_and_ticks_go_on_when_an_instance_dies() {
    let redis = Redis::start();
    let fun = Backend::with(|_| async { Response::new(full("")) }).await;
    let body = format!(
        "[backends.fn]\nurls = [\"{}\"]\nretries = 0\n\
         [[schedules]]\nname = \"tick\"\ncron = \"@every 1s\"\nbackend = \"fn\"\npath = \"/tick\"\n\
         concurrency = \"allow\"\n",
        fun.url()
    );
    let mut gws = instances(&redis, 3, &body);
    fun.wait_for(3).await;
    let (mut first, _d) = gws.remove(0);
    first.signal("-9");
    first.wait_exit();
    let before = fun.count();
    fun.wait_for(before + 3).await;
    each_tick_once(&fun);
}

#[tokio::test]
async fn an_admin_change_on_one_instance_serves_on_all_within_a_second() {
    let redis = Redis::start();
    let fun = Backend::echo("fn").await;
    let body = format!(
        "[admin]\npersist = \"file\"\n[backends.b]\nurls = [\"{}\"]\n{ANY}",
        fun.url()
    );
    let gws = instances(&redis, 3, &body);
    for (p, _) in &gws {
        ready(p).await;
    }
    let route = |path: &str| format!(r#"{{"path": "{path}", "backend": "b"}}"#);
    let put = admin(
        &gws[0].0,
        http::Method::PUT,
        "/routes/fresh",
        &route("/fresh"),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let answered = Instant::now();
    // Each instance serves the new route (an exact path, not the catch-all) within 1 s.
    for (p, dir) in &gws {
        loop {
            let a = send(
                Request::get(format!("http://{}/fresh", p.addr))
                    .body(empty())
                    .unwrap(),
            )
            .await;
            let routed = admin(p, http::Method::GET, "/routes/fresh", "").await;
            if routed.status == 200 && a.status == 200 {
                break;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(1),
                "{} still without the route",
                p.admin
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // persist = "file": each wrote the change back to its own file.
        let text = std::fs::read_to_string(dir.path().join("routes.toml")).unwrap();
        assert!(text.contains("/fresh"), "{text}");
    }
    // Every instance is listed, at the same cluster version.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = admin(&gws[1].0, http::Method::GET, "/cluster", "")
            .await
            .json();
        let list = c["instances"].as_array().unwrap().clone();
        let versions: HashSet<u64> = list
            .iter()
            .map(|i| i["applied_version"].as_u64().unwrap())
            .collect();
        if list.len() == 3 && versions == HashSet::from([1]) {
            assert!(list.iter().all(|i| i["last_heartbeat"].as_str().is_some()));
            break;
        }
        assert!(Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another instance's change, and one more here: cluster version 2.
    let other = admin(
        &gws[1].0,
        http::Method::PUT,
        "/routes/other",
        &route("/other"),
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.text());
    // An instance that starts later serves the newest version before it is ready.
    let (late, _d) = instance(&redis, &body);
    ready(&late).await;
    let a = admin(&late, http::Method::GET, "/routes/other", "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    // A change edited from an outdated text is refused, never laid over a newer one.
    redis.cli(&["SET", "fngate:config:version", "99"]);
    let stale = admin(
        &gws[2].0,
        http::Method::PUT,
        "/routes/third",
        &route("/third"),
    )
    .await;
    assert_eq!(stale.status, 409, "{}", stale.text());
    assert!(
        stale.text().contains("cluster version 99"),
        "{}",
        stale.text()
    );
    assert_eq!(
        admin(&gws[2].0, http::Method::GET, "/routes/third", "")
            .await
            .status,
        404,
        "nothing applied"
    );
}

#[tokio::test]
async fn a_redis_outage_under_load_fails_no_sync_request_and_loses_no_accepted_job() {
    let mut redis = Redis::start();
    let fun = Backend::with(|_| async { Response::new(full("ok")) }).await;
    let body = format!(
        "{}[[routes]]\nname = \"sync\"\npath = \"/sync\"\nbackend = \"fn\"\n",
        ASYNC.replace("URL", &fun.url())
    );
    let gws = instances(&redis, 2, &body);
    let addrs: Vec<_> = gws.iter().map(|(p, _)| p.addr).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let sync_failures = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (addr, stop, accepted, refused, sync_failures) = (
            *addr,
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            sync_failures.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 5_000 {
                n += 1;
                let s = send(
                    Request::get(format!("http://{addr}/sync"))
                        .body(empty())
                        .unwrap(),
                )
                .await;
                if s.status != 200 {
                    sync_failures.fetch_add(1, Ordering::SeqCst);
                }
                let a = send(
                    Request::post(format!("http://{addr}/work"))
                        .body(full(format!("job {i}-{n}")))
                        .unwrap(),
                )
                .await;
                match a.status.as_u16() {
                    202 => accepted
                        .lock()
                        .unwrap()
                        .push(a.header("x-fngate-job-id").unwrap().to_owned()),
                    503 => {
                        assert!(a.header("retry-after").is_some());
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    other => panic!("{other}: {}", a.text()),
                }
            }
        }));
    }
    until(10, "jobs accepted", || accepted.lock().unwrap().len() >= 20).await;
    redis.stop();
    until(10, "503s while Redis is down", || {
        refused.load(Ordering::SeqCst) >= 10
    })
    .await;
    // fngate_store_up says so within 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = admin(&gws[0].0, http::Method::GET, "/metrics", "")
            .await
            .text();
        if m.contains("fngate_store_up 0") {
            break;
        }
        assert!(Instant::now() < deadline, "store_up never turned 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    let before = accepted.lock().unwrap().len();
    until(30, "202s again after Redis came back", || {
        accepted.lock().unwrap().len() >= before + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(sync_failures.load(Ordering::SeqCst), 0);
    // Every job that got a 202 is delivered.
    let ids: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: HashSet<String> = fun.header_values("x-fngate-job-id").into_iter().collect();
        if ids.is_subset(&delivered) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted jobs never delivered",
            ids.difference(&delivered).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway in-process with a global limit of 3 per hour kept on `redis`.
async fn limited_gw(redis: &Redis, fun: &Backend, on_error: &str) -> Gw {
    Gw::start(&format!(
        "[store]\nurl = \"{}\"\nrate_limits_on_error = \"{on_error}\"\n\
         [backends.b]\nurls = [\"{}\"]\n\
         [rate_limits.three]\nrequests = 3\nper = \"1h\"\nkey = \"global\"\n\
         [[routes]]\nname = \"limited\"\npath = \"/limited\"\nbackend = \"b\"\nrate_limit = [\"three\"]\n",
        redis.url(),
        fun.url()
    ))
    .await
}

async fn statuses(gw: &Gw, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(gw.get("/limited").await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn while_redis_is_down_rate_limits_fall_back_as_configured_and_give_way_on_its_return() {
    let fun = Backend::echo("fn").await;
    // local: the instance's own buckets hold the quota alone, at once.
    let mut redis = Redis::start();
    let gw = limited_gw(&redis, &fun, "local").await;
    assert_eq!(
        statuses(&gw, 2).await,
        [200, 200],
        "on Redis: one left there"
    );
    redis.stop();
    let started = Instant::now();
    assert_eq!(statuses(&gw, 4).await, [200, 200, 200, 429]);
    // No check waits on the dead Redis past its bound (50 ms).
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // Back: Redis' bucket (one left) decides again, not the exhausted local one.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = gw.get("/limited").await;
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never took over again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses(&gw, 1).await, [429], "Redis' bucket is empty now");
    drop(gw);

    // closed: 503 with Retry-After; open: everything passes.
    let mut redis = Redis::start();
    let closed = limited_gw(&redis, &fun, "closed").await;
    let open = limited_gw(&redis, &fun, "open").await;
    redis.stop();
    let a = closed.get("/limited").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(a.problem(503)["detail"]
        .as_str()
        .unwrap()
        .contains("cannot be checked"));
    assert_eq!(statuses(&open, 5).await, [200; 5]);
}

#[tokio::test]
async fn durability_replica_answers_202_only_once_a_replica_has_the_job() {
    let primary = Redis::start();
    let fun = Backend::with(|_| async { Response::new(full("")) }).await;
    let config = |url: &str| {
        format!(
            "[store]\nurl = \"{url}\"\ndurability = \"replica\"\n{}",
            ASYNC.replace("URL", &fun.url())
        )
    };
    let gw = Gw::start(&config(&primary.url())).await;
    // No replica: the write is not acknowledged by one within the bound, so no 202.
    let started = Instant::now();
    let a = send(Request::post(gw.url("/work")).body(full("x")).unwrap()).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    // With one attached, accepted.
    let _replica = Redis::replica_of(&primary);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if primary
            .cli(&["INFO", "replication"])
            .contains("state=online")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never attached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = send(Request::post(gw.url("/work")).body(full("y")).unwrap()).await;
    assert_eq!(a.status, 202, "{}", a.text());
    fun.wait_for(1).await;
    assert_eq!(fun.seen()[0].body, "y", "the refused job was never stored");
}

#[tokio::test]
async fn schedules_hold_their_ticks_while_redis_is_down_and_catch_up_after() {
    let mut redis = Redis::start();
    let fun = Backend::with(|_| async { Response::new(full("")) }).await;
    let gw = Gw::start(&format!(
        "[store]\nurl = \"{}\"\n[backends.fn]\nurls = [\"{}\"]\nretries = 0\n\
         [[schedules]]\nname = \"tick\"\ncron = \"@every 1s\"\nbackend = \"fn\"\npath = \"/tick\"\n\
         concurrency = \"allow\"\ncatch_up = \"all\"\n",
        redis.url(),
        fun.url()
    ))
    .await;
    fun.wait_for(1).await;
    redis.stop();
    let down = Instant::now();
    // Three ticks come due while Redis is down; none can be stored.
    let before = fun.count();
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert!(
        fun.count() <= before + 1,
        "only a run already stored may go"
    );
    redis.restart();
    // Back: the held ticks run, marked past due, each once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let late = fun
            .seen()
            .iter()
            .filter(|s| s.headers.get("x-fngate-past-due").is_some())
            .count();
        if late >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the held ticks never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    each_tick_once(&fun);
    assert!(down.elapsed() > Duration::from_secs(3));
    drop(gw);
}

#[tokio::test]
async fn rediss_reaches_a_tls_redis_through_the_configured_ca_and_refuses_one_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::common::tls::TestCa::new();
    let ca_path = ca.write(dir.path());
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
    let redis = Redis::start_tls(&cert, &key);
    let fun = Backend::with(|_| async { Response::new(full("over tls")) }).await;
    let routes = ASYNC.replace("URL", &fun.url());
    let gw = Gw::start(&format!(
        "[store]\nurl = \"{}\"\nca = \"{ca_path}\"\n{routes}",
        redis.tls_url("localhost")
    ))
    .await;
    let a = send(Request::post(gw.url("/work")).body(full("x")).unwrap()).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let location = a.header("location").unwrap();
    let done = job_result(gw.url(location)).await;
    assert_eq!(done.text(), "over tls");
    // Without the CA, the system's roots do not know it: no job is taken.
    let untrusted = Gw::start(&format!(
        "[store]\nurl = \"{}\"\n{routes}",
        redis.tls_url("localhost")
    ))
    .await;
    let refused = send(
        Request::post(untrusted.url("/work"))
            .body(full("y"))
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
}

#[tokio::test]
async fn an_instance_starting_on_a_shared_upload_directory_leaves_the_others_partial_uploads() {
    let redis = Redis::start();
    let fun = Backend::echo("fn").await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    // Another instance's upload, still streaming into its temporary file.
    let partial = files.join(".tmp-another-instance");
    std::fs::write(&partial, b"the first bytes").unwrap();
    let _gw = Gw::start(&format!(
        "[store]\nurl = \"{}\"\n[backends.fn]\nurls = [\"{}\"]\n[topics.files]\n\
         [[routes]]\nname = \"up\"\npath = \"/uploads/{{*key}}\"\nmethods = [\"PUT\"]\n\
         upload = {{ topic = \"files\", dir = \"{}\" }}\n",
        redis.url(),
        fun.url(),
        files.display()
    ))
    .await;
    assert!(
        partial.exists(),
        "an instance on Redis sweeps no shared upload directory"
    );
}
