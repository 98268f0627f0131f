//! A real schema registry, one per test, on a free loopback port: Apicurio Registry with its
//! in-memory storage, speaking the Confluent Schema Registry API under `/apis/ccompat/v7`.
//!
//! `scripts/install-registry` builds it from Maven Central (see that script for how and why);
//! the harness runs the installer when the registry is missing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::broker::run_installer;
use crate::{free_port, tail};

/// Where Apicurio serves the Confluent-compatible API.
const CCOMPAT_PATH: &str = "/apis/ccompat/v7";
/// The Confluent registry's content type, as clients send it.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Start-up takes a few seconds (a JVM and Quarkus); allow for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// For each request of the harness's own client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment variables passed on to the registry. Everything else is removed: Apicurio
/// reads its settings from the environment (`REGISTRY_DATASOURCE_URL`, `HTTP_PORT`,
/// `QUARKUS_*`, ...), and the caller's environment must not change the registry we start.
const KEPT_ENV: &[&str] = &["PATH", "HOME", "JAVA_HOME", "TMPDIR", "LANG"];

/// The Apicurio Registry install (a directory with `registry.jar` and `lib/`):
/// `$APICURIO_HOME` if set, else what `scripts/install-registry` prints (it installs when
/// missing).
pub fn registry_home() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("APICURIO_HOME") {
        return Ok(PathBuf::from(p));
    }
    static HOME: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut home = HOME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = &*home {
        return Ok(h.clone());
    }
    let out = run_installer("install-registry")?;
    let dir = PathBuf::from(out.trim());
    if !dir.join("registry.jar").is_file() {
        bail!("scripts/install-registry printed {out:?}, which has no registry.jar");
    }
    *home = Some(dir.clone());
    Ok(dir)
}

/// A running schema registry. Dropping it kills the process (by its pid) and reaps it; if
/// the test is panicking, the log tail is printed and the log directory kept.
pub struct SchemaRegistry {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
    dir: Option<TempDir>,
    agent: ureq::Agent,
}

impl SchemaRegistry {
    /// Starts a registry and waits until its Confluent API answers. Panics on failure.
    pub fn start() -> SchemaRegistry {
        match Self::try_start() {
            Ok(r) => r,
            Err(e) => panic!("could not start the schema registry: {e:#}"),
        }
    }

    /// Starts a registry and waits until its Confluent API answers.
    pub fn try_start() -> Result<SchemaRegistry> {
        let home = registry_home()?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Error answers carry the registry's JSON message: the callers read it.
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut last_err = None;
        // A port taken between free_port() and the registry's bind makes it exit: retry.
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new().prefix("registry-").tempdir()?;
            let mut registry = SchemaRegistry {
                child: None,
                pid: 0,
                port: free_port(),
                log: dir.path().join("registry.log"),
                dir: Some(dir),
                agent: agent.clone(),
            };
            match registry.spawn(&home) {
                Ok(()) => return Ok(registry),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn spawn(&mut self, home: &Path) -> Result<()> {
        let out = File::create(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("java");
        cmd.env_clear();
        for var in KEPT_ENV {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        let child = cmd
            .args(["-Xms64m", "-Xmx384m", "-Djava.awt.headless=true"])
            .arg("-Dquarkus.http.host=127.0.0.1")
            .arg(format!("-Dquarkus.http.port={}", self.port))
            .arg("-jar")
            .arg(home.join("registry.jar"))
            .current_dir(self.dir.as_ref().expect("invariant: dir kept").path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning the schema registry (java; install Java 17: scripts/setup)")?;
        self.pid = child.id();
        self.child = Some(child);
        self.wait_up()
    }

    /// Polls `GET /subjects` until it answers 200, failing early if the process exits.
    fn wait_up(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("invariant: spawned");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "the schema registry exited during start-up ({status}):\n{}",
                    tail(&self.logs(), 30)
                );
            }
            let last = match self.call("GET", "/subjects", None) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the schema registry on port {} did not answer within {START_TIMEOUT:?} \
                     (last: {last}):\n{}",
                    self.port,
                    tail(&self.logs(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The Confluent-compatible API's base URL, for `registry_url`:
    /// `http://127.0.0.1:PORT/apis/ccompat/v7`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{CCOMPAT_PATH}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The registry's stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Registers `schema` (Avro schema JSON) under `subject` (`POST
    /// /subjects/{subject}/versions`); returns its id. Panics on an error answer.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let body = json!({ "schema": schema }).to_string();
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let answer = self.expect_ok("POST", &path, Some(&body));
        id_of(&answer).unwrap_or_else(|| panic!("POST {path}: no id in {answer}"))
    }

    /// The schema text with this id (`GET /schemas/ids/{id}`), or `None` if the registry
    /// answers 404. Panics on any other error.
    pub fn schema(&self, id: u32) -> Option<String> {
        let path = format!("/schemas/ids/{id}");
        let answer = self.get_or_404(&path)?;
        let schema = answer["schema"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {path}: no schema in {answer}"));
        Some(schema.to_string())
    }

    /// The ids of the schemas registered under `subject`, oldest version first (empty for an
    /// unknown subject).
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        let subject = encode_segment(subject);
        let path = format!("/subjects/{subject}/versions");
        let Some(versions) = self.get_or_404(&path) else {
            return Vec::new();
        };
        let versions = versions
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: not an array: {versions}"));
        versions
            .iter()
            .map(|v| {
                let path = format!("/subjects/{subject}/versions/{v}");
                let answer = self.expect_ok("GET", &path, None);
                id_of(&answer).unwrap_or_else(|| panic!("GET {path}: no id in {answer}"))
            })
            .collect()
    }

    /// GET; `None` on 404; panics on another error.
    fn get_or_404(&self, path: &str) -> Option<Value> {
        match self.call("GET", path, None) {
            Ok((404, _)) => None,
            Ok((200, body)) => Some(
                serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("GET {path}: answer is not JSON ({e}): {body}")),
            ),
            Ok((status, body)) => panic!("GET {path}: {status} {body}"),
            Err(e) => panic!("GET {path}: {e:#}"),
        }
    }

    fn expect_ok(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        match self.call(method, path, body) {
            Ok((200, text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: answer is not JSON ({e}): {text}")),
            Ok((status, text)) => panic!("{method} {path}: {status} {text}"),
            Err(e) => panic!("{method} {path}: {e:#}"),
        }
    }

    /// One request to the Confluent API: (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.url());
        let response = match (method, body) {
            ("GET", None) => self.agent.get(&url).header("Accept", CONTENT_TYPE).call(),
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("Accept", CONTENT_TYPE)
                .header("Content-Type", CONTENT_TYPE)
                .send(body),
            _ => return Err(anyhow!("unsupported request {method} {path}")),
        };
        let mut response = response.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        Ok((status, text))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a subject in a path.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn id_of(answer: &Value) -> Option<u32> {
    answer["id"].as_u64().and_then(|id| u32::try_from(id).ok())
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- schema registry 127.0.0.1:{} (pid {}) log tail, {} ---\n{}",
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
