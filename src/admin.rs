//! The admin listener (SPEC §5). It reads and swaps state; the data path never
//! imports it. This release serves health, readiness and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;

#[derive(Debug, Clone)]
pub struct AdminState {
    state: Arc<State>,
    /// False once a shutdown has begun: load balancers stop sending traffic.
    ready: Arc<AtomicBool>,
}

impl AdminState {
    pub fn new(state: Arc<State>, ready: Arc<AtomicBool>) -> Self {
        Self { state, ready }
    }
}

pub fn router(admin: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

pub async fn serve(listener: TcpListener, admin: AdminState, stop: CancellationToken) {
    let served = axum::serve(listener, router(admin))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("admin listener failed: {e}");
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(AxumState(admin): AxumState<AdminState>) -> impl IntoResponse {
    let version = admin.state.load().version;
    if admin.ready.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready", "config_version": version })),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "draining", "config_version": version })),
        )
    }
}

async fn metrics(AxumState(admin): AxumState<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.state.metrics.encode(),
    )
}
