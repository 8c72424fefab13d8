//! routes.toml: the typed, validated configuration.
//!
//! `load` reads the file, `parse` decodes and validates text. What comes out
//! cannot be wrong: durations are parsed, references resolved (a route holds
//! its backend), names checked. Nothing here does IO beyond reading the file
//! and the key files it names, and nothing on the data path mutates a `Config`.

mod aggregate;
mod auth;
mod backend;
mod decode;
mod error;
mod events;
mod file;
mod headers;
mod jobs;
pub mod json;
mod load;
pub mod path;
mod rate_limit;
mod route;
mod schedules;
mod server;
mod telemetry;
mod tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use aggregate::parse_path as parse_call_path;
pub use aggregate::{Aggregate, Call, CallPart, CallPath, Merge};
pub use auth::{
    jwk_family, parse_jwks, ApiKey, ApiKeys, AuthKind, AuthPolicy, JwksError, Jwt, JwtKeys,
    KeyFamily, PemKey, Remote, Secret,
};
pub use backend::{Backend, Balance, Endpoint, HealthCheck, Protocol};
pub use error::{ConfigError, ConfigErrors};
pub use events::{Filter, Format, Ordering, Subscription, Topic};
pub use headers::HeaderEdits;
pub use jobs::{hide_password, Delivery, Durability, Invoke, OnError, Store};
pub use path::{HostPattern, Param, PathPattern, Template};
pub use rate_limit::{LimitKey, RateLimit};
pub use route::{Action, Cors, Forward, HostShapes, Route, Shapes, Target, Upload};
pub(crate) use schedules::parse_when;
pub use schedules::{CatchUp, Concurrency, Schedule, ScheduleTarget, When};
pub use server::{Admin, Persist, Server};
pub use telemetry::{Telemetry, MAX_EXPORT_TIMEOUT};
pub use tls::{PemFile, ServerTls, TlsCert};

/// The validated contents of one routes.toml.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (absent for text given directly, e.g. in tests).
    pub path: Option<PathBuf>,
    /// The text it was parsed from, to tell a changed file from an unchanged one.
    pub text: Arc<str>,
    pub server: Server,
    pub admin: Admin,
    pub backends: Vec<Arc<Backend>>,
    pub auth: Vec<Arc<AuthPolicy>>,
    pub rate_limits: Vec<Arc<RateLimit>>,
    /// The file's routes, then one per topic (`Action::Publish`).
    pub routes: Vec<Arc<Route>>,
    pub store: Store,
    pub topics: Vec<Arc<Topic>>,
    pub subscriptions: Vec<Arc<Subscription>>,
    pub schedules: Vec<Arc<Schedule>>,
    /// A route uploads files: `server.files_path` is fngate's.
    pub serves_files: bool,
    /// Trace export; `None` (no `otlp_endpoint`) costs the request path nothing.
    pub telemetry: Option<Telemetry>,
}

impl Config {
    /// Reads and validates a file, taking `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file: Arc<str> = path.display().to_string().into();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let mut config = Self::parse(&text, &file, &|name| std::env::var(name).ok())?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Decodes and validates config text; `file` names it in errors, and
    /// files it names are relative to `file`'s directory.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        load::parse(text, file.into(), base, env)
    }

    /// Like [`Config::parse`], with files relative to `base`.
    pub fn parse_in(
        text: &str,
        file: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        load::parse(text, file.into(), base, env)
    }

    pub fn auth_policy(&self, name: &str) -> Option<&Arc<AuthPolicy>> {
        self.auth.iter().find(|p| &*p.name == name)
    }

    /// The file's routes (not the ones fngate made for its topics).
    pub fn own_routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes
            .iter()
            .filter(|r| !matches!(r.action, Action::Publish(_)))
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<Topic>> {
        self.topics.iter().find(|t| &*t.name == name)
    }

    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| &*s.name == name)
    }

    pub fn schedule(&self, name: &str) -> Option<&Arc<Schedule>> {
        self.schedules.iter().find(|s| &*s.name == name)
    }

    /// Whether jobs can arrive: a route or a topic takes them, or `[store]`
    /// asks for the store anyway.
    pub fn needs_store(&self) -> bool {
        self.store.explicit
            || !self.topics.is_empty()
            || !self.schedules.is_empty()
            || self.routes.iter().any(|r| r.invoke != Invoke::Sync)
    }
}

/// The path a config is read from: `--config`, else `$FNGATE_CONFIG`, else `./routes.toml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("FNGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("routes.toml"))
}
