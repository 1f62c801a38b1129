//! The run directory: every path of a run, named once. `train` creates and fills it; `generate`, `export` and
//! `consolidate` read it.

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

    /// Whether a run has already written here (a checkpoint or metrics).
    pub fn holds_a_run(&self) -> bool {
        self.checkpoints().exists() || self.metrics().exists()
    }
}
