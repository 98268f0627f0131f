//! The worker's HTTP endpoints: `/health`, `/ready`, `/metrics`, `/tasks`,
//! `/state/<store>/<key>` (answered by any worker: `query`, routed by `route`) and `/cluster`
//! (`cluster`).

mod cluster;
mod query;
mod route;

pub(crate) use query::{agent, Cluster};
pub(crate) use route::KeyRouter;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
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
    cluster: Arc<Cluster>,
}

/// The router, separate from serving so tests can call it directly.
fn router(status: Arc<StatusBoard>, metrics: Metrics, cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/tasks", get(tasks))
        .route("/state/{store}/{key}", get(query::state_value))
        .route("/cluster", get(cluster::cluster))
        .with_state(AppState {
            status,
            metrics,
            cluster,
        })
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

/// Binds `addr` (before the members start, so that the bound port can be advertised in their
/// client ids): the listener and its address (useful with port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// The address other workers reach this one at: `http.advertised`, or else the bound address,
/// with this host's name when it is bound to every interface (`0.0.0.0`, `::`).
pub fn advertised(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(a) = configured {
        return a.to_string();
    }
    if bound.ip().is_unspecified() {
        if let Some(host) = host_name() {
            return format!("{host}:{}", bound.port());
        }
    }
    bound.to_string()
}

/// This machine's host name.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Serves on `listener` until `shutdown` fires; returns the server task.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<StatusBoard>,
    metrics: Metrics,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bound = listener.local_addr().ok();
    let app = router(status, metrics, cluster);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    if let Some(bound) = bound {
        tracing::info!(addr = %bound, "HTTP listening");
    }
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_defaults_to_the_bound_one() {
        let bound: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        assert_eq!(advertised(None, bound), "127.0.0.1:40123");
        assert_eq!(advertised(Some("w1:9464"), bound), "w1:9464");
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let host = host_name().expect("this machine has a host name");
        assert_eq!(advertised(None, any), format!("{host}:9464"));
        assert_eq!(advertised(None, "[::1]:5".parse().unwrap()), "[::1]:5");
    }
}
