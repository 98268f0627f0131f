//! README.md's five-minute quickstart, run as written: the shell commands are read from the
//! README's section (its ```sh blocks), so that the docs cannot drift from what works. Only
//! the embedded cluster's address (the one the worker prints, in place of the README's sample)
//! and the HTTP port (a free one in place of the example config's 9464) are substituted; the
//! `tributary` on the `PATH` is the binary under test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    free_port, http_get, parse_metric, repo_root, serial, sig, tributary_bin, wait_until,
};
use tributary_generator::{KeyDistribution, RecordGenerator, DEFAULT_KEYS, DEFAULT_SEED};

const HEADING: &str = "## Five-minute quickstart";
/// What the worker's log line says before the address (README.md shows a sample of it).
const ADDRESS_MARK: &str = "embedded Kafka cluster at ";
/// The example config's `http.listen` port, as the README's commands use it.
const CONFIG_PORT: &str = "9464";

/// The quickstart as README.md tells it.
struct Quickstart {
    /// The command that starts the worker.
    run: String,
    /// The sample log line announcing the embedded cluster.
    sample_line: String,
    /// The sample address in it, which the commands use.
    sample_address: String,
    /// The commands of the second terminal, in order.
    commands: Vec<String>,
}

/// Fenced blocks of `text`: (info string, body lines).
fn fenced_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, body)), None) => body.push(line.to_string()),
            (None, None) => {}
        }
    }
    blocks
}

/// Commands of a shell block: its non-empty lines that are not comments.
fn commands(body: &[String]) -> Vec<String> {
    body.iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn read_quickstart() -> Quickstart {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find(HEADING)
        .unwrap_or_else(|| panic!("README.md has no {HEADING:?} section"));
    let rest = &readme[start + HEADING.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let blocks = fenced_blocks(section);
    let shell: Vec<Vec<String>> = blocks
        .iter()
        .filter(|(info, _)| info == "sh")
        .map(|(_, body)| commands(body))
        .collect();
    let [first, second] = shell.as_slice() else {
        panic!("the quickstart has two sh blocks (the worker's terminal, then the second one), found {shell:?}");
    };
    let [run] = first.as_slice() else {
        panic!("the first sh block starts the worker, one command: {first:?}");
    };
    let sample_line = blocks
        .iter()
        .filter(|(info, _)| info.is_empty())
        .flat_map(|(_, body)| body.iter())
        .find(|l| l.contains(ADDRESS_MARK))
        .unwrap_or_else(|| panic!("the quickstart shows the worker's line naming the address"))
        .clone();
    let sample_address = address_in(&sample_line).expect("an address in the sample line");
    Quickstart {
        run: run.clone(),
        sample_line,
        sample_address,
        commands: second.clone(),
    }
}

/// The address after [`ADDRESS_MARK`] in a log line, up to the `;` that ends it.
fn address_in(line: &str) -> Option<String> {
    let after = &line[line.find(ADDRESS_MARK)? + ADDRESS_MARK.len()..];
    Some(after[..after.find(';')?].to_string())
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The user's shell: `sh -c COMMAND` in `dir`, with the binary under test first on the `PATH`
/// and no `RUST_LOG` (a newcomer has none).
fn shell(dir: &Path, command: &str) -> Command {
    let bin_dir = tributary_bin()
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(dirs).expect("PATH"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(dir: &Path, command: &str) -> Output {
    shell(dir, command)
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

/// The value of `--name` in a command line, if given.
fn option<'a>(command: &'a str, name: &str) -> Option<&'a str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

/// What `/state/clicks-per-user/<key>` must add up to once the generator's records are
/// processed: the example's first pipeline keeps clicks over 50, doubles their amounts, and
/// counts them per user in windows. (count, total) over every window of `key`.
fn expected_big_clicks(generate: &str, key: &str) -> (u64, u64) {
    let records: u64 = option(generate, "--records")
        .expect("--records")
        .parse()
        .expect("--records N");
    let keys = option(generate, "--keys").map_or(DEFAULT_KEYS, |k| k.parse().expect("--keys N"));
    let seed = option(generate, "--seed").map_or(DEFAULT_SEED, |s| s.parse().expect("--seed N"));
    let distribution: KeyDistribution = option(generate, "--distribution")
        .unwrap_or("uniform")
        .parse()
        .expect("--distribution");
    let mut records_of = RecordGenerator::new(keys, &distribution, seed).expect("generator");
    let (mut count, mut total, mut written) = (0, 0, false);
    for _ in 0..records {
        let s = records_of.next_sample();
        if s.key_name() == key {
            written = true;
            if s.amount > 50 {
                count += 1;
                total += 2 * s.amount;
            }
        }
    }
    assert!(written, "the generator writes no record with key {key}");
    (count, total)
}

/// The worker started by the quickstart's first command.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- the quickstart worker's log ---\n{}", self.log());
        }
    }
}

/// README.md's quickstart works as written: the worker on the embedded cluster prints its
/// address in one line like the README's sample; the generator, given that address and no
/// partition count, writes to the example's source topic; `/state` answers 200 with the
/// key's windows, adding up to what the pipeline makes of the generated records; `/metrics`
/// counts them consumed; SIGTERM stops the worker with exit 0.
#[test]
fn the_readme_quickstart_works_as_written() {
    let _serial = serial();
    let qs = read_quickstart();
    let dir = tempfile::tempdir().expect("tempdir");
    // The README's commands run from the repository's root: the config is at the same
    // relative path here, and the state directory it names lands in the temp dir.
    std::os::unix::fs::symlink(repo_root().join("config"), dir.path().join("config"))
        .expect("symlink config");
    let port = free_port();
    let http = format!("127.0.0.1:{port}");

    let log = dir.path().join("worker.log");
    let out = File::create(&log).expect("log file");
    assert!(qs.run.starts_with("tributary run "), "{}", qs.run);
    let child = shell(dir.path(), &format!("exec {}", qs.run))
        .env("TRIBUTARY_HTTP__LISTEN", &http)
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("start the worker");
    let mut worker = Worker { child, log };

    // The address, in one line, as the README shows it.
    let mut line = None;
    assert!(
        wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
            line = worker
                .log()
                .lines()
                .find(|l| l.contains(ADDRESS_MARK))
                .map(str::to_string);
            line.is_some()
        }),
        "the worker never printed {ADDRESS_MARK:?}:\n{}",
        worker.log()
    );
    let line = line.expect("found");
    let address = address_in(&line).expect("an address ending in ';'");
    assert!(address.starts_with("127.0.0.1:"), "{line}");
    let message = |l: &str| l[l.find("tributary::worker: ").map_or(0, |i| i)..].to_string();
    assert_eq!(
        message(&line),
        message(&qs.sample_line).replace(&qs.sample_address, &address),
        "the worker's line reads as the README shows it"
    );

    // The README's port is the config's: the commands must work for a reader who runs them
    // as written, without the port this test gives the worker.
    let config =
        std::fs::read_to_string(integration_tests::repo_root().join("config/pipelines.toml"))
            .expect("reading config/pipelines.toml");
    assert!(
        config.contains(&format!("listen = \"127.0.0.1:{CONFIG_PORT}\"")),
        "config/pipelines.toml listens where the README says (port {CONFIG_PORT})"
    );
    let substitute = |command: &str| {
        command.replace(&qs.sample_address, &address).replace(
            &format!("localhost:{CONFIG_PORT}"),
            &format!("localhost:{port}"),
        )
    };
    let mut generated = None;
    let mut checked = Vec::new();
    for command in &qs.commands {
        let command = substitute(command);
        if command.starts_with("tributary generate ") {
            assert!(
                !command.contains("--partitions"),
                "the topic exists: no partition count is needed: {command}"
            );
            assert!(command.contains(&address), "{command}");
            let out = run(dir.path(), &command);
            assert!(
                out.status.success(),
                "{command} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            generated = Some(command);
            checked.push("generate");
        } else if command.starts_with("curl ") && command.contains("/state/") {
            let generate = generated
                .as_deref()
                .expect("the generator runs before /state");
            let path_start = command.find("/state/").expect("a /state path");
            let path = command[path_start..]
                .trim_end_matches(['\'', '"'])
                .to_string();
            let store_key = path.trim_start_matches("/state/");
            let store_key = &store_key[..store_key.find('?').unwrap_or(store_key.len())];
            let (store, key) = store_key.split_once('/').expect("/state/<store>/<key>");
            assert_eq!(
                store, "clicks-per-user",
                "the test knows this store's pipeline"
            );
            let (count, total) = expected_big_clicks(generate, key);
            // Committed values show once processed and committed: ask until they add up.
            let mut last = String::new();
            let complete = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
                let out = run(dir.path(), &command);
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                let Ok(windows) = serde_json::from_str::<Vec<serde_json::Value>>(&last) else {
                    return false;
                };
                let sum = |field: &str| -> u64 {
                    windows
                        .iter()
                        .map(|w| w["value"][field].as_u64().unwrap_or(0))
                        .sum()
                };
                out.status.success() && sum("count") == count && sum("total") == total
            });
            assert!(
                complete,
                "{command} never showed {key}'s {count} clicks over 50 (total {total}); last \
                 answer: {last}"
            );
            let (status, body) =
                http_get(&http, &path, Duration::from_secs(10)).expect("GET /state");
            assert_eq!(status, 200, "{body}");
            checked.push("state");
        } else if command.starts_with("curl ") && command.contains("/metrics") {
            let records: f64 = option(generated.as_deref().expect("generated first"), "--records")
                .and_then(|r| r.parse().ok())
                .expect("--records N");
            let out = run(dir.path(), &command);
            assert!(out.status.success(), "{command}: {}", out.status);
            let text = String::from_utf8_lossy(&out.stdout);
            let consumed =
                parse_metric(&text, "tributary_records_consumed_total{topic=\"clicks\"}");
            assert_eq!(
                consumed,
                Some(records),
                "every generated click consumed once: {text}"
            );
            checked.push("metrics");
        } else {
            panic!("the test does not know how to check the README's command {command:?}");
        }
    }
    assert_eq!(checked, ["generate", "state", "metrics"]);

    // Ctrl-C or SIGTERM: the worker commits, leaves the group and exits 0.
    sig::send(worker.child.id(), sig::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = worker.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the worker exited {status}");
    let log = worker.log();
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "a newcomer's run logs no error:\n{log}"
    );
}
