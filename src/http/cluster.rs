//! `GET /cluster`: every worker of the group (from the group's description, see
//! [`crate::cluster`]) with its address, members, assigned partitions, active, standby and
//! restoring tasks and lag; each worker's `/tasks` is fetched from it (this worker's own is
//! read in place). `tributary top` reads this JSON; keep its field names.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use crate::cluster::WorkerView;

/// One worker as `/cluster` shows it.
#[derive(Debug, Serialize)]
struct WorkerEntry {
    /// Its advertised HTTP address.
    address: String,
    /// Its consumers' member ids.
    member_ids: Vec<String>,
    /// Its assigned source partitions.
    partitions: Vec<PartitionEntry>,
    /// The tasks of its assigned partitions (`<topology>_<partition>`), by the group's view.
    active: Vec<String>,
    /// Its standby tasks, from its `/tasks`.
    standby: Vec<String>,
    /// Its tasks still restoring, from its `/tasks`.
    restoring: Vec<String>,
    /// The sum of the `lag` of its active (running and restoring) tasks, from its `/tasks`;
    /// `null` when it did not answer.
    lag: Option<i64>,
    /// Its `/tasks` array; `null` when it did not answer.
    tasks: Option<Value>,
    /// Why its `/tasks` could not be read, or `null`.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct PartitionEntry {
    topic: String,
    partition: i32,
}

/// `GET /cluster`.
pub(crate) async fn cluster(State(s): State<AppState>) -> Response {
    let own = s.cluster.watch.own_address().to_string();
    let view = s.cluster.watch.current();
    let workers: Vec<WorkerView> = view.map(|v| v.workers.clone()).unwrap_or_default();
    let fetches = workers.iter().map(|w| {
        let s = s.clone();
        let addr = w.address.clone();
        let own = own.clone();
        async move {
            if addr == own {
                return serde_json::to_value(s.status.tasks()).map_err(|e| e.to_string());
            }
            let permit = s
                .cluster
                .outbound()
                .ok_or_else(|| "too many requests to other workers under way".to_string())?;
            let agent = s.cluster.agent.clone();
            tokio::task::spawn_blocking(move || {
                let tasks = fetch_tasks(&agent, &addr);
                drop(permit);
                tasks
            })
            .await
            .map_err(|e| e.to_string())?
        }
    });
    let tasks = futures::future::join_all(fetches).await;
    let entries: Vec<WorkerEntry> = workers
        .into_iter()
        .zip(tasks)
        .map(|(w, tasks)| entry(&s, w, tasks))
        .collect();
    Json(serde_json::json!({
        "group": s.cluster.group,
        "served_by": own,
        "problem": s.cluster.watch.problem().or_else(|| {
            (s.cluster.watch.current().is_none())
                .then(|| "the group has not been read yet".to_string())
        }),
        "workers": entries,
    }))
    .into_response()
}

/// `GET http://<addr>/tasks`.
fn fetch_tasks(agent: &ureq::Agent, addr: &str) -> Result<Value, String> {
    let mut resp = agent
        .get(&format!("http://{addr}/tasks"))
        .call()
        .map_err(|e| format!("GET http://{addr}/tasks: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "GET http://{addr}/tasks answered {}",
            resp.status()
        ));
    }
    resp.body_mut()
        .read_json()
        .map_err(|e| format!("GET http://{addr}/tasks: {e}"))
}

fn entry(s: &AppState, w: WorkerView, tasks: Result<Value, String>) -> WorkerEntry {
    let mut active: Vec<_> = w
        .partitions
        .iter()
        .filter_map(|(topic, p)| s.cluster.keys.get()?.task_of(topic, *p))
        .collect();
    active.sort();
    active.dedup();
    let (tasks, error) = match tasks {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(e)),
    };
    let list = tasks.as_ref().and_then(Value::as_array);
    let ids_in = |state: &str| -> Vec<String> {
        list.into_iter()
            .flatten()
            .filter(|t| t["state"] == state)
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect()
    };
    let lag = list.map(|l| {
        l.iter()
            .filter(|t| t["state"] != "standby")
            .filter_map(|t| t["lag"].as_i64())
            .sum()
    });
    WorkerEntry {
        address: w.address,
        member_ids: w.member_ids,
        partitions: w
            .partitions
            .into_iter()
            .map(|(topic, partition)| PartitionEntry { topic, partition })
            .collect(),
        active: active.iter().map(ToString::to_string).collect(),
        standby: ids_in("standby"),
        restoring: ids_in("restoring"),
        lag,
        tasks,
        error,
    }
}
