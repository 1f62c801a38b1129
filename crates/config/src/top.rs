//! The top-level object: its scalars (semantics §1.2–1.3), its blocks, the checks DeepSpeed makes across
//! blocks, and where a misplaced key belongs.

use serde_json::{json, Map, Value};

use crate::checkpointing::ActivationCheckpointingConfig;
use crate::error::ConfigError;
use crate::monitor::MonitorConfig;
use crate::optimizer::OptimizerConfig;
use crate::precision::{Bf16Config, Fp16Config};
use crate::reader::{Block, Bound};
use crate::scheduler::SchedulerConfig;
use crate::unimplemented::check_unimplemented_blocks;
use crate::zero::ZeroConfig;
use crate::DeepSpeedConfig;

/// A floating-point format named by `communication_data_type`, `seq_parallel_comm_data_type` and
/// `data_types.grad_accum_dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Fp16,
    Bf16,
    Fp32,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::Fp16 => "fp16",
            DataType::Bf16 => "bf16",
            DataType::Fp32 => "fp32",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "fp16" => Some(DataType::Fp16),
            "bf16" => Some(DataType::Bf16),
            "fp32" => Some(DataType::Fp32),
            _ => None,
        }
    }
}

/// Reads a data-type key the way DeepSpeed's `get_communication_data_type` does: lower-cased, one of the three
/// names, else DeepSpeed's error text.
fn data_type(block: &Block<'_>, key: &'static str) -> Result<Option<DataType>, ConfigError> {
    let Some(text) = block.opt_string(key)? else { return Ok(None) };
    DataType::from_name(&text.to_lowercase()).map(Some).ok_or_else(|| ConfigError::Rejected {
        path: block.path_of(key),
        message: format!(
            "Invalid communication_data_type. Supported data types: ['fp16', 'bf16', 'fp32']. Got: {}",
            text.to_lowercase()
        ),
    })
}

pub(crate) fn parse(map: &Map<String, Value>) -> Result<DeepSpeedConfig, ConfigError> {
    let top = Block::top(map);
    let fp16 = match top.value("fp16", "an object")? {
        Some(value) => Fp16Config::parse(value)?,
        None => Fp16Config::default(),
    };
    let bf16 = match (top.value("bf16", "an object")?, top.value("bfloat16", "an object")?) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Rejected {
                path: "bfloat16".to_string(),
                message: "`bfloat16` is the legacy name of `bf16`; give only `bf16`".to_string(),
            })
        }
        (Some(value), None) => Bf16Config::parse("bf16", value)?,
        (None, Some(value)) => Bf16Config::parse("bfloat16", value)?,
        (None, None) => Bf16Config::default(),
    };
    let optimizer = top.value("optimizer", "an object")?.map(OptimizerConfig::parse).transpose()?;
    let scheduler = top.value("scheduler", "an object")?.map(SchedulerConfig::parse).transpose()?;
    let zero_optimization = match top.value("zero_optimization", "an object")? {
        Some(Value::Bool(enabled)) => {
            let allgather_size = if *enabled { top.opt_u64("allgather_size", 0)? } else { None };
            ZeroConfig::from_legacy_bool(*enabled, allgather_size)
        }
        Some(value) => ZeroConfig::parse(value)?,
        None => ZeroConfig::default(),
    };
    let data_types_grad_accum_dtype = match top.block("data_types", r#""data_types": {"grad_accum_dtype": "fp32"}"#)? {
        Some(block) => {
            let dtype = data_type(&block, "grad_accum_dtype")?;
            block.finish()?;
            dtype
        }
        None => None,
    };
    let config = DeepSpeedConfig {
        train_batch_size: top.opt_usize("train_batch_size", 0)?,
        train_micro_batch_size_per_gpu: top.opt_usize("train_micro_batch_size_per_gpu", 0)?,
        gradient_accumulation_steps: top.opt_usize("gradient_accumulation_steps", 0)?,
        steps_per_print: top.opt_u64("steps_per_print", 1)?,
        gradient_clipping: top.f64_or("gradient_clipping", 0.0, Bound::AtLeast(0.0))?,
        optimizer,
        scheduler,
        fp16,
        bf16,
        zero_optimization,
        wall_clock_breakdown: top.bool_or("wall_clock_breakdown", false)?,
        memory_breakdown: top.bool_or("memory_breakdown", false)?,
        dump_state: top.bool_or("dump_state", false)?,
        prescale_gradients: top.bool_or("prescale_gradients", false)?,
        gradient_predivide_factor: top.f64_or("gradient_predivide_factor", 1.0, Bound::Above(0.0))?,
        communication_data_type: data_type(&top, "communication_data_type")?,
        seq_parallel_comm_data_type: data_type(&top, "seq_parallel_comm_data_type")?.unwrap_or(DataType::Fp32),
        sparse_gradients: top.bool_or("sparse_gradients", false)?,
        zero_allow_untested_optimizer: top.bool_or("zero_allow_untested_optimizer", false)?,
        zero_force_ds_cpu_optimizer: top.bool_or("zero_force_ds_cpu_optimizer", true)?,
        dataloader_drop_last: top.bool_or("dataloader_drop_last", false)?,
        vocabulary_size: top.opt_usize("vocabulary_size", 1)?,
        graph_harvesting: top.bool_or("graph_harvesting", false)?,
        grad_accum_dtype: data_types_grad_accum_dtype,
        activation_checkpointing: match top.block("activation_checkpointing", r#""activation_checkpointing": {}"#)? {
            Some(block) => Some(ActivationCheckpointingConfig::parse(block)?),
            None => None,
        },
        tensorboard: monitor(&top, "tensorboard")?,
        csv_monitor: monitor(&top, "csv_monitor")?,
    };
    check_unimplemented_blocks(&top)?;
    check_combinations(&config)?;
    top.finish_with(misplaced_key_hint)?;
    Ok(config)
}

/// The monitor block `name` (`tensorboard` or `csv_monitor`); absent means disabled.
fn monitor(top: &Block<'_>, name: &'static str) -> Result<MonitorConfig, ConfigError> {
    match top.block(name, &format!("\"{name}\": {{\"enabled\": true}}"))? {
        Some(block) => MonitorConfig::parse(block),
        None => Ok(MonitorConfig::default()),
    }
}

/// The checks DeepSpeed makes across blocks, with its texts.
fn check_combinations(config: &DeepSpeedConfig) -> Result<(), ConfigError> {
    if config.fp16.enabled && config.bf16.enabled {
        return Err(ConfigError::Rejected {
            path: "bf16.enabled".to_string(),
            message: "bfloat16 and fp16 modes cannot be simultaneously enabled".to_string(),
        });
    }
    // DeepSpeed's check is `loss_scale == 0`, where a bf16 run has loss_scale 1.0, so DeepSpeed also refuses
    // Lamb with bf16; rustspeed refuses only what the message says, a static fp16 loss scale.
    if matches!(config.optimizer, Some(OptimizerConfig::Lamb(_))) && config.fp16.enabled && !config.fp16.is_dynamic() {
        return Err(ConfigError::Rejected {
            path: "fp16.loss_scale".to_string(),
            message: format!(
                "DeepSpeed lamb optimizer requires dynamic loss scaling (fp16.loss_scale is {}; set it to 0)",
                config.fp16.loss_scale
            ),
        });
    }
    if config.fp16.enabled && config.fp16.fp16_master_weights_and_grads && config.zero_optimization.stage != 2 {
        return Err(ConfigError::Rejected {
            path: "fp16.fp16_master_weights_and_grads".to_string(),
            message: "Fp16_master_weights_and_grads is only supported with ZeRO Stage 2 for now.".to_string(),
        });
    }
    Ok(())
}

/// For an unknown top-level key that is a DeepSpeed key of some block (or a common near-miss), where it goes.
fn misplaced_key_hint(key: &str) -> Option<String> {
    let in_block = |block_keys: &Value| block_keys.as_object().is_some_and(|keys| keys.contains_key(key));
    let fp16_keys = Fp16Config { dynamic_keys_given: true, ..Fp16Config::default() }.to_json();
    if in_block(&fp16_keys) {
        return Some(format!("`{key}` belongs in the fp16 block: \"fp16\": {{\"enabled\": true, \"{key}\": …}}"));
    }
    let zero_keys = ZeroConfig { overlap_comm: Some(false), ..ZeroConfig::default() }.to_json();
    if in_block(&zero_keys) || key == "offload_optimizer" || key == "offload_param" {
        return Some(format!(
            "`{key}` belongs in the zero_optimization block: \"zero_optimization\": {{\"{key}\": …}}"
        ));
    }
    const OPTIMIZER_PARAMS: [&str; 8] =
        ["lr", "learning_rate", "betas", "eps", "weight_decay", "momentum", "nesterov", "adam_w_mode"];
    if OPTIMIZER_PARAMS.contains(&key) {
        return Some(format!(
            "optimizer settings go in optimizer.params: \"optimizer\": {{\"type\": \"AdamW\", \"params\": {{\"{key}\": …}}}}"
        ));
    }
    const SCHEDULER_PREFIXES: [&str; 5] = ["warmup_", "cycle_", "lr_range_test_", "total_num_steps", "cos_min_ratio"];
    if SCHEDULER_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
        return Some(format!(
            "scheduler settings go in scheduler.params: \"scheduler\": {{\"type\": \"WarmupLR\", \"params\": {{\"{key}\": …}}}}"
        ));
    }
    let hint = match key {
        "max_grad_norm" | "clip_grad" | "grad_clip" | "clip_grad_norm" => {
            "DeepSpeed's key for gradient-norm clipping is `gradient_clipping`"
        }
        "batch_size" | "micro_batch_size" => {
            "DeepSpeed's batch keys are `train_batch_size` (samples per optimizer step over all ranks) and \
             `train_micro_batch_size_per_gpu` (samples per rank per forward pass)"
        }
        "epochs" | "num_epochs" | "max_steps" | "train_iters" | "num_steps" => {
            "the training length is not part of the DeepSpeed config"
        }
        "fp32_allreduce" => "write \"communication_data_type\": \"fp32\"",
        "allgather_size" => "it is read only with the legacy form \"zero_optimization\": true",
        "zero_stage" | "zero" => {
            "ZeRO is configured by the zero_optimization block: \"zero_optimization\": {\"stage\": 2}"
        }
        _ => return None,
    };
    Some(hint.to_string())
}

pub(crate) fn to_json(config: &DeepSpeedConfig) -> Value {
    let mut map = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            map.insert(key.to_string(), value);
        }
    };
    put("train_batch_size", json!(config.train_batch_size));
    put("train_micro_batch_size_per_gpu", json!(config.train_micro_batch_size_per_gpu));
    put("gradient_accumulation_steps", json!(config.gradient_accumulation_steps));
    put("steps_per_print", json!(config.steps_per_print));
    put("gradient_clipping", json!(config.gradient_clipping));
    put("optimizer", config.optimizer.as_ref().map_or(Value::Null, OptimizerConfig::to_json));
    put("scheduler", config.scheduler.as_ref().map_or(Value::Null, SchedulerConfig::to_json));
    put("fp16", config.fp16.to_json());
    put("bf16", config.bf16.to_json());
    put("zero_optimization", config.zero_optimization.to_json());
    put("wall_clock_breakdown", json!(config.wall_clock_breakdown));
    put("memory_breakdown", json!(config.memory_breakdown));
    put("dump_state", json!(config.dump_state));
    put("prescale_gradients", json!(config.prescale_gradients));
    put("gradient_predivide_factor", json!(config.gradient_predivide_factor));
    put("communication_data_type", json!(config.communication_data_type.map(DataType::name)));
    put("seq_parallel_comm_data_type", json!(config.seq_parallel_comm_data_type.name()));
    put("sparse_gradients", json!(config.sparse_gradients));
    put("zero_allow_untested_optimizer", json!(config.zero_allow_untested_optimizer));
    put("zero_force_ds_cpu_optimizer", json!(config.zero_force_ds_cpu_optimizer));
    put("dataloader_drop_last", json!(config.dataloader_drop_last));
    put("vocabulary_size", json!(config.vocabulary_size));
    put("graph_harvesting", json!(config.graph_harvesting));
    if let Some(dtype) = config.grad_accum_dtype {
        put("data_types", json!({"grad_accum_dtype": dtype.name()}));
    }
    if let Some(checkpointing) = &config.activation_checkpointing {
        put("activation_checkpointing", checkpointing.to_json());
    }
    // Disabled monitors are left out, so that records of runs without them read as before they existed.
    if let Some(block) = config.tensorboard.to_json() {
        put("tensorboard", block);
    }
    if let Some(block) = config.csv_monitor.to_json() {
        put("csv_monitor", block);
    }
    Value::Object(map)
}
