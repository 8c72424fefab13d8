//! One compiled config: the route table, and each route's policies and pools
//! resolved once, so a request looks nothing up by name. A compile reuses the
//! previous snapshot's pools, limiters and verifiers while their settings are
//! unchanged, so a reload keeps connections, buckets and fetched keys.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use http::HeaderValue;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer as TowerCors, ExposeHeaders};

use crate::aggregate::Plan;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{self, Action, AuthKind, Config, Forward, Route};
use crate::metrics::Metrics;
use crate::ratelimit::{Limiter, Shared};
use crate::router::RouteTable;
use crate::telemetry::Telemetry;
use crate::upstream::Upstream;

/// The matched route, with the snapshot it was matched in: a request finishes
/// on the config it began with, whatever reloads happen meanwhile.
#[derive(Debug, Clone)]
pub struct RouteContext {
    pub snapshot: Arc<Snapshot>,
    pub route: usize,
    /// The normalised path that was matched and is forwarded.
    pub path: String,
    pub params: Vec<Range<usize>>,
    /// The host the client addressed (for `x-forwarded-host`).
    pub host: Option<HeaderValue>,
    pub client_ip: IpAddr,
}

impl RouteContext {
    pub fn active(&self) -> &ActiveRoute {
        &self.snapshot.routes[self.route]
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|r| &self.path[r.clone()])
    }
}

/// One compiled config: routes, their upstream pools, and the table that matches them.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    pub table: RouteTable,
    /// Parallel to `config.backends`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Parallel to `config.rate_limits`.
    pub limiters: Vec<Arc<Limiter>>,
    /// The Redis that holds every policy's buckets, with `[store] url`.
    pub shared_limits: Option<Arc<Shared>>,
    /// Parallel to `config.auth`.
    pub authenticators: Vec<Arc<Authenticator>>,
    /// Parallel to `config.routes`.
    pub routes: Vec<ActiveRoute>,
    /// The HTTPS listener's config; new connections take the current one.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Trace export, when `[telemetry]` names a collector.
    pub telemetry: Option<Arc<Telemetry>>,
}

#[derive(Debug)]
pub struct ActiveRoute {
    pub config: Arc<Route>,
    pub action: ActiveAction,
    pub cors: Option<tower_http::cors::CorsLayer>,
    pub auth: Option<Arc<Authenticator>>,
    /// The policy's scopes and the route's.
    pub scopes: Arc<[String]>,
    /// The route's `ip`/`global` rate limits, in order, checked before
    /// authentication; shared with every route naming them.
    pub limits_before: Vec<Arc<Limiter>>,
    /// The others, checked after authentication.
    pub limits_after: Vec<Arc<Limiter>>,
    /// `RateLimit-Policy`, when the route is limited at all.
    pub limit_policy: Option<http::HeaderValue>,
    /// Its latency histogram, resolved once (no label lookup per request).
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// Its request counters, resolved as each method and status is first seen.
    pub(crate) requests: Arc<crate::metrics::RouteRequests>,
}

/// A route's action with its runtime half: the pool it forwards to, or the
/// plan of its calls with theirs.
#[derive(Debug)]
pub enum ActiveAction {
    Forward {
        to: Forward,
        upstream: Arc<Upstream>,
    },
    Aggregate(Arc<Plan>),
    /// A topic's route: the dispatcher publishes.
    Publish(Arc<crate::config::Topic>),
    /// An upload route: the dispatcher stores the file and announces it.
    Upload(Arc<crate::config::Upload>),
}

impl Snapshot {
    pub(super) fn compile(
        config: Config,
        version: u64,
        previous: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
        clock: &Clock,
    ) -> Self {
        let shared_limits = shared_limits(&config, previous);
        // A policy whose settings (and store) did not change keeps its buckets.
        let limiters: Vec<Arc<Limiter>> = config
            .rate_limits
            .iter()
            .map(|p| {
                previous
                    .and_then(|s| {
                        s.limiters
                            .iter()
                            .find(|l| *l.policy == **p && l.shares(shared_limits.as_ref()))
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Limiter::new(p.clone(), clock.clone(), shared_limits.clone())
                    })
            })
            .collect();
        // An unchanged policy keeps its fetched keys and verified-token cache.
        let authenticators: Vec<Arc<Authenticator>> = config
            .auth
            .iter()
            .map(|p| {
                previous
                    .and_then(|s| s.authenticators.iter().find(|a| *a.policy == **p))
                    .cloned()
                    .unwrap_or_else(|| Authenticator::new(p.clone()))
            })
            .collect();
        let upstreams: Vec<Arc<Upstream>> = config
            .backends
            .iter()
            .map(|b| {
                // A backend whose settings did not change keeps its pool.
                previous
                    .and_then(|p| p.upstreams.iter().find(|u| *u.backend == **b))
                    .cloned()
                    .unwrap_or_else(|| Upstream::new(b.clone(), metrics.clone(), clock.clone()))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let pool_of = |backend: &Arc<crate::config::Backend>| {
                    config
                        .backends
                        .iter()
                        .position(|b| Arc::ptr_eq(b, backend))
                        .map(|i| upstreams[i].clone())
                        .unwrap_or_else(|| {
                            Upstream::new(backend.clone(), metrics.clone(), clock.clone())
                        })
                };
                let action = match &r.action {
                    Action::Forward(f) => ActiveAction::Forward {
                        to: f.clone(),
                        upstream: pool_of(&f.backend),
                    },
                    Action::Aggregate(a) => ActiveAction::Aggregate(Arc::new(Plan {
                        config: a.clone(),
                        upstreams: a.calls.iter().map(|c| pool_of(&c.backend)).collect(),
                    })),
                    Action::Publish(t) => ActiveAction::Publish(t.clone()),
                    Action::Upload(u) => ActiveAction::Upload(u.clone()),
                };
                let limits = r.rate_limits.iter().filter_map(|p| {
                    limiters
                        .iter()
                        .find(|l| Arc::ptr_eq(&l.policy, p) || *l.policy == **p)
                        .cloned()
                });
                let (limits_before, limits_after): (Vec<_>, Vec<_>) =
                    limits.partition(|l| l.policy.key.before_auth());
                let auth = r.auth.as_ref().and_then(|p| {
                    let i = config.auth.iter().position(|a| Arc::ptr_eq(a, p))?;
                    authenticators.get(i).cloned()
                });
                let mut scopes = match r.auth.as_ref().map(|p| &p.kind) {
                    Some(AuthKind::Jwt(jwt)) => jwt.scopes.clone(),
                    _ => Vec::new(),
                };
                scopes.extend(
                    r.scopes
                        .iter()
                        .filter(|s| !scopes.contains(s))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                ActiveRoute {
                    limit_policy: crate::ratelimit::policy_field(
                        limits_before.iter().chain(&limits_after),
                    ),
                    limits_before,
                    limits_after,
                    auth,
                    scopes: scopes.into(),
                    cors: r.cors.as_ref().map(cors),
                    duration: metrics.route_duration(&r.name),
                    requests: metrics.route_requests(&r.name),
                    config: r.clone(),
                    action,
                }
            })
            .collect();
        // Unchanged certificates keep their compiled config; a new one that
        // fails to build (checked at load, so rarely) leaves the old one serving.
        let tls = match (&config.server.tls, previous) {
            (None, _) => None,
            (Some(t), Some(p)) if p.config.server.tls.as_ref() == Some(t) => p.tls.clone(),
            (Some(t), p) => match crate::tls::server_config(t) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("server.tls: {e}; keeping the previous certificates");
                    p.and_then(|p| p.tls.clone())
                }
            },
        };
        // An unchanged `[telemetry]` keeps its exporter and queued spans.
        let telemetry = match (&config.telemetry, previous) {
            (None, _) => None,
            (Some(t), Some(p)) if p.telemetry.as_ref().is_some_and(|o| o.config == *t) => {
                p.telemetry.clone()
            }
            (Some(t), _) => match Telemetry::start(t.clone(), metrics) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!("telemetry: {e}; spans are not exported");
                    None
                }
            },
        };
        Self {
            version,
            tls,
            telemetry,
            table: RouteTable::build(&config.routes),
            config: Arc::new(config),
            upstreams,
            limiters,
            shared_limits,
            authenticators,
            routes,
        }
    }
}

/// Compiles a route's validated CORS settings once per snapshot.
fn cors(cfg: &config::Cors) -> TowerCors {
    let mut layer = TowerCors::new()
        .allow_methods(cfg.methods.clone())
        .allow_credentials(cfg.credentials)
        .allow_origin(match &cfg.origins {
            None => AllowOrigin::any(),
            Some(list) => AllowOrigin::list(list.iter().cloned()),
        })
        .allow_headers(match &cfg.headers {
            None => AllowHeaders::any(),
            Some(list) => AllowHeaders::list(list.iter().cloned()),
        })
        .expose_headers(ExposeHeaders::list(cfg.expose_headers.iter().cloned()));
    if let Some(age) = cfg.max_age {
        layer = layer.max_age(age);
    }
    layer
}

/// With `[store] url`, rate limits live on that Redis: the previous
/// snapshot's connection while the URL and the fallback are unchanged.
/// (Outside a runtime, as in `fngate check`, limits stay local: nothing is served.)
fn shared_limits(config: &Config, previous: Option<&Snapshot>) -> Option<Arc<Shared>> {
    config.store.url.as_ref()?;
    if let Some(kept) = previous
        .and_then(|s| s.shared_limits.as_ref())
        .filter(|s| s.same(&config.store))
    {
        return Some(kept.clone());
    }
    tokio::runtime::Handle::try_current().ok()?;
    match Shared::new(&config.store) {
        Ok(shared) => Some(shared),
        Err(e) => {
            tracing::warn!("rate limits stay local: {e}");
            None
        }
    }
}
