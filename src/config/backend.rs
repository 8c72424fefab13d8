//! `[backends.NAME]`: a pool of endpoints, its balancing, retries, ejection
//! and health checks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};

use super::decode::{Ctx, Obj, Spanned};
use super::headers::header_pairs;
use super::load::check_name;
use super::*;

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

pub(super) fn backend(
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

/// Why a backend URL is refused; each names the URL.
#[derive(Debug, thiserror::Error)]
#[error("`{url}`{why}")]
struct UrlError {
    url: String,
    why: UrlProblem,
}

#[derive(Debug, thiserror::Error)]
enum UrlProblem {
    #[error(" is not a URL ({0})")]
    Parse(http::uri::InvalidUri),
    #[error(" needs a scheme: http://host:port")]
    NoScheme,
    #[error(": the scheme must be http or https")]
    Scheme,
    #[error(" has no host")]
    NoHost,
    #[error(": credentials in URLs are not allowed; use `headers`")]
    Credentials,
    #[error(": a backend URL cannot carry a query")]
    Query,
    #[error(" has an invalid host")]
    Host,
}

fn endpoint(url: &str) -> Result<Endpoint, UrlError> {
    let fail = |why| UrlError {
        url: url.to_owned(),
        why,
    };
    let uri: Uri = url.parse().map_err(|e| fail(UrlProblem::Parse(e)))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| fail(UrlProblem::NoScheme))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(fail(UrlProblem::Scheme));
    }
    let authority: Authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| fail(UrlProblem::NoHost))?;
    if authority.as_str().contains('@') {
        return Err(fail(UrlProblem::Credentials));
    }
    if uri.query().is_some() {
        return Err(fail(UrlProblem::Query));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| fail(UrlProblem::Host))?;
    Ok(Endpoint {
        url: url.trim_end_matches('/').into(),
        scheme,
        authority,
        base_path,
        host,
    })
}
