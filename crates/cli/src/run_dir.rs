//! The run directory: every path of a run, named once. `train` creates and fills it; `generate`, `export` and
//! `consolidate` read it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A run directory (`train --out RUN_DIR`).
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checkpoint tags and the `latest` pointer.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The tokenizer of the run's data, saved at the start.
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer")
    }

    /// One row per optimizer step.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// The train and validation loss curves.
    pub fn loss_chart(&self) -> PathBuf {
        self.root.join("loss.png")
    }

    /// The model, data, sequence length and seed the run was started with (read back by `--resume`).
    pub fn run_settings(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// The parsed DeepSpeed config the run was started with, as a record.
    pub fn ds_config(&self) -> PathBuf {
        self.root.join("ds_config.json")
    }

    /// The lock file that makes one process the run's only writer.
    fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Takes the run directory for this process (creating it if needed): an exclusive advisory lock
    /// (`flock`) on its lock file, held until the returned guard is dropped or the process ends (a dead
    /// holder's lock is released by the kernel, so a stale lock never blocks). A second writer gets an error
    /// naming the holder's PID. Readers (`generate`, `export`, `consolidate`) do not lock: a checkpoint tag
    /// appears whole by its rename.
    pub fn lock(&self) -> Result<RunLock, String> {
        let io = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", self.lock_file().display());
        std::fs::create_dir_all(&self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.lock_file())
            .map_err(|e| io("cannot open", e))?;
        if !try_lock_exclusive(&file).map_err(|e| io("cannot lock", e))? {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
            return Err(format!(
                "{} is in use by {who} (one writer per run directory); wait for it to finish or stop it",
                self.root.display()
            ));
        }
        file.set_len(0).map_err(|e| io("cannot write", e))?;
        file.rewind().map_err(|e| io("cannot write", e))?;
        write!(file, "{}", std::process::id()).map_err(|e| io("cannot write", e))?;
        Ok(RunLock { _file: file })
    }

    /// Whether a run has already written here (a checkpoint or metrics).
    /// Whether a checkpoint was committed (`latest` exists; a save interrupted before that leaves none).
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoints().join(rustspeed_engine::checkpoint::LATEST).exists()
    }

    pub fn holds_a_run(&self) -> bool {
        self.checkpoints().exists() || self.metrics().exists()
    }
}

/// The run directory's lock, held while this lives.
pub struct RunLock {
    _file: File,
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another open file description holds it.
#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: the descriptor belongs to `file`, which outlives the call; flock only reads it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        e => Err(e),
    }
}

/// Without `flock` the run directory is not locked (every process may write).
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}
