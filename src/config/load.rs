//! Decodes each section of routes.toml into validated types, then checks what
//! spans sections: references, duplicate routes, router conflicts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;
use toml_edit::ImDocument;

use super::aggregate;
use super::auth::{self, AuthKind, AuthPolicy};
use super::decode::{Ctx, EnvLookup, Obj, Spanned};
use super::error::{ConfigErrors, Diagnostics};
use super::path::{HostPattern, PathPattern, Template};
use super::tls;
use super::{
    Action, Admin, Backend, Balance, Config, Cors, Endpoint, Forward, HeaderEdits, HealthCheck,
    LimitKey, Persist, Protocol, RateLimit, Route, Server, Target,
};

/// Sections and keys of SPEC §2 that later releases implement. They are refused
/// rather than ignored: a route that names an auth policy must never be served
/// without it.
const NOT_YET: &str = "is not supported by this version of fngate yet";

pub(super) fn parse(
    text: &str,
    file: Arc<str>,
    base: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx::new(Diagnostics::new(file, text), env);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.message().trim().to_owned();
            ctx.error(e.span(), "", format!("invalid TOML: {message}"));
            return Err(ConfigErrors(ctx.into_errors()));
        }
    };
    let Some(mut root) = Obj::from_item(&mut ctx, doc.as_item(), String::new()) else {
        return Err(ConfigErrors(ctx.into_errors()));
    };

    let server = match root.table(&mut ctx, "server") {
        Some(obj) => server(&mut ctx, obj, base),
        None => server_defaults(),
    };
    let admin_table = root.table(&mut ctx, "admin");
    let admin = admin(&mut ctx, admin_table);
    let mut backends = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "backends") {
        if let Some(b) = backend(&mut ctx, name, obj, base) {
            backends.push(Arc::new(b));
        }
    }
    let mut rate_limits = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "rate_limits") {
        if let Some(r) = rate_limit(&mut ctx, name, obj) {
            rate_limits.push(Arc::new(r));
        }
    }
    let mut auth = Vec::new();
    // Every declared name, valid or not: a route naming a broken policy gets
    // that policy's errors, not a second "unknown" one.
    let mut declared = Vec::new();
    for (name, obj) in root.named_tables(&mut ctx, "auth") {
        declared.push(name.value.clone());
        let named = check_name(&mut ctx, &name, obj.path());
        if let Some(p) = auth::policy(&mut ctx, &name, obj, base) {
            if named {
                auth.push(Arc::new(p));
            }
        }
    }
    if root.has("schedules") {
        ctx.error(
            root.key_span("schedules"),
            "schedules",
            format!("`[[schedules]]` {NOT_YET}"),
        );
    }
    root.mark("schedules");
    let tables = root.table_array(&mut ctx, "routes");
    let mut routes = Vec::new();
    let mut spans = Vec::new();
    for obj in tables {
        let span = obj.span();
        if let Some(r) = route(
            &mut ctx,
            obj,
            &server,
            &backends,
            (&auth, &declared),
            &rate_limits,
        ) {
            routes.push(Arc::new(r));
            spans.push(span);
        }
    }
    root.finish(&mut ctx);
    check_routes(&mut ctx, &routes, &spans);

    let errors = ctx.into_errors();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        path: None,
        text: text.into(),
        server,
        admin,
        backends,
        auth,
        rate_limits,
        routes,
    })
}

fn rate_limit(ctx: &mut Ctx<'_>, name: Spanned<String>, mut obj: Obj<'_>) -> Option<RateLimit> {
    let named = check_name(ctx, &name, obj.path());
    let requests = match obj.uint(ctx, "requests", u64::from(u32::MAX)) {
        Some(n) => match NonZeroU32::new(n as u32) {
            Some(n) => Some(n),
            None => {
                ctx.error(
                    obj.key_span("requests"),
                    obj.key_path("requests"),
                    "must be at least 1",
                );
                None
            }
        },
        None => {
            if !obj.has("requests") {
                ctx.error(
                    obj.span(),
                    obj.key_path("requests"),
                    "missing: how many requests per `per`",
                );
            }
            None
        }
    };
    let per = match obj.duration(ctx, "per") {
        Some(d) if d.is_zero() => {
            ctx.error(
                obj.key_span("per"),
                obj.key_path("per"),
                "must be longer than zero",
            );
            None
        }
        Some(d) => Some(d),
        None => {
            if !obj.has("per") {
                ctx.error(
                    obj.span(),
                    obj.key_path("per"),
                    "missing: the window, e.g. \"1m\"",
                );
            }
            None
        }
    };
    let burst = obj.uint(ctx, "burst", u64::from(u32::MAX)).and_then(|n| {
        let burst = NonZeroU32::new(n as u32);
        if burst.is_none() {
            ctx.error(
                obj.key_span("burst"),
                obj.key_path("burst"),
                "must be at least 1",
            );
        }
        burst
    });
    let key_path = obj.key_path("key");
    let key = match obj.string(ctx, "key") {
        None => Some(LimitKey::Ip),
        Some(k) => match k.value.as_str() {
            "ip" => Some(LimitKey::Ip),
            "global" => Some(LimitKey::Global),
            "consumer" => Some(LimitKey::Consumer),
            other if other.starts_with("claim:") && other.len() > "claim:".len() => {
                Some(LimitKey::Claim(other["claim:".len()..].into()))
            }
            other => match other
                .strip_prefix("header:")
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
            {
                Some(Ok(h)) => Some(LimitKey::Header(h)),
                _ => {
                    ctx.error(
                        k.span,
                        &key_path,
                        format!("`{other}`: expected \"ip\", \"global\", \"consumer\", \"header:NAME\" or \"claim:NAME\""),
                    );
                    None
                }
            },
        },
    };
    let max_keys = obj
        .uint(ctx, "max_keys", 100_000_000)
        .unwrap_or(100_000)
        .max(1) as usize;
    if let (Some(r), Some(p)) = (requests, per) {
        if p / r.get() < Duration::from_nanos(1) {
            ctx.error(
                obj.key_span("per"),
                obj.key_path("per"),
                "more than one request per nanosecond cannot be limited",
            );
        }
    }
    obj.finish(ctx);
    if !named {
        return None;
    }
    let requests = requests?;
    Some(RateLimit {
        name: name.value.into(),
        requests,
        per: per?,
        burst: burst.unwrap_or(requests),
        key: key?,
        max_keys,
    })
}

fn server_defaults() -> Server {
    Server {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        workers: 0,
        max_body: 10 << 20,
        max_header_size: 64 << 10,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(30),
        drain_delay: Duration::ZERO,
        websocket_idle_timeout: Duration::from_secs(600),
        websocket_max_lifetime: Duration::from_secs(24 * 3600),
        tls: None,
        watch: true,
        trusted_proxies: Vec::new(),
    }
}

fn server(ctx: &mut Ctx<'_>, mut obj: Obj<'_>, base: &Path) -> Server {
    let mut s = server_defaults();
    if let Some(addr) = address(ctx, &mut obj, "listen") {
        s.listen = addr;
    }
    if let Some(n) = obj.uint(ctx, "workers", 1024) {
        s.workers = n as usize;
    }
    if let Some(n) = obj.size(ctx, "max_body") {
        s.max_body = n;
    }
    if let Some(n) = obj.size(ctx, "max_header_size") {
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if !(1024..=16 << 20).contains(&n) {
            ctx.error(
                obj.key_span("max_header_size"),
                obj.key_path("max_header_size"),
                "must be from 1KiB to 16MiB",
            );
        } else {
            s.max_header_size = n as usize;
        }
    }
    let positive =
        |ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, key: &'static str, slot: &mut Duration| {
            if let Some(d) = obj.duration(ctx, key) {
                if d.is_zero() {
                    ctx.error(
                        obj.key_span(key),
                        obj.key_path(key),
                        "must be longer than zero",
                    );
                } else {
                    *slot = d;
                }
            }
        };
    positive(
        ctx,
        &mut obj,
        "header_read_timeout",
        &mut s.header_read_timeout,
    );
    positive(ctx, &mut obj, "idle_timeout", &mut s.idle_timeout);
    positive(ctx, &mut obj, "request_timeout", &mut s.request_timeout);
    positive(
        ctx,
        &mut obj,
        "websocket_idle_timeout",
        &mut s.websocket_idle_timeout,
    );
    positive(
        ctx,
        &mut obj,
        "websocket_max_lifetime",
        &mut s.websocket_max_lifetime,
    );
    if let Some(d) = obj.duration(ctx, "shutdown_grace") {
        s.shutdown_grace = d;
    }
    if let Some(d) = obj.duration(ctx, "drain_delay") {
        s.drain_delay = d;
    }
    if let Some(b) = obj.bool(ctx, "watch") {
        s.watch = b;
    }
    for cidr in obj.strings(ctx, "trusted_proxies").unwrap_or_default() {
        let parsed = cidr
            .value
            .parse::<IpNet>()
            .or_else(|_| cidr.value.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => s.trusted_proxies.push(net),
            Err(_) => ctx.error(
                cidr.span,
                obj.key_path("trusted_proxies"),
                format!(
                    "`{}` is not a CIDR (e.g. \"10.0.0.0/8\") or IP address",
                    cidr.value
                ),
            ),
        }
    }
    s.tls = obj
        .table(ctx, "tls")
        .and_then(|t| tls::server_tls(ctx, t, base));
    obj.finish(ctx);
    s
}

fn admin(ctx: &mut Ctx<'_>, obj: Option<Obj<'_>>) -> Admin {
    let mut a = Admin {
        listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
        persist: Persist::File,
        token_env: "FNGATE_ADMIN_TOKEN".into(),
        token: None,
    };
    let Some(mut obj) = obj else {
        a.token = ctx.env("FNGATE_ADMIN_TOKEN").map(Into::into);
        return a;
    };
    if let Some(addr) = address(ctx, &mut obj, "listen") {
        a.listen = addr;
    }
    if let Some(p) = obj.string(ctx, "persist") {
        match p.value.as_str() {
            "file" => a.persist = Persist::File,
            "memory" => a.persist = Persist::Memory,
            other => ctx.error(
                p.span,
                obj.key_path("persist"),
                format!("`{other}`: expected \"file\" or \"memory\""),
            ),
        }
    }
    if let Some(t) = obj.string(ctx, "token_env") {
        a.token_env = t.value;
    }
    a.token = ctx
        .env(&a.token_env)
        .filter(|t| !t.is_empty())
        .map(Into::into);
    if !a.listen.ip().is_loopback() && a.token.is_none() {
        ctx.error(
            obj.key_span("listen"),
            obj.key_path("listen"),
            format!(
                "the admin API listens on {} (not loopback) but ${} is not set: set a token or listen on 127.0.0.1",
                a.listen, a.token_env
            ),
        );
    }
    obj.finish(ctx);
    a
}

/// Refuses keys a later release implements (and marks them, so they are not also "unknown").
fn not_yet(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, keys: &[&'static str]) {
    for &key in keys {
        if obj.has(key) {
            ctx.error(
                obj.key_span(key),
                obj.key_path(key),
                format!("`{key}` {NOT_YET}"),
            );
        }
        obj.mark(key);
    }
}

fn address(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, key: &'static str) -> Option<SocketAddr> {
    let s = obj.string(ctx, key)?;
    match s.value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            ctx.error(
                s.span,
                obj.key_path(key),
                format!("`{}` is not an address such as \"127.0.0.1:8080\"", s.value),
            );
            None
        }
    }
}

fn check_name(ctx: &mut Ctx<'_>, name: &Spanned<String>, what: &str) -> bool {
    let ok = !name.value.is_empty()
        && name.value.len() <= 64
        && name
            .value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        ctx.error(
            name.span.clone(),
            what,
            format!(
                "`{}` is not a valid name: use a-z, 0-9, `_` and `-` (at most 64)",
                name.value
            ),
        );
    }
    ok
}

fn backend(
    ctx: &mut Ctx<'_>,
    name: Spanned<String>,
    mut obj: Obj<'_>,
    base: &Path,
) -> Option<Backend> {
    let named = check_name(ctx, &name, obj.path());
    let mut endpoints = Vec::new();
    match obj.strings(ctx, "urls") {
        None => ctx.error(
            obj.span(),
            obj.key_path("urls"),
            "missing: a backend needs at least one URL",
        ),
        Some(urls) if urls.is_empty() => ctx.error(
            obj.key_span("urls"),
            obj.key_path("urls"),
            "empty pool: a backend needs at least one URL",
        ),
        Some(urls) => {
            for url in urls {
                match endpoint(&url.value) {
                    Ok(ep) => endpoints.push(ep),
                    Err(why) => ctx.error(url.span, obj.key_path("urls"), why),
                }
            }
        }
    }
    let headers = header_pairs(ctx, &mut obj, "headers");
    let mut balance = Balance::RoundRobin;
    if let Some(b) = obj.string(ctx, "balance") {
        match b.value.as_str() {
            "round_robin" => balance = Balance::RoundRobin,
            "least_requests" => balance = Balance::LeastRequests,
            "random" => balance = Balance::Random,
            other => ctx.error(
                b.span,
                obj.key_path("balance"),
                format!("`{other}`: expected \"round_robin\", \"least_requests\" or \"random\""),
            ),
        }
    }
    let connect_timeout = obj
        .duration(ctx, "connect_timeout")
        .unwrap_or(Duration::from_secs(1));
    let timeout = obj
        .duration(ctx, "timeout")
        .unwrap_or(Duration::from_secs(10));
    let retries = obj.uint(ctx, "retries", 10).unwrap_or(1) as u32;
    let protocol = match obj.string(ctx, "protocol") {
        None => Protocol::Http1,
        Some(p) => match p.value.as_str() {
            "http1" => Protocol::Http1,
            "h2" => Protocol::H2,
            other => {
                ctx.error(
                    p.span,
                    obj.key_path("protocol"),
                    format!("`{other}`: expected \"http1\" or \"h2\""),
                );
                Protocol::Http1
            }
        },
    };
    let ca = obj
        .string(ctx, "ca")
        .and_then(|f| auth::ca_file(ctx, &obj, "ca", &f, base));
    if ca.is_some()
        && !endpoints
            .iter()
            .any(|e: &Endpoint| e.scheme == Scheme::HTTPS)
    {
        ctx.error(
            obj.key_span("ca"),
            obj.key_path("ca"),
            "only applies to https:// urls",
        );
    }
    let max_in_flight = obj
        .uint(ctx, "max_in_flight", u64::from(u32::MAX))
        .unwrap_or(0) as u32;
    let eject_after = obj.uint(ctx, "eject_after", 1000).unwrap_or(5) as u32;
    if eject_after == 0 {
        ctx.error(
            obj.key_span("eject_after"),
            obj.key_path("eject_after"),
            "must be at least 1",
        );
    }
    let eject_for = obj
        .duration(ctx, "eject_for")
        .unwrap_or(Duration::from_secs(30));
    let max_ejection_percent = obj.uint(ctx, "max_ejection_percent", 100).unwrap_or(50) as u32;
    let retry_budget_percent = obj.uint(ctx, "retry_budget_percent", 1000).unwrap_or(20) as u32;
    let retry_min_per_second = obj.uint(ctx, "retry_min_per_second", 100_000).unwrap_or(10) as u32;
    let health = obj.table(ctx, "health").map(|h| health_check(ctx, h));
    obj.finish(ctx);
    if !named || endpoints.is_empty() {
        return None;
    }
    Some(Backend {
        name: name.value.into(),
        endpoints,
        headers,
        balance,
        connect_timeout,
        timeout,
        retries,
        max_in_flight,
        eject_after: eject_after.max(1),
        eject_for,
        max_ejection_percent,
        health: health.flatten(),
        retry_budget_percent,
        retry_min_per_second,
        protocol,
        ca,
    })
}

fn health_check(ctx: &mut Ctx<'_>, mut obj: Obj<'_>) -> Option<HealthCheck> {
    let path = match obj.string(ctx, "path") {
        Some(p) if p.value.starts_with('/') => Some(p.value),
        Some(p) => {
            ctx.error(p.span, obj.key_path("path"), "must start with `/`");
            None
        }
        None => {
            ctx.error(
                obj.span(),
                obj.key_path("path"),
                "missing: the path to check, e.g. \"/health\"",
            );
            None
        }
    };
    let interval = obj
        .duration(ctx, "interval")
        .unwrap_or(Duration::from_secs(5));
    let timeout = obj
        .duration(ctx, "timeout")
        .unwrap_or(Duration::from_secs(1));
    let healthy_threshold = obj.uint(ctx, "healthy_threshold", 100).unwrap_or(2) as u32;
    let unhealthy_threshold = obj.uint(ctx, "unhealthy_threshold", 100).unwrap_or(3) as u32;
    for (key, zero) in [
        ("interval", interval.is_zero()),
        ("timeout", timeout.is_zero()),
        ("healthy_threshold", healthy_threshold == 0),
        ("unhealthy_threshold", unhealthy_threshold == 0),
    ] {
        if zero {
            ctx.error(
                obj.key_span(key),
                obj.key_path(key),
                "must be more than zero",
            );
        }
    }
    obj.finish(ctx);
    Some(HealthCheck {
        path: path?,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

fn endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e})"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("`{url}` needs a scheme: http://host:port"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!("`{url}`: the scheme must be http or https"));
    }
    let authority: Authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{url}`: credentials in URLs are not allowed; use `headers`"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a backend URL cannot carry a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("`{url}` has an invalid host"))?;
    Ok(Endpoint {
        url: url.trim_end_matches('/').into(),
        scheme,
        authority,
        base_path,
        host,
    })
}

fn header_pairs(
    ctx: &mut Ctx<'_>,
    obj: &mut Obj<'_>,
    key: &'static str,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in obj.string_map(ctx, key).unwrap_or_default() {
        let path = format!("{}.{}", obj.key_path(key), name.value);
        let Some(name) = header_name(ctx, &name, &path) else {
            continue;
        };
        match HeaderValue::from_str(&value.value) {
            Ok(v) => out.push((name, v)),
            Err(_) => ctx.error(
                value.span,
                path,
                "not a valid header value (control characters?)",
            ),
        }
    }
    out
}

fn header_name(ctx: &mut Ctx<'_>, name: &Spanned<String>, path: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.value.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.error(
                name.span.clone(),
                path,
                format!("`{}` is not a valid header name", name.value),
            );
            None
        }
    }
}

fn header_edits(ctx: &mut Ctx<'_>, parent: &mut Obj<'_>, key: &'static str) -> HeaderEdits {
    let Some(mut obj) = parent.table(ctx, key) else {
        return HeaderEdits::default();
    };
    let set = header_pairs(ctx, &mut obj, "set");
    let path = obj.key_path("remove");
    let remove = obj
        .strings(ctx, "remove")
        .unwrap_or_default()
        .iter()
        .filter_map(|n| header_name(ctx, n, &path))
        .collect();
    obj.finish(ctx);
    HeaderEdits { set, remove }
}

fn route(
    ctx: &mut Ctx<'_>,
    mut obj: Obj<'_>,
    server: &Server,
    backends: &[Arc<Backend>],
    (auth, declared): (&[Arc<AuthPolicy>], &[String]),
    rate_limits: &[Arc<RateLimit>],
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
            if !obj.has("aggregate") {
                ctx.error(
                    obj.span(),
                    obj.key_path("backend"),
                    "missing: a route needs a backend (or an aggregate)",
                );
            }
            None
        }
    };
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
                let on_boundary =
                    literal.len() == prefix.len() || literal[prefix.len()..].starts_with('/');
                if !literal.starts_with(prefix) || !on_boundary {
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
    let timeout = obj.duration(ctx, "timeout");
    if timeout.is_some_and(|t| t.is_zero()) {
        ctx.error(
            obj.key_span("timeout"),
            obj.key_path("timeout"),
            "must be longer than zero",
        );
    }
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
    not_yet(ctx, &mut obj, &["mode"]);
    obj.finish(ctx);
    // A route forwards to its backend or fans out; validation keeps the two apart.
    let action = match (aggregate, backend) {
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

/// A list of header names, or `(true, [])` for `["*"]`.
fn header_list(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>, key: &'static str) -> (bool, Vec<HeaderName>) {
    let path = obj.key_path(key);
    let Some(list) = obj.strings(ctx, key) else {
        return (false, Vec::new());
    };
    if list.iter().any(|h| h.value == "*") {
        return (true, Vec::new());
    }
    (
        false,
        list.iter()
            .filter_map(|h| header_name(ctx, h, &path))
            .collect(),
    )
}

/// `https://app.example` or `http://localhost:3000`: scheme, host, optional port, nothing else.
fn origin(raw: &str) -> Result<HeaderValue, String> {
    let uri: Uri = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not an origin such as \"https://app.example\""))?;
    let plain = uri.scheme().is_some()
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
        && !raw.ends_with('/');
    if !plain {
        return Err(format!(
            "`{raw}` is not an origin: scheme://host[:port], no path or trailing slash"
        ));
    }
    HeaderValue::from_str(raw).map_err(|_| format!("`{raw}` is not a valid header value"))
}

/// Route names are unique; no two routes match the same host, path shape and
/// method; every host's shapes fit into one router without conflict.
fn check_routes(
    ctx: &mut Ctx<'_>,
    routes: &[Arc<Route>],
    spans: &[Option<std::ops::Range<usize>>],
) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(first) = names.insert(&r.name, i) {
            ctx.error(
                spans[i].clone(),
                format!("routes[{}].name", r.name),
                format!(
                    "route name `{}` is used twice (first at route #{})",
                    r.name,
                    first + 1
                ),
            );
        }
    }
    let mut by_host: HashMap<Option<&HostPattern>, (matchit::Router<usize>, Vec<usize>)> =
        HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let (router, members) = by_host
            .entry(r.host.as_ref())
            .or_insert_with(|| (matchit::Router::new(), Vec::new()));
        if let Some(&j) = members
            .iter()
            .find(|&&j| routes[j].path.shape == r.path.shape)
        {
            let other = &routes[j];
            let overlap = match (&r.methods, &other.methods) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            };
            if overlap {
                ctx.error(
                    spans[i].clone(),
                    format!("routes[{}]", r.name),
                    format!(
                        "matches the same host, path and method as route `{}` ({} {}{})",
                        other.name,
                        r.host
                            .as_ref()
                            .map_or("any host".to_owned(), ToString::to_string),
                        r.path.raw,
                        method_list(&r.methods),
                    ),
                );
            }
            members.push(i);
            continue;
        }
        if let Err(e) = router.insert(r.path.shape.clone(), i) {
            ctx.error(
                spans[i].clone(),
                format!("routes[{}].path", r.name),
                format!("`{}` conflicts with another route's path: {e}", r.path.raw),
            );
        }
        members.push(i);
    }
}

fn method_list(methods: &Option<Vec<Method>>) -> String {
    match methods {
        None => String::new(),
        Some(m) => format!(
            " [{}]",
            m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
        ),
    }
}
