//! The result rows and the one table they make.

/// Who ran a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    /// The raw consumer: the limit.
    Raw,
    /// The raw pipe: the limit of the stateless job.
    Pipe,
    Tributary,
    KafkaStreams,
}

/// One measured run.
pub struct Row {
    /// The job, e.g. "count + sum per key, no sink, at least once"; Tributary and Kafka Streams
    /// rows of the same job share it.
    pub job: &'static str,
    pub system: System,
    /// The system column's text.
    pub label: String,
    /// The ratio column compares with the raw pipe rather than the raw consumer.
    pub vs_pipe: bool,
    pub records: u64,
    pub seconds: f64,
    pub rss_mib: f64,
    /// Why the run does not count (it failed or a check did not hold).
    pub failure: Option<String>,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    /// A row for a run that did not finish.
    pub fn failed(job: &'static str, system: System, label: String, why: String) -> Row {
        Row {
            job,
            system,
            label,
            vs_pipe: false,
            records: 0,
            seconds: f64::NAN,
            rss_mib: f64::NAN,
            failure: Some(why),
        }
    }

    fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn rate_cell(r: &Row) -> String {
    match &r.failure {
        None => thousands(r.rate()),
        Some(_) => "**failed**".into(),
    }
}

fn mib(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "-".into()
    }
}

fn pct(x: f64, of: Option<f64>) -> String {
    match of {
        Some(of) if x.is_finite() => format!("{:.0} %", 100.0 * x / of),
        _ => "-".into(),
    }
}

/// The table (markdown), then the failures, one line each. Returns the text.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let raw: Vec<&Row> = rows.iter().filter(|r| r.system == System::Raw).collect();
    let raw_rates: Vec<f64> = raw.iter().filter(|r| r.ok()).map(|r| r.rate()).collect();
    let raw_median = median(raw_rates.clone());
    let pipes: Vec<&Row> = rows.iter().filter(|r| r.system == System::Pipe).collect();
    let pipe_median = median(pipes.iter().filter(|r| r.ok()).map(|r| r.rate()).collect());

    out.push_str(
        "| job | system | records/s | ÷ its limit | peak RSS MiB | Tributary ÷ Kafka Streams |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    if !raw.is_empty() {
        let each: Vec<String> = raw
            .iter()
            .map(|r| {
                if r.ok() {
                    thousands(r.rate())
                } else {
                    "failed".into()
                }
            })
            .collect();
        let rss = raw.iter().map(|r| r.rss_mib).fold(f64::NAN, f64::max);
        out.push_str(&format!(
            "| the limit | raw consumer, median of {} runs in the order run ({}) | {} | 100 % | {} |  |\n",
            raw.len(),
            each.join(", "),
            raw_median.map_or("-".into(), thousands),
            mib(rss)
        ));
    }
    for p in &pipes {
        out.push_str(&format!(
            "| the limit of the stateless job | {} | {} | 100 % ({} of the raw consumer) | {} |  |\n",
            p.label,
            rate_cell(p),
            pct(p.rate(), raw_median),
            mib(p.rss_mib)
        ));
    }
    // Jobs in the order first run, each with its Tributary row, then its Kafka Streams row.
    let mut jobs: Vec<&'static str> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| matches!(r.system, System::Tributary | System::KafkaStreams))
    {
        if !jobs.contains(&r.job) {
            jobs.push(r.job);
        }
    }
    for job in jobs {
        let of = |s: System| rows.iter().find(|r| r.job == job && r.system == s);
        let (t, k) = (of(System::Tributary), of(System::KafkaStreams));
        let versus = match (t, k) {
            (Some(t), Some(k)) if t.ok() && k.ok() => format!("**{:.2}×**", t.rate() / k.rate()),
            _ => String::new(),
        };
        let mut first = true;
        for r in [t, k].into_iter().flatten() {
            let limit = if r.vs_pipe { pipe_median } else { raw_median };
            let ratio = if r.ok() {
                pct(r.rate(), limit)
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                if first { job } else { "" },
                r.label,
                rate_cell(r),
                ratio,
                mib(r.rss_mib),
                if r.system == System::Tributary {
                    versus.as_str()
                } else {
                    ""
                }
            ));
            first = false;
        }
    }
    for r in rows.iter().filter(|r| !r.ok()) {
        out.push_str(&format!(
            "\nFAILED: {} / {}: {}",
            r.job,
            r.label,
            r.failure.as_deref().unwrap_or_default()
        ));
    }
    out
}
