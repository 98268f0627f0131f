//! The tansu broker, one per test, on a free loopback port, in-memory storage.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::{free_port, repo_root, tail};

/// Environment variables tansu reads its options from; removed so that the caller's
/// environment cannot change the broker we start.
const TANSU_ENV: &[&str] = &[
    "RUST_LOG",
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Path of the tansu binary: `$TANSU_BIN` if set, else `<repo>/.tools/tansu/bin/tansu`,
/// installed by `scripts/install-tansu` when missing.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let root = repo_root();
    let bin = root.join(".tools/tansu/bin/tansu");
    if bin.is_file() {
        return Ok(bin);
    }
    let script = root.join("scripts/install-tansu");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() || !bin.is_file() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// A running tansu broker. Dropping it kills the process (by its pid) and reaps it.
pub struct Broker {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
    dir: Option<TempDir>,
}

impl Broker {
    /// Starts a broker and waits until it answers a metadata request. Panics on failure.
    pub fn start() -> Broker {
        match Self::try_start() {
            Ok(b) => b,
            Err(e) => panic!("could not start the tansu broker: {e:#}"),
        }
    }

    pub fn try_start() -> Result<Broker> {
        let bin = tansu_bin()?;
        let mut last_err = None;
        // A port taken between free_port() and the broker's bind makes the broker exit: retry.
        for _attempt in 0..3 {
            match Self::start_once(&bin) {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap())
    }

    fn start_once(bin: &Path) -> Result<Broker> {
        let dir = tempfile::Builder::new().prefix("tansu-").tempdir()?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id();
        let mut broker = Broker {
            child: Some(child),
            pid,
            port,
            log,
            dir: Some(dir),
        };
        broker.wait_up(Duration::from_secs(60))?;
        Ok(broker)
    }

    fn wait_up(&mut self, timeout: Duration) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "tributary-harness-probe")
            .set("socket.connection.setup.timeout.ms", "2000")
            .create()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "tansu exited during start-up ({status}):\n{}",
                    tail(&self.logs(), 30)
                );
            }
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "tansu on port {} not answering metadata: {e}\n{}",
                        self.port,
                        tail(&self.logs(), 30)
                    )
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "tansu on port {} returned no brokers in metadata",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The broker's stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Simulates a broker outage: SIGSTOP (tansu keeps data in memory only, so a restart
    /// would lose everything). Undo with [`Broker::resume`].
    pub fn pause(&self) {
        crate::sig::send(self.pid, crate::sig::SIGSTOP);
    }

    pub fn resume(&self) {
        crate::sig::send(self.pid, crate::sig::SIGCONT);
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        crate::create_topic(&self.bootstrap(), name, partitions)
            .unwrap_or_else(|e| panic!("create topic {name}: {e:#}"));
    }

    pub fn create_compacted_topic(&self, name: &str, partitions: i32) {
        crate::create_compacted_topic(&self.bootstrap(), name, partitions)
            .unwrap_or_else(|e| panic!("create compacted topic {name}: {e:#}"));
    }

    pub fn produce_json(&self, topic: &str, records: &[(String, serde_json::Value)]) {
        crate::produce_json(&self.bootstrap(), topic, records)
            .unwrap_or_else(|e| panic!("produce to {topic}: {e:#}"));
    }

    pub fn produce_raw(&self, topic: &str, records: &[(String, Vec<u8>)]) {
        crate::kafka::produce_raw(&self.bootstrap(), topic, records).expect("produce");
    }

    pub fn consume_all(&self, topic: &str) -> Vec<crate::Rec> {
        crate::consume_all(&self.bootstrap(), topic)
            .unwrap_or_else(|e| panic!("consume {topic}: {e:#}"))
    }

    pub fn last_value_per_key(
        &self,
        topic: &str,
    ) -> std::collections::HashMap<String, serde_json::Value> {
        crate::last_value_per_key(&self.bootstrap(), topic)
            .unwrap_or_else(|e| panic!("consume {topic}: {e:#}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGCONT first, in case a test left it paused; then SIGKILL by pid and reap.
            crate::sig::send(self.pid, crate::sig::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- tansu broker 127.0.0.1:{} (pid {}) log tail, {} ---\n{}",
                self.port,
                self.pid,
                self.log.display(),
                tail(&self.logs(), 40)
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}
