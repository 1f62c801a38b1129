//! Progress of `prepare`'s long phases on stderr: one line per phase, its elapsed time ticking while it runs.

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a running phase's line is redrawn: often enough to show it is alive, rarely enough to cost nothing.
const TICK: Duration = Duration::from_secs(1);

/// Reports phases when enabled (a terminal is watching); does nothing otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    enabled: bool,
}

impl Progress {
    pub(crate) fn new(enabled: bool) -> Progress {
        Progress { enabled }
    }

    /// Runs `work`, showing `what` with the seconds spent so far, then how long it took.
    ///
    /// The library calls that take long (BPE training, encoding) offer no progress hook we can use, so a ticker
    /// thread redraws the line while `work` runs on this thread.
    pub(crate) fn phase<T>(&self, what: &str, work: impl FnOnce() -> T) -> T {
        if !self.enabled {
            return work();
        }
        let start = Instant::now();
        let (done, finished) = mpsc::channel::<()>();
        let result = std::thread::scope(|scope| {
            scope.spawn(move || {
                draw(&format!("{what} ..."));
                // A message or a closed channel both mean the work is over.
                while finished.recv_timeout(TICK) == Err(mpsc::RecvTimeoutError::Timeout) {
                    draw(&format!("{what} ... {}s", start.elapsed().as_secs()));
                }
            });
            let result = work();
            let _ = done.send(());
            result
        });
        draw(&format!("{what}: {:.1}s", start.elapsed().as_secs_f64()));
        eprintln!();
        result
    }
}

/// Redraws the current stderr line; a failing stderr only loses the progress display.
fn draw(line: &str) {
    let mut stderr = std::io::stderr().lock();
    // "\r" returns to the line start, "\x1b[K" clears what a longer previous draw left.
    let _ = write!(stderr, "\r{line}\x1b[K");
    let _ = stderr.flush();
}
