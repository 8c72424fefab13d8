//! routes.toml: the typed, validated configuration.
//!
//! `load` reads the file, `parse` decodes and validates text. What comes out
//! cannot be wrong: durations are parsed, references resolved (a route holds
//! its backend), names checked. Nothing here does IO beyond reading the file
//! and the key files it names, and nothing on the data path mutates a `Config`.

mod aggregate;
mod auth;
mod decode;
mod error;
pub mod json;
mod load;
pub mod path;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

pub use aggregate::{Aggregate, Call, CallPart, CallPath, Merge};
pub use auth::{
    jwk_family, parse_jwks, ApiKey, ApiKeys, AuthKind, AuthPolicy, JwksError, Jwt, JwtKeys,
    KeyFamily, PemKey, Remote, Secret,
};
pub use error::{ConfigError, ConfigErrors};
pub use path::{HostPattern, Param, PathPattern, Template};
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
    pub routes: Vec<Arc<Route>>,
}

/// A named rate-limit policy; routes naming it share its buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: Arc<str>,
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
    pub key: LimitKey,
    /// Buckets kept at most; beyond it new keys share one overflow bucket.
    pub max_keys: usize,
}

/// What a policy's buckets are keyed by. A request without a value for its
/// key (no such header, an anonymous consumer) is keyed by its client IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Ip,
    Global,
    Header(HeaderName),
    /// The JWT `sub` or the API key's id.
    Consumer,
    /// A top-level claim of the verified token.
    Claim(Arc<str>),
}

impl LimitKey {
    /// `ip` and `global` keys are checked before authentication (SPEC §3).
    pub fn before_auth(&self) -> bool {
        matches!(self, Self::Ip | Self::Global)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    pub max_body: u64,
    pub max_header_size: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub drain_delay: Duration,
    /// An upgraded connection (WebSocket) with no bytes moving this long is closed.
    pub websocket_idle_timeout: Duration,
    /// ...and one open this long, whatever it does.
    pub websocket_max_lifetime: Duration,
    /// The HTTPS listener, when configured.
    pub tls: Option<ServerTls>,
    pub watch: bool,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub persist: Persist,
    pub token_env: String,
    /// The bearer token read from `token_env`; never printed.
    pub token: Option<Arc<str>>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("persist", &self.persist)
            .field("token_env", &self.token_env)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    File,
    Memory,
}

/// A pool of endpoints serving one function.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    /// Added to every upstream request (function keys).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Per attempt, until response headers arrive.
    pub timeout: Duration,
    pub retries: u32,
    /// Concurrent upstream requests allowed; beyond it 503 at once. 0: no cap.
    pub max_in_flight: u32,
    /// Consecutive failures that eject an endpoint (passive health).
    pub eject_after: u32,
    pub eject_for: Duration,
    /// At most this share of the pool is ejected passively at once.
    pub max_ejection_percent: u32,
    pub health: Option<HealthCheck>,
    /// Retries may add at most this percentage of recent requests...
    pub retry_budget_percent: u32,
    /// ...plus this many per second, so a quiet backend can still retry.
    pub retry_min_per_second: u32,
    pub protocol: Protocol,
    /// PEM CA certificates trusted for `https://` endpoints instead of the system roots.
    pub ca: Option<Arc<[u8]>>,
}

/// What a backend speaks: HTTP/1.1, or HTTP/2 (ALPN over TLS, prior knowledge over
/// plain TCP), which gRPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Power of two choices over requests in flight.
    LeastRequests,
    Random,
}

impl Balance {
    /// As `explain` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round robin",
            Self::LeastRequests => "least requests",
            Self::Random => "random",
        }
    }
}

/// Active health checks of every endpoint of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Appended to each endpoint's base path.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row that take it out.
    pub unhealthy_threshold: u32,
}

/// One upstream URL, split once at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Prefix for every upstream path, without a trailing `/` (may be empty).
    pub base_path: String,
    /// The `Host` sent upstream unless the route preserves the client's.
    pub host: HeaderValue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: Arc<str>,
    pub path: PathPattern,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostPattern>,
    /// What the route does with a request that passed its policies.
    pub action: Action,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Overrides `server.request_timeout`.
    pub timeout: Option<Duration>,
    /// The request body limit: the route's `max_body`, else `server.max_body`;
    /// `u64::MAX` when the route sets 0 (unlimited).
    pub max_body: u64,
    pub cors: Option<Cors>,
    pub auth: Option<Arc<AuthPolicy>>,
    /// Required on top of the policy's own.
    pub scopes: Vec<String>,
    /// Checked in order; all must pass.
    pub rate_limits: Vec<Arc<RateLimit>>,
}

/// A route forwards to one backend or fans out to several calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Aggregate(Arc<Aggregate>),
}

/// Where and how a forwarding route sends a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub backend: Arc<Backend>,
    pub target: Target,
    /// Keep the client's Host instead of the endpoint's.
    pub preserve_host: bool,
}

impl Route {
    /// Every backend the route sends to: its own, or its calls'.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        let (one, calls) = match &self.action {
            Action::Forward(f) => (Some(&f.backend), None),
            Action::Aggregate(a) => (None, Some(a.calls.iter().map(|c| &c.backend))),
        };
        one.into_iter().chain(calls.into_iter().flatten())
    }
}

/// Per-route CORS. A preflight for the route is answered by fngate even when
/// `methods` lacks OPTIONS; such a route never forwards OPTIONS.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    /// `None`: any origin (`*`).
    pub origins: Option<Vec<HeaderValue>>,
    /// Methods a preflight may ask for: the listed ones, else the route's.
    pub methods: Vec<Method>,
    /// `None`: any request header (`*`).
    pub headers: Option<Vec<HeaderName>>,
    pub expose_headers: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

/// How the matched path becomes the upstream path.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Forward the (normalised) path as it is.
    Same,
    Rewrite(Template),
    StripPrefix(String),
}

impl Target {
    /// The upstream path (before the backend's base path) for a matched,
    /// normalised `path` whose params, by position, are `params`.
    pub fn render(&self, path: &str, params: &[&str]) -> String {
        match self {
            Self::Same => path.to_owned(),
            Self::Rewrite(t) => {
                let mut out = String::with_capacity(t.raw.len() + path.len());
                t.render(params, &mut out);
                out
            }
            Self::StripPrefix(prefix) => {
                let rest = path.get(prefix.len()..).unwrap_or_default();
                if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
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

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }
}

/// The path a config is read from: `--config`, else `$FNGATE_CONFIG`, else `./routes.toml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("FNGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("routes.toml"))
}
