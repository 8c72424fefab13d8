//! The admin API (SPEC §5) on axum. It reads and changes state; the data path
//! never imports it. Every change goes through `State::change`: validated as
//! a whole config, written back, then swapped in.

pub(crate) mod doc;
mod jobs;
mod schema;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::jobs::Jobs;
use crate::state::{Change, ChangeError, Edit, Reloaded, Snapshot, Source, State};
use doc::{Doc, EditError, Kind};

#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    state: Arc<State>,
    /// False once a shutdown has begun: load balancers stop sending traffic.
    ready: Arc<AtomicBool>,
    jobs: Arc<Jobs>,
    /// The instances sharing this one's Redis, with `[store] url`.
    cluster: Option<Arc<Cluster>>,
}

impl AdminState {
    pub(crate) fn new(
        state: Arc<State>,
        ready: Arc<AtomicBool>,
        jobs: Arc<Jobs>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            state,
            ready,
            jobs,
            cluster,
        }
    }
}

/// Why the admin API refused a request: the facts, rendered once below.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("no collection `{0}`")]
    UnknownCollection(String),
    #[error("no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("the body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("{kind} `{name}` is used by {}", users.join(", "))]
    InUse {
        kind: &'static str,
        name: String,
        /// `routes: a`, `subscriptions: b`
        users: Vec<String>,
    },
    #[error("If-Match `{0}` names no config version")]
    BadIfMatch(String),
    #[error("`{0}` is not a config version")]
    NotAVersion(String),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("the running config text does not parse")]
    RunningUnparsable,
    #[error(transparent)]
    Change(ChangeError),
    #[error("no job `{0}`")]
    NoJob(String),
    #[error("job `{0}` is not dead; only dead jobs are redriven")]
    NotDead(String),
    #[error("{0}")]
    BadQuery(String),
    #[error("the job store is not available: {0}")]
    JobStore(String),
}

/// One config error in a 422 answer.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorItem {
    line: usize,
    col: usize,
    key: String,
    message: String,
}

/// RFC 9457 problem details; 422 answers add `errors`.
#[derive(Debug, Serialize, ToSchema)]
struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: String,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ErrorItem>,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnknownCollection(_) | Self::NotFound { .. } | Self::NotAVersion(_) => {
                StatusCode::NOT_FOUND
            }
            Self::NotJson(_) | Self::NotUtf8 => StatusCode::BAD_REQUEST,
            Self::InUse { .. } => StatusCode::CONFLICT,
            Self::BadIfMatch(_) => StatusCode::PRECONDITION_FAILED,
            Self::Edit(EditError::NotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Edit(
                EditError::NotAnObject
                | EditError::NameMismatch { .. }
                | EditError::Null(_)
                | EditError::HiddenWithoutValue(_),
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RunningUnparsable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Change(ChangeError::Stale { .. }) => StatusCode::PRECONDITION_FAILED,
            Self::Change(ChangeError::Invalid(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Change(ChangeError::Write { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Change(ChangeError::UnknownVersion(_)) => StatusCode::NOT_FOUND,
            Self::Change(ChangeError::Unshared(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Change(ChangeError::ClusterMoved { .. }) => StatusCode::CONFLICT,
            Self::NoJob(_) => StatusCode::NOT_FOUND,
            Self::NotDead(_) => StatusCode::CONFLICT,
            Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::JobStore(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let detail = match &self {
            Self::Change(ChangeError::Write { .. }) => {
                format!("the change could not be saved: {self}")
            }
            _ => self.to_string(),
        };
        let mut body = crate::error::problem_body(status, &detail);
        if let Self::Change(ChangeError::Invalid(errors)) = &self {
            let items: Vec<ErrorItem> = errors
                .0
                .iter()
                .map(|e| ErrorItem {
                    line: e.line,
                    col: e.col,
                    key: e.key.clone(),
                    message: e.message.clone(),
                })
                .collect();
            body["errors"] = serde_json::to_value(items).unwrap_or_default();
        }
        let mut res = (status, Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Self::Unauthorized) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fngate-admin\""),
            );
        }
        res
    }
}

impl From<ChangeError> for AdminError {
    fn from(e: ChangeError) -> Self {
        Self::Change(e)
    }
}

type Result<T, E = AdminError> = std::result::Result<T, E>;

#[derive(OpenApi)]
#[openapi(
    info(title = "fngate admin API", description = "Live configuration, health and metrics of an fngate gateway."),
    paths(healthz, readyz, metrics, config, validate, reload, versions, rollback, cluster,
        routes::list, routes::get_one, routes::put_one, routes::delete_one,
        backends::list, backends::get_one, backends::put_one, backends::delete_one,
        auth::list, auth::get_one, auth::put_one, auth::delete_one,
        rate_limits::list, rate_limits::get_one, rate_limits::put_one, rate_limits::delete_one,
        topics::list, topics::get_one, topics::put_one, topics::delete_one,
        subscriptions::list, subscriptions::get_one, subscriptions::put_one, subscriptions::delete_one,
        schedules::list, schedules::get_one, schedules::put_one, schedules::delete_one,
        jobs::resume, jobs::run_schedule,
        jobs::list, jobs::get_one, jobs::redrive, jobs::purge),
    components(schemas(Problem, ErrorItem, VersionItem, Changed, Validated, ClusterDoc, ClusterItem)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) fn router(admin: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/config", get(config))
        .route("/versions", get(versions))
        .route("/cluster", get(cluster))
        .route("/validate", post(validate))
        .route("/reload", post(reload))
        .route("/rollback/{version}", post(rollback))
        .merge(routes::routes())
        .merge(backends::routes())
        .merge(auth::routes())
        .merge(rate_limits::routes())
        .merge(topics::routes())
        .merge(subscriptions::routes())
        .merge(schedules::routes())
        .merge(jobs::routes())
        .route("/{collection}", any(unknown_collection))
        .route("/{collection}/{name}", any(unknown_entity))
        .layer(middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
}

pub(crate) async fn serve(listener: TcpListener, admin: AdminState, stop: CancellationToken) {
    let app = router(admin).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("admin listener failed: {e}");
    }
}

/// Checks the bearer token (except on the open endpoints) and stamps every
/// answer with the config version as its ETag.
async fn guard(AxumState(admin): AxumState<AdminState>, req: Request, next: Next) -> Response {
    let open = matches!(
        req.uri().path(),
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json"
    );
    if !open {
        if let Some(token) = admin.state.load().config.admin.token.clone() {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            // Constant time, so the token cannot be guessed byte by byte from timings.
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                return AdminError::Unauthorized.into_response();
            }
        }
    }
    let mut res = next.run(req).await;
    let version = admin.state.load().version;
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive", body = Object)))]
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Config loaded, listeners bound (and, sharing a store, the cluster's newest config applied)", body = Object),
    (status = 503, description = "Draining after SIGTERM, or not yet synced with the cluster (or connected to the Redis shared rate limits use)", body = Object)))]
async fn readyz(AxumState(admin): AxumState<AdminState>) -> impl IntoResponse {
    let snapshot = admin.state.load();
    let version = snapshot.version;
    let syncing = admin.cluster.as_ref().is_some_and(|c| !c.synced());
    // Shared rate limits: not before their Redis connection is warm (or given up on).
    let connecting = snapshot.shared_limits.as_ref().is_some_and(|s| !s.warm());
    if syncing || connecting {
        let status = if syncing { "syncing" } else { "connecting" };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": status, "config_version": version })),
        );
    }
    if admin.ready.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready", "config_version": version })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "draining", "config_version": version })),
        )
    }
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(AxumState(admin): AxumState<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.state.metrics.encode(),
    )
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

fn running_doc(admin: &AdminState) -> Result<Doc> {
    doc_of(&admin.state.load())
}

fn doc_of(running: &Snapshot) -> Result<Doc> {
    Doc::parse(&running.config.text).ok_or(AdminError::RunningUnparsable)
}

#[utoipa::path(get, path = "/config", security(("bearer" = [])), responses(
    (status = 200, description = "The running config as JSON; secrets are hidden", body = Object),
    (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn config(AxumState(admin): AxumState<AdminState>) -> Result<Json<serde_json::Value>> {
    Ok(Json(running_doc(&admin)?.to_json()))
}

/// `GET /{collection}` for a name that is no collection: a problem, like every refusal.
async fn unknown_collection(Path(collection): Path<String>) -> AdminError {
    AdminError::UnknownCollection(collection)
}

async fn unknown_entity(Path((collection, _)): Path<(String, String)>) -> AdminError {
    AdminError::UnknownCollection(collection)
}

async fn list(admin: &AdminState, kind: Kind) -> Result<Json<Vec<serde_json::Value>>> {
    let mut items = running_doc(admin)?.list(kind);
    if kind == Kind::Backends {
        items.iter_mut().for_each(|b| with_status(admin, b));
    }
    if kind == Kind::Subscriptions {
        with_paused(admin, &mut items).await?;
    }
    if kind == Kind::Schedules {
        with_fires(admin, &mut items).await?;
    }
    Ok(Json(items))
}

/// Adds `next_fire`, `last_fire`, `last_outcome` and `last_job` to schedules (read-only).
async fn with_fires(admin: &AdminState, items: &mut [serde_json::Value]) -> Result<()> {
    let states = admin
        .jobs
        .schedule_states()
        .await
        .map_err(|e| AdminError::JobStore(e.to_string()))?;
    let running = admin.state.load();
    let now = crate::jobs::now_ms();
    for item in items {
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        let state = states.iter().find(|s| s.name == name);
        let next = running
            .config
            .schedule(name)
            .filter(|s| s.enabled)
            .and_then(|s| {
                let last = state
                    .and_then(|st| st.last_tick)
                    .unwrap_or(now)
                    .max(now - 1);
                crate::schedules::plan::next_due(s, last)
            });
        let time = |t: Option<i64>| t.map(crate::jobs::time);
        item["next_fire"] = time(next).into();
        item["last_fire"] = time(state.and_then(|s| s.last_fire)).into();
        item["last_outcome"] = state.and_then(|s| s.last_outcome.clone()).into();
        item["last_job"] = state.and_then(|s| s.last_job.clone()).into();
    }
    Ok(())
}

/// Adds `paused` to subscriptions (read-only; ignored on PUT).
async fn with_paused(admin: &AdminState, items: &mut [serde_json::Value]) -> Result<()> {
    let paused = admin
        .jobs
        .paused_subscriptions()
        .await
        .map_err(|e| AdminError::JobStore(e.to_string()))?;
    for item in items {
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        item["paused"] = paused.iter().any(|p| p == name).into();
    }
    Ok(())
}

/// Adds each endpoint's live state to a backend (read-only; ignored on PUT).
fn with_status(admin: &AdminState, backend: &mut serde_json::Value) {
    let running = admin.state.load();
    let Some(name) = backend.get("name").and_then(|n| n.as_str()) else {
        return;
    };
    if let Some(up) = running.upstreams.iter().find(|u| &*u.backend.name == name) {
        backend["status"] = serde_json::to_value(up.status()).unwrap_or_default();
    }
}

async fn get_one(admin: &AdminState, kind: Kind, name: &str) -> Result<Json<serde_json::Value>> {
    let mut item = running_doc(admin)?
        .get(kind, name)
        .ok_or_else(|| AdminError::NotFound {
            kind: kind.key(),
            name: name.to_owned(),
        })?;
    if kind == Kind::Backends {
        with_status(admin, &mut item);
    }
    if kind == Kind::Subscriptions {
        with_paused(admin, std::slice::from_mut(&mut item)).await?;
    }
    if kind == Kind::Schedules {
        with_fires(admin, std::slice::from_mut(&mut item)).await?;
    }
    Ok(Json(item))
}

/// `If-Match: "7"` (or `7`); `*` or no header: any version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    if v == "*" {
        return Ok(None);
    }
    v.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| AdminError::BadIfMatch(v.to_owned()))
}

#[derive(Debug, Serialize, ToSchema)]
struct Changed {
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<serde_json::Value>,
}

async fn put_one(
    admin: &AdminState,
    client: SocketAddr,
    kind: Kind,
    name: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let collection = kind.key();
    let body: serde_json::Value = serde_json::from_slice(body).map_err(AdminError::NotJson)?;
    let if_match = if_match(headers)?;
    let change = Change {
        source: Source::Admin,
        if_match,
        client: Some(client),
    };
    let (version, (created, entity)) = admin
        .state
        .change(change, |running| {
            let mut doc = doc_of(running)?;
            let created = doc.put(kind, &name, body)?;
            let verb = if created { "created" } else { "replaced" };
            Ok::<_, AdminError>(Edit {
                text: doc.text(),
                summary: format!("{verb} {collection}/{name}"),
                value: (created, doc.get(kind, &name)),
            })
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Changed { version, entity })).into_response())
}

async fn delete_one(
    admin: &AdminState,
    client: SocketAddr,
    kind: Kind,
    name: String,
    headers: &HeaderMap,
) -> Result<StatusCode> {
    let collection = kind.key();
    let if_match = if_match(headers)?;
    let change = Change {
        source: Source::Admin,
        if_match,
        client: Some(client),
    };
    admin
        .state
        .change(change, |running| {
            // A policy or backend a route names cannot go before the route does.
            let users = users_of(running, kind, &name);
            if !users.is_empty() {
                return Err(AdminError::InUse {
                    kind: kind.key(),
                    name: name.clone(),
                    users,
                });
            }
            let mut doc = doc_of(running)?;
            doc.delete(kind, &name)?;
            Ok(Edit {
                text: doc.text(),
                summary: format!("deleted {collection}/{name}"),
                value: (),
            })
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What names the backend, policy or topic `name`: `routes: a, b` and
/// `subscriptions: c` or `topics: d` (a topic's own route is not listed).
fn users_of(running: &Snapshot, kind: Kind, name: &str) -> Vec<String> {
    let c = &running.config;
    let routes: Vec<&str> = c
        .routes
        .iter()
        .filter(|r| !matches!(r.action, crate::config::Action::Publish(_)))
        .filter(|r| match kind {
            Kind::Backends => r.backends().any(|b| &*b.name == name),
            Kind::Auth => r.auth.as_ref().is_some_and(|p| &*p.name == name),
            Kind::RateLimits => r.rate_limits.iter().any(|p| &*p.name == name),
            Kind::Routes | Kind::Topics | Kind::Subscriptions | Kind::Schedules => false,
        })
        .map(|r| &*r.name)
        .collect();
    let subscriptions: Vec<&str> = c
        .subscriptions
        .iter()
        .filter(|s| match kind {
            Kind::Backends => &*s.backend.name == name,
            Kind::Topics => &*s.topic == name,
            _ => false,
        })
        .map(|s| &*s.name)
        .collect();
    let schedules: Vec<&str> = c
        .schedules
        .iter()
        .filter(|s| match (&s.target, kind) {
            (crate::config::ScheduleTarget::Backend { backend, .. }, Kind::Backends) => {
                &*backend.name == name
            }
            (crate::config::ScheduleTarget::Topic(t), Kind::Topics) => &**t == name,
            _ => false,
        })
        .map(|s| &*s.name)
        .collect();
    let topics: Vec<&str> = c
        .topics
        .iter()
        .filter(|t| kind == Kind::Auth && t.auth.as_ref().is_some_and(|p| &*p.name == name))
        .map(|t| &*t.name)
        .collect();
    [
        ("routes", routes),
        ("subscriptions", subscriptions),
        ("schedules", schedules),
        ("topics", topics),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what}: {}", names.join(", ")))
    .collect()
}

/// One collection's four handlers, each with its own OpenAPI path and typed
/// body: generated clients get `Route`, `Backend`, ... instead of `Object`.
macro_rules! collection {
    ($module:ident, $kind:expr, $schema:ident, $list:literal, $one:literal, $tag:literal) => {
        mod $module {
            use super::*;

            pub(super) fn routes() -> Router<AdminState> {
                Router::new()
                    .route($list, get(list))
                    .route($one, get(get_one).put(put_one).delete(delete_one))
            }

            #[utoipa::path(get, path = $list, tag = $tag, security(("bearer" = [])),
                responses(
                    (status = 200, description = "Every entity, as its routes.toml table", body = [schema::$schema]),
                    (status = 401, body = Problem, content_type = "application/problem+json")))]
            pub(super) async fn list(
                AxumState(admin): AxumState<AdminState>,
            ) -> Result<Json<Vec<serde_json::Value>>> {
                super::list(&admin, $kind).await
            }

            #[utoipa::path(get, path = $one, tag = $tag, security(("bearer" = [])),
                params(("name" = String, Path)),
                responses(
                    (status = 200, description = "One entity", body = schema::$schema),
                    (status = 401, body = Problem, content_type = "application/problem+json"),
                    (status = 404, body = Problem, content_type = "application/problem+json")))]
            pub(super) async fn get_one(
                AxumState(admin): AxumState<AdminState>,
                Path(name): Path<String>,
            ) -> Result<Json<serde_json::Value>> {
                super::get_one(&admin, $kind, &name).await
            }

            #[utoipa::path(put, path = $one, tag = $tag, security(("bearer" = [])),
                params(("name" = String, Path),
                    ("If-Match" = Option<String>, Header, description = "The config version the change is based on")),
                request_body(content = schema::$schema, description = "The entity as its routes.toml table; `name` may be left out"),
                responses(
                    (status = 200, description = "Replaced", body = Changed),
                    (status = 201, description = "Created", body = Changed),
                    (status = 400, body = Problem, content_type = "application/problem+json"),
                    (status = 401, body = Problem, content_type = "application/problem+json"),
                    (status = 404, body = Problem, content_type = "application/problem+json"),
                    (status = 412, body = Problem, content_type = "application/problem+json"),
                    (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub(super) async fn put_one(
                AxumState(admin): AxumState<AdminState>,
                ConnectInfo(client): ConnectInfo<SocketAddr>,
                Path(name): Path<String>,
                headers: HeaderMap,
                body: Bytes,
            ) -> Result<Response> {
                super::put_one(&admin, client, $kind, name, &headers, &body).await
            }

            #[utoipa::path(delete, path = $one, tag = $tag, security(("bearer" = [])),
                params(("name" = String, Path),
                    ("If-Match" = Option<String>, Header, description = "The config version the change is based on")),
                responses(
                    (status = 204, description = "Deleted"),
                    (status = 401, body = Problem, content_type = "application/problem+json"),
                    (status = 404, body = Problem, content_type = "application/problem+json"),
                    (status = 409, description = "A route still uses it", body = Problem, content_type = "application/problem+json"),
                    (status = 412, body = Problem, content_type = "application/problem+json"),
                    (status = 422, body = Problem, content_type = "application/problem+json")))]
            pub(super) async fn delete_one(
                AxumState(admin): AxumState<AdminState>,
                ConnectInfo(client): ConnectInfo<SocketAddr>,
                Path(name): Path<String>,
                headers: HeaderMap,
            ) -> Result<StatusCode> {
                super::delete_one(&admin, client, $kind, name, &headers).await
            }
        }
    };
}

collection!(
    routes,
    Kind::Routes,
    Route,
    "/routes",
    "/routes/{name}",
    "routes"
);
collection!(
    backends,
    Kind::Backends,
    Backend,
    "/backends",
    "/backends/{name}",
    "backends"
);
collection!(auth, Kind::Auth, Auth, "/auth", "/auth/{name}", "auth");
collection!(
    topics,
    Kind::Topics,
    Topic,
    "/topics",
    "/topics/{name}",
    "topics"
);
collection!(
    subscriptions,
    Kind::Subscriptions,
    Subscription,
    "/subscriptions",
    "/subscriptions/{name}",
    "subscriptions"
);
collection!(
    schedules,
    Kind::Schedules,
    Schedule,
    "/schedules",
    "/schedules/{name}",
    "schedules"
);
collection!(
    rate_limits,
    Kind::RateLimits,
    RateLimit,
    "/rate_limits",
    "/rate_limits/{name}",
    "rate_limits"
);

#[derive(Debug, Serialize, ToSchema)]
struct Validated {
    valid: bool,
    routes: usize,
    backends: usize,
}

#[utoipa::path(post, path = "/validate", security(("bearer" = [])),
    request_body(description = "A whole routes.toml", content((String = "application/toml"), (String = "text/plain"))),
    responses(
        (status = 200, description = "Valid", body = Validated),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Every error", body = Problem, content_type = "application/problem+json")))]
async fn validate(AxumState(admin): AxumState<AdminState>, body: Bytes) -> Result<Json<Validated>> {
    let text = std::str::from_utf8(&body).map_err(|_| AdminError::NotUtf8)?;
    // Key files are found where the running config's would be.
    let base = admin
        .state
        .load()
        .config
        .path
        .as_ref()
        .and_then(|p| p.parent().map(std::path::Path::to_owned))
        .unwrap_or_default();
    let config = Config::parse_in(text, "request body", &base, &|name| {
        std::env::var(name).ok()
    })
    .map_err(|e| AdminError::Change(ChangeError::Invalid(e)))?;
    Ok(Json(Validated {
        valid: true,
        routes: config.own_routes().count(),
        backends: config.backends.len(),
    }))
}

#[utoipa::path(post, path = "/reload", security(("bearer" = [])), responses(
    (status = 200, description = "The file was read; the version now serving", body = Changed),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "The file is invalid; the old config keeps serving", body = Problem, content_type = "application/problem+json")))]
async fn reload(AxumState(admin): AxumState<AdminState>) -> Result<Json<Changed>> {
    let version = match admin
        .state
        .reload(Source::Reload)
        .await
        .map_err(|e| AdminError::Change(ChangeError::Invalid(e)))?
    {
        Reloaded::Applied(v) | Reloaded::Unchanged(v) => v,
    };
    Ok(Json(Changed {
        version,
        entity: None,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
struct VersionItem {
    version: u64,
    /// RFC 3339.
    time: String,
    /// start, file, signal, reload, admin or rollback.
    source: &'static str,
    summary: String,
    /// False when the change was kept in memory only (`admin.persist = "memory"`).
    persisted: bool,
}

#[utoipa::path(get, path = "/versions", security(("bearer" = [])), responses(
    (status = 200, description = "The last 20 config versions, newest first", body = [VersionItem]),
    (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn versions(AxumState(admin): AxumState<AdminState>) -> Json<Vec<VersionItem>> {
    Json(
        admin
            .state
            .versions()
            .into_iter()
            .map(|v| VersionItem {
                version: v.version,
                time: humantime::format_rfc3339_seconds(v.time).to_string(),
                source: v.source.as_str(),
                summary: v.summary,
                persisted: v.persisted,
            })
            .collect(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
struct ClusterItem {
    id: String,
    /// The cluster-wide config version serving on it (alone: its own config version).
    applied_version: u64,
    /// RFC 3339.
    last_heartbeat: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct ClusterDoc {
    instances: Vec<ClusterItem>,
}

#[utoipa::path(get, path = "/cluster", security(("bearer" = [])), responses(
    (status = 200, description = "The instances sharing this one's store, heard from in the last 30 s (alone: this one)", body = ClusterDoc),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "The shared store is unreachable", body = Problem, content_type = "application/problem+json")))]
async fn cluster(AxumState(admin): AxumState<AdminState>) -> Result<Json<ClusterDoc>> {
    let instances = match &admin.cluster {
        Some(c) => c
            .instances()
            .await
            .map_err(AdminError::JobStore)?
            .into_iter()
            .map(|i| ClusterItem {
                id: i.id,
                applied_version: i.applied_version,
                last_heartbeat: i.last_heartbeat,
            })
            .collect(),
        None => vec![ClusterItem {
            id: "local".into(),
            applied_version: admin.state.load().version,
            last_heartbeat: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string(),
        }],
    };
    Ok(Json(ClusterDoc { instances }))
}

#[utoipa::path(post, path = "/rollback/{version}", security(("bearer" = [])),
    params(("version" = u64, Path, description = "An earlier version among the last 20")),
    responses(
        (status = 200, description = "That version's content is current again, as a new version", body = Changed),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn rollback(
    AxumState(admin): AxumState<AdminState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Result<Json<Changed>> {
    let version: u64 = version
        .parse()
        .map_err(|_| AdminError::NotAVersion(version.clone()))?;
    let text = admin.state.version_text(version)?;
    let change = Change {
        source: Source::Rollback,
        if_match: None,
        client: Some(client),
    };
    let (new, ()) = admin
        .state
        .change(change, |_| {
            Ok::<_, AdminError>(Edit {
                text: text.to_string(),
                summary: format!("rolled back to version {version}"),
                value: (),
            })
        })
        .await?;
    Ok(Json(Changed {
        version: new,
        entity: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every key of `value` is a property of `schema` (refs followed, nested
    /// objects and arrays checked too); returns the dotted keys that are not.
    fn undescribed(spec: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = match schema["$ref"].as_str() {
            Some(r) => {
                &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]
            }
            None => schema,
        };
        // `Option<T>` is `oneOf: [null, T]`.
        if let Some(alts) = schema["oneOf"].as_array() {
            for alt in alts.iter().filter(|a| a["type"] != "null") {
                undescribed(spec, alt, value, at, out);
            }
            return;
        }
        match value {
            Value::Object(map) if schema["properties"].is_object() => {
                for (k, v) in map {
                    let key = format!("{at}.{k}");
                    match schema["properties"].get(k) {
                        Some(p) => undescribed(spec, p, v, &key, out),
                        None => out.push(key),
                    }
                }
            }
            Value::Array(items) if schema["items"].is_object() => {
                for v in items {
                    undescribed(spec, &schema["items"], v, at, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_collection_schemas_describe_every_key_of_the_shipped_config() {
        let spec = serde_json::to_value(ApiDoc::openapi()).expect("spec");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/routes.toml"))
            .expect("routes.toml");
        let doc = Doc::parse(&text).expect("parses");
        let mut missing = Vec::new();
        for (kind, schema) in [
            (Kind::Routes, "Route"),
            (Kind::Backends, "Backend"),
            (Kind::Auth, "Auth"),
            (Kind::RateLimits, "RateLimit"),
            (Kind::Topics, "Topic"),
            (Kind::Subscriptions, "Subscription"),
            (Kind::Schedules, "Schedule"),
        ] {
            let items = doc.list(kind);
            assert!(!items.is_empty(), "the shipped config has {}", kind.key());
            let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{schema}") });
            for item in &items {
                undescribed(&spec, &schema, item, kind.key(), &mut missing);
            }
        }
        assert!(missing.is_empty(), "keys without a schema: {missing:?}");
        // The check itself finds a key the schema lacks.
        let mut found = Vec::new();
        let route = serde_json::json!({"path": "/x", "cors": {"origins": [], "typo": 1}});
        let schema = serde_json::json!({ "$ref": "#/components/schemas/Route" });
        undescribed(&spec, &schema, &route, "r", &mut found);
        assert_eq!(found, ["r.cors.typo"]);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let spec = serde_json::to_value(ApiDoc::openapi()).expect("spec");
        let text = spec.to_string();
        let refs: Vec<&str> = text
            .split("\"$ref\":\"#/components/schemas/")
            .skip(1)
            .filter_map(|r| r.split('"').next())
            .collect();
        assert!(refs.contains(&"Route"), "{refs:?}");
        for name in refs {
            assert!(
                spec["components"]["schemas"][name].is_object(),
                "dangling {name}"
            );
        }
    }
}
