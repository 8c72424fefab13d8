//! The embedded store: SQLite in WAL mode, `synchronous = FULL`, one writer
//! thread that commits in groups. Every write that arrives while a commit is
//! on disk joins the next transaction, so an fsync is paid per batch, not per
//! job; each write runs in its own savepoint, so one that fails leaves the
//! others in the batch. Reads go to their own connections (WAL lets them run
//! beside the writer) on the blocking pool.
//!
//! One process owns a store: `<path>.lock` is locked for the process'
//! lifetime, so a running attempt found at start-up belonged to a process
//! that is gone, and is due again at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::oneshot;

use super::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    backend TEXT NOT NULL,
    consumer TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    -- queued or retrying: when the next attempt is due; running: when its lease lapses
    due INTEGER,
    lease_owner TEXT,
    last_error TEXT,
    timed_out INTEGER NOT NULL DEFAULT 0,
    -- finished: when the job and its answer are deleted
    expires INTEGER,
    idem_scope TEXT,
    idem_key TEXT,
    fingerprint BLOB,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    host TEXT,
    traceparent TEXT,
    -- 'route' or 'subscription': what `route` names
    kind TEXT NOT NULL,
    -- jobs of one partition go one at a time, in rowid (accepted) order
    partition TEXT,
    -- the delivery policy, fixed at accept
    max_attempts INTEGER NOT NULL,
    backoff_min_ms INTEGER NOT NULL,
    backoff_max_ms INTEGER NOT NULL,
    max_age_ms INTEGER NOT NULL,
    timeout_ms INTEGER NOT NULL,
    result_ttl_ms INTEGER NOT NULL,
    max_result INTEGER NOT NULL,
    result_status INTEGER,
    result_headers BLOB,
    result_body BLOB
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idem_scope, idem_key) WHERE idem_key IS NOT NULL;
-- created: the backlog's oldest job, from the index alone
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (backend, due, created) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_partition ON jobs (partition) WHERE partition IS NOT NULL AND expires IS NULL;
-- (topic, source, id) of published events, for dedupe_window
CREATE TABLE IF NOT EXISTS event_ids (
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (topic, source, id)
) STRICT, WITHOUT ROWID;
-- each schedule's last tick dealt with and its last fire
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    last_tick INTEGER,
    last_fire INTEGER,
    last_outcome TEXT,
    last_job TEXT
) STRICT;
-- secrets fngate made for itself (the key that signs file URLs)
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
-- subscriptions paused by a 410, until resumed
CREATE TABLE IF NOT EXISTS paused (
    subscription TEXT PRIMARY KEY,
    since INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS attempts (
    job TEXT NOT NULL,
    n INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status INTEGER,
    duration_ms INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (job, n)
) STRICT, WITHOUT ROWID;
";

/// Bumped whenever SCHEMA changes shape: a store of another version is
/// refused at start-up rather than misread.
const SCHEMA_VERSION: i64 = 4;

/// The most writes one transaction takes.
const BATCH: usize = 1024;

type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// A write: runs in the writer's transaction (or is told why it cannot) and
/// says whether it succeeded and how to answer once the commit is known.
type Work = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> (bool, Reply) + Send>;

pub(crate) struct Sqlite {
    path: PathBuf,
    /// The writer thread ends when this (the last sender) is dropped.
    writer: mpsc::Sender<Work>,
    readers: Arc<Mutex<Vec<Connection>>>,
    _lock: File,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").field("path", &self.path).finish()
    }
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl Sqlite {
    /// Opens (creating it and its directory if missing) and checks the store.
    pub(crate) fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| open_err(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|e| {
            open_err(format!(
                "another fngate holds {} ({e}); give each instance its own store, or share one through Redis",
                lock_path.display()
            ))
        })?;
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let setup = || -> Result<(), String> {
            tune(&conn).map_err(|e| e.to_string())?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
                .map_err(|e| e.to_string())?;
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(|e| e.to_string())?;
            let tables: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            if tables > 0 && version != SCHEMA_VERSION {
                return Err(format!(
                    "its schema is version {version}, this fngate reads version {SCHEMA_VERSION}"
                ));
            }
            conn.execute_batch(SCHEMA)
                .and_then(|()| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
                // Leases held by a process that died are ours to take now.
                .and_then(|()| {
                    conn.execute(
                        "UPDATE jobs SET due = 0, lease_owner = NULL WHERE state = 'running'",
                        [],
                    )
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        };
        setup().map_err(open_err)?;
        let (tx, rx) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("fngate-store".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            _lock: lock,
        }))
    }

    /// Runs `f` in the next group commit; answers once the commit is on disk.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Op<T> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(e) => Err(e.clone()),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let _ = tx.send(match (result, commit) {
                    (Ok(_), Some(e)) => Err(e),
                    (r, _) => r,
                });
            });
            (ok, reply)
        });
        let sent = self.writer.send(work).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Op<T> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.lock().ok().and_then(|mut r| r.pop());
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = Connection::open_with_flags(
                            &path,
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                        )
                        .map_err(failed)?;
                        tune(&c).map_err(failed)?;
                        c
                    }
                };
                let result = f(&conn).map_err(failed);
                if let Ok(mut r) = readers.lock() {
                    if r.len() < 4 {
                        r.push(conn);
                    }
                }
                result
            })
            .await
            .map_err(failed)?
        })
    }
}

/// The writer thread: one transaction per batch of waiting writes.
fn writer(conn: Connection, rx: mpsc::Receiver<Work>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            let e = failed(e);
            for work in batch {
                let (_, reply) = work(Err(&e));
                reply(Some(e.clone()));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        for work in batch {
            let reply = match exec(&conn, "SAVEPOINT w") {
                Ok(()) => {
                    let (ok, reply) = work(Ok(&conn));
                    if !ok {
                        let _ = exec(&conn, "ROLLBACK TO w");
                    }
                    let _ = exec(&conn, "RELEASE w");
                    reply
                }
                Err(e) => work(Err(&failed(e))).1,
            };
            replies.push(reply);
        }
        let commit = exec(&conn, "COMMIT").err().map(|e| {
            let _ = exec(&conn, "ROLLBACK");
            failed(e)
        });
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// Per connection: a page cache that holds the hot part of the indexes, and
/// reads through a memory map rather than a copy per page.
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.pragma_update(None, "mmap_size", 256i64 << 20)?;
    Ok(())
}

/// Runs one statement, prepared once per connection (the writer runs these per write).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

const JOB_COLUMNS: &str = "id, route, backend, consumer, state, attempts, created, updated, due, \
     last_error, timed_out, result_status, result_headers, result_body, expires, kind";

fn job_of(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: String = row.get(4)?;
    let state = JobState::parse(&state).unwrap_or(JobState::Dead);
    let due: Option<Millis> = row.get(8)?;
    let status: Option<u16> = row.get(11)?;
    let result = match status {
        Some(status) => Some(JobResult {
            status,
            headers: Bytes::from(row.get::<_, Option<Vec<u8>>>(12)?.unwrap_or_default()),
            body: Bytes::from(row.get::<_, Option<Vec<u8>>>(13)?.unwrap_or_default()),
        }),
        None => None,
    };
    Ok(Job {
        kind: Kind::parse(&row.get::<_, String>(15)?),
        id: row.get(0)?,
        route: row.get(1)?,
        backend: row.get(2)?,
        consumer: row.get(3)?,
        state,
        attempts: row.get(5)?,
        created: row.get(6)?,
        updated: row.get(7)?,
        next_attempt: matches!(state, JobState::Queued | JobState::Retrying)
            .then_some(due)
            .flatten(),
        last_error: row.get(9)?,
        timed_out: row.get::<_, i64>(10)? != 0,
        result,
        log: Vec::new(),
    })
}

fn load_job(conn: &Connection, id: &str, log: bool, now: Millis) -> rusqlite::Result<Option<Job>> {
    let mut job = conn
        .query_row(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND (expires IS NULL OR expires > ?2)"
            ),
            params![id, now],
            job_of,
        )
        .optional()?;
    if let (Some(job), true) = (&mut job, log) {
        job.log = attempts_of(conn, id)?;
    }
    Ok(job)
}

fn attempts_of(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT n, at, status, duration_ms, error FROM attempts WHERE job = ?1 ORDER BY n",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Attempt {
            n: r.get(0)?,
            at: r.get(1)?,
            status: r.get(2)?,
            duration_ms: r.get::<_, i64>(3)? as u64,
            error: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// The policy columns, in this order, in `jobs`.
/// (A macro, so statements stay literals that `concat!` joins at compile time.)
macro_rules! policy_columns {
    () => {
        "max_attempts, backoff_min_ms, backoff_max_ms, max_age_ms, timeout_ms, result_ttl_ms, max_result"
    };
}

/// An update that changes the job only while `?2` holds its lease (`?1` is the id).
macro_rules! while_leased {
    ($set:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            " WHERE id = ?1 AND state = 'running' AND lease_owner = ?2"
        )
    };
}

fn policy_at(row: &Row<'_>, first: usize) -> rusqlite::Result<Policy> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(first + i)?.max(0) as u64) };
    Ok(Policy {
        attempts: n(0)?.min(u64::from(u32::MAX)) as u32,
        backoff_ms: (n(1)?, n(2)?),
        max_age_ms: n(3)?,
        timeout_ms: n(4)?,
        result_ttl_ms: n(5)?,
        max_result: n(6)?,
    })
}

/// SQLite integers are signed: a bound past i64::MAX is kept as i64::MAX.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn sql(e: rusqlite::Error) -> StoreError {
    failed(e)
}

impl Store for Sqlite {
    fn accept(&self, job: NewJob) -> Op<Accepted> {
        self.write(move |conn| {
            if let Some(idem) = &job.idempotency {
                let found: Option<(String, Vec<u8>, Option<Millis>)> = conn
                    .prepare_cached(
                        "SELECT id, fingerprint, expires FROM jobs WHERE idem_scope = ?1 AND idem_key = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![idem.scope, idem.key], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                    })
                    .optional()
                    .map_err(sql)?;
                if let Some((id, fingerprint, expires)) = found {
                    if expires.is_some_and(|e| e <= job.now) {
                        // Past its result_ttl: the key is free again.
                        delete(conn, &id).map_err(sql)?;
                    } else if fingerprint == idem.fingerprint {
                        let existing = load_job(conn, &id, false, job.now).map_err(sql)?;
                        return existing
                            .map(Accepted::Existing)
                            .ok_or_else(|| failed("idempotent job vanished"));
                    } else {
                        return Ok(Accepted::Mismatch);
                    }
                }
            }
            insert(conn, &job).map_err(sql)?;
            Ok(Accepted::New(Job {
                kind: job.kind,
                id: job.id,
                route: job.route,
                backend: job.backend,
                consumer: job.consumer,
                state: JobState::Queued,
                attempts: 0,
                created: job.now,
                updated: job.now,
                next_attempt: Some(job.now),
                last_error: None,
                timed_out: false,
                result: None,
                log: Vec::new(),
            }))
        })
    }

    fn get(&self, id: &str, log: bool, now: Millis) -> Op<Option<Job>> {
        let id = id.to_owned();
        self.read(move |conn| load_job(conn, &id, log, now))
    }

    fn claim(&self, claim: Claim) -> Op<Claims> {
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(concat!(
                    "SELECT id, route, created, attempts, method, target, headers, body, host, traceparent, kind, ",
                    policy_columns!(),
                    ", due \
                     FROM jobs WHERE backend = ?1 AND due IS NOT NULL AND due <= ?2 \
                     AND (partition IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.partition = jobs.partition \
                          AND o.expires IS NULL AND o.rowid < jobs.rowid)) \
                     ORDER BY due LIMIT ?3"
                ))
                .map_err(sql)?;
            // More candidates than slots: some routes may be full.
            let candidates = (claim.limit.saturating_mul(4)).clamp(16, 4096) as i64;
            let rows = stmt
                .query_map(params![claim.backend, claim.now, candidates], |r| {
                    Ok(Claimed {
                        id: r.get(0)?,
                        route: r.get(1)?,
                        created: r.get(2)?,
                        attempt: r.get::<_, u32>(3)? + 1,
                        request: StoredRequest {
                            method: r.get(4)?,
                            target: r.get(5)?,
                            headers: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                            body: Bytes::from(r.get::<_, Vec<u8>>(7)?),
                            host: r.get(8)?,
                        },
                        traceparent: r.get(9)?,
                        kind: Kind::parse(&r.get::<_, String>(10)?),
                        policy: policy_at(r, 11)?,
                        due: r.get(18)?,
                    })
                })
                .map_err(sql)?;
            let mut free = claim.route_free.clone();
            let mut taken = Vec::new();
            for row in rows {
                if taken.len() >= claim.limit {
                    break;
                }
                let job = row.map_err(sql)?;
                let slots = free.entry(job.route.clone()).or_insert(claim.other_free);
                if *slots == 0 {
                    continue;
                }
                *slots -= 1;
                taken.push(job);
            }
            drop(stmt);
            let mut update = conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, due = ?2, lease_owner = ?3, updated = ?4 WHERE id = ?1",
                )
                .map_err(sql)?;
            for job in &taken {
                update
                    .execute(params![job.id, claim.lease_until, claim.owner, claim.now])
                    .map_err(sql)?;
            }
            let next_due = conn
                .prepare_cached(
                    "SELECT MIN(due) FROM jobs WHERE backend = ?1 AND due IS NOT NULL",
                )
                .and_then(|mut s| s.query_row([&claim.backend], |r| r.get(0)))
                .map_err(sql)?;
            Ok(Claims {
                jobs: taken,
                next_due,
            })
        })
    }

    fn renew(&self, id: &str, owner: &str, until: Millis) -> Op<bool> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE jobs SET due = ?3 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                )
                .and_then(|mut s| s.execute(params![id, owner, until]))
                .map_err(sql)?;
            Ok(n == 1)
        })
    }

    fn finish(
        &self,
        id: &str,
        owner: &str,
        attempt: Option<Attempt>,
        next: Next,
        now: Millis,
    ) -> Op<bool> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            // Each statement changes the job only while this owner holds its lease.
            let run = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
                conn.prepare_cached(sql).and_then(|mut s| s.execute(params))
            };
            let error = attempt.as_ref().and_then(|a| a.error.as_deref());
            let answered = |state: &str, r: &JobResult| {
                run(
                    while_leased!(
                        "state = ?3, due = NULL, lease_owner = NULL, updated = ?4, expires = ?4 + result_ttl_ms, \
                         last_error = COALESCE(?5, last_error), timed_out = 0, result_status = ?6, result_headers = ?7, result_body = ?8"
                    ),
                    params![id, owner, state, now, error, r.status, &r.headers[..], &r.body[..]],
                )
            };
            let n = match &next {
                Next::Succeeded(r) => answered("succeeded", r),
                Next::Dead { result: Some(r), .. } => answered("dead", r),
                Next::Dead { result: None, timed_out } => run(
                    while_leased!(
                        "state = 'dead', due = NULL, lease_owner = NULL, updated = ?3, expires = ?3 + result_ttl_ms, \
                         last_error = COALESCE(?4, last_error), timed_out = ?5"
                    ),
                    params![id, owner, now, error, *timed_out as i64],
                ),
                Next::Retry { at, timed_out } => run(
                    while_leased!(
                        "state = 'retrying', due = ?3, lease_owner = NULL, updated = ?4, \
                         last_error = COALESCE(?5, last_error), timed_out = ?6"
                    ),
                    params![id, owner, at, now, error, *timed_out as i64],
                ),
                Next::Release { at } => run(
                    while_leased!(
                        "state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END, \
                         attempts = MAX(attempts - 1, 0), due = ?3, lease_owner = NULL, updated = ?4"
                    ),
                    params![id, owner, at, now],
                ),
            }
            .map_err(sql)?;
            if n != 1 {
                return Ok(false);
            }
            if let Some(a) = &attempt {
                run(
                    "INSERT OR REPLACE INTO attempts (job, n, at, status, duration_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, a.n, a.at, a.status, int(a.duration_ms), a.error],
                )
                .map_err(sql)?;
            }
            Ok(true)
        })
    }

    fn publish(&self, events: Vec<NewEvent>, now: Millis) -> Op<Vec<bool>> {
        self.write(move |conn| {
            let mut fresh = Vec::with_capacity(events.len());
            for event in &events {
                if let Some(until) = event.dedupe_until {
                    let seen: Option<Millis> = conn
                        .prepare_cached(
                            "SELECT until FROM event_ids WHERE topic = ?1 AND source = ?2 AND id = ?3",
                        )
                        .and_then(|mut s| {
                            s.query_row(params![event.topic, event.source, event.id], |r| {
                                r.get(0)
                            })
                            .optional()
                        })
                        .map_err(sql)?;
                    if seen.is_some_and(|u| u > now) {
                        fresh.push(false);
                        continue;
                    }
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO event_ids (topic, source, id, until) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![event.topic, event.source, event.id, until]))
                    .map_err(sql)?;
                }
                for job in &event.deliveries {
                    insert(conn, job).map_err(sql)?;
                }
                fresh.push(true);
            }
            Ok(fresh)
        })
    }

    fn pause(&self, subscription: &str, now: Millis) -> Op<()> {
        let name = subscription.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO paused (subscription, since) VALUES (?1, ?2)",
                params![name, now],
            )
            .map(drop)
            .map_err(sql)
        })
    }

    fn resume(&self, subscription: &str) -> Op<bool> {
        let name = subscription.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM paused WHERE subscription = ?1", [&name])
                .map(|n| n == 1)
                .map_err(sql)
        })
    }

    fn paused(&self) -> Op<Vec<String>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT subscription FROM paused ORDER BY subscription")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn secret(&self, name: &str) -> Op<Vec<u8>> {
        let name = name.to_owned();
        self.write(move |conn| {
            use ring::rand::SecureRandom as _;
            let mut fresh = [0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut fresh)
                .map_err(|_| failed("no randomness for a secret"))?;
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, &fresh[..]],
            )
            .map_err(sql)?;
            conn.query_row("SELECT value FROM secrets WHERE name = ?1", [&name], |r| {
                r.get(0)
            })
            .map_err(sql)
        })
    }

    fn schedules(&self) -> Op<Vec<ScheduleState>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, last_tick, last_fire, last_outcome, last_job FROM schedules ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ScheduleState {
                    name: r.get(0)?,
                    last_tick: r.get(1)?,
                    last_fire: r.get(2)?,
                    last_outcome: r.get(3)?,
                    last_job: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    fn tick(&self, tick: Tick) -> Op<Fired> {
        self.write(move |conn| {
            // The outcome (when a run was stored or skipped) and the run's id.
            let record = |fired: Option<(&str, Option<&str>)>| {
                conn.prepare_cached(
                    "INSERT INTO schedules (name, last_tick, last_fire, last_outcome, last_job) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (name) DO UPDATE SET \
                       last_tick = MAX(COALESCE(last_tick, excluded.last_tick), COALESCE(excluded.last_tick, last_tick)), \
                       last_fire = COALESCE(excluded.last_fire, last_fire), \
                       last_outcome = COALESCE(excluded.last_outcome, last_outcome), \
                       last_job = COALESCE(excluded.last_job, last_job)",
                )?
                .execute(params![
                    tick.schedule,
                    tick.last_tick,
                    fired.map(|_| tick.now),
                    fired.map(|(o, _)| o),
                    fired.and_then(|(_, j)| j),
                ])
            };
            let Some(job) = &tick.job else {
                record(None).map_err(sql)?;
                return Ok(Fired::Recorded);
            };
            let exists: bool = conn
                .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")
                .and_then(|mut s| s.exists([&job.id]))
                .map_err(sql)?;
            if exists {
                record(None).map_err(sql)?;
                return Ok(Fired::Duplicate);
            }
            let unfinished: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM jobs WHERE kind = 'schedule' AND route = ?1 AND expires IS NULL",
                )
                .and_then(|mut s| {
                    s.query_map([&tick.schedule], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                })
                .map_err(sql)?;
            if tick.forbid && !unfinished.is_empty() {
                record(Some(("skipped", None))).map_err(sql)?;
                return Ok(Fired::Busy);
            }
            let mut replaced = Vec::new();
            if tick.replace {
                for id in unfinished {
                    delete(conn, &id).map_err(sql)?;
                    replaced.push(id);
                }
            }
            insert(conn, job).map_err(sql)?;
            record(Some((tick.outcome, Some(&job.id)))).map_err(sql)?;
            Ok(Fired::Stored { replaced })
        })
    }

    fn cancel(&self, id: &str) -> Op<Cancel> {
        let id = id.to_owned();
        self.write(move |conn| {
            let state: Option<String> = conn
                .query_row("SELECT state FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            match state.as_deref().and_then(JobState::parse) {
                None => Ok(Cancel::Missing),
                Some(s) if s.finished() => Ok(Cancel::Finished),
                Some(_) => {
                    delete(conn, &id).map_err(sql)?;
                    Ok(Cancel::Cancelled)
                }
            }
        })
    }

    fn redrive(&self, id: &str, now: Millis) -> Op<Redrive> {
        let id = id.to_owned();
        self.write(move |conn| {
            let state: Option<String> = conn
                .query_row("SELECT state FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            match state.as_deref() {
                None => Ok(Redrive::Missing),
                Some("dead") => {
                    conn.execute("DELETE FROM attempts WHERE job = ?1", [&id])
                        .map_err(sql)?;
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', attempts = 0, due = ?2, updated = ?2, expires = NULL, \
                         last_error = NULL, timed_out = 0, result_status = NULL, result_headers = NULL, result_body = NULL, \
                         created = ?2 WHERE id = ?1",
                        params![id, now],
                    )
                    .map_err(sql)?;
                    Ok(Redrive::Queued)
                }
                Some(_) => Ok(Redrive::NotDead),
            }
        })
    }

    fn purge(&self, id: &str) -> Op<bool> {
        let id = id.to_owned();
        self.write(move |conn| delete(conn, &id).map_err(sql))
    }

    fn list(&self, filter: ListFilter, now: Millis) -> Op<Vec<Job>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR route = ?2) \
                 AND (expires IS NULL OR expires > ?3) ORDER BY created DESC, id LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![
                    filter.state.map(JobState::as_str),
                    filter.route,
                    now,
                    filter.limit as i64
                ],
                job_of,
            )?;
            let mut jobs: Vec<Job> = rows.collect::<rusqlite::Result<_>>()?;
            for job in &mut jobs {
                if job.state == JobState::Dead {
                    job.log = attempts_of(conn, &job.id)?;
                }
            }
            Ok(jobs)
        })
    }

    fn sweep(&self, now: Millis) -> Op<u64> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM attempts WHERE job IN (SELECT id FROM jobs WHERE expires IS NOT NULL AND expires <= ?1)",
                [now],
            )
            .map_err(sql)?;
            let n = conn
                .execute(
                    "DELETE FROM jobs WHERE expires IS NOT NULL AND expires <= ?1",
                    [now],
                )
                .map_err(sql)?;
            conn.execute("DELETE FROM event_ids WHERE until <= ?1", [now])
                .map_err(sql)?;
            Ok(n as u64)
        })
    }

    fn backlog(&self, _now: Millis) -> Op<Vec<Pending>> {
        self.read(move |conn| {
            // From the due index alone: no table row is read.
            let mut stmt = conn.prepare_cached(
                "SELECT backend, COUNT(*), MIN(created), MIN(due) FROM jobs WHERE due IS NOT NULL GROUP BY backend",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Pending {
                    backend: r.get(0)?,
                    jobs: r.get::<_, i64>(1)?.max(0) as u64,
                    oldest: r.get(2)?,
                    next_due: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }
}

fn insert(conn: &Connection, job: &NewJob) -> rusqlite::Result<()> {
    let (scope, key, fingerprint) = match &job.idempotency {
        Some(i) => (
            Some(i.scope.as_str()),
            Some(i.key.as_str()),
            Some(&i.fingerprint[..]),
        ),
        None => (None, None, None),
    };
    let r = &job.request;
    let p = &job.policy;
    conn.prepare_cached(concat!(
        "INSERT INTO jobs (id, route, backend, consumer, state, attempts, created, updated, due, \
         idem_scope, idem_key, fingerprint, method, target, headers, body, host, traceparent, kind, partition, ",
        policy_columns!(),
        ") \
         VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
         ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
    ))?
    .execute(params![
        job.id,
        job.route,
        job.backend,
        job.consumer,
        job.now,
        scope,
        key,
        fingerprint,
        r.method,
        r.target,
        &r.headers[..],
        &r.body[..],
        r.host,
        job.traceparent,
        job.kind.as_str(),
        job.partition,
        p.attempts,
        int(p.backoff_ms.0),
        int(p.backoff_ms.1),
        int(p.max_age_ms),
        int(p.timeout_ms),
        int(p.result_ttl_ms),
        int(p.max_result),
    ])
    .map(drop)
}

fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.execute("DELETE FROM attempts WHERE job = ?1", [id])?;
    Ok(conn.execute("DELETE FROM jobs WHERE id = ?1", [id])? == 1)
}
