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

/// How often the streaming line is redrawn at most.
const STREAM_REDRAW: Duration = Duration::from_millis(250);

/// The progress line of a pass over the inputs: bytes read of the total on disk, documents, tokens, throughput
/// and time left, redrawn at most every [`STREAM_REDRAW`] from whichever thread has news.
pub(crate) struct StreamProgress {
    enabled: bool,
    what: String,
    total_bytes: u64,
    start: Instant,
    last_draw: std::sync::Mutex<Option<Instant>>,
}

impl StreamProgress {
    pub(crate) fn new(enabled: bool, what: &str, total_bytes: u64) -> StreamProgress {
        StreamProgress {
            enabled,
            what: what.to_string(),
            total_bytes,
            start: Instant::now(),
            last_draw: std::sync::Mutex::new(None),
        }
    }

    /// Redraws the line if it is due: `read` bytes of the files so far, `documents` and `tokens` done.
    pub(crate) fn update(&self, read: u64, documents: u64, tokens: Option<u64>) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let mut last = self.last_draw.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < STREAM_REDRAW) {
            return;
        }
        *last = Some(now);
        draw(&self.line(read, documents, tokens));
    }

    /// Draws the final state and ends the line.
    pub(crate) fn finish(&self, read: u64, documents: u64, tokens: Option<u64>) {
        if self.enabled {
            draw(&self.line(read, documents, tokens));
            eprintln!();
        }
    }

    fn line(&self, read: u64, documents: u64, tokens: Option<u64>) -> String {
        const MB: f64 = 1e6;
        let seconds = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = read as f64 / seconds;
        let percent = 100.0 * read as f64 / self.total_bytes.max(1) as f64;
        let left = if rate > 0.0 && read < self.total_bytes {
            format!(", {:.0}s left", (self.total_bytes - read) as f64 / rate)
        } else {
            String::new()
        };
        let tokens = tokens.map_or(String::new(), |t| format!(", {t} tokens"));
        format!(
            "{}: {:.1}/{:.1} MB ({percent:.0}%), {documents} documents{tokens}, {:.1} MB/s, {seconds:.0}s{left}",
            self.what,
            read as f64 / MB,
            self.total_bytes as f64 / MB,
            rate / MB
        )
    }
}
