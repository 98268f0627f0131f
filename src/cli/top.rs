//! `tributary top`: a live terminal view of a whole group, from any worker's HTTP address.
//!
//! A thread reads `/cluster` (and every worker's `/metrics`) once per interval and hands each
//! read to the terminal loop, which turns it into a [`model::Screen`] (records/s from the
//! change of the tasks' positions since the last read) and draws it with [`view::draw`]. The
//! terminal loop only waits for keys and reads, so `q` answers at once even while a worker is
//! slow to answer. Workers without `/cluster` (older versions) are shown alone, from their own
//! `/tasks` and `/metrics`, and the screen says so.

mod fetch;
pub(super) mod model; // `sum_metric` serves the demo too
mod view;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use fetch::Fetcher;
use model::{Read, Screen, Tracker};

/// What `tributary top` watches, and how often.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// A worker's HTTP address (`host:port`, or a URL).
    pub http: String,
    /// Time between refreshes.
    pub interval: Duration,
}

/// How long one request may take: a worker that has not answered by then is shown as
/// unreachable (at least a second, so a busy worker on a short interval is not).
fn request_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// Whether a key quits: `q`, Esc, or Ctrl-C (which, in raw mode, arrives as a key).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
            || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL)))
}

/// Runs the view until a quitting key; restores the terminal however it ends.
pub fn run(opts: TopOptions) -> anyhow::Result<()> {
    let (reads, received) = mpsc::channel::<Read>();
    let (stop, stopped) = mpsc::channel::<()>();
    let fetcher = Fetcher::new(request_timeout(opts.interval));
    let (address, interval) = (opts.http.clone(), opts.interval);
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || loop {
            let started = Instant::now();
            if reads.send(fetcher.read(&address)).is_err() {
                return;
            }
            match stopped.recv_timeout(interval.saturating_sub(started.elapsed())) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })
        .context("starting the fetch thread")?;

    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = show(&mut terminal, &received, &opts);
    let restored = ratatui::try_restore().context("restoring the terminal");
    drop(stop);
    result.and(restored)
}

/// The terminal loop: draws each new read, quits on `q`, Esc or Ctrl-C.
fn show(
    terminal: &mut DefaultTerminal,
    received: &mpsc::Receiver<Read>,
    opts: &TopOptions,
) -> anyhow::Result<()> {
    let mut tracker = Tracker::default();
    let mut screen = Screen {
        address: opts.http.clone(),
        group: None,
        source: None,
        error: None,
        workers: Vec::new(),
        tasks: Vec::new(),
    };
    let mut dirty = true;
    loop {
        while let Ok(read) = received.try_recv() {
            screen = tracker.update(&read);
            dirty = true;
        }
        if dirty {
            terminal
                .draw(|frame| view::draw(frame, &screen, opts.interval))
                .context("drawing")?;
            dirty = false;
        }
        // Short enough that a new read shows promptly, long enough to cost nothing.
        if event::poll(Duration::from_millis(50)).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_escape_and_ctrl_c_quit_and_other_keys_do_not() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }

    #[test]
    fn requests_time_out_within_one_to_five_seconds() {
        assert_eq!(
            request_timeout(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
