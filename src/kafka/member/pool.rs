//! The processing threads (`processing.threads`), shared by every member of a worker.
//!
//! A running task is a [`TaskCell`]: the task and the librdkafka queues of its source
//! partitions behind one mutex. Each cell belongs to one thread (a [`Lane`]), which takes
//! records straight from the cell's partition queues and processes them, a slice at a time,
//! holding only that cell's lock. The member thread never sees a record: it polls its consumer
//! for rebalance events, restores, and commits, locking a cell only to flush it, write its
//! checkpoint, or close it. A partition whose task does not take its records just fills its
//! queue, and librdkafka stops fetching it (`processing.max_buffered_records`).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::Message;

use super::MemberContext;
use crate::kafka::collector::Collector;
use crate::kafka::MessageHeaders;
use crate::task::{ErrorPolicy, Task, TaskError, TaskState};
use crate::types::{Headers, Record, TaskId};

/// Records a lane takes from one cell before it moves on to the next, so that one busy
/// partition does not hold the others (or a commit waiting for the cell's lock) for long.
const SLICE_RECORDS: usize = 500;
/// Longest time a slice may take. The clock is read after 1, 2, 4, ... 64 records and then
/// every 64: a cheap record does not pay for it, and a slow processor is caught early.
const SLICE_TIME: Duration = Duration::from_millis(10);
/// How long an idle lane sleeps when no queue wakes it (a safety net: librdkafka signals every
/// queue that stops being empty).
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A partition's queue of fetched records, split off the member's consumer.
pub(super) type SourceQueue = PartitionQueue<MemberContext>;

/// Wakes idle lanes. A counter, not a flag: a lane remembers the count it saw before looking at
/// its queues, and sleeps only if nothing happened since. A notification takes the lock and
/// wakes the condition variable only when some lane sleeps: librdkafka notifies once per fetch
/// and partition, mostly while the lanes are busy.
#[derive(Debug, Default)]
pub(super) struct Signal {
    count: AtomicU64,
    /// Lanes in (or about to enter) [`Signal::wait`].
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiting lane.
    pub(super) fn notify(&self) {
        // SeqCst on both sides: either the sleeper sees the new count before it sleeps, or
        // this sees the sleeper and wakes it under the lock the sleeper holds until it waits.
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock();
            self.changed.notify_all();
        }
    }

    fn ticket(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Sleeps until something happened since `ticket`, or `timeout`.
    fn wait(&self, ticket: u64, timeout: Duration) {
        let guard = self.lock();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let _ = self.changed.wait_timeout_while(guard, timeout, |_| {
            self.count.load(Ordering::SeqCst) == ticket
        });
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a cell's lock protects.
pub(super) struct CellState {
    /// The task; taken out when the member closes it (a lane may still hold the cell for a
    /// moment, but not the task's store).
    pub task: Option<Task>,
    /// Queues of the task's source partitions assigned to the member.
    pub queues: Vec<Arc<SourceQueue>>,
    /// True while the lane may process the task: it runs, and the member has not held it
    /// (for a revoke, an abort, a failure) or closed it.
    pub active: bool,
}

impl CellState {
    /// The task, if it is open and running.
    pub fn running(&mut self) -> Option<&mut Task> {
        self.task
            .as_mut()
            .filter(|t| t.state() == TaskState::Running)
    }
}

/// A task that processing threads may run.
pub(super) struct TaskCell {
    /// The task's id.
    pub id: TaskId,
    state: Mutex<CellState>,
    /// Set by the lane when the task's cache asks for a commit, so that the member need not
    /// lock the cell to know.
    wants_commit: AtomicBool,
    collector: Arc<Collector>,
    policy: Arc<ErrorPolicy>,
    /// Where a failure of the task is reported to its member.
    failures: Sender<(TaskId, TaskError)>,
}

impl TaskCell {
    pub(super) fn new(
        task: Task,
        collector: Arc<Collector>,
        policy: Arc<ErrorPolicy>,
        failures: Sender<(TaskId, TaskError)>,
    ) -> Self {
        Self {
            id: task.id(),
            state: Mutex::new(CellState {
                task: Some(task),
                queues: Vec::new(),
                active: false,
            }),
            wants_commit: AtomicBool::new(false),
            collector,
            policy,
            failures,
        }
    }

    /// True when the task's cache asked for a commit at the end of its last slice.
    pub(super) fn wants_commit(&self) -> bool {
        self.wants_commit.load(Ordering::Relaxed)
    }

    /// Locks the cell: its lane waits until the guard is dropped.
    pub(super) fn lock(&self) -> MutexGuard<'_, CellState> {
        // A panic under this lock is a bug; the lane is gone, and the member with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A processor panicked while the cell's slice ran: the task stops, and its member with it
    /// (nothing after its last commit is committed). The lane goes on with its other cells.
    fn panicked(&self, panic: &(dyn Any + Send)) {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        self.lock().active = false;
        let error = TaskError::Fatal {
            task: self.id,
            reason: format!("its processor panicked: {reason}"),
        };
        let _ = self.failures.send((self.id, error));
    }

    /// Processes a slice of the queued records; true if it took any.
    fn process_slice(&self) -> bool {
        let mut guard = self.lock();
        let CellState {
            task,
            queues,
            active,
        } = &mut *guard;
        let Some(task) = task.as_mut().filter(|t| t.state() == TaskState::Running) else {
            return false;
        };
        if !*active {
            return false;
        }
        let started = Instant::now();
        let mut taken = 0;
        let mut next_check = 1;
        'slice: for queue in queues.iter() {
            while taken < SLICE_RECORDS {
                if taken == next_check {
                    next_check += next_check.min(64);
                    if started.elapsed() >= SLICE_TIME {
                        break 'slice;
                    }
                }
                let message = match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(task = %self.id, error = %e, "consumer error");
                        break;
                    }
                };
                taken += 1;
                if !task.take(message.topic(), message.offset()) {
                    tracing::trace!(task = %self.id, offset = message.offset(), "dropping a record delivered again");
                    continue;
                }
                let headers = message.headers().map(MessageHeaders);
                let record = Record {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp: message.timestamp().to_millis(),
                    key: message.key(),
                    value: message.payload(),
                    headers: headers
                        .as_ref()
                        .map_or(Headers::none(), |h| Headers::from_list(h)),
                };
                let sink = self.collector.tagged(task.generation());
                if let Err(e) = task.process(&record, &sink, &self.policy) {
                    // Nothing more until the member has dealt with it.
                    *active = false;
                    let _ = self.failures.send((self.id, e));
                    return true;
                }
            }
        }
        // Timers and idle advance come after the queues: a task with records waiting is not
        // idle. On this thread and under the cell's lock, like the task's records.
        let sink = self.collector.tagged(task.generation());
        if let Err(e) = task.tick(crate::state::now_ms(), &sink, &self.policy) {
            *active = false;
            let _ = self.failures.send((self.id, e));
            return true;
        }
        self.wants_commit
            .store(task.wants_commit(), Ordering::Relaxed);
        taken > 0
    }
}

/// One processing thread's share of the cells.
#[derive(Default)]
struct Lane {
    cells: Mutex<Vec<Arc<TaskCell>>>,
    /// Bumped when `cells` changes, so the thread copies the list only then.
    version: AtomicU64,
}

impl Lane {
    fn cells(&self) -> MutexGuard<'_, Vec<Arc<TaskCell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, signal: &Signal, stop: &AtomicBool) {
        let mut cells: Vec<Arc<TaskCell>> = Vec::new();
        let mut seen = u64::MAX;
        while !stop.load(Ordering::Acquire) {
            let ticket = signal.ticket();
            let version = self.version.load(Ordering::Acquire);
            if version != seen {
                cells = self.cells().clone();
                seen = version;
            }
            let mut worked = false;
            for cell in &cells {
                match std::panic::catch_unwind(AssertUnwindSafe(|| cell.process_slice())) {
                    Ok(took) => worked |= took,
                    Err(panic) => cell.panicked(&*panic),
                }
            }
            if !worked {
                signal.wait(ticket, IDLE_WAIT);
            }
        }
    }
}

/// The processing threads of a worker.
pub struct Pool {
    lanes: Vec<Arc<Lane>>,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.lanes.len())
            .finish()
    }
}

impl Pool {
    /// Starts `threads` processing threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Arc<Pool>> {
        let lanes: Vec<Arc<Lane>> = (0..threads.max(1)).map(|_| Arc::default()).collect();
        let signal = Arc::new(Signal::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (i, lane) in lanes.iter().enumerate() {
            let (lane, lane_signal, lane_stop) = (lane.clone(), signal.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("processing-{i}"))
                .spawn(move || lane.run(&lane_signal, &lane_stop));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    signal.notify();
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(Pool {
            lanes,
            signal,
            stop,
            threads: Mutex::new(handles),
        }))
    }

    /// What wakes idle lanes (librdkafka calls it when a partition queue stops being empty).
    pub(super) fn signal(&self) -> Arc<Signal> {
        self.signal.clone()
    }

    /// Hands a cell to the lane with the fewest.
    pub(super) fn add(&self, cell: Arc<TaskCell>) {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.cells().len())
            .expect("invariant: a pool has a lane");
        lane.cells().push(cell);
        lane.version.fetch_add(1, Ordering::AcqRel);
        self.signal.notify();
    }

    /// Takes a cell back from its lane. The lane may still hold it for the slice at hand: lock
    /// the cell (and clear `active`) to be sure it is done with it.
    pub(super) fn remove(&self, cell: &Arc<TaskCell>) {
        for lane in &self.lanes {
            let mut cells = lane.cells();
            let before = cells.len();
            cells.retain(|c| !Arc::ptr_eq(c, cell));
            if cells.len() != before {
                lane.version.fetch_add(1, Ordering::AcqRel);
            }
        }
        // The lane lets go of its copy on its next turn.
        self.signal.notify();
    }

    /// Wakes the lanes: a cell became active.
    pub(super) fn wake(&self) {
        self.signal.notify();
    }

    /// Stops the threads once the members are done with them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.signal.notify();
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No wakeup is lost: lanes that sleep with an hour's timeout whenever they have seen every
    /// notification still see all of them. A lost wakeup would leave a lane asleep and the test
    /// hanging (there is no timeout to tune).
    #[test]
    fn a_notification_always_wakes_a_lane_that_has_not_seen_it() {
        const NOTIFICATIONS: u64 = 20_000;
        let signal = Arc::new(Signal::default());
        let lanes: Vec<_> = (0..3)
            .map(|_| {
                let signal = Arc::clone(&signal);
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while seen < NOTIFICATIONS {
                        let ticket = signal.ticket();
                        if ticket == seen {
                            signal.wait(ticket, Duration::from_secs(3600));
                        }
                        seen = signal.ticket().max(seen);
                    }
                })
            })
            .collect();
        for i in 0..NOTIFICATIONS {
            signal.notify();
            if i % 64 == 0 {
                std::thread::yield_now();
            }
        }
        for lane in lanes {
            lane.join().expect("a lane panicked");
        }
    }
}
