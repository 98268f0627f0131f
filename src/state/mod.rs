//! Task state: named key-value stores kept in the task's RocksDB database and fronted by a
//! write-back cache.
//!
//! Processors see [`Store`], a typed view (values encoded as JSON through serde, which is also
//! what `/state` serves). Between commits every change lives in the cache only, so repeated
//! updates of a key cost one RocksDB write and one changelog record per commit. At commit the
//! task calls [`TaskStores::flush`]: every dirty entry is sent to the store's changelog and put
//! in one [`Batch`]; after the changelog is acknowledged the batch is written together with the
//! changelog offset (see `task.rs`).
//!
//! Nothing here knows about Kafka or tokio; the changelog is reached through
//! [`ChangelogSink`].

pub mod cleaner;
pub mod identity;
pub mod lock;
pub mod presence;
pub mod restore;
pub mod rocks;

use std::any::Any;
use std::borrow::Cow;
use std::collections::{btree_map, BTreeMap};
use std::marker::PhantomData;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use smallvec::SmallVec;

pub use restore::RestoreBatch;
pub use rocks::{Batch, RocksMemory, TaskDb};

/// Key-value pairs read from a store, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Errors of the state layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Another handle holds the database (a task still closing elsewhere in this process).
    #[error("state directory {path} is locked by another handle")]
    Locked {
        /// The task directory.
        path: PathBuf,
    },
    /// The database could not be opened or created.
    #[error("cannot open state directory {path}: {reason}")]
    Open {
        /// The task directory.
        path: PathBuf,
        /// What RocksDB or the file system said.
        reason: String,
    },
    /// A read or write failed.
    #[error("state I/O in {path}: {reason}")]
    Io {
        /// The task directory.
        path: PathBuf,
        /// What RocksDB said.
        reason: String,
    },
    /// A stored value does not decode as the type asked for, or a value does not encode.
    #[error("store {store}: value of key {key:?} does not (de)serialize: {reason}")]
    Codec {
        /// The store name.
        store: String,
        /// The key, lossily as UTF-8.
        key: String,
        /// What serde said.
        reason: String,
    },
    /// The processor asked for a store the topology did not declare.
    #[error("unknown store {0:?} (declare it on the topology)")]
    UnknownStore(String),
}

/// Where a store stands in its changelog.
///
/// A local store brought up to date by reading its changelog from `next` is only right if
/// every deletion after `next` of a key it holds is still there to read. Kafka's cleaner
/// removes a tombstone `delete.retention.ms` after it first reaches it (Kafka 3.1 and later),
/// and removes the value a tombstone deletes in that same pass. So the checkpoint also
/// records `synced_at_ms`, a time at which every such deletion was still in the changelog,
/// because it was either
///
/// - written later: after a commit the group coordinator confirmed, nobody but the owner
///   writes past `next`, and the owner only afterwards; or
/// - not reached by the cleaner yet: a restore that read the value it deletes after that time
///   (the restore of an empty store counts from when it began; a tail restore keeps the time
///   the store had).
///
/// Those deletions are then still there until `synced_at_ms + delete.retention.ms`; a store
/// older than that is rebuilt from the whole changelog instead ([`Checkpoint::stale_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next changelog offset not applied to the store.
    pub next: i64,
    /// Milliseconds since the Unix epoch (this machine's clock); `None` in checkpoints of
    /// earlier versions, which did not record it.
    pub synced_at_ms: Option<i64>,
}

/// Part of the tombstone retention a store may age before it is rebuilt, in percent. The rest
/// is a margin for what the sync time cannot see: the clock stepping, and replicas whose
/// cleaners reached a tombstone at different times (after a leader change the new leader's
/// clock of it counts).
const TRUSTED_PERCENT_OF_RETENTION: u128 = 90;
/// How far ahead of this machine's clock a sync time may be and still count as now.
const FUTURE_TOLERANCE_MS: i64 = 60_000;

impl Checkpoint {
    /// Why the store cannot be brought up to date from `next`, if it cannot: it was last in
    /// sync with the changelog too long ago for the changelog's tombstone retention
    /// (`delete.retention.ms`). `now_ms`: milliseconds since the Unix epoch.
    pub fn stale_after(&self, retention: Duration, now_ms: i64) -> Option<String> {
        stale_since(self.synced_at_ms, retention, now_ms)
    }
}

/// Why state in sync with its changelog as of `synced_at_ms` (see [`Checkpoint`]) can no
/// longer be brought up to date from its changelog's tail at `now_ms`, if it cannot.
pub fn stale_since(synced_at_ms: Option<i64>, retention: Duration, now_ms: i64) -> Option<String> {
    let retention_ms = retention.as_millis();
    let limit_ms = retention_ms * TRUSTED_PERCENT_OF_RETENTION / 100;
    let Some(at) = synced_at_ms else {
        return Some(format!(
            "the local checkpoint does not say when the store was last in sync with its \
             changelog (written by an earlier version), and the changelog's \
             delete.retention.ms ({retention_ms} ms) lets compaction remove deletions since"
        ));
    };
    if at > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
        return Some(format!(
            "the local store's sync time is {} ms ahead of this machine's clock (was the clock \
             set back?), so its age against the changelog's delete.retention.ms \
             ({retention_ms} ms) is unknown",
            at - now_ms
        ));
    }
    let age_ms = now_ms.saturating_sub(at).max(0) as u128;
    (age_ms >= limit_ms).then(|| {
        format!(
            "the local store was last in sync with its changelog {age_ms} ms ago, longer than \
             {TRUSTED_PERCENT_OF_RETENTION}% of the changelog's delete.retention.ms \
             ({retention_ms} ms): deletions written since may have been compacted away, and \
             the store would keep what they deleted"
        )
    })
}

/// Milliseconds since the Unix epoch by this machine's clock (for [`Checkpoint::synced_at_ms`]).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The memory task state may use: the bound of each store's write-back cache, and RocksDB's
/// block cache and write buffers, which every task of a worker shares (clones share them).
#[derive(Debug, Clone)]
pub struct StateMemory {
    /// Entries each store's write-back cache may hold (`state.cache_max_entries`).
    pub cache_max_entries: usize,
    /// RocksDB's shared block cache and write buffer budget.
    pub rocks: RocksMemory,
}

impl StateMemory {
    /// From the `[state]` settings: entries per store cache, MiB of block cache, MiB of write
    /// buffers.
    pub fn new(cache_max_entries: usize, block_cache_mb: usize, write_buffer_mb: usize) -> Self {
        Self {
            cache_max_entries,
            rocks: RocksMemory::new(block_cache_mb << 20, write_buffer_mb << 20),
        }
    }
}

/// Where flushed changes go besides RocksDB: the store's changelog topic.
pub trait ChangelogSink {
    /// Sends one change of store number `store`; `value = None` is a deletion (tombstone).
    fn send(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
}

/// A value a processor wrote, kept decoded until the next flush.
trait TypedValue: Send {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
    /// Appends the encoding to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Send + 'static> TypedValue for T {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A cached value: absent (deleted or never written), as stored (bytes), or as the processor
/// last wrote it (decoded). Decoded values are encoded only at flush, so a key updated many
/// times between commits costs one serialization, not one per update.
enum Cached {
    Absent,
    Bytes(Vec<u8>),
    Typed(Box<dyn TypedValue>),
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => f.write_str("Absent"),
            Self::Bytes(b) => write!(f, "Bytes({})", String::from_utf8_lossy(b)),
            Self::Typed(_) => f.write_str("Typed"),
        }
    }
}

impl Cached {
    fn from_bytes(value: Option<Vec<u8>>) -> Self {
        value.map_or(Self::Absent, Self::Bytes)
    }

    /// The stored form, with a decoded value replaced by its encoding (at flush: the encoding
    /// goes to the changelog and RocksDB anyway, and kept as bytes a clean entry costs a few
    /// dozen bytes instead of the decoded value's allocations). `scratch` is where it is
    /// encoded; the cache keeps an exact-size copy (serde_json's own buffer starts at 128
    /// bytes, several times a typical aggregate's encoding).
    fn make_stored(&mut self, scratch: &mut Vec<u8>) -> Result<Option<&[u8]>, serde_json::Error> {
        if let Self::Typed(t) = self {
            scratch.clear();
            t.encode_into(scratch)?;
            *self = Self::Bytes(scratch.as_slice().to_vec());
        }
        Ok(match self {
            Self::Absent => None,
            Self::Bytes(b) => Some(b),
            Self::Typed(_) => unreachable!("encoded above"),
        })
    }

    /// The stored form: bytes, encoding a decoded value.
    fn bytes(&self) -> Result<Option<Cow<'_, [u8]>>, serde_json::Error> {
        Ok(match self {
            Self::Absent => None,
            Self::Bytes(b) => Some(Cow::Borrowed(b)),
            Self::Typed(t) => Some(Cow::Owned(t.encode()?)),
        })
    }

    /// The value as a `T`: cloned when it is a decoded `T`, decoded otherwise.
    fn decode<T: DeserializeOwned + Clone + 'static>(
        &self,
    ) -> Result<Option<T>, serde_json::Error> {
        match self {
            Self::Absent => Ok(None),
            Self::Bytes(b) => serde_json::from_slice(b).map(Some),
            Self::Typed(t) => match t.as_any().downcast_ref::<T>() {
                Some(v) => Ok(Some(v.clone())),
                None => serde_json::from_slice(&t.encode()?).map(Some),
            },
        }
    }
}

/// Where a cached entry stands with respect to RocksDB and the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Same as RocksDB; may be dropped when the cache is full.
    Clean,
    /// Written since the last flush: goes to the changelog and RocksDB at the next commit.
    Dirty,
    /// Sent to the changelog (and acknowledged, once the commit's flush succeeded) but not yet
    /// in RocksDB: it is written by the first commit that succeeds
    /// ([`TaskStores::commit_succeeded`]), which may be a later one if this one fails. It must
    /// stay cached until then, or reads would fall through to RocksDB's older value.
    Flushed,
}

#[derive(Debug)]
struct Entry {
    value: Cached,
    slot: Slot,
}

/// A cached key. Short keys (most are) sit inline in the map's nodes, so a lookup compares
/// keys without following a pointer per comparison (measured: the cache misses of those
/// pointers were a tenth of an aggregate's CPU time); longer ones spill to the heap.
type CacheKey = SmallVec<[u8; 24]>;

/// The write-back cache of one store. Keys are ordered so range scans can merge it with
/// RocksDB.
#[derive(Debug, Default)]
struct StoreCache {
    entries: BTreeMap<CacheKey, Entry>,
    /// Entries in [`Slot::Dirty`].
    dirty: usize,
    /// Entries in [`Slot::Flushed`] (left by commits that failed).
    flushed: usize,
}

impl StoreCache {
    fn recount(&mut self) {
        let count = |slot| self.entries.values().filter(|e| e.slot == slot).count();
        self.dirty = count(Slot::Dirty);
        self.flushed = count(Slot::Flushed);
    }

    /// Drops the clean entries (the others must stay until their commit is done).
    fn evict_clean(&mut self) {
        self.entries.retain(|_, e| e.slot != Slot::Clean);
    }

    /// Counts an entry in `slot` as dirty from now on.
    fn count_dirty(dirty: &mut usize, flushed: &mut usize, slot: Slot) {
        match slot {
            Slot::Dirty => {}
            Slot::Flushed => {
                *flushed -= 1;
                *dirty += 1;
            }
            Slot::Clean => *dirty += 1,
        }
    }

    /// Writes `value` (dirty); returns what the cache held for the key before (`None`: nothing).
    fn write(&mut self, key: &[u8], value: Cached) -> Option<Entry> {
        match self.entries.get_mut(key) {
            Some(entry) => {
                Self::count_dirty(&mut self.dirty, &mut self.flushed, entry.slot);
                let dirty = Entry {
                    value,
                    slot: Slot::Dirty,
                };
                Some(std::mem::replace(entry, dirty))
            }
            None => {
                self.dirty += 1;
                let dirty = Entry {
                    value,
                    slot: Slot::Dirty,
                };
                self.entries.insert(CacheKey::from_slice(key), dirty);
                None
            }
        }
    }
}

/// A write made while processing the current record, with what it replaced, so that a record
/// that fails leaves no trace in the stores.
#[derive(Debug)]
struct Undo {
    store: usize,
    /// Where the key is in [`UndoLog::keys`].
    key: std::ops::Range<usize>,
    /// The entry the write replaced (moved out of the cache, not copied).
    before: Option<Entry>,
}

/// The writes of the record being processed, oldest first.
#[derive(Debug, Default)]
struct UndoLog {
    writes: Vec<Undo>,
    /// The keys of `writes`, one after another: a buffer reused from record to record, so that
    /// remembering a write allocates nothing.
    keys: Vec<u8>,
}

impl UndoLog {
    /// Notes a write of `key` in store number `store`; `before` is what it replaced.
    fn push(&mut self, store: usize, key: &[u8], before: Option<Entry>) {
        let at = self.keys.len();
        self.keys.extend_from_slice(key);
        self.writes.push(Undo {
            store,
            key: at..self.keys.len(),
            before,
        });
    }

    fn clear(&mut self) {
        self.writes.clear();
        self.keys.clear();
    }
}

/// All stores of one task: its database and a cache per store.
#[derive(Debug)]
pub struct TaskStores {
    db: Arc<TaskDb>,
    caches: Vec<StoreCache>,
    max_entries: usize,
    /// Writes of the record being processed.
    undo: UndoLog,
    /// Where a flush encodes values (reused).
    scratch: Vec<u8>,
    /// Changelog records being restored, not yet written.
    restoring: RestoreBatch,
}

impl TaskStores {
    /// Wraps an open database; `max_entries` bounds each cache (dirty entries beyond it ask for
    /// an early commit, clean ones are dropped after a flush).
    pub fn new(db: Arc<TaskDb>, max_entries: usize) -> Self {
        let caches = db.stores().iter().map(|_| StoreCache::default()).collect();
        Self {
            restoring: RestoreBatch::new(&db),
            db,
            caches,
            max_entries: max_entries.max(1),
            undo: UndoLog::default(),
            scratch: Vec::new(),
        }
    }

    /// Applies one changelog record to store `store` while the task restores (straight to
    /// RocksDB, not through the cache): `key` is set to `value` (`None`: deleted), and the
    /// store then stands at `checkpoint`. Records are written in batches of
    /// [`restore::RESTORE_BATCH_RECORDS`], each with the checkpoint of every store it changes;
    /// [`TaskStores::write_restored`] writes the rest.
    pub fn restore(
        &mut self,
        store: usize,
        key: &[u8],
        value: Option<&[u8]>,
        checkpoint: Checkpoint,
    ) -> Result<(), StateError> {
        self.restoring.add(&self.db, store, key, value, checkpoint);
        if self.restoring.is_full() {
            self.restoring.write(&self.db)?;
        }
        Ok(())
    }

    /// Writes the changelog records [`TaskStores::restore`] has not written yet.
    pub fn write_restored(&mut self) -> Result<(), StateError> {
        self.restoring.write(&self.db)
    }

    /// Starts a record: its writes can be undone with [`TaskStores::rollback`] until the next
    /// call.
    pub fn begin_record(&mut self) {
        self.undo.clear();
    }

    /// Undoes every write since [`TaskStores::begin_record`] (the record failed).
    pub fn rollback(&mut self) {
        let mut touched = vec![false; self.caches.len()];
        while let Some(u) = self.undo.writes.pop() {
            let cache = &mut self.caches[u.store];
            let key = &self.undo.keys[u.key];
            match u.before {
                Some(entry) => {
                    cache.entries.insert(CacheKey::from_slice(key), entry);
                }
                None => {
                    cache.entries.remove(key);
                }
            }
            touched[u.store] = true;
        }
        for (cache, _) in self.caches.iter_mut().zip(touched).filter(|(_, t)| *t) {
            cache.recount();
        }
    }

    /// Writes into a cache, keeping what the write replaced for [`TaskStores::rollback`].
    fn write(&mut self, store: usize, key: &[u8], value: Cached) {
        let before = self.caches[store].write(key, value);
        self.undo.push(store, key, before);
    }

    /// Replaces the value of `key` with `f` of the current one (`None`: absent) and returns the
    /// new value as cached: one search of the cache where a read and a write take two.
    fn update<T: Serialize + DeserializeOwned + Clone + Send + 'static>(
        &mut self,
        store: usize,
        key: &[u8],
        f: impl FnOnce(Option<T>) -> T,
    ) -> Result<&T, StateError> {
        let full = self.caches[store].entries.len() >= self.max_entries;
        if full && !self.caches[store].entries.contains_key(key) {
            // As a read would: make room by dropping the clean entries.
            self.caches[store].evict_clean();
        }
        let StoreCache {
            entries,
            dirty,
            flushed,
        } = &mut self.caches[store];
        let codec_err = |e| codec_error(&self.db, store, key, e);
        let (entry, before) = match entries.entry(CacheKey::from_slice(key)) {
            btree_map::Entry::Occupied(cached) => {
                let entry = cached.into_mut();
                let value = f(entry.value.decode().map_err(codec_err)?);
                StoreCache::count_dirty(dirty, flushed, entry.slot);
                let written = Entry {
                    value: Cached::Typed(Box::new(value)),
                    slot: Slot::Dirty,
                };
                let before = std::mem::replace(entry, written);
                (entry, Some(before))
            }
            btree_map::Entry::Vacant(absent) => {
                let stored = Cached::from_bytes(self.db.get(store, key)?);
                let value = f(stored.decode().map_err(codec_err)?);
                *dirty += 1;
                let entry = absent.insert(Entry {
                    value: Cached::Typed(Box::new(value)),
                    slot: Slot::Dirty,
                });
                (entry, None)
            }
        };
        self.undo.push(store, key, before);
        match &entry.value {
            Cached::Typed(t) => Ok(t
                .as_any()
                .downcast_ref::<T>()
                .expect("the entry was written as a T above")),
            _ => unreachable!("the entry was written as a T above"),
        }
    }

    /// The underlying database.
    pub fn db(&self) -> &Arc<TaskDb> {
        &self.db
    }

    /// A typed view of the store called `name`.
    pub fn store<T>(&mut self, name: &str) -> Result<Store<'_, T>, StateError> {
        let index = self
            .db
            .store_index(name)
            .ok_or_else(|| StateError::UnknownStore(name.to_string()))?;
        Ok(Store {
            stores: self,
            index,
            _value: PhantomData,
        })
    }

    /// Reads `key` through the cache as a `T` (one cache lookup on a hit; a miss reads
    /// RocksDB and caches the bytes). The inner error is a value that does not decode.
    fn read<T: DeserializeOwned + Clone + 'static>(
        &mut self,
        store: usize,
        key: &[u8],
    ) -> Result<Result<Option<T>, serde_json::Error>, StateError> {
        let cache = &mut self.caches[store];
        if let Some(entry) = cache.entries.get(key) {
            return Ok(entry.value.decode());
        }
        let value = Cached::from_bytes(self.db.get(store, key)?);
        let result = value.decode();
        if cache.entries.len() >= self.max_entries {
            // Full: drop the clean entries (dirty ones must stay until the next flush, which
            // `wants_flush` asks for once they alone fill the cache).
            cache.evict_clean();
        }
        cache.entries.insert(
            CacheKey::from_slice(key),
            Entry {
                value,
                slot: Slot::Clean,
            },
        );
        Ok(result)
    }

    /// Raw write into the cache; `None` deletes.
    pub fn put_raw(&mut self, store: usize, key: &[u8], value: Option<Vec<u8>>) {
        self.write(store, key, Cached::from_bytes(value));
    }

    fn codec_err(&self, store: usize, key: &[u8], e: serde_json::Error) -> StateError {
        codec_error(&self.db, store, key, e)
    }

    /// Entries with `from <= key < to` (`to = None`: to the end), merging the cache over RocksDB.
    pub fn scan_raw(
        &mut self,
        store: usize,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<Entries, StateError> {
        if to.is_some_and(|to| to <= from) {
            // An empty range (the cache's map would panic on an inverted one).
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .db
            .scan(store, from, to)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        let upper = match to {
            Some(to) => Bound::Excluded(to),
            None => Bound::Unbounded,
        };
        for (k, e) in self.caches[store]
            .entries
            .range::<[u8], _>((Bound::Included(from), upper))
        {
            let bytes = e
                .value
                .bytes()
                .map_err(|err| self.codec_err(store, k, err))?;
            merged.insert(k.to_vec(), bytes.map(Cow::into_owned));
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// True when some cache holds more dirty entries than it may: the task should commit now.
    pub fn wants_flush(&self) -> bool {
        self.caches.iter().any(|c| c.dirty >= self.max_entries)
    }

    /// Number of dirty entries over all stores.
    pub fn dirty(&self) -> usize {
        self.caches.iter().map(|c| c.dirty).sum()
    }

    /// Sends every dirty entry to `changelog` and returns the batch that writes them to RocksDB,
    /// plus, per store, whether it had changes. The batch also holds the entries flushed by
    /// earlier commits that failed (they are in the changelog already and are not sent again).
    /// Every entry in the batch stays cached, flushed, until a commit succeeds
    /// ([`TaskStores::commit_succeeded`]); if this one fails, the caller just drops the batch.
    pub fn flush(
        &mut self,
        changelog: &mut dyn ChangelogSink,
    ) -> Result<(Batch, Vec<bool>), StateError> {
        let mut batch = self.db.batch();
        let mut changed = vec![false; self.caches.len()];
        for (store, cache) in self.caches.iter_mut().enumerate() {
            if cache.dirty == 0 && cache.flushed == 0 {
                continue;
            }
            changed[store] = true;
            for (key, entry) in cache
                .entries
                .iter_mut()
                .filter(|(_, e)| e.slot != Slot::Clean)
            {
                let bytes = entry
                    .value
                    .make_stored(&mut self.scratch)
                    .map_err(|e| codec_error(&self.db, store, key, e))?;
                if entry.slot == Slot::Dirty {
                    changelog
                        .send(store, key, bytes)
                        .map_err(|reason| StateError::Io {
                            path: self.db.path().to_path_buf(),
                            reason: format!(
                                "sending to the changelog of store {}: {reason}",
                                self.db.stores()[store]
                            ),
                        })?;
                }
                match bytes {
                    Some(v) => self.db.batch_put(&mut batch, store, key, v),
                    None => self.db.batch_delete(&mut batch, store, key),
                }
                entry.slot = Slot::Flushed;
            }
            cache.flushed += cache.dirty;
            cache.dirty = 0;
        }
        Ok((batch, changed))
    }

    /// The last flush's batch is in RocksDB: its entries are clean now, and clean entries are
    /// dropped if the cache is over its bound.
    pub fn commit_succeeded(&mut self) {
        for cache in &mut self.caches {
            for entry in cache.entries.values_mut() {
                if entry.slot == Slot::Flushed {
                    entry.slot = Slot::Clean;
                }
            }
            cache.flushed = 0;
            if cache.entries.len() > self.max_entries {
                cache.evict_clean();
            }
        }
    }

    /// Entries flushed to the changelog by commits that failed, waiting for one that succeeds.
    pub fn flushed(&self) -> usize {
        self.caches.iter().map(|c| c.flushed).sum()
    }

    /// Forgets every cached entry, dirty or not (used when a task is closed without commit).
    pub fn discard(&mut self) {
        for cache in &mut self.caches {
            cache.entries.clear();
            cache.dirty = 0;
            cache.flushed = 0;
        }
    }
}

/// A value of store number `store` that does not decode as the type asked for, or does not
/// encode.
fn codec_error(db: &TaskDb, store: usize, key: &[u8], e: serde_json::Error) -> StateError {
    StateError::Codec {
        store: db.stores()[store].clone(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

/// A typed view of one store, handed to processors through the context.
///
/// Values are encoded as JSON (in RocksDB and the changelog; the cache keeps what the processor
/// wrote, decoded, until the next commit). Reads see the task's own uncommitted writes.
pub struct Store<'a, T> {
    stores: &'a mut TaskStores,
    index: usize,
    _value: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Clone + Send + 'static> Store<'_, T> {
    fn codec_err(&self, key: &[u8], e: serde_json::Error) -> StateError {
        self.stores.codec_err(self.index, key, e)
    }

    /// The value stored under `key`, if any.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<T>, StateError> {
        let key = key.as_ref();
        let index = self.index;
        let decoded = self.stores.read::<T>(index, key)?;
        decoded.map_err(|e| self.codec_err(key, e))
    }

    /// Replaces the value under `key` with what `f` makes of the current one (`None`: there is
    /// none) and returns the new value: what a [`Store::get`] and a [`Store::put_owned`] do,
    /// with one search of the cache instead of two.
    pub fn update(
        &mut self,
        key: impl AsRef<[u8]>,
        f: impl FnOnce(Option<T>) -> T,
    ) -> Result<&T, StateError> {
        self.stores.update(self.index, key.as_ref(), f)
    }

    /// Stores a copy of `value` under `key` (kept decoded in the cache; serialized at the next
    /// commit). [`Store::put_owned`] takes the value instead of copying it.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: &T) -> Result<(), StateError> {
        self.put_owned(key, value.clone())
    }

    /// Stores `value` under `key`, taking it (kept decoded in the cache; serialized at the next
    /// commit).
    pub fn put_owned(&mut self, key: impl AsRef<[u8]>, value: T) -> Result<(), StateError> {
        self.stores
            .write(self.index, key.as_ref(), Cached::Typed(Box::new(value)));
        Ok(())
    }

    /// Removes `key` (a tombstone in the changelog).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.stores.put_raw(self.index, key.as_ref(), None);
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn prefix(&mut self, prefix: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        let prefix = prefix.as_ref();
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref())
    }

    /// Every entry with `from <= key < to` (`to = None`: to the end), in key order.
    pub fn range(
        &mut self,
        from: impl AsRef<[u8]>,
        to: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        let raw = self.stores.scan_raw(self.index, from.as_ref(), to)?;
        raw.into_iter()
            .map(|(k, v)| match serde_json::from_slice(&v) {
                Ok(t) => Ok((k, t)),
                Err(e) => Err(self.codec_err(&k, e)),
            })
            .collect()
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(next: i64) -> Checkpoint {
        Checkpoint {
            next,
            synced_at_ms: Some(1_000),
        }
    }

    #[test]
    fn a_checkpoint_goes_stale_at_ninety_percent_of_the_tombstone_retention() {
        let day = std::time::Duration::from_secs(86_400);
        let synced = Checkpoint {
            next: 5,
            synced_at_ms: Some(1_000_000),
        };
        let limit = 1_000_000 + 86_400_000 * 9 / 10;
        assert_eq!(synced.stale_after(day, 1_000_000), None);
        assert_eq!(synced.stale_after(day, limit - 1), None);
        let why = synced.stale_after(day, limit).expect("stale at the limit");
        assert!(why.contains("delete.retention.ms (86400000 ms)"), "{why}");
        // A sync time up to a minute ahead counts as now; further ahead, the age is unknown.
        assert_eq!(synced.stale_after(day, 1_000_000 - 60_000), None);
        let why = synced.stale_after(day, 1_000_000 - 60_001).expect("ahead");
        assert!(why.contains("ahead of this machine's clock"), "{why}");
        // Without a sync time nothing can be said: rebuild.
        let old = Checkpoint {
            next: 5,
            synced_at_ms: None,
        };
        assert!(old.stale_after(day, 1_000_000).is_some());
    }

    #[derive(Default)]
    struct Recorder(Vec<(usize, Vec<u8>, Option<Vec<u8>>)>);
    impl ChangelogSink for Recorder {
        fn send(&mut self, store: usize, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
            self.0
                .push((store, key.to_vec(), value.map(<[u8]>::to_vec)));
            Ok(())
        }
    }

    fn open(dir: &std::path::Path, max: usize) -> TaskStores {
        let db = TaskDb::open(dir, &["counts".to_string()], &RocksMemory::default()).unwrap();
        TaskStores::new(Arc::new(db), max)
    }

    #[test]
    fn cache_absorbs_repeated_updates_until_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        for i in 0..10u64 {
            stores.store::<u64>("counts").unwrap().put("k", &i).unwrap();
        }
        stores
            .store::<u64>("counts")
            .unwrap()
            .put("gone", &1)
            .unwrap();
        stores.store::<u64>("counts").unwrap().delete("gone");
        assert_eq!(
            stores.store::<u64>("counts").unwrap().get("k").unwrap(),
            Some(9)
        );
        assert_eq!(
            stores.db().get(0, b"k").unwrap(),
            None,
            "not in RocksDB before flush"
        );

        let mut log = Recorder::default();
        let (mut batch, changed) = stores.flush(&mut log).unwrap();
        assert_eq!(changed, vec![true]);
        assert_eq!(
            log.0,
            vec![
                (0, b"gone".to_vec(), None),
                (0, b"k".to_vec(), Some(b"9".to_vec()))
            ],
            "one changelog record per dirty key, tombstone for the deleted one"
        );
        stores.db().batch_checkpoint(&mut batch, 0, at(2));
        stores.db().write(batch).unwrap();
        stores.commit_succeeded();
        assert_eq!(
            stores.db().get(0, b"k").unwrap().as_deref(),
            Some(&b"9"[..])
        );
        assert_eq!(
            stores.db().checkpoint("counts").unwrap().map(|c| c.next),
            Some(2)
        );

        let mut log = Recorder::default();
        let (batch, changed) = stores.flush(&mut log).unwrap();
        assert!(
            batch.is_empty() && log.0.is_empty() && changed == vec![false],
            "nothing dirty after a flush"
        );
    }

    #[test]
    fn scans_merge_cache_over_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        {
            let mut s = stores.store::<u64>("counts").unwrap();
            s.put("a/1", &1).unwrap();
            s.put("a/2", &2).unwrap();
            s.put("b/1", &3).unwrap();
        }
        let (batch, _) = stores.flush(&mut Recorder::default()).unwrap();
        stores.db().write(batch).unwrap();
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("a/3", &30).unwrap();
        s.delete("a/1");
        s.put("a/2", &20).unwrap();
        let got = s.prefix("a/").unwrap();
        assert_eq!(got, vec![(b"a/2".to_vec(), 20), (b"a/3".to_vec(), 30)]);
        assert_eq!(s.range("", None).unwrap().len(), 3);
    }

    #[test]
    fn full_cache_asks_for_flush_and_keeps_dirty_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 3);
        let mut s = stores.store::<u64>("counts").unwrap();
        for i in 0..3u64 {
            s.put(format!("k{i}"), &i).unwrap();
        }
        assert!(stores.wants_flush());
        let mut log = Recorder::default();
        let (batch, _) = stores.flush(&mut log).unwrap();
        assert_eq!(log.0.len(), 3);
        stores.db().write(batch).unwrap();
        assert!(!stores.wants_flush());
        let mut s = stores.store::<u64>("counts").unwrap();
        for i in 0..3u64 {
            assert_eq!(
                s.get(format!("k{i}")).unwrap(),
                Some(i),
                "reads fall through to RocksDB"
            );
        }
    }

    #[test]
    fn a_failed_commit_keeps_its_changes_cached_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        // A bound of 1: a successful commit would evict everything it wrote.
        let mut stores = open(dir.path(), 1);
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("a", &1).unwrap();
        s.put("b", &2).unwrap();
        let mut log = Recorder::default();
        let (batch, _) = stores.flush(&mut log).unwrap();
        assert_eq!(log.0.len(), 2);
        drop(batch); // the offset commit failed: the batch is not written
        assert_eq!(
            stores.db().get(0, b"a").unwrap(),
            None,
            "nothing in RocksDB"
        );
        assert_eq!(
            (stores.dirty(), stores.flushed()),
            (0, 2),
            "not dirty (no commit is due for them), but waiting for a commit"
        );
        assert!(!stores.wants_flush());
        // Reads still see the values (an over-full cache does not drop them)...
        let mut s = stores.store::<u64>("counts").unwrap();
        s.get("c").unwrap();
        assert_eq!(s.get("a").unwrap(), Some(1));
        s.put("b", &3).unwrap();
        // ...and the next commit writes them, sending to the changelog only what changed since.
        let mut log = Recorder::default();
        let (batch, _) = stores.flush(&mut log).unwrap();
        assert_eq!(log.0, vec![(0, b"b".to_vec(), Some(b"3".to_vec()))]);
        assert_eq!(batch.len(), 2, "a (flushed before) and b");
        stores.db().write(batch).unwrap();
        stores.commit_succeeded();
        assert_eq!((stores.dirty(), stores.flushed()), (0, 0));
        assert_eq!(
            stores.db().get(0, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            stores.db().get(0, b"b").unwrap().as_deref(),
            Some(&b"3"[..])
        );
    }

    #[test]
    fn wrong_type_is_a_codec_error_naming_store_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 10);
        stores
            .store::<String>("counts")
            .unwrap()
            .put("k", &"text".to_string())
            .unwrap();
        let err = stores.store::<u64>("counts").unwrap().get("k").unwrap_err();
        assert!(
            err.to_string().contains("store counts") && err.to_string().contains("\"k\""),
            "{err}"
        );
        assert!(matches!(
            stores.store::<u64>("nope"),
            Err(StateError::UnknownStore(_))
        ));
    }

    #[test]
    fn typed_values_are_serialized_at_flush_and_read_back_by_any_type() {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Totals {
            n: u64,
            sum: f64,
        }
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        let mut s = stores.store::<Totals>("counts").unwrap();
        for n in 1..=3 {
            s.put(
                "k",
                &Totals {
                    n,
                    sum: n as f64 * 1.5,
                },
            )
            .unwrap();
        }
        assert_eq!(s.get("k").unwrap(), Some(Totals { n: 3, sum: 4.5 }));
        let mut log = Recorder::default();
        let (batch, _) = stores.flush(&mut log).unwrap();
        stores.db().write(batch).unwrap();
        let json = br#"{"n":3,"sum":4.5}"#.to_vec();
        assert_eq!(
            log.0,
            vec![(0, b"k".to_vec(), Some(json.clone()))],
            "encoded once, at flush"
        );
        assert_eq!(stores.db().get(0, b"k").unwrap(), Some(json));
        let as_json = stores
            .store::<serde_json::Value>("counts")
            .unwrap()
            .get("k")
            .unwrap();
        assert_eq!(
            as_json,
            Some(serde_json::json!({"n": 3, "sum": 4.5})),
            "another type decodes the stored form"
        );
    }

    /// A record that fails leaves no trace: a rollback takes out the keys it added, brings
    /// back what it replaced (for a key it wrote twice, the value from before the record), and
    /// the dirty count with them.
    #[test]
    fn a_rollback_undoes_every_write_of_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("clean", &1).unwrap();
        let (batch, _) = stores.flush(&mut Recorder::default()).unwrap();
        stores.db().write(batch).unwrap();
        stores.commit_succeeded();
        stores.begin_record();
        stores
            .store::<u64>("counts")
            .unwrap()
            .put("dirty", &3)
            .unwrap();
        assert_eq!(stores.dirty(), 1);

        stores.begin_record();
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("clean", &10).unwrap();
        s.put("clean", &11).unwrap();
        s.put_owned("new", 5).unwrap();
        s.delete("dirty");
        assert_eq!(stores.dirty(), 3);
        stores.rollback();

        let mut s = stores.store::<u64>("counts").unwrap();
        assert_eq!(s.get("clean").unwrap(), Some(1));
        assert_eq!(s.get("new").unwrap(), None);
        assert_eq!(s.get("dirty").unwrap(), Some(3));
        assert_eq!(
            stores.dirty(),
            1,
            "only the earlier record's write is dirty"
        );
        let mut log = Recorder::default();
        stores.flush(&mut log).unwrap();
        assert_eq!(log.0, vec![(0, b"dirty".to_vec(), Some(b"3".to_vec()))]);
    }

    /// `update` reads through the cache (a cached value, one only in RocksDB, none), writes
    /// like a put, and a rollback undoes it; a key longer than the inline key size and the
    /// empty key behave like the others.
    #[test]
    fn update_reads_writes_and_rolls_back_like_get_and_put() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        let long = "k".repeat(40);
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("in-rocksdb", &1).unwrap();
        s.put(&long, &2).unwrap();
        let (batch, _) = stores.flush(&mut Recorder::default()).unwrap();
        stores.db().write(batch).unwrap();
        stores.commit_succeeded();
        stores.discard();

        stores.begin_record();
        let mut s = stores.store::<u64>("counts").unwrap();
        let add = |n| move |v: Option<u64>| v.unwrap_or(100) + n;
        assert_eq!(*s.update("in-rocksdb", add(10)).unwrap(), 11);
        assert_eq!(
            *s.update("in-rocksdb", add(10)).unwrap(),
            21,
            "the cached value"
        );
        assert_eq!(*s.update(&long, add(1)).unwrap(), 3);
        assert_eq!(*s.update("", add(5)).unwrap(), 105, "absent");
        assert_eq!(stores.dirty(), 3);
        stores.rollback();
        let mut s = stores.store::<u64>("counts").unwrap();
        assert_eq!(s.get("in-rocksdb").unwrap(), Some(1));
        assert_eq!(s.get(&long).unwrap(), Some(2));
        assert_eq!(s.get("").unwrap(), None);
        assert_eq!(stores.dirty(), 0);

        stores.begin_record();
        let mut s = stores.store::<u64>("counts").unwrap();
        s.update("in-rocksdb", add(1)).unwrap();
        s.update("", add(0)).unwrap();
        let mut log = Recorder::default();
        stores.flush(&mut log).unwrap();
        log.0.sort();
        assert_eq!(
            log.0,
            vec![
                (0, b"".to_vec(), Some(b"100".to_vec())),
                (0, b"in-rocksdb".to_vec(), Some(b"2".to_vec())),
            ]
        );
    }

    /// A range whose end is before its start is empty, with or without cached entries.
    #[test]
    fn an_inverted_range_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        let mut s = stores.store::<u64>("counts").unwrap();
        s.put("a", &1).unwrap();
        s.put("c", &3).unwrap();
        assert!(s.range("b", Some(b"a")).unwrap().is_empty());
        assert!(s.range("c", Some(b"c")).unwrap().is_empty());
        assert_eq!(s.range("a", Some(b"b")).unwrap(), vec![(b"a".to_vec(), 1)]);
    }

    /// An update of an entry a failed commit left flushed makes it dirty again; rolled back, it
    /// is flushed again, and the next flush writes it without sending it a second time.
    #[test]
    fn a_rolled_back_update_of_a_flushed_entry_leaves_it_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        stores.store::<u64>("counts").unwrap().put("k", &1).unwrap();
        let mut sent = Recorder::default();
        stores.flush(&mut sent).unwrap();
        assert_eq!(sent.0.len(), 1);
        assert_eq!(
            (stores.dirty(), stores.flushed()),
            (0, 1),
            "the commit failed"
        );

        stores.begin_record();
        let mut s = stores.store::<u64>("counts").unwrap();
        assert_eq!(*s.update("k", |v| v.unwrap_or(0) + 1).unwrap(), 2);
        assert_eq!((stores.dirty(), stores.flushed()), (1, 0));
        stores.rollback();
        assert_eq!((stores.dirty(), stores.flushed()), (0, 1));
        assert_eq!(
            stores.store::<u64>("counts").unwrap().get("k").unwrap(),
            Some(1)
        );
        let mut again = Recorder::default();
        stores.flush(&mut again).unwrap();
        assert!(again.0.is_empty(), "sent again: {:?}", again.0);
    }

    /// A value that does not decode as the type asked for is an error naming the store and the
    /// key, and `update` then writes nothing.
    #[test]
    fn update_of_a_value_that_does_not_decode_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        stores.put_raw(0, b"k", Some(b"\"text\"".to_vec()));
        stores.begin_record();
        let err = stores
            .store::<u64>("counts")
            .unwrap()
            .update("k", |v| v.unwrap_or(0) + 1)
            .unwrap_err();
        assert!(err.to_string().contains("k"), "{err}");
        assert_eq!(stores.dirty(), 1, "only the raw write");
        let mut s = stores.store::<String>("counts").unwrap();
        assert_eq!(s.get("k").unwrap().as_deref(), Some("text"));
    }

    /// A flush encodes a decoded value once, for the changelog and RocksDB, and the cache keeps
    /// that encoding (a few dozen bytes) rather than the decoded value; reads decode it again.
    #[test]
    fn a_flushed_value_stays_cached_as_its_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = open(dir.path(), 100);
        stores
            .store::<Vec<u64>>("counts")
            .unwrap()
            .put_owned("k", vec![1, 2, 3])
            .unwrap();
        let cached = |stores: &TaskStores| format!("{:?}", stores.caches[0].entries[&b"k"[..]]);
        assert!(cached(&stores).contains("Typed"), "{}", cached(&stores));
        let mut log = Recorder::default();
        let (batch, _) = stores.flush(&mut log).unwrap();
        assert!(
            cached(&stores).contains("Bytes([1,2,3])"),
            "{}",
            cached(&stores)
        );
        assert_eq!(log.0, vec![(0, b"k".to_vec(), Some(b"[1,2,3]".to_vec()))]);
        stores.db().write(batch).unwrap();
        stores.commit_succeeded();
        let mut s = stores.store::<Vec<u64>>("counts").unwrap();
        assert_eq!(s.get("k").unwrap(), Some(vec![1, 2, 3]));
    }

    #[test]
    fn prefix_end_handles_max_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }
}
