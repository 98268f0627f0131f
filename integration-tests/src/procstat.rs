//! What the benches read about processes from Linux's `/proc`: memory high-water marks, CPU
//! time per process and per thread, and a `perf record` of a process while it is measured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

extern "C" {
    fn sysconf(name: i32) -> i64;
}
/// `_SC_CLK_TCK` on Linux.
const SC_CLK_TCK: i32 = 2;

/// Clock ticks per second of the times in `/proc/.../stat`.
fn clk_tck() -> f64 {
    // SAFETY: sysconf takes and returns plain integers.
    let t = unsafe { sysconf(SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (seconds) from a `/proc/.../stat` file.
fn stat_cpu(path: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which may contain spaces, in parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// CPU seconds `pid` has used (NaN when it is gone).
pub fn process_cpu(pid: u32) -> f64 {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(f64::NAN)
}

/// CPU seconds per thread of `pid`: tid -> (name, seconds).
pub fn thread_cpu(pid: u32) -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(cpu) = stat_cpu(&e.path().join("stat")) {
            out.insert(tid, (comm, cpu));
        }
    }
    out
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`: peak resident set, `VmRSS`); `pid` may be
/// `"self"`.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Non-idle CPU seconds of the whole machine since boot (from `/proc/stat`).
pub fn machine_busy() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clk_tck()
}

/// CPU usage of a measured process (by thread), the broker and the machine at one moment.
pub struct CpuSnap {
    at: Instant,
    process: f64,
    threads: BTreeMap<u32, (String, f64)>,
    broker: f64,
    machine: f64,
}

impl CpuSnap {
    /// Reads the CPU times of `pid` (and its threads) and of the broker process.
    pub fn take(pid: u32, broker: u32) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            process: process_cpu(pid),
            threads: thread_cpu(pid),
            broker: process_cpu(broker),
            machine: machine_busy(),
        }
    }

    /// CPU seconds the measured process used between `a` and `b`.
    pub fn process_seconds(a: &CpuSnap, b: &CpuSnap) -> f64 {
        b.process - a.process
    }

    /// One line: the measured process's share of a core and its busiest threads (grouped by
    /// name: `rdk:broker1 x6`), the broker's, and the rest of the machine's (on 2 cores this
    /// says who the bottleneck was).
    pub fn report(a: &CpuSnap, b: &CpuSnap, who: &str) -> String {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |s: f64| 100.0 * s / wall;
        let proc_s = b.process - a.process;
        let broker_s = b.broker - a.broker;
        let other_s = (b.machine - a.machine - proc_s - broker_s).max(0.0);
        let mut by_name: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (tid, (name, cpu)) in &b.threads {
            let before = a.threads.get(tid).map_or(0.0, |t| t.1);
            let e = by_name.entry(name.as_str()).or_default();
            e.0 += 1;
            e.1 += cpu - before;
        }
        let mut threads: Vec<(&str, usize, f64)> = by_name
            .into_iter()
            .filter(|(_, (_, s))| *s > 0.0)
            .map(|(name, (n, s))| (name, n, s))
            .collect();
        threads.sort_by(|x, y| y.2.total_cmp(&x.2));
        let top: Vec<String> = threads
            .iter()
            .take(5)
            .map(|(name, n, s)| {
                let many = if *n > 1 {
                    format!(" x{n}")
                } else {
                    String::new()
                };
                format!("{name}{many} {:.0}%", pct(*s))
            })
            .collect();
        format!(
            "cpu over {wall:.1} s, in % of one core: {who} {:.0} ({}), broker {:.0}, rest of the machine {:.0}",
            pct(proc_s),
            top.join(", "),
            pct(broker_s),
            pct(other_s),
        )
    }
}

/// Peak RSS of `pid` in MiB (0 if unreadable); `pid` may be `self`.
pub fn peak_rss_mib(pid: &str) -> f64 {
    status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `perf record` of a process until stopped or dropped (with SIGINT, so perf writes its file).
/// Only when `BENCH_PERF_DIR` is set: the samples go to `<dir>/<label>.perf.data`;
/// `BENCH_PERF_ARGS` replaces the sampling options (default 999 Hz with DWARF call graphs,
/// which work without frame pointers).
pub struct Perf(Option<Child>);

impl Perf {
    /// Not recording.
    pub fn idle() -> Perf {
        Perf(None)
    }

    /// Starts recording `pid`, if `BENCH_PERF_DIR` asks for it.
    pub fn start(pid: u32, label: &str) -> Perf {
        let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else {
            return Perf(None);
        };
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let out = dir.join(format!("{label}.perf.data"));
        let opts = std::env::var("BENCH_PERF_ARGS")
            .unwrap_or_else(|_| "-F 999 --call-graph dwarf,16384".to_string());
        let child = Command::new("perf")
            .arg("record")
            .args(opts.split_whitespace())
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => {
                println!("    perf recording pid {pid} into {}", out.display());
                Perf(Some(c))
            }
            Err(e) => {
                println!("    perf not started: {e}");
                Perf(None)
            }
        }
    }

    /// Stops recording (perf writes its file before it exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            crate::sig::send(c.id(), 2);
            let _ = c.wait();
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        self.stop();
    }
}
