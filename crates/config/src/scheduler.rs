//! The `scheduler` block (semantics §1.6): `{"type": <name>, "params": {...}}`, DeepSpeed's five LR schedules
//! with their constructor defaults. No block means a constant learning rate (the optimizer's `lr`).
//!
//! `warmup_num_steps` is stored as DeepSpeed uses it: `max(2, given)` (DeepSpeed clamps it so that `ln(N) > 0`
//! in the log warm-up). Learning rates are single numbers: DeepSpeed's per-parameter-group lists are rejected.

use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::reader::{closest, Block, Bound};

/// The scheduler types rustspeed implements (DeepSpeed's `deepspeed.runtime.lr_schedules`).
pub const SUPPORTED_SCHEDULERS: [&str; 5] = ["WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"];

/// `torch.optim.lr_scheduler` classes (torch 2.15) DeepSpeed would fall back to, which rustspeed does not implement.
const TORCH_SCHEDULERS: [&str; 15] = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
];

/// DeepSpeed clamps `warmup_num_steps` to at least this (`max(2, warmup_num_steps)`).
pub const MIN_WARMUP_NUM_STEPS: u64 = 2;

#[derive(Clone, Debug, PartialEq)]
pub enum SchedulerConfig {
    WarmupLR(WarmupLrConfig),
    WarmupDecayLR(WarmupDecayLrConfig),
    WarmupCosineLR(WarmupCosineLrConfig),
    OneCycle(OneCycleConfig),
    LRRangeTest(LrRangeTestConfig),
}

/// The warm-up curve: `ln(t+1)/ln(N)` (log) or `t/N` (linear).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmupType {
    Log,
    Linear,
}

impl WarmupType {
    pub fn name(self) -> &'static str {
        match self {
            WarmupType::Log => "log",
            WarmupType::Linear => "linear",
        }
    }
}

/// `WarmupLR`: warm up from `warmup_min_lr` to `warmup_max_lr` over `warmup_num_steps`, then stay.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupLrConfig {
    /// `warmup_min_lr` (default 0.0).
    pub warmup_min_lr: f64,
    /// `warmup_max_lr` (default 0.001).
    pub warmup_max_lr: f64,
    /// `warmup_num_steps` (default 1000), stored as `max(2, given)`.
    pub warmup_num_steps: u64,
    /// `warmup_type` (default "log"; or "linear").
    pub warmup_type: WarmupType,
}

impl Default for WarmupLrConfig {
    fn default() -> Self {
        WarmupLrConfig {
            warmup_min_lr: 0.0,
            warmup_max_lr: 0.001,
            warmup_num_steps: 1000,
            warmup_type: WarmupType::Log,
        }
    }
}

/// `WarmupDecayLR`: `WarmupLR`, then linear decay to 0 at `total_num_steps`.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupDecayLrConfig {
    /// `total_num_steps` (required).
    pub total_num_steps: u64,
    /// The warm-up keys, with `WarmupLR`'s defaults.
    pub warmup: WarmupLrConfig,
}

/// `WarmupCosineLR`: ratios of the optimizer's initial lr; warm-up then cosine decay to `cos_min_ratio`.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosineLrConfig {
    /// `total_num_steps` (required; must exceed `warmup_num_steps`).
    pub total_num_steps: u64,
    /// `warmup_min_ratio` (default 0.0).
    pub warmup_min_ratio: f64,
    /// `warmup_num_steps` (default 1000), stored as `max(2, given)`.
    pub warmup_num_steps: u64,
    /// `cos_min_ratio` (default 0.0001).
    pub cos_min_ratio: f64,
    /// `warmup_type` (default "log"; or "linear").
    pub warmup_type: WarmupType,
}

/// `OneCycle`: one triangular lr cycle (and inverse momentum cycle), then decay.
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleConfig {
    /// `cycle_min_lr` (required).
    pub cycle_min_lr: f64,
    /// `cycle_max_lr` (required).
    pub cycle_max_lr: f64,
    /// `decay_lr_rate` (default 0.0).
    pub decay_lr_rate: f64,
    /// `cycle_first_step_size` (default 2000).
    pub cycle_first_step_size: u64,
    /// `cycle_second_step_size` (default None = `cycle_first_step_size`).
    pub cycle_second_step_size: Option<u64>,
    /// `cycle_first_stair_count` (default 0; stored, unused by DeepSpeed).
    pub cycle_first_stair_count: u64,
    /// `cycle_second_stair_count` (default None; stored, unused by DeepSpeed).
    pub cycle_second_stair_count: Option<u64>,
    /// `decay_step_size` (default 0).
    pub decay_step_size: u64,
    /// `cycle_momentum` (default true): cycle β1 (DeepSpeed then writes β2 = 0.99).
    pub cycle_momentum: bool,
    /// `cycle_min_mom` (default 0.8).
    pub cycle_min_mom: f64,
    /// `cycle_max_mom` (default 0.9).
    pub cycle_max_mom: f64,
    /// `decay_mom_rate` (default 0.0).
    pub decay_mom_rate: f64,
}

/// `LRRangeTest`: lr grows from `lr_range_test_min_lr` by `step_rate` every `step_size` steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LrRangeTestConfig {
    /// `lr_range_test_min_lr` (default 1e-3).
    pub lr_range_test_min_lr: f64,
    /// `lr_range_test_step_size` (default 2000).
    pub lr_range_test_step_size: u64,
    /// `lr_range_test_step_rate` (default 1.0).
    pub lr_range_test_step_rate: f64,
    /// `lr_range_test_staircase` (default false).
    pub lr_range_test_staircase: bool,
}

impl Default for LrRangeTestConfig {
    fn default() -> Self {
        LrRangeTestConfig {
            lr_range_test_min_lr: 1e-3,
            lr_range_test_step_size: 2000,
            lr_range_test_step_rate: 1.0,
            lr_range_test_staircase: false,
        }
    }
}

const SCHEDULER_EXAMPLE: &str = r#""scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.001}}"#;
const PARAMS_EXAMPLE: &str = r#""params": {"warmup_num_steps": 1000}"#;

impl SchedulerConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            SchedulerConfig::WarmupLR(_) => "WarmupLR",
            SchedulerConfig::WarmupDecayLR(_) => "WarmupDecayLR",
            SchedulerConfig::WarmupCosineLR(_) => "WarmupCosineLR",
            SchedulerConfig::OneCycle(_) => "OneCycle",
            SchedulerConfig::LRRangeTest(_) => "LRRangeTest",
        }
    }

    pub(crate) fn parse(value: &Value) -> Result<Self, ConfigError> {
        let block = Block::nested("scheduler".to_string(), value, SCHEDULER_EXAMPLE).map_err(|e| match e {
            ConfigError::InvalidValue { path, value, rule } => ConfigError::InvalidValue {
                path,
                value,
                rule: format!("{rule} (leave the scheduler block out for a constant learning rate)"),
            },
            other => other,
        })?;
        let name = block.opt_string("type")?.ok_or_else(|| ConfigError::MissingKey {
            path: block.path_of("type"),
            context: format!("in the scheduler block, e.g. {SCHEDULER_EXAMPLE}"),
        })?;
        let kind = supported_kind(&block, name)?;
        let no_params = json!({});
        let params = match block.block("params", PARAMS_EXAMPLE)? {
            Some(params) => params,
            None => Block::nested(block.path_of("params"), &no_params, PARAMS_EXAMPLE)?,
        };
        if params.opt_i64("last_batch_iteration", i64::MIN, i64::MAX)?.is_some_and(|t| t != -1) {
            return Err(ConfigError::Unsupported {
                path: params.path_of("last_batch_iteration"),
                reason: "rustspeed restores the schedule position from its checkpoints; leave it out or -1".into(),
            });
        }
        let config = match kind {
            "WarmupLR" => SchedulerConfig::WarmupLR(parse_warmup(&params)?),
            "WarmupDecayLR" => SchedulerConfig::WarmupDecayLR(WarmupDecayLrConfig {
                total_num_steps: required_steps(&params, kind)?,
                warmup: parse_warmup(&params)?,
            }),
            "WarmupCosineLR" => SchedulerConfig::WarmupCosineLR(parse_cosine(&params)?),
            "OneCycle" => SchedulerConfig::OneCycle(parse_one_cycle(&params)?),
            _ => SchedulerConfig::LRRangeTest(parse_range_test(&params)?),
        };
        params.finish()?;
        block.finish()?;
        Ok(config)
    }

    pub(crate) fn to_json(&self) -> Value {
        let params = match self {
            SchedulerConfig::WarmupLR(c) => warmup_json(c),
            SchedulerConfig::WarmupDecayLR(c) => {
                let mut params = warmup_json(&c.warmup);
                params["total_num_steps"] = json!(c.total_num_steps);
                params
            }
            SchedulerConfig::WarmupCosineLR(c) => json!({
                "total_num_steps": c.total_num_steps, "warmup_min_ratio": c.warmup_min_ratio,
                "warmup_num_steps": c.warmup_num_steps, "cos_min_ratio": c.cos_min_ratio,
                "warmup_type": c.warmup_type.name(),
            }),
            SchedulerConfig::OneCycle(c) => json!({
                "cycle_min_lr": c.cycle_min_lr, "cycle_max_lr": c.cycle_max_lr, "decay_lr_rate": c.decay_lr_rate,
                "cycle_first_step_size": c.cycle_first_step_size, "cycle_second_step_size": c.cycle_second_step_size,
                "cycle_first_stair_count": c.cycle_first_stair_count,
                "cycle_second_stair_count": c.cycle_second_stair_count, "decay_step_size": c.decay_step_size,
                "cycle_momentum": c.cycle_momentum, "cycle_min_mom": c.cycle_min_mom, "cycle_max_mom": c.cycle_max_mom,
                "decay_mom_rate": c.decay_mom_rate,
            }),
            SchedulerConfig::LRRangeTest(c) => json!({
                "lr_range_test_min_lr": c.lr_range_test_min_lr, "lr_range_test_step_size": c.lr_range_test_step_size,
                "lr_range_test_step_rate": c.lr_range_test_step_rate,
                "lr_range_test_staircase": c.lr_range_test_staircase,
            }),
        };
        json!({"type": self.type_name(), "params": params})
    }
}

fn warmup_json(c: &WarmupLrConfig) -> Value {
    json!({
        "warmup_min_lr": c.warmup_min_lr, "warmup_max_lr": c.warmup_max_lr,
        "warmup_num_steps": c.warmup_num_steps, "warmup_type": c.warmup_type.name(),
    })
}

/// Checks the `type` (case-sensitive, as DeepSpeed's `hasattr(lr_schedules, name)`).
fn supported_kind(block: &Block<'_>, name: &str) -> Result<&'static str, ConfigError> {
    if let Some(kind) = SUPPORTED_SCHEDULERS.iter().find(|n| **n == name) {
        return Ok(kind);
    }
    let path = block.path_of("type");
    let listed = SUPPORTED_SCHEDULERS.join(", ");
    if TORCH_SCHEDULERS.contains(&name) {
        return Err(ConfigError::Unsupported {
            path,
            reason: format!("torch.optim.lr_scheduler.{name} is not implemented; rustspeed supports {listed}"),
        });
    }
    let mut message = format!("DeepSpeed does not recognize LR scheduler {name}; rustspeed supports {listed}");
    if let Some(suggestion) = closest(name, SUPPORTED_SCHEDULERS) {
        message.push_str(&format!(" (did you mean `{suggestion}`? scheduler names are case-sensitive)"));
    } else {
        message.push_str("; leave the scheduler block out for a constant learning rate");
    }
    Err(ConfigError::Rejected { path, message })
}

/// A learning rate: one number (DeepSpeed also takes a per-parameter-group list, which rustspeed does not).
fn lr_value(params: &Block<'_>, key: &'static str, default: f64) -> Result<f64, ConfigError> {
    if let Some(Value::Array(_)) = params.value(key, "a number")? {
        return Err(ConfigError::Unsupported {
            path: params.path_of(key),
            reason: "per-parameter-group lists; give one number".to_string(),
        });
    }
    params.f64_or(key, default, Bound::AtLeast(0.0))
}

fn required_steps(params: &Block<'_>, kind: &str) -> Result<u64, ConfigError> {
    params.opt_u64("total_num_steps", 1)?.ok_or_else(|| ConfigError::MissingKey {
        path: params.path_of("total_num_steps"),
        context: format!("for scheduler {kind}"),
    })
}

fn warmup_steps(params: &Block<'_>) -> Result<u64, ConfigError> {
    Ok(params.u64_or("warmup_num_steps", 1000, 0)?.max(MIN_WARMUP_NUM_STEPS))
}

fn warmup_type(params: &Block<'_>) -> Result<WarmupType, ConfigError> {
    Ok(match params.opt_choice("warmup_type", &["log", "linear"], false)? {
        Some("linear") => WarmupType::Linear,
        _ => WarmupType::Log,
    })
}

fn parse_warmup(params: &Block<'_>) -> Result<WarmupLrConfig, ConfigError> {
    let defaults = WarmupLrConfig::default();
    Ok(WarmupLrConfig {
        warmup_min_lr: lr_value(params, "warmup_min_lr", defaults.warmup_min_lr)?,
        warmup_max_lr: lr_value(params, "warmup_max_lr", defaults.warmup_max_lr)?,
        warmup_num_steps: warmup_steps(params)?,
        warmup_type: warmup_type(params)?,
    })
}

fn parse_cosine(params: &Block<'_>) -> Result<WarmupCosineLrConfig, ConfigError> {
    let config = WarmupCosineLrConfig {
        total_num_steps: required_steps(params, "WarmupCosineLR")?,
        warmup_min_ratio: params.f64_or("warmup_min_ratio", 0.0, Bound::Within(0.0, 1.0))?,
        warmup_num_steps: warmup_steps(params)?,
        cos_min_ratio: params.f64_or("cos_min_ratio", 0.0001, Bound::Within(0.0, 1.0))?,
        warmup_type: warmup_type(params)?,
    };
    if config.total_num_steps <= config.warmup_num_steps {
        return Err(ConfigError::InvalidValue {
            path: params.path_of("total_num_steps"),
            value: config.total_num_steps.to_string(),
            rule: format!(
                "must be greater than warmup_num_steps ({}): the cosine phase lasts total_num_steps - \
                 warmup_num_steps steps and DeepSpeed divides by that length",
                config.warmup_num_steps
            ),
        });
    }
    Ok(config)
}

fn required_lr(params: &Block<'_>, key: &'static str) -> Result<f64, ConfigError> {
    if params.value(key, "a number")?.is_none() {
        return Err(ConfigError::MissingKey { path: params.path_of(key), context: "for scheduler OneCycle".into() });
    }
    lr_value(params, key, 0.0)
}

fn parse_one_cycle(params: &Block<'_>) -> Result<OneCycleConfig, ConfigError> {
    let momentum = Bound::WithinOpen(0.0, 1.0);
    Ok(OneCycleConfig {
        cycle_min_lr: required_lr(params, "cycle_min_lr")?,
        cycle_max_lr: required_lr(params, "cycle_max_lr")?,
        decay_lr_rate: params.f64_or("decay_lr_rate", 0.0, Bound::AtLeast(0.0))?,
        // Both halves at least 1 step: DeepSpeed divides by the cycle length and by `first/total - 1`.
        cycle_first_step_size: params.u64_or("cycle_first_step_size", 2000, 1)?,
        cycle_second_step_size: params.opt_u64("cycle_second_step_size", 1)?,
        cycle_first_stair_count: params.u64_or("cycle_first_stair_count", 0, 0)?,
        cycle_second_stair_count: params.opt_u64("cycle_second_stair_count", 0)?,
        decay_step_size: params.u64_or("decay_step_size", 0, 0)?,
        cycle_momentum: params.bool_or("cycle_momentum", true)?,
        cycle_min_mom: params.f64_or("cycle_min_mom", 0.8, momentum)?,
        cycle_max_mom: params.f64_or("cycle_max_mom", 0.9, momentum)?,
        decay_mom_rate: params.f64_or("decay_mom_rate", 0.0, Bound::AtLeast(0.0))?,
    })
}

fn parse_range_test(params: &Block<'_>) -> Result<LrRangeTestConfig, ConfigError> {
    let defaults = LrRangeTestConfig::default();
    Ok(LrRangeTestConfig {
        lr_range_test_min_lr: lr_value(params, "lr_range_test_min_lr", defaults.lr_range_test_min_lr)?,
        lr_range_test_step_size: params.u64_or("lr_range_test_step_size", defaults.lr_range_test_step_size, 1)?,
        lr_range_test_step_rate: params.f64_or(
            "lr_range_test_step_rate",
            defaults.lr_range_test_step_rate,
            Bound::AtLeast(0.0),
        )?,
        lr_range_test_staircase: params.bool_or("lr_range_test_staircase", defaults.lr_range_test_staircase)?,
    })
}
