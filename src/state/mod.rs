//! The running snapshot behind one `ArcSwap`. A reload loads, validates and
//! compiles a whole new snapshot first, then swaps it in one step; on any
//! error the old one keeps serving.

mod snapshot;
pub mod watch;

pub use snapshot::{ActiveAction, ActiveRoute, RouteContext, Snapshot};

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::Clock;
use crate::config::{Config, ConfigErrors};
use crate::metrics::Metrics;

/// What triggered a config change (SPEC §5 `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Start,
    File,
    Signal,
    Reload,
    Admin,
    Rollback,
    /// Another instance's admin change, through the shared store (SPEC §10).
    Cluster,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::File => "file",
            Self::Signal => "signal",
            Self::Reload => "reload",
            Self::Admin => "admin",
            Self::Rollback => "rollback",
            Self::Cluster => "cluster",
        }
    }
}

/// The result of a reload that changed nothing because the text is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Applied(u64),
    Unchanged(u64),
}

/// One entry of the config history (`GET /versions`).
#[derive(Debug, Clone)]
pub struct Version {
    pub version: u64,
    pub time: std::time::SystemTime,
    pub source: Source,
    pub summary: String,
    /// False when the change lives in memory only (`admin.persist = "memory"`).
    pub persisted: bool,
    /// The config text of this version, for rollback.
    pub text: Arc<str>,
}

/// How many versions `GET /versions` and rollback can reach.
pub const HISTORY: usize = 20;

/// A change asked for through the admin API. The edit itself is a function of
/// the running snapshot, applied under the write lock (see [`State::change`]).
#[derive(Debug)]
pub struct Change {
    pub source: Source,
    /// The version the client based its change on (`If-Match`).
    pub if_match: Option<u64>,
    pub client: Option<std::net::SocketAddr>,
}

/// What an edit made of the running config: the whole new text, a line for the
/// history, and whatever the caller wants back.
#[derive(Debug)]
pub struct Edit<T> {
    pub text: String,
    pub summary: String,
    pub value: T,
}

/// Why a change was not applied; the running config is then untouched.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the config is at version {current}, not {expected}")]
    Stale { expected: u64, current: u64 },
    #[error("the config is invalid")]
    Invalid(ConfigErrors),
    #[error("writing {path} failed: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("version {0} is not among the last {HISTORY}")]
    UnknownVersion(u64),
    #[error("the change could not be shared with the other instances: {0}")]
    Unshared(String),
    #[error("another instance changed the config first (cluster version {current}); it is applied here within a second, then retry")]
    ClusterMoved { current: u64 },
}

/// Where a validated admin change goes before it serves: with a shared
/// store, to every instance (`cluster/`). The change is refused, and nothing
/// applied, unless this answers Ok.
pub trait Publish: Send + Sync + std::fmt::Debug {
    fn publish(
        &self,
        text: Arc<str>,
        summary: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, ChangeError>> + Send + '_>>;
}

#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Serialises changes so two never interleave their build, write and swap.
    write_lock: tokio::sync::Mutex<()>,
    history: std::sync::Mutex<std::collections::VecDeque<Version>>,
    pub metrics: Arc<Metrics>,
    clock: Clock,
    publisher: std::sync::OnceLock<Arc<dyn Publish>>,
}

impl State {
    pub fn new(config: Config, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let first = Version {
            version: 1,
            time: std::time::SystemTime::now(),
            source: Source::Start,
            summary: "started".into(),
            persisted: config.path.is_some(),
            text: config.text.clone(),
        };
        let snapshot = Snapshot::compile(config, 1, None, &metrics, &clock);
        metrics.config_version.set(1);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            write_lock: tokio::sync::Mutex::new(()),
            history: std::sync::Mutex::new(std::collections::VecDeque::from([first])),
            metrics,
            clock,
            publisher: std::sync::OnceLock::new(),
        }
    }

    /// From now on admin changes are published before they serve.
    pub fn set_publisher(&self, publisher: Arc<dyn Publish>) {
        let _ = self.publisher.set(publisher);
    }

    /// Serves a config another instance published: validated here too (its
    /// `${VAR}`s are this instance's), written back when `persist = "file"`.
    /// `None`: the text is what runs already.
    pub async fn apply_published(
        &self,
        text: &str,
        summary: String,
    ) -> Result<Option<u64>, ChangeError> {
        let _serial = self.write_lock.lock().await;
        let current = self.load();
        if *current.config.text == *text {
            return Ok(None);
        }
        let config = Self::parse_in(&current, text)?;
        let persisted = Self::persist(&config, text).await?;
        Ok(Some(self.swap(
            config,
            &current,
            Source::Cluster,
            summary,
            persisted,
        )))
    }

    /// `text` as the whole config, in the running config's file (for its errors' positions).
    fn parse_in(current: &Snapshot, text: &str) -> Result<Config, ChangeError> {
        let mut config = Config::parse(text, &file_name(current), &|name| std::env::var(name).ok())
            .map_err(ChangeError::Invalid)?;
        config.path = current.config.path.clone();
        Ok(config)
    }

    /// With `persist = "file"`, writes `text` back to `config`'s file; whether it did.
    async fn persist(config: &Config, text: &str) -> Result<bool, ChangeError> {
        let (Some(path), crate::config::Persist::File) = (&config.path, config.admin.persist)
        else {
            return Ok(false);
        };
        let (p, t) = (path.clone(), text.to_owned());
        tokio::task::spawn_blocking(move || write_back(&p, &t))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| ChangeError::Write {
                path: path.display().to_string(),
                source,
            })?;
        Ok(true)
    }

    /// The snapshot to serve one request with.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The last versions, newest first.
    pub fn versions(&self) -> Vec<Version> {
        self.history
            .lock()
            .map(|h| h.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Re-reads the config file. An invalid file leaves the running config in place.
    pub async fn reload(&self, source: Source) -> Result<Reloaded, ConfigErrors> {
        let _serial = self.write_lock.lock().await;
        let current = self.load();
        let Some(path) = current.config.path.clone() else {
            return Ok(Reloaded::Unchanged(current.version));
        };
        let result = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        match result {
            // The watcher sees our own write-backs too: same text, nothing to do.
            Ok(config)
                if config.text == current.config.text
                    && config.server.tls == current.config.server.tls
                    && source == Source::File =>
            {
                self.metrics.reload_result("unchanged");
                Ok(Reloaded::Unchanged(current.version))
            }
            Ok(config) => {
                let summary = format!(
                    "re-read {}",
                    config
                        .path
                        .as_ref()
                        .map_or("-".into(), |p| p.display().to_string())
                );
                let version = self.swap(config, &current, source, summary, true);
                Ok(Reloaded::Applied(version))
            }
            Err(errors) => {
                self.metrics.reload(false);
                for e in &errors.0 {
                    tracing::error!(source = source.as_str(), "config reload refused: {e}");
                }
                Err(errors)
            }
        }
    }

    /// Applies `edit` to the running snapshot, validates the text it returns as a
    /// whole config, writes it back to the file (unless `admin.persist =
    /// "memory"`), and only then serves it. The edit runs under the same lock as
    /// the validation, write and swap, so concurrent changes never overwrite each
    /// other: each one edits the text the previous one left.
    pub async fn change<T, E: From<ChangeError>>(
        &self,
        change: Change,
        edit: impl FnOnce(&Snapshot) -> Result<Edit<T>, E>,
    ) -> Result<(u64, T), E> {
        let _serial = self.write_lock.lock().await;
        let current = self.load();
        if let Some(expected) = change.if_match {
            if expected != current.version {
                return Err(ChangeError::Stale {
                    expected,
                    current: current.version,
                }
                .into());
            }
        }
        let Edit {
            text,
            summary,
            value,
        } = edit(&current)?;
        let config = Self::parse_in(&current, &text)?;
        // Valid here before it goes to the others, and shared before it is written or served.
        if let Some(publisher) = self.publisher.get() {
            publisher
                .publish(text.as_str().into(), summary.clone())
                .await?;
        }
        let persisted = Self::persist(&config, &text).await?;
        let version = self.swap(config, &current, change.source, summary.clone(), persisted);
        tracing::info!(
            target: "fngate::audit",
            version,
            source = change.source.as_str(),
            client = %change.client.map_or("-".into(), |c| c.to_string()),
            persisted,
            "config changed: {summary}"
        );
        Ok((version, value))
    }

    /// The text of an earlier version, for rollback.
    pub fn version_text(&self, version: u64) -> Result<Arc<str>, ChangeError> {
        self.history
            .lock()
            .ok()
            .and_then(|h| {
                h.iter()
                    .find(|v| v.version == version)
                    .map(|v| v.text.clone())
            })
            .ok_or(ChangeError::UnknownVersion(version))
    }

    fn swap(
        &self,
        config: Config,
        current: &Snapshot,
        source: Source,
        summary: String,
        persisted: bool,
    ) -> u64 {
        if config.server.listen != current.config.server.listen
            || config.admin.listen != current.config.admin.listen
        {
            tracing::warn!(
                "listen addresses changed in the config; they take effect at the next start"
            );
        }
        let version = current.version + 1;
        let text = config.text.clone();
        let next = Snapshot::compile(config, version, Some(current), &self.metrics, &self.clock);
        self.current.store(Arc::new(next));
        if let Ok(mut h) = self.history.lock() {
            h.push_back(Version {
                version,
                time: std::time::SystemTime::now(),
                source,
                summary,
                persisted,
                text,
            });
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
        self.metrics.reload(true);
        self.metrics.config_version.set(version as i64);
        tracing::info!(version, source = source.as_str(), "config reloaded");
        version
    }
}

/// Writes `text` to `path` so that a reader sees the old file or the new one,
/// never half of it: a temporary file beside it, fsync, rename. Where rename is
/// refused (a single-file bind mount), the file is rewritten in place.
fn write_back(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.fngate-tmp"));
    let renamed = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    match renamed {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(
                "atomic write of {} failed ({e}); writing in place",
                path.display()
            );
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError {
        file: "routes.toml".into(),
        line: 0,
        col: 0,
        key: String::new(),
        message: format!("the config loader failed: {e}"),
    }])
}

/// The running config's file name, or `routes.toml` for one that came from no file.
fn file_name(current: &Snapshot) -> String {
    current
        .config
        .path
        .as_ref()
        .map_or("routes.toml".to_owned(), |p| p.display().to_string())
}
