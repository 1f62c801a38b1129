//! The progress line: step, loss, lr, tokens/s, ETA. Redrawn in place on a terminal, one line per report
//! otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    total: u64,
    first: u64,
    start: Instant,
    tty: bool,
    every: u64,
}

/// Width of the bar in characters.
const BAR: usize = 24;

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// A bar for steps `first+1 ..= total`; off a terminal, a line every `every` steps.
    pub fn new(first: u64, total: u64, every: u64) -> Progress {
        Progress { total, first, start: Instant::now(), tty: std::io::stderr().is_terminal(), every: every.max(1) }
    }

    pub fn update(&self, step: u64, loss: f32, lr: f64, tokens_per_s: f64, note: &str) {
        let done = step.saturating_sub(self.first);
        let left = self.total.saturating_sub(step);
        let eta = if done > 0 { self.start.elapsed().mul_f64(left as f64 / done as f64) } else { Duration::ZERO };
        let filled = if self.total > 0 { (step as usize * BAR) / self.total as usize } else { BAR };
        let bar: String = (0..BAR).map(|i| if i < filled { '#' } else { '-' }).collect();
        let line = format!(
            "step {step:>6}/{} [{bar}] loss {loss:.4} lr {lr:.2e} {tokens_per_s:>8.0} tok/s ETA {}{note}",
            self.total,
            format_duration(eta)
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if step == self.total || !note.is_empty() {
                let _ = writeln!(err);
            }
        } else if step.is_multiple_of(self.every) || step == self.total || !note.is_empty() {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}
