//! A one-line progress bar redrawn in place on stderr (plain lines when stderr is not a
//! terminal, so logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress of a run of `total` steps.
pub struct Progress {
    total: usize,
    start: Instant,
    tty: bool,
    every: usize,
}

impl Progress {
    /// A bar for `total` steps; without a terminal a line is printed every `every` steps.
    pub fn new(total: usize, every: usize) -> Self {
        Progress { total, start: Instant::now(), tty: std::io::stderr().is_terminal(), every: every.max(1) }
    }

    /// Redraw for `step` (0-based, just finished) with extra text such as loss and tokens/s.
    pub fn update(&self, step: usize, text: &str) {
        let done = step + 1;
        let frac = done as f64 / self.total.max(1) as f64;
        let width = 28;
        let filled = ((frac * width as f64).round() as usize).min(width);
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { elapsed / done as f64 * (self.total - done.min(self.total)) as f64 } else { 0.0 };
        let line = format!(
            "[{}{}] {done}/{} {text} | {elapsed:.0}s elapsed, eta {eta:.0}s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if done == self.total {
                let _ = writeln!(err);
            }
        } else if done.is_multiple_of(self.every) || done == self.total || step == 0 {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Seconds since the bar was created.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
