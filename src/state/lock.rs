//! Exclusive ownership of a task's state directory.
//!
//! A task directory may be wanted by two owners at once: a sibling member of the same process
//! that is still closing the task, or another worker process pointed at the same `state.dir`.
//! Neither may have the directory wiped or written under it. The owner holds an advisory
//! `flock(2)` on `<task dir>.lock`, a file beside the directory (so wiping the directory never
//! removes the lock). `flock` locks belong to an open file, so they exclude other handles in
//! the same process as well as other processes, and the kernel drops them when the holder dies,
//! so a kill -9 never leaves a directory locked.
//!
//! Deciding "locked" this way, by the lock's own result, means that any error RocksDB reports
//! afterwards is about the files themselves (corruption, unreadable files): the directory is
//! ours, and wiping and rebuilding it is safe.
//!
//! Releasing the lock stamps the lock file's modification time: it records when the task was
//! last closed, from which the state cleaner ([`super::cleaner`]) counts how long the
//! directory has been unused. The cleaner deletes a directory and its lock file while holding
//! the lock; [`DirLock::try_acquire`] makes sure that a lock taken on a file that was deleted
//! meanwhile does not count.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A held lock on a task directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

/// What taking the lock of an opened lock file came to.
#[derive(Debug)]
enum Attempt {
    /// Ours.
    Held(DirLock),
    /// Another handle holds it.
    Busy,
    /// Ours, but the file was deleted (or replaced) between opening and locking it, so the
    /// lock guards nothing: open the file at the path again.
    Stale,
}

impl DirLock {
    /// The lock file of `dir`: `<dir>.lock` in the same parent.
    pub fn lock_path(dir: &Path) -> PathBuf {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        dir.with_file_name(name)
    }

    /// Takes the lock of `dir` without waiting: `Ok(None)` when another handle holds it.
    pub fn try_acquire(dir: &Path) -> io::Result<Option<DirLock>> {
        let path = Self::lock_path(dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match Self::lock(file, &path)? {
                Attempt::Held(lock) => return Ok(Some(lock)),
                Attempt::Busy => return Ok(None),
                // The cleaner deleted the file under us; the next open creates a fresh one.
                Attempt::Stale => continue,
            }
        }
    }

    /// Locks `file`, opened at `path`.
    fn lock(file: File, path: &Path) -> io::Result<Attempt> {
        // SAFETY: flock takes a file descriptor that `file` keeps open, and plain flags.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(Attempt::Busy)
            } else {
                Err(err)
            };
        }
        // A holder that deletes the lock file (the cleaner) releases the lock right after; a
        // handle that had opened the file before that now locks a file nobody else will open.
        let held = file.metadata()?;
        let same = match std::fs::metadata(path) {
            Ok(now) => now.dev() == held.dev() && now.ino() == held.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        Ok(if same {
            Attempt::Held(DirLock {
                file,
                path: path.to_path_buf(),
            })
        } else {
            Attempt::Stale
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Stamped while the lock is still held (the file closes after this), so nobody sees
        // the lock free with the older time. If stamping fails, the cleaner counts from the
        // previous stamp and may delete the directory early: a restore from the changelog
        // then rebuilds it, which costs time but loses nothing.
        let _ = self.file.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_handle_is_refused_until_the_first_is_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("0_1");
        let first = DirLock::try_acquire(&dir).unwrap().expect("free at first");
        assert_eq!(first.path(), parent.path().join("0_1.lock"));
        assert!(DirLock::try_acquire(&dir).unwrap().is_none(), "held");
        drop(first);
        assert!(
            DirLock::try_acquire(&dir).unwrap().is_some(),
            "released on drop"
        );
    }

    #[test]
    fn releasing_stamps_the_lock_file() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("0_1");
        let lock = DirLock::try_acquire(&dir).unwrap().unwrap();
        let an_hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        lock.file.set_modified(an_hour_ago).unwrap();
        let mtime = || {
            std::fs::metadata(parent.path().join("0_1.lock"))
                .unwrap()
                .modified()
                .unwrap()
        };
        assert_eq!(mtime(), an_hour_ago);
        let before = SystemTime::now();
        drop(lock);
        assert!(mtime() >= before, "stamped when released");
    }

    /// A handle that opened the lock file before the cleaner deleted it, and locks it after,
    /// holds nothing: the lock counts only for the file at the path.
    #[test]
    fn a_lock_on_a_deleted_lock_file_is_stale() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("0_1");
        let path = DirLock::lock_path(&dir);
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let early = open();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            DirLock::lock(early, &path).unwrap(),
            Attempt::Stale
        ));
        // Replaced by a new file: still stale.
        let early = open();
        std::fs::remove_file(&path).unwrap();
        let _new = open();
        assert!(matches!(
            DirLock::lock(early, &path).unwrap(),
            Attempt::Stale
        ));
        // try_acquire opens the file at the path again, and it is free.
        let lock = DirLock::try_acquire(&dir).unwrap().expect("free");
        assert!(matches!(
            DirLock::lock(open(), &path).unwrap(),
            Attempt::Busy
        ));
        drop(lock);
        assert!(matches!(
            DirLock::lock(open(), &path).unwrap(),
            Attempt::Held(_)
        ));
    }
}
