//! The checks that a run processed every record and got the right answer, the same for
//! Tributary and Kafka Streams: committed offsets = end offsets, and the sink topics' contents
//! against what the input implies (computed here, independently of both).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use integration_tests::{committed_offsets, unique_name, watermarks};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tributary_generator::{KeyDistribution, KeyTotal, RecordGenerator};

use crate::WINDOW_MS;

/// What a run must show afterwards, besides consumed = N and committed offsets = end offsets.
#[derive(Clone, Copy)]
pub enum Check {
    /// the state of [`crate::CHECK_KEYS`] = the generator's totals.
    State,
    /// [`Check::State`], and every one of the N outputs acknowledged (the sink scenarios).
    StateAndOutputs,
    /// The sink holds what [`StatelessExpect`] says.
    Stateless,
    /// The sink holds what [`WindowExpect`] says.
    Window,
}

/// What the input implies, computed once per run.
pub struct Expected {
    /// Per key, from the generator's seed.
    pub totals: BTreeMap<String, KeyTotal>,
    pub stateless: StatelessExpect,
    /// Read from the input topic, if a window job runs.
    pub windows: Option<WindowExpect>,
}

impl Expected {
    /// The content check of `check` on `sink`, if it has one.
    pub fn check_sink(
        &self,
        bootstrap: &str,
        check: Check,
        sink: Option<&str>,
    ) -> Option<Result<String, String>> {
        match (check, sink) {
            (Check::Stateless, Some(topic)) => Some(self.stateless.check(bootstrap, topic, 2)),
            (Check::Window, Some(topic)) => Some(match &self.windows {
                Some(w) => w.check(bootstrap, topic, WINDOW_MS),
                None => Err("no expected windows computed".to_string()),
            }),
            _ => None,
        }
    }
}

/// The end (high watermark) of each partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    (0..partitions)
        .map(|p| {
            let (_, high) = watermarks(bootstrap, topic, p)
                .unwrap_or_else(|e| panic!("watermarks of {topic}[{p}]: {e}"));
            (p, high)
        })
        .collect()
}

/// Group `group` has committed `ends` on `topic` (polled for up to 30 s).
pub fn committed_to_end(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = committed_offsets(bootstrap, group, topic).map_err(|e| e.to_string())?;
        if ends.iter().all(|(p, end)| got.get(p) == Some(end)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut got: Vec<_> = got.into_iter().collect();
            got.sort_unstable();
            let mut ends: Vec<_> = ends.iter().collect();
            ends.sort_unstable();
            return Err(format!(
                "group {group} committed {got:?} on {topic}, its end offsets are {ends:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads every record `topic` has now, from the beginning, calling `each(partition, key,
/// value)`; returns how many it read. Read uncommitted: the end is the high watermark (the
/// sinks checked here are not transactional).
pub fn scan_topic(
    bootstrap: &str,
    topic: &str,
    mut each: impl FnMut(i32, Option<&[u8]>, Option<&[u8]>),
) -> Result<u64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("bench-scan"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", "10")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {topic}[{p}]: {e}"))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| e.to_string())?;
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut n = 0u64;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            return Err(format!(
                "reading {topic}: partitions {ends:?} not read to the end in 600 s"
            ));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                each(m.partition(), m.key(), m.payload());
                n += 1;
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => eprintln!("  reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(n)
}

/// Per key: (records, sum of amount).
type PerKey = BTreeMap<String, (u64, u64)>;

/// What the stateless job (`filter amount > 50`) passes on, per key, from the generator's seed.
pub struct StatelessExpect {
    pub records: u64,
    per_key: PerKey,
}

impl StatelessExpect {
    pub fn new(keys: u64, seed: u64, records: u64) -> StatelessExpect {
        let gen = RecordGenerator::new(keys, &KeyDistribution::Uniform, seed).expect("generator");
        let mut per_key = PerKey::new();
        let mut n = 0;
        for s in gen.take(records as usize).filter(|s| s.amount > 50) {
            let e = per_key.entry(s.key_name()).or_default();
            e.0 += 1;
            e.1 += s.amount;
            n += 1;
        }
        StatelessExpect {
            records: n,
            per_key,
        }
    }

    /// `topic` holds, per key, the expected records, their `amount`s summing to `factor` times
    /// the input's (2: the job's `amount * 2`; 1: the raw pipe's copies), and `user` equal to
    /// the key.
    pub fn check(&self, bootstrap: &str, topic: &str, factor: u64) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Out<'a> {
            user: &'a str,
            amount: u64,
        }
        let mut got = PerKey::new();
        let mut bad = Vec::new();
        let n = scan_topic(bootstrap, topic, |p, key, value| {
            let key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
            match value.map(serde_json::from_slice::<Out>) {
                Some(Ok(out)) if out.user == key => {
                    let e = got.entry(key).or_default();
                    e.0 += 1;
                    e.1 += out.amount;
                }
                _ if bad.len() < 3 => bad.push(format!(
                    "[{p}] {key}: {}",
                    String::from_utf8_lossy(value.unwrap_or_default())
                )),
                _ => {}
            }
        })?;
        if !bad.is_empty() {
            return Err(format!("{topic}: unexpected records, e.g. {bad:?}"));
        }
        let want: PerKey = self
            .per_key
            .iter()
            .map(|(k, (c, s))| (k.clone(), (*c, s * factor)))
            .collect();
        if got != want {
            let diff: Vec<String> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(3)
                .map(|(k, v)| format!("{k}: expected {v:?}, got {:?}", got.get(k)))
                .collect();
            return Err(format!(
                "{topic}: {n} records (expected {}); per key (records, sum of amount) differ, e.g. {diff:?}",
                self.records
            ));
        }
        Ok(format!(
            "{topic}: {n} records, per key count and sum of amount = expected"
        ))
    }
}

/// The final results of the 10 s tumbling window job, computed from the input topic as
/// both systems define them: per partition (= task), stream time is the largest `ts` seen;
/// a record whose window ended at or before stream time is late and dropped; a window is
/// emitted once stream time reaches its end (grace 0). Key: (user, window start).
pub struct WindowExpect {
    windows: BTreeMap<(String, i64), (u64, u64)>,
    pub late: u64,
}

impl WindowExpect {
    pub fn from_input(bootstrap: &str, topic: &str, size_ms: i64) -> Result<WindowExpect, String> {
        #[derive(Deserialize)]
        struct In {
            amount: u64,
            ts: i64,
        }
        let mut stream_time: HashMap<i32, i64> = HashMap::new();
        // (partition, key, window start) -> (count, sum).
        let mut all: HashMap<(i32, String, i64), (u64, u64)> = HashMap::new();
        let mut late = 0;
        let mut bad = 0;
        scan_topic(bootstrap, topic, |p, key, value| {
            let Some(rec) = value.and_then(|v| serde_json::from_slice::<In>(v).ok()) else {
                bad += 1;
                return;
            };
            let st = stream_time.entry(p).or_insert(i64::MIN);
            *st = (*st).max(rec.ts);
            let start = rec.ts.div_euclid(size_ms) * size_ms;
            if start + size_ms <= *st {
                late += 1;
                return;
            }
            let key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
            let e = all.entry((p, key, start)).or_default();
            e.0 += 1;
            e.1 += rec.amount;
        })?;
        if bad > 0 {
            return Err(format!("{topic}: {bad} records without amount and ts"));
        }
        let windows = all
            .into_iter()
            .filter(|((p, _, start), _)| start + size_ms <= stream_time[p])
            .map(|((_, key, start), v)| ((key, start), v))
            .collect();
        Ok(WindowExpect { windows, late })
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// `topic` holds exactly the expected final windows, each once.
    pub fn check(&self, bootstrap: &str, topic: &str, size_ms: i64) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Out {
            count: u64,
            total: u64,
            window_start: i64,
            window_end: i64,
        }
        let mut got: BTreeMap<(String, i64), (u64, u64)> = BTreeMap::new();
        let mut bad = Vec::new();
        scan_topic(bootstrap, topic, |p, key, value| {
            let key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
            match value.map(serde_json::from_slice::<Out>) {
                Some(Ok(w)) if w.window_end == w.window_start + size_ms => {
                    let dup = got.insert((key.clone(), w.window_start), (w.count, w.total));
                    if dup.is_some() && bad.len() < 3 {
                        bad.push(format!(
                            "[{p}] {key}: window {} emitted twice",
                            w.window_start
                        ));
                    }
                }
                _ if bad.len() < 3 => bad.push(format!(
                    "[{p}] {key}: {}",
                    String::from_utf8_lossy(value.unwrap_or_default())
                )),
                _ => {}
            }
        })?;
        if !bad.is_empty() {
            return Err(format!("{topic}: unexpected records, e.g. {bad:?}"));
        }
        if got != self.windows {
            let missing: Vec<String> = self
                .windows
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(3)
                .map(|(k, v)| format!("{k:?}: expected {v:?}, got {:?}", got.get(k)))
                .collect();
            let extra: Vec<String> = got
                .keys()
                .filter(|k| !self.windows.contains_key(*k))
                .take(3)
                .map(|k| format!("{k:?}"))
                .collect();
            return Err(format!(
                "{topic}: {} windows, expected {}; e.g. differing {missing:?}, unexpected {extra:?}",
                got.len(),
                self.windows.len()
            ));
        }
        Ok(format!(
            "{topic}: the {} closed windows, each once, count and sum = expected",
            got.len()
        ))
    }
}

/// Polls the state of each of [`crate::CHECK_KEYS`] (`get` of `path(key)`: a JSON object with
/// `count` and `total`) until it equals the generator's totals, for at most a minute (the
/// state is visible once committed).
pub fn await_check_keys(
    get: impl Fn(&str) -> Option<serde_json::Value>,
    path: impl Fn(&str) -> String,
    totals: &BTreeMap<String, KeyTotal>,
) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    for k in crate::CHECK_KEYS {
        let key = format!("user-{k}");
        let want = totals.get(&key).copied().unwrap_or_default();
        loop {
            let got = get(&path(&key));
            let count = got.as_ref().and_then(|v| v["count"].as_u64());
            let total = got.as_ref().and_then(|v| v["total"].as_f64());
            if count == Some(want.count) && total == Some(want.sum) {
                break;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{key}: state {got:?}, expected count {} total {}",
                    want.count, want.sum
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}
