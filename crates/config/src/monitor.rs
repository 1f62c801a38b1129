//! `tensorboard` and `csv_monitor` (semantics §1.10): the two monitors that write local files. Both blocks have
//! DeepSpeed's three keys; the training loop logs `Train/Samples/*` scalars to them on rank 0 against the global
//! sample count. (`wandb` and `comet` need a network service and stay refused in `unimplemented.rs`.)

use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::reader::Block;

/// DeepSpeed's default `job_name`, the sub-directory the files go in.
const DEFAULT_JOB_NAME: &str = "DeepSpeedJobName";

/// One monitor block. A disabled block is stored as [`MonitorConfig::default`] whatever its other keys say (they
/// are still checked): nothing is written for it, and the config record (`to_json`) then omits it, so that records
/// of runs without monitors stay as they were before monitors existed.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// `enabled` (default false): write this monitor's files.
    pub enabled: bool,
    /// `output_path` (default "" = the run directory; DeepSpeed's "" is the current directory): the directory that
    /// holds the `job_name` directory. A relative path is relative to the current directory, as in DeepSpeed.
    pub output_path: String,
    /// `job_name` (default "DeepSpeedJobName"): the directory under `output_path` the files go in.
    pub job_name: String,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { enabled: false, output_path: String::new(), job_name: DEFAULT_JOB_NAME.to_string() }
    }
}

impl MonitorConfig {
    /// Reads one monitor block. Unknown keys are errors even when the block is off, as DeepSpeed's pydantic model
    /// (`extra="forbid"`) makes them; `"auto"` or `null` means the key's default.
    pub(crate) fn parse(block: Block<'_>) -> Result<Self, ConfigError> {
        let defaults = MonitorConfig::default();
        let config = MonitorConfig {
            enabled: block.bool_or("enabled", defaults.enabled)?,
            output_path: block.opt_string("output_path")?.map_or(defaults.output_path.clone(), str::to_string),
            job_name: block.opt_string("job_name")?.map_or(defaults.job_name.clone(), str::to_string),
        };
        block.finish()?;
        Ok(if config.enabled { config } else { defaults })
    }

    /// The block as the config record writes it: `None` when disabled (see [`MonitorConfig`]).
    pub(crate) fn to_json(&self) -> Option<Value> {
        self.enabled
            .then(|| json!({"enabled": self.enabled, "output_path": self.output_path, "job_name": self.job_name}))
    }
}
