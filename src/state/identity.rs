//! A worker's identity, kept in its state directory: what its transactional producers are
//! named after under exactly once.
//!
//! A `transactional.id` must be unique among the producers alive at once (two producers with
//! one id fence each other, over and over), and the same again when a worker restarts: the
//! new producer's `init_transactions` then aborts whatever transaction its crashed
//! predecessor left open, at once. With a fresh id every start, such a transaction would hold
//! back every `read_committed` reader of its partitions (the changelog restores among them)
//! until the broker times it out.
//!
//! So a worker claims the first free slot `worker-<n>` of the application's state directory,
//! holding `worker-<n>.lock` (an `flock`, see [`DirLock`]) while it runs, and takes the random
//! id stored in `worker-<n>.id`, created by the first worker to claim the slot. A restart on
//! the same state directory gets the same slot, and so the same id; another worker sharing the
//! directory meanwhile gets the next slot; workers on other machines have other ids.
//! (`app.instance_id`, when set, names the worker instead: static membership already promises
//! that it is unique and stable.)

use std::io;
use std::path::Path;

use super::lock::DirLock;

/// Slots tried before giving up (workers sharing one state directory).
const SLOTS: usize = 64;

/// A claimed worker identity; the slot stays claimed while this lives.
#[derive(Debug)]
pub struct WorkerIdentity {
    id: String,
    _lock: DirLock,
}

impl WorkerIdentity {
    /// The id: hexadecimal, stable across restarts on the same state directory.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Claims the first free slot under `app_dir` (`<state.dir>/<app.id>`), creating the
/// directory and the slot's id as needed.
pub fn claim(app_dir: &Path) -> io::Result<WorkerIdentity> {
    std::fs::create_dir_all(app_dir)?;
    for slot in 0..SLOTS {
        let base = app_dir.join(format!("worker-{slot}"));
        let Some(lock) = DirLock::try_acquire(&base)? else {
            continue;
        };
        let id = read_or_create_id(&base.with_extension("id"))?;
        return Ok(WorkerIdentity { id, _lock: lock });
    }
    Err(io::Error::other(format!(
        "all {SLOTS} worker slots of {} are taken by running workers",
        app_dir.display()
    )))
}

/// The id stored at `path`, or a new random one written there (atomically: a crash leaves
/// either no file or the whole id).
fn read_or_create_id(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(id) if is_id(id.trim()) => return Ok(id.trim().to_string()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "worker id file is unreadable; writing a new id");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let tmp = path.with_extension("id.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, path)?;
    Ok(id)
}

fn is_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_gets_the_same_id_and_a_second_worker_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path()).unwrap();
        let second = claim(dir.path()).unwrap();
        assert_ne!(first.id(), second.id(), "live workers are told apart");
        let id = first.id().to_string();
        drop(first);
        let again = claim(dir.path()).unwrap();
        assert_eq!(again.id(), id, "a restart takes the free slot and its id");
        // A damaged id file gets a new id rather than failing the start.
        drop(again);
        std::fs::write(dir.path().join("worker-0.id"), "garbage").unwrap();
        let fresh = claim(dir.path()).unwrap();
        assert!(is_id(fresh.id()) && fresh.id() != id);
    }
}
