//! Background jobs (SPEC §7): `[store]`, a route's `invoke` and `[routes.delivery]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::decode::{Ctx, Obj};

/// Where jobs live.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// The embedded store's file (SQLite), absolute or relative to the working directory.
    pub path: PathBuf,
    /// `redis://` or `rediss://`: the store several instances share (SPEC §10); `path` is then unused.
    pub url: Option<String>,
    /// PEM certificates a `rediss://` server must chain to, instead of the system's roots.
    pub ca: Option<std::sync::Arc<[u8]>>,
    pub durability: Durability,
    pub rate_limits_on_error: OnError,
    /// The most a rate-limit check waits for Redis before `rate_limits_on_error` decides.
    pub rate_limit_timeout: Duration,
    /// `[store]` was written out: the store is opened at start even without async routes.
    pub explicit: bool,
}

impl Store {
    /// Where the store is, as logs and errors name it (a Redis password hidden).
    pub fn location(&self) -> String {
        match &self.url {
            Some(url) => hide_password(url),
            None => self.path.display().to_string(),
        }
    }
}

/// A URL with its password (if any) shown as `***`.
pub fn hide_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// When a write to Redis counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledged by the primary.
    #[default]
    Primary,
    /// ...and by one replica (`WAIT 1`, bounded).
    Replica,
}

/// What a rate limit kept on Redis does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Each instance enforces the limit alone.
    #[default]
    Local,
    /// Every request passes.
    Open,
    /// Every request is refused (503).
    Closed,
}

/// How a route is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Invoke {
    /// The client waits for the function's answer.
    #[default]
    Sync,
    /// Every request becomes a durable job: 202 and a job URL.
    Async,
    /// Sync unless the client sends `Prefer: respond-async`.
    Either,
}

impl Invoke {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Either => "either",
        }
    }
}

/// How a route's jobs are delivered and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Total attempts, the first included (at least 1).
    pub attempts: u32,
    pub backoff: (Duration, Duration),
    pub max_age: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub result_ttl: Duration,
    pub max_result: u64,
    pub max_wait: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            attempts: 8,
            backoff: (Duration::from_secs(1), Duration::from_secs(300)),
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(300),
            concurrency: 16,
            result_ttl: Duration::from_secs(24 * 3600),
            max_result: 1 << 20,
            max_wait: Duration::from_secs(10),
        }
    }
}

pub(super) fn store_default(base: &Path) -> Store {
    Store {
        path: base.join("data").join("fngate.db"),
        url: None,
        ca: None,
        durability: Durability::Primary,
        rate_limits_on_error: OnError::Local,
        rate_limit_timeout: Duration::from_millis(50),
        explicit: false,
    }
}

pub(super) fn store(ctx: &mut Ctx<'_>, mut obj: Obj<'_>, base: &Path) -> Store {
    let mut s = store_default(base);
    s.explicit = true;
    if let Some(p) = obj.string(ctx, "path") {
        if p.value.trim().is_empty() {
            ctx.error(p.span, obj.key_path("path"), "must not be empty");
        } else {
            s.path = base.join(&p.value);
        }
    }
    if let Some(u) = obj.string(ctx, "url") {
        if obj.has("path") {
            ctx.error(
                u.span.clone(),
                obj.key_path("url"),
                "give `path` (the embedded store) or `url` (Redis), not both",
            );
        } else if !(u.value.starts_with("redis://") || u.value.starts_with("rediss://")) {
            ctx.error(
                u.span,
                obj.key_path("url"),
                "must start with redis:// or rediss:// (TLS)",
            );
        } else {
            match redis::IntoConnectionInfo::into_connection_info(u.value.as_str()) {
                Ok(_) => s.url = Some(u.value),
                Err(e) => ctx.error(u.span, obj.key_path("url"), format!("not a Redis URL: {e}")),
            }
        }
    }
    if let Some(d) = obj.string(ctx, "durability") {
        match d.value.as_str() {
            "primary" => s.durability = Durability::Primary,
            "replica" => s.durability = Durability::Replica,
            other => ctx.error(
                d.span,
                obj.key_path("durability"),
                format!("`{other}` is not one of \"primary\", \"replica\""),
            ),
        }
    }
    if let Some(o) = obj.string(ctx, "rate_limits_on_error") {
        match o.value.as_str() {
            "local" => s.rate_limits_on_error = OnError::Local,
            "open" => s.rate_limits_on_error = OnError::Open,
            "closed" => s.rate_limits_on_error = OnError::Closed,
            other => ctx.error(
                o.span,
                obj.key_path("rate_limits_on_error"),
                format!("`{other}` is not one of \"local\", \"open\", \"closed\""),
            ),
        }
    }
    if let Some(t) = obj.duration(ctx, "rate_limit_timeout") {
        if t.is_zero() || t > Duration::from_secs(10) {
            ctx.error(
                obj.key_span("rate_limit_timeout"),
                obj.key_path("rate_limit_timeout"),
                "must be more than 0 and at most 10s (every limited request waits up to it)",
            );
        } else {
            s.rate_limit_timeout = t;
        }
    }
    if let Some(f) = obj.string(ctx, "ca") {
        s.ca = super::auth::ca_file(ctx, &obj, "ca", &f, base);
        if !s.url.as_deref().is_some_and(|u| u.starts_with("rediss://")) {
            ctx.error(
                f.span,
                obj.key_path("ca"),
                "applies to a rediss:// url only",
            );
        }
    }
    if s.url.is_none() {
        for key in ["durability", "rate_limits_on_error", "rate_limit_timeout"] {
            if obj.has(key) {
                ctx.error(
                    obj.key_span(key),
                    obj.key_path(key),
                    "applies to a Redis store only (`url`)",
                );
            }
        }
    }
    obj.finish(ctx);
    s
}

pub(super) fn invoke(ctx: &mut Ctx<'_>, obj: &mut Obj<'_>) -> Invoke {
    let Some(s) = obj.string(ctx, "invoke") else {
        return Invoke::Sync;
    };
    match s.value.as_str() {
        "sync" => Invoke::Sync,
        "async" => Invoke::Async,
        "either" => Invoke::Either,
        other => {
            ctx.error(
                s.span,
                obj.key_path("invoke"),
                format!("`{other}` is not one of \"sync\", \"async\", \"either\""),
            );
            Invoke::Sync
        }
    }
}

pub(super) fn delivery(ctx: &mut Ctx<'_>, mut obj: Obj<'_>) -> Delivery {
    let mut d = Delivery::default();
    if let Some(n) = obj.uint(ctx, "attempts", 1000) {
        if n == 0 {
            ctx.error(
                obj.key_span("attempts"),
                obj.key_path("attempts"),
                "must be at least 1 (the first attempt counts)",
            );
        } else {
            d.attempts = n as u32;
        }
    }
    if let Some(list) = obj.strings(ctx, "backoff") {
        let parsed: Vec<Option<Duration>> = list
            .iter()
            .map(|s| {
                let d = humantime::parse_duration(s.value.trim()).ok();
                if d.is_none() {
                    ctx.error(
                        s.span.clone(),
                        obj.key_path("backoff"),
                        format!("`{}` is not a duration; write e.g. \"1s\", \"5m\"", s.value),
                    );
                }
                d
            })
            .collect();
        match parsed.as_slice() {
            [Some(lo), Some(hi)] if lo > hi => ctx.error(
                obj.key_span("backoff"),
                obj.key_path("backoff"),
                format!(
                    "the first bound ({}) exceeds the second ({})",
                    humantime::format_duration(*lo),
                    humantime::format_duration(*hi)
                ),
            ),
            [Some(lo), Some(hi)] => d.backoff = (*lo, *hi),
            [_, _] => {}
            _ => ctx.error(
                obj.key_span("backoff"),
                obj.key_path("backoff"),
                "expected two durations, [\"1s\", \"5m\"]: the first retry's delay and the longest",
            ),
        }
    }
    for (key, slot) in [
        ("max_age", &mut d.max_age),
        ("timeout", &mut d.timeout),
        ("result_ttl", &mut d.result_ttl),
    ] {
        if let Some(v) = obj.positive_duration(ctx, key) {
            *slot = v;
        }
    }
    if let Some(v) = obj.duration(ctx, "max_wait") {
        d.max_wait = v;
    }
    if let Some(n) = obj.uint(ctx, "concurrency", 65_536) {
        if n == 0 {
            ctx.error(
                obj.key_span("concurrency"),
                obj.key_path("concurrency"),
                "must be at least 1",
            );
        } else {
            d.concurrency = n as usize;
        }
    }
    if let Some(n) = obj.size(ctx, "max_result") {
        d.max_result = n;
    }
    obj.finish(ctx);
    d
}
