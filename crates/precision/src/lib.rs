//! Mixed-precision state machines. [`LossScaler`] is DeepSpeed's fp16 loss scaling as a pure state machine: it
//! is told once per accumulation boundary whether the gradients overflowed and answers whether to skip the step
//! and what the scale becomes. No I/O, no clocks, no ranks (the engine agrees on `overflow` across ranks first).
//!
//! Two rules, as DeepSpeed has two (semantics reference §2):
//! - [`ScaleRule::Zero`]: `DynamicLossScaler` of the ZeRO optimizers, with hysteresis ("delayed shift") and
//!   consecutive hysteresis;
//! - [`ScaleRule::Fused`]: `FP16_Optimizer._update_scale` of the non-ZeRO fp16 wrapper: halve on every overflow,
//!   double after `window` stable steps.
//!
//! One deliberate difference from DeepSpeed: an overflow at the minimum scale is an error under both rules
//! (DeepSpeed's fused wrapper skips forever, deepspeedai/DeepSpeed#697), whose message says what to try.

use std::fmt;

/// Which of DeepSpeed's update rules applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRule {
    /// ZeRO stages 1-3 (`DynamicLossScaler`).
    Zero,
    /// No ZeRO with an Adam-family optimizer (`FP16_Optimizer`).
    Fused,
    /// No ZeRO with any other optimizer (`FP16_UnfusedOptimizer`): the same update as `Fused`, but a default
    /// minimum scale of 0.25 (§2.4).
    Unfused,
}

/// Settings of a dynamic scaler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicScaling {
    pub initial_scale: f64,
    /// Good steps between doublings (`loss_scale_window`).
    pub window: u64,
    pub min_scale: f64,
    /// Overflows tolerated before the scale halves (`hysteresis`, DeepSpeed's `delayed_shift`); `Zero` only.
    pub hysteresis: u64,
    /// Refill the hysteresis on every good step (`consecutive_hysteresis`); `Zero` only.
    pub consecutive_hysteresis: bool,
}

impl DynamicScaling {
    /// The settings DeepSpeed uses for an fp16 block. `dynamic_keys_given`: whether any of
    /// `initial_scale_power`, `loss_scale_window`, `min_loss_scale`, `hysteresis`, `consecutive_hysteresis`
    /// appears in it; if none does, each wrapper falls back to its own defaults (§2.4): ZeRO 2^32 / 1000 / 1 /
    /// hysteresis 1, the fused wrapper 2^16 / 1000 / 1.
    pub fn from_fp16_block(
        rule: ScaleRule,
        dynamic_keys_given: bool,
        initial_scale_power: u32,
        loss_scale_window: u64,
        min_loss_scale: f64,
        hysteresis: u64,
        consecutive_hysteresis: bool,
    ) -> DynamicScaling {
        match (dynamic_keys_given, rule) {
            (true, _) => DynamicScaling {
                initial_scale: 2f64.powi(initial_scale_power as i32),
                window: loss_scale_window,
                min_scale: min_loss_scale,
                hysteresis,
                consecutive_hysteresis,
            },
            (false, rule) => {
                // The wrappers' hard-coded defaults (§2.4): initial scale, minimum scale; window 1000, no hysteresis.
                let (power, min_scale) = match rule {
                    ScaleRule::Zero => (32, 1.0),
                    ScaleRule::Fused => (16, 1.0),
                    ScaleRule::Unfused => (16, 0.25),
                };
                DynamicScaling {
                    initial_scale: 2f64.powi(power),
                    window: 1000,
                    min_scale,
                    hysteresis: 1,
                    consecutive_hysteresis: false,
                }
            }
        }
    }
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleEvent {
    /// No overflow, scale unchanged.
    Kept,
    /// No overflow and the window completed: the scale doubled.
    Grew { to: f64 },
    /// Overflow absorbed by hysteresis: step skipped, scale unchanged.
    HysteresisSpent { remaining: u64 },
    /// Overflow: step skipped, scale halved (not below the minimum).
    Reduced { from: f64, to: f64 },
    /// Overflow under a static scale: step skipped.
    SkippedStatic,
}

impl ScaleEvent {
    /// Whether the optimizer step is skipped.
    pub fn skipped(&self) -> bool {
        !matches!(self, ScaleEvent::Kept | ScaleEvent::Grew { .. })
    }
}

/// An overflow with the scale already at its minimum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtMinimumScale {
    pub scale: f64,
}

impl fmt::Display for AtMinimumScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fp16 gradients overflow even at the minimum loss scale {}: the run cannot continue in fp16. Try \"bf16\": {{\"enabled\": true}} (no loss scaling needed), a lower learning rate, or gradient_clipping; a lower fp16.initial_scale_power or min_loss_scale only helps if the overflows come from a scale that is too large",
            self.scale
        )
    }
}

impl std::error::Error for AtMinimumScale {}

/// DeepSpeed's loss scaler state.
#[derive(Clone, Debug, PartialEq)]
pub enum LossScaler {
    /// `loss_scale > 0`: the scale never changes; overflowing steps are still skipped.
    Static { scale: f64 },
    Dynamic {
        rule: ScaleRule,
        settings: DynamicScaling,
        scale: f64,
        /// Updates so far (DeepSpeed's `cur_iter`).
        iteration: u64,
        /// `cur_iter` of the last overflow, −1 before any.
        last_overflow: i64,
        /// Overflows still absorbed before halving (`cur_hysteresis`).
        hysteresis_left: u64,
    },
}

impl LossScaler {
    pub fn fixed(scale: f64) -> Self {
        LossScaler::Static { scale }
    }

    pub fn dynamic(rule: ScaleRule, settings: DynamicScaling) -> Self {
        LossScaler::Dynamic {
            rule,
            settings,
            scale: settings.initial_scale,
            iteration: 0,
            last_overflow: -1,
            hysteresis_left: settings.hysteresis,
        }
    }

    pub fn scale(&self) -> f64 {
        match self {
            LossScaler::Static { scale } | LossScaler::Dynamic { scale, .. } => *scale,
        }
    }

    /// One accumulation boundary: `overflow` is whether any gradient on any rank was inf or NaN.
    pub fn update(&mut self, overflow: bool) -> Result<ScaleEvent, AtMinimumScale> {
        let LossScaler::Dynamic { rule, settings, scale, iteration, last_overflow, hysteresis_left } = self else {
            return Ok(if overflow { ScaleEvent::SkippedStatic } else { ScaleEvent::Kept });
        };
        let event = match (overflow, *rule) {
            (true, ScaleRule::Zero) if settings.hysteresis == 1 || *hysteresis_left == 1 => {
                reduce(scale, settings.min_scale)?
            }
            (true, ScaleRule::Zero) => {
                // Hysteresis absorbs this overflow; it is not refilled when the scale later halves (§2.1).
                *hysteresis_left -= 1;
                ScaleEvent::HysteresisSpent { remaining: *hysteresis_left }
            }
            (true, ScaleRule::Fused | ScaleRule::Unfused) => reduce(scale, settings.min_scale)?,
            (false, ScaleRule::Zero) => {
                if settings.consecutive_hysteresis {
                    *hysteresis_left = settings.hysteresis;
                }
                if (*iteration as i64 - *last_overflow) % settings.window as i64 == 0 {
                    if !settings.consecutive_hysteresis {
                        *hysteresis_left = settings.hysteresis;
                    }
                    *scale *= 2.0;
                    ScaleEvent::Grew { to: *scale }
                } else {
                    ScaleEvent::Kept
                }
            }
            (false, ScaleRule::Fused | ScaleRule::Unfused) => {
                let stable = *iteration as i64 - *last_overflow - 1;
                if stable > 0 && stable % settings.window as i64 == 0 {
                    *scale *= 2.0;
                    ScaleEvent::Grew { to: *scale }
                } else {
                    ScaleEvent::Kept
                }
            }
        };
        if overflow {
            *last_overflow = *iteration as i64;
        }
        *iteration += 1;
        Ok(event)
    }
}

/// Halves `scale`, not below `min`; an error if it is already there.
fn reduce(scale: &mut f64, min: f64) -> Result<ScaleEvent, AtMinimumScale> {
    if *scale <= min {
        return Err(AtMinimumScale { scale: *scale });
    }
    let from = *scale;
    *scale = (from / 2.0).max(min);
    Ok(ScaleEvent::Reduced { from, to: *scale })
}
