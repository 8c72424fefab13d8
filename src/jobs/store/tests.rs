//! The store's conformance suite: written against the `Store` trait, run on
//! every implementation (the embedded one and Redis, on a redis-server of its own).

use std::collections::HashMap;
use std::sync::Arc;

use super::*;

fn policy() -> Policy {
    Policy {
        attempts: 3,
        backoff_ms: (10, 100),
        max_age_ms: 60_000,
        timeout_ms: 1_000,
        result_ttl_ms: 1_000,
        max_result: 1 << 20,
    }
}

fn job(id: &str, route: &str, now: Millis) -> NewJob {
    NewJob {
        id: id.into(),
        kind: Kind::Route,
        route: route.into(),
        partition: None,
        backend: "fn".into(),
        consumer: Some("alice".into()),
        idempotency: None,
        request: StoredRequest {
            method: "POST".into(),
            target: "/work?x=1".into(),
            headers: Bytes::from_static(b"content-type: text/plain\n"),
            body: Bytes::from_static(b"payload"),
            host: None,
        },
        traceparent: None,
        policy: policy(),
        now,
    }
}

fn claim(now: Millis, limit: usize, free: &[(&str, usize)]) -> Claim {
    Claim {
        backend: "fn".into(),
        owner: "me".into(),
        now,
        lease_until: now + 30_000,
        limit,
        route_free: free
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect::<HashMap<_, _>>(),
        other_free: 16,
    }
}

/// A redis-server of the test's own on a free loopback port, killed by pid when dropped.
pub(crate) struct TestRedis {
    child: std::process::Child,
    pub(crate) url: String,
}

impl TestRedis {
    pub(crate) fn start() -> Self {
        use std::io::BufRead as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        // Ready when it says so.
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        for line in out.lines() {
            if line
                .expect("redis-server output")
                .contains("Ready to accept connections")
            {
                break;
            }
        }
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every implementation, fresh (the Redis one lives as long as the guard).
fn stores(dir: &tempfile::TempDir) -> (Vec<Arc<dyn Store>>, TestRedis) {
    let sqlite: Arc<dyn Store> = Sqlite::open(&dir.path().join("conformance.db")).expect("opens");
    let server = TestRedis::start();
    let redis: Arc<dyn Store> = Redis::open(&crate::config::Store {
        path: dir.path().join("unused.db"),
        url: Some(server.url.clone()),
        ca: None,
        durability: crate::config::Durability::Primary,
        rate_limits_on_error: crate::config::OnError::Local,
        rate_limit_timeout: std::time::Duration::from_millis(50),
        explicit: true,
    })
    .expect("opens");
    (vec![sqlite, redis], server)
}

#[tokio::test]
async fn accepted_jobs_are_claimed_once_within_the_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        for (i, route) in ["a", "a", "a", "b"].iter().enumerate() {
            let r = s
                .accept(job(&format!("j{i}"), route, 1_000 + i as i64))
                .await
                .expect("accept");
            assert!(matches!(r, Accepted::New(_)));
        }
        let got = s
            .get("j0", false, 2_000)
            .await
            .expect("get")
            .expect("found");
        assert_eq!(
            (got.state, got.attempts, got.consumer.as_deref()),
            (JobState::Queued, 0, Some("alice"))
        );
        // Route a has one free slot: one of its jobs, and b's.
        let taken = s
            .claim(claim(5_000, 10, &[("a", 1), ("b", 5)]))
            .await
            .expect("claim")
            .jobs;
        let ids: Vec<&str> = taken.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["j0", "j3"]);
        assert_eq!(taken[0].attempt, 1);
        assert_eq!(taken[0].request.body, Bytes::from_static(b"payload"));
        assert_eq!(taken[0].request.target, "/work?x=1");
        assert_eq!(taken[0].policy, policy());
        // Claimed jobs are leased: not taken again while the lease holds.
        let again = s
            .claim(claim(5_000, 10, &[("a", 10), ("b", 10)]))
            .await
            .expect("claim");
        let ids: Vec<&str> = again.jobs.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["j1", "j2"]);
        // Every job is leased: the next is due when the first lease lapses.
        assert_eq!(again.next_due, Some(35_000));
        // Not yet due: nothing.
        assert!(s
            .claim(claim(500, 10, &[]))
            .await
            .expect("claim")
            .jobs
            .is_empty());
    }
}

#[tokio::test]
async fn leases_belong_to_their_holder_and_lapse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        s.accept(job("j", "a", 0)).await.expect("accept");
        let taken = s.claim(claim(10, 1, &[])).await.expect("claim").jobs;
        assert_eq!(taken.len(), 1);
        assert!(s.renew("j", "me", 60_000).await.expect("renew"));
        assert!(!s.renew("j", "someone-else", 90_000).await.expect("renew"));
        // Past the lease, another instance takes it over; the old holder's answer is refused.
        let mut other = claim(60_001, 1, &[]);
        other.owner = "other".into();
        let taken = s.claim(other).await.expect("claim").jobs;
        assert_eq!(taken[0].attempt, 2);
        let late = s.finish(
            "j",
            "me",
            None,
            Next::Retry {
                at: 0,
                timed_out: false,
            },
            60_002,
        );
        assert!(!late.await.expect("finish"), "a lost lease writes nothing");
        let r = JobResult {
            status: 201,
            headers: Bytes::new(),
            body: Bytes::from_static(b"done"),
        };
        let a = Attempt {
            n: 2,
            at: 60_001,
            status: Some(201),
            duration_ms: 3,
            error: None,
        };
        assert!(s
            .finish(
                "j",
                "other",
                Some(a.clone()),
                Next::Succeeded(r.clone()),
                60_010
            )
            .await
            .expect("finish"));
        let job = s.get("j", true, 60_020).await.expect("get").expect("found");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.result, Some(r));
        assert_eq!(job.log, vec![a]);
        // Finished jobs are kept result_ttl (1 s), then swept.
        assert!(s.get("j", false, 61_011).await.expect("get").is_none());
        assert_eq!(s.sweep(61_011).await.expect("sweep"), 1);
    }
}

#[tokio::test]
async fn a_release_spends_no_attempt_and_retries_wait_their_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        s.accept(job("j", "a", 0)).await.expect("accept");
        s.claim(claim(0, 1, &[])).await.expect("claim");
        assert!(s
            .finish("j", "me", None, Next::Release { at: 100 }, 1)
            .await
            .expect("finish"));
        let j = s.get("j", false, 2).await.expect("get").expect("found");
        assert_eq!(
            (j.state, j.attempts, j.next_attempt),
            (JobState::Queued, 0, Some(100))
        );
        let t = s.claim(claim(100, 1, &[])).await.expect("claim").jobs;
        assert_eq!(t[0].attempt, 1);
        let a = Attempt {
            n: 1,
            at: 100,
            status: Some(503),
            duration_ms: 1,
            error: Some("503".into()),
        };
        s.finish(
            "j",
            "me",
            Some(a),
            Next::Retry {
                at: 500,
                timed_out: false,
            },
            101,
        )
        .await
        .expect("finish");
        let j = s.get("j", false, 102).await.expect("get").expect("found");
        assert_eq!(
            (j.state, j.last_error.as_deref()),
            (JobState::Retrying, Some("503"))
        );
        // Not due yet: nothing taken, and the claim says when to look again.
        let early = s.claim(claim(499, 1, &[])).await.expect("claim");
        assert!(early.jobs.is_empty());
        assert_eq!(early.next_due, Some(500));
        assert_eq!(
            s.claim(claim(500, 1, &[])).await.expect("claim").jobs[0].attempt,
            2
        );
        let b = s.backlog(600).await.expect("backlog");
        assert_eq!(
            b,
            vec![Pending {
                backend: "fn".into(),
                jobs: 1,
                oldest: 0,
                next_due: 500 + 30_000
            }]
        );
    }
}

#[tokio::test]
async fn idempotency_keys_return_the_job_or_refuse_another_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        let keyed = |id: &str, fp: u8| {
            let mut j = job(id, "a", 0);
            j.idempotency = Some(Idempotency {
                scope: "a\nalice".into(),
                key: "k".into(),
                fingerprint: [fp; 32],
            });
            j
        };
        assert!(matches!(
            s.accept(keyed("first", 1)).await.expect("accept"),
            Accepted::New(_)
        ));
        match s.accept(keyed("second", 1)).await.expect("accept") {
            Accepted::Existing(j) => assert_eq!(j.id, "first"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.accept(keyed("third", 2)).await.expect("accept"),
            Accepted::Mismatch
        ));
        assert!(
            s.get("second", false, 0).await.expect("get").is_none(),
            "no second job"
        );
    }
}

#[tokio::test]
async fn cancel_redrive_and_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        s.accept(job("c", "a", 0)).await.expect("accept");
        assert_eq!(s.cancel("c").await.expect("cancel"), Cancel::Cancelled);
        assert_eq!(s.cancel("c").await.expect("cancel"), Cancel::Missing);
        s.accept(job("d", "a", 0)).await.expect("accept");
        s.claim(claim(0, 1, &[])).await.expect("claim");
        assert_eq!(s.redrive("d", 1).await.expect("redrive"), Redrive::NotDead);
        s.finish(
            "d",
            "me",
            None,
            Next::Dead {
                result: None,
                timed_out: true,
            },
            1,
        )
        .await
        .expect("finish");
        assert_eq!(s.cancel("d").await.expect("cancel"), Cancel::Finished);
        let dead = s
            .list(
                ListFilter {
                    state: Some(JobState::Dead),
                    route: None,
                    limit: 10,
                },
                2,
            )
            .await
            .expect("list");
        assert_eq!((dead.len(), dead[0].timed_out), (1, true));
        assert_eq!(s.redrive("d", 5).await.expect("redrive"), Redrive::Queued);
        let j = s.get("d", false, 6).await.expect("get").expect("found");
        assert_eq!((j.state, j.attempts), (JobState::Queued, 0));
        assert!(s.purge("d").await.expect("purge"));
        assert!(!s.purge("d").await.expect("purge"));
    }
}

fn delivery(id: &str, partition: Option<&str>, now: Millis) -> NewJob {
    let mut j = job(id, "sub", now);
    j.kind = Kind::Subscription;
    j.partition = partition.map(str::to_owned);
    j
}

fn event(id: &str, until: Option<Millis>, deliveries: Vec<NewJob>) -> NewEvent {
    NewEvent {
        topic: "t".into(),
        source: "/s".into(),
        id: id.into(),
        dedupe_until: until,
        deliveries,
    }
}

#[tokio::test]
async fn a_published_event_is_stored_once_within_its_dedupe_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        let fresh = s
            .publish(
                vec![
                    event("e1", Some(1_000), vec![delivery("d1", None, 0)]),
                    // The same event twice in one batch: the second is a duplicate.
                    event("e1", Some(1_000), vec![delivery("d2", None, 0)]),
                    event("e2", None, vec![delivery("d3", None, 0)]),
                ],
                0,
            )
            .await
            .expect("publish");
        assert_eq!(fresh, [true, false, true]);
        assert!(s.get("d2", false, 1).await.expect("get").is_none());
        let d1 = s.get("d1", false, 1).await.expect("get").expect("stored");
        assert_eq!(d1.kind, Kind::Subscription);
        // Past the window the same identity is a new event.
        let again = s
            .publish(
                vec![event("e1", Some(3_000), vec![delivery("d4", None, 1_000)])],
                1_000,
            )
            .await
            .expect("publish");
        assert_eq!(again, [true]);
        // Without dedupe (no window) nothing is remembered.
        let e2 = s
            .publish(vec![event("e2", None, vec![delivery("d5", None, 5)])], 5)
            .await
            .expect("publish");
        assert_eq!(e2, [true]);
    }
}

#[tokio::test]
async fn a_partition_is_claimed_one_job_at_a_time_in_accepted_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        let jobs = ["p1", "p2", "p3"]
            .iter()
            .map(|id| event(id, None, vec![delivery(id, Some("sub\nk"), 0)]))
            .chain(std::iter::once(event(
                "free",
                None,
                vec![delivery("free", None, 0)],
            )))
            .collect();
        s.publish(jobs, 0).await.expect("publish");
        let ids = |c: &Claims| c.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        let first = s.claim(claim(10, 10, &[])).await.expect("claim");
        assert_eq!(
            ids(&first),
            ["p1", "free"],
            "one of the partition, and the rest"
        );
        assert!(s
            .claim(claim(10, 10, &[]))
            .await
            .expect("claim")
            .jobs
            .is_empty());
        let ok = Next::Succeeded(JobResult {
            status: 200,
            headers: Bytes::new(),
            body: Bytes::new(),
        });
        assert!(s.finish("p1", "me", None, ok, 11).await.expect("finish"));
        let next = s.claim(claim(12, 10, &[])).await.expect("claim");
        assert_eq!(ids(&next), ["p2"]);
        // A retry keeps its place: p3 waits for it.
        let retry = Next::Retry {
            at: 100,
            timed_out: false,
        };
        assert!(s.finish("p2", "me", None, retry, 13).await.expect("finish"));
        assert!(s
            .claim(claim(50, 10, &[]))
            .await
            .expect("claim")
            .jobs
            .is_empty());
        assert_eq!(
            ids(&s.claim(claim(100, 10, &[])).await.expect("claim")),
            ["p2"]
        );
    }
}

#[tokio::test]
async fn subscriptions_pause_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        assert!(s.paused().await.expect("paused").is_empty());
        s.pause("b", 1).await.expect("pause");
        s.pause("a", 2).await.expect("pause");
        s.pause("a", 3).await.expect("pause again");
        assert_eq!(s.paused().await.expect("paused"), ["a", "b"]);
        assert!(s.resume("a").await.expect("resume"));
        assert!(!s.resume("a").await.expect("resume"), "not paused any more");
        assert_eq!(s.paused().await.expect("paused"), ["b"]);
    }
}

fn run(id: &str, now: Millis) -> NewJob {
    let mut j = job(id, "nightly", now);
    j.kind = Kind::Schedule;
    j
}

fn tick(last: Option<Millis>, job: Option<NewJob>, forbid: bool, replace: bool) -> Tick {
    Tick {
        schedule: "nightly".into(),
        last_tick: last,
        job,
        forbid,
        replace,
        outcome: "ok",
        now: last.unwrap_or(0),
    }
}

#[tokio::test]
async fn a_tick_runs_once_and_follows_the_concurrency_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        let stored = |r: Fired| matches!(r, Fired::Stored { .. });
        assert!(stored(
            s.tick(tick(Some(10), Some(run("n@10", 10)), true, false))
                .await
                .expect("tick")
        ));
        // The same tick again: one job per tick.
        assert_eq!(
            s.tick(tick(Some(10), Some(run("n@10", 10)), false, false))
                .await
                .expect("tick"),
            Fired::Duplicate
        );
        // forbid: n@10 is unfinished, so n@20 is skipped (but dealt with).
        assert_eq!(
            s.tick(tick(Some(20), Some(run("n@20", 20)), true, false))
                .await
                .expect("tick"),
            Fired::Busy
        );
        assert!(s.get("n@20", false, 21).await.expect("get").is_none());
        // replace: n@10 goes, n@30 comes.
        assert_eq!(
            s.tick(tick(Some(30), Some(run("n@30", 30)), false, true))
                .await
                .expect("tick"),
            Fired::Stored {
                replaced: vec!["n@10".into()]
            }
        );
        assert!(s.get("n@10", false, 31).await.expect("get").is_none());
        // A tick dealt with but not run moves the last tick, never back.
        assert_eq!(
            s.tick(tick(Some(40), None, false, false))
                .await
                .expect("tick"),
            Fired::Recorded
        );
        s.tick(tick(Some(5), None, false, false))
            .await
            .expect("tick");
        let state = s.schedules().await.expect("schedules");
        assert_eq!(
            state,
            [ScheduleState {
                name: "nightly".into(),
                last_tick: Some(40),
                last_fire: Some(30),
                last_outcome: Some("ok".into()),
                last_job: Some("n@30".into()),
            }]
        );
    }
}

#[tokio::test]
async fn a_secret_is_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (all, _redis) = stores(&dir);
    for s in all {
        let a = s.secret("k").await.expect("secret");
        assert_eq!(a.len(), 32);
        assert_eq!(s.secret("k").await.expect("secret"), a);
        assert_ne!(s.secret("other").await.expect("secret"), a);
    }
}

#[tokio::test]
async fn a_reopened_store_takes_up_the_attempts_of_a_process_that_died() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.db");
    {
        let s = Sqlite::open(&path).expect("opens");
        s.accept(job("j", "a", 0)).await.expect("accept");
        assert_eq!(
            s.claim(claim(0, 1, &[])).await.expect("claim").jobs.len(),
            1
        );
        // A second process cannot open a store in use.
        let busy = Sqlite::open(&path).expect_err("locked");
        assert!(busy.to_string().contains("another fngate"), "{busy}");
    }
    let s = Sqlite::open(&path).expect("reopens");
    let t = s.claim(claim(1, 1, &[])).await.expect("claim").jobs;
    assert_eq!((t.len(), t[0].attempt), (1, 2), "due at once, lease or not");
}

#[test]
fn headers_survive_encoding() {
    let mut h = http::HeaderMap::new();
    h.append("x-a", http::HeaderValue::from_static("1"));
    h.append("x-a", http::HeaderValue::from_static("two: colons"));
    h.insert(
        "x-b",
        http::HeaderValue::from_bytes(b"\xff bytes").expect("value"),
    );
    assert_eq!(decode_headers(&encode_headers(&h)), h);
}
