//! The running snapshot behind one `ArcSwap`. A reload loads, validates and
//! compiles a whole new snapshot first, then swaps it in one step; on any
//! error the old one keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigErrors, Route};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::router::RouteTable;

/// One compiled config: routes, their upstream pools, and the table that matches them.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    pub table: RouteTable,
    /// Parallel to `config.backends`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Parallel to `config.routes`.
    pub routes: Vec<ActiveRoute>,
}

#[derive(Debug)]
pub struct ActiveRoute {
    pub config: Arc<Route>,
    pub upstream: Arc<Upstream>,
    pub cors: Option<tower_http::cors::CorsLayer>,
}

/// What triggered a config change (SPEC §5 `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Start,
    File,
    Signal,
    Reload,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::File => "file",
            Self::Signal => "signal",
            Self::Reload => "reload",
        }
    }
}

/// The result of a reload that changed nothing because the text is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Applied(u64),
    Unchanged(u64),
}

#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Serialises reloads so two never interleave their build and swap.
    reload_lock: tokio::sync::Mutex<()>,
    pub metrics: Arc<Metrics>,
}

impl Snapshot {
    fn compile(config: Config, version: u64, previous: Option<&Snapshot>) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .backends
            .iter()
            .map(|b| {
                // A backend whose settings did not change keeps its pool.
                previous
                    .and_then(|p| p.upstreams.iter().find(|u| *u.backend == **b))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(b.clone())))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let upstream = config
                    .backends
                    .iter()
                    .position(|b| Arc::ptr_eq(b, &r.backend))
                    .map(|i| upstreams[i].clone())
                    .unwrap_or_else(|| Arc::new(Upstream::new(r.backend.clone())));
                ActiveRoute {
                    cors: r.cors.as_ref().map(crate::middleware::cors::compile),
                    config: r.clone(),
                    upstream,
                }
            })
            .collect();
        Self {
            version,
            table: RouteTable::build(&config.routes),
            config: Arc::new(config),
            upstreams,
            routes,
        }
    }
}

impl State {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        let snapshot = Snapshot::compile(config, 1, None);
        metrics.config_version.set(1);
        Self {
            current: ArcSwap::from_pointee(snapshot),
            reload_lock: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The snapshot to serve one request with.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        self.current.load().config.path.clone()
    }

    /// Re-reads the config file. An invalid file leaves the running config in place.
    pub async fn reload(&self, source: Source) -> Result<Reloaded, ConfigErrors> {
        let _serial = self.reload_lock.lock().await;
        let current = self.load();
        let Some(path) = current.config.path.clone() else {
            return Ok(Reloaded::Unchanged(current.version));
        };
        let result = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        match result {
            Ok(config) if config.text == current.config.text && source == Source::File => {
                Ok(Reloaded::Unchanged(current.version))
            }
            Ok(config) => {
                let version = self.swap(config, &current);
                tracing::info!(version, source = source.as_str(), "config reloaded");
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

    fn swap(&self, config: Config, current: &Snapshot) -> u64 {
        if config.server.listen != current.config.server.listen
            || config.admin.listen != current.config.admin.listen
        {
            tracing::warn!(
                "listen addresses changed in the config; they take effect at the next start"
            );
        }
        let version = current.version + 1;
        let next = Snapshot::compile(config, version, Some(current));
        self.current.store(Arc::new(next));
        self.metrics.reload(true);
        self.metrics.config_version.set(version as i64);
        version
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
