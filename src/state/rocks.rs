//! One RocksDB database per task: a column family per declared store plus one for offsets.
//!
//! This is the only module that names `rocksdb` types. The changelog offset a store reflects is
//! kept in the offsets column family and always written in the same [`Batch`] as the state it
//! describes, so the two can never disagree after a crash (Kafka Streams keeps it in a separate
//! checkpoint file instead).

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};

use super::lock::DirLock;
use super::{Checkpoint, StateError};

/// RocksDB's default column family (unused).
const DEFAULT_CF: &str = rocksdb::DEFAULT_COLUMN_FAMILY_NAME;
/// Column family holding offsets (`changelog/<store>` → next changelog offset to restore from).
const OFFSETS_CF: &str = "__tributary_offsets";
/// Prefix of the column families that hold store data, so no store name can clash with ours.
const STORE_CF_PREFIX: &str = "store.";

/// Memory shared by every task database of a worker: one block cache, and one budget for the
/// write buffers (memtables) of all their column families. A worker holds one; cloning it
/// shares it.
///
/// Without it each column family of each task would get RocksDB's defaults: a block cache of
/// its own (32 MiB) and write buffers of 64 MiB, so memory grew with the number of partitions
/// a worker holds.
#[derive(Clone)]
pub struct RocksMemory {
    block_cache: Cache,
    block_cache_bytes: usize,
    write_buffers: WriteBufferManager,
    write_buffer_bytes: usize,
}

impl std::fmt::Debug for RocksMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksMemory")
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .finish()
    }
}

/// Largest write buffer of one column family: past this, a bigger budget only lets more
/// column families fill theirs at once.
const MAX_CF_WRITE_BUFFER: usize = 64 << 20;
/// Smallest write buffer of one column family (RocksDB's arena blocks are a sixteenth of it).
const MIN_CF_WRITE_BUFFER: usize = 1 << 20;

impl RocksMemory {
    /// A block cache of `block_cache_bytes` (data, index and filter blocks read from disk)
    /// and a budget of `write_buffer_bytes` for the memtables of every column family: when
    /// their total nears it, RocksDB flushes the largest memtable of the database being
    /// written to disk.
    pub fn new(block_cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        Self {
            block_cache: Cache::new_lru_cache(block_cache_bytes),
            block_cache_bytes,
            // No stall: the budget makes writers flush; stalling them would stop the task
            // until a background flush is done.
            write_buffers: WriteBufferManager::new_write_buffer_manager(write_buffer_bytes, false),
            write_buffer_bytes,
        }
    }

    /// Bytes the memtables of all databases hold now.
    #[cfg(test)]
    pub fn write_buffer_usage(&self) -> usize {
        self.write_buffers.get_usage()
    }

    /// Bytes the block cache holds now.
    #[cfg(test)]
    pub fn block_cache_usage(&self) -> usize {
        self.block_cache.get_usage()
    }

    /// One column family's memtable size: a quarter of the budget, so that a few column
    /// families fill theirs before the budget makes them flush early.
    fn cf_write_buffer(&self) -> usize {
        (self.write_buffer_bytes / 4).clamp(MIN_CF_WRITE_BUFFER, MAX_CF_WRITE_BUFFER)
    }

    /// The options of the database (and of its unused default column family).
    fn db_options(&self) -> Options {
        let mut opts = self.cf_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_manager(&self.write_buffers);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        opts
    }

    /// The options of every column family: the shared block cache, which also holds index and
    /// filter blocks (so they are bounded by it too), bloom filters for point reads of keys a
    /// store does not have (an aggregate's first record of a key), LZ4.
    fn cf_options(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.block_cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        table.set_optimize_filters_for_memory(true);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.cf_write_buffer());
        opts.set_max_write_buffer_number(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts
    }
}

impl Default for RocksMemory {
    /// A small budget, for tests and tools: 8 MiB of block cache, 16 MiB of write buffers.
    fn default() -> Self {
        Self::new(8 << 20, 16 << 20)
    }
}

/// A store's names in the database: its column family and its checkpoint keys.
struct StoreKeys {
    cf: String,
    changelog: Vec<u8>,
    synced: Vec<u8>,
}

impl StoreKeys {
    fn new(store: &str) -> Self {
        Self {
            cf: format!("{STORE_CF_PREFIX}{store}"),
            changelog: changelog_key(store),
            synced: synced_key(store),
        }
    }
}

/// A task's RocksDB database. Thread safe: the HTTP layer reads it while the task writes.
pub struct TaskDb {
    db: DB,
    path: PathBuf,
    stores: Vec<String>,
    /// Per store, computed once: written with every change.
    keys: Vec<StoreKeys>,
    /// Held for as long as the database is open (declared last: dropped after `db` closes).
    _lock: DirLock,
}

impl std::fmt::Debug for TaskDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDb")
            .field("path", &self.path)
            .field("stores", &self.stores)
            .finish()
    }
}

/// Why RocksDB could not open a directory.
struct OpenError {
    /// The files are damaged or missing: wiping the directory and restoring is the remedy.
    rebuild: bool,
    reason: String,
}

impl From<rocksdb::Error> for OpenError {
    fn from(e: rocksdb::Error) -> Self {
        use rocksdb::ErrorKind;
        OpenError {
            rebuild: matches!(e.kind(), ErrorKind::Corruption | ErrorKind::NotFound),
            reason: format!("{:?}: {e}", e.kind()),
        }
    }
}

/// An atomic set of state changes and offsets; nothing of it is visible until [`TaskDb::write`].
pub struct Batch {
    inner: WriteBatch,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.inner.len())
            .finish()
    }
}

/// Key of a store's checkpoint offset (8 bytes, big-endian: the form every version reads).
fn changelog_key(store: &str) -> Vec<u8> {
    format!("changelog/{store}").into_bytes()
}

/// Key of a store's sync time (see [`Checkpoint::synced_at_ms`]), apart from the offset so that
/// a version that does not know it still reads the offset (and, writing only the offset,
/// leaves an older time behind, which errs towards a rebuild).
fn synced_key(store: &str) -> Vec<u8> {
    format!("changelog-synced/{store}").into_bytes()
}

/// Decodes an 8-byte big-endian integer.
fn be_i64(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

impl TaskDb {
    /// Opens (or creates) the database at `path` with one column family per store.
    ///
    /// Fails with [`StateError::Locked`] while another handle holds the directory (a task that
    /// is moving between members of one process, or another process using the same state
    /// directory; see [`DirLock`]), and with [`StateError::Open`] when the files cannot be
    /// opened (corrupt or unreadable); [`TaskDb::open_or_rebuild`] wipes them in that case.
    #[cfg(test)]
    pub fn open(path: &Path, stores: &[String], memory: &RocksMemory) -> Result<Self, StateError> {
        let lock = Self::lock(path)?;
        Self::open_locked(path, stores, memory, lock)
    }

    /// Like [`TaskDb::open`], but a directory whose files cannot be opened is wiped and created
    /// afresh (while the lock is held, so nobody else is using it); returns the reason it was
    /// wiped, if it was. The caller then restores everything from the changelog.
    pub fn open_or_rebuild(
        path: &Path,
        stores: &[String],
        memory: &RocksMemory,
    ) -> Result<(Self, Option<String>), StateError> {
        let lock = Self::lock(path)?;
        match Self::try_open(path, stores, memory) {
            Ok(db) => Ok((Self::wrap(db, path, stores, lock), None)),
            // Damaged or missing files: only a rebuild helps. Anything else (no space, no
            // permission, too many open files) would fail the same way after a wipe, which
            // would only throw away state that is fine: report it instead.
            Err(OpenError {
                rebuild: true,
                reason,
            }) => {
                Self::wipe(path)?;
                let db = Self::open_locked(path, stores, memory, lock)?;
                Ok((db, Some(reason)))
            }
            Err(OpenError { reason, .. }) => Err(StateError::Open {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    fn lock(path: &Path) -> Result<DirLock, StateError> {
        match DirLock::try_acquire(path) {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => Err(StateError::Locked {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(StateError::Open {
                path: path.to_path_buf(),
                reason: format!("locking {}: {e}", DirLock::lock_path(path).display()),
            }),
        }
    }

    fn open_locked(
        path: &Path,
        stores: &[String],
        memory: &RocksMemory,
        lock: DirLock,
    ) -> Result<Self, StateError> {
        let db = Self::try_open(path, stores, memory).map_err(|e| StateError::Open {
            path: path.to_path_buf(),
            reason: e.reason,
        })?;
        Ok(Self::wrap(db, path, stores, lock))
    }

    fn wrap(db: DB, path: &Path, stores: &[String], lock: DirLock) -> Self {
        Self {
            db,
            path: path.to_path_buf(),
            stores: stores.to_vec(),
            keys: stores.iter().map(|s| StoreKeys::new(s)).collect(),
            _lock: lock,
        }
    }

    /// Opens RocksDB at `path` with the column families of `stores`. Stores the directory has
    /// but the topology no longer declares are dropped (with their checkpoints), so removing
    /// a store does not cost the others a full restore.
    fn try_open(path: &Path, stores: &[String], memory: &RocksMemory) -> Result<DB, OpenError> {
        std::fs::create_dir_all(path).map_err(|e| OpenError {
            rebuild: false,
            reason: e.to_string(),
        })?;
        let opts = memory.db_options();
        let wanted: Vec<String> = stores
            .iter()
            .map(|s| format!("{STORE_CF_PREFIX}{s}"))
            .collect();
        // A new directory has no column families to list yet.
        let existing = DB::list_cf(&opts, path).unwrap_or_default();
        let unused: Vec<&String> = existing
            .iter()
            .filter(|cf| cf.starts_with(STORE_CF_PREFIX) && !wanted.contains(cf))
            .collect();
        // The default family is unused, but RocksDB opens it anyway: with RocksDB's defaults
        // unless it is named here.
        let names = [DEFAULT_CF.to_string(), OFFSETS_CF.to_string()]
            .into_iter()
            .chain(wanted.iter().cloned())
            .chain(unused.iter().map(|cf| cf.to_string()));
        let cfs = names.map(|name| ColumnFamilyDescriptor::new(name, memory.cf_options()));
        let mut db = DB::open_cf_descriptors(&opts, path, cfs).map_err(OpenError::from)?;
        for cf in unused {
            let store = &cf[STORE_CF_PREFIX.len()..];
            tracing::info!(path = %path.display(), store, "dropping a store the topology no longer has");
            let offsets = db.cf_handle(OFFSETS_CF).expect("invariant: opened above");
            for key in [changelog_key(store), synced_key(store)] {
                db.delete_cf(offsets, key).map_err(OpenError::from)?;
            }
            db.drop_cf(cf).map_err(OpenError::from)?;
        }
        Ok(db)
    }

    /// Deletes the database files at `path`. Only for a directory whose lock the caller holds.
    fn wipe(path: &Path) -> Result<(), StateError> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index of `store` in the store list, if declared.
    pub fn store_index(&self, store: &str) -> Option<usize> {
        self.stores.iter().position(|s| s == store)
    }

    /// Names of the stores, in declaration order.
    pub fn stores(&self) -> &[String] {
        &self.stores
    }

    fn store_cf(&self, store: usize) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(&self.keys[store].cf)
            .expect("invariant: every store's column family is opened")
    }

    fn offsets_cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(OFFSETS_CF)
            .expect("invariant: the offsets column family is opened")
    }

    fn err(&self, e: rocksdb::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Reads one key of a store.
    pub fn get(&self, store: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.store_cf(store), key)
            .map_err(|e| self.err(e))
    }

    /// All entries of a store with `from <= key < to` (`to = None`: to the end), in key order.
    pub fn scan(
        &self,
        store: usize,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<super::Entries, StateError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.store_cf(store),
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if to.is_some_and(|to| &*k >= to) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Where `store` stands in its changelog, if any state was ever written to it.
    pub fn checkpoint(&self, store: &str) -> Result<Option<Checkpoint>, StateError> {
        let read = |key: Vec<u8>, what: &str| -> Result<Option<i64>, StateError> {
            let raw = self
                .db
                .get_cf(self.offsets_cf(), key)
                .map_err(|e| self.err(e))?;
            raw.map(|bytes| {
                be_i64(&bytes).ok_or_else(|| StateError::Io {
                    path: self.path.clone(),
                    reason: format!(
                        "{what} of store {store} is {} bytes, expected 8",
                        bytes.len()
                    ),
                })
            })
            .transpose()
        };
        let Some(next) = read(changelog_key(store), "checkpoint")? else {
            return Ok(None);
        };
        let synced_at_ms = read(synced_key(store), "sync time")?;
        Ok(Some(Checkpoint { next, synced_at_ms }))
    }

    /// Deletes every entry of `store` and its checkpoint, atomically: the store is then
    /// as if nothing had ever been restored into it (used when its checkpoint is stale).
    pub fn clear_store(&self, store: usize) -> Result<(), StateError> {
        let mut batch = self.batch();
        let cf = self.store_cf(store);
        // One range deletion up to the last key, and that key: constant work however large
        // the store (it runs while partitions are being assigned).
        if let Some(item) = self.db.iterator_cf(cf, IteratorMode::End).next() {
            let (last, _) = item.map_err(|e| self.err(e))?;
            batch.inner.delete_range_cf(cf, &b""[..], &*last);
            batch.inner.delete_cf(cf, last);
        }
        let name = &self.stores[store];
        batch
            .inner
            .delete_cf(self.offsets_cf(), changelog_key(name));
        batch.inner.delete_cf(self.offsets_cf(), synced_key(name));
        self.write(batch)
    }

    /// Starts an empty batch.
    pub fn batch(&self) -> Batch {
        Batch {
            inner: WriteBatch::default(),
        }
    }

    /// Puts a store entry into `batch`.
    pub fn batch_put(&self, batch: &mut Batch, store: usize, key: &[u8], value: &[u8]) {
        batch.inner.put_cf(self.store_cf(store), key, value);
    }

    /// Deletes a store entry in `batch`.
    pub fn batch_delete(&self, batch: &mut Batch, store: usize, key: &[u8]) {
        batch.inner.delete_cf(self.store_cf(store), key);
    }

    /// Records `checkpoint` for `store` in `batch`.
    pub fn batch_checkpoint(&self, batch: &mut Batch, store: usize, checkpoint: Checkpoint) {
        let keys = &self.keys[store];
        let cf = self.offsets_cf();
        batch
            .inner
            .put_cf(cf, &keys.changelog, checkpoint.next.to_be_bytes());
        match checkpoint.synced_at_ms {
            Some(at) => batch.inner.put_cf(cf, &keys.synced, at.to_be_bytes()),
            None => batch.inner.delete_cf(cf, &keys.synced),
        }
    }

    /// Writes `batch` atomically. Not synced: the changelog in Kafka is the durable copy, and
    /// because state and offset share the batch, a database that lost its tail in a machine
    /// crash is still consistent and just restores a longer tail.
    pub fn write(&self, batch: Batch) -> Result<(), StateError> {
        if batch.inner.is_empty() {
            return Ok(());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db
            .write_opt(batch.inner, &opts)
            .map_err(|e| self.err(e))
    }
}

impl Batch {
    /// Number of operations in the batch.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when the batch holds nothing.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stores() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn at(next: i64) -> Checkpoint {
        Checkpoint {
            next,
            synced_at_ms: Some(1_000),
        }
    }

    /// The offset keeps the 8-byte form earlier versions read (so going back to one works);
    /// the sync time is beside it, and a checkpoint written without it reads as unknown.
    #[test]
    fn checkpoints_keep_their_sync_time_and_old_ones_read_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        let mut batch = db.batch();
        db.batch_checkpoint(&mut batch, 0, at(42));
        // What an earlier version writes.
        batch
            .inner
            .put_cf(db.offsets_cf(), changelog_key("b"), 7i64.to_be_bytes());
        db.write(batch).unwrap();
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(42)));
        let raw = db.db.get_cf(db.offsets_cf(), changelog_key("a")).unwrap();
        assert_eq!(raw, Some(42i64.to_be_bytes().to_vec()));
        assert_eq!(
            db.checkpoint("b").unwrap(),
            Some(Checkpoint {
                next: 7,
                synced_at_ms: None
            })
        );
        let mut batch = db.batch();
        batch
            .inner
            .put_cf(db.offsets_cf(), changelog_key("b"), [1u8; 5]);
        db.write(batch).unwrap();
        match db.checkpoint("b") {
            Err(StateError::Io { reason, .. }) => assert!(reason.contains("5 bytes"), "{reason}"),
            other => panic!("expected Io, got {other:?}"),
        }
        // Emptied, a store forgets both.
        db.clear_store(0).unwrap();
        assert_eq!(db.checkpoint("a").unwrap(), None);
        let mut batch = db.batch();
        db.batch_checkpoint(
            &mut batch,
            0,
            Checkpoint {
                next: 1,
                synced_at_ms: None,
            },
        );
        db.write(batch).unwrap();
        assert_eq!(db.checkpoint("a").unwrap().unwrap().synced_at_ms, None);
    }

    #[test]
    fn state_and_offset_are_written_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        let mut batch = db.batch();
        db.batch_put(&mut batch, 0, b"k1", b"v1");
        db.batch_put(&mut batch, 1, b"k1", b"other");
        db.batch_checkpoint(&mut batch, 0, at(42));
        assert_eq!(
            db.get(0, b"k1").unwrap(),
            None,
            "nothing visible before write"
        );
        db.write(batch).unwrap();
        drop(db);

        let db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        assert_eq!(db.get(0, b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(db.get(1, b"k1").unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(db.checkpoint("a").unwrap().map(|c| c.next), Some(42));
        assert_eq!(db.checkpoint("b").unwrap().map(|c| c.next), None);
    }

    #[test]
    fn clear_store_empties_one_store_and_forgets_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        let mut batch = db.batch();
        for k in ["a", "b", "c"] {
            db.batch_put(&mut batch, 0, k.as_bytes(), b"x");
        }
        db.batch_put(&mut batch, 1, b"kept", b"y");
        db.batch_checkpoint(&mut batch, 0, at(7));
        db.batch_checkpoint(&mut batch, 1, at(9));
        db.write(batch).unwrap();
        db.clear_store(0).unwrap();
        assert!(db.scan(0, b"", None).unwrap().is_empty());
        assert_eq!(db.checkpoint("a").unwrap().map(|c| c.next), None);
        assert_eq!(db.get(1, b"kept").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(db.checkpoint("b").unwrap().map(|c| c.next), Some(9));
    }

    #[test]
    fn scan_is_ordered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        let mut batch = db.batch();
        for k in ["b1", "a2", "a1", "c"] {
            db.batch_put(&mut batch, 0, k.as_bytes(), b"x");
        }
        db.batch_delete(&mut batch, 0, b"c");
        db.write(batch).unwrap();
        let keys: Vec<_> = db
            .scan(0, b"a", Some(b"b"))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(db.scan(0, b"", None).unwrap().len(), 3);
    }

    #[test]
    fn corrupt_files_are_wiped_and_rebuilt_but_a_held_directory_is_not() {
        let parent = tempfile::tempdir().unwrap();
        // "clock": RocksDB's messages name the path, and a decision by substring ("lock")
        // would take this corrupt directory for a locked one and wait for it forever.
        let dir = parent.path().join("clock").join("0_0");
        {
            let db = TaskDb::open(&dir, &stores(), &RocksMemory::default()).unwrap();
            let mut batch = db.batch();
            db.batch_put(&mut batch, 0, b"k", b"v");
            db.batch_checkpoint(&mut batch, 0, at(3));
            db.write(batch).unwrap();
        }
        // Corrupt it: garbage in the manifest CURRENT names.
        let manifest = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
        std::fs::write(dir.join(manifest.trim()), vec![0xAB; 4096]).unwrap();
        match TaskDb::open(&dir, &stores(), &RocksMemory::default()) {
            Err(StateError::Open { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("expected Open, got {other:?}"),
        }
        let (db, wiped) =
            TaskDb::open_or_rebuild(&dir, &stores(), &RocksMemory::default()).unwrap();
        assert!(wiped.is_some(), "a corrupt directory is wiped");
        assert_eq!(db.get(0, b"k").unwrap(), None);
        assert_eq!(
            db.checkpoint("a").unwrap().map(|c| c.next),
            None,
            "restore starts over"
        );

        // While this handle holds the directory, a second open waits (Locked) and wipes nothing.
        let mut batch = db.batch();
        db.batch_put(&mut batch, 0, b"live", b"1");
        db.write(batch).unwrap();
        match TaskDb::open_or_rebuild(&dir, &stores(), &RocksMemory::default()) {
            Err(StateError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(db.get(0, b"live").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_store_removed_from_the_topology_is_dropped_and_the_others_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("0_1");
        {
            let db = TaskDb::open(&dir, &stores(), &RocksMemory::default()).unwrap();
            let mut batch = db.batch();
            db.batch_put(&mut batch, 0, b"k", b"kept");
            db.batch_put(&mut batch, 1, b"k", b"gone");
            db.batch_checkpoint(&mut batch, 0, at(5));
            db.batch_checkpoint(&mut batch, 1, at(6));
            db.write(batch).unwrap();
        }
        let (db, wiped) =
            TaskDb::open_or_rebuild(&dir, &["a".to_string()], &RocksMemory::default()).unwrap();
        assert_eq!(wiped, None, "not a reason to wipe");
        assert_eq!(db.get(0, b"k").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(db.checkpoint("a").unwrap().map(|c| c.next), Some(5));
        assert_eq!(db.checkpoint("b").unwrap().map(|c| c.next), None);
        drop(db);
        // Declared again later, it starts empty (and restores from its changelog).
        let db = TaskDb::open(&dir, &stores(), &RocksMemory::default()).unwrap();
        assert_eq!(db.get(1, b"k").unwrap(), None);
    }

    /// What RocksDB recorded it applied, from the database's latest OPTIONS file: section
    /// (`CFOptions "store.a"`, `TableOptions/BlockBasedTable "store.a"`, ...) -> key -> value.
    fn recorded_options(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
        let latest = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap_or(0))
            .expect("RocksDB writes an OPTIONS file");
        let text = std::fs::read_to_string(dir.join(latest)).unwrap();
        let mut sections = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                sections
                    .entry(current.clone())
                    .or_insert_with(BTreeMap::new)
                    .insert(k.to_string(), v.to_string());
            }
        }
        sections
    }

    /// Every column family (the stores', the offsets', the unused default) gets the tuned
    /// options, not RocksDB's defaults (64 MiB write buffers, a 32 MiB block cache of its own,
    /// no bloom filter); one block cache and one write buffer budget serve every database.
    #[test]
    fn every_column_family_gets_the_tuned_options_and_the_shared_memory() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let memory = RocksMemory::new(3 << 20, 8 << 20);
        let db1 = TaskDb::open(d1.path(), &stores(), &memory).unwrap();
        let db2 = TaskDb::open(d2.path(), &["c".to_string()], &memory).unwrap();
        let recorded = recorded_options(d1.path());
        for cf in [DEFAULT_CF, OFFSETS_CF, "store.a", "store.b"] {
            let section = |kind: &str| {
                recorded
                    .get(&format!("{kind} \"{cf}\""))
                    .unwrap_or_else(|| panic!("no {kind} of {cf} in {:?}", recorded.keys()))
            };
            let options = section("CFOptions");
            assert_eq!(
                options["write_buffer_size"], "2097152",
                "{cf}: a quarter of the 8 MiB budget"
            );
            assert_eq!(options["max_write_buffer_number"], "2", "{cf}");
            assert_eq!(options["compression"], "kLZ4Compression", "{cf}");
            let table = section("TableOptions/BlockBasedTable");
            assert_eq!(table["filter_policy"], "bloomfilter", "{cf}");
            assert_eq!(table["cache_index_and_filter_blocks"], "true", "{cf}");
            let handle = db1.db.cf_handle(cf).unwrap();
            let capacity = db1
                .db
                .property_int_value_cf(handle, "rocksdb.block-cache-capacity")
                .unwrap();
            assert_eq!(capacity, Some(3 << 20), "{cf}: the shared cache");
        }

        // What one database reads is in the cache the other's column families report.
        let mut batch = db1.batch();
        for i in 0..1000u32 {
            db1.batch_put(&mut batch, 0, &i.to_be_bytes(), b"some value");
        }
        db1.write(batch).unwrap();
        db1.db.flush_cf(db1.store_cf(0)).unwrap();
        assert_eq!(
            db1.get(0, &7u32.to_be_bytes()).unwrap().as_deref(),
            Some(&b"some value"[..])
        );
        let used = memory.block_cache_usage();
        assert!(used > 0, "the read went through the shared cache");
        let other = db2
            .db
            .property_int_value_cf(db2.store_cf(0), "rocksdb.block-cache-usage")
            .unwrap();
        assert_eq!(other, Some(used as u64), "one cache for both databases");
        // And what either writes counts against the one write buffer budget.
        let before = memory.write_buffer_usage();
        let mut batch = db2.batch();
        for i in 0..1000u32 {
            db2.batch_put(&mut batch, 0, &i.to_be_bytes(), &[7u8; 300]);
        }
        db2.write(batch).unwrap();
        assert!(
            memory.write_buffer_usage() > before,
            "db2's memtable counts: {} -> {}",
            before,
            memory.write_buffer_usage()
        );
    }

    #[test]
    fn second_open_of_the_same_directory_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _db = TaskDb::open(dir.path(), &stores(), &RocksMemory::default()).unwrap();
        match TaskDb::open(dir.path(), &stores(), &RocksMemory::default()) {
            Err(StateError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
