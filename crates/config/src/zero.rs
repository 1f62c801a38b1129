//! The `zero_optimization` block (semantics §1.7), with DeepSpeed 0.16.5's code defaults. Unknown keys are
//! errors, as in DeepSpeed (its pydantic model forbids extra keys). This module only parses and validates; which
//! stages and options the engine runs is the engine's business.

use serde_json::{json, Map, Value};

use crate::error::ConfigError;
use crate::reader::{Block, Bound};

/// Default of `reduce_bucket_size` and `allgather_bucket_size`, in elements.
const DEFAULT_BUCKET_SIZE: u64 = 500_000_000;
/// DeepSpeed's `nccl_start_alignment_factor`: stage 1/2 `allgather_bucket_size` must be a multiple of it.
const ALLGATHER_ALIGNMENT: u64 = 2;

/// Where ZeRO offloads a tensor class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadDevice {
    None,
    Cpu,
    Nvme,
}

impl OffloadDevice {
    const NAMES: [&'static str; 3] = ["none", "cpu", "nvme"];

    pub fn name(self) -> &'static str {
        match self {
            OffloadDevice::None => "none",
            OffloadDevice::Cpu => "cpu",
            OffloadDevice::Nvme => "nvme",
        }
    }

    fn from_name(name: &str) -> Self {
        match name {
            "cpu" => OffloadDevice::Cpu,
            "nvme" => OffloadDevice::Nvme,
            _ => OffloadDevice::None,
        }
    }
}

/// `zero_optimization.offload_optimizer`.
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadOptimizerConfig {
    /// `device` (default "none"; "cpu", "nvme").
    pub device: OffloadDevice,
    /// `nvme_path` (default None; required with device "nvme").
    pub nvme_path: Option<String>,
    /// `buffer_count` (default 4).
    pub buffer_count: u64,
    /// `pin_memory` (default false).
    pub pin_memory: bool,
    /// `pipeline_read` (default false).
    pub pipeline_read: bool,
    /// `pipeline_write` (default false).
    pub pipeline_write: bool,
    /// `fast_init` (default false).
    pub fast_init: bool,
    /// `ratio` (default 1.0, in [0, 1]): fraction of the optimizer step offloaded; < 1 only with stage 3.
    pub ratio: f64,
}

/// `zero_optimization.offload_param` (stage 3).
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadParamConfig {
    /// `device` (default "none"; "cpu", "nvme").
    pub device: OffloadDevice,
    /// `nvme_path` (default None; required with device "nvme").
    pub nvme_path: Option<String>,
    /// `buffer_count` (default 5).
    pub buffer_count: u64,
    /// `buffer_size` (default 100000000).
    pub buffer_size: u64,
    /// `max_in_cpu` (default 1000000000).
    pub max_in_cpu: u64,
    /// `pin_memory` (default false).
    pub pin_memory: bool,
}

/// `zero_optimization.zeropp_loco_param`: LoCo error feedback for ZeRO++ quantized gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct LocoConfig {
    /// `err_beta` (default 0.8).
    pub err_beta: f64,
    /// `reset_T` (default 1024).
    pub reset_t: u64,
}

/// The `zero_optimization` block. Sizes are in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroConfig {
    /// `stage` (default 0): 1 shards optimizer state, 2 also gradients, 3 also parameters. The legacy form
    /// `"zero_optimization": true|false` means stage 1|0.
    pub stage: u8,
    /// `contiguous_gradients` (default true).
    pub contiguous_gradients: bool,
    /// `reduce_scatter` (default true).
    pub reduce_scatter: bool,
    /// `reduce_bucket_size` (default 500000000).
    pub reduce_bucket_size: u64,
    /// `use_multi_rank_bucket_allreduce` (default true).
    pub use_multi_rank_bucket_allreduce: bool,
    /// `allgather_partitions` (default true; unused by DeepSpeed 0.16.5).
    pub allgather_partitions: bool,
    /// `allgather_bucket_size` (default 500000000; a multiple of 2 for stages 1 and 2).
    pub allgather_bucket_size: u64,
    /// `overlap_comm` (default None = true for stage 3, false otherwise; see [`ZeroConfig::overlap_comm`]).
    pub overlap_comm: Option<bool>,
    /// `load_from_fp32_weights` (default true).
    pub load_from_fp32_weights: bool,
    /// `elastic_checkpoint` (default false).
    pub elastic_checkpoint: bool,
    /// `offload_optimizer` (default None).
    pub offload_optimizer: Option<OffloadOptimizerConfig>,
    /// `offload_param` (default None).
    pub offload_param: Option<OffloadParamConfig>,
    /// `sub_group_size` (default 1000000000).
    pub sub_group_size: u64,
    /// `stage3_prefetch_bucket_size`, alias `prefetch_bucket_size` (default 50000000).
    pub stage3_prefetch_bucket_size: u64,
    /// `stage3_param_persistence_threshold`, alias `param_persistence_threshold` (default 100000).
    pub stage3_param_persistence_threshold: u64,
    /// `stage3_model_persistence_threshold`, alias `model_persistence_threshold` (default i64::MAX, Python's
    /// `sys.maxsize`).
    pub stage3_model_persistence_threshold: u64,
    /// `stage3_max_live_parameters`, alias `max_live_parameters` (default 1000000000).
    pub stage3_max_live_parameters: u64,
    /// `stage3_max_reuse_distance`, alias `max_reuse_distance` (default 1000000000).
    pub stage3_max_reuse_distance: u64,
    /// `stage3_gather_16bit_weights_on_model_save`, aliases `gather_16bit_weights_on_model_save` and (deprecated)
    /// `stage3_gather_fp16_weights_on_model_save` (default false).
    pub stage3_gather_16bit_weights_on_model_save: bool,
    /// `stage3_module_granularity_threshold`, alias `module_granularity_threshold` (default 0).
    pub stage3_module_granularity_threshold: u64,
    /// `stage3_use_all_reduce_for_fetch_params`, alias `use_all_reduce_for_fetch_params` (default false).
    pub stage3_use_all_reduce_for_fetch_params: bool,
    /// `ignore_unused_parameters` (default true).
    pub ignore_unused_parameters: bool,
    /// `round_robin_gradients` (default false).
    pub round_robin_gradients: bool,
    /// `zero_hpz_partition_size` (default 1).
    pub zero_hpz_partition_size: u64,
    /// `zero_quantized_weights` (default false).
    pub zero_quantized_weights: bool,
    /// `zero_quantized_nontrainable_weights` (default false).
    pub zero_quantized_nontrainable_weights: bool,
    /// `zero_quantized_gradients` (default false).
    pub zero_quantized_gradients: bool,
    /// `zeropp_loco_param` (default None).
    pub zeropp_loco_param: Option<LocoConfig>,
    /// `mics_shard_size` (default -1 = off).
    pub mics_shard_size: i64,
    /// `mics_hierarchical_params_gather` (default false).
    pub mics_hierarchical_params_gather: bool,
    /// `memory_efficient_linear` (default true).
    pub memory_efficient_linear: bool,
    /// `pipeline_loading_checkpoint` (default false).
    pub pipeline_loading_checkpoint: bool,
    /// `override_module_apply` (default true).
    pub override_module_apply: bool,
    /// `log_trace_cache_warnings` (default false).
    pub log_trace_cache_warnings: bool,
}

impl Default for ZeroConfig {
    fn default() -> Self {
        ZeroConfig {
            stage: 0,
            contiguous_gradients: true,
            reduce_scatter: true,
            reduce_bucket_size: DEFAULT_BUCKET_SIZE,
            use_multi_rank_bucket_allreduce: true,
            allgather_partitions: true,
            allgather_bucket_size: DEFAULT_BUCKET_SIZE,
            overlap_comm: None,
            load_from_fp32_weights: true,
            elastic_checkpoint: false,
            offload_optimizer: None,
            offload_param: None,
            sub_group_size: 1_000_000_000,
            stage3_prefetch_bucket_size: 50_000_000,
            stage3_param_persistence_threshold: 100_000,
            stage3_model_persistence_threshold: i64::MAX.unsigned_abs(),
            stage3_max_live_parameters: 1_000_000_000,
            stage3_max_reuse_distance: 1_000_000_000,
            stage3_gather_16bit_weights_on_model_save: false,
            stage3_module_granularity_threshold: 0,
            stage3_use_all_reduce_for_fetch_params: false,
            ignore_unused_parameters: true,
            round_robin_gradients: false,
            zero_hpz_partition_size: 1,
            zero_quantized_weights: false,
            zero_quantized_nontrainable_weights: false,
            zero_quantized_gradients: false,
            zeropp_loco_param: None,
            mics_shard_size: -1,
            mics_hierarchical_params_gather: false,
            memory_efficient_linear: true,
            pipeline_loading_checkpoint: false,
            override_module_apply: true,
            log_trace_cache_warnings: false,
        }
    }
}

/// Deprecated keys DeepSpeed still maps onto new ones; rustspeed asks for the new spelling.
const DEPRECATED_KEYS: [(&str, &str); 3] = [
    ("cpu_offload", "\"offload_optimizer\": {\"device\": \"cpu\"}"),
    ("cpu_offload_param", "\"offload_param\": {\"device\": \"cpu\"}"),
    ("cpu_offload_use_pin_memory", "\"pin_memory\": true inside offload_optimizer / offload_param"),
];

const ZERO_EXAMPLE: &str = r#""zero_optimization": {"stage": 2}"#;

impl ZeroConfig {
    /// Whether communication overlaps computation: the given `overlap_comm`, else true exactly for stage 3.
    pub fn overlap_comm(&self) -> bool {
        self.overlap_comm.unwrap_or(self.stage == 3)
    }

    /// The legacy boolean form: `true` → stage 1 (with `allgather_bucket_size` from the top-level
    /// `allgather_size`, as DeepSpeed's `read_zero_config_deprecated`), `false` → stage 0.
    pub(crate) fn from_legacy_bool(enabled: bool, allgather_size: Option<u64>) -> Self {
        let mut config = ZeroConfig { stage: u8::from(enabled), ..ZeroConfig::default() };
        if let Some(size) = allgather_size {
            config.allgather_bucket_size = size;
        }
        config
    }

    pub(crate) fn parse(value: &Value) -> Result<Self, ConfigError> {
        let block = Block::nested("zero_optimization".to_string(), value, ZERO_EXAMPLE)?;
        for (old, new) in DEPRECATED_KEYS {
            if block.raw(old).is_some() {
                return Err(ConfigError::Rejected {
                    path: block.path_of(old),
                    message: format!("deprecated in DeepSpeed; write {new}"),
                });
            }
        }
        let d = ZeroConfig::default();
        let stage = block.opt_i64("stage", 0, 3).map_err(|_| ConfigError::InvalidValue {
            path: block.path_of("stage"),
            value: block.raw("stage").map(crate::reader::show).unwrap_or_default(),
            rule: "must be 0, 1, 2 or 3 (DeepSpeedConfig: Maximum supported ZeRO stage is 3)".to_string(),
        })?;
        let stage = stage.map_or(d.stage, |s| u8::try_from(s).unwrap_or(0));
        if block.bool_or("legacy_stage1", false)? {
            return Err(ConfigError::Rejected {
                path: block.path_of("legacy_stage1"),
                message: "the legacy stage 1 implementation was removed from DeepSpeed (0.5.9); leave it false"
                    .to_string(),
            });
        }
        let config = ZeroConfig {
            stage,
            contiguous_gradients: block.bool_or("contiguous_gradients", d.contiguous_gradients)?,
            reduce_scatter: block.bool_or("reduce_scatter", d.reduce_scatter)?,
            reduce_bucket_size: block.u64_or("reduce_bucket_size", d.reduce_bucket_size, 0)?,
            use_multi_rank_bucket_allreduce: block
                .bool_or("use_multi_rank_bucket_allreduce", d.use_multi_rank_bucket_allreduce)?,
            allgather_partitions: block.bool_or("allgather_partitions", d.allgather_partitions)?,
            allgather_bucket_size: block.u64_or("allgather_bucket_size", d.allgather_bucket_size, 0)?,
            overlap_comm: block.opt_bool("overlap_comm")?,
            load_from_fp32_weights: block.bool_or("load_from_fp32_weights", d.load_from_fp32_weights)?,
            elastic_checkpoint: block.bool_or("elastic_checkpoint", d.elastic_checkpoint)?,
            offload_optimizer: match block.block("offload_optimizer", r#""offload_optimizer": {"device": "cpu"}"#)? {
                Some(sub) => Some(parse_offload_optimizer(sub, stage)?),
                None => None,
            },
            offload_param: match block.block("offload_param", r#""offload_param": {"device": "cpu"}"#)? {
                Some(sub) => Some(parse_offload_param(sub)?),
                None => None,
            },
            sub_group_size: block.u64_or("sub_group_size", d.sub_group_size, 1)?,
            stage3_prefetch_bucket_size: aliased_u64(
                &block,
                "stage3_prefetch_bucket_size",
                "prefetch_bucket_size",
                d.stage3_prefetch_bucket_size,
            )?,
            stage3_param_persistence_threshold: aliased_u64(
                &block,
                "stage3_param_persistence_threshold",
                "param_persistence_threshold",
                d.stage3_param_persistence_threshold,
            )?,
            stage3_model_persistence_threshold: aliased_u64(
                &block,
                "stage3_model_persistence_threshold",
                "model_persistence_threshold",
                d.stage3_model_persistence_threshold,
            )?,
            stage3_max_live_parameters: aliased_u64(
                &block,
                "stage3_max_live_parameters",
                "max_live_parameters",
                d.stage3_max_live_parameters,
            )?,
            stage3_max_reuse_distance: aliased_u64(
                &block,
                "stage3_max_reuse_distance",
                "max_reuse_distance",
                d.stage3_max_reuse_distance,
            )?,
            stage3_gather_16bit_weights_on_model_save: gather_16bit(&block)?,
            stage3_module_granularity_threshold: aliased_u64(
                &block,
                "stage3_module_granularity_threshold",
                "module_granularity_threshold",
                d.stage3_module_granularity_threshold,
            )?,
            stage3_use_all_reduce_for_fetch_params: aliased_bool(
                &block,
                &["stage3_use_all_reduce_for_fetch_params", "use_all_reduce_for_fetch_params"],
                d.stage3_use_all_reduce_for_fetch_params,
            )?,
            ignore_unused_parameters: block.bool_or("ignore_unused_parameters", d.ignore_unused_parameters)?,
            round_robin_gradients: block.bool_or("round_robin_gradients", d.round_robin_gradients)?,
            zero_hpz_partition_size: block.u64_or("zero_hpz_partition_size", d.zero_hpz_partition_size, 1)?,
            zero_quantized_weights: block.bool_or("zero_quantized_weights", d.zero_quantized_weights)?,
            zero_quantized_nontrainable_weights: block
                .bool_or("zero_quantized_nontrainable_weights", d.zero_quantized_nontrainable_weights)?,
            zero_quantized_gradients: block.bool_or("zero_quantized_gradients", d.zero_quantized_gradients)?,
            zeropp_loco_param: match block.block("zeropp_loco_param", r#""zeropp_loco_param": {"err_beta": 0.8}"#)? {
                Some(sub) => Some(parse_loco(sub)?),
                None => None,
            },
            mics_shard_size: block.i64_or("mics_shard_size", d.mics_shard_size, -1, i64::MAX)?,
            mics_hierarchical_params_gather: block
                .bool_or("mics_hierarchical_params_gather", d.mics_hierarchical_params_gather)?,
            memory_efficient_linear: block.bool_or("memory_efficient_linear", d.memory_efficient_linear)?,
            pipeline_loading_checkpoint: block.bool_or("pipeline_loading_checkpoint", d.pipeline_loading_checkpoint)?,
            override_module_apply: block.bool_or("override_module_apply", d.override_module_apply)?,
            log_trace_cache_warnings: block.bool_or("log_trace_cache_warnings", d.log_trace_cache_warnings)?,
        };
        if matches!(config.stage, 1 | 2) && !config.allgather_bucket_size.is_multiple_of(ALLGATHER_ALIGNMENT) {
            return Err(ConfigError::Rejected {
                path: block.path_of("allgather_bucket_size"),
                message: format!(
                    "allgather_bucket_size must be a multiple of nccl_start_alignment_factor, {ALLGATHER_ALIGNMENT} \
                     (got {})",
                    config.allgather_bucket_size
                ),
            });
        }
        block.finish()?;
        Ok(config)
    }

    /// Every field, with the `stage3_` spelling of aliased keys; `overlap_comm` and the optional sub-blocks
    /// only when set.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        let mut put = |key: &str, value: Value| {
            map.insert(key.to_string(), value);
        };
        put("stage", json!(self.stage));
        put("contiguous_gradients", json!(self.contiguous_gradients));
        put("reduce_scatter", json!(self.reduce_scatter));
        put("reduce_bucket_size", json!(self.reduce_bucket_size));
        put("use_multi_rank_bucket_allreduce", json!(self.use_multi_rank_bucket_allreduce));
        put("allgather_partitions", json!(self.allgather_partitions));
        put("allgather_bucket_size", json!(self.allgather_bucket_size));
        if let Some(overlap) = self.overlap_comm {
            put("overlap_comm", json!(overlap));
        }
        put("load_from_fp32_weights", json!(self.load_from_fp32_weights));
        put("elastic_checkpoint", json!(self.elastic_checkpoint));
        if let Some(c) = &self.offload_optimizer {
            put(
                "offload_optimizer",
                json!({
                    "device": c.device.name(), "nvme_path": c.nvme_path, "buffer_count": c.buffer_count,
                    "pin_memory": c.pin_memory, "pipeline_read": c.pipeline_read, "pipeline_write": c.pipeline_write,
                    "fast_init": c.fast_init, "ratio": c.ratio,
                }),
            );
        }
        if let Some(c) = &self.offload_param {
            put(
                "offload_param",
                json!({
                    "device": c.device.name(), "nvme_path": c.nvme_path, "buffer_count": c.buffer_count,
                    "buffer_size": c.buffer_size, "max_in_cpu": c.max_in_cpu, "pin_memory": c.pin_memory,
                }),
            );
        }
        put("sub_group_size", json!(self.sub_group_size));
        put("stage3_prefetch_bucket_size", json!(self.stage3_prefetch_bucket_size));
        put("stage3_param_persistence_threshold", json!(self.stage3_param_persistence_threshold));
        put("stage3_model_persistence_threshold", json!(self.stage3_model_persistence_threshold));
        put("stage3_max_live_parameters", json!(self.stage3_max_live_parameters));
        put("stage3_max_reuse_distance", json!(self.stage3_max_reuse_distance));
        put("stage3_gather_16bit_weights_on_model_save", json!(self.stage3_gather_16bit_weights_on_model_save));
        put("stage3_module_granularity_threshold", json!(self.stage3_module_granularity_threshold));
        put("stage3_use_all_reduce_for_fetch_params", json!(self.stage3_use_all_reduce_for_fetch_params));
        put("ignore_unused_parameters", json!(self.ignore_unused_parameters));
        put("round_robin_gradients", json!(self.round_robin_gradients));
        put("zero_hpz_partition_size", json!(self.zero_hpz_partition_size));
        put("zero_quantized_weights", json!(self.zero_quantized_weights));
        put("zero_quantized_nontrainable_weights", json!(self.zero_quantized_nontrainable_weights));
        put("zero_quantized_gradients", json!(self.zero_quantized_gradients));
        if let Some(c) = &self.zeropp_loco_param {
            put("zeropp_loco_param", json!({"err_beta": c.err_beta, "reset_T": c.reset_t}));
        }
        put("mics_shard_size", json!(self.mics_shard_size));
        put("mics_hierarchical_params_gather", json!(self.mics_hierarchical_params_gather));
        put("memory_efficient_linear", json!(self.memory_efficient_linear));
        put("pipeline_loading_checkpoint", json!(self.pipeline_loading_checkpoint));
        put("override_module_apply", json!(self.override_module_apply));
        put("log_trace_cache_warnings", json!(self.log_trace_cache_warnings));
        Value::Object(map)
    }
}

/// Reads a key that DeepSpeed accepts under two names; giving both is an error.
fn aliased_u64(block: &Block<'_>, key: &'static str, alias: &'static str, default: u64) -> Result<u64, ConfigError> {
    match (block.opt_u64(key, 0)?, block.opt_u64(alias, 0)?) {
        (Some(_), Some(_)) => Err(both_given(block, key, alias)),
        (Some(x), None) | (None, Some(x)) => Ok(x),
        (None, None) => Ok(default),
    }
}

fn aliased_bool(block: &Block<'_>, names: &[&'static str], default: bool) -> Result<bool, ConfigError> {
    let mut found: Option<(&'static str, bool)> = None;
    for &name in names {
        if let Some(flag) = block.opt_bool(name)? {
            if let Some((first, _)) = found {
                return Err(both_given(block, first, name));
            }
            found = Some((name, flag));
        }
    }
    Ok(found.map_or(default, |(_, flag)| flag))
}

fn gather_16bit(block: &Block<'_>) -> Result<bool, ConfigError> {
    let names = [
        "stage3_gather_16bit_weights_on_model_save",
        "gather_16bit_weights_on_model_save",
        "stage3_gather_fp16_weights_on_model_save",
    ];
    aliased_bool(block, &names, false)
}

fn both_given(block: &Block<'_>, key: &str, alias: &str) -> ConfigError {
    ConfigError::Rejected {
        path: block.path_of(alias),
        message: format!("`{alias}` and `{key}` name the same setting; give only one"),
    }
}

fn offload_device(block: &Block<'_>) -> Result<(OffloadDevice, Option<String>), ConfigError> {
    let device =
        block.opt_choice("device", &OffloadDevice::NAMES, false)?.map_or(OffloadDevice::None, OffloadDevice::from_name);
    let nvme_path = block.opt_string("nvme_path")?.map(str::to_string);
    if device == OffloadDevice::Nvme && nvme_path.is_none() {
        return Err(ConfigError::MissingKey {
            path: block.path_of("nvme_path"),
            context: "when device is \"nvme\" (the directory the tensors are swapped to)".to_string(),
        });
    }
    Ok((device, nvme_path))
}

fn parse_offload_optimizer(block: Block<'_>, stage: u8) -> Result<OffloadOptimizerConfig, ConfigError> {
    let (device, nvme_path) = offload_device(&block)?;
    let config = OffloadOptimizerConfig {
        device,
        nvme_path,
        buffer_count: block.u64_or("buffer_count", 4, 0)?,
        pin_memory: block.bool_or("pin_memory", false)?,
        pipeline_read: block.bool_or("pipeline_read", false)?,
        pipeline_write: block.bool_or("pipeline_write", false)?,
        fast_init: block.bool_or("fast_init", false)?,
        ratio: block.f64_or("ratio", 1.0, Bound::Within(0.0, 1.0))?,
    };
    if config.ratio < 1.0 && stage != 3 {
        return Err(ConfigError::Rejected {
            path: block.path_of("ratio"),
            message: "Partial offloading only supported for ZeRO Stage 3.".to_string(),
        });
    }
    block.finish()?;
    Ok(config)
}

fn parse_offload_param(block: Block<'_>) -> Result<OffloadParamConfig, ConfigError> {
    let (device, nvme_path) = offload_device(&block)?;
    let config = OffloadParamConfig {
        device,
        nvme_path,
        buffer_count: block.u64_or("buffer_count", 5, 0)?,
        buffer_size: block.u64_or("buffer_size", 100_000_000, 0)?,
        max_in_cpu: block.u64_or("max_in_cpu", 1_000_000_000, 0)?,
        pin_memory: block.bool_or("pin_memory", false)?,
    };
    block.finish()?;
    Ok(config)
}

fn parse_loco(block: Block<'_>) -> Result<LocoConfig, ConfigError> {
    let config = LocoConfig {
        err_beta: block.f64_or("err_beta", 0.8, Bound::Within(0.0, 1.0))?,
        reset_t: block.u64_or("reset_T", 1024, 1)?,
    };
    block.finish()?;
    Ok(config)
}
