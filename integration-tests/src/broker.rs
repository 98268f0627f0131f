//! The test broker, one per test, on free loopback ports.
//!
//! Apache Kafka (the reference: what users run) by default; tansu when
//! `TRIBUTARY_TEST_BROKER=tansu`. Kafka runs as a single-node KRaft cluster (combined broker
//! and controller) from the jars `scripts/install-kafka` resolves from Maven Central, with a
//! fresh log directory per broker. tansu keeps its data in memory.

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

/// Which broker implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka 4.x (KRaft), the reference.
    Kafka,
    /// tansu, a Kafka-compatible broker in Rust (in-memory storage).
    Tansu,
}

impl BrokerKind {
    /// From `TRIBUTARY_TEST_BROKER` (`kafka`, the default, or `tansu`).
    pub fn from_env() -> BrokerKind {
        match std::env::var("TRIBUTARY_TEST_BROKER").as_deref() {
            Ok("tansu") => BrokerKind::Tansu,
            Ok("kafka") | Ok("") | Err(_) => BrokerKind::Kafka,
            Ok(other) => panic!("TRIBUTARY_TEST_BROKER={other:?}: expected \"kafka\" or \"tansu\""),
        }
    }

    fn name(self) -> &'static str {
        match self {
            BrokerKind::Kafka => "kafka",
            BrokerKind::Tansu => "tansu",
        }
    }
}

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

/// A fixed KRaft cluster id (22 characters of base64): every test broker is its own cluster.
const CLUSTER_ID: &str = "VHJpYnV0YXJ5VGVzdHMwMQ";

/// Broker settings for fast, deterministic tests on one node:
/// * internal topics (offsets, transactions, share state) with one replica and one partition,
///   so the first group and the first transaction start at once;
/// * no initial rebalance delay;
/// * changelogs get compacted within a test: segments roll every second (compaction only
///   touches closed segments), any dirty ratio is enough, and the cleaner looks every 200 ms;
/// * no automatic topic creation (a worker must create what it needs, as on most clusters);
/// * the KIP-848 consumer protocol with short session and heartbeat intervals (they are broker
///   settings there), so a dead member's partitions move within seconds.
const KAFKA_TEST_SETTINGS: &str = "\
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=1
log.roll.ms=1000
log.cleaner.min.cleanable.ratio=0.01
log.cleaner.backoff.ms=200
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.threads=1
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
";

/// Path of the tansu binary: `$TANSU_BIN` if set, else `<repo>/.tools/tansu/bin/tansu`,
/// installed by `scripts/install-tansu` when missing.
pub fn tansu_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = repo_root().join(".tools/tansu/bin/tansu");
    if bin.is_file() {
        return Ok(bin);
    }
    run_installer("install-tansu")?;
    if !bin.is_file() {
        bail!("scripts/install-tansu did not install {}", bin.display());
    }
    Ok(bin)
}

/// The Apache Kafka install (a directory with `libs/` and `log4j2.properties`):
/// `$KAFKA_HOME` if set, else what `scripts/install-kafka` prints (it installs when missing).
pub fn kafka_home() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KAFKA_HOME") {
        return Ok(PathBuf::from(p));
    }
    static HOME: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut home = HOME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = &*home {
        return Ok(h.clone());
    }
    let out = run_installer("install-kafka")?;
    let dir = PathBuf::from(out.trim());
    if !dir.join("libs").is_dir() {
        bail!("scripts/install-kafka printed {out:?}, which has no libs/");
    }
    *home = Some(dir.clone());
    Ok(dir)
}

/// Runs `scripts/<name>` once at a time; returns its stdout.
pub(crate) fn run_installer(name: &str) -> Result<String> {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let script = repo_root().join("scripts").join(name);
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running broker. Dropping it kills the process (by its pid) and reaps it.
pub struct Broker {
    kind: BrokerKind,
    child: Option<Child>,
    pid: u32,
    port: u16,
    /// Kafka's controller listener port.
    controller_port: u16,
    log: PathBuf,
    dir: Option<TempDir>,
}

impl Broker {
    /// Starts the broker `TRIBUTARY_TEST_BROKER` names (Kafka by default) and waits until it
    /// answers a metadata request. Panics on failure.
    pub fn start() -> Broker {
        Self::start_kind(BrokerKind::from_env())
    }

    /// Starts a broker of the given kind. Panics on failure.
    pub fn start_kind(kind: BrokerKind) -> Broker {
        match Self::try_start(kind) {
            Ok(b) => b,
            Err(e) => panic!("could not start the {} broker: {e:#}", kind.name()),
        }
    }

    /// Starts a broker of the given kind.
    pub fn try_start(kind: BrokerKind) -> Result<Broker> {
        let mut last_err = None;
        // A port taken between free_port() and the broker's bind makes the broker exit: retry.
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{}-", kind.name()))
                .tempdir()?;
            let mut broker = Broker {
                kind,
                child: None,
                pid: 0,
                port: free_port(),
                controller_port: free_port(),
                log: dir.path().join("broker.log"),
                dir: Some(dir),
            };
            let started = match kind {
                BrokerKind::Kafka => broker.format_kafka().and_then(|()| broker.spawn()),
                BrokerKind::Tansu => broker.spawn(),
            };
            match started {
                Ok(()) => return Ok(broker),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("invariant: dir kept while running")
            .path()
    }

    /// Writes `server.properties` and formats the KRaft log directory.
    fn format_kafka(&self) -> Result<()> {
        let dir = self.dir();
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             {KAFKA_TEST_SETTINGS}",
            port = self.port,
            cport = self.controller_port,
            data = dir.join("data").display(),
        );
        std::fs::write(dir.join("server.properties"), props)?;
        let home = kafka_home()?;
        let out = Command::new("java")
            .args(["-Xmx256m", "-cp"])
            .arg(home.join("libs/*"))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                home.join("log4j2.properties").display()
            ))
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(dir.join("server.properties"))
            .stdin(Stdio::null())
            .output()
            .context("running java (install Java 17: scripts/setup)")?;
        if !out.status.success() {
            bail!(
                "formatting the KRaft log directory failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the broker process (on the existing directory) and waits until it answers.
    fn spawn(&mut self) -> Result<()> {
        let dir = self.dir().to_path_buf();
        let out = File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = match self.kind {
            BrokerKind::Kafka => {
                let home = kafka_home()?;
                let mut cmd = Command::new("java");
                cmd.args([
                    "-Xms256m",
                    "-Xmx1g",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                ])
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    home.join("log4j2.properties").display()
                ))
                .arg("-cp")
                .arg(home.join("libs/*"))
                .arg("kafka.Kafka")
                .arg(dir.join("server.properties"));
                cmd
            }
            BrokerKind::Tansu => {
                let url = format!("tcp://127.0.0.1:{}", self.port);
                let mut cmd = Command::new(tansu_bin()?);
                cmd.arg("broker")
                    .args(["--listener-url", &url, "--advertised-listener-url", &url])
                    .args(["--storage-engine", "memory://tansu/"]);
                for var in TANSU_ENV {
                    cmd.env_remove(var);
                }
                cmd
            }
        };
        let child = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning the {} broker", self.kind.name()))?;
        self.pid = child.id();
        self.child = Some(child);
        self.wait_up(Duration::from_secs(90))
    }

    fn wait_up(&mut self, timeout: Duration) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "tributary-harness-probe")
            .set("socket.connection.setup.timeout.ms", "2000")
            .set("log_level", "0")
            .create()?;
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("invariant: spawned");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited during start-up ({status}):\n{}",
                    self.kind.name(),
                    tail(&self.logs(), 30)
                );
            }
            match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} on port {} not answering metadata: {e}\n{}",
                        self.kind.name(),
                        self.port,
                        tail(&self.logs(), 30)
                    )
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} on port {} returned no brokers in metadata",
                    self.kind.name(),
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id (changes with [`Broker::restart`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The broker's stdout and stderr so far (over every restart).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Simulates an unresponsive broker: SIGSTOP. Undo with [`Broker::resume`].
    pub fn pause(&self) {
        crate::sig::send(self.pid, crate::sig::SIGSTOP);
    }

    pub fn resume(&self) {
        crate::sig::send(self.pid, crate::sig::SIGCONT);
    }

    /// Stops the broker with SIGTERM (a controlled shutdown) and waits until it exited.
    /// Kafka only: tansu keeps its data in memory, so a restart would lose everything.
    pub fn stop(&mut self) {
        assert_eq!(
            self.kind,
            BrokerKind::Kafka,
            "only Kafka keeps data across a restart"
        );
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::sig::send(self.pid, crate::sig::SIGCONT);
        crate::sig::send(self.pid, crate::sig::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Starts a stopped broker again on the same ports and log directory. Panics on failure.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart: the broker is still running; stop() it first"
        );
        if let Err(e) = self.spawn() {
            panic!("restarting the {} broker: {e:#}", self.kind.name());
        }
    }

    /// Topic-level config values as the broker describes them (Kafka's DescribeConfigs),
    /// e.g. `cleanup.policy`.
    pub fn topic_config(&self, topic: &str) -> std::collections::HashMap<String, String> {
        crate::kafka::describe_topic_config(&self.bootstrap(), topic)
            .unwrap_or_else(|e| panic!("describe configs of {topic}: {e:#}"))
    }

    /// The consumer group `group` as the broker describes it (protocol, assignor, state).
    pub fn describe_group(&self, group: &str) -> crate::GroupDescription {
        crate::describe_group(&self.bootstrap(), group)
            .unwrap_or_else(|e| panic!("describe group {group}: {e:#}"))
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        crate::create_topic(&self.bootstrap(), name, partitions)
            .unwrap_or_else(|e| panic!("create topic {name}: {e:#}"));
    }

    pub fn create_compacted_topic(&self, name: &str, partitions: i32) {
        self.create_compacted_topic_with(name, partitions, &[]);
    }

    /// A compacted topic with more topic configs (e.g. a short `delete.retention.ms`).
    pub fn create_compacted_topic_with(&self, name: &str, partitions: i32, extra: &[(&str, &str)]) {
        crate::create_compacted_topic(&self.bootstrap(), name, partitions, extra)
            .unwrap_or_else(|e| panic!("create compacted topic {name}: {e:#}"));
    }

    pub fn produce_json(&self, topic: &str, records: &[(String, serde_json::Value)]) {
        crate::produce_json(&self.bootstrap(), topic, records)
            .unwrap_or_else(|e| panic!("produce to {topic}: {e:#}"));
    }

    /// [`crate::produce_json_murmur2`]: partitioned as the Java client does.
    pub fn produce_json_murmur2(&self, topic: &str, records: &[(String, serde_json::Value)]) {
        crate::produce_json_murmur2(&self.bootstrap(), topic, records)
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
                "--- {} broker 127.0.0.1:{} (pid {}) log tail, {} ---\n{}",
                self.kind.name(),
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
