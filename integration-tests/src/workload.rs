//! Deterministic input records `{"user", "amount", "ts"}` and their expected per-key totals.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

/// First `ts` of every generated stream (2023-11-14T22:13:20Z), then +1 ms per record.
pub const BASE_TS_MS: u64 = 1_700_000_000_000;

/// Generates records `{"user": "user-<k>", "amount": 1..=100, "ts": <ms>}` keyed by user,
/// from a fixed seed (splitmix64: no dependency, same sequence everywhere).
#[derive(Clone, Debug)]
pub struct RecordGen {
    state: u64,
    keys: usize,
    next_ts: u64,
}

impl RecordGen {
    pub fn new(keys: usize, seed: u64) -> RecordGen {
        assert!(keys > 0, "keys must be > 0");
        RecordGen {
            state: seed,
            keys,
            next_ts: BASE_TS_MS,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next (key, value).
    pub fn next_record(&mut self) -> (String, Value) {
        let k = self.next_u64() % self.keys as u64;
        let amount = self.next_u64() % 100 + 1;
        let ts = self.next_ts;
        self.next_ts += 1;
        let user = format!("user-{k}");
        (
            user.clone(),
            json!({ "user": user, "amount": amount, "ts": ts }),
        )
    }
}

/// Expected running aggregate of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub total: u64,
}

/// N records over K keys from a seed, with their expected totals.
#[derive(Clone, Debug)]
pub struct Workload {
    pub records: Vec<(String, Value)>,
    pub keys: usize,
}

impl Workload {
    pub fn new(n: usize, keys: usize, seed: u64) -> Workload {
        let mut gen = RecordGen::new(keys, seed);
        Workload {
            records: (0..n).map(|_| gen.next_record()).collect(),
            keys,
        }
    }

    /// Expected totals per key over all records.
    pub fn expected(&self) -> HashMap<String, Totals> {
        expected_totals(&self.records)
    }

    /// Expected totals over the first `n` records (for input produced in phases).
    pub fn expected_prefix(&self, n: usize) -> HashMap<String, Totals> {
        expected_totals(&self.records[..n])
    }
}

/// Count and sum of `amount` per key.
pub fn expected_totals(records: &[(String, Value)]) -> HashMap<String, Totals> {
    let mut m: HashMap<String, Totals> = HashMap::new();
    for (key, value) in records {
        let amount = value["amount"]
            .as_u64()
            .expect("workload record has an integer amount");
        let t = m.entry(key.clone()).or_default();
        t.count += 1;
        t.total += amount;
    }
    m
}

/// (count, total) of an output value `{"count": n, "total": s}`; numbers may be integers or floats.
fn observed(v: &Value) -> Option<(f64, f64)> {
    Some((v.get("count")?.as_f64()?, v.get("total")?.as_f64()?))
}

/// True when every expected key is present with a count at least the expected count: the
/// worker has (at least) caught up. Use it to wait, then assert with [`check_exact`] or
/// [`check_at_least`].
pub fn reached(expected: &HashMap<String, Totals>, actual: &HashMap<String, Value>) -> bool {
    expected.iter().all(|(k, e)| {
        actual
            .get(k)
            .and_then(observed)
            .is_some_and(|(count, _)| count >= e.count as f64)
    })
}

fn report(
    kind: &str,
    problems: BTreeMap<String, String>,
    expected_keys: usize,
    actual_keys: usize,
) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = problems
        .iter()
        .take(15)
        .map(|(k, p)| format!("  {k}: {p}"))
        .collect();
    Err(format!(
        "{} of {expected_keys} expected keys wrong ({kind}; {actual_keys} keys in output), first ones:\n{}",
        problems.len(),
        shown.join("\n")
    ))
}

/// Every expected key has exactly the expected count and total, and there are no other keys.
pub fn check_exact(
    expected: &HashMap<String, Totals>,
    actual: &HashMap<String, Value>,
) -> Result<(), String> {
    let mut problems = BTreeMap::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => {
                problems.insert(k.clone(), "missing".to_string());
            }
            Some(v) => match observed(v) {
                Some((c, t)) if c == e.count as f64 && t == e.total as f64 => {}
                _ => {
                    problems.insert(
                        k.clone(),
                        format!("expected count {} total {}, got {v}", e.count, e.total),
                    );
                }
            },
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            problems.insert(k.clone(), format!("unexpected key, value {v}"));
        }
    }
    report("exact", problems, expected.len(), actual.len())
}

/// Records counted more than once: the sum over keys of the observed count beyond the expected
/// one (keys below their expected count add nothing; check them with [`check_at_least`]).
pub fn duplicates(expected: &HashMap<String, Totals>, actual: &HashMap<String, Value>) -> u64 {
    expected
        .iter()
        .filter_map(|(k, e)| {
            let (count, _) = observed(actual.get(k)?)?;
            Some((count as u64).saturating_sub(e.count))
        })
        .sum()
}

/// At least once: every expected key is present with count and total >= expected.
pub fn check_at_least(
    expected: &HashMap<String, Totals>,
    actual: &HashMap<String, Value>,
) -> Result<(), String> {
    let mut problems = BTreeMap::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => {
                problems.insert(k.clone(), "missing".to_string());
            }
            Some(v) => match observed(v) {
                Some((c, t)) if c >= e.count as f64 && t >= e.total as f64 => {}
                _ => {
                    problems.insert(
                        k.clone(),
                        format!(
                            "expected count >= {} total >= {}, got {v}",
                            e.count, e.total
                        ),
                    );
                }
            },
        }
    }
    report("at least", problems, expected.len(), actual.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_workload_is_deterministic_and_in_range() {
        let a = Workload::new(1000, 10, 42);
        let b = Workload::new(1000, 10, 42);
        assert_eq!(a.records, b.records);
        assert_ne!(a.records, Workload::new(1000, 10, 43).records);
        for (k, v) in &a.records {
            let amount = v["amount"].as_u64().unwrap();
            assert!((1..=100).contains(&amount));
            assert_eq!(v["user"].as_str().unwrap(), k);
        }
        let e = a.expected();
        assert_eq!(e.len(), 10);
        assert_eq!(e.values().map(|t| t.count).sum::<u64>(), 1000);
        let sum: u64 = a
            .records
            .iter()
            .map(|(_, v)| v["amount"].as_u64().unwrap())
            .sum();
        assert_eq!(e.values().map(|t| t.total).sum::<u64>(), sum);
    }

    #[test]
    fn harness_checks() {
        let w = Workload::new(50, 3, 7);
        let e = w.expected();
        let mut actual: HashMap<String, Value> = e
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    json!({"count": t.count, "total": t.total as f64}),
                )
            })
            .collect();
        assert!(reached(&e, &actual));
        check_exact(&e, &actual).unwrap();
        check_at_least(&e, &actual).unwrap();
        let k = e.keys().next().unwrap().clone();
        actual.insert(
            k.clone(),
            json!({"count": e[&k].count + 1, "total": e[&k].total + 5}),
        );
        assert!(check_exact(&e, &actual).is_err());
        check_at_least(&e, &actual).unwrap();
        actual.remove(&k);
        assert!(!reached(&e, &actual));
        assert!(check_at_least(&e, &actual).is_err());
    }
}
