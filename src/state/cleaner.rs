//! Deletes the state of tasks that moved away (Kafka Streams' `StateDirectory` cleaner).
//!
//! A task's directory stays behind when its partition moves to another worker. Left there, it
//! takes disk space, and were the partition to come back much later its old state would be of
//! no use: a store last in sync with its changelog longer ago than the changelog's tombstone
//! retention is rebuilt from the beginning anyway (see [`super::Checkpoint`]), because
//! compaction may have removed the deletions made since. So a periodic job (see
//! [`crate::worker`]) runs [`clean`], which deletes every task directory of this application
//! that
//!
//! - is not open: its lock ([`DirLock`]) can be taken, so no member of this process (nor any
//!   other process sharing the state directory) has the task's database open; and
//! - has been unused for longer than `state.cleanup_delay_ms`: since the later of the lock
//!   file's modification time (stamped whenever a task closes) and the directory's own (a
//!   directory never opened since start-up, e.g. after a crash, counts from when RocksDB last
//!   created or removed a file in it).
//!
//! The lock is held while deleting, so a task opening at that moment is told its directory is
//! locked and tries again; it then starts from an empty directory and restores the whole
//! changelog. The directory is first renamed out of the way, so a crash while deleting leaves
//! either the whole directory or none of it under the task's name (a half-deleted RocksDB could
//! open with some of its files missing); the renamed remains are removed by the next pass.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::lock::DirLock;

/// Suffix of a directory being deleted.
const TRASH_SUFFIX: &str = ".deleting";
/// Suffix of a lock file (see [`DirLock::lock_path`]).
const LOCK_SUFFIX: &str = ".lock";

/// What one pass of [`clean`] did.
#[derive(Debug, Default)]
pub struct CleanReport {
    /// Tasks (directory names) whose state was deleted, with how long it had been unused.
    pub removed: Vec<(String, Duration)>,
    /// Tasks whose state could not be deleted, with why; tried again on the next pass.
    pub failed: Vec<(String, io::Error)>,
}

/// Deletes, under `app_dir` (`<state.dir>/<app.id>`), the directory and lock file of every task
/// that is not open and has been unused for longer than `delay` at `now`. A missing `app_dir`
/// is nothing to clean; only failing to list it is an error.
pub fn clean(app_dir: &Path, delay: Duration, now: SystemTime) -> io::Result<CleanReport> {
    let mut report = CleanReport::default();
    let entries = match std::fs::read_dir(app_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    // Tasks by name: every directory, and every lock file (whose directory may be gone).
    let mut tasks = BTreeSet::new();
    let mut trash = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(text) = name.to_str() else {
            continue;
        };
        let is_dir = entry.file_type()?.is_dir();
        // Only what a task leaves here: anything else under the app directory (someone's
        // files, or another app's directories when state dirs are nested) is not ours.
        if let Some(task) = text.strip_suffix(TRASH_SUFFIX) {
            if is_dir && is_task_name(task) {
                trash.push(entry.path());
            }
        } else if let Some(task) = text.strip_suffix(LOCK_SUFFIX) {
            if is_task_name(task) {
                tasks.insert(OsString::from(task));
            }
        } else if is_dir && is_task_name(text) {
            tasks.insert(name);
        }
    }
    for path in trash {
        // Left by a pass that died while deleting; no task opens a directory by this name.
        if let Err(e) = remove_dir(&path) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            report.failed.push((name.into_owned(), e));
        }
    }
    for task in tasks {
        let dir = app_dir.join(&task);
        let name = task.to_string_lossy().into_owned();
        match clean_task(&dir, delay, now) {
            Ok(Some(idle)) => report.removed.push((name, idle)),
            Ok(None) => {}
            Err(e) => report.failed.push((name, e)),
        }
    }
    Ok(report)
}

/// Whether `name` is a task directory's name: `<topology>_<partition>`, as a task id prints.
fn is_task_name(name: &str) -> bool {
    name.split_once('_').is_some_and(|(topology, partition)| {
        topology.parse::<u32>().is_ok() && partition.parse::<u32>().is_ok()
    })
}

/// Deletes one task's directory and lock file if it is closed and unused for longer than
/// `delay`; returns for how long it was unused when it was deleted.
fn clean_task(dir: &Path, delay: Duration, now: SystemTime) -> io::Result<Option<Duration>> {
    let lock_path = DirLock::lock_path(dir);
    let lock_stamp = modified(&lock_path)?;
    let unused = |lock_stamp: Option<SystemTime>| -> io::Result<Option<Duration>> {
        let Some(last) = modified(dir)?.max(lock_stamp) else {
            return Ok(None);
        };
        // A time ahead of `now` (a clock step) counts as just used.
        let idle = now.duration_since(last).unwrap_or_default();
        Ok((idle > delay).then_some(idle))
    };
    if unused(lock_stamp)?.is_none() {
        return Ok(None);
    }
    let Some(lock) = DirLock::try_acquire(dir)? else {
        return Ok(None);
    };
    // Look again now that nobody can open it: the task may have been opened and closed since
    // (closing stamps the lock file; opening RocksDB changes the directory). A lock file that
    // did not exist before was just created by `try_acquire`, and says nothing.
    let lock_stamp = match lock_stamp {
        Some(_) => modified(&lock_path)?,
        None => None,
    };
    let Some(idle) = unused(lock_stamp)? else {
        return Ok(None);
    };
    let trash = trash_path(dir);
    remove_dir(&trash)?;
    match std::fs::rename(dir, &trash) {
        Ok(()) => remove_dir(&trash)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Deleted while held: a handle that opened the file before this does not get the lock
    // (see `DirLock::try_acquire`).
    match std::fs::remove_file(lock.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    drop(lock);
    Ok(Some(idle))
}

/// `<dir>.deleting`, beside `dir`.
fn trash_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(TRASH_SUFFIX);
    dir.with_file_name(name)
}

/// The modification time of `path`, `None` when it does not exist.
fn modified(path: &Path) -> io::Result<Option<SystemTime>> {
    match std::fs::metadata(path) {
        Ok(meta) => meta.modified().map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a directory and everything in it; a missing one is fine.
fn remove_dir(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves the last use of a closed task's directory `dir` `by` into the past.
#[cfg(test)]
pub(crate) fn age(dir: &Path, by: Duration) {
    let then = SystemTime::now() - by;
    std::fs::File::open(dir)
        .unwrap()
        .set_modified(then)
        .unwrap();
    let lock = DirLock::lock_path(dir);
    if lock.exists() {
        std::fs::File::options()
            .write(true)
            .open(lock)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RocksMemory, TaskDb};

    const DELAY: Duration = Duration::from_secs(600);

    /// A task directory with a database, closed (as a task leaves it).
    fn closed_task(app: &Path, name: &str) -> PathBuf {
        let dir = app.join(name);
        drop(TaskDb::open(&dir, &["s".to_string()], &RocksMemory::default()).unwrap());
        dir
    }

    fn names(app: &Path) -> BTreeSet<String> {
        std::fs::read_dir(app)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn removed(report: &CleanReport) -> Vec<&str> {
        report.removed.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Only task directories are candidates: other directories and files under the app
    /// directory stay, however old.
    #[test]
    fn leaves_what_is_not_a_task_alone() {
        let app = tempfile::tempdir().unwrap();
        let task = closed_task(app.path(), "0_0");
        age(&task, 2 * DELAY);
        for other in ["notes", "other-app", "1_x", "x_1", "0_0_0"] {
            let dir = app.path().join(other);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("keep"), b"keep").unwrap();
            age(&dir, 2 * DELAY);
        }
        std::fs::create_dir(app.path().join("notes.deleting")).unwrap();

        let report = clean(app.path(), DELAY, SystemTime::now()).unwrap();
        assert_eq!(removed(&report), ["0_0"], "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(
            names(app.path()),
            BTreeSet::from([
                "0_0_0".into(),
                "1_x".into(),
                "notes".into(),
                "notes.deleting".into(),
                "other-app".into(),
                "x_1".into()
            ])
        );
    }

    #[test]
    fn deletes_only_closed_tasks_unused_for_longer_than_the_delay() {
        let app = tempfile::tempdir().unwrap();
        let old = closed_task(app.path(), "0_0");
        let recent = closed_task(app.path(), "0_1");
        let open_dir = app.path().join("0_2");
        let open = TaskDb::open(&open_dir, &["s".to_string()], &RocksMemory::default()).unwrap();
        age(&old, 2 * DELAY);
        age(&recent, DELAY / 2);
        age(&open_dir, 2 * DELAY);

        let report = clean(app.path(), DELAY, SystemTime::now()).unwrap();
        assert_eq!(removed(&report), ["0_0"], "{report:?}");
        assert!(report.removed[0].1 >= 2 * DELAY);
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(
            names(app.path()),
            BTreeSet::from([
                "0_1".into(),
                "0_1.lock".into(),
                "0_2".into(),
                "0_2.lock".into()
            ])
        );

        // The open one is kept however old; once closed (which stamps it), it waits its delay.
        let report = clean(
            app.path(),
            DELAY,
            SystemTime::now() + DELAY / 2 + Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(removed(&report), ["0_1"], "{report:?}");
        drop(open);
        let report = clean(app.path(), DELAY, SystemTime::now() + DELAY / 2).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        let report = clean(
            app.path(),
            DELAY,
            SystemTime::now() + DELAY + Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(removed(&report), ["0_2"], "{report:?}");
        assert!(names(app.path()).is_empty());
    }

    /// A task opening while its directory is being deleted is told it is locked, and later
    /// opens a fresh, empty directory.
    #[test]
    fn a_task_opening_during_deletion_waits_and_starts_empty() {
        let app = tempfile::tempdir().unwrap();
        let dir = app.path().join("0_0");
        {
            let db = TaskDb::open(&dir, &["s".to_string()], &RocksMemory::default()).unwrap();
            let mut batch = db.batch();
            db.batch_put(&mut batch, 0, b"k", b"v");
            db.write(batch).unwrap();
        }
        let cleaner = DirLock::try_acquire(&dir)
            .unwrap()
            .expect("the cleaner's lock");
        assert!(matches!(
            TaskDb::open(&dir, &["s".to_string()], &RocksMemory::default()),
            Err(crate::state::StateError::Locked { .. })
        ));
        drop(cleaner);
        age(&dir, 2 * DELAY);
        let report = clean(app.path(), DELAY, SystemTime::now()).unwrap();
        assert_eq!(removed(&report), ["0_0"], "{report:?}");
        let db = TaskDb::open(&dir, &["s".to_string()], &RocksMemory::default()).unwrap();
        assert_eq!(
            db.get(0, b"k").unwrap(),
            None,
            "nothing of the old state is left"
        );
    }

    /// Leftovers: a lock file without its directory, a directory without a lock file (never
    /// locked), and the remains of a pass that died while deleting.
    #[test]
    fn leftovers_are_cleaned_too() {
        let app = tempfile::tempdir().unwrap();
        let gone = closed_task(app.path(), "0_0");
        std::fs::remove_dir_all(&gone).unwrap();
        let unlocked = closed_task(app.path(), "0_1");
        std::fs::remove_file(DirLock::lock_path(&unlocked)).unwrap();
        let trash = app.path().join("0_2.deleting");
        std::fs::create_dir_all(trash.join("sub")).unwrap();
        age(&unlocked, 2 * DELAY);
        let later = SystemTime::now() + 2 * DELAY;
        let report = clean(app.path(), DELAY, later).unwrap();
        assert_eq!(removed(&report), ["0_0", "0_1"], "{report:?}");
        assert!(names(app.path()).is_empty(), "{:?}", names(app.path()));
        // Nothing at all to clean is fine too.
        assert!(clean(&app.path().join("missing"), DELAY, later)
            .unwrap()
            .removed
            .is_empty());
    }
}
