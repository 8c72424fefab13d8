//! The one place where an error becomes an HTTP answer: RFC 9457 problem+json.
//!
//! Each module has its own error enum carrying the facts; here they are mapped
//! exhaustively (no catch-all arm) to a status, headers and one body shape.
//! The client sees a short public detail; the full internal reason travels in
//! a response extension to the access log and never to the client.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::aggregate::{AggregateError, Failure, X_FNGATE_COMPLETED, X_FNGATE_FAILED};
use crate::auth::{AuthError, Challenge};
use crate::body::Body;
use crate::events::PublishError;
use crate::jobs::{JobError, X_FNGATE_JOB_ID, X_FNGATE_JOB_STATE};
use crate::ratelimit::RateLimited;
use crate::router::RouteError;
use crate::uploads::UploadError;
use crate::upstream::{Unavailable, UpstreamError};

/// Why fngate itself answered with an error, for the access log.
#[derive(Debug, Clone)]
pub(crate) struct ErrorDetail(pub Arc<str>);

/// Every error the data path renders.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Publish(#[from] crate::events::PublishError),
    #[error(transparent)]
    Upload(#[from] crate::uploads::UploadError),
    /// A request reached the dispatcher without a route: a bug in the stack.
    #[error("the request reached the dispatcher unrouted")]
    Unrouted,
    /// A stored request's own task panicked: a bug.
    #[error("the request's task failed")]
    TaskFailed,
}

struct Problem {
    status: StatusCode,
    detail: String,
    allow: Option<HeaderValue>,
    retry_after: Option<u64>,
    challenge: Option<String>,
    close: bool,
    /// The aggregate call that failed (SPEC §3: the body's `call` member).
    call: Option<Arc<str>>,
    /// Every failed aggregate call (`x-fngate-failed`).
    failed: Option<HeaderValue>,
    /// A dead job's id (`x-fngate-job-id`, with `x-fngate-job-state: dead`).
    dead_job: Option<HeaderValue>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            allow: None,
            retry_after: None,
            challenge: None,
            close: false,
            call: None,
            failed: None,
            dead_job: None,
        }
    }
}

fn job_problem(e: &JobError) -> Problem {
    match e {
        JobError::Store(_) => Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the job store cannot take the job now",
            )
        },
        JobError::Draining => Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway is shutting down and takes no new jobs",
            )
        },
        JobError::BadKey(why) => {
            Problem::new(StatusCode::BAD_REQUEST, format!("Idempotency-Key is {why}"))
        }
        JobError::KeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a request with another method, path or body",
        ),
        JobError::NotFound => Problem::new(StatusCode::NOT_FOUND, "no such job"),
        JobError::Finished => Problem::new(
            StatusCode::CONFLICT,
            "the job has finished and cannot be cancelled",
        ),
        JobError::Method => Problem {
            allow: Some(HeaderValue::from_static("GET, HEAD, DELETE")),
            ..Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "a job is read with GET and cancelled with DELETE",
            )
        },
        JobError::Dead { id, timed_out } => Problem {
            dead_job: HeaderValue::try_from(id.as_str()).ok(),
            ..if *timed_out {
                Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the job is dead: its function did not answer in time",
                )
            } else {
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "the job is dead: its function never answered",
                )
            }
        },
        JobError::Body(e) => upstream_problem(e),
    }
}

fn problem_of(err: &Error) -> Problem {
    match err {
        Error::Job(e) => job_problem(e),
        Error::Upload(e) => match e {
            UploadError::Key(_) => Problem::new(StatusCode::BAD_REQUEST, e.to_string()),
            UploadError::TooLarge { .. } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            UploadError::Aborted(_) => Problem::new(StatusCode::BAD_REQUEST, e.to_string()),
            UploadError::Disk(_) => Problem {
                retry_after: Some(1),
                ..Problem::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            },
            UploadError::Job(e) => job_problem(e),
            UploadError::Forbidden => Problem::new(StatusCode::FORBIDDEN, e.to_string()),
            UploadError::NoFile => Problem::new(StatusCode::NOT_FOUND, e.to_string()),
            UploadError::Method => Problem {
                allow: Some(HeaderValue::from_static("GET, HEAD")),
                ..Problem::new(StatusCode::METHOD_NOT_ALLOWED, e.to_string())
            },
        },
        Error::Publish(e) => match e {
            PublishError::Event(e) => Problem::new(StatusCode::BAD_REQUEST, e.to_string()),
            PublishError::Json(_) | PublishError::EmptyBatch => {
                Problem::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            PublishError::ContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{e}: send a CloudEvent in binary mode (ce-* headers), \
                     application/cloudevents+json, application/cloudevents-batch+json or application/json"
                ),
            ),
            PublishError::Job(e) => job_problem(e),
        },
        Error::Aggregate(e) => Problem {
            call: Some(e.call.clone()),
            failed: Some(e.failed.clone()),
            ..match e.failure {
                Failure::Timeout => Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the required call `{}` did not answer in time", e.call),
                ),
                Failure::Error | Failure::Skipped => Problem::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the required call `{}` failed", e.call),
                ),
            }
        },
        // RFC 6750 §3; API-key policies challenge with their own scheme.
        Error::Auth(e) => match e {
            AuthError::Missing { challenge } => Problem {
                challenge: Some(realm(*challenge)),
                ..Problem::new(StatusCode::UNAUTHORIZED, "this route needs credentials")
            },
            AuthError::Invalid { challenge: Challenge::Key, reason } => Problem {
                challenge: Some(realm(Challenge::Key)),
                ..Problem::new(StatusCode::UNAUTHORIZED, reason.describe())
            },
            AuthError::Invalid {
                challenge: Challenge::Bearer,
                reason,
            } => Problem {
                challenge: Some(format!(
                    "{}, error=\"invalid_token\", error_description=\"{}\"",
                    realm(Challenge::Bearer),
                    reason.describe()
                )),
                ..Problem::new(StatusCode::UNAUTHORIZED, reason.describe())
            },
            AuthError::InsufficientScope { required, missing } => Problem {
                challenge: Some(format!(
                    "{}, error=\"insufficient_scope\", error_description=\"the token lacks a required scope\", scope=\"{required}\"",
                    realm(Challenge::Bearer)
                )),
                ..Problem::new(
                    StatusCode::FORBIDDEN,
                    format!("the token lacks scope {missing}"),
                )
            },
        },
        Error::RateLimited(e) if e.unavailable => Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "rate limit `{}` cannot be checked: its store is unreachable",
                    e.policy
                ),
            )
        },
        Error::RateLimited(e) => Problem {
            retry_after: Some(e.retry_after.max(1)),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit `{}` exceeded", e.policy),
            )
        },
        Error::Route(e) => match e {
            RouteError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "no route matches this request")
            }
            RouteError::MethodNotAllowed { allow } => Problem {
                allow: Some(allow.clone()),
                ..Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "this path does not accept this method",
                )
            },
            // A client this confused about its target gets no second request on the connection.
            RouteError::HostMismatch { .. } => Problem {
                close: true,
                ..Problem::new(
                    StatusCode::BAD_REQUEST,
                    "the Host header differs from the request target",
                )
            },
            RouteError::UnknownTopic(_) => Problem::new(StatusCode::NOT_FOUND, e.to_string()),
            RouteError::MissingHost => Problem {
                close: true,
                ..Problem::new(StatusCode::BAD_REQUEST, "the request has no Host header")
            },
            RouteError::BadPath(p) => {
                Problem::new(StatusCode::BAD_REQUEST, format!("unsafe path: {p}"))
            }
        },
        Error::Unrouted | Error::TaskFailed => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the gateway could not handle this request",
        ),
        Error::Upstream(e) => upstream_problem(e),
    }
}

fn upstream_problem(e: &UpstreamError) -> Problem {
    match e {
        UpstreamError::BodyTooLarge { limit } => Problem {
            close: true,
            ..Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {limit} bytes"),
            )
        },
        UpstreamError::ClientBody(_) => Problem {
            close: true,
            ..Problem::new(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        },
        UpstreamError::Connect { backend, .. }
        | UpstreamError::Failed { backend, .. }
        | UpstreamError::UnexpectedSwitch { backend, .. }
        | UpstreamError::AnswerBody { backend, .. }
        | UpstreamError::BadTarget { backend, .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            format!("the upstream `{backend}` failed"),
        ),
        UpstreamError::Unavailable { backend, reason } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            match reason {
                Unavailable::MaxInFlight => format!("the upstream `{backend}` has no capacity now"),
                Unavailable::NoHealthyEndpoint => {
                    format!("the upstream `{backend}` has no healthy endpoint now")
                }
            },
        ),
        UpstreamError::Timeout { backend } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the upstream `{backend}` did not answer in time"),
        ),
    }
}

/// The one shape of every problem body, the admin API's included (RFC 9457).
pub(crate) fn problem_body(status: StatusCode, detail: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
}

/// Renders `err` as problem+json, with the request id when there is one.
pub(crate) fn respond(err: impl Into<Error>, request_id: Option<&HeaderValue>) -> Response<Body> {
    let err = err.into();
    let p = problem_of(&err);
    let mut body = problem_body(p.status, &p.detail);
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        body["request_id"] = serde_json::Value::from(id);
    }
    if let Some(call) = &p.call {
        body["call"] = serde_json::Value::from(&**call);
    }
    let mut res = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *res.status_mut() = p.status;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(allow) = p.allow {
        headers.insert(ALLOW, allow);
    }
    if let Some(secs) = p.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(c) = p.challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
        headers.insert(WWW_AUTHENTICATE, c);
    }
    if p.close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(failed) = p.failed {
        headers.insert(
            X_FNGATE_COMPLETED.clone(),
            HeaderValue::from_static("false"),
        );
        headers.insert(X_FNGATE_FAILED.clone(), failed);
    }
    if let Some(id) = p.dead_job {
        headers.insert(X_FNGATE_JOB_ID.clone(), id);
        headers.insert(X_FNGATE_JOB_STATE.clone(), HeaderValue::from_static("dead"));
    }
    res.extensions_mut()
        .insert(ErrorDetail(err.to_string().into()));
    res
}

fn realm(challenge: Challenge) -> String {
    match challenge {
        Challenge::Bearer => "Bearer realm=\"fngate\"".to_owned(),
        Challenge::Key => "Key realm=\"fngate\"".to_owned(),
    }
}
