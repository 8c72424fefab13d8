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
    policy TEXT NOT NULL,
    result_status INTEGER,
    result_headers BLOB,
    result_body BLOB
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idem_scope, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (backend, due) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
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
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", "OFF")?;
            conn.execute_batch(SCHEMA)?;
            // Leases held by a process that died are ours to take now.
            conn.execute(
                "UPDATE jobs SET due = 0, lease_owner = NULL WHERE state = 'running'",
                [],
            )?;
            Ok(())
        };
        setup().map_err(|e| open_err(e.to_string()))?;
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
                        c.busy_timeout(std::time::Duration::from_secs(5))
                            .map_err(failed)?;
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

/// Runs one statement, prepared once per connection (the writer runs these per write).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

const JOB_COLUMNS: &str = "id, route, backend, consumer, state, attempts, created, updated, due, \
     last_error, timed_out, result_status, result_headers, result_body, expires";

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

fn policy_text(p: &Policy) -> String {
    format!(
        "{},{},{},{},{},{},{}",
        p.attempts,
        p.backoff_ms.0,
        p.backoff_ms.1,
        p.max_age_ms,
        p.timeout_ms,
        p.result_ttl_ms,
        p.max_result
    )
}

fn policy_of(text: &str) -> Policy {
    let n: Vec<u64> = text.split(',').filter_map(|s| s.parse().ok()).collect();
    let get = |i: usize, d: u64| n.get(i).copied().unwrap_or(d);
    Policy {
        attempts: get(0, 1) as u32,
        backoff_ms: (get(1, 1000), get(2, 300_000)),
        max_age_ms: get(3, 86_400_000),
        timeout_ms: get(4, 300_000),
        result_ttl_ms: get(5, 86_400_000),
        max_result: get(6, 1 << 20),
    }
}

fn sql(e: rusqlite::Error) -> StoreError {
    failed(e)
}

impl Store for Sqlite {
    fn accept(&self, job: NewJob) -> Op<Accepted> {
        self.write(move |conn| {
            if let Some(idem) = &job.idempotency {
                let found: Option<(String, Vec<u8>, Option<Millis>)> = conn
                    .query_row(
                        "SELECT id, fingerprint, expires FROM jobs WHERE idem_scope = ?1 AND idem_key = ?2",
                        params![idem.scope, idem.key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
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
            let (scope, key, fingerprint) = match &job.idempotency {
                Some(i) => (
                    Some(i.scope.as_str()),
                    Some(i.key.as_str()),
                    Some(&i.fingerprint[..]),
                ),
                None => (None, None, None),
            };
            let r = &job.request;
            conn.prepare_cached(
                "INSERT INTO jobs (id, route, backend, consumer, state, attempts, created, updated, due, \
                 idem_scope, idem_key, fingerprint, method, target, headers, body, host, traceparent, policy) \
                 VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .and_then(|mut s| {
                s.execute(params![
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
                    policy_text(&job.policy),
                ])
            })
            .map_err(sql)?;
            Ok(Accepted::New(Job {
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

    fn claim(&self, claim: Claim) -> Op<Vec<Claimed>> {
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, route, created, attempts, method, target, headers, body, host, traceparent, policy \
                     FROM jobs WHERE backend = ?1 AND due IS NOT NULL AND due <= ?2 ORDER BY due LIMIT ?3",
                )
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
                        policy: policy_of(&r.get::<_, String>(10)?),
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
            Ok(taken)
        })
    }

    fn renew(&self, id: &str, owner: &str, until: Millis) -> Op<bool> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE jobs SET due = ?3 WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                    params![id, owner, until],
                )
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
            let policy: Option<String> = conn
                .query_row(
                    "SELECT policy FROM jobs WHERE id = ?1 AND state = 'running' AND lease_owner = ?2",
                    params![id, owner],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let Some(policy) = policy.map(|p| policy_of(&p)) else {
                return Ok(false);
            };
            if let Some(a) = &attempt {
                conn.execute(
                    "INSERT OR REPLACE INTO attempts (job, n, at, status, duration_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, a.n, a.at, a.status, a.duration_ms as i64, a.error],
                )
                .map_err(sql)?;
            }
            let error = attempt.as_ref().and_then(|a| a.error.clone());
            let expires = now.saturating_add(policy.result_ttl_ms as i64);
            let answered = |state: &str, r: &JobResult| {
                conn.execute(
                    "UPDATE jobs SET state = ?2, due = NULL, lease_owner = NULL, updated = ?3, expires = ?4, \
                     last_error = COALESCE(?5, last_error), timed_out = 0, result_status = ?6, result_headers = ?7, result_body = ?8 WHERE id = ?1",
                    params![id, state, now, expires, error, r.status, &r.headers[..], &r.body[..]],
                )
            };
            let n = match next {
                Next::Succeeded(r) => answered("succeeded", &r),
                Next::Dead { result: Some(r), .. } => answered("dead", &r),
                Next::Dead { result: None, timed_out } => conn.execute(
                    "UPDATE jobs SET state = 'dead', due = NULL, lease_owner = NULL, updated = ?2, expires = ?3, \
                     last_error = COALESCE(?4, last_error), timed_out = ?5 WHERE id = ?1",
                    params![id, now, expires, error, timed_out as i64],
                ),
                Next::Retry { at, timed_out } => conn.execute(
                    "UPDATE jobs SET state = 'retrying', due = ?2, lease_owner = NULL, updated = ?3, \
                     last_error = COALESCE(?4, last_error), timed_out = ?5 WHERE id = ?1",
                    params![id, at, now, error, timed_out as i64],
                ),
                Next::Release { at } => conn.execute(
                    "UPDATE jobs SET state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END, \
                     attempts = MAX(attempts - 1, 0), due = ?2, lease_owner = NULL, updated = ?3 WHERE id = ?1",
                    params![id, at, now],
                ),
            }
            .map_err(sql)?;
            Ok(n == 1)
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
            Ok(n as u64)
        })
    }

    fn backlog(&self, _now: Millis) -> Op<Backlog> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT backend, COUNT(*), MIN(created) FROM jobs WHERE due IS NOT NULL GROUP BY backend",
            )?;
            let backends = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let next_due = conn.query_row(
                "SELECT MIN(due) FROM jobs WHERE due IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(Backlog { backends, next_due })
        })
    }
}

fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.execute("DELETE FROM attempts WHERE job = ?1", [id])?;
    Ok(conn.execute("DELETE FROM jobs WHERE id = ?1", [id])? == 1)
}
