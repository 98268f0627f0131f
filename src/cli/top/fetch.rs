//! Reading the group over HTTP for `tributary top`: `/cluster` from the address given, then
//! `/metrics` from every worker it lists (in parallel, so one slow worker does not hold up the
//! others); when the worker has no `/cluster` (an older version, answering 404), its own
//! `/tasks` and `/metrics`.

use std::time::{Duration, Instant};

use super::model::{
    worker_from_tasks, worker_metrics, ClusterDoc, GroupRead, Read, Source, TaskDoc, WorkerMetrics,
    WorkerRead,
};

/// Reads the workers' HTTP endpoints.
#[derive(Debug, Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
}

/// A failed request: the status of an answer that was not 2xx, or why there was none.
#[derive(Debug)]
enum GetError {
    Status(u16),
    Transport(String),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(code) => write!(f, "HTTP {code}"),
            Self::Transport(why) => f.write_str(why),
        }
    }
}

/// `http://<address>` unless the address already names a scheme.
fn base_url(address: &str) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.trim_end_matches('/').to_string()
    } else {
        format!("http://{address}")
    }
}

impl Fetcher {
    /// A fetcher whose requests give up after `timeout` each.
    pub fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self { agent }
    }

    fn get(&self, address: &str, path: &str) -> Result<String, GetError> {
        let url = format!("{}{path}", base_url(address));
        let mut answer = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| GetError::Transport(e.to_string()))?;
        let status = answer.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(GetError::Status(status));
        }
        answer
            .body_mut()
            .read_to_string()
            .map_err(|e| GetError::Transport(e.to_string()))
    }

    fn metrics(&self, address: &str) -> Result<WorkerMetrics, String> {
        self.get(address, "/metrics")
            .map(|text| worker_metrics(&text))
            .map_err(|e| format!("{address}/metrics: {e}"))
    }

    /// One refresh of the group as seen from `address`.
    pub fn read(&self, address: &str) -> Read {
        let result = self.read_group(address);
        Read {
            at: Instant::now(),
            address: address.to_string(),
            result,
        }
    }

    fn read_group(&self, address: &str) -> Result<GroupRead, String> {
        match self.get(address, "/cluster") {
            Ok(body) => {
                let doc: ClusterDoc = serde_json::from_str(&body)
                    .map_err(|e| format!("{address}/cluster: not the expected JSON: {e}"))?;
                // Every worker's /metrics at once; an unreachable one costs one timeout.
                let metrics: Vec<Result<WorkerMetrics, String>> = std::thread::scope(|s| {
                    let handles: Vec<_> = doc
                        .workers
                        .iter()
                        .map(|w| s.spawn(|| self.metrics(&w.address)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err("reading /metrics panicked".into()))
                        })
                        .collect()
                });
                Ok(GroupRead {
                    source: Source::Cluster,
                    group: Some(doc.group),
                    served_by: doc.served_by,
                    workers: doc
                        .workers
                        .into_iter()
                        .zip(metrics)
                        .map(|(worker, metrics)| WorkerRead { worker, metrics })
                        .collect(),
                })
            }
            Err(GetError::Status(404)) => {
                let tasks: Vec<TaskDoc> = match self.get(address, "/tasks") {
                    Ok(body) => serde_json::from_str(&body)
                        .map_err(|e| format!("{address}/tasks: not the expected JSON: {e}"))?,
                    Err(e) => return Err(format!("{address}/tasks: {e}")),
                };
                Ok(GroupRead {
                    source: Source::OneWorker,
                    group: None,
                    served_by: address.to_string(),
                    workers: vec![WorkerRead {
                        worker: worker_from_tasks(address, tasks),
                        metrics: self.metrics(address),
                    }],
                })
            }
            Err(e) => Err(format!("{address}/cluster: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A loopback HTTP server answering each path with a canned (status, body); 404 for the
    /// rest. Serves until the test process ends.
    fn serve(answers: HashMap<&'static str, (u16, String)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = answers
                    .get(path)
                    .cloned()
                    .unwrap_or((404, "not found".into()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        address
    }

    /// An address nothing listens on.
    fn closed_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    const TASKS: &str = r#"[{"id": "totals_0", "topology": "totals", "partition": 0,
        "state": "running", "positions": {"clicks": 42}, "queued": 0, "restore_remaining": 0,
        "lag": 3, "checkpoints": {"app-totals-changelog": 7}, "member": 0,
        "guarantee": "at_least_once"}]"#;

    #[test]
    fn a_worker_without_cluster_is_shown_alone_from_its_tasks_and_metrics() {
        let address = serve(HashMap::from([
            ("/tasks", (200, TASKS.to_string())),
            (
                "/metrics",
                (
                    200,
                    "tributary_records_dead_lettered_total{topic=\"clicks\"} 2\n".to_string(),
                ),
            ),
        ]));
        let read = Fetcher::new(Duration::from_secs(5)).read(&address);
        let group = read.result.expect("read");
        assert_eq!(group.source, Source::OneWorker);
        assert_eq!(group.workers.len(), 1);
        let w = &group.workers[0];
        assert_eq!(w.worker.address, address);
        assert_eq!(w.worker.active, ["totals_0"]);
        assert_eq!(w.worker.lag, Some(3));
        assert_eq!(w.metrics.as_ref().map(|m| m.dead_letters), Ok(2));
    }

    #[test]
    fn cluster_lists_every_worker_and_an_unreachable_one_is_marked() {
        let other = serve(HashMap::from([(
            "/metrics",
            (
                200,
                "tributary_records_dead_lettered_total{topic=\"clicks\"} 5\n".to_string(),
            ),
        )]));
        let gone = closed_address();
        let cluster = format!(
            r#"{{"group": "clicks", "served_by": "{other}", "workers": [
                {{"address": "{other}", "member_ids": ["a"], "partitions":
                  [{{"topic": "clicks", "partition": 0}}], "active": ["totals_0"],
                  "standby": [], "restoring": [], "lag": 3, "tasks": {TASKS}, "error": null}},
                {{"address": "{gone}", "member_ids": ["b"], "partitions": [],
                  "active": [], "standby": [], "restoring": [], "lag": 0, "tasks": null,
                  "error": "connection refused"}}]}}"#
        );
        let address = serve(HashMap::from([("/cluster", (200, cluster))]));
        let read = Fetcher::new(Duration::from_secs(5)).read(&address);
        let group = read.result.expect("read");
        assert_eq!(group.source, Source::Cluster);
        assert_eq!(group.group.as_deref(), Some("clicks"));
        assert_eq!(group.workers.len(), 2);
        assert_eq!(
            group.workers[0].metrics.as_ref().map(|m| m.dead_letters),
            Ok(5)
        );
        assert!(group.workers[1].worker.tasks.is_none());
        let err = group.workers[1].metrics.as_ref().expect_err("unreachable");
        assert!(err.contains(&gone), "{err}");
    }

    #[test]
    fn an_unreachable_address_is_an_error_naming_it() {
        let gone = closed_address();
        let read = Fetcher::new(Duration::from_secs(5)).read(&gone);
        let err = read.result.expect_err("nothing listens");
        assert!(err.contains(&gone), "{err}");
    }

    #[test]
    fn an_error_status_is_named() {
        let address = serve(HashMap::from([("/cluster", (500, "boom".to_string()))]));
        let err = Fetcher::new(Duration::from_secs(5))
            .read(&address)
            .result
            .expect_err("500");
        assert!(err.contains("HTTP 500"), "{err}");
    }
}
