//! `tributary top` driven in a pseudo-terminal, its screen read through a terminal emulator.

use std::time::Duration;

use integration_tests::{serial, wait_until, TerminalProcess, TotalsConfig, WorkerProcess};

use crate::{running, state_dir, UnderLoad, LONG, READY};

const ROWS: u16 = 40;
const COLS: u16 = 160;

/// The character column where each header label starts, by label.
type Columns = Vec<(String, usize)>;

/// The rows of the table whose header row contains `header` (the rows after it, up to the
/// table's bottom border), with the character column where each header label starts.
fn table<'a>(screen: &'a str, header: &str) -> Option<(Vec<&'a str>, Columns)> {
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines.iter().position(|l| l.contains(header))?;
    let head: Vec<char> = lines[at].chars().collect();
    let mut columns = Vec::new();
    let mut i = 0;
    while i < head.len() {
        if head[i].is_ascii_uppercase() && (i == 0 || head[i - 1] == ' ' || head[i - 1] == '│') {
            let label: String = head[i..]
                .iter()
                .take_while(|c| !c.is_whitespace() && **c != '│')
                .collect();
            columns.push((label.clone(), i));
            i += label.chars().count();
        } else {
            i += 1;
        }
    }
    let rows = lines[at + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('└'))
        .copied()
        .collect();
    Some((rows, columns))
}

/// The cell of `row` under the header label `label` (up to the next blank).
fn cell(row: &str, columns: &[(String, usize)], label: &str) -> String {
    let Some(&(_, start)) = columns.iter().find(|(l, _)| l == label) else {
        return String::new();
    };
    row.chars()
        .skip(start)
        .take_while(|c| !c.is_whitespace())
        .collect()
}

/// Whether the screen shows worker `address` reachable, with a running task processing
/// records (a nonzero records/s).
fn shows_worker_processing(screen: &str, address: &str) -> bool {
    let Some((workers, wcols)) = table(screen, "PARTITIONS") else {
        return false;
    };
    let worker_ok = workers
        .iter()
        .any(|r| cell(r, &wcols, "WORKER") == address && cell(r, &wcols, "STATUS") == "ok");
    let Some((tasks, tcols)) = table(screen, "QUEUED") else {
        return false;
    };
    worker_ok
        && tasks.iter().any(|r| {
            cell(r, &tcols, "WORKER") == address
                && cell(r, &tcols, "STATE") == "running"
                && cell(r, &tcols, "RECORDS/S")
                    .parse::<u64>()
                    .is_ok_and(|rate| rate > 0)
        })
}

#[test]
fn top_shows_the_group_live_and_quits_on_q() {
    let _serial = serial();
    let load = UnderLoad::start("top", 4, 17);
    let (s1, s2) = (state_dir(), state_dir());
    let cfg = TotalsConfig::new(
        &load.app,
        &load.broker.bootstrap(),
        &load.input,
        &load.output,
        s1.path(),
    );
    let mut w1 = WorkerProcess::spawn_named("w1", &cfg.to_toml());
    let mut w2 = WorkerProcess::spawn_named("w2", &cfg.for_another_worker(s2.path()).to_toml());
    w1.wait_ready(READY);
    w2.wait_ready(READY);
    assert!(
        wait_until(LONG, Duration::from_millis(500), || running(&w1) >= 1.0
            && running(&w2) >= 1.0),
        "both workers hold running tasks"
    );

    let (a1, a2) = (w1.http_addr().to_string(), w2.http_addr().to_string());
    let mut top =
        TerminalProcess::spawn(&["top", "--http", &a1, "--interval-ms", "500"], ROWS, COLS)
            .expect("start tributary top");
    let mut screen = String::new();
    let shown = wait_until(LONG, Duration::from_millis(200), || {
        assert_eq!(top.exit_code(), None, "top exited:\n{}", top.screen());
        screen = top.screen();
        if screen.contains("has no /cluster") {
            // A worker without /cluster: that worker alone, and the screen says so.
            shows_worker_processing(&screen, &a1)
        } else {
            screen.contains(&format!("group {}", load.app))
                && shows_worker_processing(&screen, &a1)
                && shows_worker_processing(&screen, &a2)
        }
    });
    assert!(
        shown,
        "the screen never showed the workers processing:\n{screen}"
    );
    assert!(top.alternate_screen(), "top draws on the alternate screen");

    top.send(b"q").expect("type q");
    let code = top.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "top's exit after q; screen:\n{}",
        top.screen()
    );
    assert!(
        !top.alternate_screen(),
        "the terminal is back on its main screen"
    );

    load.producer.stop();
    assert_eq!(w1.terminate().code(), Some(0));
    assert_eq!(w2.terminate().code(), Some(0));
}

#[test]
fn top_on_an_unreachable_address_says_so_and_keeps_trying_until_escape() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let mut top = TerminalProcess::spawn(
        &["top", "--http", &closed, "--interval-ms", "200"],
        ROWS,
        COLS,
    )
    .expect("start tributary top");
    let mut screen = String::new();
    let shown = wait_until(LONG, Duration::from_millis(100), || {
        assert_eq!(top.exit_code(), None, "top exited:\n{}", top.screen());
        screen = top.screen();
        screen.contains(&format!("error: {closed}/cluster")) && screen.contains("retrying")
    });
    assert!(shown, "no error line naming {closed}:\n{screen}");

    top.send(b"\x1b").expect("type Esc");
    let code = top.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "top's exit after Esc; screen:\n{}",
        top.screen()
    );
    assert!(!top.alternate_screen());
}
