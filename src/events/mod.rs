//! Events (SPEC §8): `POST {events_path}/{topic}` takes CloudEvents (binary,
//! structured, batch) or plain JSON, and stores one delivery per matching
//! subscription as a job, all in one commit, before its 202. Delivery is the
//! deliverer's (`jobs/deliver.rs`), with the job rules of §7.

pub(crate) mod cloudevent;

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::Body;
use crate::config::{Format, Ordering, Subscription, Topic};
use crate::context;
use crate::jobs::{self, JobError, Jobs};
use crate::state::RouteContext;
use cloudevent::{Event, EventError};

/// Why a publish was refused (rendered by `error.rs`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("`{0}` is not a CloudEvents or JSON content type")]
    ContentType(String),
    #[error("a batch holds no event")]
    EmptyBatch,
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Publishes the request's events to `topic`; 202 with their ids and how many
/// deliveries were stored.
pub(crate) async fn publish(
    jobs: &Arc<Jobs>,
    req: Request<Body>,
    ctx: &RouteContext,
    topic: &Topic,
) -> Result<Response<Body>, PublishError> {
    if jobs.draining() {
        return Err(JobError::Draining.into());
    }
    let (parts, body) = req.into_parts();
    let body = jobs::read_body(body, topic.max_event).await?;
    if let Some(log) = context::exchange(&parts.extensions) {
        log.add_bytes_in(body.len() as u64);
    }
    let events = parse(topic, &parts.headers, body)?;
    let traceparent = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let config = &ctx.snapshot.config;
    let now = jobs::now_ms();
    let window = u64::try_from(topic.dedupe_window.as_millis()).unwrap_or(u64::MAX);
    let mut stored = Vec::with_capacity(events.len());
    for event in &events {
        let deliveries = deliveries_of(config, topic, event, traceparent.as_deref(), now)?;
        stored.push(jobs::NewEvent {
            topic: topic.name.to_string(),
            source: event.source().to_owned(),
            id: event.id().to_owned(),
            dedupe_until: (window > 0)
                .then(|| now.saturating_add(i64::try_from(window).unwrap_or(i64::MAX))),
            deliveries,
        });
    }
    let counts: Vec<usize> = stored.iter().map(|e| e.deliveries.len()).collect();
    let fresh = jobs.publish(&topic.name, stored, now).await?;
    let deliveries: usize = fresh
        .iter()
        .zip(&counts)
        .filter(|(new, _)| **new)
        .map(|(_, n)| n)
        .sum();
    let answer = serde_json::json!({
        "ids": events.iter().map(Event::id).collect::<Vec<_>>(),
        "deliveries": deliveries,
    });
    let mut res = Response::new(
        Full::new(Bytes::from(answer.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = StatusCode::ACCEPTED;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(res)
}

/// One delivery for each subscription of `topic` whose filter the event passes.
pub(crate) fn deliveries_of(
    config: &crate::config::Config,
    topic: &Topic,
    event: &Event,
    traceparent: Option<&str>,
    now: jobs::Millis,
) -> Result<Vec<jobs::NewJob>, PublishError> {
    config
        .subscriptions
        .iter()
        .filter(|s| *s.topic == *topic.name && s.filter.matches(|a| event.attr(a)))
        .map(|sub| delivery(sub, event, traceparent, now))
        .collect()
}

/// The events of one request, by its content type (binary mode when it has `ce-specversion`).
fn parse(
    topic: &Topic,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<Vec<Event>, PublishError> {
    if headers.contains_key("ce-specversion") {
        return Ok(vec![Event::from_binary(headers, body)?]);
    }
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|e| PublishError::Json(e.to_string()))
    };
    match essence.as_str() {
        cloudevent::STRUCTURED => Ok(vec![Event::from_json(json()?)?]),
        cloudevent::BATCH => {
            let serde_json::Value::Array(items) = json()? else {
                return Err(EventError::Body("a batch is a JSON array of events".into()).into());
            };
            if items.is_empty() {
                return Err(PublishError::EmptyBatch);
            }
            Ok(items
                .into_iter()
                .map(Event::from_json)
                .collect::<Result<_, _>>()?)
        }
        e if cloudevent::is_json_type(e) => {
            let id = jobs::new_id().ok_or_else(|| {
                JobError::Store(jobs::StoreError::Failed(
                    "no randomness for an event id".into(),
                ))
            })?;
            Ok(vec![Event::wrap(
                id,
                format!("/fngate/topics/{}", topic.name),
                &topic.name,
                json()?,
            )])
        }
        _ => Err(PublishError::ContentType(ct.to_owned())),
    }
}

/// One subscription's delivery of one event: a job whose request is the
/// event in the subscription's format.
fn delivery(
    sub: &Subscription,
    event: &Event,
    traceparent: Option<&str>,
    now: jobs::Millis,
) -> Result<jobs::NewJob, PublishError> {
    let mut headers = http::HeaderMap::new();
    let body = match sub.format {
        Format::Binary => {
            let (ce, body) = event.to_binary();
            for (name, value) in ce {
                headers.insert(name, value);
            }
            body
        }
        Format::Structured => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(cloudevent::STRUCTURED),
            );
            Bytes::from(event.to_json().to_string())
        }
    };
    // The event's identity, so a subscriber can drop a repeat (SPEC §8).
    let key = format!(
        "\"{} {}\"",
        event.source().replace('\\', "\\\\").replace('"', "\\\""),
        event.id().replace('\\', "\\\\").replace('"', "\\\"")
    );
    if let Ok(v) = HeaderValue::try_from(key) {
        headers.insert("idempotency-key", v);
    }
    let id = jobs::new_id().ok_or_else(|| {
        JobError::Store(jobs::StoreError::Failed(
            "no randomness for a job id".into(),
        ))
    })?;
    let partition = match sub.ordering {
        Ordering::PartitionKey => event
            .attr("partitionkey")
            .map(|k| format!("{}\n{k}", sub.name)),
        Ordering::None => None,
    };
    Ok(jobs::NewJob {
        id,
        kind: jobs::Kind::Subscription,
        route: sub.name.to_string(),
        partition,
        backend: sub.backend.name.to_string(),
        consumer: None,
        idempotency: None,
        request: jobs::StoredRequest {
            method: "POST".into(),
            target: sub.path.clone(),
            headers: jobs::encode_headers(&headers),
            body,
            host: None,
        },
        traceparent: traceparent.map(str::to_owned),
        policy: jobs::policy_of(&sub.delivery),
        now,
    })
}
