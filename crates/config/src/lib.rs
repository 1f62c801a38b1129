//! rustspeed-config: parses and validates a DeepSpeed JSON config with DeepSpeed 0.16.5's keys, code defaults and
//! error texts (where DeepSpeed's docs and code differ, the code's value is used). It only parses and validates;
//! the engine decides what it can run (for example fp16 or a ZeRO stage) and rejects the rest itself.
//!
//! ```
//! use rustspeed_config::DeepSpeedConfig;
//! let config = DeepSpeedConfig::from_json_str(r#"{"train_micro_batch_size_per_gpu": 8,
//!     "optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}"#).unwrap();
//! assert_eq!(config.batch_sizes(2).unwrap().train_batch_size, 16);
//! ```
//!
//! # Rules that differ from DeepSpeed
//! * **Unknown keys are errors at every level**, naming the full key path and the closest known key. DeepSpeed
//!   ignores unknown top-level keys; rustspeed refuses them, because a misspelt key silently falls back to a
//!   default. A known key in the wrong place (`"loss_scale"` at the top level) says which block it belongs in.
//! * DeepSpeed blocks rustspeed does not implement are accepted only when they ask for nothing: `amp`,
//!   `autotuning`, `comet`, `comms_logger`, `curriculum_learning`, `data_efficiency`, `eigenvalue`,
//!   `elasticity`, `flops_profiler`, `hybrid_engine`, `nebula`, `progressive_layer_drop`, `torch_autocast`,
//!   `wandb` with `enabled` false or absent; `checkpoint`, `aio`, `pipeline` with every key at DeepSpeed's
//!   default. Otherwise: "not supported by rustspeed" (`wandb` and `comet` need a network service; the local
//!   monitors `csv_monitor` and `tensorboard` are implemented).
//! * `tensorboard` and `csv_monitor` with `output_path` "" write into the run directory (DeepSpeed: the current
//!   directory); the training loop also logs the validation loss, as `Train/Samples/val_loss`. Their unknown keys
//!   are errors even when disabled, as in DeepSpeed (pydantic `extra="forbid"`).
//! * `activation_checkpointing` turns activation checkpointing on by its presence (DeepSpeed leaves that to the
//!   model's code; rustspeed owns its models); its keys that need model parallelism or a profiler are refused.
//! * Integer keys accept whole numbers in any JSON spelling (`8`, `8.0`, `5e8`, as DeepSpeed's own docs write bucket
//!   sizes); fractions are refused.
//! * `"auto"` (Hugging Face Transformers' placeholder) means "the default" inside blocks, as in DeepSpeed's
//!   pydantic blocks; at the top level it is an error (Transformers fills those in before DeepSpeed sees them).
//!   `null` is the same as leaving the key out.
//! * Strict JSON: no comments (DeepSpeed reads files with hjson). Duplicate keys are errors, as in DeepSpeed.
//! * Deprecated ZeRO keys (`cpu_offload`, `cpu_offload_param`, `cpu_offload_use_pin_memory`) are refused with
//!   the new spelling; type "AdamW" with `adam_w_mode: false` is refused (DeepSpeed silently ignores the flag);
//!   an unknown `warmup_type` is refused (DeepSpeed warns and uses "log"); per-parameter-group lr lists are
//!   refused; `WarmupCosineLR` needs `total_num_steps > warmup_num_steps` (DeepSpeed divides by the difference).
//! * Lamb is refused with a static fp16 loss scale (DeepSpeed's check also refuses Lamb with bf16, whose loss
//!   scale it sets to 1; rustspeed does not).
//!
//! # Keys (default in parentheses; "req." = required)
//! | top level | |
//! |---|---|
//! | `train_batch_size`, `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps` | int ≥ 0 (none; inferred, see [`DeepSpeedConfig::batch_sizes`]) |
//! | `steps_per_print` | int ≥ 1 (none = never) |
//! | `gradient_clipping` | number ≥ 0 (0.0 = off) |
//! | `wall_clock_breakdown`, `memory_breakdown`, `dump_state`, `prescale_gradients`, `sparse_gradients` | bool (false) |
//! | `zero_allow_untested_optimizer`, `dataloader_drop_last`, `graph_harvesting` | bool (false) |
//! | `zero_force_ds_cpu_optimizer` | bool (true) |
//! | `gradient_predivide_factor` | number > 0 (1.0) |
//! | `communication_data_type` | "fp16" \| "bf16" \| "fp32", any case (none = the model's precision) |
//! | `seq_parallel_comm_data_type` | same names ("fp32") |
//! | `vocabulary_size` | int ≥ 1 (none) |
//! | `data_types.grad_accum_dtype` | "fp16" \| "bf16" \| "fp32" (none) |
//! | `zero_optimization` | object, or legacy `true` / `false` = stage 1 / 0 (with top-level `allgather_size`) |
//!
//! | `optimizer`: `{"type", "params", "legacy_fusion" (false only)}` | `params` |
//! |---|---|
//! | "Adam", "AdamW" (any case) | `lr` (1e-3), `betas` ([0.9, 0.999]), `eps` (1e-8), `weight_decay` (0.0), `bias_correction` (true), `adam_w_mode` (true: decoupled decay, so "Adam" is AdamW; always true for "AdamW"), `torch_adam` (false), `amsgrad` (false only) |
//! | "Lamb" (any case) | `lr` (1e-3), `betas` ([0.9, 0.999]), `eps` (1e-8), `weight_decay` (0.0), `bias_correction` (true), `max_coeff` (10.0), `min_coeff` (0.01), `eps_inside_sqrt` (false) |
//! | "Lion" (any case) | `lr` (1e-3), `betas` ([0.9, 0.999]), `weight_decay` (0.0) |
//! | "SGD" (exact case) | `lr` (1e-3), `momentum` (0.0), `dampening` (0.0), `weight_decay` (0.0), `nesterov` (false; needs momentum > 0, dampening 0) |
//!
//! `max_grad_norm` in `params` is DeepSpeed's error pointing to `gradient_clipping`. No `scheduler` block means a
//! constant learning rate.
//!
//! | `scheduler`: `{"type", "params"}` (type exact case) | `params` |
//! |---|---|
//! | "WarmupLR" | `warmup_min_lr` (0.0), `warmup_max_lr` (0.001), `warmup_num_steps` (1000; stored as max(2, n) like DeepSpeed), `warmup_type` ("log" \| "linear") |
//! | "WarmupDecayLR" | `total_num_steps` (req., ≥ 1) + WarmupLR's |
//! | "WarmupCosineLR" | `total_num_steps` (req.), `warmup_min_ratio` (0.0), `warmup_num_steps` (1000; max(2, n)), `cos_min_ratio` (0.0001), `warmup_type` ("log") |
//! | "OneCycle" | `cycle_min_lr` (req.), `cycle_max_lr` (req.), `decay_lr_rate` (0.0), `cycle_first_step_size` (2000), `cycle_second_step_size` (= first), `cycle_first_stair_count` (0), `cycle_second_stair_count` (none), `decay_step_size` (0), `cycle_momentum` (true), `cycle_min_mom` (0.8), `cycle_max_mom` (0.9), `decay_mom_rate` (0.0) |
//! | "LRRangeTest" | `lr_range_test_min_lr` (1e-3), `lr_range_test_step_size` (2000), `lr_range_test_step_rate` (1.0), `lr_range_test_staircase` (false) |
//!
//! | `fp16` (must be an object: `"fp16": {"enabled": true}`) | |
//! |---|---|
//! | `enabled`, `auto_cast`, `consecutive_hysteresis`, `fp16_master_weights_and_grads` | bool (false) |
//! | `loss_scale` | number ≥ 0 (0.0 = dynamic) |
//! | `initial_scale_power` | int 0..=127 (16) |
//! | `loss_scale_window` | int ≥ 1 (1000) |
//! | `hysteresis` | int ≥ 1 (2) |
//! | `min_loss_scale` | number > 0 (1.0) |
//!
//! `bf16` (legacy name `bfloat16`; an object): `enabled` (false), `immediate_grad_update` (false). fp16 and bf16
//! both enabled is DeepSpeed's error.
//!
//! `tensorboard`, `csv_monitor` (each an object): `enabled` (false), `output_path` ("" = the run directory),
//! `job_name` ("DeepSpeedJobName"). Files go in `output_path/job_name/`: TensorBoard's
//! `events.out.tfevents.*`, or one `Train_Samples_<name>.csv` per scalar with header `step,<name>`. Scalars
//! (x-axis: global samples): `Train/Samples/train_loss`, `Train/Samples/lr`, `Train/Samples/loss_scale` (fp16),
//! `Train/Samples/val_loss` (where validation ran; a rustspeed addition).
//!
//! | `zero_optimization` (sizes in elements) | |
//! |---|---|
//! | `stage` | 0..=3 (0) |
//! | `contiguous_gradients`, `reduce_scatter`, `use_multi_rank_bucket_allreduce`, `allgather_partitions`, `load_from_fp32_weights`, `ignore_unused_parameters`, `memory_efficient_linear`, `override_module_apply` | bool (true) |
//! | `elastic_checkpoint`, `round_robin_gradients`, `zero_quantized_weights`, `zero_quantized_nontrainable_weights`, `zero_quantized_gradients`, `mics_hierarchical_params_gather`, `pipeline_loading_checkpoint`, `log_trace_cache_warnings`, `legacy_stage1` (false only) | bool (false) |
//! | `reduce_bucket_size`, `allgather_bucket_size` (multiple of 2 for stages 1–2) | int (500000000) |
//! | `overlap_comm` | bool (none = true for stage 3, else false) |
//! | `sub_group_size` | int ≥ 1 (1000000000) |
//! | `stage3_prefetch_bucket_size` | int (50000000) |
//! | `stage3_param_persistence_threshold` | int (100000) |
//! | `stage3_model_persistence_threshold` | int (9223372036854775807) |
//! | `stage3_max_live_parameters`, `stage3_max_reuse_distance` | int (1000000000) |
//! | `stage3_module_granularity_threshold` | int (0) |
//! | `stage3_gather_16bit_weights_on_model_save`, `stage3_use_all_reduce_for_fetch_params` | bool (false) |
//! | `zero_hpz_partition_size` | int ≥ 1 (1) |
//! | `mics_shard_size` | int ≥ -1 (-1) |
//! | `offload_optimizer` | `device` ("none" \| "cpu" \| "nvme"), `nvme_path` (none; req. for nvme), `buffer_count` (4), `pin_memory`, `pipeline_read`, `pipeline_write`, `fast_init` (false), `ratio` (1.0, in [0, 1]; < 1 only stage 3) |
//! | `offload_param` | `device` ("none"), `nvme_path` (none), `buffer_count` (5), `buffer_size` (100000000), `max_in_cpu` (1000000000), `pin_memory` (false) |
//! | `zeropp_loco_param` | `err_beta` (0.8), `reset_T` (1024) |
//!
//! The `stage3_` keys also accept DeepSpeed's aliases without the prefix (`prefetch_bucket_size`, …), and
//! `stage3_gather_fp16_weights_on_model_save` for `stage3_gather_16bit_weights_on_model_save`.

mod batch;
mod checkpointing;
mod duplicates;
mod error;
mod monitor;
mod optimizer;
mod precision;
mod reader;
mod scheduler;
mod top;
mod unimplemented;
mod zero;

use std::path::Path;

use serde_json::Value;

pub use batch::BatchSizes;
pub use checkpointing::ActivationCheckpointingConfig;
pub use error::ConfigError;
pub use monitor::MonitorConfig;
pub use optimizer::{AdamConfig, AdamKind, LambConfig, LionConfig, OptimizerConfig, SgdConfig, SUPPORTED_OPTIMIZERS};
pub use precision::{Bf16Config, Fp16Config};
pub use reader::closest;
pub use scheduler::{
    LrRangeTestConfig, OneCycleConfig, SchedulerConfig, WarmupCosineLrConfig, WarmupDecayLrConfig, WarmupLrConfig,
    WarmupType, MIN_WARMUP_NUM_STEPS, SUPPORTED_SCHEDULERS,
};
pub use top::DataType;
pub use zero::{LocoConfig, OffloadDevice, OffloadOptimizerConfig, OffloadParamConfig, ZeroConfig};

/// A parsed and validated DeepSpeed config. Every field holds DeepSpeed's code default when its key is absent.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepSpeedConfig {
    /// `train_batch_size` (default None): samples per optimizer step over all data-parallel ranks.
    pub train_batch_size: Option<usize>,
    /// `train_micro_batch_size_per_gpu` (default None): samples per rank per forward/backward.
    pub train_micro_batch_size_per_gpu: Option<usize>,
    /// `gradient_accumulation_steps` (default None): micro-batches per optimizer step.
    pub gradient_accumulation_steps: Option<usize>,
    /// `steps_per_print` (default None = never; DeepSpeed's docs say 10, its code None).
    pub steps_per_print: Option<u64>,
    /// `gradient_clipping` (default 0.0 = off; docs say 1.0, code 0.0): max global gradient L2 norm.
    pub gradient_clipping: f64,
    /// `optimizer` (default None).
    pub optimizer: Option<OptimizerConfig>,
    /// `scheduler` (default None = constant learning rate).
    pub scheduler: Option<SchedulerConfig>,
    /// `fp16` (default disabled).
    pub fp16: Fp16Config,
    /// `bf16` or legacy `bfloat16` (default disabled).
    pub bf16: Bf16Config,
    /// `zero_optimization` (default stage 0).
    pub zero_optimization: ZeroConfig,
    /// `wall_clock_breakdown` (default false): time forward, backward and step.
    pub wall_clock_breakdown: bool,
    /// `memory_breakdown` (default false): report memory around forward, backward and step.
    pub memory_breakdown: bool,
    /// `dump_state` (default false): print the engine state after initialization.
    pub dump_state: bool,
    /// `prescale_gradients` (default false): divide gradients by the world size before the all-reduce.
    pub prescale_gradients: bool,
    /// `gradient_predivide_factor` (default 1.0): divide by this before the all-reduce, by world/this after.
    pub gradient_predivide_factor: f64,
    /// `communication_data_type` (default None = the model's precision).
    pub communication_data_type: Option<DataType>,
    /// `seq_parallel_comm_data_type` (default fp32).
    pub seq_parallel_comm_data_type: DataType,
    /// `sparse_gradients` (default false).
    pub sparse_gradients: bool,
    /// `zero_allow_untested_optimizer` (default false).
    pub zero_allow_untested_optimizer: bool,
    /// `zero_force_ds_cpu_optimizer` (default true).
    pub zero_force_ds_cpu_optimizer: bool,
    /// `dataloader_drop_last` (default false).
    pub dataloader_drop_last: bool,
    /// `vocabulary_size` (default None).
    pub vocabulary_size: Option<usize>,
    /// `graph_harvesting` (default false).
    pub graph_harvesting: bool,
    /// `data_types.grad_accum_dtype` (default None = the model's precision, fp32 for bf16 without ZeRO).
    pub grad_accum_dtype: Option<DataType>,
    /// `activation_checkpointing` (default None = off; the block's presence turns it on, see
    /// [`ActivationCheckpointingConfig`]).
    pub activation_checkpointing: Option<ActivationCheckpointingConfig>,
    /// `tensorboard` (default disabled): TensorBoard event files of the training scalars, see [`MonitorConfig`].
    pub tensorboard: MonitorConfig,
    /// `csv_monitor` (default disabled): one CSV file per training scalar, see [`MonitorConfig`].
    pub csv_monitor: MonitorConfig,
}

impl Default for DeepSpeedConfig {
    /// The config of `{}`.
    fn default() -> Self {
        DeepSpeedConfig {
            train_batch_size: None,
            train_micro_batch_size_per_gpu: None,
            gradient_accumulation_steps: None,
            steps_per_print: None,
            gradient_clipping: 0.0,
            optimizer: None,
            scheduler: None,
            fp16: Fp16Config::default(),
            bf16: Bf16Config::default(),
            zero_optimization: ZeroConfig::default(),
            wall_clock_breakdown: false,
            memory_breakdown: false,
            dump_state: false,
            prescale_gradients: false,
            gradient_predivide_factor: 1.0,
            communication_data_type: None,
            seq_parallel_comm_data_type: DataType::Fp32,
            sparse_gradients: false,
            zero_allow_untested_optimizer: false,
            zero_force_ds_cpu_optimizer: true,
            dataloader_drop_last: false,
            vocabulary_size: None,
            graph_harvesting: false,
            grad_accum_dtype: None,
            activation_checkpointing: None,
            tensorboard: MonitorConfig::default(),
            csv_monitor: MonitorConfig::default(),
        }
    }
}

impl DeepSpeedConfig {
    /// Parses and validates config text (strict JSON).
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        parse_text(text, None)
    }

    /// Reads and parses a config file; a missing, unreadable or non-UTF-8 file is an error naming the path.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |reason: String| ConfigError::Read { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
        })?;
        parse_text(text.strip_prefix('\u{feff}').unwrap_or(&text), Some(path))
    }

    /// The batch sizes for `world_size` data-parallel ranks, inferred and checked as DeepSpeed does (semantics
    /// §1.2, integer division):
    ///
    /// | given | inferred |
    /// |---|---|
    /// | TB, MB, GAS | nothing (checked) |
    /// | TB, MB | GAS = TB // MB // W |
    /// | TB, GAS | MB = TB // W // GAS |
    /// | MB, GAS | TB = MB × GAS × W |
    /// | TB | GAS = 1, MB = TB // W |
    /// | MB | TB = MB × W, GAS = 1 |
    /// | GAS or nothing | error |
    ///
    /// then TB > 0, MB > 0, GAS > 0 and TB == MB × GAS × W, each failure with DeepSpeed's text and a hint line.
    pub fn batch_sizes(&self, world_size: usize) -> Result<BatchSizes, ConfigError> {
        batch::resolve(
            self.train_batch_size,
            self.train_micro_batch_size_per_gpu,
            self.gradient_accumulation_steps,
            world_size,
        )
    }

    /// The config as JSON with every value explicit (for checkpoint manifests); `from_json_str` of its text gives
    /// back an equal config.
    pub fn to_json(&self) -> Value {
        top::to_json(self)
    }
}

fn parse_text(text: &str, file: Option<&Path>) -> Result<DeepSpeedConfig, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|e| syntax_error(&e, text, file))?;
    if let Some(path) = duplicates::first_duplicate_key(text) {
        return Err(ConfigError::DuplicateKey { path });
    }
    match &value {
        Value::Object(map) => top::parse(map),
        other => Err(ConfigError::InvalidValue {
            path: "(top level)".to_string(),
            value: reader::show(other),
            rule: "must be a JSON object such as {\"train_micro_batch_size_per_gpu\": 8}".to_string(),
        }),
    }
}

/// serde_json's message without its position suffix (the error carries line and column), plus a hint when the
/// text has a comment where the parser stopped.
fn syntax_error(error: &serde_json::Error, text: &str, file: Option<&Path>) -> ConfigError {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let mut message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    let at_error = text
        .lines()
        .nth(error.line().saturating_sub(1))
        .and_then(|line| line.chars().nth(error.column().saturating_sub(1)).or_else(|| line.trim_end().chars().last()));
    if matches!(at_error, Some('/' | '#')) {
        message.push_str(
            " (comments are not allowed: rustspeed reads strict JSON, while DeepSpeed reads files with hjson)",
        );
    }
    ConfigError::Syntax { file: file.map(Path::to_path_buf), line: error.line(), column: error.column(), message }
}
