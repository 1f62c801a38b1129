//! The one place where a DeepSpeed config becomes the engine's choices: optimizer, LR schedule, batch sizes,
//! precision, ZeRO stage and communicator. Nothing else in the engine inspects the config's options.

use crate::error::EngineError;
use crate::optimizer::Optimizer;
use crate::precision::Precision;
use crate::zero::{ZeroPlan, ZeroStage};
use rustspeed_config::{BatchSizes, DataType, DeepSpeedConfig, OptimizerConfig, SchedulerConfig};
use rustspeed_nn::ParamLayout;
use rustspeed_optim::{AdamHyper, LambHyper, LionHyper, LrSchedule, SgdHyper, UpdateRule, WarmupType};
use std::ops::Range;

/// What [`crate::Engine::new`] runs with.
pub struct Setup {
    pub optimizer: Optimizer,
    pub schedule: LrSchedule,
    pub batch: BatchSizes,
    pub zero: ZeroPlan,
    /// `activation_checkpointing` given: layers recompute their activations in the backward.
    pub activation_checkpointing: bool,
    pub precision: Precision,
    /// Whether 16-bit gradients are accumulated over micro-steps in an fp32 buffer (`data_types.grad_accum_dtype`).
    pub accumulate_in_fp32: bool,
}

/// The block a config without an optimizer is told to add.
const OPTIMIZER_EXAMPLE: &str = r#""optimizer": {"type": "AdamW", "params": {"lr": 0.001, "weight_decay": 0.1}}"#;

impl Setup {
    /// Chooses everything for `rank` of `world` ranks; configurations this build cannot run are errors.
    pub fn choose(
        config: &DeepSpeedConfig,
        layout: &ParamLayout,
        groups: &[Range<usize>],
        rank: usize,
        world: usize,
    ) -> Result<Setup, EngineError> {
        let n = config.zero_optimization.stage;
        let stage = ZeroStage::from_number(n)
            .ok_or_else(|| EngineError::Config(format!("zero_optimization.stage {n}: must be 0, 1, 2 or 3")))?;
        let batch = config.batch_sizes(world).map_err(|e| EngineError::Config(e.to_string()))?;
        let rule = match &config.optimizer {
            Some(opt) => rule_of(opt),
            None => {
                return Err(EngineError::Config(format!(
                    "the config has no \"optimizer\" block; add one, e.g. {OPTIMIZER_EXAMPLE}"
                )))
            }
        };
        if stage != ZeroStage::Stage0 {
            check_zero_optimizer(&*rule, config)?;
        }
        let schedule = config.scheduler.as_ref().map_or(Ok(LrSchedule::Constant), schedule_of)?;
        if config.fp16.enabled && config.fp16.fp16_master_weights_and_grads {
            return Err(EngineError::Unsupported(
                "fp16.fp16_master_weights_and_grads (fp16 master weights); rustspeed keeps fp32 master weights — remove the key".into(),
            ));
        }
        let zero = ZeroPlan::new(stage, groups, layout.numel(), rank, world);
        let precision = Precision::of(config, zero.sharded(), rule.fused_fp16_wrapper());
        let accumulate_in_fp32 = accumulation_in_fp32(config, precision.storage(), stage)?;
        check_communication_type(config)?;
        check_offload(config)?;
        let optimizer = Optimizer::new(rule, zero.partition);
        let activation_checkpointing = config.activation_checkpointing.is_some();
        Ok(Setup { optimizer, schedule, batch, zero, precision, accumulate_in_fp32, activation_checkpointing })
    }
}

/// Whether a model stored as `storage` accumulates its gradients in fp32 when the config does not say
/// (`data_types.grad_accum_dtype` absent): DeepSpeed's default, fp32 for bf16 without ZeRO, the model's type otherwise.
pub fn default_accumulates_in_fp32(storage: crate::StorageType, stage: ZeroStage) -> bool {
    storage == crate::StorageType::Bf16 && stage == ZeroStage::Stage0
}

/// `data_types.grad_accum_dtype`: DeepSpeed's default is the model's type, except bf16 without ZeRO, which
/// accumulates in fp32 (§1.3); an explicit value must be fp32 or the model's type. Returns whether a 16-bit model
/// accumulates in a separate fp32 buffer. (ZeRO stage 2 accumulates in its fp32 partition either way.)
fn accumulation_in_fp32(
    config: &DeepSpeedConfig,
    storage: crate::StorageType,
    stage: ZeroStage,
) -> Result<bool, EngineError> {
    let model = match storage {
        crate::StorageType::Fp32 => DataType::Fp32,
        crate::StorageType::Fp16 => DataType::Fp16,
        crate::StorageType::Bf16 => DataType::Bf16,
    };
    let default = match default_accumulates_in_fp32(storage, stage) {
        true => DataType::Fp32,
        false => model,
    };
    match config.grad_accum_dtype.unwrap_or(default) {
        DataType::Fp32 => Ok(model != DataType::Fp32),
        dtype if dtype == model => Ok(false),
        dtype => Err(EngineError::Unsupported(format!(
            "data_types.grad_accum_dtype \"{}\" with a {} model; use \"fp32\" or \"{}\"",
            dtype.name(),
            model.name(),
            model.name()
        ))),
    }
}

/// `communication_data_type`: rustspeed reduces gradients in fp32 whatever the model's type (DeepSpeed's default
/// for a 16-bit model is the model's type: fp32 is the more precise choice, at twice the bytes on the wire).
fn check_communication_type(config: &DeepSpeedConfig) -> Result<(), EngineError> {
    match config.communication_data_type {
        None | Some(DataType::Fp32) => Ok(()),
        Some(other) => Err(EngineError::Unsupported(format!(
            "communication_data_type \"{}\": gradients are reduced in fp32; remove the key or set it to \"fp32\"",
            other.name()
        ))),
    }
}

/// ZeRO-Offload and ZeRO-Infinity move tensors from an accelerator to host memory or NVMe. This engine trains in
/// host memory, so `"device": "cpu"` (or `"none"`) is where everything already is and changes nothing; NVMe
/// offload is not implemented and is refused by name.
fn check_offload(config: &DeepSpeedConfig) -> Result<(), EngineError> {
    use rustspeed_config::OffloadDevice;
    let z = &config.zero_optimization;
    let devices = [
        ("offload_optimizer", z.offload_optimizer.as_ref().map(|o| o.device)),
        ("offload_param", z.offload_param.as_ref().map(|o| o.device)),
    ];
    match devices.iter().find(|(_, d)| *d == Some(OffloadDevice::Nvme)) {
        Some((key, _)) => Err(EngineError::Unsupported(format!(
            "zero_optimization.{key}.device \"nvme\" (ZeRO-Infinity); this engine keeps its state in host memory — use \"cpu\" or remove the block"
        ))),
        None => Ok(()),
    }
}

/// DeepSpeed's rule for optimizers under ZeRO: Adam-family (and Lion) are tested, others need
/// `zero_allow_untested_optimizer`. Lamb's per-tensor trust ratio needs whole tensors, which a partition cuts,
/// so rustspeed refuses it under ZeRO.
fn check_zero_optimizer(rule: &dyn UpdateRule, config: &DeepSpeedConfig) -> Result<(), EngineError> {
    if rule.needs_whole_tensors() {
        return Err(EngineError::Unsupported(format!(
            "{} with ZeRO stages 1-3 (its update needs whole tensors, which a partition cuts); use stage 0 or another optimizer",
            rule.name()
        )));
    }
    match rule.tested_with_zero() || config.zero_allow_untested_optimizer {
        true => Ok(()),
        false => Err(EngineError::Config(
            "You are using an untested ZeRO Optimizer. Please add <\"zero_allow_untested_optimizer\": true> in the configuration file to use it.".into(),
        )),
    }
}

/// The update rule of an `optimizer` block: the config's hyperparameters (with DeepSpeed's defaults) in the
/// rule's own types. The one place a config `type` meets its rule.
pub fn rule_of(opt: &OptimizerConfig) -> Box<dyn UpdateRule> {
    match opt {
        OptimizerConfig::Adam(c) => Box::new(AdamHyper {
            lr: c.lr as f32,
            beta1: c.betas[0] as f32,
            beta2: c.betas[1] as f32,
            eps: c.eps as f32,
            weight_decay: c.weight_decay as f32,
            bias_correction: c.bias_correction,
            adam_w_mode: c.adam_w_mode,
        }),
        OptimizerConfig::Lamb(c) => Box::new(LambHyper {
            lr: c.lr as f32,
            beta1: c.betas[0] as f32,
            beta2: c.betas[1] as f32,
            eps: c.eps as f32,
            eps_inside_sqrt: c.eps_inside_sqrt,
            weight_decay: c.weight_decay as f32,
            bias_correction: c.bias_correction,
            max_coeff: c.max_coeff as f32,
            min_coeff: c.min_coeff as f32,
        }),
        OptimizerConfig::Lion(c) => Box::new(LionHyper {
            lr: c.lr as f32,
            beta1: c.betas[0] as f32,
            beta2: c.betas[1] as f32,
            weight_decay: c.weight_decay as f32,
        }),
        OptimizerConfig::Sgd(c) => Box::new(SgdHyper {
            lr: c.lr as f32,
            momentum: c.momentum as f32,
            dampening: c.dampening as f32,
            nesterov: c.nesterov,
            weight_decay: c.weight_decay as f32,
        }),
    }
}

fn warmup_type(w: rustspeed_config::WarmupType) -> WarmupType {
    match w {
        rustspeed_config::WarmupType::Log => WarmupType::Log,
        rustspeed_config::WarmupType::Linear => WarmupType::Linear,
    }
}

/// The schedule of a `scheduler` block; step counts become the schedule's f64 arithmetic.
fn schedule_of(s: &SchedulerConfig) -> Result<LrSchedule, EngineError> {
    let schedule = match s {
        SchedulerConfig::WarmupLR(c) => LrSchedule::WarmupLR {
            warmup_min_lr: c.warmup_min_lr,
            warmup_max_lr: c.warmup_max_lr,
            warmup_num_steps: c.warmup_num_steps as f64,
            warmup_type: warmup_type(c.warmup_type),
        },
        SchedulerConfig::WarmupDecayLR(c) => LrSchedule::WarmupDecayLR {
            total_num_steps: c.total_num_steps as f64,
            warmup_min_lr: c.warmup.warmup_min_lr,
            warmup_max_lr: c.warmup.warmup_max_lr,
            warmup_num_steps: c.warmup.warmup_num_steps as f64,
            warmup_type: warmup_type(c.warmup.warmup_type),
        },
        SchedulerConfig::WarmupCosineLR(c) => LrSchedule::WarmupCosineLR {
            total_num_steps: c.total_num_steps as f64,
            warmup_min_ratio: c.warmup_min_ratio,
            warmup_num_steps: c.warmup_num_steps as f64,
            cos_min_ratio: c.cos_min_ratio,
            warmup_type: warmup_type(c.warmup_type),
        },
        SchedulerConfig::OneCycle(c) => LrSchedule::OneCycle {
            cycle_min_lr: c.cycle_min_lr,
            cycle_max_lr: c.cycle_max_lr,
            decay_lr_rate: c.decay_lr_rate,
            cycle_first_step_size: c.cycle_first_step_size as f64,
            cycle_second_step_size: c.cycle_second_step_size.map(|v| v as f64),
            decay_step_size: c.decay_step_size as f64,
            cycle_momentum: c.cycle_momentum,
            cycle_min_mom: c.cycle_min_mom,
            cycle_max_mom: c.cycle_max_mom,
            decay_mom_rate: c.decay_mom_rate,
        },
        SchedulerConfig::LRRangeTest(c) => LrSchedule::LRRangeTest {
            lr_range_test_min_lr: c.lr_range_test_min_lr,
            lr_range_test_step_size: c.lr_range_test_step_size as f64,
            lr_range_test_step_rate: c.lr_range_test_step_rate,
            lr_range_test_staircase: c.lr_range_test_staircase,
        },
    };
    schedule.validate().map_err(|e| EngineError::Config(format!("scheduler {}: {e}", s.type_name())))?;
    Ok(schedule)
}
