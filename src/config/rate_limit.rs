//! `[rate_limits.NAME]`: a GCRA policy, its key and its bounds.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::decode::{Ctx, Obj, Spanned};
use super::load::check_name;

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

pub(super) fn rate_limit(
    ctx: &mut Ctx<'_>,
    name: Spanned<String>,
    mut obj: Obj<'_>,
) -> Option<RateLimit> {
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
    let per = match obj.positive_duration(ctx, "per") {
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
