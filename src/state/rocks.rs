//! One RocksDB database per task: a column family per declared store plus one for offsets.
//!
//! This is the only module that names `rocksdb` types. The changelog offset a store reflects is
//! kept in the offsets column family and always written in the same [`Batch`] as the state it
//! describes, so the two can never disagree after a crash (Kafka Streams keeps it in a separate
//! checkpoint file instead).

use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use super::lock::DirLock;
use super::StateError;

/// Column family holding offsets (`changelog/<store>` → next changelog offset to restore from).
const OFFSETS_CF: &str = "__tributary_offsets";
/// Prefix of the column families that hold store data, so no store name can clash with ours.
const STORE_CF_PREFIX: &str = "store.";

/// A task's RocksDB database. Thread safe: the HTTP layer reads it while the task writes.
pub struct TaskDb {
    db: DB,
    path: PathBuf,
    stores: Vec<String>,
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

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Many small databases live side by side (one per task): keep each one's memory modest.
    opts.set_write_buffer_size(8 << 20);
    opts.set_max_write_buffer_number(2);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    opts
}

fn changelog_key(store: &str) -> Vec<u8> {
    format!("changelog/{store}").into_bytes()
}

impl TaskDb {
    /// Opens (or creates) the database at `path` with one column family per store.
    ///
    /// Fails with [`StateError::Locked`] while another handle holds the directory (a task that
    /// is moving between members of one process, or another process using the same state
    /// directory; see [`DirLock`]), and with [`StateError::Open`] when the files cannot be
    /// opened (corrupt or unreadable); [`TaskDb::open_or_rebuild`] wipes them in that case.
    pub fn open(path: &Path, stores: &[String]) -> Result<Self, StateError> {
        let lock = Self::lock(path)?;
        Self::open_locked(path, stores, lock)
    }

    /// Like [`TaskDb::open`], but a directory whose files cannot be opened is wiped and created
    /// afresh (while the lock is held, so nobody else is using it); returns the reason it was
    /// wiped, if it was. The caller then restores everything from the changelog.
    pub fn open_or_rebuild(
        path: &Path,
        stores: &[String],
    ) -> Result<(Self, Option<String>), StateError> {
        let lock = Self::lock(path)?;
        match Self::try_open(path, stores) {
            Ok(db) => Ok((Self::wrap(db, path, stores, lock), None)),
            // Damaged or missing files: only a rebuild helps. Anything else (no space, no
            // permission, too many open files) would fail the same way after a wipe, which
            // would only throw away state that is fine: report it instead.
            Err(OpenError {
                rebuild: true,
                reason,
            }) => {
                Self::wipe(path)?;
                let db = Self::open_locked(path, stores, lock)?;
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

    fn open_locked(path: &Path, stores: &[String], lock: DirLock) -> Result<Self, StateError> {
        let db = Self::try_open(path, stores).map_err(|e| StateError::Open {
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
            _lock: lock,
        }
    }

    /// Opens RocksDB at `path` with the column families of `stores`. Stores the directory has
    /// but the topology no longer declares are dropped (with their checkpoints), so removing
    /// a store does not cost the others a full restore.
    fn try_open(path: &Path, stores: &[String]) -> Result<DB, OpenError> {
        std::fs::create_dir_all(path).map_err(|e| OpenError {
            rebuild: false,
            reason: e.to_string(),
        })?;
        let opts = db_options();
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
        let names = std::iter::once(OFFSETS_CF.to_string())
            .chain(wanted.iter().cloned())
            .chain(unused.iter().map(|cf| cf.to_string()));
        let cfs = names.map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let mut db = DB::open_cf_descriptors(&opts, path, cfs).map_err(OpenError::from)?;
        for cf in unused {
            let store = &cf[STORE_CF_PREFIX.len()..];
            tracing::info!(path = %path.display(), store, "dropping a store the topology no longer has");
            let offsets = db.cf_handle(OFFSETS_CF).expect("invariant: opened above");
            db.delete_cf(offsets, changelog_key(store))
                .map_err(OpenError::from)?;
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
        let name = format!("{STORE_CF_PREFIX}{}", self.stores[store]);
        self.db
            .cf_handle(&name)
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

    /// The changelog offset to restore `store` from (the next offset not yet applied), if any
    /// state was ever written.
    pub fn changelog_offset(&self, store: &str) -> Result<Option<i64>, StateError> {
        let raw = self
            .db
            .get_cf(self.offsets_cf(), changelog_key(store))
            .map_err(|e| self.err(e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StateError::Io {
                    path: self.path.clone(),
                    reason: format!(
                        "offset entry for store {store} is {} bytes, expected 8",
                        bytes.len()
                    ),
                })?;
                Ok(Some(i64::from_be_bytes(arr)))
            }
        }
    }

    /// Deletes every entry of `store` and its changelog offset, atomically: the store is then
    /// as if nothing had ever been restored into it (used when its checkpoint is stale).
    pub fn clear_store(&self, store: usize) -> Result<(), StateError> {
        let mut batch = self.batch();
        for item in self
            .db
            .iterator_cf(self.store_cf(store), IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.err(e))?;
            batch.inner.delete_cf(self.store_cf(store), k);
        }
        batch
            .inner
            .delete_cf(self.offsets_cf(), changelog_key(&self.stores[store]));
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

    /// Records in `batch` that the store reflects its changelog up to (not including) `next`.
    pub fn batch_changelog_offset(&self, batch: &mut Batch, store: usize, next: i64) {
        batch.inner.put_cf(
            self.offsets_cf(),
            changelog_key(&self.stores[store]),
            next.to_be_bytes(),
        );
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
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn state_and_offset_are_written_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores()).unwrap();
        let mut batch = db.batch();
        db.batch_put(&mut batch, 0, b"k1", b"v1");
        db.batch_put(&mut batch, 1, b"k1", b"other");
        db.batch_changelog_offset(&mut batch, 0, 42);
        assert_eq!(
            db.get(0, b"k1").unwrap(),
            None,
            "nothing visible before write"
        );
        db.write(batch).unwrap();
        drop(db);

        let db = TaskDb::open(dir.path(), &stores()).unwrap();
        assert_eq!(db.get(0, b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(db.get(1, b"k1").unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(db.changelog_offset("a").unwrap(), Some(42));
        assert_eq!(db.changelog_offset("b").unwrap(), None);
    }

    #[test]
    fn clear_store_empties_one_store_and_forgets_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores()).unwrap();
        let mut batch = db.batch();
        for k in ["a", "b", "c"] {
            db.batch_put(&mut batch, 0, k.as_bytes(), b"x");
        }
        db.batch_put(&mut batch, 1, b"kept", b"y");
        db.batch_changelog_offset(&mut batch, 0, 7);
        db.batch_changelog_offset(&mut batch, 1, 9);
        db.write(batch).unwrap();
        db.clear_store(0).unwrap();
        assert!(db.scan(0, b"", None).unwrap().is_empty());
        assert_eq!(db.changelog_offset("a").unwrap(), None);
        assert_eq!(db.get(1, b"kept").unwrap().as_deref(), Some(&b"y"[..]));
        assert_eq!(db.changelog_offset("b").unwrap(), Some(9));
    }

    #[test]
    fn scan_is_ordered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = TaskDb::open(dir.path(), &stores()).unwrap();
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
            let db = TaskDb::open(&dir, &stores()).unwrap();
            let mut batch = db.batch();
            db.batch_put(&mut batch, 0, b"k", b"v");
            db.batch_changelog_offset(&mut batch, 0, 3);
            db.write(batch).unwrap();
        }
        // Corrupt it: garbage in the manifest CURRENT names.
        let manifest = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
        std::fs::write(dir.join(manifest.trim()), vec![0xAB; 4096]).unwrap();
        match TaskDb::open(&dir, &stores()) {
            Err(StateError::Open { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("expected Open, got {other:?}"),
        }
        let (db, wiped) = TaskDb::open_or_rebuild(&dir, &stores()).unwrap();
        assert!(wiped.is_some(), "a corrupt directory is wiped");
        assert_eq!(db.get(0, b"k").unwrap(), None);
        assert_eq!(
            db.changelog_offset("a").unwrap(),
            None,
            "restore starts over"
        );

        // While this handle holds the directory, a second open waits (Locked) and wipes nothing.
        let mut batch = db.batch();
        db.batch_put(&mut batch, 0, b"live", b"1");
        db.write(batch).unwrap();
        match TaskDb::open_or_rebuild(&dir, &stores()) {
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
            let db = TaskDb::open(&dir, &stores()).unwrap();
            let mut batch = db.batch();
            db.batch_put(&mut batch, 0, b"k", b"kept");
            db.batch_put(&mut batch, 1, b"k", b"gone");
            db.batch_changelog_offset(&mut batch, 0, 5);
            db.batch_changelog_offset(&mut batch, 1, 6);
            db.write(batch).unwrap();
        }
        let (db, wiped) = TaskDb::open_or_rebuild(&dir, &["a".to_string()]).unwrap();
        assert_eq!(wiped, None, "not a reason to wipe");
        assert_eq!(db.get(0, b"k").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(db.changelog_offset("a").unwrap(), Some(5));
        assert_eq!(db.changelog_offset("b").unwrap(), None);
        drop(db);
        // Declared again later, it starts empty (and restores from its changelog).
        let db = TaskDb::open(&dir, &stores()).unwrap();
        assert_eq!(db.get(1, b"k").unwrap(), None);
    }

    #[test]
    fn second_open_of_the_same_directory_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _db = TaskDb::open(dir.path(), &stores()).unwrap();
        match TaskDb::open(dir.path(), &stores()) {
            Err(StateError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
