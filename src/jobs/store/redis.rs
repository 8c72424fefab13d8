//! The shared store (SPEC §10): every instance that names one Redis shares
//! its jobs, deliveries, idempotency keys, dedupe windows, schedule ticks and
//! secrets. Each operation is one Lua script, so it is atomic across
//! instances; `redis.lua` holds the key layout and the shared functions.
//!
//! The queue is a sorted set per backend scored by when each job is due, as
//! the embedded store's `due` column: queued and retrying jobs by their next
//! attempt, running ones by when their lease lapses. A claim takes what is
//! due in one script, which also enforces the route's free slots and a
//! partition's order; a dead instance's jobs come due again when their
//! leases lapse, and a retry's delay is its score. (Streams with consumer
//! groups were the other shape: they cannot say "not before" nor hold a slot
//! limit, so retries and limits would need this set beside them anyway.)
//!
//! A write answers once Redis acknowledged it; `durability = "replica"` then
//! waits (bounded) for one replica to have it too.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value};
use bytes::Bytes;

use super::*;
use crate::config::Durability;

/// The longest any operation waits for Redis: past it the caller is told
/// the store failed (an accept answers 503), and a dead Redis holds nothing longer.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on `WAIT 1` for `durability = "replica"`.
const REPLICA_WAIT: Duration = Duration::from_millis(1000);
/// A job stored under `durability = "replica"` is held back this long, so no
/// instance delivers it before a replica has it; once one does it is due at
/// once (and if this instance dies before, it is due when the hold ends).
const HOLD_MS: Millis = 10_000;

macro_rules! script {
    ($body:literal) => {
        LazyLock::new(|| Script::new(concat!(include_str!("redis.lua"), $body)))
    };
}

/// ARGV: now, job. Answers {"new"}, {"existing", hgetall} or {"mismatch"}.
static ACCEPT: LazyLock<Script> = script!(
    r#"
local now = tonumber(ARGV[1])
local id, f = read_job(2)
if f.idem then
  local old = redis.call('GET', P .. 'idem:' .. f.idem)
  if old then
    local o = redis.call('HMGET', jk(old), 'expires', 'fp')
    if not o[2] or (o[1] and tonumber(o[1]) <= now) then
      -- Past its result_ttl (or gone): the key is free again.
      delete(old)
      redis.call('DEL', P .. 'idem:' .. f.idem)
    elseif o[2] == f.fp then
      return {'existing', redis.call('HGETALL', jk(old))}
    else
      return {'mismatch'}
    end
  end
end
insert(id, f)
return {'new'}
"#
);

/// ARGV: backend, owner, now, lease_until, limit, other_free, candidates,
/// then route, free pairs. Answers {claimed jobs (each an array of CLAIMED
/// fields after the id, then its due time), next due or false}.
static CLAIM: LazyLock<Script> = script!(
    r#"
local b, owner = ARGV[1], ARGV[2]
local now, lease, limit, other = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local free = {}
for i = 8, #ARGV, 2 do free[ARGV[i]] = tonumber(ARGV[i + 1]) end
local due = P .. 'due:' .. b
-- Due first, then in accepted order.
local found = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[7]))
local order = {}
for i = 1, #found, 2 do
  local seq = tonumber(redis.call('HGET', jk(found[i]), 'seq') or 0)
  order[#order + 1] = {found[i], tonumber(found[i + 1]), seq}
end
table.sort(order, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[3] < b[3]) end)
local out = {}
for _, c in ipairs(order) do
  local id = c[1]
  if #out >= limit then break end
  local k = jk(id)
  local f = redis.call('HMGET', k, 'route', 'partition', 'attempts')
  if not f[1] then
    redis.call('ZREM', due, id)
  elseif not f[2] or redis.call('LINDEX', P .. 'part:' .. f[2], 0) == id then
    local slots = free[f[1]] or other
    if slots > 0 then
      free[f[1]] = slots - 1
      redis.call('HSET', k, 'state', 'running', 'attempts', tonumber(f[3]) + 1, 'due', lease,
        'lease_owner', owner, 'updated', now)
      redis.call('ZADD', due, lease, id)
      local row = redis.call('HMGET', k, 'route', 'created', 'attempts', 'method', 'target',
        'headers', 'body', 'host', 'tp', 'kind', 'p_attempts', 'p_bmin', 'p_bmax', 'p_age',
        'p_timeout', 'p_ttl', 'p_maxres')
      table.insert(row, 1, id)
      row[#row + 1] = c[2]
      out[#out + 1] = row
    end
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
return {out, first[2] or false}
"#
);

/// ARGV: id, owner, until. Answers 1 when the lease is still ours.
static RENEW: LazyLock<Script> = script!(
    r#"
local f = facts(ARGV[1])
if f.state ~= 'running' or f.lease_owner ~= ARGV[2] then return 0 end
redis.call('HSET', jk(ARGV[1]), 'due', ARGV[3])
redis.call('ZADD', P .. 'due:' .. f.backend, tonumber(ARGV[3]), ARGV[1])
return 1
"#
);

/// ARGV: id, owner, now, next (succeeded|dead|retry|release), at, timed_out,
/// error or "", result status or "", result headers, result body, attempt n
/// or "", attempt record. Answers 1, or 0 when the lease was lost (nothing written).
static FINISH: LazyLock<Script> = script!(
    r#"
local id, owner, now, next = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local f = facts(id)
if f.state ~= 'running' or f.lease_owner ~= owner then return 0 end
local k = jk(id)
if ARGV[7] ~= '' then redis.call('HSET', k, 'last_error', ARGV[7]) end
if next == 'retry' then
  redis.call('HSET', k, 'state', 'retrying', 'due', ARGV[5], 'updated', now, 'timed_out', ARGV[6])
  redis.call('HDEL', k, 'lease_owner')
  redis.call('ZADD', P .. 'due:' .. f.backend, tonumber(ARGV[5]), id)
elseif next == 'release' then
  local a = tonumber(f.attempts)
  redis.call('HSET', k, 'state', a > 1 and 'retrying' or 'queued', 'attempts', math.max(a - 1, 0),
    'due', ARGV[5], 'updated', now)
  redis.call('HDEL', k, 'lease_owner')
  redis.call('ZADD', P .. 'due:' .. f.backend, tonumber(ARGV[5]), id)
else
  redis.call('HSET', k, 'state', next, 'updated', now, 'timed_out', ARGV[6])
  if ARGV[8] ~= '' then
    redis.call('HSET', k, 'r_status', ARGV[8], 'r_headers', ARGV[9], 'r_body', ARGV[10], 'timed_out', 0)
  end
  finished(id, f, now)
end
if ARGV[11] ~= '' then
  redis.call('HSET', P .. 'att:' .. id, ARGV[11], ARGV[12])
  if next ~= 'retry' and next ~= 'release' then
    redis.call('PEXPIRE', P .. 'att:' .. id, tonumber(f.p_ttl) + SLACK)
  end
end
return 1
"#
);

/// ARGV: now, events, then per event: topic, source, id, dedupe until or "",
/// deliveries, and each delivery as a job. Answers 1 or 0 per event.
static PUBLISH: LazyLock<Script> = script!(
    r#"
local now = tonumber(ARGV[1])
local i = 3
local fresh = {}
for e = 1, tonumber(ARGV[2]) do
  local topic, source, eid, until_, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  local new = true
  if until_ ~= '' then
    local key = P .. 'ev:' .. topic .. '\n' .. source .. '\n' .. eid
    local seen = redis.call('GET', key)
    if seen and tonumber(seen) > now then
      new = false
    else
      redis.call('SET', key, until_, 'PX', math.max(tonumber(until_) - now, 1) + SLACK)
    end
  end
  for _ = 1, n do
    local id, f, j = read_job(i)
    i = j
    if new then insert(id, f) end
  end
  fresh[#fresh + 1] = new and 1 or 0
end
return fresh
"#
);

/// ARGV: name, last tick or "", forbid, replace, outcome, now, then the run
/// as a job (or nothing). Answers {"stored", replaced ids...}, {"busy"},
/// {"duplicate"} or {"recorded"}.
static TICK: LazyLock<Script> = script!(
    r#"
local name, last, now = ARGV[1], ARGV[2], tonumber(ARGV[6])
local sk = P .. 'sched:' .. name
local function record(outcome, run)
  redis.call('SADD', P .. 'schedules', name)
  if last ~= '' then
    local old = redis.call('HGET', sk, 'last_tick')
    if not old or tonumber(old) < tonumber(last) then redis.call('HSET', sk, 'last_tick', last) end
  end
  if outcome then redis.call('HSET', sk, 'last_fire', now, 'last_outcome', outcome) end
  if run then redis.call('HSET', sk, 'last_job', run) end
end
if #ARGV < 7 then
  record(false, false)
  return {'recorded'}
end
local id, f = read_job(7)
-- The tick is claimed once across instances, and the claim is never
-- released: it outlives the run, so a late instance cannot run it again.
if redis.call('EXISTS', jk(id)) == 1
    or not redis.call('SET', P .. 'tick:' .. id, now, 'NX', 'PX', 7 * 86400000) then
  record(false, false)
  return {'duplicate'}
end
local runs = redis.call('SMEMBERS', P .. 'runs:' .. name)
if ARGV[3] == '1' and #runs > 0 then
  record('skipped', false)
  return {'busy'}
end
local out = {'stored'}
if ARGV[4] == '1' then
  for _, r in ipairs(runs) do
    delete(r)
    out[#out + 1] = r
  end
end
insert(id, f)
record(ARGV[5], id)
return out
"#
);

/// ARGV: id. Answers "missing", "finished" or "cancelled".
static CANCEL: LazyLock<Script> = script!(
    r#"
local s = redis.call('HGET', jk(ARGV[1]), 'state')
if not s then return 'missing' end
if s == 'succeeded' or s == 'dead' then return 'finished' end
delete(ARGV[1])
return 'cancelled'
"#
);

/// ARGV: id, now. Answers "missing", "not_dead" or "queued".
static REDRIVE: LazyLock<Script> = script!(
    r#"
local id, now = ARGV[1], tonumber(ARGV[2])
local f = facts(id)
if not f.state then return 'missing' end
if f.state ~= 'dead' then return 'not_dead' end
local k = jk(id)
redis.call('DEL', P .. 'att:' .. id)
redis.call('HDEL', k, 'expires', 'last_error', 'r_status', 'r_headers', 'r_body')
redis.call('HSET', k, 'state', 'queued', 'attempts', 0, 'due', now, 'updated', now, 'created', now,
  'timed_out', 0)
redis.call('PERSIST', k)
if f.idem then redis.call('PERSIST', P .. 'idem:' .. f.idem) end
redis.call('ZREM', P .. 'expires', id)
redis.call('ZADD', P .. 'created', now, id)
redis.call('ZADD', P .. 'due:' .. f.backend, now, id)
redis.call('ZADD', P .. 'pending:' .. f.backend, now, id)
redis.call('SADD', P .. 'backends', f.backend)
-- It was accepted before anything still queued in its partition.
if f.partition then redis.call('LPUSH', P .. 'part:' .. f.partition, id) end
if f.kind == 'schedule' then redis.call('SADD', P .. 'runs:' .. f.route, id) end
return 'queued'
"#
);

/// ARGV: now, then held jobs now replicated: each due now.
static RELEASE: LazyLock<Script> = script!(
    r#"
local now = tonumber(ARGV[1])
for i = 2, #ARGV do
  local f = facts(ARGV[i])
  if f.state == 'queued' then
    redis.call('HSET', jk(ARGV[i]), 'due', now)
    redis.call('ZADD', P .. 'due:' .. f.backend, now, ARGV[i])
  end
end
return 1
"#
);

/// ARGV: jobs to delete, "", then keys to delete (an unreplicated write undone).
static UNDO: LazyLock<Script> = script!(
    r#"
local keys = false
for _, a in ipairs(ARGV) do
  if keys then redis.call('DEL', a)
  elseif a == '' then keys = true
  else delete(a) end
end
return 1
"#
);

/// ARGV: id. Answers 1 when it existed.
static PURGE: LazyLock<Script> = script!(
    r#"
return delete(ARGV[1]) and 1 or 0
"#
);

/// ARGV: now. Deletes up to 1000 expired jobs; answers how many existed.
static SWEEP: LazyLock<Script> = script!(
    r#"
local n = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expires', '-inf', ARGV[1], 'LIMIT', 0, 1000)) do
  if delete(id) then n = n + 1 end
end
return n
"#
);

/// Answers, per backend with unfinished jobs: backend, count, oldest created, soonest due.
static BACKLOG: LazyLock<Script> = script!(
    r#"
local out = {}
for _, b in ipairs(redis.call('SMEMBERS', P .. 'backends')) do
  local n = redis.call('ZCARD', P .. 'pending:' .. b)
  if n == 0 then
    redis.call('SREM', P .. 'backends', b)
  else
    local oldest = redis.call('ZRANGE', P .. 'pending:' .. b, 0, 0, 'WITHSCORES')
    local due = redis.call('ZRANGE', P .. 'due:' .. b, 0, 0, 'WITHSCORES')
    out[#out + 1] = {b, n, oldest[2], due[2] or oldest[2]}
  end
end
return out
"#
);

/// ARGV: name, a fresh secret. Answers the secret kept under the name.
static SECRET: LazyLock<Script> = script!(
    r#"
redis.call('SET', P .. 'secret:' .. ARGV[1], ARGV[2], 'NX')
return redis.call('GET', P .. 'secret:' .. ARGV[1])
"#
);

pub(crate) struct Redis {
    conn: ConnectionManager,
    durability: Durability,
    /// The URL without its password, for logs.
    shown: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.shown).finish()
    }
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!("Redis: {e}"))
}

impl Redis {
    /// Connects lazily: an instance starts while Redis is down, and every
    /// operation reconnects (with backoff) until it is back.
    pub(crate) fn open(store: &crate::config::Store) -> Result<std::sync::Arc<Self>, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: store.location(),
            reason,
        };
        let conn = crate::redis_client::connect(store, OP_TIMEOUT).map_err(open_err)?;
        Ok(std::sync::Arc::new(Self {
            conn,
            durability: store.durability,
            shown: store.location(),
        }))
    }

    /// Runs one script (a write), bounded by OP_TIMEOUT.
    fn script<T: Send + 'static>(
        &self,
        script: &'static Script,
        args: Vec<Vec<u8>>,
        parse: impl FnOnce(Value) -> Result<T, StoreError> + Send + 'static,
    ) -> Op<T> {
        let mut conn = self.conn.clone();
        Box::pin(bounded(async move {
            let v = invoke(script, &args, &mut conn).await?;
            parse(v)
        }))
    }

    /// Whether new jobs are held until a replica has them.
    fn held(&self) -> bool {
        self.durability == Durability::Replica
    }

    /// As `script`, for a write a client is told is durable (an accept, a
    /// publish, a tick): with `durability = "replica"` it answers only once a
    /// replica has it. `stored` names, from the script's answer, the jobs it
    /// stored (held back until then, see HOLD_MS) and the keys it set. With
    /// a replica's acknowledgement the jobs are due at once; without one in
    /// time the caller hears the store failed and both are deleted again, so
    /// the client's retry is no duplicate and no dedupe key outlives a refusal.
    fn durable<T: Send + 'static>(
        &self,
        script: &'static Script,
        args: Vec<Vec<u8>>,
        stored: impl FnOnce(&Value) -> (Vec<String>, Vec<String>) + Send + 'static,
        parse: impl FnOnce(Value) -> Result<T, StoreError> + Send + 'static,
    ) -> Op<T> {
        let mut conn = self.conn.clone();
        let replica = self.held();
        Box::pin(bounded(async move {
            let v = invoke(script, &args, &mut conn).await?;
            if !replica {
                return parse(v);
            }
            let (jobs, keys) = stored(&v);
            let n: i64 = ::redis::cmd("WAIT")
                .arg(1)
                .arg(REPLICA_WAIT.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            if n < 1 {
                if !jobs.is_empty() || !keys.is_empty() {
                    let mut undo: Vec<Vec<u8>> = jobs.into_iter().map(String::into_bytes).collect();
                    undo.push(Vec::new());
                    undo.extend(keys.into_iter().map(String::into_bytes));
                    if let Err(e) = invoke(&UNDO, &undo, &mut conn).await {
                        tracing::warn!("undoing an unreplicated write failed: {e}");
                    }
                }
                return Err(failed(format!(
                    "no replica acknowledged the write within {} ms",
                    REPLICA_WAIT.as_millis()
                )));
            }
            if !jobs.is_empty() {
                let mut release = vec![num(now_ms())];
                release.extend(jobs.into_iter().map(String::into_bytes));
                invoke(&RELEASE, &release, &mut conn).await?;
            }
            parse(v)
        }))
    }

    /// Runs commands that only read.
    fn read<T: Send + 'static, F>(&self, f: impl FnOnce(ConnectionManager) -> F) -> Op<T>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let work = f(self.conn.clone());
        Box::pin(bounded(work))
    }
}

async fn invoke(
    script: &Script,
    args: &[Vec<u8>],
    conn: &mut ConnectionManager,
) -> Result<Value, StoreError> {
    let mut call = script.prepare_invoke();
    for a in args {
        call.arg(&a[..]);
    }
    call.invoke_async(conn).await.map_err(failed)
}

async fn bounded<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(failed(format!(
                "no answer within {} ms",
                OP_TIMEOUT.as_millis()
            )))
        })
}

fn num(n: impl std::fmt::Display) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// A job as script arguments: id, n, then n field/value pairs (see redis.lua).
fn push_job(args: &mut Vec<Vec<u8>>, job: &NewJob, held: bool) {
    let r = &job.request;
    let p = &job.policy;
    let mut f: Vec<(&str, Vec<u8>)> = vec![
        ("id", job.id.clone().into_bytes()),
        ("route", job.route.clone().into_bytes()),
        ("backend", job.backend.clone().into_bytes()),
        ("state", b"queued".to_vec()),
        ("attempts", b"0".to_vec()),
        ("created", num(job.now)),
        ("updated", num(job.now)),
        // Held: not due until a replica has it (`durable`), or at the latest after HOLD_MS.
        ("due", num(if held { job.now + HOLD_MS } else { job.now })),
        ("timed_out", b"0".to_vec()),
        ("method", r.method.clone().into_bytes()),
        ("target", r.target.clone().into_bytes()),
        ("headers", r.headers.to_vec()),
        ("body", r.body.to_vec()),
        ("kind", job.kind.as_str().as_bytes().to_vec()),
        ("p_attempts", num(p.attempts)),
        ("p_bmin", num(p.backoff_ms.0)),
        ("p_bmax", num(p.backoff_ms.1)),
        ("p_age", num(p.max_age_ms)),
        ("p_timeout", num(p.timeout_ms)),
        ("p_ttl", num(p.result_ttl_ms)),
        ("p_maxres", num(p.max_result)),
    ];
    let optional = [
        ("consumer", job.consumer.as_deref()),
        ("host", r.host.as_deref()),
        ("tp", job.traceparent.as_deref()),
        ("partition", job.partition.as_deref()),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            f.push((k, v.as_bytes().to_vec()));
        }
    }
    if let Some(i) = &job.idempotency {
        f.push(("idem", format!("{}\n{}", i.scope, i.key).into_bytes()));
        f.push(("fp", i.fingerprint.to_vec()));
    }
    args.push(job.id.clone().into_bytes());
    args.push(num(f.len()));
    for (k, v) in f {
        args.push(k.as_bytes().to_vec());
        args.push(v);
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes_of(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => bytes_of(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(failed(format!("unexpected answer {other:?}"))),
    }
}

/// A job hash (HGETALL's flat field, value array) as a Job.
fn job_of(flat: Vec<Value>) -> Option<Job> {
    let mut m: HashMap<String, Value> = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(text(&k)?, v);
    }
    let s = |k: &str| m.get(k).and_then(text);
    let n = |k: &str| m.get(k).and_then(int);
    let state = JobState::parse(&s("state")?).unwrap_or(JobState::Dead);
    let result = n("r_status").map(|status| JobResult {
        status: status as u16,
        headers: m
            .get("r_headers")
            .and_then(bytes_of)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        body: m
            .get("r_body")
            .and_then(bytes_of)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
    });
    Some(Job {
        id: s("id")?,
        kind: Kind::parse(&s("kind").unwrap_or_default()),
        route: s("route")?,
        backend: s("backend")?,
        consumer: s("consumer"),
        state,
        attempts: n("attempts").unwrap_or(0).max(0) as u32,
        created: n("created").unwrap_or(0),
        updated: n("updated").unwrap_or(0),
        next_attempt: matches!(state, JobState::Queued | JobState::Retrying)
            .then(|| n("due"))
            .flatten(),
        last_error: s("last_error"),
        timed_out: n("timed_out").unwrap_or(0) != 0,
        result,
        log: Vec::new(),
    })
}

/// Whether a job hash is past its `expires` at `now` (kept only until the sweep).
fn expired(flat: &[Value], now: Millis) -> bool {
    flat.chunks(2).any(|kv| {
        kv.len() == 2
            && bytes_of(&kv[0]) == Some(b"expires")
            && int(&kv[1]).is_some_and(|e| e <= now)
    })
}

/// An attempt record: "at,status,duration_ms,error".
fn encode_attempt(a: &Attempt) -> Vec<u8> {
    format!(
        "{},{},{},{}",
        a.at,
        a.status.map(|s| s.to_string()).unwrap_or_default(),
        a.duration_ms,
        a.error.as_deref().unwrap_or("")
    )
    .into_bytes()
}

fn decode_attempt(n: u32, raw: &[u8]) -> Option<Attempt> {
    let raw = std::str::from_utf8(raw).ok()?;
    let mut parts = raw.splitn(4, ',');
    let at = parts.next()?.parse().ok()?;
    let status = parts.next()?;
    let duration_ms = parts.next()?.parse().ok()?;
    let error = parts.next().filter(|e| !e.is_empty()).map(str::to_owned);
    Some(Attempt {
        n,
        at,
        status: status.parse().ok(),
        duration_ms,
        error,
    })
}

async fn load(
    conn: &mut ConnectionManager,
    id: &str,
    log: bool,
    now: Millis,
) -> Result<Option<Job>, StoreError> {
    let flat: Vec<Value> = ::redis::cmd("HGETALL")
        .arg(format!("fngate:job:{id}"))
        .query_async::<Value>(conn)
        .await
        .map_err(failed)
        .and_then(array)?;
    if flat.is_empty() || expired(&flat, now) {
        return Ok(None);
    }
    let Some(mut job) = job_of(flat) else {
        return Ok(None);
    };
    if log {
        job.log = attempts(conn, id).await?;
    }
    Ok(Some(job))
}

async fn attempts(conn: &mut ConnectionManager, id: &str) -> Result<Vec<Attempt>, StoreError> {
    let flat = ::redis::cmd("HGETALL")
        .arg(format!("fngate:att:{id}"))
        .query_async::<Value>(conn)
        .await
        .map_err(failed)
        .and_then(array)?;
    let mut log: Vec<Attempt> = flat
        .chunks(2)
        .filter_map(|kv| {
            let n = int(kv.first()?)?;
            decode_attempt(u32::try_from(n).ok()?, bytes_of(kv.get(1)?)?)
        })
        .collect();
    log.sort_by_key(|a| a.n);
    Ok(log)
}

impl Store for Redis {
    fn accept(&self, job: NewJob) -> Op<Accepted> {
        let mut args = vec![num(job.now)];
        push_job(&mut args, &job, self.held());
        let now = job.now;
        let id = job.id.clone();
        let stored = move |v: &Value| match v {
            Value::Array(a) if a.first().and_then(text).as_deref() == Some("new") => {
                (vec![id], Vec::new())
            }
            _ => (Vec::new(), Vec::new()),
        };
        self.durable(&ACCEPT, args, stored, move |v| {
            let mut a = array(v)?.into_iter();
            let tag = a.next().as_ref().and_then(text).unwrap_or_default();
            match tag.as_str() {
                "new" => Ok(Accepted::New(Job {
                    kind: job.kind,
                    id: job.id,
                    route: job.route,
                    backend: job.backend,
                    consumer: job.consumer,
                    state: JobState::Queued,
                    attempts: 0,
                    created: now,
                    updated: now,
                    next_attempt: Some(now),
                    last_error: None,
                    timed_out: false,
                    result: None,
                    log: Vec::new(),
                })),
                "existing" => job_of(array(a.next().unwrap_or_default())?)
                    .map(Accepted::Existing)
                    .ok_or_else(|| failed("idempotent job vanished")),
                "mismatch" => Ok(Accepted::Mismatch),
                other => Err(failed(format!("accept answered {other:?}"))),
            }
        })
    }

    fn get(&self, id: &str, log: bool, now: Millis) -> Op<Option<Job>> {
        let id = id.to_owned();
        self.read(move |mut conn| async move { load(&mut conn, &id, log, now).await })
    }

    fn claim(&self, claim: Claim) -> Op<Claims> {
        let candidates = claim.limit.saturating_mul(4).clamp(16, 4096);
        let mut args = vec![
            claim.backend.clone().into_bytes(),
            claim.owner.clone().into_bytes(),
            num(claim.now),
            num(claim.lease_until),
            num(claim.limit),
            num(claim.other_free),
            num(candidates),
        ];
        for (route, free) in &claim.route_free {
            args.push(route.clone().into_bytes());
            args.push(num(free));
        }
        self.script(&CLAIM, args, |v| {
            let mut a = array(v)?.into_iter();
            let rows = array(a.next().unwrap_or_default())?;
            let next_due = a.next().as_ref().and_then(int);
            let mut jobs = Vec::with_capacity(rows.len());
            for row in rows {
                let r = array(row)?;
                let s = |i: usize| r.get(i).and_then(text);
                let n = |i: usize| r.get(i).and_then(int).unwrap_or(0);
                let b = |i: usize| {
                    r.get(i)
                        .and_then(bytes_of)
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default()
                };
                let u = |i: usize| n(i).max(0) as u64;
                jobs.push(Claimed {
                    id: s(0).ok_or_else(|| failed("a claimed job without an id"))?,
                    route: s(1).unwrap_or_default(),
                    created: n(2),
                    attempt: u(3) as u32,
                    request: StoredRequest {
                        method: s(4).unwrap_or_default(),
                        target: s(5).unwrap_or_default(),
                        headers: b(6),
                        body: b(7),
                        host: s(8),
                    },
                    traceparent: s(9),
                    kind: Kind::parse(&s(10).unwrap_or_default()),
                    policy: Policy {
                        attempts: u(11).min(u64::from(u32::MAX)) as u32,
                        backoff_ms: (u(12), u(13)),
                        max_age_ms: u(14),
                        timeout_ms: u(15),
                        result_ttl_ms: u(16),
                        max_result: u(17),
                    },
                    due: n(18),
                });
            }
            Ok(Claims { jobs, next_due })
        })
    }

    fn renew(&self, id: &str, owner: &str, until: Millis) -> Op<bool> {
        let args = vec![id.into(), owner.into(), num(until)];
        self.script(&RENEW, args, |v| Ok(int(&v) == Some(1)))
    }

    fn finish(
        &self,
        id: &str,
        owner: &str,
        attempt: Option<Attempt>,
        next: Next,
        now: Millis,
    ) -> Op<bool> {
        let error = attempt
            .as_ref()
            .and_then(|a| a.error.clone())
            .unwrap_or_default();
        let (tag, at, timed_out, result) = match next {
            Next::Succeeded(r) => ("succeeded", 0, false, Some(r)),
            Next::Dead { result, timed_out } => ("dead", 0, timed_out, result),
            Next::Retry { at, timed_out } => ("retry", at, timed_out, None),
            Next::Release { at } => ("release", at, false, None),
        };
        let mut args = vec![
            id.into(),
            owner.into(),
            num(now),
            tag.into(),
            num(at),
            num(u8::from(timed_out)),
            error.into_bytes(),
        ];
        match result {
            Some(r) => args.extend([num(r.status), r.headers.to_vec(), r.body.to_vec()]),
            None => args.extend([Vec::new(), Vec::new(), Vec::new()]),
        }
        match &attempt {
            Some(a) => args.extend([num(a.n), encode_attempt(a)]),
            None => args.extend([Vec::new(), Vec::new()]),
        }
        self.script(&FINISH, args, |v| Ok(int(&v) == Some(1)))
    }

    fn publish(&self, events: Vec<NewEvent>, now: Millis) -> Op<Vec<bool>> {
        let held = self.held();
        let mut args = vec![num(now), num(events.len())];
        for e in &events {
            args.push(e.topic.clone().into_bytes());
            args.push(e.source.clone().into_bytes());
            args.push(e.id.clone().into_bytes());
            args.push(e.dedupe_until.map(num).unwrap_or_default());
            args.push(num(e.deliveries.len()));
            for d in &e.deliveries {
                push_job(&mut args, d, held);
            }
        }
        // Each fresh event's deliveries, and its dedupe key.
        let stored = move |v: &Value| {
            let Value::Array(fresh) = v else {
                return (Vec::new(), Vec::new());
            };
            let mut jobs = Vec::new();
            let mut keys = Vec::new();
            for (e, new) in events.iter().zip(fresh) {
                if int(new) == Some(1) {
                    jobs.extend(e.deliveries.iter().map(|d| d.id.clone()));
                    if e.dedupe_until.is_some() {
                        keys.push(format!("fngate:ev:{}\n{}\n{}", e.topic, e.source, e.id));
                    }
                }
            }
            (jobs, keys)
        };
        self.durable(&PUBLISH, args, stored, |v| {
            Ok(array(v)?.iter().map(|f| int(f) == Some(1)).collect())
        })
    }

    fn pause(&self, subscription: &str, now: Millis) -> Op<()> {
        let (name, mut conn) = (subscription.to_owned(), self.conn.clone());
        Box::pin(bounded(async move {
            ::redis::cmd("HSETNX")
                .arg("fngate:paused")
                .arg(name)
                .arg(now)
                .query_async::<Value>(&mut conn)
                .await
                .map(drop)
                .map_err(failed)
        }))
    }

    fn resume(&self, subscription: &str) -> Op<bool> {
        let (name, mut conn) = (subscription.to_owned(), self.conn.clone());
        Box::pin(bounded(async move {
            ::redis::cmd("HDEL")
                .arg("fngate:paused")
                .arg(name)
                .query_async::<i64>(&mut conn)
                .await
                .map(|n| n == 1)
                .map_err(failed)
        }))
    }

    fn paused(&self) -> Op<Vec<String>> {
        self.read(|mut conn| async move {
            let mut names: Vec<String> = ::redis::cmd("HKEYS")
                .arg("fngate:paused")
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            names.sort();
            Ok(names)
        })
    }

    fn secret(&self, name: &str) -> Op<Vec<u8>> {
        use ring::rand::SecureRandom as _;
        let mut fresh = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut fresh).is_err() {
            return Box::pin(async { Err(failed("no randomness for a secret")) });
        }
        let args = vec![name.into(), fresh.to_vec()];
        self.script(&SECRET, args, |v| {
            bytes_of(&v)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| failed("no secret kept"))
        })
    }

    fn schedules(&self) -> Op<Vec<ScheduleState>> {
        self.read(|mut conn| async move {
            let mut names: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg("fngate:schedules")
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            names.sort();
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let v: Vec<Option<String>> = ::redis::cmd("HMGET")
                    .arg(format!("fngate:sched:{name}"))
                    .arg(&["last_tick", "last_fire", "last_outcome", "last_job"])
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                let n = |i: usize| v.get(i).cloned().flatten().and_then(|s| s.parse().ok());
                out.push(ScheduleState {
                    last_tick: n(0),
                    last_fire: n(1),
                    last_outcome: v.get(2).cloned().flatten(),
                    last_job: v.get(3).cloned().flatten(),
                    name,
                });
            }
            Ok(out)
        })
    }

    fn tick(&self, tick: Tick) -> Op<Fired> {
        let mut args = vec![
            tick.schedule.clone().into_bytes(),
            tick.last_tick.map(num).unwrap_or_default(),
            num(u8::from(tick.forbid)),
            num(u8::from(tick.replace)),
            tick.outcome.into(),
            num(tick.now),
        ];
        if let Some(job) = &tick.job {
            push_job(&mut args, job, self.held());
        }
        let id = tick.job.as_ref().map(|j| j.id.clone());
        let stored = move |v: &Value| match (v, id) {
            (Value::Array(a), Some(id))
                if a.first().and_then(text).as_deref() == Some("stored") =>
            {
                (vec![id], Vec::new())
            }
            _ => (Vec::new(), Vec::new()),
        };
        self.durable(&TICK, args, stored, |v| {
            let a = array(v)?;
            let tag = a.first().and_then(text).unwrap_or_default();
            Ok(match tag.as_str() {
                "stored" => Fired::Stored {
                    replaced: a[1..].iter().filter_map(text).collect(),
                },
                "busy" => Fired::Busy,
                "duplicate" => Fired::Duplicate,
                _ => Fired::Recorded,
            })
        })
    }

    fn cancel(&self, id: &str) -> Op<Cancel> {
        self.script(&CANCEL, vec![id.into()], |v| {
            Ok(match text(&v).as_deref() {
                Some("cancelled") => Cancel::Cancelled,
                Some("finished") => Cancel::Finished,
                _ => Cancel::Missing,
            })
        })
    }

    fn redrive(&self, id: &str, now: Millis) -> Op<Redrive> {
        self.script(&REDRIVE, vec![id.into(), num(now)], |v| {
            Ok(match text(&v).as_deref() {
                Some("queued") => Redrive::Queued,
                Some("not_dead") => Redrive::NotDead,
                _ => Redrive::Missing,
            })
        })
    }

    fn purge(&self, id: &str) -> Op<bool> {
        self.script(&PURGE, vec![id.into()], |v| Ok(int(&v) == Some(1)))
    }

    fn list(&self, filter: ListFilter, now: Millis) -> Op<Vec<Job>> {
        self.read(move |mut conn| async move {
            let mut out = Vec::new();
            let mut start = 0isize;
            const PAGE: isize = 200;
            while out.len() < filter.limit {
                let ids: Vec<String> = ::redis::cmd("ZREVRANGE")
                    .arg("fngate:created")
                    .arg(start)
                    .arg(start + PAGE - 1)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                if ids.is_empty() {
                    break;
                }
                start += PAGE;
                for id in ids {
                    let Some(mut job) = load(&mut conn, &id, false, now).await? else {
                        continue;
                    };
                    if filter.state.is_some_and(|s| s != job.state)
                        || filter.route.as_ref().is_some_and(|r| *r != job.route)
                    {
                        continue;
                    }
                    if job.state == JobState::Dead {
                        job.log = attempts(&mut conn, &id).await?;
                    }
                    out.push(job);
                    if out.len() >= filter.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn sweep(&self, now: Millis) -> Op<u64> {
        self.script(&SWEEP, vec![num(now)], |v| {
            Ok(int(&v).unwrap_or(0).max(0) as u64)
        })
    }

    fn backlog(&self, _now: Millis) -> Op<Vec<Pending>> {
        self.script(&BACKLOG, Vec::new(), |v| {
            let mut out = Vec::new();
            for row in array(v)? {
                let r = array(row)?;
                let n = |i: usize| r.get(i).and_then(int).unwrap_or(0);
                out.push(Pending {
                    backend: r.first().and_then(text).unwrap_or_default(),
                    jobs: n(1).max(0) as u64,
                    oldest: n(2),
                    next_due: n(3),
                });
            }
            out.sort_by(|a, b| a.backend.cmp(&b.backend));
            Ok(out)
        })
    }
}
