//! Taking a job at the door (SPEC §7 "Accepting", "Waiting a little",
//! "Idempotency"): authentication, rate limits and `max_body` have run; the
//! request is prepared exactly as it would be forwarded, stored durably, and
//! only then answered.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;

use super::answer::{accepted, result_of};
use super::store::{encode_headers, Accepted, Idempotency, Kind, NewJob, Policy, StoredRequest};
use super::{new_id, now_ms, JobError, Jobs};
use crate::auth::Verified;
use crate::body::Body;
use crate::config::{Forward, Invoke};
use crate::context;
use crate::state::RouteContext;
use crate::upstream::UpstreamError;

/// What the client asked for in `Prefer` (RFC 7240).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefer {
    pub(crate) respond_async: bool,
    pub(crate) wait: Option<u64>,
}

pub(crate) fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for v in headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for pref in v.split(',') {
            let token = pref.split(';').next().unwrap_or("").trim();
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                p.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                p.wait = value.and_then(|v| v.parse().ok());
            }
        }
    }
    p
}

/// Whether this request on this route becomes a job.
pub(crate) fn wants_async(invoke: Invoke, headers: &HeaderMap) -> bool {
    match invoke {
        Invoke::Sync => false,
        Invoke::Async => true,
        Invoke::Either => prefer(headers).respond_async,
    }
}

/// `Idempotency-Key`: an RFC 8941 string (`"..."`), or a bare token.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, JobError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let raw = v
        .to_str()
        .map_err(|_| JobError::BadKey("not visible ASCII"))?
        .trim();
    let key = if let Some(inner) = raw.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or(JobError::BadKey("an unterminated string"))?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('"' | '\\')) => out.push(e),
                    _ => return Err(JobError::BadKey("a bad escape")),
                },
                '"' => return Err(JobError::BadKey("a quote inside the string")),
                c => out.push(c),
            }
        }
        out
    } else {
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c);
        if raw.is_empty() || !raw.chars().all(token_char) {
            return Err(JobError::BadKey("neither a string nor a token"));
        }
        raw.to_owned()
    };
    if key.is_empty() || key.len() > 255 {
        return Err(JobError::BadKey("empty or longer than 255 characters"));
    }
    Ok(Some(key))
}

fn fingerprint(method: &str, target: &str, body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [method.as_bytes(), b"\0", target.as_bytes(), b"\0", body] {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Stores the request as a job and answers 202 (or, for a known idempotency
/// key or a short `Prefer: wait`, the finished job's answer).
pub(crate) async fn accept(
    jobs: &Arc<Jobs>,
    req: Request<Body>,
    ctx: &RouteContext,
    to: &Forward,
) -> Result<Response<Body>, JobError> {
    if jobs.draining() {
        return Err(JobError::Draining);
    }
    let route = &ctx.active().config;
    let server = &ctx.snapshot.config.server;
    let prefer = prefer(req.headers());
    let key = idempotency_key(req.headers())?;
    let consumer = req
        .extensions()
        .get::<Arc<Verified>>()
        .and_then(|v| v.consumer.as_deref().map(str::to_owned));
    let (peer, tls) = crate::proxy::peer_of(&req);
    let (mut parts, body) = req.into_parts();
    let path = crate::proxy::prepare_parts(&mut parts, ctx, to, peer, tls);
    // Each delivery sets its own; the client's is not kept with the job.
    parts.headers.remove(http::header::HOST);
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let body = read_body(body, route.max_body).await?;
    if let Some(log) = context::exchange(&parts.extensions) {
        log.add_bytes_in(body.len() as u64);
    }
    let traceparent = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = parts.method.as_str().to_owned();
    let idempotency = key.map(|key| Idempotency {
        scope: format!(
            "{}\n{}",
            route.name,
            consumer
                .clone()
                .unwrap_or_else(|| ctx.client_ip.to_string())
        ),
        fingerprint: fingerprint(&method, &target, &body),
        key,
    });
    let d = &route.delivery;
    let id = new_id().ok_or_else(|| {
        JobError::Store(super::StoreError::Failed(
            "no randomness for a job id".into(),
        ))
    })?;
    let job = NewJob {
        id: id.clone(),
        kind: Kind::Route,
        route: route.name.to_string(),
        partition: None,
        backend: to.backend.name.to_string(),
        consumer,
        idempotency,
        request: StoredRequest {
            method,
            target,
            headers: encode_headers(&parts.headers),
            body,
            host: to
                .preserve_host
                .then(|| ctx.host.as_ref().and_then(|h| h.to_str().ok()))
                .flatten()
                .map(str::to_owned),
        },
        traceparent,
        policy: policy_of(d),
        now: now_ms(),
    };
    let store = jobs.store()?;
    // The route layer runs a job's request on a task of its own, so a client
    // gone before the 202 does not stop it being stored, counted and announced.
    let committed = jobs.timed("accept", store.accept(job)).await;
    if let Ok(Accepted::New(job)) = &committed {
        jobs.state.metrics.job(&route.name, "accepted");
        jobs.due(&job.backend, job.created);
    }
    let job = match committed? {
        Accepted::New(job) => job,
        Accepted::Existing(job) => {
            jobs.state.metrics.job(&route.name, "deduplicated");
            if job.state.finished() {
                return result_of(job, server, None);
            }
            job
        }
        Accepted::Mismatch => return Err(JobError::KeyReused),
    };
    let wait = prefer
        .wait
        .map(|n| Duration::from_secs(n).min(d.max_wait))
        .filter(|w| !w.is_zero());
    if let Some(wait) = wait {
        // The job is stored: a store that fails now still gets the client its 202.
        let done = jobs.finished_within(&job.id, wait).await.ok().flatten();
        if let Some(done) = done.filter(|j| j.state.finished()) {
            let applied = HeaderValue::try_from(format!("wait={}", prefer.wait.unwrap_or(0))).ok();
            return result_of(done, server, applied);
        }
    }
    Ok(accepted(&job, server, prefer.respond_async))
}

/// A job's policy, from its route's (or subscription's) delivery settings.
pub(crate) fn policy_of(d: &crate::config::Delivery) -> Policy {
    let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
    Policy {
        attempts: d.attempts,
        backoff_ms: (ms(d.backoff.0), ms(d.backoff.1)),
        max_age_ms: ms(d.max_age),
        timeout_ms: ms(d.timeout),
        result_ttl_ms: ms(d.result_ttl),
        max_result: d.max_result,
    }
}

/// The whole body, refused past `limit` (413).
pub(crate) async fn read_body(mut body: Body, limit: u64) -> Result<Bytes, JobError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(UpstreamError::ClientBody)?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(UpstreamError::BodyTooLarge { limit }.into());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn prefer_reads_respond_async_and_wait_in_any_order_and_case() {
        let p = prefer(&headers(&[("prefer", "Wait=5, RESPOND-ASYNC")]));
        assert_eq!(
            p,
            Prefer {
                respond_async: true,
                wait: Some(5)
            }
        );
        let p = prefer(&headers(&[
            ("prefer", "handling=lenient"),
            ("prefer", "wait=\"3\""),
        ]));
        assert_eq!(
            p,
            Prefer {
                respond_async: false,
                wait: Some(3)
            }
        );
        assert_eq!(prefer(&HeaderMap::new()), Prefer::default());
    }

    #[test]
    fn idempotency_keys_are_strings_or_tokens() {
        let key = |v: &'static str| idempotency_key(&headers(&[("idempotency-key", v)]));
        assert_eq!(
            key("\"order-1\"").ok().flatten().as_deref(),
            Some("order-1")
        );
        assert_eq!(
            key("\"a \\\"b\\\"\"").ok().flatten().as_deref(),
            Some("a \"b\"")
        );
        assert_eq!(
            key("8e03978e-40d5").ok().flatten().as_deref(),
            Some("8e03978e-40d5")
        );
        assert!(key("\"open").is_err());
        assert!(key("two words").is_err());
        assert!(key("\"\"").is_err());
    }

    #[test]
    fn fingerprints_tell_payloads_apart() {
        assert_eq!(
            fingerprint("POST", "/a", b"x"),
            fingerprint("POST", "/a", b"x")
        );
        assert_ne!(
            fingerprint("POST", "/a", b"x"),
            fingerprint("POST", "/a", b"y")
        );
        assert_ne!(
            fingerprint("POST", "/a", b"x"),
            fingerprint("PUT", "/a", b"x")
        );
        assert_ne!(
            fingerprint("POST", "/a", b"x"),
            fingerprint("POST", "/ax", b"")
        );
    }
}
