//! One demo worker: a `tributary run` child process of this binary with its own state
//! directory, HTTP port and log file, and what its `/tasks` and `/metrics` say about it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{setup, DemoError};
use crate::cli::top::model::sum_metric;

/// The workers' log filter: librdkafka's own chatter only from warnings up (their logs go to
/// files in the demo's directory, never to the terminal).
const WORKER_LOG: &str = "info,librdkafka=warn";

/// A task of a worker as its `/tasks` shows it: the fields the demo follows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct TaskView {
    /// Its input partition.
    pub partition: i32,
    /// `restoring`, `running` or `standby`.
    pub state: String,
    /// Next offset to process, per source topic.
    #[serde(default)]
    pub positions: BTreeMap<String, i64>,
}

impl TaskView {
    /// An active task (running or restoring), as opposed to a standby.
    pub fn active(&self) -> bool {
        self.state != "standby"
    }

    /// Still reading its state from the changelog.
    pub fn restoring(&self) -> bool {
        self.state == "restoring"
    }
}

/// What a live worker's endpoints said in one read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct WorkerView {
    /// Its tasks (`/tasks`).
    pub tasks: Vec<TaskView>,
    /// Changelog records it restored since it started (`tributary_restored_records_total`).
    pub restored: u64,
    /// Changelog records its restoring tasks have yet to read (an estimate from
    /// `tributary_restore_remaining_records`, live where `/tasks` may lag behind).
    pub restore_remaining: u64,
    /// Input records its tasks processed since it started, per partition
    /// (`tributary_records_consumed_total`). The processing threads count them as they go, so
    /// they move even while the member's own thread (which publishes `/tasks`) waits for a
    /// commit or a rebalance.
    pub consumed: BTreeMap<i32, u64>,
}

/// One worker child process.
pub(super) struct DemoWorker {
    pub name: String,
    child: Child,
    http: SocketAddr,
    /// Until it is killed or has exited (and been reaped).
    pub alive: bool,
}

impl DemoWorker {
    /// Starts worker `index` (named `worker-<index + 1>`) on `config`, its state under `dir`.
    pub fn spawn(index: usize, config: &Path, dir: &Path) -> Result<Self, DemoError> {
        let name = format!("worker-{}", index + 1);
        let http = free_port()?;
        let exe = std::env::current_exe().map_err(setup("locating this binary"))?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .map_err(setup("creating a log file"))?;
        let mut command = Command::new(exe);
        // The demo's config is the whole story: a TRIBUTARY_* variable of the user's shell
        // (a bootstrap address, a guarantee) would change what it shows.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TRIBUTARY_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(["run", "-c"])
            .arg(config)
            .env("TRIBUTARY_STATE__DIR", dir.join(&name))
            .env("TRIBUTARY_HTTP__LISTEN", http.to_string())
            .env("RUST_LOG", WORKER_LOG)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(setup("cloning a log file"))?)
            .stderr(log)
            .spawn()
            .map_err(setup("starting a worker"))?;
        Ok(Self {
            name,
            child,
            http,
            alive: true,
        })
    }

    /// Its tasks and counters of `topic`'s records, if it answers both.
    pub fn read(&self, topic: &str) -> Option<WorkerView> {
        let tasks: Vec<TaskView> = serde_json::from_str(&http_get(self.http, "/tasks")?).ok()?;
        let metrics = http_get(self.http, "/metrics")?;
        let restored = sum_metric(&metrics, "tributary_restored_records_total").unwrap_or(0.0);
        let remaining = sum_metric(&metrics, "tributary_restore_remaining_records").unwrap_or(0.0);
        Some(WorkerView {
            tasks,
            restored: restored.max(0.0) as u64,
            restore_remaining: remaining.max(0.0) as u64,
            consumed: consumed_by_partition(&metrics, topic),
        })
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if self.alive {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.alive = false;
        }
    }

    /// Sends SIGTERM (a clean stop: finish, commit, leave the group, exit 0).
    pub fn terminate(&self) {
        if self.alive {
            // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is touched.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Waits until `deadline` for the process to exit; kills it if it has not by then (the
    /// status then shows the signal). `None` if it could not be waited for at all.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.alive = false;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.alive = false;
        status
    }
}

impl Drop for DemoWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tributary_records_consumed_total` of `topic`, per partition, from Prometheus text (the
/// worker renders each series as `name{partition="3",topic="clicks"} 1234`).
fn consumed_by_partition(metrics: &str, topic: &str) -> BTreeMap<i32, u64> {
    let topic_label = format!("topic=\"{topic}\"");
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("tributary_records_consumed_total{")?;
            let (labels, value) = rest.split_once('}')?;
            let labels: Vec<&str> = labels.split(',').collect();
            if !labels.contains(&topic_label.as_str()) {
                return None;
            }
            let partition = labels
                .iter()
                .find_map(|l| l.strip_prefix("partition=\""))?
                .trim_end_matches('"')
                .parse()
                .ok()?;
            let value: f64 = value.trim().parse().ok()?;
            Some((partition, value.max(0.0) as u64))
        })
        .collect()
}

fn free_port() -> Result<SocketAddr, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(setup("finding a free port"))?;
    l.local_addr().map_err(setup("finding a free port"))
}

/// A minimal HTTP/1.0 GET against a worker on loopback; `None` when it does not answer 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_records_are_read_per_partition_of_the_topic() {
        let text = "# HELP tributary_records_consumed_total Input records read\n\
            tributary_records_consumed_total{partition=\"0\",topic=\"clicks\"} 1524\n\
            tributary_records_consumed_total{partition=\"0\",topic=\"other\"} 7\n\
            tributary_records_consumed_total{partition=\"5\",topic=\"clicks\"} 3\n\
            tributary_records_consumed_totally{partition=\"1\",topic=\"clicks\"} 9\n";
        assert_eq!(
            consumed_by_partition(text, "clicks"),
            BTreeMap::from([(0, 1524), (5, 3)])
        );
    }
}
