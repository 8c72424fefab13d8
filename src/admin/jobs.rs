//! The admin API's jobs (SPEC §11): list, inspect with every attempt,
//! redrive a dead job, purge one.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AdminError, AdminState, Problem, Result};
use crate::jobs::{status_document, time, Job, JobState, ListFilter, Redrive};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(get_one).delete(purge))
        .route("/jobs/{id}/redrive", post(redrive))
        .route("/subscriptions/{name}/resume", post(resume))
        .route("/schedules/{name}/run", post(run_schedule))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// queued, running, retrying, succeeded or dead
    state: Option<String>,
    /// Only this route's jobs
    route: Option<String>,
    /// At most this many (default 100, at most 1000)
    limit: Option<usize>,
}

/// A job as operators see it: the status document, and where it goes, who
/// made it, how its attempts went and what its function answered.
fn detail(job: &Job) -> serde_json::Value {
    let mut doc = status_document(job);
    doc["backend"] = job.backend.clone().into();
    doc["consumer"] = job.consumer.clone().into();
    doc["result_status"] = job.result.as_ref().map(|r| r.status).into();
    doc["attempt_log"] = job
        .log
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.n,
                "at": time(a.at),
                "status": a.status,
                "duration_ms": a.duration_ms,
                "error": a.error,
            })
        })
        .collect();
    doc
}

fn store_error(e: crate::jobs::StoreError) -> AdminError {
    AdminError::JobStore(e.to_string())
}

#[utoipa::path(get, path = "/jobs", security(("bearer" = [])), params(ListQuery), responses(
    (status = 200, description = "Jobs, newest first; dead ones with their attempts", body = Object),
    (status = 400, body = Problem, content_type = "application/problem+json"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "The job store is not available", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list(
    AxumState(admin): AxumState<AdminState>,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>> {
    // A malformed query is a problem+json 400 like every other refusal.
    let Query(q) = query.map_err(|e| AdminError::BadQuery(e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            AdminError::BadQuery(format!(
                "state `{s}` is not one of queued, running, retrying, succeeded, dead"
            ))
        })?),
    };
    let filter = ListFilter {
        state,
        route: q.route.filter(|r| !r.is_empty()),
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let jobs = admin.jobs.list(filter).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({
        "jobs": jobs.iter().map(detail).collect::<Vec<_>>(),
    })))
}

#[utoipa::path(get, path = "/jobs/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id")), responses(
    (status = 200, description = "The job with every attempt (time, status, duration, error)", body = Object),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn get_one(
    AxumState(admin): AxumState<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    match admin.jobs.get(&id, true).await.map_err(store_error)? {
        Some(job) => Ok(Json(detail(&job))),
        None => Err(AdminError::NoJob(id)),
    }
}

#[utoipa::path(post, path = "/jobs/{id}/redrive", security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id")), responses(
    (status = 202, description = "The dead job is queued again, its attempts reset", body = Object),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "The job is not dead", body = Problem, content_type = "application/problem+json"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn redrive(
    AxumState(admin): AxumState<AdminState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    match admin.jobs.redrive(&id).await.map_err(store_error)? {
        Redrive::Queued => {
            let job = admin.jobs.get(&id, true).await.map_err(store_error)?;
            let body = job.as_ref().map(detail).unwrap_or_default();
            Ok((StatusCode::ACCEPTED, Json(body)))
        }
        Redrive::NotDead => Err(AdminError::NotDead(id)),
        Redrive::Missing => Err(AdminError::NoJob(id)),
    }
}

#[utoipa::path(delete, path = "/jobs/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id")), responses(
    (status = 204, description = "Purged; an attempt in flight is aborted"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn purge(
    AxumState(admin): AxumState<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    if admin.jobs.purge(&id).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NoJob(id))
    }
}

#[utoipa::path(post, path = "/subscriptions/{name}/resume", tag = "subscriptions", security(("bearer" = [])),
    params(("name" = String, Path, description = "The subscription")), responses(
    (status = 200, description = "Delivering again; `was_paused` says whether it had been", body = Object),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn resume(
    AxumState(admin): AxumState<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    if admin.state.load().config.subscription(&name).is_none() {
        return Err(AdminError::NotFound {
            kind: "subscriptions",
            name,
        });
    }
    let was = admin.jobs.resume(&name).await.map_err(store_error)?;
    Ok(Json(
        serde_json::json!({"name": name, "paused": false, "was_paused": was}),
    ))
}

#[utoipa::path(post, path = "/schedules/{name}/run", tag = "schedules", security(("bearer" = [])),
    params(("name" = String, Path, description = "The schedule")), responses(
    (status = 202, description = "A run was stored (`{name}@manual-{id}`), a disabled schedule's too", body = Object),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn run_schedule(
    AxumState(admin): AxumState<AdminState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>)> {
    let running = admin.state.load();
    let Some(schedule) = running.config.schedule(&name) else {
        return Err(AdminError::NotFound {
            kind: "schedules",
            name,
        });
    };
    let id = crate::schedules::run_now(&admin.jobs, schedule)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"id": id}))))
}
