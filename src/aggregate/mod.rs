//! Fan-out (SPEC §2–§3 `[routes.aggregate]`): one request, several calls,
//! one JSON answer.
//!
//! Each call starts the moment every call its path needs has answered, so
//! independent calls run in parallel and a chain runs in order. Calls are
//! tasks in one `JoinSet`: at the aggregate's deadline the set is dropped,
//! which aborts every call still running and closes its upstream connection.
//! Each call goes through its backend's pool, balancing and retries like a
//! proxied request; its answer is buffered up to `max_call_body`.

pub(crate) mod merge;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{Aggregate, AuthKind, CallPart, HeaderEdits, Route};
use crate::context::{self, Exchange};
use crate::metrics::Metrics;
use crate::telemetry::{KeyValue, Telemetry};
use crate::upstream::headers;
use crate::upstream::{Outgoing, Prepared, Traced, Upstream, UpstreamError};

/// Placeholder values in a path are one segment: everything but unreserved
/// characters is escaped, dots too, so a value cannot be `..`.
const IN_PATH: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');
const IN_QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b'.');

pub(crate) static X_FNGATE_COMPLETED: HeaderName = HeaderName::from_static("x-fngate-completed");
pub(crate) static X_FNGATE_FAILED: HeaderName = HeaderName::from_static("x-fngate-failed");
/// Request headers every call carries (with the forwarded claims).
static CARRIED: [HeaderName; 5] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-consumer-id"),
];

/// A compiled aggregate: the calls with their backends' pools.
#[derive(Debug)]
pub struct Plan {
    pub config: Arc<Aggregate>,
    /// Parallel to `config.calls`.
    pub upstreams: Vec<Arc<Upstream>>,
}

/// How one call ended (the `outcome` label of `fngate_aggregate_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
    /// Not made: a call it needs failed, or lacked the field its path names.
    Skipped,
    /// Failed, and its `fallback` stood in.
    Fallback,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
            Self::Fallback => "fallback",
        }
    }
}

/// How a required call failed. `Ok` and `Fallback` cannot be one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Error,
    Timeout,
    Skipped,
}

/// A required call failed (rendered by `error.rs`, with `x-fngate-failed`).
#[derive(Debug, thiserror::Error)]
#[error("the required call `{call}` ended with {}", failure.outcome().as_str())]
pub(crate) struct AggregateError {
    pub call: Arc<str>,
    pub failure: Failure,
    /// Every failed call, comma-separated in config order.
    pub failed: HeaderValue,
}

impl Failure {
    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Timeout => Self::Timeout,
            Outcome::Skipped => Self::Skipped,
            Outcome::Error | Outcome::Ok | Outcome::Fallback => Self::Error,
        }
    }

    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Self::Error => Outcome::Error,
            Self::Timeout => Outcome::Timeout,
            Self::Skipped => Outcome::Skipped,
        }
    }
}

/// What the plan needs of the routed request.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub route: &'a Route,
    /// The route's path params, by position.
    pub params: Vec<String>,
    /// The host the client addressed (for `x-forwarded-host`).
    pub host: Option<&'a HeaderValue>,
    pub telemetry: Option<&'a Arc<Telemetry>>,
}

/// Runs the plan for a routed request and answers.
pub(crate) async fn run(
    req: Request<Body>,
    inputs: Inputs<'_>,
    plan: &Plan,
    metrics: &Arc<Metrics>,
) -> Result<Response<Body>, AggregateError> {
    let Inputs {
        route,
        params,
        host,
        telemetry,
    } = inputs;
    let log = context::exchange(req.extensions()).cloned();
    let agg = &plan.config;
    let base = call_headers(&req, route);
    let query = query_pairs(req.uri().query());
    let deadline = Instant::now() + agg.timeout;
    let (peer, tls) = context::conn(req.extensions())
        .map_or((HeaderValue::from_static("unknown"), false), |c| {
            (c.peer_value.clone(), c.tls)
        });

    let outcomes = execute(
        agg.calls.len(),
        |i| &agg.calls[i].needs,
        deadline,
        |i, done| {
            let call = &agg.calls[i];
            let path = render(&call.path.parts, &params, &query, done)?;
            let mut headers = base.clone();
            headers::upstream_request(
                &mut headers,
                peer.clone(),
                tls,
                host,
                &route.request_headers,
                &call.backend.headers,
            );
            let task = Task {
                upstream: plan.upstreams[i].clone(),
                agg: agg.clone(),
                index: i,
                path,
                headers,
                deadline,
                telemetry: telemetry.cloned(),
            };
            Some(task.run())
        },
    )
    .await;
    answer(
        &route.name,
        agg,
        outcomes,
        &route.response_headers,
        log.as_ref(),
        metrics,
    )
}

/// What is known of each call while the plan runs: `None` until it ends.
type Done = [Option<Result<Value, Outcome>>];

/// Starts every call whose inputs have all answered, as a task in one
/// `JoinSet`, and repeats as calls end, until none is left or `deadline`
/// passes. `start` makes call `i` from the answers so far, or `None` when its
/// path cannot be rendered (it is then `Skipped`, as is a call whose input
/// failed). A call that panicked is an `Error`; the others keep their outcomes.
async fn execute<'a, Fut>(
    n: usize,
    needs: impl Fn(usize) -> &'a [usize],
    deadline: Instant,
    mut start: impl FnMut(usize, &Done) -> Option<Fut>,
) -> Vec<Result<Value, Outcome>>
where
    Fut: std::future::Future<Output = Result<Value, Outcome>> + Send + 'static,
{
    let mut done: Vec<Option<Result<Value, Outcome>>> = vec![None; n];
    let mut started = vec![false; n];
    let mut tasks: Vec<(tokio::task::Id, usize)> = Vec::new();
    let mut set = JoinSet::new();
    loop {
        let mut progress = true;
        while progress {
            progress = false;
            for i in 0..n {
                if started[i] || needs(i).iter().any(|&j| done[j].is_none()) {
                    continue;
                }
                started[i] = true;
                progress = true;
                let ready = needs(i).iter().all(|&j| matches!(done[j], Some(Ok(_))));
                match ready.then(|| start(i, &done)).flatten() {
                    Some(call) => tasks.push((set.spawn(call).id(), i)),
                    None => done[i] = Some(Err(Outcome::Skipped)),
                }
            }
        }
        if set.is_empty() {
            break;
        }
        let (id, result) = match tokio::time::timeout_at(deadline, set.join_next_with_id()).await {
            Ok(Some(Ok((id, result)))) => (id, result),
            Ok(Some(Err(e))) => {
                tracing::error!("an aggregate call task failed: {e}");
                (e.id(), Err(Outcome::Error))
            }
            Ok(None) | Err(_) => break,
        };
        if let Some(&(_, i)) = tasks.iter().find(|(t, _)| *t == id) {
            done[i] = Some(result);
        }
    }
    // Whatever still runs at the deadline is cancelled (the set aborts it on drop).
    drop(set);
    done.into_iter()
        .zip(&started)
        .map(|(d, &s)| match d {
            Some(r) => r,
            None if s => Err(Outcome::Timeout),
            None => Err(Outcome::Skipped),
        })
        .collect()
}

struct Task {
    upstream: Arc<Upstream>,
    agg: Arc<Aggregate>,
    index: usize,
    path: String,
    headers: HeaderMap,
    deadline: Instant,
    telemetry: Option<Arc<Telemetry>>,
}

impl Task {
    async fn run(self) -> Result<Value, Outcome> {
        let call = &self.agg.calls[self.index];
        let now = Instant::now();
        let deadline = call
            .timeout
            .map_or(self.deadline, |t| self.deadline.min(now + t));
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        // Made only when traced; the name is shared, not copied.
        let call_attribute = self.telemetry.as_ref().map(|_| {
            KeyValue::new(
                "fngate.aggregate.call",
                crate::telemetry::shared(&call.name),
            )
        });
        let fetch = async {
            let res = self
                .upstream
                .send(Outgoing {
                    method: call.method.clone(),
                    path,
                    query,
                    client_target: None,
                    headers: self.headers,
                    body: Prepared::Empty,
                    host: None,
                    started: now,
                    deadline,
                    max_body: 0,
                    log: None,
                    response_edits: &NO_EDITS,
                    upgrade: false,
                    attempt_timeout: None,
                    trace: self.telemetry.as_deref().map(|telemetry| Traced {
                        telemetry,
                        attributes: call_attribute.as_slice(),
                    }),
                })
                .await
                .map_err(|e| match e {
                    UpstreamError::Timeout { .. } => Outcome::Timeout,
                    _ => Outcome::Error,
                })?;
            if !res.status().is_success() {
                return Err(Outcome::Error);
            }
            let body = read_limited(res.into_body(), self.agg.max_call_body).await?;
            let value: Value = serde_json::from_slice(&body).map_err(|_| Outcome::Error)?;
            Ok(match &call.select {
                Some(fields) => merge::select(value, fields),
                None => value,
            })
        };
        tokio::time::timeout_at(deadline, fetch)
            .await
            .unwrap_or(Err(Outcome::Timeout))
    }
}

/// An answer's body, or an error past `limit` bytes (a hand loop: rustc
/// cannot prove `Limited`'s error conversion `Send` inside a spawned task).
async fn read_limited(mut body: Body, limit: u64) -> Result<Vec<u8>, Outcome> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Outcome::Error)?;
        if let Some(data) = frame.data_ref() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(Outcome::Error);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

static NO_EDITS: HeaderEdits = HeaderEdits {
    set: Vec::new(),
    remove: Vec::new(),
};

/// The merged answer, or the error naming the first required call that failed.
fn answer(
    route: &Arc<str>,
    agg: &Aggregate,
    outcomes: Vec<Result<Value, Outcome>>,
    edits: &HeaderEdits,
    log: Option<&Arc<Exchange>>,
    metrics: &Metrics,
) -> Result<Response<Body>, AggregateError> {
    let mut failed: Vec<&str> = Vec::new();
    let mut report = String::new();
    let mut required_failure = None;
    let mut answers = Vec::with_capacity(agg.calls.len());
    for (call, result) in agg.calls.iter().zip(outcomes) {
        let outcome = match result {
            Ok(value) => {
                answers.push((&*call.name, value));
                Outcome::Ok
            }
            Err(outcome) => {
                failed.push(&call.name);
                match (&call.fallback, call.optional) {
                    (Some(fallback), true) => {
                        answers.push((&*call.name, fallback.clone()));
                        Outcome::Fallback
                    }
                    (_, false) => {
                        required_failure.get_or_insert((call.name.clone(), Failure::of(outcome)));
                        outcome
                    }
                    (None, true) => outcome,
                }
            }
        };
        metrics.aggregate_call(route, &call.name, outcome.as_str());
        if !report.is_empty() {
            report.push(' ');
        }
        report.push_str(&call.name);
        report.push('=');
        report.push_str(outcome.as_str());
    }
    if let Some(log) = log {
        log.update(|f| f.calls = Some(report.into()));
    }
    // Call names are `[a-z0-9_-]+`, so the list is always a valid header value.
    let failed_value =
        || HeaderValue::from_str(&failed.join(", ")).unwrap_or(HeaderValue::from_static(""));
    if let Some((call, failure)) = required_failure {
        return Err(AggregateError {
            call,
            failure,
            failed: failed_value(),
        });
    }
    let body = merge::merge(agg.merge, answers).to_string();
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers::apply(h, edits);
    h.insert(
        X_FNGATE_COMPLETED.clone(),
        HeaderValue::from_static(if failed.is_empty() { "true" } else { "false" }),
    );
    if !failed.is_empty() {
        h.insert(X_FNGATE_FAILED.clone(), failed_value());
    }
    Ok(res)
}

/// The request headers every call carries: ids, trace context, and what
/// authentication set (forwarded claims, `x-consumer-id`). The client's
/// other headers (cookies, its credentials) stay with the gateway.
fn call_headers(req: &Request<Body>, route: &Route) -> HeaderMap {
    let mut out = HeaderMap::new();
    let claims = match route.auth.as_ref().map(|p| &p.kind) {
        Some(AuthKind::Jwt(jwt)) => jwt.forward_claims.iter().map(|(_, h)| h).collect(),
        _ => Vec::new(),
    };
    for name in CARRIED.iter().chain(claims) {
        for v in req.headers().get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out.insert(ACCEPT, HeaderValue::from_static("application/json"));
    out
}

/// The request's query, form-decoded (`+` is a space).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Renders a call path as a route with `params` (matched as `values`)
/// would, after a call named `prev` answered `answer`; for the fuzz targets.
pub(crate) fn render_call(
    raw: &str,
    params: &[crate::config::Param],
    values: &[&str],
    query: Option<&str>,
    answer: &Value,
) -> Option<String> {
    let path = crate::config::parse_call_path(raw, params, &["prev".to_owned()]).ok()?;
    let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    render(
        &path.parts,
        &values,
        &query_pairs(query),
        &[Some(Ok(answer.clone()))],
    )
}

/// A call's path with its placeholders filled; `None` when a field it needs
/// is missing or is no string, number or boolean.
fn render(
    parts: &[CallPart],
    params: &[String],
    query: &[(String, String)],
    done: &Done,
) -> Option<String> {
    let mut out = String::new();
    let mut in_query = false;
    for part in parts {
        let set = if in_query { IN_QUERY } else { IN_PATH };
        match part {
            CallPart::Literal(l) => {
                in_query |= l.contains('?');
                out.push_str(l);
            }
            CallPart::Param(i) => {
                let v = params.get(*i)?;
                out.extend(percent_encoding::utf8_percent_encode(v, set));
            }
            CallPart::Query(name) => {
                let v = query.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v);
                out.extend(percent_encoding::utf8_percent_encode(v, set));
            }
            CallPart::Field { call, path } => {
                let Some(Ok(root)) = &done[*call] else {
                    return None;
                };
                let mut v = root;
                for key in path {
                    v = v.get(key)?;
                }
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                out.extend(percent_encoding::utf8_percent_encode(&text, set));
            }
        }
    }
    // A value of `..` (escaped, it is still a dot segment to most servers)
    // would climb out of the path the route names.
    if crate::normalize::has_dot_segment(&out) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: i64) -> Result<Value, Outcome> {
        Ok(Value::from(v))
    }

    #[test]
    fn a_dot_segment_value_makes_a_call_unrenderable() {
        // Found by fuzz/template: `..` from a call's answer or the query was
        // sent as `%2E%2E`, which most servers resolve as `..`.
        let params = [crate::config::Param {
            name: "id".into(),
            catch_all: false,
        }];
        let answer = serde_json::json!({ "next": "..", "ok": "a..b" });
        let call = |raw, query| render_call(raw, &params, &["7"], query, &answer);
        assert_eq!(call("/p/{prev.next}/x", None), None);
        assert_eq!(call("/p/{query.q}", Some("q=%2e")), None);
        assert_eq!(
            call("/p/{prev.ok}/{id}", None).as_deref(),
            Some("/p/a%2E%2Eb/7")
        );
        // A literal dot segment is refused when the config loads.
        let refused = crate::config::parse_call_path("/a/%2e%2E/{id}", &params, &[]);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("climb out")),
            "{refused:?}"
        );
        // In the query a dot is only data.
        assert_eq!(
            call("/p?next={prev.next}", None).as_deref(),
            Some("/p?next=..")
        );
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_and_the_others_keep_their_outcomes() {
        let needs: [Vec<usize>; 4] = [vec![], vec![], vec![0], vec![1]];
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let outcomes = execute(
            4,
            |i| &needs[i],
            deadline,
            |i, _| {
                Some(async move {
                    if i == 1 {
                        panic!("call 1 has a bug");
                    }
                    ok(i as i64)
                })
            },
        )
        .await;
        assert_eq!(
            outcomes,
            vec![ok(0), Err(Outcome::Error), ok(2), Err(Outcome::Skipped)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_still_running_at_the_deadline_time_out_and_unrenderable_ones_are_skipped() {
        let needs: [Vec<usize>; 3] = [vec![], vec![], vec![]];
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let outcomes = execute(
            3,
            |i| &needs[i],
            deadline,
            |i, _| {
                (i != 2).then_some(async move {
                    if i == 1 {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                    ok(i as i64)
                })
            },
        )
        .await;
        assert_eq!(
            outcomes,
            vec![ok(0), Err(Outcome::Timeout), Err(Outcome::Skipped)]
        );
    }
}
