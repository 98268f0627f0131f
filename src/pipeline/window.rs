//! Window arithmetic for `aggregate.window`, and the layout of keyed, time-bounded entries in a
//! store (windows, dedup marks) with the index that finds the ones whose time is up.
//!
//! Times are epoch milliseconds; a window is `[start, end)`. A window *closes* when the task's
//! stream time (the largest event time it has seen) reaches `end + grace` (`end + gap + grace`
//! for a session, which a record up to `gap` after its last one could still extend); after that
//! it is emitted (`emit = "final"`) and purged, and records that would fall only into closed
//! windows are late.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{WindowConfig, WindowKind};
use crate::processor::{Context, ProcessError};

/// A window definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Fixed, non-overlapping windows of `size` ms aligned to the epoch.
    Tumbling {
        /// Length.
        size: i64,
        /// Grace.
        grace: i64,
    },
    /// Windows of `size` ms starting every `advance` ms.
    Hopping {
        /// Length.
        size: i64,
        /// Distance between starts.
        advance: i64,
        /// Grace.
        grace: i64,
    },
    /// Per-key activity periods: records closer than `gap` ms share a session.
    Session {
        /// Inactivity that ends a session.
        gap: i64,
        /// Grace.
        grace: i64,
    },
}

fn ms(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Windows {
    /// From the (already validated) config.
    pub fn from_config(w: &WindowConfig) -> Self {
        let grace = ms(Some(w.grace));
        match w.kind {
            WindowKind::Tumbling => Self::Tumbling {
                size: ms(w.size),
                grace,
            },
            WindowKind::Hopping => Self::Hopping {
                size: ms(w.size),
                advance: ms(w.advance),
                grace,
            },
            WindowKind::Session => Self::Session {
                gap: ms(w.gap),
                grace,
            },
        }
    }

    /// The fixed windows (`[start, end)`) containing `t`, oldest first; none for sessions.
    pub fn fixed_windows(&self, t: i64) -> Vec<(i64, i64)> {
        match *self {
            Self::Tumbling { size, .. } => {
                let start = t - t.rem_euclid(size);
                vec![(start, start.saturating_add(size))]
            }
            Self::Hopping { size, advance, .. } => {
                // Starts are multiples of `advance` in (t - size, t].
                let last = t - t.rem_euclid(advance);
                let mut out = Vec::new();
                let mut start = last;
                while start > t.saturating_sub(size) {
                    out.push((start, start.saturating_add(size)));
                    start -= advance;
                }
                out.reverse();
                out
            }
            Self::Session { .. } => Vec::new(),
        }
    }

    /// The stream time at which the window `[start, end)` closes.
    pub fn close_at(&self, end: i64) -> i64 {
        match *self {
            Self::Tumbling { grace, .. } | Self::Hopping { grace, .. } => end.saturating_add(grace),
            Self::Session { gap, grace } => end.saturating_add(gap).saturating_add(grace),
        }
    }
}

/// Store keys of keyed, time-bounded entries: `0x01`, the grouping key's length (u32, big
/// endian), the key, then the start time (big endian with the sign bit flipped, so byte order is
/// time order). The single key `0x00` holds the step's stream time, so it survives a restart.
pub mod keys {
    /// The key holding the stream time.
    pub const STREAM_TIME: &[u8] = &[0x00];
    /// Every entry key starts with this byte.
    pub const ENTRY: u8 = 0x01;

    /// The prefix of every entry of `key`.
    pub fn prefix(key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 13);
        out.push(ENTRY);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out
    }

    /// The entry of `key` starting at `start`.
    pub fn entry(key: &[u8], start: i64) -> Vec<u8> {
        let mut out = prefix(key);
        out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
        out
    }

    /// Splits an entry key into the grouping key and the start time.
    pub fn split(entry: &[u8]) -> Option<(&[u8], i64)> {
        let rest = entry.strip_prefix(&[ENTRY])?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let key = rest.get(4..4 + len)?;
        let start: [u8; 8] = rest.get(4 + len..)?.try_into().ok()?;
        Some((key, (u64::from_be_bytes(start) ^ (1 << 63)) as i64))
    }
}

/// The entries of one step ordered by the stream time at which they expire, so each advance
/// of stream time finds the expired ones without a scan. Built from the store on the task's
/// first record (the store may have been restored) and kept in step with it after that.
#[derive(Debug, Default, Clone)]
pub struct Expiry {
    entries: BTreeSet<(i64, Vec<u8>)>,
}

impl Expiry {
    /// Notes that `entry` expires at `at`.
    pub fn insert(&mut self, at: i64, entry: Vec<u8>) {
        self.entries.insert((at, entry));
    }

    /// Forgets an entry (it was merged away or replaced).
    pub fn remove(&mut self, at: i64, entry: &[u8]) {
        self.entries.remove(&(at, entry.to_vec()));
    }

    /// Removes and returns the entries expired at stream time `now`, oldest first.
    pub fn expired(&mut self, now: i64) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(first) = self.entries.first() {
            if first.0 > now {
                break;
            }
            out.extend(self.entries.pop_first());
        }
        out
    }

    /// True when nothing is live.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_align_to_the_epoch_also_before_it() {
        let w = Windows::Tumbling { size: 10, grace: 0 };
        assert_eq!(w.fixed_windows(0), [(0, 10)]);
        assert_eq!(w.fixed_windows(19), [(10, 20)]);
        assert_eq!(w.fixed_windows(-1), [(-10, 0)]);
    }

    #[test]
    fn hopping_windows_are_every_window_holding_the_time() {
        let w = Windows::Hopping {
            size: 10,
            advance: 5,
            grace: 0,
        };
        assert_eq!(w.fixed_windows(12), [(5, 15), (10, 20)]);
        assert_eq!(w.fixed_windows(10), [(5, 15), (10, 20)]);
        assert_eq!(w.fixed_windows(9), [(0, 10), (5, 15)]);
        let w = Windows::Hopping {
            size: 10,
            advance: 3,
            grace: 0,
        };
        assert_eq!(w.fixed_windows(10), [(3, 13), (6, 16), (9, 19)]);
    }

    #[test]
    fn entry_keys_sort_by_key_then_time_and_split_back() {
        let a = keys::entry(b"k", -5);
        let b = keys::entry(b"k", 3);
        let c = keys::entry(b"k", 1_000);
        assert!(a < b && b < c);
        assert_eq!(keys::split(&a), Some((&b"k"[..], -5)));
        assert!(a.starts_with(&keys::prefix(b"k")));
        // A key that is a prefix of another key does not share its entries.
        assert!(!keys::entry(b"kk", 0).starts_with(&keys::prefix(b"k")));
        assert!(keys::STREAM_TIME < a.as_slice());
    }

    #[test]
    fn expiry_pops_in_time_order() {
        let mut e = Expiry::default();
        e.insert(20, b"b".to_vec());
        e.insert(10, b"a".to_vec());
        e.insert(30, b"c".to_vec());
        e.remove(30, b"c");
        assert_eq!(e.expired(9), vec![]);
        assert_eq!(
            e.expired(20),
            vec![(10, b"a".to_vec()), (20, b"b".to_vec())]
        );
        assert!(e.is_empty());
    }
}

/// A time-keeping step's view of its store: the stream time and the expiry of its entries,
/// read from the store on the task's first record (it may have been restored) and kept in
/// step with it after that.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    loaded: Option<(i64, Expiry)>,
}

impl Timeline {
    /// Loads (once) the stream time and the expiry index from the store. `expires_at` gives an
    /// entry's expiry from its stored value.
    fn load<T>(
        &mut self,
        ctx: &mut Context<'_>,
        store: &str,
        expires_at: impl Fn(&T) -> i64,
    ) -> Result<&mut (i64, Expiry), ProcessError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + 'static,
    {
        if self.loaded.is_none() {
            let now = ctx
                .store::<i64>(store)?
                .get(keys::STREAM_TIME)?
                .unwrap_or(i64::MIN);
            let mut expiry = Expiry::default();
            for (k, v) in ctx.store::<T>(store)?.range([keys::ENTRY], None)? {
                expiry.insert(expires_at(&v), k);
            }
            self.loaded = Some((now, expiry));
        }
        Ok(self.loaded.as_mut().expect("invariant: loaded above"))
    }

    /// The step's stream time (loading it first), `None` before its first record.
    pub fn now<T>(
        &mut self,
        ctx: &mut Context<'_>,
        store: &str,
        expires_at: impl Fn(&T) -> i64,
    ) -> Result<Option<i64>, ProcessError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + 'static,
    {
        let (now, _) = self.load(ctx, store, expires_at)?;
        Ok((*now != i64::MIN).then_some(*now))
    }

    /// Loads (once) and advances the stream time to `t`, persisting it when it moves; returns
    /// the stream time and the expiry index. `expires_at` gives an entry's expiry from its
    /// stored value.
    pub fn advance<T>(
        &mut self,
        ctx: &mut Context<'_>,
        store: &str,
        t: i64,
        expires_at: impl Fn(&T) -> i64,
    ) -> Result<(i64, &mut Expiry), ProcessError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + 'static,
    {
        let (now, expiry) = self.load(ctx, store, expires_at)?;
        if t > *now {
            *now = t;
            ctx.store::<i64>(store)?.put(keys::STREAM_TIME, &t)?;
        }
        Ok((*now, expiry))
    }
}
