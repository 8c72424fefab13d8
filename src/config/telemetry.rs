//! Trace export (SPEC §12): `[telemetry]`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::decode::{Ctx, Obj};

/// The longest a batch is retried before it is dropped (SPEC §12).
pub const MAX_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how spans are exported. Present only when `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// `{otlp_endpoint}/v1/traces`, where batches are POSTed as OTLP/HTTP protobuf.
    pub traces_url: Uri,
    pub service_name: Arc<str>,
    /// For requests without a sampled or unsampled parent; a parent's decision is kept.
    pub sample_ratio: f64,
    /// How long one batch may take, retries included, before it is dropped.
    pub export_timeout: Duration,
    /// Sent with every export (a hosted collector's API key).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub(super) fn telemetry(ctx: &mut Ctx<'_>, mut obj: Obj<'_>) -> Option<Telemetry> {
    let endpoint = obj.string(ctx, "otlp_endpoint");
    let endpoint_path = obj.key_path("otlp_endpoint");
    let service_name = obj
        .string(ctx, "service_name")
        .map_or_else(|| "fngate".into(), |s| s.value.into());
    let sample_ratio = match obj.item("sample_ratio") {
        None => 1.0,
        Some(item) => match item
            .as_float()
            .or_else(|| item.as_integer().map(|n| n as f64))
        {
            Some(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                ctx.error(
                    super::decode::span_of(item),
                    obj.key_path("sample_ratio"),
                    "expected a number from 0.0 to 1.0",
                );
                1.0
            }
        },
    };
    let export_timeout = match obj.positive_duration(ctx, "export_timeout") {
        Some(d) if d > MAX_EXPORT_TIMEOUT => {
            ctx.error(
                obj.key_span("export_timeout"),
                obj.key_path("export_timeout"),
                "must be at most 10s (SPEC §12: a failed batch is dropped after at most 10 s)",
            );
            MAX_EXPORT_TIMEOUT
        }
        Some(d) => d,
        None => MAX_EXPORT_TIMEOUT,
    };
    let headers = super::headers::header_pairs(ctx, &mut obj, "headers");
    obj.finish(ctx);
    let endpoint = endpoint?;
    let base = endpoint.value.trim().trim_end_matches('/');
    let traces_url = match base.parse::<Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.query().is_none() =>
        {
            format!("{base}/v1/traces").parse::<Uri>().ok()
        }
        _ => None,
    };
    let Some(traces_url) = traces_url else {
        ctx.error(
            endpoint.span,
            endpoint_path,
            format!(
                "`{}` is not an http:// or https:// URL (the collector's base, e.g. \"http://127.0.0.1:4318\")",
                endpoint.value
            ),
        );
        return None;
    };
    Some(Telemetry {
        traces_url,
        service_name,
        sample_ratio,
        export_timeout,
        headers,
    })
}
