//! What the client commands print, made safe for pipes: `storefs prefetch … | head` must end
//! quietly, not panic as `println!` does when the reader has gone (`EPIPE`).
//!
//! [`Output::out`] writes to stdout; once the reader has closed the pipe, further output is
//! dropped and [`Output::closed`] says so, so a command can finish its work (or stop, like
//! `stats --watch`) and exit with its documented code. Any other stdout error (a full disk) is
//! returned, for the command to report. [`Output::note`] writes to stderr and never fails: when
//! stderr itself is gone there is nowhere left to complain.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// stdout and stderr of a client command.
#[derive(Debug, Default)]
pub struct Output {
    closed: bool,
}

impl Output {
    /// Fresh output: nothing closed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `args` to stdout (and flushes, so a pipe sees each line at once). A closed pipe is
    /// not an error: it marks the output closed and drops this and every later write.
    pub fn out(&mut self, args: Arguments<'_>) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
            Err(err) if err.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }

    /// True once the reader of stdout has gone.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Writes `args` to stderr, ignoring any failure.
    pub fn note(&self, args: Arguments<'_>) {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_fmt(args).and_then(|()| stderr.flush());
    }
}
