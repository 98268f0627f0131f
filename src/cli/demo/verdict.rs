//! The demo's verdict: every key's final count and sum in the sink against what was generated,
//! told in the terms of the guarantee the demo runs under (at least once: records the killed
//! worker processed after its last commit are processed again by their new owner, so a key
//! may be counted twice for them; none may be lost).

use std::collections::{BTreeMap, HashMap};

use tributary_generator::KeyTotal;

/// The outcome of comparing the sink's final totals with the generated ones.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Verdict {
    /// Keys whose count and sum match.
    pub exact: usize,
    /// Records counted more than once, over every over-counted key.
    pub duplicates: u64,
    /// Keys counted more than generated (as lines for the report).
    pub over: Vec<String>,
    /// Keys counted less than generated: records lost.
    pub under: Vec<String>,
    /// Keys absent from the sink.
    pub missing: Vec<String>,
}

/// Compares the sink's last value per key (`{"count": .., "total": ..}`) with `expected`.
pub(super) fn compare(
    expected: &BTreeMap<String, KeyTotal>,
    actual: &HashMap<Vec<u8>, Vec<u8>>,
) -> Verdict {
    let mut v = Verdict::default();
    for (key, want) in expected {
        let Some(raw) = actual.get(key.as_bytes()) else {
            v.missing.push(key.clone());
            continue;
        };
        let got: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
        let count = got["count"].as_u64().unwrap_or(0);
        let total = got["total"].as_f64().unwrap_or(f64::NAN);
        let line = || {
            format!(
                "{key}: count {count} (expected {}), total {total} (expected {})",
                want.count, want.sum
            )
        };
        if count == want.count && total == want.sum {
            v.exact += 1;
        } else if count > want.count && total >= want.sum {
            // Records counted twice. (A count that matches with another sum is not: a record
            // lost and another counted twice. That is a loss, below.)
            v.duplicates += count - want.count;
            v.over.push(line());
        } else {
            v.under.push(line());
        }
    }
    v
}

impl Verdict {
    /// No record lost: no key under-counted or missing.
    pub fn nothing_lost(&self) -> bool {
        self.under.is_empty() && self.missing.is_empty()
    }

    /// `1000 keys: 998 exact, 2 over-counted, 0 under-counted, 0 missing`.
    pub fn summary(&self) -> String {
        format!(
            "{} keys: {} exact, {} over-counted, {} under-counted, {} missing",
            self.exact + self.over.len() + self.under.len() + self.missing.len(),
            self.exact,
            self.over.len(),
            self.under.len(),
            self.missing.len()
        )
    }

    /// The last line the demo prints. `unclean` names the workers that did not stop cleanly
    /// on SIGTERM (a failure too).
    pub fn conclusion(&self, unclean: &[String]) -> String {
        if !self.nothing_lost() {
            return format!(
                "FAILED: records were lost: {} key(s) under-counted or inconsistent, {} key(s) missing",
                self.under.len(),
                self.missing.len()
            );
        }
        if !unclean.is_empty() {
            return format!(
                "FAILED: {} did not stop cleanly on SIGTERM (no record was lost)",
                unclean.join(", ")
            );
        }
        match self.duplicates {
            0 => "exact: every key's count and sum match what was generated (at least once \
                  would have allowed records counted twice after the kill; there were none)"
                .to_string(),
            n => format!(
                "no record lost; {n} record(s) counted twice after the kill, allowed under \
                 at_least_once: the killed worker's records after its last commit were \
                 processed again by their new owner (exactly_once would not count them twice)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record lost and another of the same key counted twice leave the count right and
    /// the sum wrong: a loss, never "exact".
    #[test]
    fn a_right_count_with_a_wrong_sum_is_a_loss() {
        let want: BTreeMap<String, KeyTotal> = [(
            "k".to_string(),
            KeyTotal {
                count: 2,
                sum: 30.0,
            },
        )]
        .into();
        let got: HashMap<Vec<u8>, Vec<u8>> =
            [(b"k".to_vec(), br#"{"count":2,"total":40}"#.to_vec())].into();
        let v = compare(&want, &got);
        assert!(!v.nothing_lost(), "{v:?}");
        assert!(
            v.conclusion(&[]).starts_with("FAILED"),
            "{}",
            v.conclusion(&[])
        );
    }

    fn expected() -> BTreeMap<String, KeyTotal> {
        [
            (
                "a".to_string(),
                KeyTotal {
                    count: 2,
                    sum: 30.0,
                },
            ),
            ("b".to_string(), KeyTotal { count: 1, sum: 5.0 }),
        ]
        .into()
    }

    fn actual(values: &[(&str, &str)]) -> HashMap<Vec<u8>, Vec<u8>> {
        values
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn exact_totals_promise_nothing_beyond_what_happened() {
        let v = compare(
            &expected(),
            &actual(&[
                ("a", r#"{"count":2,"total":30}"#),
                ("b", r#"{"count":1,"total":5}"#),
            ]),
        );
        assert_eq!(
            v.summary(),
            "2 keys: 2 exact, 0 over-counted, 0 under-counted, 0 missing"
        );
        assert!(v
            .conclusion(&[])
            .starts_with("exact: every key's count and sum match"));
    }

    #[test]
    fn duplicates_are_allowed_under_at_least_once() {
        let v = compare(
            &expected(),
            &actual(&[
                ("a", r#"{"count":3,"total":45}"#),
                ("b", r#"{"count":1,"total":5}"#),
            ]),
        );
        assert_eq!(v.duplicates, 1);
        assert!(v.nothing_lost());
        let c = v.conclusion(&[]);
        assert!(
            c.starts_with("no record lost; 1 record(s) counted twice after the kill, allowed under at_least_once"),
            "{c}"
        );
    }

    #[test]
    fn lost_records_and_unclean_stops_fail() {
        let v = compare(&expected(), &actual(&[("a", r#"{"count":1,"total":10}"#)]));
        assert_eq!((v.under.len(), v.missing.len()), (1, 1));
        assert!(v.conclusion(&[]).starts_with("FAILED: records were lost"));
        let v = compare(
            &expected(),
            &actual(&[
                ("a", r#"{"count":2,"total":30}"#),
                ("b", r#"{"count":1,"total":5}"#),
            ]),
        );
        assert_eq!(
            v.conclusion(&["worker-3".to_string()]),
            "FAILED: worker-3 did not stop cleanly on SIGTERM (no record was lost)"
        );
    }
}
