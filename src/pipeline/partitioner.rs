//! Sink partitioners (`sink.partitioner`): which partition of the sink topic a record goes to.
//!
//! `murmur2` is the Java client's default partitioner, bit for bit (`Utils.murmur2`, then
//! `toPositive(hash) % partitions`), so a key lands where a Java producer (or Kafka Streams)
//! would put it and joins against Java-produced topics stay co-partitioned.

use rand::{Rng, RngCore};

use crate::config::{ConfigIssue, KeyPartitioner};

/// A parsed `sink.partitioner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Partitioner {
    /// `murmur2` (default): hash of the key; records without a key are spread by the producer.
    Murmur2,
    /// `round_robin`: each task cycles through the partitions.
    RoundRobin,
    /// `random`: each record goes to a partition drawn uniformly at random.
    Random,
    /// `field:<name>`: murmur2 hash of one top-level field of the value (as key text).
    Field(String),
    /// `range:<b1,b2,...>`: keys below `b1` go to partition 0, keys in `[b1, b2)` to 1, ...,
    /// keys at or above the last bound to partition `n` (byte-wise string order).
    Range(Vec<String>),
}

impl Partitioner {
    /// Parses `murmur2`, `round_robin`, `random`, `field:<name>` or `range:<b1,b2,...>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "murmur2" => Ok(Self::Murmur2),
            None if s == "round_robin" => Ok(Self::RoundRobin),
            None if s == "random" => Ok(Self::Random),
            Some(("field", field)) if !field.trim().is_empty() => {
                Ok(Self::Field(field.trim().to_string()))
            }
            Some(("range", bounds)) => {
                let bounds: Vec<String> = bounds.split(',').map(str::to_string).collect();
                if bounds.iter().any(|b| b.is_empty()) {
                    return Err(format!("range bounds must not be empty, found {s:?}"));
                }
                if let Some(w) = bounds.windows(2).find(|w| w[0] >= w[1]) {
                    return Err(format!(
                        "range bounds must be strictly increasing, found {:?} then {:?}",
                        w[0], w[1]
                    ));
                }
                Ok(Self::Range(bounds))
            }
            _ => Err(format!(
                "unknown partitioner {s:?}: use murmur2, round_robin, random, field:<name> or range:<b1,b2,...>"
            )),
        }
    }

    /// Checks the partitioner against the sink topic's partition count (a range needs one
    /// partition more than it has bounds).
    pub fn check(&self, topic: &str, partitions: i32) -> Result<(), ConfigIssue> {
        match self {
            Self::Range(bounds) if bounds.len() as i64 + 1 > i64::from(partitions) => {
                Err(ConfigIssue::new(
                    "sink.partitioner",
                    format!(
                        "{} range bounds need {} partitions, but topic {topic:?} has {partitions}",
                        bounds.len(),
                        bounds.len() + 1
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The partition for a record, given its key, the field's key text for `field:` (looked up
    /// by the caller), the round-robin counter, the random source of `random`, and the topic's
    /// partition count. `Ok(None)` leaves the choice to the producer (murmur2 with no key).
    pub fn partition(
        &self,
        key: Option<&[u8]>,
        field: Option<&[u8]>,
        counter: &mut u64,
        rng: &mut dyn RngCore,
        partitions: i32,
    ) -> Result<Option<i32>, String> {
        let n = partitions.max(1);
        Ok(match self {
            Self::Murmur2 => key.map(|k| partition_for_key(k, n)),
            Self::RoundRobin => {
                let p = (*counter % n as u64) as i32;
                *counter = counter.wrapping_add(1);
                Some(p)
            }
            Self::Random => Some(rng.random_range(0..n)),
            Self::Field(name) => {
                let f = field.ok_or_else(|| {
                    format!(
                        "partitioner field:{name}: the value has no field `{name}` (or it is null)"
                    )
                })?;
                Some(partition_for_key(f, n))
            }
            Self::Range(bounds) => {
                let k =
                    key.ok_or("the range partitioner needs a record key; this record has none")?;
                // Bounds are sorted: the partition is the number of bounds <= key.
                let p = bounds.partition_point(|b| b.as_bytes() <= k) as i32;
                Some(p.min(n - 1))
            }
        })
    }
}

/// The Java client's `Utils.murmur2` (MurmurHash2, seed `0x9747b28c`), as a signed 32-bit value.
pub(crate) fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // The Java switch falls through from the highest remaining byte down.
        if rest.len() >= 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives a key:
/// `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The partition librdkafka's default partitioner (`consistent_random`, for a keyed record)
/// gives a key: `crc32(key) % partitions`, unsigned.
pub fn crc32_partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    (crc32fast::hash(key) % n) as i32
}

/// The partition `partitioner` gives `key` among `partitions`.
pub fn key_partition(partitioner: KeyPartitioner, key: &[u8], partitions: i32) -> i32 {
    match partitioner {
        KeyPartitioner::Murmur2 => partition_for_key(key, partitions),
        KeyPartitioner::Crc32 => crc32_partition_for_key(key, partitions),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    /// A fixed random source: the partitioners other than `random` must not depend on it.
    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// The vectors of the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn key_partition_is_to_positive_mod_n() {
        // toPositive(-973932308) = 1173551340; 1173551340 % 6 = 0, % 7 = 1173551340 % 7.
        assert_eq!(partition_for_key(b"21", 6), 1_173_551_340 % 6);
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
    }

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!(Partitioner::parse("murmur2"), Ok(Partitioner::Murmur2));
        assert_eq!(
            Partitioner::parse("round_robin"),
            Ok(Partitioner::RoundRobin)
        );
        assert_eq!(Partitioner::parse("random"), Ok(Partitioner::Random));
        assert_eq!(
            Partitioner::parse("field:user"),
            Ok(Partitioner::Field("user".into()))
        );
        assert_eq!(
            Partitioner::parse("range:g,p"),
            Ok(Partitioner::Range(vec!["g".into(), "p".into()]))
        );
        for bad in [
            "hash",
            "field:",
            "range:",
            "range:b,a",
            "range:a,,b",
            "round_robin:x",
            "random:x",
            "Random",
        ] {
            assert!(Partitioner::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn range_sends_key_ranges_to_ordered_partitions() {
        let p = Partitioner::parse("range:g,p").unwrap();
        let mut c = 0;
        let at = |k: &str, c: &mut u64| {
            p.partition(Some(k.as_bytes()), None, c, &mut rng(), 3)
                .unwrap()
        };
        assert_eq!(at("alice", &mut c), Some(0));
        assert_eq!(at("g", &mut c), Some(1));
        assert_eq!(at("mallory", &mut c), Some(1));
        assert_eq!(at("p", &mut c), Some(2));
        assert_eq!(at("zed", &mut c), Some(2));
        assert!(p.partition(None, None, &mut c, &mut rng(), 3).is_err());
        assert!(p.check("out", 2).is_err());
        assert!(p.check("out", 3).is_ok());
    }

    #[test]
    fn round_robin_cycles_and_field_hashes_the_field() {
        let p = Partitioner::RoundRobin;
        let mut c = 0;
        let got: Vec<_> = (0..5)
            .map(|_| {
                p.partition(None, None, &mut c, &mut rng(), 3)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1]);
        let f = Partitioner::Field("user".into());
        assert_eq!(
            f.partition(Some(b"ignored"), Some(b"21"), &mut c, &mut rng(), 7)
                .unwrap(),
            Some(partition_for_key(b"21", 7))
        );
        assert!(f
            .partition(Some(b"k"), None, &mut c, &mut rng(), 7)
            .is_err());
    }

    #[test]
    fn murmur2_with_no_key_is_left_to_the_producer() {
        let mut c = 0;
        assert_eq!(
            Partitioner::Murmur2
                .partition(None, None, &mut c, &mut rng(), 4)
                .unwrap(),
            None
        );
    }

    /// 10,000 records over 6 partitions: each partition gets its share (1667 expected, a
    /// standard deviation of 37; the bound of 1000 is 18 of them away), whatever the key, and
    /// the choice does not follow the key (the same key lands on every partition).
    #[test]
    fn random_spreads_records_over_every_partition() {
        let p = Partitioner::parse("random").unwrap();
        let mut counts = [0u32; 6];
        let mut c = 0;
        let mut source = rand::rng();
        for i in 0..10_000u32 {
            let key = if i % 2 == 0 {
                Some(&b"same-key"[..])
            } else {
                None
            };
            let at = p.partition(key, None, &mut c, &mut source, 6).unwrap();
            counts[usize::try_from(at.expect("random always chooses")).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&n| n >= 1000), "{counts:?}");
        assert_eq!(counts.iter().sum::<u32>(), 10_000);
        assert_eq!(c, 0, "the round-robin counter is not used");
        // One partition: always 0.
        assert_eq!(
            p.partition(None, None, &mut c, &mut source, 1).unwrap(),
            Some(0)
        );
    }
}
