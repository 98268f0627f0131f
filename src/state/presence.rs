//! Whether other workers use this worker's state directory right now.
//!
//! Workers may share a state directory: each task directory's lock ([`DirLock`]) keeps two of
//! them from using one at once. A standby replica, though, holds its task's directory for as
//! long as the placement gives it the standby, while the worker that runs the task may need
//! that very directory (it is given the task back after a rebalance), and would wait for it
//! that long. So every worker announces itself with a lock file of its own,
//! `present-<random>.lock` in `<state.dir>/<app.id>`, held while it runs, and the standbys of
//! a worker that finds another one's held keep nothing.

use std::io;
use std::path::{Path, PathBuf};

use super::lock::DirLock;

const PREFIX: &str = "present-";
const LOCK_SUFFIX: &str = ".lock";

/// This worker's announcement; withdrawn when dropped (or when the process dies).
#[derive(Debug)]
pub struct Presence {
    app_dir: PathBuf,
    own: PathBuf,
    _lock: DirLock,
}

/// Announces this worker in `app_dir` (`<state.dir>/<app.id>`).
pub fn announce(app_dir: &Path) -> io::Result<Presence> {
    std::fs::create_dir_all(app_dir)?;
    loop {
        let base = app_dir.join(format!("{PREFIX}{:016x}", rand::random::<u64>()));
        if let Some(lock) = DirLock::try_acquire(&base)? {
            return Ok(Presence {
                app_dir: app_dir.to_path_buf(),
                own: lock.path().to_path_buf(),
                _lock: lock,
            });
        }
    }
}

impl Presence {
    /// True when another running worker announced itself in the same directory. The
    /// announcements of workers that died are deleted.
    pub fn others(&self) -> io::Result<bool> {
        let mut others = false;
        for entry in std::fs::read_dir(&self.app_dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(base) = name.strip_suffix(LOCK_SUFFIX) else {
                continue;
            };
            if !base.starts_with(PREFIX) || path == self.own {
                continue;
            }
            match DirLock::try_acquire(&self.app_dir.join(base))? {
                None => others = true,
                // Left by a worker that died: deleted while held (see `DirLock::try_acquire`).
                Some(stale) => match std::fs::remove_file(stale.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
        }
        Ok(others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_sees_the_others_on_its_directory_while_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let a = announce(dir.path()).unwrap();
        assert!(!a.others().unwrap(), "alone");
        let b = announce(dir.path()).unwrap();
        assert!(a.others().unwrap() && b.others().unwrap(), "two");
        drop(b);
        assert!(!a.others().unwrap(), "b left");
        // A dead worker's announcement is cleaned away (its lock is free).
        let dead = dir.path().join("present-00000000000000ff.lock");
        std::fs::write(&dead, b"").unwrap();
        assert!(!a.others().unwrap());
        assert!(!dead.exists());
        let other_app = tempfile::tempdir().unwrap();
        let _c = announce(other_app.path()).unwrap();
        assert!(!a.others().unwrap(), "another directory is not this one");
    }
}
