//! A task's clocks: its stream time, the timers its processor scheduled, and the idle advance
//! of `processing.idle_advance_ms`. Plain bookkeeping, no I/O: the task feeds it the records'
//! times and the wall-clock time of each tick, and asks which timers are due.

use std::time::Duration;

use crate::processor::Punctuation;

/// One scheduled timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timer {
    /// Milliseconds between points (at least 1).
    interval: i64,
    /// The next point; `None` until the timer's clock is first known.
    next: Option<i64>,
}

impl Timer {
    fn new(interval: Duration) -> Option<Self> {
        let interval = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        (interval > 0).then_some(Self {
            interval,
            next: None,
        })
    }
}

/// The longest gap between two ticks that counts as idle time. A task is ticked every few tens
/// of milliseconds (more on a busy processing thread); a longer gap means the worker did not
/// run (SIGSTOP, a frozen VM: its fetcher stopped too, so records produced meanwhile are still
/// in Kafka) or the system clock stepped. Neither is quiet input: the quiet spell resumes
/// after the gap rather than counting it, so stream time does not jump by the stall.
pub(crate) const MAX_TICK_GAP_MS: i64 = 1_000;

/// Where idle time is counted from: the stream time and the wall-clock time of the tick that
/// last saw input (or of the task's first tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    stream: Option<i64>,
    wall: i64,
}

/// The clocks of one task.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskClock {
    stream_time: Option<i64>,
    /// `processing.idle_advance_ms` (0: off).
    idle_advance_ms: i64,
    anchor: Option<Anchor>,
    /// True when input arrived (or a processor moved stream time) since the last tick.
    moved: bool,
    stream_timer: Option<Timer>,
    wall_timer: Option<Timer>,
    /// The wall-clock time of the last tick.
    last_tick: Option<i64>,
}

impl TaskClock {
    /// A clock whose stream time advances with the wall clock after `idle_advance_ms` without
    /// input (0: never).
    #[cfg(test)]
    fn new(idle_advance_ms: u64) -> Self {
        let mut clock = Self::default();
        clock.set_idle_advance(idle_advance_ms);
        clock
    }

    /// Sets how long the task must go without input before its stream time moves with the
    /// wall clock (0: never).
    pub(crate) fn set_idle_advance(&mut self, idle_advance_ms: u64) {
        self.idle_advance_ms = i64::try_from(idle_advance_ms).unwrap_or(i64::MAX);
    }

    /// The task's stream time.
    pub(crate) fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// Moves stream time forward to `t` (input, or a processor saying so); it never goes back.
    pub(crate) fn observe(&mut self, t: i64) {
        self.moved = true;
        if self.stream_time.is_none_or(|s| t > s) {
            self.stream_time = Some(t);
        }
    }

    /// Notes that a record arrived (whether or not it had a time): the task is not idle.
    pub(crate) fn input(&mut self) {
        self.moved = true;
    }

    /// Sets (or, with a zero interval, cancels) the timer of `kind`.
    pub(crate) fn schedule(&mut self, kind: Punctuation, interval: Duration) {
        let timer = Timer::new(interval);
        match kind {
            Punctuation::StreamTime => self.stream_timer = timer,
            Punctuation::WallClock => self.wall_timer = timer,
        }
    }

    /// One tick of the wall clock at `now` (epoch ms): re-anchors the idle count if input
    /// arrived since the last tick, else advances stream time once the task has been idle for
    /// `idle_advance_ms` (to its value at the anchor plus the wall-clock time since, not
    /// counting gaps between ticks longer than [`MAX_TICK_GAP_MS`] or going back). True when
    /// stream time moved.
    pub(crate) fn tick(&mut self, now: i64) -> bool {
        let gap = self.last_tick.map_or(0, |last| now.saturating_sub(last));
        self.last_tick = Some(now);
        if !(0..=MAX_TICK_GAP_MS).contains(&gap) {
            // Not watched (a stall) or a clock step: the gap does not count as idle.
            if let Some(a) = self.anchor.as_mut() {
                a.wall = a.wall.saturating_add(gap);
            }
        }
        let anchor = match self.anchor {
            Some(a) if !self.moved => a,
            _ => {
                self.moved = false;
                self.anchor = Some(Anchor {
                    stream: self.stream_time,
                    wall: now,
                });
                return false;
            }
        };
        let idle = now.saturating_sub(anchor.wall);
        if self.idle_advance_ms == 0 || idle < self.idle_advance_ms {
            return false;
        }
        let Some(base) = anchor.stream else {
            return false;
        };
        let target = base.saturating_add(idle);
        if self.stream_time.is_some_and(|s| target > s) {
            self.stream_time = Some(target);
            return true;
        }
        false
    }

    /// The stream time to punctuate with, if the stream-time timer is due (and moves it on).
    pub(crate) fn stream_due(&mut self) -> Option<i64> {
        let now = self.stream_time?;
        let timer = self.stream_timer.as_mut()?;
        if timer.next.is_some_and(|next| now < next) {
            return None;
        }
        // The first multiple of the interval after `now`.
        timer.next = Some(
            now.saturating_sub(now.rem_euclid(timer.interval))
                .saturating_add(timer.interval),
        );
        Some(now)
    }

    /// True when the wall-clock timer is due at `now` (and moves it on); a timer's first
    /// point is one interval after the first tick that sees it.
    pub(crate) fn wall_due(&mut self, now: i64) -> bool {
        let Some(timer) = self.wall_timer.as_mut() else {
            return false;
        };
        match timer.next {
            None => {
                timer.next = Some(now.saturating_add(timer.interval));
                false
            }
            Some(next) if now < next => false,
            Some(next) => {
                // Points missed while the task was busy or held are skipped, not caught up.
                let missed = (now - next) / timer.interval;
                timer.next = Some(
                    next.saturating_add(missed.saturating_add(1).saturating_mul(timer.interval)),
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Idle advance: nothing until the task has been quiet for the threshold, then stream time
    /// is its value at the last input plus the wall time since; input re-anchors it, and
    /// stream time never goes back.
    #[test]
    fn idle_stream_time_follows_the_wall_clock_from_the_last_input() {
        let mut c = TaskClock::new(100);
        c.observe(5_000);
        assert!(!c.tick(1_000), "the first tick anchors");
        assert!(!c.tick(1_099));
        assert_eq!(c.stream_time(), Some(5_000));
        assert!(c.tick(1_100));
        assert_eq!(c.stream_time(), Some(5_100));
        assert!(c.tick(1_350));
        assert_eq!(c.stream_time(), Some(5_350));
        // A late record does not move it back, and the quiet spell starts again from it.
        c.observe(4_000);
        assert!(!c.tick(1_400));
        assert!(!c.tick(1_499));
        assert_eq!(c.stream_time(), Some(5_350));
        assert!(c.tick(1_500));
        assert_eq!(c.stream_time(), Some(5_450));
        // Input without a time also keeps a task from being idle.
        c.input();
        assert!(!c.tick(2_000));
        assert!(!c.tick(2_050));
        assert_eq!(c.stream_time(), Some(5_450));
    }

    /// A gap between ticks longer than MAX_TICK_GAP_MS (the worker stalled, the clock stepped
    /// forward) or going back (the clock stepped back) does not count as idle time.
    #[test]
    fn gaps_between_ticks_are_not_idle_time() {
        let mut c = TaskClock::new(100);
        c.observe(5_000);
        c.tick(1_000);
        assert!(!c.tick(1_050));
        assert!(!c.tick(601_050), "a 10-minute stall");
        assert_eq!(c.stream_time(), Some(5_000));
        assert!(
            c.tick(601_100),
            "quiet 50 ms before and 50 ms after the stall"
        );
        assert_eq!(c.stream_time(), Some(5_100));
        // The clock steps back an hour: idle time goes on from there.
        assert!(!c.tick(601_100 - 3_600_000));
        assert!(c.tick(601_150 - 3_600_000));
        assert_eq!(c.stream_time(), Some(5_150));
        // A tick gap of exactly the limit counts.
        assert!(c.tick(601_150 - 3_600_000 + MAX_TICK_GAP_MS));
        assert_eq!(c.stream_time(), Some(5_150 + MAX_TICK_GAP_MS));
    }

    #[test]
    fn no_idle_advance_when_off_or_before_any_time() {
        let mut off = TaskClock::new(0);
        off.observe(10);
        off.tick(0);
        assert!(!off.tick(1_000_000));
        assert_eq!(off.stream_time(), Some(10));
        let mut unknown = TaskClock::new(100);
        unknown.tick(0);
        assert!(!unknown.tick(1_000));
        assert_eq!(unknown.stream_time(), None);
    }

    /// Stream-time timers fire when stream time is first known and then at each multiple of
    /// the interval it reaches, once however many it passed.
    #[test]
    fn stream_time_timers_fire_at_multiples_of_their_interval() {
        let mut c = TaskClock::new(0);
        c.schedule(Punctuation::StreamTime, MS(10));
        assert_eq!(c.stream_due(), None, "no stream time yet");
        c.observe(3);
        assert_eq!(c.stream_due(), Some(3));
        assert_eq!(c.stream_due(), None);
        c.observe(9);
        assert_eq!(c.stream_due(), None);
        c.observe(35);
        assert_eq!(c.stream_due(), Some(35));
        c.observe(39);
        assert_eq!(c.stream_due(), None);
        c.observe(40);
        assert_eq!(c.stream_due(), Some(40));
        c.schedule(Punctuation::StreamTime, Duration::ZERO);
        c.observe(100);
        assert_eq!(c.stream_due(), None, "cancelled");
    }

    #[test]
    fn wall_clock_timers_fire_every_interval_skipping_missed_points() {
        let mut c = TaskClock::new(0);
        assert!(!c.wall_due(0), "none scheduled");
        c.schedule(Punctuation::WallClock, MS(100));
        assert!(!c.wall_due(1_000), "first seen: due at 1100");
        assert!(!c.wall_due(1_099));
        assert!(c.wall_due(1_100));
        assert!(!c.wall_due(1_150));
        assert!(c.wall_due(1_450), "three points missed, fired once");
        assert!(!c.wall_due(1_499));
        assert!(c.wall_due(1_500));
    }
}
