//! Background jobs (SPEC §7): `[store]`, a route's `invoke` and `[routes.delivery]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::decode::{Ctx, Obj};

/// Where jobs live.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// The embedded store's file (SQLite), absolute or relative to the working directory.
    pub path: PathBuf,
    /// `[store]` was written out: the store is opened at start even without async routes.
    pub explicit: bool,
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
    super::load::not_yet(
        ctx,
        &mut obj,
        &["url", "durability", "rate_limits_on_error"],
    );
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
