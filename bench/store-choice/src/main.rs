//! SQLite (rusqlite, WAL, synchronous = FULL) against redb (Durability::Immediate)
//! for fngate's job store, with the store's own pattern: one writer thread that
//! commits every write waiting in one transaction and answers after the commit.
//!
//! 1. accepts: 64 client threads each insert a job (600-byte request, indexed
//!    by id, by (backend, due) and by created) and wait for its commit;
//! 2. delivery: one thread claims up to 64 due jobs (a range of the due index,
//!    each row updated) and 64 threads finish them (row updated with a
//!    100-byte answer, due entry removed, an attempt recorded).
//!
//!     cargo run --release --manifest-path bench/store-choice/Cargo.toml [jobs]

use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};

const CLIENTS: usize = 64;
const REQUEST: usize = 600;
const ANSWER: usize = 100;

enum Op {
    Accept { id: String, now: i64 },
    Claim { now: i64, limit: usize },
    Finish { id: String, now: i64 },
}

type Reply = mpsc::Sender<Vec<String>>;

trait Engine: Send + 'static {
    /// Runs every op of one batch in one durable transaction.
    fn batch(&mut self, ops: &[Op]) -> Vec<Vec<String>>;
}

fn writer(mut engine: impl Engine, rx: mpsc::Receiver<(Op, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
            if batch.len() >= 1024 {
                break;
            }
        }
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
        for (r, tx) in engine.batch(&ops).into_iter().zip(replies) {
            let _ = tx.send(r);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn id(n: usize) -> String {
    format!(
        "{:012x}{:020x}",
        now_ms(),
        n.wrapping_mul(0x9e3779b97f4a7c15) as u128
    )
}

struct Sqlite(rusqlite::Connection);

impl Sqlite {
    fn open(path: &std::path::Path) -> Self {
        let c = rusqlite::Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.pragma_update(None, "cache_size", -16384).unwrap();
        c.pragma_update(None, "mmap_size", 256i64 << 20).unwrap();
        c.execute_batch(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, backend TEXT NOT NULL, state TEXT NOT NULL,
               attempts INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL, due INTEGER,
               lease_owner TEXT, expires INTEGER, request BLOB NOT NULL, result BLOB) STRICT;
             CREATE INDEX jobs_due ON jobs (backend, due, created) WHERE due IS NOT NULL;
             CREATE INDEX jobs_expires ON jobs (expires) WHERE expires IS NOT NULL;
             CREATE INDEX jobs_created ON jobs (created);
             CREATE TABLE attempts (job TEXT NOT NULL, n INTEGER NOT NULL, at INTEGER NOT NULL,
               status INTEGER, PRIMARY KEY (job, n)) STRICT, WITHOUT ROWID;",
        )
        .unwrap();
        Self(c)
    }

    fn one(&self, op: &Op) -> Vec<String> {
        let c = &self.0;
        match op {
            Op::Accept { id, now } => {
                c.prepare_cached("INSERT INTO jobs (id, backend, state, attempts, created, updated, due, request) VALUES (?1, 'fn', 'queued', 0, ?2, ?2, ?2, ?3)")
                    .unwrap()
                    .execute(rusqlite::params![id, now, &[7u8; REQUEST][..]])
                    .unwrap();
                vec![]
            }
            Op::Claim { now, limit } => {
                let ids: Vec<String> = c
                    .prepare_cached("SELECT id, request FROM jobs WHERE backend = 'fn' AND due IS NOT NULL AND due <= ?1 ORDER BY due LIMIT ?2")
                    .unwrap()
                    .query_map(rusqlite::params![now, *limit as i64], |r| {
                        let _request: Vec<u8> = r.get(1)?;
                        r.get(0)
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let mut up = c
                    .prepare_cached("UPDATE jobs SET state = 'running', attempts = attempts + 1, due = ?2, lease_owner = 'me', updated = ?3 WHERE id = ?1")
                    .unwrap();
                for id in &ids {
                    up.execute(rusqlite::params![id, now + 30_000, now])
                        .unwrap();
                }
                ids
            }
            Op::Finish { id, now } => {
                c.prepare_cached("UPDATE jobs SET state = 'succeeded', due = NULL, lease_owner = NULL, updated = ?2, expires = ?2 + 86400000, result = ?3 WHERE id = ?1 AND state = 'running' AND lease_owner = 'me'")
                    .unwrap()
                    .execute(rusqlite::params![id, now, &[8u8; ANSWER][..]])
                    .unwrap();
                c.prepare_cached(
                    "INSERT INTO attempts (job, n, at, status) VALUES (?1, 1, ?2, 200)",
                )
                .unwrap()
                .execute(rusqlite::params![id, now])
                .unwrap();
                vec![]
            }
        }
    }
}

impl Engine for Sqlite {
    fn batch(&mut self, ops: &[Op]) -> Vec<Vec<String>> {
        self.0.execute_batch("BEGIN IMMEDIATE").unwrap();
        let out = ops
            .iter()
            .map(|op| {
                // fngate runs each write in its own savepoint, so one failing leaves the rest.
                self.0
                    .prepare_cached("SAVEPOINT w")
                    .unwrap()
                    .execute([])
                    .unwrap();
                let r = self.one(op);
                self.0
                    .prepare_cached("RELEASE w")
                    .unwrap()
                    .execute([])
                    .unwrap();
                r
            })
            .collect();
        self.0.execute_batch("COMMIT").unwrap();
        out
    }
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// (backend, due, id)
const DUE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("due");
const CREATED: TableDefinition<(i64, &str), ()> = TableDefinition::new("created");
const ATTEMPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("attempts");

struct Redb(redb::Database);

/// A job record: state byte, attempts, due, then the request and the answer.
fn record(state: u8, attempts: u8, due: i64, request: &[u8], result: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + request.len() + result.len() + 4);
    v.push(state);
    v.push(attempts);
    v.extend_from_slice(&due.to_be_bytes());
    v.extend_from_slice(&(request.len() as u32).to_be_bytes());
    v.extend_from_slice(request);
    v.extend_from_slice(result);
    v
}

impl Engine for Redb {
    fn batch(&mut self, ops: &[Op]) -> Vec<Vec<String>> {
        let tx = self.0.begin_write().unwrap();
        let out = {
            let mut jobs = tx.open_table(JOBS).unwrap();
            let mut due = tx.open_table(DUE).unwrap();
            let mut created = tx.open_table(CREATED).unwrap();
            let mut attempts = tx.open_table(ATTEMPTS).unwrap();
            ops.iter()
                .map(|op| match op {
                    Op::Accept { id, now } => {
                        jobs.insert(id.as_str(), &record(0, 0, *now, &[7u8; REQUEST], &[])[..])
                            .unwrap();
                        due.insert(("fn", *now, id.as_str()), ()).unwrap();
                        created.insert((*now, id.as_str()), ()).unwrap();
                        vec![]
                    }
                    Op::Claim { now, limit } => {
                        let taken: Vec<(i64, String)> = due
                            .range(("fn", i64::MIN, "")..=("fn", *now, "\u{10ffff}"))
                            .unwrap()
                            .take(*limit)
                            .map(|e| {
                                let (k, _) = e.unwrap();
                                let (_, d, id) = k.value();
                                (d, id.to_owned())
                            })
                            .collect();
                        for (d, id) in &taken {
                            let request = {
                                let row = jobs.get(id.as_str()).unwrap().unwrap();
                                row.value()[14..14 + REQUEST].to_vec()
                            };
                            jobs.insert(
                                id.as_str(),
                                &record(1, 1, now + 30_000, &request, &[])[..],
                            )
                            .unwrap();
                            due.remove(("fn", *d, id.as_str())).unwrap();
                            due.insert(("fn", now + 30_000, id.as_str()), ()).unwrap();
                        }
                        taken.into_iter().map(|(_, id)| id).collect()
                    }
                    Op::Finish { id, now } => {
                        let (lease, request) = {
                            let row = jobs.get(id.as_str()).unwrap().unwrap();
                            let v = row.value();
                            (
                                i64::from_be_bytes(v[2..10].try_into().unwrap()),
                                v[14..14 + REQUEST].to_vec(),
                            )
                        };
                        jobs.insert(id.as_str(), &record(3, 1, 0, &request, &[8u8; ANSWER])[..])
                            .unwrap();
                        due.remove(("fn", lease, id.as_str())).unwrap();
                        attempts
                            .insert((id.as_str(), 1), &now.to_be_bytes()[..])
                            .unwrap();
                        vec![]
                    }
                })
                .collect()
        };
        tx.commit().unwrap();
        out
    }
}

fn run(name: &str, engine: impl Engine, jobs: usize) {
    let (tx, rx) = mpsc::channel::<(Op, Reply)>();
    let w = std::thread::spawn(move || writer(engine, rx));
    let call = |tx: &mpsc::Sender<(Op, Reply)>, op: Op| {
        let (rtx, rrx) = mpsc::channel();
        tx.send((op, rtx)).unwrap();
        rrx.recv().unwrap()
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let tx = tx.clone();
            s.spawn(move || {
                for n in (c..jobs).step_by(CLIENTS) {
                    call(
                        &tx,
                        Op::Accept {
                            id: id(n),
                            now: now_ms(),
                        },
                    );
                }
            });
        }
    });
    let accepts = jobs as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let ids = call(
            &tx,
            Op::Claim {
                now: now_ms(),
                limit: CLIENTS,
            },
        );
        done += ids.len();
        std::thread::scope(|s| {
            for id in ids {
                let tx = tx.clone();
                s.spawn(move || call(&tx, Op::Finish { id, now: now_ms() }));
            }
        });
    }
    let delivered = jobs as f64 / started.elapsed().as_secs_f64();
    drop(tx);
    w.join().unwrap();
    println!("| {name} | {accepts:.0} | {delivered:.0} |");
}

fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/var/tmp".into())).unwrap();
    println!("{jobs} jobs, {CLIENTS} clients, one writer thread, group commit, fsync per commit\n");
    println!("| store | accepts/s | claimed and finished/s |");
    println!("|---|---:|---:|");
    for round in 0..3 {
        run(
            "SQLite (WAL, synchronous = FULL)",
            Sqlite::open(&dir.path().join(format!("s{round}.db"))),
            jobs,
        );
        run(
            "redb (Durability::Immediate)",
            Redb(redb::Database::create(dir.path().join(format!("r{round}.redb"))).unwrap()),
            jobs,
        );
    }
}
