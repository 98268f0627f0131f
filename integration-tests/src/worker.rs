//! The `tributary` binary as a child process.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::{free_port, tail};

/// The `tributary` binary: `$TRIBUTARY_BIN` if set, else `tributary` in the target profile
/// directory of the running test executable (`target/<profile>/deps/<test>-<hash>` ->
/// `target/<profile>/tributary`). Panics with a hint when it is missing.
pub fn tributary_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBUTARY_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TRIBUTARY_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("tributary");
    if !bin.is_file() {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let flag = if profile == "release" {
            " --release".to_string()
        } else if profile == "debug" {
            String::new()
        } else {
            format!(" --profile {profile}")
        };
        panic!(
            "the tributary binary is missing at {}: build it first: cargo build{flag} --bin tributary \
             (or set TRIBUTARY_BIN)",
            bin.display()
        );
    }
    bin
}

/// Runs `tributary <args>` to completion (at most 120 s) and returns its output.
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    run_cli_timeout(args, Duration::from_secs(120))
}

/// Runs `tributary <args>`; kills it and panics if it takes longer than `timeout`.
pub fn run_cli_timeout<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("tributary-cli-")
        .tempdir()
        .expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(tributary_bin())
        .args(args)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn tributary");
    let status = wait_timeout(&mut child, timeout).expect("wait for tributary");
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "tributary {:?} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&stdout),
            tail(&String::from_utf8_lossy(&stderr), 40)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET (the worker's HTTP server is on loopback): (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    http_get_with_headers(addr, path, timeout).map(|r| (r.status, r.body))
}

/// An HTTP answer with its headers.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// (lower-case name, value), in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_get`], with the response headers.
pub fn http_get_with_headers(addr: &str, path: &str, timeout: Duration) -> Result<HttpAnswer> {
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: the whole request head in one segment.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in response from {addr}{path}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

/// A series' name and labels.
type Series = (String, Vec<(String, String)>);

/// Parses `name` or `name{label="v",...}`; returns the series and the rest of the line.
fn parse_series(s: &str) -> Option<(Series, &str)> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let name = s[..name_end].to_string();
    let mut rest = &s[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    end = Some(i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            chars.next(); // '='
            if chars.next().map(|x| x.1) != Some('"') {
                return None;
            }
            let mut val = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => val.push(c),
                }
            }
            labels.push((key.trim().to_string(), val));
        }
        let end = end?;
        rest = &r[end + 1..];
    }
    Some(((name, labels), rest))
}

/// Sums the samples of Prometheus text `text` that match `query`: a metric name, optionally
/// with labels (`tributary_tasks{state="running"}`) that a series must all carry (it may have
/// more). None when no series matches.
pub fn parse_metric(text: &str, query: &str) -> Option<f64> {
    let ((qname, qlabels), _) = parse_series(query)?;
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(((name, labels), rest)) = parse_series(line) else {
            continue;
        };
        if name != qname || !qlabels.iter().all(|q| labels.contains(q)) {
            continue;
        }
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *sum.get_or_insert(0.0) += v;
    }
    sum
}

/// The value of `listen` in the `[http]` table of a TOML config (simple line scan).
fn http_listen_of(config_toml: &str) -> Option<String> {
    let mut section = String::new();
    for line in config_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        if section == "http" {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "listen" {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

/// A `tributary run -c FILE` child process. Dropping it kills the process if still alive.
pub struct WorkerProcess {
    child: Child,
    name: String,
    http: String,
    dir: Option<TempDir>,
    config: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Writes `config_toml` to a file in a fresh temp dir and runs the built binary on it,
    /// stdout/stderr to files there, `RUST_LOG=info,librdkafka=warn`. The config must have
    /// `[http] listen = "127.0.0.1:PORT"`.
    pub fn spawn(config_toml: &str) -> WorkerProcess {
        Self::spawn_named("worker", config_toml)
    }

    /// Like [`WorkerProcess::spawn`]; `name` labels its logs in failure output.
    pub fn spawn_named(name: &str, config_toml: &str) -> WorkerProcess {
        let http = http_listen_of(config_toml)
            .expect("worker config needs [http] listen = \"127.0.0.1:PORT\"");
        let dir = tempfile::Builder::new()
            .prefix("tributary-worker-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("tributary.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(tributary_bin())
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn tributary run");
        WorkerProcess {
            child,
            name: name.to_string(),
            http,
            dir: Some(dir),
            config,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http.listen` of this worker.
    pub fn http_addr(&self) -> &str {
        &self.http
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_alive(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait after kill");
        self.status = Some(s);
        s
    }

    /// Sends a signal (e.g. [`crate::sig::SIGSTOP`]) to the worker.
    pub fn signal(&self, sig: i32) {
        crate::sig::send(self.child.id(), sig);
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_timeout(&mut self.child, timeout).ok().flatten();
        }
        self.status
    }

    /// SIGTERM, then waits up to 60 s for the exit and returns its status. If it does not
    /// exit in time it is killed with SIGKILL (so the status shows a signal, not code 0).
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(s) = self.try_status() {
            return s;
        }
        self.signal(crate::sig::SIGTERM);
        if let Some(s) = self.wait_exit(Duration::from_secs(60)) {
            return s;
        }
        eprintln!(
            "{}: did not exit within 60 s of SIGTERM; killing it",
            self.name
        );
        self.kill9()
    }

    /// GET on this worker's HTTP listener.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.http, path, Duration::from_secs(10))
    }

    /// GET on this worker's HTTP listener, with the response headers.
    pub fn get_with_headers(&self, path: &str) -> Result<HttpAnswer> {
        http_get_with_headers(&self.http, path, Duration::from_secs(10))
    }

    /// True when `GET /ready` answers 200.
    pub fn is_ready(&self) -> bool {
        matches!(self.get("/ready"), Ok((200, _)))
    }

    /// Polls `GET /ready` until 200; panics (with the last answer and the log tail) on
    /// timeout or if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if let Some(s) = self.try_status() {
                panic!(
                    "{} exited ({s}) before becoming ready; log tail:\n{}",
                    self.name,
                    tail(&self.logs(), 60)
                );
            }
            match self.get("/ready") {
                Ok((200, _)) => return,
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = format!("error: {e:#}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready within {timeout:?}; last /ready: {last}; log tail:\n{}",
                    self.name,
                    tail(&self.logs(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET /metrics` body (a failed connection is retried twice).
    pub fn try_metrics(&self) -> Result<String> {
        let mut attempt = 0;
        let answer = loop {
            match self.get("/metrics") {
                Ok(a) => break a,
                Err(e) if attempt >= 2 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        match answer {
            (200, body) => Ok(body),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// `GET /metrics` body; panics if the worker does not answer.
    pub fn metrics(&self) -> String {
        self.try_metrics()
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    /// One metric from `/metrics` (see [`parse_metric`]: a bare name sums all label sets).
    /// None if no series matches or the worker does not answer.
    pub fn metric(&self, query: &str) -> Option<f64> {
        self.try_metrics()
            .ok()
            .and_then(|t| parse_metric(&t, query))
    }

    /// The metric, treating "no such series" as 0; panics if `/metrics` does not answer.
    pub fn metric_or_zero(&self, query: &str) -> f64 {
        parse_metric(&self.metrics(), query).unwrap_or(0.0)
    }

    /// stdout followed by stderr.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if out.is_empty() {
            err
        } else {
            format!("{out}\n--- stderr ---\n{err}")
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let dir = self.dir.take().map(|d| d.keep());
            eprintln!(
                "--- {} (pid {}, http {}, files kept in {}) log tail ---\n{}",
                self.name,
                self.child.id(),
                self.http,
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                tail(&self.logs(), 80)
            );
        }
    }
}

/// The worker config used by the tests: one pipeline `totals` keeping a running count and
/// sum of `amount` per record key, JSON in and out.
#[derive(Clone, Debug)]
pub struct TotalsConfig {
    pub app_id: String,
    pub threads: u32,
    pub bootstrap: String,
    /// `group.session_timeout_ms`, written when `group` is None.
    pub session_timeout_ms: u64,
    /// The body of the `[group]` table; None: `session_timeout_ms = <session_timeout_ms>`
    /// (the classic protocol). See [`TotalsConfig::consumer_protocol`].
    pub group: Option<String>,
    pub commit_interval_ms: u64,
    /// `processing.guarantee`.
    pub guarantee: String,
    pub state_dir: PathBuf,
    /// `state.cleanup_delay_ms` (default: not set, the worker's default).
    pub cleanup_delay_ms: Option<u64>,
    /// `state.standby_replicas` (default: not set, the worker's default of none).
    pub standby_replicas: Option<u32>,
    pub http_listen: String,
    pub pipeline: String,
    pub input: String,
    /// Further source topics of the pipeline, after `input` (default none).
    pub more_inputs: Vec<String>,
    pub output: String,
    /// `group.assignment` (default: not set, the worker's default).
    pub assignment: Option<String>,
    /// Raw TOML inserted before `[[pipeline]]` (extra tables such as `[kafka.properties]`).
    pub extra: String,
    /// `processing.on_error`.
    pub on_error: String,
    /// The inline keys of `source` after `topics` (default `, format = "json"`).
    pub source_keys: String,
    /// The inline keys of `sink` after `topic` (default `, format = "json"`).
    pub sink_keys: String,
    /// The pipeline's steps, as TOML (default: a running count and sum of `amount`).
    pub steps: String,
}

/// The default steps: a running aggregate per key.
pub const TOTALS_STEPS: &str = "[[pipeline.steps]]\n[pipeline.steps.aggregate]\nfields = { count = \"count()\", total = \"sum(amount)\" }\n";

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl TotalsConfig {
    /// Defaults: 1 thread, session timeout 6 s, commits every 500 ms, a free HTTP port.
    pub fn new(
        app_id: &str,
        bootstrap: &str,
        input: &str,
        output: &str,
        state_dir: &Path,
    ) -> TotalsConfig {
        TotalsConfig {
            app_id: app_id.to_string(),
            threads: 1,
            bootstrap: bootstrap.to_string(),
            session_timeout_ms: 6000,
            group: None,
            commit_interval_ms: 500,
            guarantee: "at_least_once".to_string(),
            state_dir: state_dir.to_path_buf(),
            cleanup_delay_ms: None,
            standby_replicas: None,
            http_listen: format!("127.0.0.1:{}", free_port()),
            pipeline: "totals".to_string(),
            input: input.to_string(),
            more_inputs: Vec::new(),
            output: output.to_string(),
            assignment: None,
            extra: String::new(),
            on_error: "fail".to_string(),
            source_keys: ", format = \"json\"".to_string(),
            sink_keys: ", format = \"json\"".to_string(),
            steps: TOTALS_STEPS.to_string(),
        }
    }

    /// The same config with `processing.guarantee = "exactly_once"`.
    pub fn exactly_once(self) -> TotalsConfig {
        TotalsConfig {
            guarantee: "exactly_once".to_string(),
            ..self
        }
    }

    /// The same config on another free HTTP port (same state dir: the same worker, restarted).
    pub fn restarted(&self) -> TotalsConfig {
        TotalsConfig {
            http_listen: format!("127.0.0.1:{}", free_port()),
            ..self.clone()
        }
    }

    /// The same config on another free HTTP port and state dir (for a second worker).
    pub fn for_another_worker(&self, state_dir: &Path) -> TotalsConfig {
        TotalsConfig {
            state_dir: state_dir.to_path_buf(),
            http_listen: format!("127.0.0.1:{}", free_port()),
            ..self.clone()
        }
    }

    /// The same config with the KIP-848 consumer group protocol (`group.protocol =
    /// "consumer"`, the default remote assignor); the session timeout is then the broker's.
    pub fn consumer_protocol(self) -> TotalsConfig {
        TotalsConfig {
            group: Some("protocol = \"consumer\"\n".to_string()),
            ..self
        }
    }

    /// The changelog topic of the pipeline's store: `<app.id>-<pipeline>-changelog`.
    pub fn changelog_topic(&self) -> String {
        format!("{}-{}-changelog", self.app_id, self.pipeline)
    }

    pub fn to_toml(&self) -> String {
        format!(
            "[app]\n\
             id = {app}\n\
             threads = {threads}\n\
             \n\
             [kafka]\n\
             bootstrap_servers = {bootstrap}\n\
             \n\
             [group]\n\
             {group}\n\
             [processing]\n\
             guarantee = {guarantee}\n\
             commit_interval_ms = {commit}\n\
             on_error = {on_error}\n\
             \n\
             [state]\n\
             dir = {state}\n\
             {cleanup}\
             {standbys}\
             \n\
             [http]\n\
             listen = {http}\n\
             \n\
             {extra}\n\
             [[pipeline]]\n\
             name = {pipeline}\n\
             source = {{ topics = [{input}]{source_keys} }}\n\
             sink = {{ topic = {output}{sink_keys} }}\n\
             \n\
             {steps}",
            app = toml_str(&self.app_id),
            threads = self.threads,
            bootstrap = toml_str(&self.bootstrap),
            group = self.group.clone().unwrap_or_else(|| {
                let assignment = self
                    .assignment
                    .as_ref()
                    .map(|a| format!("assignment = {}\n", toml_str(a)))
                    .unwrap_or_default();
                format!(
                    "session_timeout_ms = {}\n{assignment}",
                    self.session_timeout_ms
                )
            }),
            commit = self.commit_interval_ms,
            guarantee = toml_str(&self.guarantee),
            state = toml_str(&self.state_dir.to_string_lossy()),
            cleanup = self
                .cleanup_delay_ms
                .map(|ms| format!("cleanup_delay_ms = {ms}\n"))
                .unwrap_or_default(),
            standbys = self
                .standby_replicas
                .map(|n| format!("standby_replicas = {n}\n"))
                .unwrap_or_default(),
            http = toml_str(&self.http_listen),
            extra = self.extra,
            pipeline = toml_str(&self.pipeline),
            input = std::iter::once(&self.input)
                .chain(&self.more_inputs)
                .map(|t| toml_str(t))
                .collect::<Vec<_>>()
                .join(", "),
            output = toml_str(&self.output),
            on_error = toml_str(&self.on_error),
            source_keys = self.source_keys,
            sink_keys = self.sink_keys,
            steps = self.steps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_parse_metric() {
        let text = "# HELP tributary_tasks tasks by state\n\
                    # TYPE tributary_tasks gauge\n\
                    tributary_tasks{member=\"0\",state=\"running\"} 3\n\
                    tributary_tasks{member=\"1\",state=\"running\"} 2\n\
                    tributary_tasks{member=\"0\",state=\"restoring\"} 1\n\
                    tributary_records_consumed_total 1234\n\
                    tributary_lag{topic=\"a,b\",partition=\"0\"} 5 1700000000000\n\
                    tributary_tasks_other 99\n";
        assert_eq!(parse_metric(text, "tributary_tasks"), Some(6.0));
        assert_eq!(
            parse_metric(text, "tributary_tasks{state=\"running\"}"),
            Some(5.0)
        );
        assert_eq!(
            parse_metric(text, "tributary_tasks{state=\"restoring\",member=\"0\"}"),
            Some(1.0)
        );
        assert_eq!(
            parse_metric(text, "tributary_tasks{state=\"standby\"}"),
            None
        );
        assert_eq!(
            parse_metric(text, "tributary_records_consumed_total"),
            Some(1234.0)
        );
        assert_eq!(
            parse_metric(text, "tributary_lag{topic=\"a,b\"}"),
            Some(5.0)
        );
        assert_eq!(parse_metric(text, "tributary_nothing"), None);
    }

    #[test]
    fn harness_dechunk() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn harness_totals_config_http_listen() {
        let c = TotalsConfig::new("app", "127.0.0.1:9", "in", "out", Path::new("/tmp/x"));
        let toml = c.to_toml();
        assert_eq!(http_listen_of(&toml), Some(c.http_listen.clone()));
        assert!(toml.contains("id = \"app\""));
        assert!(toml.contains("source = { topics = [\"in\"], format = \"json\" }"));
        assert!(!toml.contains("assignment"));
        assert_eq!(c.changelog_topic(), "app-totals-changelog");
        assert!(!toml.contains("cleanup_delay_ms"));
        assert!(toml.contains("[group]\nsession_timeout_ms = 6000\n\n[processing]"));

        let toml = c.clone().consumer_protocol().to_toml();
        assert!(
            toml.contains("[group]\nprotocol = \"consumer\"\n\n[processing]"),
            "{toml}"
        );
        assert!(!toml.contains("session_timeout_ms"), "{toml}");
        let two = TotalsConfig {
            more_inputs: vec!["in2".into()],
            assignment: Some("range".into()),
            cleanup_delay_ms: Some(2000),
            ..c
        };
        let toml = two.to_toml();
        assert!(toml.contains("source = { topics = [\"in\", \"in2\"], format = \"json\" }"));
        assert!(toml.contains("[group]\nsession_timeout_ms = 6000\nassignment = \"range\"\n"));
        assert!(toml.contains("[state]\ndir = \"/tmp/x\"\ncleanup_delay_ms = 2000\n"));
    }
}
