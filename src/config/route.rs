//! `[[routes]]`: match, action (forward or aggregate), header rules,
//! policies, CORS.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};

use super::decode::{Ctx, Obj};
use super::headers::{header_edits, header_list};
use super::load::{check_name, not_yet};
use super::*;

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
    /// Synchronous, a durable job, or either at the client's choice (SPEC §7).
    pub invoke: Invoke,
    pub delivery: Delivery,
}

/// A route forwards to one backend or fans out to several calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Aggregate(Arc<Aggregate>),
    /// A topic's own route: the request is published (SPEC §8).
    Publish(Arc<Topic>),
    /// The body is stored as a file and announced on a topic (SPEC §8).
    Upload(Arc<Upload>),
}

/// `upload = { topic, dir, max_upload, url_ttl }` on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub topic: Arc<str>,
    /// Where files go (relative to the config file's directory).
    pub dir: std::path::PathBuf,
    pub max_upload: u64,
    /// How long a delivery's signed URL stays valid.
    pub url_ttl: Duration,
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
            Action::Publish(_) | Action::Upload(_) => (None, None),
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
    pub fn render<'a>(&self, path: &'a str, params: &[&str]) -> Cow<'a, str> {
        match self {
            Self::Same => Cow::Borrowed(path),
            Self::Rewrite(t) => {
                let mut out = String::with_capacity(t.raw.len() + path.len());
                t.render(params, &mut out);
                Cow::Owned(out)
            }
            Self::StripPrefix(prefix) => {
                let rest = path.get(prefix.len()..).unwrap_or_default();
                if rest.starts_with('/') {
                    Cow::Borrowed(rest)
                } else {
                    Cow::Owned(format!("/{rest}"))
                }
            }
        }
    }
}

pub(super) fn route(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    server: &Server,
    backends: &[Arc<Backend>],
    (auth, declared): (&[Arc<AuthPolicy>], &[String]),
    rate_limits: &[Arc<RateLimit>],
    (topics, base): (&[Arc<Topic>], &std::path::Path),
) -> Option<Route> {
    let name = obj.string(ctx, "name");
    match &name {
        Some(n) => {
            if check_name(ctx, n, &obj.key_path("name")) {
                obj.rename(format!("routes[{}]", n.value));
            }
        }
        None => ctx.error(
            obj.span(),
            obj.key_path("name"),
            "missing: every route needs a name",
        ),
    }
    let path = match obj.string(ctx, "path") {
        Some(p) => match PathPattern::parse(&p.value) {
            Ok(pattern) => Some(pattern),
            Err(why) => {
                ctx.error(p.span, obj.key_path("path"), why);
                None
            }
        },
        None => {
            ctx.error(
                obj.span(),
                obj.key_path("path"),
                "missing: every route needs a path",
            );
            None
        }
    };
    let methods = obj.strings(ctx, "methods").map(|list| {
        let mut methods: Vec<Method> = Vec::new();
        for m in list {
            let upper = m.value.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !methods.contains(&method) => methods.push(method),
                Ok(_) => ctx.error(
                    m.span,
                    obj.key_path("methods"),
                    format!("`{upper}` is listed twice"),
                ),
                Err(_) => ctx.error(
                    m.span,
                    obj.key_path("methods"),
                    format!("`{}` is not an HTTP method", m.value),
                ),
            }
        }
        if methods.is_empty() {
            ctx.error(
                obj.key_span("methods"),
                obj.key_path("methods"),
                "empty: leave `methods` out to allow every method",
            );
        }
        methods
    });
    let host = obj
        .string(ctx, "host")
        .and_then(|h| match HostPattern::parse(&h.value) {
            Ok(p) => Some(p),
            Err(why) => {
                ctx.error(h.span, obj.key_path("host"), why);
                None
            }
        });
    let backend = match obj.string(ctx, "backend") {
        Some(b) => match backends.iter().find(|x| *x.name == b.value) {
            Some(found) => Some(found.clone()),
            None => {
                let known: Vec<&str> = backends.iter().map(|x| &*x.name).collect();
                ctx.error(
                    b.span,
                    obj.key_path("backend"),
                    format!(
                        "unknown backend `{}` (defined: {})",
                        b.value,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                None
            }
        },
        None => {
            if !obj.has("aggregate") && !obj.has("upload") {
                ctx.error(
                    obj.span(),
                    obj.key_path("backend"),
                    "missing: a route needs a backend (or an aggregate, or an upload)",
                );
            }
            None
        }
    };
    if obj.has("upload") && obj.has("backend") {
        ctx.error(
            obj.key_span("backend"),
            obj.key_path("backend"),
            "an upload route stores the body itself; its function hears of it through the topic",
        );
    }
    if obj.has("aggregate") {
        for key in ["backend", "rewrite", "strip_prefix", "preserve_host"] {
            if obj.has(key) {
                ctx.error(
                    obj.key_span(key),
                    obj.key_path(key),
                    format!("`{key}` does not apply to an aggregate route: each call names its backend and path"),
                );
            }
        }
    }
    let rewrite = obj.string(ctx, "rewrite");
    let strip = obj.string(ctx, "strip_prefix");
    let mut target = Target::Same;
    match (rewrite, strip) {
        (Some(_), Some(s)) => ctx.error(
            s.span,
            obj.key_path("strip_prefix"),
            "give either `rewrite` or `strip_prefix`, not both",
        ),
        (Some(r), None) => {
            if let Some(p) = &path {
                match Template::parse(&r.value, &p.params) {
                    Ok(t) => target = Target::Rewrite(t),
                    Err(why) => ctx.error(r.span, obj.key_path("rewrite"), why),
                }
            }
        }
        (None, Some(s)) => {
            let prefix = s.value.trim_end_matches('/');
            if !s.value.starts_with('/') || prefix.is_empty() {
                ctx.error(
                    s.span,
                    obj.key_path("strip_prefix"),
                    "must start with `/` and be more than `/`",
                );
            } else if let Some(p) = &path {
                let literal = p.literal_prefix();
                // `get`: a prefix longer than the path is no prefix (and no panic).
                let on_boundary = literal
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if !on_boundary {
                    ctx.error(
                        s.span,
                        obj.key_path("strip_prefix"),
                        format!(
                            "`{}` is not a prefix of the route's path `{}`",
                            s.value, p.raw
                        ),
                    );
                } else {
                    target = Target::StripPrefix(prefix.to_owned());
                }
            }
        }
        (None, None) => {}
    }
    let preserve_host = obj.bool(ctx, "preserve_host").unwrap_or(false);
    let request_headers = header_edits(ctx, &mut obj, "request_headers");
    let response_headers = header_edits(ctx, &mut obj, "response_headers");
    let timeout = obj.positive_duration(ctx, "timeout");
    // 0 lifts the limit for this route (long gRPC or WebSocket-over-HTTP/2 streams).
    let max_body = match obj.size(ctx, "max_body") {
        Some(0) => u64::MAX,
        Some(n) => n,
        None => server.max_body,
    };
    let cors = obj
        .table(ctx, "cors")
        .and_then(|c| cors(ctx, c, methods.as_deref()));
    let limits_path = obj.key_path("rate_limit");
    let mut limits = Vec::new();
    for name in obj.strings(ctx, "rate_limit").unwrap_or_default() {
        match rate_limits.iter().find(|r| *r.name == name.value) {
            Some(r) if limits.iter().any(|l: &Arc<RateLimit>| Arc::ptr_eq(l, r)) => ctx.error(
                name.span,
                &limits_path,
                format!("`{}` is listed twice", name.value),
            ),
            Some(r) => limits.push(r.clone()),
            None => ctx.error(
                name.span,
                &limits_path,
                format!("unknown rate limit `{}`", name.value),
            ),
        }
    }
    let policy = obj.string(ctx, "auth").and_then(|a| {
        let found = auth.iter().find(|p| *p.name == a.value).cloned();
        if found.is_none() && !declared.contains(&a.value) {
            ctx.error(
                a.span,
                obj.key_path("auth"),
                format!("unknown auth policy `{}`", a.value),
            );
        }
        found
    });
    let scopes = auth::scope_list(ctx, &mut obj, "scopes");
    if !scopes.is_empty() {
        let why = match policy.as_ref().map(|p| &p.kind) {
            Some(AuthKind::Jwt(_)) => None,
            Some(AuthKind::ApiKey(_)) => Some("API keys carry no scopes"),
            None if obj.has("auth") => None,
            None => Some("scopes need a JWT `auth` policy"),
        };
        if let Some(why) = why {
            ctx.error(obj.key_span("scopes"), obj.key_path("scopes"), why);
        }
    }
    let aggregate = match (obj.table(ctx, "aggregate"), &path) {
        (Some(a), Some(p)) => aggregate::aggregate(
            ctx,
            a,
            &p.params,
            backends,
            timeout.unwrap_or(server.request_timeout),
            server.max_body,
        ),
        _ => None,
    };
    let invoke = super::jobs::invoke(ctx, &mut obj);
    let delivery = obj
        .table(ctx, "delivery")
        .map(|d| super::jobs::delivery(ctx, d))
        .unwrap_or_default();
    if invoke != Invoke::Sync && obj.has("aggregate") {
        ctx.error(
            obj.key_span("invoke"),
            obj.key_path("invoke"),
            "an aggregate route answers inline; jobs go to one backend (`backend`)",
        );
    }
    if invoke == Invoke::Sync && obj.has("delivery") {
        ctx.error(
            obj.key_span("delivery"),
            obj.key_path("delivery"),
            "`delivery` needs `invoke = \"async\"` or `\"either\"`",
        );
    }
    if let Some(p) = &path {
        let literal = p.literal_prefix();
        // fngate's own prefixes; events_path only once a topic exists (files_path
        // is checked in load.rs once it is known whether a route uploads).
        let mut own = vec![("jobs_path", &server.jobs_path, "clients read their jobs")];
        if !topics.is_empty() {
            own.push(("events_path", &server.events_path, "events are published"));
        }
        for (key, prefix, what) in own {
            let under = literal.starts_with(prefix.as_str())
                && matches!(literal.as_bytes().get(prefix.len()), None | Some(b'/'));
            // A wider pattern (`/{*rest}`) may stay: fngate's own paths are matched first.
            if under {
                ctx.error(
                    obj.key_span("path"),
                    obj.key_path("path"),
                    format!(
                        "`{}` would take requests under server.{key} `{prefix}`, where {what}",
                        p.raw
                    ),
                );
            }
        }
    }
    let upload = obj
        .table(ctx, "upload")
        .and_then(|u| upload(ctx, u, topics, base));
    not_yet(ctx, &mut obj, &["mode"]);
    obj.finish(ctx);
    // A route forwards to its backend or fans out; validation keeps the two apart.
    let action = match (aggregate, backend) {
        _ if upload.is_some() => Action::Upload(Arc::new(upload?)),
        (Some(a), _) => Action::Aggregate(Arc::new(a)),
        (None, Some(backend)) => Action::Forward(Forward {
            backend,
            target,
            preserve_host,
        }),
        (None, None) => return None,
    };
    Some(Route {
        name: name?.value.into(),
        path: path?,
        methods,
        host,
        action,
        request_headers,
        response_headers,
        timeout,
        max_body,
        cors,
        auth: policy,
        scopes,
        rate_limits: limits,
        invoke,
        delivery,
    })
}

fn upload(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    topics: &[Arc<Topic>],
    base: &std::path::Path,
) -> Option<Upload> {
    let topic = super::load::reference(
        ctx,
        &mut obj,
        "topic",
        "topic",
        topics,
        |t| &t.name,
        Some("an upload announces each file on a topic"),
    )
    .map(|t| t.name.clone());
    let dir = match obj.string(ctx, "dir") {
        Some(d) if !d.value.trim().is_empty() => base.join(&d.value),
        Some(d) => {
            ctx.error(d.span, obj.key_path("dir"), "must not be empty");
            return None;
        }
        None => base.join("data").join("uploads"),
    };
    let max_upload = obj.size(ctx, "max_upload").unwrap_or(100 << 20);
    let url_ttl = obj
        .positive_duration(ctx, "url_ttl")
        .unwrap_or(Duration::from_secs(3600));
    obj.finish(ctx);
    Some(Upload {
        topic: topic?,
        dir,
        max_upload,
        url_ttl,
    })
}

fn cors(ctx: &mut Ctx<'_>, mut obj: Obj<'_>, route_methods: Option<&[Method]>) -> Option<Cors> {
    let origins_key = obj.key_path("origins");
    let origins = match obj.strings(ctx, "origins") {
        None => {
            ctx.error(
                obj.span(),
                &origins_key,
                "missing: list the allowed origins, or [\"*\"] for any",
            );
            None
        }
        Some(list) if list.iter().any(|o| o.value == "*") => {
            if list.len() > 1 {
                ctx.error(
                    obj.key_span("origins"),
                    &origins_key,
                    "`*` allows every origin; list nothing else with it",
                );
            }
            Some(None)
        }
        Some(list) => Some(Some(
            list.iter()
                .filter_map(|o| match origin(&o.value) {
                    Ok(v) => Some(v),
                    Err(why) => {
                        ctx.error(o.span.clone(), &origins_key, why);
                        None
                    }
                })
                .collect(),
        )),
    };
    let methods_key = obj.key_path("methods");
    let methods = match obj.strings(ctx, "methods") {
        Some(list) => list
            .iter()
            .filter_map(
                |m| match Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        ctx.error(
                            m.span.clone(),
                            &methods_key,
                            format!("`{}` is not an HTTP method", m.value),
                        );
                        None
                    }
                },
            )
            .collect(),
        None => route_methods.map_or_else(
            || {
                vec![
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ]
            },
            <[Method]>::to_vec,
        ),
    };
    let (headers_wild, headers) = header_list(ctx, &mut obj, "headers");
    let (expose_wild, expose_headers) = header_list(ctx, &mut obj, "expose_headers");
    let credentials = obj.bool(ctx, "credentials").unwrap_or(false);
    let max_age = obj.duration(ctx, "max_age");
    let any_origin = matches!(origins, Some(None));
    if credentials {
        // Browsers refuse these combinations, and tower-http would panic on them.
        for (wild, key) in [
            (any_origin, "origins"),
            (headers_wild, "headers"),
            (expose_wild, "expose_headers"),
        ] {
            if wild {
                ctx.error(
                    obj.key_span(key),
                    obj.key_path(key),
                    "`*` cannot be combined with `credentials = true`: list the values",
                );
            }
        }
    }
    obj.finish(ctx);
    Some(Cors {
        origins: origins?,
        methods,
        headers: (!headers_wild).then_some(headers),
        expose_headers,
        credentials,
        max_age,
    })
}

/// `https://app.example` or `http://localhost:3000`: scheme, host, optional port, nothing else.
/// Why a CORS origin is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum OriginError {
    #[error("`{0}` is not an origin such as \"https://app.example\"")]
    Unparsable(String),
    #[error("`{0}` is not an origin: scheme://host[:port], no path or trailing slash")]
    WithPath(String),
    #[error("`{0}` is not a valid header value")]
    BadHeader(String),
}

fn origin(raw: &str) -> Result<HeaderValue, OriginError> {
    let uri: Uri = raw
        .parse()
        .map_err(|_| OriginError::Unparsable(raw.to_owned()))?;
    let plain = uri.scheme().is_some()
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
        && !raw.ends_with('/');
    if !plain {
        return Err(OriginError::WithPath(raw.to_owned()));
    }
    HeaderValue::from_str(raw).map_err(|_| OriginError::BadHeader(raw.to_owned()))
}

/// Routes grouped as the router holds them: per host pattern (in order of
/// first appearance), one matchit entry per path shape holding its routes in
/// config order. Validation reports the shapes that do not fit beside the
/// others; the router builds its tables from the groups. One grouping, so the
/// two cannot disagree.
#[derive(Debug)]
pub struct Shapes<'a> {
    pub hosts: Vec<HostShapes<'a>>,
    /// Routes whose shape conflicts with another's in its host's router.
    pub conflicts: Vec<(usize, matchit::InsertError)>,
}

#[derive(Debug)]
pub struct HostShapes<'a> {
    pub host: Option<&'a HostPattern>,
    pub paths: matchit::Router<usize>,
    /// Indexed by the value in `paths`: the routes of one shape.
    pub entries: Vec<Vec<usize>>,
}

impl<'a> Shapes<'a> {
    pub fn of(routes: &'a [Arc<Route>]) -> Self {
        let mut hosts: Vec<HostShapes<'a>> = Vec::new();
        let mut conflicts = Vec::new();
        let mut by_shape: std::collections::HashMap<(Option<&HostPattern>, &str), (usize, usize)> =
            std::collections::HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            // A topic's route is found by its prefix, before the router.
            if matches!(r.action, Action::Publish(_)) {
                continue;
            }
            let key = (r.host.as_ref(), r.path.shape.as_str());
            if let Some(&(h, e)) = by_shape.get(&key) {
                hosts[h].entries[e].push(i);
                continue;
            }
            let h = match hosts.iter().position(|t| t.host == key.0) {
                Some(h) => h,
                None => {
                    hosts.push(HostShapes {
                        host: key.0,
                        paths: matchit::Router::new(),
                        entries: Vec::new(),
                    });
                    hosts.len() - 1
                }
            };
            let table = &mut hosts[h];
            let e = table.entries.len();
            match table.paths.insert(key.1, e) {
                Ok(()) => {
                    table.entries.push(vec![i]);
                    by_shape.insert(key, (h, e));
                }
                Err(err) => conflicts.push((i, err)),
            }
        }
        Self { hosts, conflicts }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errors(routes: &str) -> Vec<String> {
        let text = format!("[backends.b]\nurls = [\"http://10.0.0.1\"]\n{routes}");
        match Config::parse(&text, "t.toml", &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn route(name: &str, path: &str, methods: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nmethods = {methods}\nbackend = \"b\"\n")
    }

    #[test]
    fn a_shape_may_split_by_method_but_no_two_routes_share_one() {
        let split = route("r", "/o/{id}", "[\"GET\"]") + &route("w", "/o/{x}", "[\"POST\"]");
        assert!(errors(&split).is_empty(), "{:?}", errors(&split));
        // The third clashes with the first, though the second stands between.
        let clash = split + &route("again", "/o/{y}", "[\"GET\"]");
        let e = errors(&clash);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("routes[again]") && e[0].contains("as route `r`"),
            "{e:?}"
        );
    }

    #[test]
    fn shapes_that_cannot_share_a_router_are_refused_at_their_path() {
        let e =
            errors(&(route("a", "/f/{id}", "[\"GET\"]") + &route("b", "/f/{*rest}", "[\"GET\"]")));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("routes[b].path"), "{e:?}");
    }
}
