//! The worker's HTTP endpoints: `/health`, `/ready`, `/metrics`, `/tasks`,
//! `/state/<store>/<key>` (answered by any worker: `query`, routed by `route`) and `/cluster`
//! (`cluster`).

mod cluster;
mod query;
mod route;

pub(crate) use query::{agent, Cluster, MAX_OUTBOUND};
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
    use crate::cluster::{ClusterView, ClusterWatch, GroupMember};
    use crate::processor::{Nothing, Topology};
    use crate::status::{MemberStatus, TaskState, TaskStatus};
    use crate::types::TaskId;

    /// One worker's HTTP server, in process: its status board, its view of the group.
    struct Server {
        addr: String,
        status: Arc<StatusBoard>,
        watch: Arc<ClusterWatch>,
        _stop: tokio_util::sync::DropGuard,
    }

    async fn server() -> Server {
        let (listener, bound) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = advertised(None, bound);
        let status = Arc::new(StatusBoard::new(1));
        let watch = Arc::new(ClusterWatch::new(addr.clone()));
        let topology = Topology::new("t", ["in"], |_: &crate::TaskInfo| Nothing).store("s");
        let cluster = Arc::new(Cluster {
            watch: watch.clone(),
            keys: KeyRouter::new(&[topology], &[("in".to_string(), 4)].into()).into(),
            agent: agent(),
            group: "app".into(),
            outbound: Arc::new(tokio::sync::Semaphore::new(super::query::MAX_OUTBOUND)),
        });
        let stop = CancellationToken::new();
        serve(
            listener,
            status.clone(),
            Metrics::new(),
            cluster,
            stop.clone(),
        );
        Server {
            addr,
            status,
            watch,
            _stop: stop.drop_guard(),
        }
    }

    /// Every worker's view: `owner` holds partition `p` of `in`.
    fn owned_by(owner: &str, p: i32) -> ClusterView {
        ClusterView::from_members([GroupMember {
            member_id: "m".into(),
            client_id: crate::cluster::client_id("app", 0, Some(owner)),
            assignment: vec![("in".into(), p)],
        }])
    }

    fn running(server: &Server, p: i32, dir: &std::path::Path, value: &[u8]) {
        let db = crate::state::TaskDb::open(
            dir,
            &["s".to_string()],
            &crate::state::RocksMemory::default(),
        )
        .unwrap();
        let mut batch = db.batch();
        db.batch_put(&mut batch, 0, b"k", value);
        db.write(batch).unwrap();
        let id = TaskId {
            topology: 0,
            partition: p,
        };
        server.status.register_db(id, Arc::new(db));
        server.status.publish(
            0,
            MemberStatus {
                joined: true,
                tasks: vec![TaskStatus {
                    id: id.to_string(),
                    topology: "t".into(),
                    partition: p,
                    state: TaskState::Running,
                    positions: Default::default(),
                    queued: 0,
                    restore_remaining: 0,
                    lag: 7,
                    checkpoints: Default::default(),
                    member: 0,
                    guarantee: Default::default(),
                }],
                ..MemberStatus::default()
            },
        );
    }

    fn get(addr: &str, path: &str) -> (u16, Option<String>, String) {
        let mut r = agent().get(&format!("http://{addr}{path}")).call().unwrap();
        let by = r
            .headers()
            .get(query::SERVED_BY)
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            by,
            r.body_mut().read_to_string().unwrap(),
        )
    }

    /// A query for another worker's key is forwarded there once; the owner's answer comes
    /// back with its address. When two views disagree, the forwarded query is refused rather
    /// than bounced back.
    #[tokio::test(flavor = "multi_thread")]
    async fn queries_are_forwarded_to_the_owner_once() {
        let (a, b) = (server().await, server().await);
        let p = crate::pipeline::partitioner::partition_for_key(b"k", 4);
        let dir = tempfile::tempdir().unwrap();
        running(&b, p, dir.path(), br#"{"count":3}"#);
        a.watch.publish(owned_by(&b.addr, p));
        b.watch.publish(owned_by(&b.addr, p));

        // A key that b's task would hold, but does not.
        let absent = (0..)
            .map(|i| format!("absent-{i}"))
            .find(|k| crate::pipeline::partitioner::partition_for_key(k.as_bytes(), 4) == p)
            .unwrap();
        let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
        let answers = tokio::task::spawn_blocking(move || {
            [
                get(&a_addr, "/state/s/k"),
                get(&b_addr, "/state/s/k"),
                get(&a_addr, &format!("/state/s/{absent}")),
            ]
        })
        .await
        .unwrap();
        let value = (200, Some(b.addr.clone()), r#"{"count":3}"#.to_string());
        assert_eq!(answers[0], value, "forwarded from a");
        assert_eq!(answers[1], value, "answered by b");
        assert_eq!(
            (answers[2].0, answers[2].1.clone()),
            (404, Some(b.addr.clone())),
            "{}",
            answers[2].2
        );

        // b no longer runs the task and believes a owns it; a believes b does.
        b.status.publish(0, MemberStatus::default());
        b.watch.publish(owned_by(&a.addr, p));
        let a_addr = a.addr.clone();
        let (status, by, body) = tokio::task::spawn_blocking(move || get(&a_addr, "/state/s/k"))
            .await
            .unwrap();
        assert_eq!((status, by), (503, Some(b.addr.clone())), "{body}");
        assert!(body.contains("not the owner"), "{body}");
    }

    /// `/cluster` lists the workers of the view with their tasks, this worker's read in place
    /// and the others' fetched from them.
    #[tokio::test(flavor = "multi_thread")]
    async fn cluster_lists_every_worker_with_its_tasks() {
        let (a, b) = (server().await, server().await);
        let dir = tempfile::tempdir().unwrap();
        running(&b, 1, dir.path(), b"{}");
        let view = ClusterView::from_members([
            GroupMember {
                member_id: "ma".into(),
                client_id: crate::cluster::client_id("app", 0, Some(&a.addr)),
                assignment: vec![("in".into(), 0), ("in".into(), 2)],
            },
            GroupMember {
                member_id: "mb".into(),
                client_id: crate::cluster::client_id("app", 0, Some(&b.addr)),
                assignment: vec![("in".into(), 1)],
            },
            GroupMember {
                member_id: "mc".into(),
                client_id: crate::cluster::client_id("app", 0, Some("127.0.0.1:9")),
                assignment: vec![("in".into(), 3)],
            },
        ]);
        a.watch.publish(view);
        let a_addr = a.addr.clone();
        let (status, by, body) = tokio::task::spawn_blocking(move || get(&a_addr, "/cluster"))
            .await
            .unwrap();
        assert_eq!((status, by), (200, None));
        let c: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(c["group"], "app");
        assert_eq!(c["served_by"], a.addr.as_str());
        let workers = c["workers"].as_array().unwrap();
        let find = |addr: &str| {
            workers
                .iter()
                .find(|w| w["address"] == addr)
                .unwrap_or_else(|| panic!("{addr} in {body}"))
        };
        let (wa, wb, wc) = (find(&a.addr), find(&b.addr), find("127.0.0.1:9"));
        assert_eq!(wa["active"], serde_json::json!(["0_0", "0_2"]));
        assert_eq!(wa["member_ids"], serde_json::json!(["ma"]));
        assert_eq!(
            wa["partitions"],
            serde_json::json!([{"topic": "in", "partition": 0}, {"topic": "in", "partition": 2}])
        );
        assert_eq!(
            (wa["tasks"].clone(), wa["lag"].clone()),
            (serde_json::json!([]), 0.into())
        );
        assert_eq!(wb["active"], serde_json::json!(["0_1"]));
        assert_eq!(wb["tasks"][0]["id"], "0_1");
        assert_eq!(wb["lag"], 7);
        assert_eq!(wb["error"], serde_json::Value::Null);
        assert_eq!(wc["active"], serde_json::json!(["0_3"]));
        assert_eq!(
            (wc["tasks"].clone(), wc["lag"].clone()),
            (serde_json::Value::Null, serde_json::Value::Null)
        );
        assert!(
            wc["error"].as_str().unwrap().contains("127.0.0.1:9"),
            "{body}"
        );
    }

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
