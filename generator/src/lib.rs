//! The synthetic records of `tributary generate`, as a pure model: which key and amount each
//! record gets, and the totals a run implies. The command line writes them to Kafka; the
//! benchmarks compute what the jobs must output from the same seed, without reading Kafka.
//!
//! - key: `user-<n>` with `n` in `0..keys`, chosen uniformly or with a Zipf skew (`user-0` is
//!   then the most frequent key);
//! - value: JSON `{"user":"user-<n>","amount":<integer 1..=100>,"ts":<epoch ms>}`.
//!
//! Keys and amounts are a pure function of the seed ([`RecordGenerator`]); only `ts` is the
//! wall clock. Amounts are integers, so the `f64` sums of [`KeyTotal`] are exact.
//!
//! Records of any other shape come from a JSON template of typed random fields
//! ([`template`], `tributary generate --template FILE`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod json;
pub mod template;

pub use template::{Datum, Template, TemplateError, TemplateGenerator, TemplateRecord};

/// Number of distinct keys when none is given (`--keys`).
pub const DEFAULT_KEYS: u64 = 1000;

/// Seed used when none is given.
pub const DEFAULT_SEED: u64 = 42;

/// How the generator chooses the key of each record.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum KeyDistribution {
    /// Every key equally likely.
    #[default]
    Uniform,
    /// Key rank `k` (1-based; rank 1 is `user-0`) has weight `1 / k^exponent`.
    Zipf {
        /// The skew; 0 is uniform, around 1 is the classic Zipf law, larger is more skewed.
        exponent: f64,
    },
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDistribution::Uniform => f.write_str("uniform"),
            KeyDistribution::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

impl FromStr for KeyDistribution {
    type Err = String;

    /// Parses `uniform`, `zipf` (exponent 1.0) or `zipf:<exponent>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("uniform") {
            return Ok(KeyDistribution::Uniform);
        }
        if s.eq_ignore_ascii_case("zipf") {
            return Ok(KeyDistribution::Zipf { exponent: 1.0 });
        }
        if let Some(exp) = s
            .strip_prefix("zipf:")
            .or_else(|| s.strip_prefix("ZIPF:"))
            .or_else(|| s.strip_prefix("zipf="))
        {
            let exponent: f64 = exp
                .trim()
                .parse()
                .map_err(|_| format!("invalid zipf exponent {exp:?}: expected a number"))?;
            let d = KeyDistribution::Zipf { exponent };
            d.check()?;
            return Ok(d);
        }
        Err(format!(
            "unknown key distribution {s:?}: expected \"uniform\", \"zipf\" or \"zipf:<exponent>\""
        ))
    }
}

impl KeyDistribution {
    /// Whether the parameters make sense (a Zipf exponent is finite and not negative).
    pub fn check(&self) -> Result<(), String> {
        match self {
            KeyDistribution::Uniform => Ok(()),
            KeyDistribution::Zipf { exponent } if exponent.is_finite() && *exponent >= 0.0 => {
                Ok(())
            }
            KeyDistribution::Zipf { exponent } => Err(format!(
                "zipf exponent must be a finite number >= 0, got {exponent}"
            )),
        }
    }
}

/// Per-key bookkeeping of what was written (and acknowledged).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyTotal {
    /// Records with this key.
    pub count: u64,
    /// Sum of their `amount` fields (exact: amounts are small integers).
    pub sum: f64,
}

/// The key name of key index `n`: `user-<n>`.
pub fn key_name(n: u64) -> String {
    format!("user-{n}")
}

/// Chooses key indexes in `0..keys` according to a [`KeyDistribution`].
#[derive(Debug, Clone)]
pub struct KeySampler {
    keys: u64,
    /// Zipf only: cumulative weights, `cumulative[i]` = sum of 1/k^s for k in 1..=i+1.
    cumulative: Option<Vec<f64>>,
}

impl KeySampler {
    /// A sampler over `keys` keys (at least 1).
    ///
    /// Zipf precomputes the cumulative weights (8 bytes per key) and samples by inverse
    /// CDF with a binary search.
    pub fn new(keys: u64, distribution: &KeyDistribution) -> Result<Self, String> {
        if keys == 0 {
            return Err("keys must be at least 1".into());
        }
        distribution.check()?;
        let cumulative = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipf { exponent } => {
                let n = usize::try_from(keys).map_err(|_| format!("too many keys: {keys}"))?;
                let mut acc = 0.0f64;
                let mut cumulative = Vec::with_capacity(n);
                for k in 1..=n {
                    acc += (k as f64).powf(-exponent);
                    cumulative.push(acc);
                }
                Some(cumulative)
            }
        };
        Ok(KeySampler { keys, cumulative })
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The next key index, in `0..keys`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.cumulative {
            None => rng.random_range(0..self.keys),
            Some(cumulative) => {
                let total = *cumulative.last().expect("at least one key");
                let u = rng.random::<f64>() * total;
                let i = cumulative.partition_point(|&c| c <= u);
                i.min(cumulative.len() - 1) as u64
            }
        }
    }
}

/// One generated record, before encoding: key index and amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Key index: the key is [`key_name`]`(key)`.
    pub key: u64,
    /// The amount, in 1..=100.
    pub amount: u64,
}

impl Sample {
    /// The record key, `user-<n>`.
    pub fn key_name(&self) -> String {
        key_name(self.key)
    }

    /// The record value as JSON, with the given timestamp (epoch ms).
    pub fn to_json(&self, ts_ms: i64) -> String {
        format!(
            r#"{{"user":"user-{}","amount":{},"ts":{}}}"#,
            self.key, self.amount, ts_ms
        )
    }
}

/// The deterministic sequence of (key, amount) pairs of a run: the same keys, distribution
/// and seed give the same sequence, which is what `tributary generate` writes.
#[derive(Debug, Clone)]
pub struct RecordGenerator {
    sampler: KeySampler,
    rng: StdRng,
}

impl RecordGenerator {
    /// A generator over `keys` keys with the given distribution and seed.
    pub fn new(keys: u64, distribution: &KeyDistribution, seed: u64) -> Result<Self, String> {
        Ok(RecordGenerator {
            sampler: KeySampler::new(keys, distribution)?,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next record.
    pub fn next_sample(&mut self) -> Sample {
        let key = self.sampler.sample(&mut self.rng);
        let amount = self.rng.random_range(1..=100u64);
        Sample { key, amount }
    }

    /// The per-key totals of the first `records` records of this sequence (what a
    /// successful `tributary generate` with the same options writes), without Kafka.
    pub fn expected_totals(mut self, records: u64) -> BTreeMap<String, KeyTotal> {
        let mut totals = Totals::new(self.sampler.keys());
        for _ in 0..records {
            let s = self.next_sample();
            totals.add(s.key, s.amount);
        }
        totals.into_map()
    }
}

impl Iterator for RecordGenerator {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        Some(self.next_sample())
    }
}

/// Dense per-key totals of records as they are written (or acknowledged), turned into a map
/// by key name at the end.
#[derive(Debug, Clone)]
pub struct Totals {
    by_key: Vec<(u64, u64)>,
}

impl Totals {
    /// Empty totals for key indexes in `0..keys`.
    pub fn new(keys: u64) -> Self {
        // Key indexes are dense; very large key spaces fall back to growing on demand.
        let cap = usize::try_from(keys.min(1 << 24)).unwrap_or(1 << 24);
        Totals {
            by_key: vec![(0, 0); cap],
        }
    }

    /// Counts one record of key index `key`.
    pub fn add(&mut self, key: u64, amount: u64) {
        let i = key as usize;
        if i >= self.by_key.len() {
            self.by_key.resize(i + 1, (0, 0));
        }
        let t = &mut self.by_key[i];
        t.0 += 1;
        t.1 += amount;
    }

    /// Per key name, the keys that got a record.
    pub fn into_map(self) -> BTreeMap<String, KeyTotal> {
        self.by_key
            .into_iter()
            .enumerate()
            .filter(|(_, (count, _))| *count > 0)
            .map(|(i, (count, sum))| {
                (
                    key_name(i as u64),
                    KeyTotal {
                        count,
                        sum: sum as f64,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(keys: u64, dist: &KeyDistribution, seed: u64, n: usize) -> Vec<u64> {
        let mut g = RecordGenerator::new(keys, dist, seed).unwrap();
        let mut c = vec![0u64; keys as usize];
        for _ in 0..n {
            let s = g.next_sample();
            assert!(s.key < keys);
            assert!((1..=100).contains(&s.amount));
            c[s.key as usize] += 1;
        }
        c
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let c = counts(100, &KeyDistribution::Uniform, 7, 100_000);
        assert!(c.iter().all(|&n| n > 0), "every key is drawn");
        let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
        // Expected 1000 each; binomial sd ~31.
        assert!(min > 850 && max < 1150, "min {min} max {max}");
    }

    #[test]
    fn zipf_is_skewed_towards_low_ranks() {
        let c = counts(1000, &KeyDistribution::Zipf { exponent: 1.0 }, 7, 200_000);
        // P(rank 1) = 1/H(1000) ~ 0.1336; P(rank 2) ~ 0.0668.
        let p0 = c[0] as f64 / 200_000.0;
        let p1 = c[1] as f64 / 200_000.0;
        assert!((p0 - 0.1336).abs() < 0.005, "p0 = {p0}");
        assert!((p1 - 0.0668).abs() < 0.004, "p1 = {p1}");
        assert!(c[0] > c[9] && c[9] > c[99] && c[99] > c[999]);
        // The top 10 keys take ~39 % of the records.
        let top10: u64 = c[..10].iter().sum();
        let share = top10 as f64 / 200_000.0;
        assert!((share - 0.391).abs() < 0.01, "top-10 share {share}");
    }

    #[test]
    fn zipf_exponent_zero_is_uniform_and_one_key_works() {
        let c = counts(10, &KeyDistribution::Zipf { exponent: 0.0 }, 1, 50_000);
        assert!(c.iter().all(|&n| (4500..5500).contains(&n)), "{c:?}");
        let c = counts(1, &KeyDistribution::Zipf { exponent: 2.0 }, 1, 100);
        assert_eq!(c, vec![100]);
        let c = counts(1, &KeyDistribution::Uniform, 1, 100);
        assert_eq!(c, vec![100]);
    }

    #[test]
    fn same_seed_same_records_other_seed_other_records() {
        let z = KeyDistribution::Zipf { exponent: 1.2 };
        let a: Vec<Sample> = RecordGenerator::new(500, &z, 99)
            .unwrap()
            .take(1000)
            .collect();
        let b: Vec<Sample> = RecordGenerator::new(500, &z, 99)
            .unwrap()
            .take(1000)
            .collect();
        let c: Vec<Sample> = RecordGenerator::new(500, &z, 100)
            .unwrap()
            .take(1000)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn expected_totals_add_up() {
        let g = RecordGenerator::new(50, &KeyDistribution::Uniform, 3).unwrap();
        let samples: Vec<Sample> = g.clone().take(10_000).collect();
        let totals = g.expected_totals(10_000);
        assert_eq!(totals.values().map(|t| t.count).sum::<u64>(), 10_000);
        let sum: f64 = totals.values().map(|t| t.sum).sum();
        assert_eq!(sum, samples.iter().map(|s| s.amount).sum::<u64>() as f64);
        let k7: Vec<&Sample> = samples.iter().filter(|s| s.key == 7).collect();
        assert_eq!(
            totals["user-7"],
            KeyTotal {
                count: k7.len() as u64,
                sum: k7.iter().map(|s| s.amount).sum::<u64>() as f64
            }
        );
        // Keys without records are absent.
        let few = RecordGenerator::new(1000, &KeyDistribution::Uniform, 3)
            .unwrap()
            .expected_totals(5);
        assert!(few.len() <= 5);
        assert!(few.values().all(|t| t.count >= 1));
    }

    #[test]
    fn totals_grow_past_their_initial_capacity() {
        let mut t = Totals::new(2);
        t.add(0, 5);
        t.add(10, 7);
        t.add(10, 1);
        let m = t.into_map();
        assert_eq!(m.len(), 2);
        assert_eq!(m["user-10"], KeyTotal { count: 2, sum: 8.0 });
    }

    #[test]
    fn record_encoding() {
        let s = Sample {
            key: 12,
            amount: 34,
        };
        assert_eq!(s.key_name(), "user-12");
        let v: serde_json::Value = serde_json::from_str(&s.to_json(1_700_000_000_000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user": "user-12", "amount": 34, "ts": 1_700_000_000_000i64})
        );
    }

    #[test]
    fn distribution_parsing() {
        assert_eq!(
            "uniform".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Uniform
        );
        assert_eq!(
            "zipf".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipf { exponent: 1.0 }
        );
        assert_eq!(
            "zipf:1.5".parse::<KeyDistribution>().unwrap(),
            KeyDistribution::Zipf { exponent: 1.5 }
        );
        assert!("zipf:-1".parse::<KeyDistribution>().is_err());
        assert!("zipf:x".parse::<KeyDistribution>().is_err());
        assert!("normal".parse::<KeyDistribution>().is_err());
        let d = KeyDistribution::Zipf { exponent: 1.5 };
        assert_eq!(d.to_string().parse::<KeyDistribution>().unwrap(), d);
    }
}
