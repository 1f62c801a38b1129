//! The `fp16` and `bf16` blocks (semantics §1.4).

use serde_json::{json, Map, Value};

use crate::error::ConfigError;
use crate::reader::{Block, Bound};

/// The dynamic-scaler keys. DeepSpeed builds its dynamic-scaler arguments only when at least one of them is in
/// the `fp16` block; otherwise each optimizer wrapper uses its own hard-coded defaults (semantics §2.4).
const DYNAMIC_KEYS: [&str; 5] =
    ["initial_scale_power", "loss_scale_window", "hysteresis", "consecutive_hysteresis", "min_loss_scale"];

/// Largest accepted `initial_scale_power`: the initial scale `2^power` must be a finite fp32 number.
const MAX_INITIAL_SCALE_POWER: i64 = 127;

/// The `fp16` block. DeepSpeed reads it only when `enabled`; rustspeed validates it either way.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp16Config {
    /// `enabled` (default false): 16-bit model copy with fp32 master weights and loss scaling.
    pub enabled: bool,
    /// `auto_cast` (default false): cast floating inputs of forward to fp16.
    pub auto_cast: bool,
    /// `loss_scale` (default 0.0): 0 = dynamic loss scaling, > 0 = this static scale.
    pub loss_scale: f64,
    /// `initial_scale_power` (default 16): the dynamic scale starts at `2^initial_scale_power`.
    pub initial_scale_power: u32,
    /// `loss_scale_window` (default 1000): overflow-free steps between two doublings of the scale.
    pub loss_scale_window: u64,
    /// `hysteresis` (default 2): overflows tolerated before the scale is halved.
    pub hysteresis: u64,
    /// `consecutive_hysteresis` (default false): refill the hysteresis on every overflow-free step.
    pub consecutive_hysteresis: bool,
    /// `min_loss_scale` (default 1.0): the scale never goes below this.
    pub min_loss_scale: f64,
    /// `fp16_master_weights_and_grads` (default false): keep master weights and gradients in fp16 (DeepSpeed:
    /// ZeRO stage 2 only).
    pub fp16_master_weights_and_grads: bool,
    /// Whether any of `initial_scale_power`, `loss_scale_window`, `hysteresis`, `consecutive_hysteresis`,
    /// `min_loss_scale` was given (a value other than `null`/`"auto"`). When false, DeepSpeed's wrappers use
    /// their own scaler defaults (ZeRO: initial scale 2^32, hysteresis 1; semantics §2.4), not the values above.
    pub dynamic_keys_given: bool,
}

impl Default for Fp16Config {
    fn default() -> Self {
        Fp16Config {
            enabled: false,
            auto_cast: false,
            loss_scale: 0.0,
            initial_scale_power: 16,
            loss_scale_window: 1000,
            hysteresis: 2,
            consecutive_hysteresis: false,
            min_loss_scale: 1.0,
            fp16_master_weights_and_grads: false,
            dynamic_keys_given: false,
        }
    }
}

impl Fp16Config {
    /// True when the loss scale is dynamic (`loss_scale == 0`), DeepSpeed's `dynamic_loss_scale()`.
    pub fn is_dynamic(&self) -> bool {
        self.loss_scale == 0.0
    }

    pub(crate) fn parse(value: &Value) -> Result<Self, ConfigError> {
        let block = Block::nested("fp16".to_string(), value, &shape_example("fp16", value))?;
        let defaults = Fp16Config::default();
        let mut dynamic_keys_given = false;
        for key in DYNAMIC_KEYS {
            dynamic_keys_given |= block.value(key, "a value")?.is_some();
        }
        let config = Fp16Config {
            enabled: block.bool_or("enabled", defaults.enabled)?,
            auto_cast: block.bool_or("auto_cast", defaults.auto_cast)?,
            loss_scale: block.f64_or("loss_scale", defaults.loss_scale, Bound::AtLeast(0.0))?,
            initial_scale_power: block
                .opt_i64("initial_scale_power", 0, MAX_INITIAL_SCALE_POWER)?
                .map_or(defaults.initial_scale_power, |power| u32::try_from(power).unwrap_or(u32::MAX)),
            loss_scale_window: block.u64_or("loss_scale_window", defaults.loss_scale_window, 1)?,
            hysteresis: block.u64_or("hysteresis", defaults.hysteresis, 1)?,
            consecutive_hysteresis: block.bool_or("consecutive_hysteresis", defaults.consecutive_hysteresis)?,
            min_loss_scale: block.f64_or("min_loss_scale", defaults.min_loss_scale, Bound::Above(0.0))?,
            fp16_master_weights_and_grads: block
                .bool_or("fp16_master_weights_and_grads", defaults.fp16_master_weights_and_grads)?,
            dynamic_keys_given,
        };
        block.finish()?;
        Ok(config)
    }

    /// Writes every field except the dynamic-scaler keys when none was given, so that parsing the output
    /// reproduces `dynamic_keys_given`.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("enabled".into(), json!(self.enabled));
        map.insert("auto_cast".into(), json!(self.auto_cast));
        map.insert("loss_scale".into(), json!(self.loss_scale));
        if self.dynamic_keys_given {
            map.insert("initial_scale_power".into(), json!(self.initial_scale_power));
            map.insert("loss_scale_window".into(), json!(self.loss_scale_window));
            map.insert("hysteresis".into(), json!(self.hysteresis));
            map.insert("consecutive_hysteresis".into(), json!(self.consecutive_hysteresis));
            map.insert("min_loss_scale".into(), json!(self.min_loss_scale));
        }
        map.insert("fp16_master_weights_and_grads".into(), json!(self.fp16_master_weights_and_grads));
        Value::Object(map)
    }
}

/// The `bf16` block (legacy name `bfloat16`). With bf16 DeepSpeed uses no loss scaling and never skips a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bf16Config {
    /// `enabled` (default false): bf16 model copy with fp32 master weights.
    pub enabled: bool,
    /// `immediate_grad_update` (default false): DeepSpeed's BF16 optimizer applies gradients as they arrive.
    pub immediate_grad_update: bool,
}

impl Bf16Config {
    /// `key` is `bf16` or its legacy alias `bfloat16`.
    pub(crate) fn parse(key: &str, value: &Value) -> Result<Self, ConfigError> {
        let block = Block::nested(key.to_string(), value, &shape_example(key, value))?;
        let config = Bf16Config {
            enabled: block.bool_or("enabled", false)?,
            immediate_grad_update: block.bool_or("immediate_grad_update", false)?,
        };
        block.finish()?;
        Ok(config)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"enabled": self.enabled, "immediate_grad_update": self.immediate_grad_update})
    }
}

/// The right shape for a precision block written as a bare value: `"fp16": true` → `"fp16": {"enabled": true}`.
fn shape_example(key: &str, value: &Value) -> String {
    let enabled = value.as_bool().unwrap_or(true);
    format!("\"{key}\": {{\"enabled\": {enabled}}}")
}
