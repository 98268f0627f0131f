//! The worker's HTTP endpoints: `/health`, `/ready`, `/metrics`, `/tasks` and
//! `/state/<store>/<key>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::status::StatusBoard;
use crate::task::TaskState;

#[derive(Clone)]
struct AppState {
    status: Arc<StatusBoard>,
    metrics: Metrics,
}

/// The router, separate from serving so tests can call it directly.
fn router(status: Arc<StatusBoard>, metrics: Metrics) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/tasks", get(tasks))
        .route("/state/{store}/{key}", get(state_value))
        .with_state(AppState { status, metrics })
}

async fn ready(State(s): State<AppState>) -> Response {
    match s.status.not_ready() {
        None => Json(serde_json::json!({ "ready": true })).into_response(),
        Some(nr) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": nr.reason })),
        )
            .into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    // Gauges over all members are derived from the status board at scrape time, so several
    // members never overwrite each other's numbers.
    let tasks = s.status.tasks();
    for state in [TaskState::Restoring, TaskState::Running, TaskState::Standby] {
        let n = tasks.iter().filter(|t| t.state == state).count();
        s.metrics
            .tasks
            .with_label_values(&[state.as_str()])
            .set(n as i64);
    }
    s.metrics
        .buffered_records
        .set(tasks.iter().map(|t| t.queued as i64).sum());
    s.metrics.paused_partitions.set(s.status.paused() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn tasks(State(s): State<AppState>) -> Response {
    Json(s.status.tasks()).into_response()
}

async fn state_value(
    State(s): State<AppState>,
    Path((store, key)): Path<(String, String)>,
) -> Response {
    let not_found = |msg: String| {
        (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    if !s.status.has_store(&store) {
        return not_found(format!("no local task has a store named {store:?}"));
    }
    match s.status.lookup(&store, key.as_bytes()) {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(None) => not_found(format!(
            "key {key:?} not found in store {store:?} on this worker"
        )),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// Binds `addr` and serves until `shutdown` fires. Returns the bound address (useful with port 0)
/// and the server task.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<StatusBoard>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(status, metrics);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(addr = %bound, "HTTP listening");
    Ok((bound, handle))
}
