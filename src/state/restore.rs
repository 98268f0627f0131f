//! Changelog records applied to a task's stores while they restore, written to RocksDB in
//! batches.
//!
//! A batch carries, for each store it has records of, one checkpoint: just past the last of
//! them. State and checkpoint are written together (see [`TaskDb::write`]), so after a crash
//! the store holds exactly the records before its checkpoint, and the restore goes on from
//! there. Writing the checkpoint once per batch rather than once per record keeps the batch a
//! third of the size: RocksDB's memtable insertions are most of a restore's cost.

use super::{Batch, Checkpoint, StateError, TaskDb};

/// Records per batch: large enough that the per-write costs (the write-ahead log, RocksDB's
/// write path) are spread thin, small enough that a batch stays a few MiB.
pub const RESTORE_BATCH_RECORDS: usize = 10_000;

/// The batch being filled; see the module docs.
#[derive(Debug)]
pub struct RestoreBatch {
    batch: Batch,
    /// Per store: the checkpoint to write with the batch, once it holds records of the store.
    checkpoints: Vec<Option<Checkpoint>>,
    records: usize,
}

impl RestoreBatch {
    /// An empty batch for the stores of `db`.
    pub fn new(db: &TaskDb) -> Self {
        Self {
            batch: db.batch(),
            checkpoints: vec![None; db.stores().len()],
            records: 0,
        }
    }

    /// Adds the changelog record that sets `key` of store `store` to `value` (`None`: a
    /// deletion); `checkpoint` is where the store stands once it is applied.
    pub fn add(
        &mut self,
        db: &TaskDb,
        store: usize,
        key: &[u8],
        value: Option<&[u8]>,
        checkpoint: Checkpoint,
    ) {
        match value {
            Some(v) => db.batch_put(&mut self.batch, store, key, v),
            None => db.batch_delete(&mut self.batch, store, key),
        }
        self.checkpoints[store] = Some(checkpoint);
        self.records += 1;
    }

    /// Records added since the last write.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records
    }

    /// True when no record was added since the last write.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// True when the batch should be written.
    pub fn is_full(&self) -> bool {
        self.records >= RESTORE_BATCH_RECORDS
    }

    /// Writes the records and their checkpoints; the batch is empty afterwards.
    pub fn write(&mut self, db: &TaskDb) -> Result<(), StateError> {
        if self.records == 0 {
            return Ok(());
        }
        let mut batch = std::mem::replace(&mut self.batch, db.batch());
        for (store, checkpoint) in self.checkpoints.iter_mut().enumerate() {
            if let Some(c) = checkpoint.take() {
                db.batch_checkpoint(&mut batch, store, c);
            }
        }
        self.records = 0;
        db.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RocksMemory, TaskStores};
    use std::sync::Arc;

    fn at(next: i64) -> Checkpoint {
        Checkpoint {
            next,
            synced_at_ms: Some(1_000),
        }
    }

    fn open(dir: &std::path::Path) -> TaskDb {
        let stores = ["a".to_string(), "b".to_string()];
        TaskDb::open(dir, &stores, &RocksMemory::default()).unwrap()
    }

    /// Nothing is visible before the write; then the records are, with one checkpoint per
    /// store just past its last record, and a store without records in a batch keeps its own.
    #[test]
    fn a_batch_writes_its_records_with_one_checkpoint_per_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let mut batch = RestoreBatch::new(&db);
        batch.add(&db, 0, b"k1", Some(b"v1"), at(6));
        batch.add(&db, 1, b"k1", Some(b"other"), at(4));
        batch.add(&db, 0, b"k2", Some(b"v2"), at(7));
        batch.add(&db, 0, b"k1", None, at(8));
        assert_eq!(batch.len(), 4);
        assert_eq!(db.get(0, b"k2").unwrap(), None, "nothing before the write");
        assert_eq!(db.checkpoint("a").unwrap(), None);
        batch.write(&db).unwrap();
        assert!(batch.is_empty());
        assert_eq!(db.get(0, b"k1").unwrap(), None, "the later deletion wins");
        assert_eq!(db.get(0, b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(db.get(1, b"k1").unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(8)));
        assert_eq!(db.checkpoint("b").unwrap(), Some(at(4)));

        batch.add(&db, 0, b"k1", Some(b"back"), at(9));
        batch.write(&db).unwrap();
        assert_eq!(db.get(0, b"k1").unwrap().as_deref(), Some(&b"back"[..]));
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(9)));
        assert_eq!(
            db.checkpoint("b").unwrap(),
            Some(at(4)),
            "b had nothing new"
        );
        // An empty batch writes nothing, not even a checkpoint.
        batch.write(&db).unwrap();
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(9)));
    }

    /// Through the task's stores, a full batch is written as it fills; the rest when asked.
    #[test]
    fn the_stores_write_each_full_batch_and_the_rest_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = TaskStores::new(Arc::new(open(dir.path())), 10);
        let n = RESTORE_BATCH_RECORDS as i64;
        for offset in 0..n + 5 {
            let key = format!("k{offset}");
            stores
                .restore(0, key.as_bytes(), Some(b"1"), at(offset + 1))
                .unwrap();
        }
        let db = stores.db().clone();
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(n)), "the full batch");
        assert!(db
            .get(0, format!("k{}", n - 1).as_bytes())
            .unwrap()
            .is_some());
        assert_eq!(db.get(0, format!("k{n}").as_bytes()).unwrap(), None);
        stores.write_restored().unwrap();
        assert_eq!(db.checkpoint("a").unwrap(), Some(at(n + 5)));
        assert!(db
            .get(0, format!("k{}", n + 4).as_bytes())
            .unwrap()
            .is_some());
    }
}
