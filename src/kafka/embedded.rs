//! The embedded cluster: librdkafka's in-process mock cluster (`bootstrap_servers =
//! "embedded"` and `tributary demo`). Its brokers listen on loopback, so other processes can
//! connect while this one lives.
//!
//! The mock cluster handle is not `Send`, so it lives on a thread of its own that serves topic
//! creation requests (the mock cluster does not implement the CreateTopics API).

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), String>>,
    },
    FailOffsetCommits {
        count: usize,
        after_checks: bool,
        reply: mpsc::Sender<()>,
    },
}

/// A running in-process cluster; stops when dropped.
pub struct EmbeddedCluster {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let mock = match MockCluster::new(brokers) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the embedded cluster: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                while let Ok(cmd) = cmd_rx.recv() {
                    match cmd {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let result = mock.create_topic(&name, partitions, 1).map_err(|e| {
                                format!("creating topic {name:?} on the embedded cluster: {e}")
                            });
                            let _ = reply.send(result);
                        }
                        Command::FailOffsetCommits {
                            count,
                            after_checks,
                            reply,
                        } => {
                            // A permanent error (no retry, no rejoin): the commit just fails.
                            let fail = RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE;
                            let pass = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR;
                            let errors: Vec<RDKafkaRespErr> = if after_checks {
                                [pass, fail].repeat(count)
                            } else {
                                vec![fail; count]
                            };
                            mock.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
                            let _ = reply.send(());
                        }
                    }
                }
            })
            .map_err(|e| format!("spawning the embedded cluster thread: {e}"))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "the embedded cluster thread died".to_string())??;
        Ok(Self {
            bootstrap,
            commands: Some(cmd_tx),
            thread: Some(thread),
        })
    }

    /// The cluster's bootstrap servers (loopback addresses).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let (reply, result) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("invariant: commands live until drop")
            .send(Command::CreateTopic {
                name: name.to_string(),
                partitions,
                reply,
            })
            .map_err(|_| "the embedded cluster is gone".to_string())?;
        result
            .recv()
            .map_err(|_| "the embedded cluster is gone".to_string())?
    }
}

impl EmbeddedCluster {
    /// Fault injection for tests: the next `count` offset commit requests (of any group) fail.
    pub fn fail_offset_commits(&self, count: usize) -> Result<(), String> {
        self.inject_commit_failures(count, false)
    }

    /// Fault injection for tests: of the next `2 * count` offset commit requests, every second
    /// one fails. A worker's commit first re-commits the offsets the group holds (an ownership
    /// check, before any changelog write), then the new ones: this fails the second step of
    /// `count` commits (when every commit has changes to flush).
    pub fn fail_offset_commits_after_checks(&self, count: usize) -> Result<(), String> {
        self.inject_commit_failures(count, true)
    }

    fn inject_commit_failures(&self, count: usize, after_checks: bool) -> Result<(), String> {
        let (reply, done) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("invariant: commands live until drop")
            .send(Command::FailOffsetCommits {
                count,
                after_checks,
                reply,
            })
            .map_err(|_| "the embedded cluster is gone".to_string())?;
        done.recv()
            .map_err(|_| "the embedded cluster is gone".to_string())
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
