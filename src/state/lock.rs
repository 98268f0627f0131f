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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held lock on a task directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
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
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock takes a file descriptor that `file` keeps open, and plain flags.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(DirLock { _file: file, path }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
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
}
