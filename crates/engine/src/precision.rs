//! Mixed precision in the engine: which storage type the model copy uses, the fp16 loss scaler, and the fp32
//! master weights the optimizer updates (semantics reference §1.4, §2).
//!
//! The model copy (parameters, activations, gradients) is stored as the engine's element type `E`; the kernels
//! compute in fp32. In fp32 the parameters are the master weights; in fp16 and bf16 the optimizer updates a
//! separate fp32 copy of the rank's owned range and the 16-bit copy is rounded from it after every applied step.

use crate::error::EngineError;
use rustspeed_config::DeepSpeedConfig;
use rustspeed_kernels::cast::{cast_from_f32, load, Element};
use rustspeed_precision::{DynamicScaling, LossScaler, ScaleRule};
use serde_json::{json, Value};

/// The storage type a config asks for (`fp16.enabled`, `bf16.enabled`, else fp32). The caller picks the
/// engine's element type from it: `Engine::<f32>`, `Engine::<f16>` or `Engine::<bf16>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    Fp32,
    Fp16,
    Bf16,
}

impl StorageType {
    pub fn of(config: &DeepSpeedConfig) -> StorageType {
        match (config.fp16.enabled, config.bf16.enabled) {
            (true, _) => StorageType::Fp16,
            (false, true) => StorageType::Bf16,
            (false, false) => StorageType::Fp32,
        }
    }

    /// The type of a config name (`fp32`, `fp16`, `bf16`).
    pub fn from_name(name: &str) -> Option<StorageType> {
        [StorageType::Fp32, StorageType::Fp16, StorageType::Bf16].into_iter().find(|s| s.name() == name)
    }

    /// The config's name for it, as [`Element::NAME`].
    pub fn name(self) -> &'static str {
        match self {
            StorageType::Fp32 => "fp32",
            StorageType::Fp16 => "fp16",
            StorageType::Bf16 => "bf16",
        }
    }
}

/// The numeric regime of a run, chosen by [`crate::setup::Setup::choose`].
#[derive(Clone, Debug, PartialEq)]
pub enum Precision {
    /// fp32 storage: no master copy, no scaling; a non-finite gradient is an error.
    Fp32,
    /// bf16 storage over fp32 master weights: no loss scaling and no skipping (as DeepSpeed); a non-finite loss or
    /// gradient is an error.
    Bf16,
    /// fp16 storage over fp32 master weights with DeepSpeed's loss scaling: an overflow skips the step.
    Fp16(LossScaler),
}

impl Precision {
    /// The regime of `config`. `sharded`: ZeRO stage ≥ 1, whose dynamic scaler follows `DynamicLossScaler` (with
    /// hysteresis); stage 0 follows DeepSpeed's `FP16_Optimizer` rule with an Adam-family optimizer (`adam`), its
    /// `FP16_UnfusedOptimizer` otherwise (§2.4, §2.5).
    pub fn of(config: &DeepSpeedConfig, sharded: bool, adam: bool) -> Precision {
        match StorageType::of(config) {
            StorageType::Fp32 => Precision::Fp32,
            StorageType::Bf16 => Precision::Bf16,
            StorageType::Fp16 => {
                let c = &config.fp16;
                if !c.is_dynamic() {
                    return Precision::Fp16(LossScaler::fixed(c.loss_scale));
                }
                let rule = match (sharded, adam) {
                    (true, _) => ScaleRule::Zero,
                    (false, true) => ScaleRule::Fused,
                    (false, false) => ScaleRule::Unfused,
                };
                let settings = DynamicScaling::from_fp16_block(
                    rule,
                    c.dynamic_keys_given,
                    c.initial_scale_power,
                    c.loss_scale_window,
                    c.min_loss_scale,
                    c.hysteresis,
                    c.consecutive_hysteresis,
                );
                Precision::Fp16(LossScaler::dynamic(rule, settings))
            }
        }
    }

    pub fn storage(&self) -> StorageType {
        match self {
            Precision::Fp32 => StorageType::Fp32,
            Precision::Bf16 => StorageType::Bf16,
            Precision::Fp16(_) => StorageType::Fp16,
        }
    }

    /// The factor the loss is multiplied by before the backward (1 without loss scaling).
    pub fn loss_scale(&self) -> f64 {
        match self {
            Precision::Fp32 | Precision::Bf16 => 1.0,
            Precision::Fp16(scaler) => scaler.scale(),
        }
    }

    /// The scaler's state for a checkpoint manifest (`null` without loss scaling).
    pub fn scaler_json(&self) -> Value {
        match self {
            Precision::Fp32 | Precision::Bf16 => Value::Null,
            Precision::Fp16(LossScaler::Static { scale }) => json!({ "type": "static", "scale": scale }),
            Precision::Fp16(LossScaler::Dynamic {
                rule,
                settings,
                scale,
                iteration,
                last_overflow,
                hysteresis_left,
            }) => json!({
                "type": "dynamic",
                "rule": match rule {
                    ScaleRule::Zero => "zero",
                    ScaleRule::Fused => "fused",
                    ScaleRule::Unfused => "unfused",
                },
                "initial_scale": settings.initial_scale,
                "window": settings.window,
                "min_scale": settings.min_scale,
                "hysteresis": settings.hysteresis,
                "consecutive_hysteresis": settings.consecutive_hysteresis,
                "scale": scale,
                "iteration": iteration,
                "last_overflow": last_overflow,
                "hysteresis_left": hysteresis_left,
            }),
        }
    }

    /// Restores the scaler's state from [`Precision::scaler_json`]. A dynamic scaler must have the configured
    /// settings (rule, initial scale, window, minimum, hysteresis) and its state carries over; a static scaler's
    /// scale is the checkpoint's, as DeepSpeed restores `cur_scale` from the optimizer state.
    pub fn restore_scaler(&mut self, saved: &Value) -> Result<(), String> {
        let Precision::Fp16(scaler) = self else {
            return match saved.is_null() {
                true => Ok(()),
                false => Err("it holds an fp16 loss scaler but this run is not fp16".into()),
            };
        };
        let configured = Precision::Fp16(scaler.clone()).scaler_json();
        let same_settings =
            ["type", "rule", "initial_scale", "window", "min_scale", "hysteresis", "consecutive_hysteresis"]
                .iter()
                .all(|k| configured[*k] == saved[*k]);
        if !same_settings {
            return Err(format!("its loss scaler {saved} differs from the configured one {configured}"));
        }
        let num = |k: &str| saved[k].as_f64().ok_or_else(|| format!("loss_scaler.{k} is missing"));
        // The state is checked against what the scaler can reach: a finite scale not below its minimum, an
        // iteration a run can count to (without overflowing as it advances), the last overflow before it, no more
        // hysteresis left than configured.
        let min_scale = configured["min_scale"].as_f64().unwrap_or(0.0);
        let scale_value = num("scale")?;
        if !(scale_value.is_finite() && scale_value > 0.0 && scale_value >= min_scale) {
            return Err(format!("loss_scaler.scale {scale_value} is not a finite scale of at least {min_scale}"));
        }
        match scaler {
            LossScaler::Static { scale } => *scale = scale_value,
            LossScaler::Dynamic { scale, iteration, last_overflow, hysteresis_left, .. } => {
                let it = saved["iteration"].as_u64().filter(|&i| i <= MAX_SCALER_ITERATION);
                let it = it.ok_or("loss_scaler.iteration is missing or out of range")?;
                let last = saved["last_overflow"].as_i64().filter(|&l| l >= -1 && l < it as i64);
                let last = last.ok_or("loss_scaler.last_overflow is missing or not before its iteration")?;
                let allowed = configured["hysteresis"].as_u64().unwrap_or(u64::MAX);
                let left = saved["hysteresis_left"].as_u64().filter(|&h| h <= allowed);
                let left = left.ok_or("loss_scaler.hysteresis_left is missing or above the configured hysteresis")?;
                (*scale, *iteration, *last_overflow, *hysteresis_left) = (scale_value, it, last, left);
            }
        }
        Ok(())
    }
}

/// The largest scaler iteration a checkpoint may hold (as the engine's counters: no run takes 2^53 steps).
const MAX_SCALER_ITERATION: u64 = 1 << 53;

/// Checks that the engine's element type is the one the config asks for.
pub(crate) fn check_storage<E: Element>(precision: &Precision) -> Result<(), EngineError> {
    match precision.storage().name() == E::NAME {
        true => Ok(()),
        false => Err(EngineError::Config(format!(
            "the engine stores {} but the config asks for {} (build the engine with the config's StorageType)",
            E::NAME,
            precision.storage().name()
        ))),
    }
}

/// The fp32 weights the optimizer updates: in fp32 the parameters themselves; for 16-bit storage an fp32 copy of
/// the rank's owned range, from which the 16-bit parameters are rounded after every applied step.
pub(crate) struct MasterWeights {
    /// Empty in fp32.
    fp32: Vec<f32>,
}

impl MasterWeights {
    /// Masters of `owned_params` (the rank's owned range of the model copy).
    pub(crate) fn new<E: Element>(owned_params: &[E]) -> Self {
        let fp32 = if E::IS_F32 { Vec::new() } else { load(owned_params).into_owned() };
        MasterWeights { fp32 }
    }

    /// The separate fp32 copy (empty in fp32).
    pub(crate) fn separate(&self) -> &[f32] {
        &self.fp32
    }

    /// Replaces the separate copy (from a checkpoint); `values` covers the owned range.
    pub(crate) fn restore(&mut self, values: Vec<f32>) {
        assert_eq!(values.len(), self.fp32.len(), "master weights of another length");
        self.fp32 = values;
    }

    /// Runs `update` on the fp32 weights of the owned range and brings the model copy `owned_params` up to date.
    pub(crate) fn update<E: Element>(&mut self, owned_params: &mut [E], update: impl FnOnce(&mut [f32])) {
        match E::as_f32_mut(owned_params) {
            Some(params) => update(params),
            None => {
                update(&mut self.fp32);
                cast_from_f32(owned_params, &self.fp32);
            }
        }
    }
}
