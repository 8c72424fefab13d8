//! The OpenAPI schemas of the admin collections: each entity as its routes.toml
//! table, key for key, so generated clients get typed bodies. These types
//! exist for the description only; bodies are read as JSON and spliced into
//! the document by `doc.rs`, then validated as a whole config. A test keeps
//! them in step with what the config loader accepts. Durations are strings
//! (`"250ms"`, `"5s"`, `"1m"`).

#![allow(dead_code)] // fields are read by utoipa's derive, never by code

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// A size: `"10MiB"` or a number of bytes.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Size {
    Text(String),
    Bytes(u64),
}

/// One string, or a list of them.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[routes]]`: a request path to a backend or an aggregate.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    /// `[a-z0-9_-]+`; may be left out of a PUT (the URL names it).
    name: Option<String>,
    /// `{name}` one segment, `{*rest}` the rest.
    path: String,
    /// Default: every method.
    methods: Option<Vec<String>>,
    /// Exact, or `*.example.com`.
    host: Option<String>,
    /// The backend to forward to (not with `aggregate`).
    backend: Option<String>,
    rewrite: Option<String>,
    strip_prefix: Option<String>,
    preserve_host: Option<bool>,
    request_headers: Option<HeaderEdits>,
    response_headers: Option<HeaderEdits>,
    /// A named auth policy.
    auth: Option<String>,
    /// Required on top of the policy's own.
    scopes: Option<Vec<String>>,
    /// Named rate-limit policies, all must pass.
    rate_limit: Option<Vec<String>>,
    timeout: Option<String>,
    /// Overrides `server.max_body`; 0 = unlimited.
    max_body: Option<Size>,
    cors: Option<Cors>,
    aggregate: Option<Aggregate>,
    /// Store the body as a file and announce it on a topic (no `backend`).
    upload: Option<UploadSchema>,
    /// `sync` (default), `async` (a durable job: 202 and a job URL) or
    /// `either` (async when the client sends `Prefer: respond-async`).
    invoke: Option<String>,
    delivery: Option<Delivery>,
}

/// How an async route's jobs are delivered and kept (defaults in SPEC §7).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Delivery {
    /// Total attempts, the first included (at least 1).
    attempts: Option<u32>,
    /// `["1s", "5m"]`: exponential backoff with full jitter between these.
    backoff: Option<Vec<String>>,
    max_age: Option<String>,
    /// Per attempt, until the answer has been read.
    timeout: Option<String>,
    concurrency: Option<u32>,
    result_ttl: Option<String>,
    max_result: Option<Size>,
    max_wait: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderEdits {
    set: Option<BTreeMap<String, String>>,
    remove: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Cors {
    /// `["*"]` for any origin.
    origins: Vec<String>,
    methods: Option<Vec<String>>,
    headers: Option<Vec<String>>,
    expose_headers: Option<Vec<String>>,
    credentials: Option<bool>,
    max_age: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Aggregate {
    /// The deadline of the whole fan-out.
    timeout: Option<String>,
    /// `object` or `flat`.
    merge: Option<String>,
    max_call_body: Option<Size>,
    calls: Vec<Call>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Call {
    name: String,
    backend: String,
    /// May use route params, `{query.NAME}` and fields of earlier calls.
    path: String,
    method: Option<String>,
    optional: Option<bool>,
    /// JSON used in the call's place when it fails.
    fallback: Option<serde_json::Value>,
    select: Option<Vec<String>>,
    timeout: Option<String>,
}

/// `[backends.NAME]`: a pool of endpoints of one function.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Backend {
    name: Option<String>,
    urls: Vec<String>,
    /// Added to every upstream request; literal values are shown as `<hidden>`.
    headers: Option<BTreeMap<String, String>>,
    /// `round_robin`, `least_requests` or `random`.
    balance: Option<String>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    retry_budget_percent: Option<u32>,
    retry_min_per_second: Option<u32>,
    /// `http1` or `h2`.
    protocol: Option<String>,
    max_in_flight: Option<u32>,
    eject_after: Option<u32>,
    eject_for: Option<String>,
    max_ejection_percent: Option<u32>,
    /// A CA file for `https://` endpoints.
    ca: Option<String>,
    health: Option<Health>,
    /// Each endpoint's live state; read-only, ignored on PUT.
    #[schema(read_only)]
    status: Option<Vec<EndpointStatus>>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Health {
    path: String,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct EndpointStatus {
    endpoint: String,
    healthy: bool,
    ejected_until: Option<String>,
    failing_checks: bool,
    consecutive_failures: u32,
    in_flight: u32,
}

/// `[auth.NAME]`: a JWT or an API-key policy (`type` says which; each takes its own keys).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Auth {
    name: Option<String>,
    /// `jwt` or `api_key`.
    #[serde(rename = "type")]
    kind: String,
    /// jwt: required; `none` is refused.
    algorithms: Option<Vec<String>>,
    jwks_url: Option<String>,
    jwks_file: Option<String>,
    discovery_url: Option<String>,
    jwks_ca: Option<String>,
    jwks_refresh: Option<String>,
    public_key_file: Option<String>,
    /// The environment variable holding an HS* secret.
    secret_env: Option<String>,
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway: Option<String>,
    scopes: Option<Vec<String>>,
    /// Claim -> request header to the backend.
    forward_claims: Option<BTreeMap<String, String>>,
    require_exp: Option<bool>,
    cache_size: Option<u64>,
    cache_ttl: Option<String>,
    /// api_key: the header carrying the key.
    header: Option<String>,
    keys: Option<Vec<ApiKey>>,
    hide_credentials: Option<bool>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKey {
    id: String,
    /// Hex SHA-256 of the key; shown as `<hidden>`.
    sha256: String,
}

/// `[rate_limits.NAME]`: a GCRA bucket per key.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimit {
    name: Option<String>,
    requests: u32,
    /// A duration: `"1m"`.
    per: String,
    burst: Option<u32>,
    /// `ip`, `global`, `consumer`, `header:NAME` or `claim:NAME`.
    key: Option<String>,
    max_keys: Option<u64>,
}

/// `[topics.NAME]`: published to at `POST {server.events_path}/NAME`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Topic {
    /// The key under `[topics]`; read-only.
    name: Option<String>,
    /// A named auth policy: who may publish.
    auth: Option<String>,
    /// The largest event or batch (default 1MiB, at least 64KiB); larger is 413.
    max_event: Option<Size>,
    /// The same (`source`, `id`) again within it is accepted, not delivered (default 24h).
    dedupe_window: Option<String>,
}

/// `[[subscriptions]]`: a topic's events, delivered to a backend.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Subscription {
    /// `[a-z0-9_-]+`; may be left out of a PUT (the URL names it).
    name: Option<String>,
    topic: String,
    backend: String,
    /// Deliveries are POSTed here (default `/`).
    path: Option<String>,
    filter: Option<Filter>,
    /// `binary` (default: `ce-*` headers) or `structured` (application/cloudevents+json).
    format: Option<String>,
    /// `none` (default) or `partitionkey`: one at a time per `partitionkey`, in order.
    ordering: Option<String>,
    delivery: Option<Delivery>,
    /// Read-only: paused by a 410 until `POST /subscriptions/{name}/resume`.
    paused: Option<bool>,
}

/// Every condition given must hold.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    #[serde(rename = "type")]
    ty: Option<String>,
    source: Option<String>,
    subject: Option<String>,
    type_prefix: Option<String>,
    source_prefix: Option<String>,
    subject_prefix: Option<String>,
}

/// `[[schedules]]`: a job to a backend (or an event to a topic) on the clock.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Schedule {
    /// `[a-z0-9_-]+`; may be left out of a PUT (the URL names it).
    name: Option<String>,
    /// 6 fields (seconds first) or 5; `@hourly`, `@daily`, ...; `@every 30s`.
    cron: String,
    /// IANA name; default UTC.
    timezone: Option<String>,
    /// Call this backend (or give `topic`).
    backend: Option<String>,
    /// Publish a `fngate.schedule.tick` event here instead.
    topic: Option<String>,
    /// Default POST.
    method: Option<String>,
    /// Default `/`.
    path: Option<String>,
    /// JSON, sent as application/json.
    body: Option<String>,
    /// Each fire is delayed by a fixed offset within this (default 0s).
    window: Option<String>,
    /// `latest` (default), `none` or `all` (at most 100).
    catch_up: Option<String>,
    /// Missed ticks older than this are not run (default 10m).
    starting_deadline: Option<String>,
    /// `forbid` (default), `allow` or `replace`.
    concurrency: Option<String>,
    enabled: Option<bool>,
    delivery: Option<Delivery>,
    /// Read-only.
    next_fire: Option<String>,
    /// Read-only.
    last_fire: Option<String>,
    /// Read-only: ok, skipped, caught_up or manual.
    last_outcome: Option<String>,
    /// Read-only: the id of the last run.
    last_job: Option<String>,
}

/// `upload = { topic, dir, max_upload, url_ttl }`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Upload)]
pub(super) struct UploadSchema {
    /// The topic `fngate.file.created` events go to.
    topic: String,
    /// Default `data/uploads` beside routes.toml.
    dir: Option<String>,
    /// Default 100MiB; larger is 413 and leaves no file.
    max_upload: Option<Size>,
    /// How long a delivery's signed URL is valid (default 1h).
    url_ttl: Option<String>,
}
