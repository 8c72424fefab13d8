//! Instances sharing one Redis (SPEC §10): admin changes go to all of them,
//! and each says it is alive.
//!
//! A change validated here is appended, whole, to the stream `fngate:config`
//! under the next cluster-wide version, but only if the cluster is still at
//! the version this instance applied last (else 409: the change was edited
//! from an outdated text and would undo another one). Every instance polls
//! the version four times a second and serves the newest text when it is
//! newer than its own, so a change serves everywhere within a second. An
//! instance that starts applies the newest before `/readyz` says ready; one
//! that loses Redis keeps serving what it has and catches up on return.
//! Each instance heartbeats every second into `fngate:instances`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use crate::state::{ChangeError, Publish, State};

const POLL: Duration = Duration::from_millis(250);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance not heard from for this long is no longer listed...
const SILENT: Duration = Duration::from_secs(30);
/// ...and after this long it is forgotten.
const FORGOTTEN: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(2);

const VERSION: &str = "fngate:config:version";
const STREAM: &str = "fngate:config";
const INSTANCES: &str = "fngate:instances";

/// ARGV: the version the change was based on, text, summary, origin.
/// Answers {1, new version} or {0, the cluster's version}.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = tonumber(redis.call('GET', KEYS[1]) or 0)
if v ~= tonumber(ARGV[1]) then return {0, v} end
v = v + 1
redis.call('SET', KEYS[1], v)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100, '*', 'version', v, 'text', ARGV[2],
  'summary', ARGV[3], 'origin', ARGV[4])
return {1, v}
"#,
    )
});

/// One instance as `GET /cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) applied_version: u64,
    /// RFC 3339.
    pub(crate) last_heartbeat: String,
}

pub(crate) struct Cluster {
    conn: ConnectionManager,
    state: Arc<State>,
    /// This instance in `GET /cluster`: host name and a random suffix.
    pub(crate) id: String,
    /// The cluster version serving here (0: none applied yet).
    applied: AtomicU64,
    /// A version this instance could not serve (invalid here), logged once.
    refused: AtomicU64,
    /// The newest version was applied at least once since start.
    synced: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("id", &self.id).finish()
    }
}

fn failed(e: impl std::fmt::Display) -> String {
    format!("Redis: {e}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Cluster {
    pub(crate) fn new(
        state: Arc<State>,
        store: &crate::config::Store,
    ) -> Result<Arc<Self>, String> {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "fngate".into());
        let suffix = crate::jobs::new_id().unwrap_or_default();
        Ok(Arc::new(Self {
            conn: crate::redis_client::connect(store, TIMEOUT)?,
            state,
            id: format!("{host}-{}", &suffix[suffix.len().saturating_sub(8)..]),
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            synced: AtomicBool::new(false),
        }))
    }

    /// Whether the newest cluster version was applied since start (`/readyz`).
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Polls for newer versions and heartbeats until `stop`.
    pub(crate) fn spawn(self: &Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_beat: Option<tokio::time::Instant> = None;
            let mut down = false;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = poll.tick() => {}
                }
                let mut result = this.sync().await;
                if result.is_ok() && last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                    last_beat = Some(tokio::time::Instant::now());
                    result = this.heartbeat().await;
                }
                match result {
                    Ok(()) if down => {
                        down = false;
                        tracing::info!("cluster: Redis answers again");
                    }
                    Err(e) if !down => {
                        down = true;
                        tracing::warn!(
                            "cluster: {e}; serving the config in hand until Redis is back"
                        );
                    }
                    _ => {}
                }
            }
        });
    }

    /// Serves the newest cluster version if it is newer than the one here.
    async fn sync(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let newest: Option<u64> = redis::cmd("GET")
            .arg(VERSION)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        let newest = newest.unwrap_or(0);
        let applied = self.applied();
        if newest > applied && newest != self.refused.load(Ordering::SeqCst) {
            let entries: Value = redis::cmd("XREVRANGE")
                .arg(STREAM)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            if let Some((version, fields)) = newest_entry(entries) {
                let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
                let text = field("text").unwrap_or_default();
                let summary = format!(
                    "cluster version {version} from {}: {}",
                    field("origin").unwrap_or("?"),
                    field("summary").unwrap_or("")
                );
                match self.state.apply_published(text, summary).await {
                    Ok(local) => {
                        self.applied.store(version, Ordering::SeqCst);
                        tracing::info!(cluster_version = version, local_version = ?local,
                            "cluster: config applied");
                    }
                    Err(e) => {
                        self.refused.store(version, Ordering::SeqCst);
                        tracing::error!(
                            cluster_version = version,
                            "cluster: this instance cannot serve the newest config: {e}"
                        );
                    }
                }
            }
        }
        self.synced.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(INSTANCES)
            .arg(&self.id)
            .arg(format!("{} {}", self.applied(), now_ms()))
            .query_async::<Value>(&mut conn)
            .await
            .map(drop)
            .map_err(failed)
    }

    /// Instances heard from in the last 30 s, by id; long-silent ones are forgotten.
    pub(crate) async fn instances(&self) -> Result<Vec<Instance>, String> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(INSTANCES)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        let now = now_ms();
        let mut out = Vec::new();
        for (id, value) in all {
            let mut parts = value.split(' ');
            let applied: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let beat: i64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let age = now.saturating_sub(beat);
            if age > FORGOTTEN.as_millis() as i64 {
                let _: Result<Value, _> = redis::cmd("HDEL")
                    .arg(INSTANCES)
                    .arg(&id)
                    .query_async(&mut conn)
                    .await;
            } else if age <= SILENT.as_millis() as i64 {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(beat.max(0) as u64);
                out.push(Instance {
                    id,
                    applied_version: applied,
                    last_heartbeat: humantime::format_rfc3339_millis(at).to_string(),
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// The version and fields of XREVRANGE's first entry.
fn newest_entry(v: Value) -> Option<(u64, Vec<(String, String)>)> {
    let Value::Array(entries) = v else {
        return None;
    };
    let Value::Array(entry) = entries.into_iter().next()? else {
        return None;
    };
    let Value::Array(flat) = entry.into_iter().nth(1)? else {
        return None;
    };
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        fields.push((text(k)?, text(v)?));
    }
    let version = fields
        .iter()
        .find(|(k, _)| k == "version")?
        .1
        .parse()
        .ok()?;
    Some((version, fields))
}

impl Publish for Cluster {
    fn publish(
        &self,
        text: Arc<str>,
        summary: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, ChangeError>> + Send + '_>>
    {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let based_on = self.applied();
            let mut call = PUBLISH.prepare_invoke();
            call.key(VERSION)
                .key(STREAM)
                .arg(based_on)
                .arg(&*text)
                .arg(&summary)
                .arg(&self.id);
            let answer = tokio::time::timeout(TIMEOUT, call.invoke_async::<(i64, u64)>(&mut conn))
                .await
                .map_err(|_| {
                    ChangeError::Unshared(format!("Redis gave no answer within {TIMEOUT:?}"))
                })?
                .map_err(|e| ChangeError::Unshared(failed(e)))?;
            match answer {
                (1, version) => {
                    // Served here right after; the poll will find it is ours.
                    self.applied.store(version, Ordering::SeqCst);
                    Ok(version)
                }
                (_, current) => Err(ChangeError::ClusterMoved { current }),
            }
        })
    }
}
