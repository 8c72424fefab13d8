//! What a client reads about its job: the status document while it is
//! pending, the function's answer once it finished (SPEC §7 "Status and result").

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::store::{decode_headers, Job, JobState, Millis};
use super::{Cancel, JobError, Jobs};
use crate::auth::Verified;
use crate::body::Body;
use crate::config::Server;
use crate::state::Snapshot;

pub(crate) static X_FNGATE_JOB_ID: HeaderName = HeaderName::from_static("x-fngate-job-id");
pub(crate) static X_FNGATE_JOB_STATE: HeaderName = HeaderName::from_static("x-fngate-job-state");

/// A request for `{jobs_path}/{id}`: the route layer found the job and routed
/// the request as the job's route, so that route's authentication applies.
#[derive(Debug, Clone)]
pub(crate) struct JobRequest {
    pub(crate) job: Job,
    /// The config the request was routed in (for `jobs_path`).
    pub(crate) snapshot: Arc<Snapshot>,
}

pub(crate) fn time(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `{"id","route","state","attempts","created","updated","next_attempt","last_error"}`.
pub(crate) fn status_document(job: &Job) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "route": job.route,
        "state": job.state.as_str(),
        "attempts": job.attempts,
        "created": time(job.created),
        "updated": time(job.updated),
        "next_attempt": job.next_attempt.map(time),
        "last_error": job.last_error,
    })
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn location(server: &Server, id: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("{}/{id}", server.jobs_path)).ok()
}

/// `202 Accepted` with the status document: the job is pending.
pub(crate) fn accepted(job: &Job, server: &Server, asked_async: bool) -> Response<Body> {
    let mut res = Response::new(body(status_document(job).to_string()));
    *res.status_mut() = StatusCode::ACCEPTED;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    if let Some(l) = location(server, &job.id) {
        h.insert(LOCATION, l);
    }
    if let Ok(id) = HeaderValue::try_from(&job.id) {
        h.insert(X_FNGATE_JOB_ID.clone(), id);
    }
    if asked_async {
        h.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    res
}

/// A finished job's answer as the client would have had it synchronously;
/// the 202 while it is pending.
pub(crate) fn result_of(
    job: Job,
    server: &Server,
    applied: Option<HeaderValue>,
) -> Result<Response<Body>, JobError> {
    if !job.state.finished() {
        return Ok(accepted(&job, server, false));
    }
    let Some(result) = job.result else {
        return Err(JobError::Dead {
            id: job.id,
            timed_out: job.timed_out,
        });
    };
    let mut res = Response::new(body(result.body));
    *res.status_mut() = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *res.headers_mut() = decode_headers(&result.headers);
    let h = res.headers_mut();
    if let Ok(id) = HeaderValue::try_from(&job.id) {
        h.insert(X_FNGATE_JOB_ID.clone(), id);
    }
    h.insert(
        X_FNGATE_JOB_STATE.clone(),
        HeaderValue::from_static(if job.state == JobState::Succeeded {
            "succeeded"
        } else {
            "dead"
        }),
    );
    if let Some(a) = applied {
        h.insert("preference-applied", a);
    }
    Ok(res)
}

/// `GET` or `DELETE {jobs_path}/{id}`, after the job's route let the request in.
pub(crate) async fn job_answer(
    jobs: &Jobs,
    req: Request<Body>,
) -> Result<Response<Body>, JobError> {
    let (parts, _) = req.into_parts();
    let Some(JobRequest { job, snapshot }) = parts.extensions.get::<JobRequest>().cloned() else {
        return Err(JobError::NotFound);
    };
    let server = &snapshot.config.server;
    // The consumer that made the job, or nobody: another consumer learns nothing.
    let caller = parts
        .extensions
        .get::<Arc<Verified>>()
        .and_then(|v| v.consumer.as_deref());
    if job.consumer.is_some() && job.consumer.as_deref() != caller {
        return Err(JobError::NotFound);
    }
    match parts.method {
        Method::GET | Method::HEAD => {
            // `Prefer: wait=N` on a poll too: answer as soon as the job finishes.
            let wait = super::accept::prefer(&parts.headers)
                .wait
                .map(|n| Duration::from_secs(n.min(60)))
                .filter(|w| !w.is_zero());
            let Some(wait) = wait.filter(|_| !job.state.finished()) else {
                // The route layer read the job just now.
                return result_of(job, server, None);
            };
            let job = jobs
                .finished_within(&job.id, wait)
                .await?
                .ok_or(JobError::NotFound)?;
            let applied = job
                .state
                .finished()
                .then(|| HeaderValue::try_from(format!("wait={}", wait.as_secs())).ok())
                .flatten();
            result_of(job, server, applied)
        }
        Method::DELETE => match jobs.cancel(&job.id, &job.route).await? {
            Cancel::Cancelled => {
                let mut res = Response::new(body(Bytes::new()));
                *res.status_mut() = StatusCode::NO_CONTENT;
                Ok(res)
            }
            Cancel::Finished => Err(JobError::Finished),
            Cancel::Missing => Err(JobError::NotFound),
        },
        _ => Err(JobError::Method),
    }
}
