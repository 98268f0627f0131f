//! The `tributary` binary in a pseudo-terminal, for interactive commands (`tributary top`):
//! what it draws goes through a terminal emulator (`vt100`), so a test reads the screen as a
//! person would see it, and types keys into it.

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};

use crate::worker::tributary_bin;

/// `tributary <args>` running in a pseudo-terminal of a fixed size. Dropping it kills the
/// process if it is still running.
pub struct TerminalProcess {
    child: Box<dyn Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    screen: Arc<Mutex<vt100::Parser>>,
    // Kept open for as long as the process runs: closing the master hangs its terminal up.
    _master: Box<dyn MasterPty + Send>,
}

impl TerminalProcess {
    /// Starts `tributary <args>` in a `rows` x `cols` terminal (`TERM=xterm-256color`).
    pub fn spawn(args: &[&str], rows: u16, cols: u16) -> Result<TerminalProcess> {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .context("opening a pseudo-terminal")?;
        let mut cmd = CommandBuilder::new(tributary_bin());
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        cmd.env("RUST_LOG", "warn");
        let child = pair
            .slave
            .spawn_command(cmd)
            .context("starting tributary in the pseudo-terminal")?;
        // The child has its own handle on the terminal; ours would keep it open after it exits.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().context("pty reader")?;
        let writer = pair.master.take_writer().context("pty writer")?;
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            NonZeroU16::new(rows).context("rows > 0")?,
            NonZeroU16::new(cols).context("cols > 0")?,
            0,
        )));
        let parser = Arc::clone(&screen);
        // Reads everything the program writes (it would block on a full terminal otherwise),
        // until the terminal closes.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                parser
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .process(&buf[..n]);
            }
        });
        Ok(TerminalProcess {
            child,
            writer,
            screen,
            _master: pair.master,
        })
    }

    /// The screen's text now, one line per row (trailing blanks trimmed).
    pub fn screen(&self) -> String {
        self.screen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .screen()
            .contents()
    }

    /// Whether the program has the terminal's alternate screen up (full-screen programs
    /// switch to it and back).
    pub fn alternate_screen(&self) -> bool {
        self.screen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .screen()
            .alternate_screen()
    }

    /// Types `keys`.
    pub fn send(&mut self, keys: &[u8]) -> Result<()> {
        self.writer.write_all(keys)?;
        self.writer.flush()?;
        Ok(())
    }

    /// The exit code if the process has exited.
    pub fn exit_code(&mut self) -> Option<u32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| status.exit_code())
    }

    /// Waits up to `timeout` for the process to exit; its exit code, or `None` if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<u32> {
        let mut code = None;
        crate::wait_until(timeout, Duration::from_millis(50), || {
            code = self.exit_code();
            code.is_some()
        });
        code
    }
}

impl Drop for TerminalProcess {
    fn drop(&mut self) {
        if self.exit_code().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
