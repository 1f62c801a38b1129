//! Learning-rate (and OneCycle momentum) schedules as pure functions of DeepSpeed's `last_batch_iteration`,
//! following `deepspeed/runtime/lr_schedules.py` of DeepSpeed 0.16.5 (deepspeed-semantics.md §1.6), quirks
//! included.
//!
//! # Which value applies to which optimizer step
//! DeepSpeed builds the scheduler in `deepspeed.initialize` with `last_batch_iteration = -1`, and the
//! constructor already writes the schedule's value at `t = -1` into the optimizer. `engine.step()` runs
//! `optimizer.step()` first and then, only when the step was applied (no fp16 overflow),
//! `lr_scheduler.step()`, which advances to `t + 1` and writes that value. So:
//!
//! > the k-th **applied** optimizer step (k = 0, 1, …) runs with `lr(k - 1, base_lr)` and `momentum(k - 1)`.
//!
//! An engine keeps `last_batch_iteration`: -1 at start, +1 after every applied step, unchanged by skipped
//! (overflow) steps; that integer is the whole scheduler state DeepSpeed checkpoints
//! (`{'last_batch_iteration': n}`). Before each optimizer step it asks for `lr(last_batch_iteration, base_lr)`.
//! A resumed run continues the same way: DeepSpeed restores `n` and the optimizer's saved lr, which is `lr(n)`.
//!
//! # Quirks kept from DeepSpeed 0.16.5
//! - Warm-up (`WarmupLR`, `WarmupDecayLR`, log or linear): `lr(-1) = lr(0) = warmup_min_lr` (the constructor
//!   value, then `ln 1 = 0` or `0/N`), so the first two updates use `warmup_min_lr` (0 by default). The log
//!   ramp reaches `warmup_max_lr` already at `t = N - 1` (`ln N / ln N`), the linear one at `t = N`.
//! - `WarmupCosineLR`: `lr(-1) = 0` whatever `warmup_min_ratio` is, `lr(0) = warmup_min_ratio·base_lr`.
//! - `warmup_num_steps` below 2 counts as 2.
//! - `WarmupCosineLR` does not clamp after `total_num_steps`: past the end the cosine rises again (DeepSpeed
//!   releases after 0.16 clamp it at `cos_min_ratio`). Only `total_num_steps == max(2, warmup_num_steps)`, which
//!   makes DeepSpeed divide by zero, is rejected by [`LrSchedule::validate`]; [`LrSchedule::lr`] then returns the
//!   floor value, as later DeepSpeed does.
//! - `OneCycle`: the constructor writes `β₁ = cycle_min_mom`, while the cycle formula gives `cycle_max_mom` at
//!   a cycle start, so the first update runs with `cycle_min_mom` and the second with ≈ `cycle_max_mom`. `β₂` is
//!   forced to [`ONE_CYCLE_BETA2`] from construction on; an optimizer without betas (SGD) ignores the momentum
//!   schedule (DeepSpeed warns and disables it). The stair counts are accepted by DeepSpeed but unused, so they
//!   are not represented. At `t = T - 1` the lr is back at `cycle_min_lr` (the cycle position wraps to 0).
//! - `WarmupLR`'s `warmup_max_lr` defaults to 0.001 (later releases default to the optimizer's lr).
//!
//! Per-parameter-group lists of lrs are not supported: every value here is a scalar for the whole model.

use std::fmt;

/// β₂ that OneCycle writes with every momentum value (`betas = (mom, 0.99)` in DeepSpeed).
pub const ONE_CYCLE_BETA2: f64 = 0.99;

/// Shape of the warm-up ramp (`warmup_type`; DeepSpeed maps unknown names to `Log` with a warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmupType {
    /// `γ = ln(t + 1) / ln(N)` (DeepSpeed's default, `"log"`).
    Log,
    /// `γ = t / N` (`"linear"`).
    Linear,
}

/// A learning-rate schedule: the config's `scheduler` block, or `Constant` when there is none. Field names are
/// DeepSpeed's parameter names; every number is f64 as in Python (step counts included: DeepSpeed accepts and
/// computes with non-integer ones).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// No scheduler: the optimizer's configured lr throughout.
    Constant,
    /// Warm up from `warmup_min_lr` to `warmup_max_lr` over `warmup_num_steps`, then hold.
    WarmupLR {
        /// Start of the ramp (default 0.0).
        warmup_min_lr: f64,
        /// End of the ramp and the lr after it (default 0.001).
        warmup_max_lr: f64,
        /// Length N of the ramp (default 1000; values below 2 count as 2).
        warmup_num_steps: f64,
        /// Ramp shape (default log).
        warmup_type: WarmupType,
    },
    /// `WarmupLR`'s ramp, then linear decay to 0 at `total_num_steps`, clamped at 0 after it.
    WarmupDecayLR {
        /// Step T at which the lr reaches 0 (required).
        total_num_steps: f64,
        /// Start of the ramp (default 0.0).
        warmup_min_lr: f64,
        /// End of the ramp, where decay starts (default 0.001).
        warmup_max_lr: f64,
        /// Length N of the ramp (default 1000; values below 2 count as 2).
        warmup_num_steps: f64,
        /// Ramp shape (default log).
        warmup_type: WarmupType,
    },
    /// A ratio of the optimizer's configured lr: warm-up from `warmup_min_ratio` to 1, then cosine decay to
    /// `cos_min_ratio` at `total_num_steps`.
    WarmupCosineLR {
        /// Step T at which the cosine reaches `cos_min_ratio` (required).
        total_num_steps: f64,
        /// Ratio at the start of the ramp (default 0.0).
        warmup_min_ratio: f64,
        /// Length N of the ramp (default 1000; values below 2 count as 2).
        warmup_num_steps: f64,
        /// Ratio at the end of the cosine (default 0.0001).
        cos_min_ratio: f64,
        /// Ramp shape (default log).
        warmup_type: WarmupType,
    },
    /// One triangular cycle of lr (min → max → min) and momentum (max → min → max), then optional decay.
    OneCycle {
        /// Lr at the cycle's ends (required).
        cycle_min_lr: f64,
        /// Lr at the cycle's peak (required).
        cycle_max_lr: f64,
        /// Post-cycle decay: `lr = cycle_min_lr / (1 + decay_lr_rate·d/decay_step_size)` (default 0: no decay).
        decay_lr_rate: f64,
        /// Steps of the rising half (default 2000).
        cycle_first_step_size: f64,
        /// Steps of the falling half (default None: same as the first).
        cycle_second_step_size: Option<f64>,
        /// Post-cycle decay interval (default 0: no decay of lr or momentum).
        decay_step_size: f64,
        /// Whether β₁ follows the cycle (default true).
        cycle_momentum: bool,
        /// β₁ at the cycle's peak lr (default 0.8).
        cycle_min_mom: f64,
        /// β₁ at the cycle's ends (default 0.9).
        cycle_max_mom: f64,
        /// Post-cycle momentum change: `mom = cycle_max_mom·(1 + decay_mom_rate·d/decay_step_size)` (default 0).
        decay_mom_rate: f64,
    },
    /// Lr range test: `lr = min_lr·(1 + step_rate·(t + 1)/step_size)`, floored per interval with `staircase`.
    LRRangeTest {
        /// Starting lr (default 1e-3).
        lr_range_test_min_lr: f64,
        /// Steps per unit of increase (default 2000).
        lr_range_test_step_size: f64,
        /// Increase per `step_size` steps, as a multiple of the starting lr (default 1.0).
        lr_range_test_step_rate: f64,
        /// Increase in whole steps of `step_rate` rather than continuously (default false).
        lr_range_test_staircase: bool,
    },
}

/// Why a schedule's parameters cannot be used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleError {
    /// A parameter is NaN or infinite.
    NotFinite { key: &'static str, value: f64 },
    /// A parameter DeepSpeed divides by is zero or negative.
    NotPositive { key: &'static str, value: f64 },
    /// A length that cannot be negative is.
    Negative { key: &'static str, value: f64 },
    /// `WarmupCosineLR` with `total_num_steps` equal to the effective warm-up length: no cosine phase.
    EmptyCosineWindow { total_num_steps: f64, warmup_num_steps: f64 },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ScheduleError::NotFinite { key, value } => {
                write!(f, "scheduler.params.{key} = {value}: must be a finite number")
            }
            ScheduleError::NotPositive { key, value } => {
                write!(f, "scheduler.params.{key} = {value}: must be greater than 0 (the schedule divides by it)")
            }
            ScheduleError::Negative { key, value } => {
                write!(f, "scheduler.params.{key} = {value}: must not be negative")
            }
            ScheduleError::EmptyCosineWindow { total_num_steps, warmup_num_steps } => write!(
                f,
                "scheduler.params.total_num_steps = {total_num_steps} equals the warm-up length \
                 max(2, warmup_num_steps = {warmup_num_steps}): WarmupCosineLR needs total_num_steps > \
                 warmup_num_steps (DeepSpeed divides by their difference)"
            ),
        }
    }
}

impl std::error::Error for ScheduleError {}

impl LrSchedule {
    /// The learning rate at `last_batch_iteration = t` (see the module docs for which optimizer step uses it).
    /// `base_lr` is the optimizer's configured lr, used by `Constant` and `WarmupCosineLR`. Values of `t` below
    /// -1 (never reached by an engine) are read as -1. Never panics; parameters that fail [`Self::validate`]
    /// give meaningless (possibly non-finite) values.
    pub fn lr(&self, last_batch_iteration: i64, base_lr: f64) -> f64 {
        let t = last_batch_iteration.max(-1);
        match *self {
            LrSchedule::Constant => base_lr,
            LrSchedule::WarmupLR { warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type } => {
                if t < 0 {
                    return warmup_min_lr;
                }
                let n = effective_warmup_steps(warmup_num_steps);
                let gamma = if (t as f64) < n { warmup_fraction(warmup_type, t, n) } else { 1.0 };
                warmup_min_lr + (warmup_max_lr - warmup_min_lr) * gamma
            }
            LrSchedule::WarmupDecayLR {
                total_num_steps,
                warmup_min_lr,
                warmup_max_lr,
                warmup_num_steps,
                warmup_type,
            } => {
                if t < 0 {
                    return warmup_min_lr;
                }
                let n = effective_warmup_steps(warmup_num_steps);
                let gamma = if (t as f64) < n {
                    warmup_fraction(warmup_type, t, n)
                } else {
                    ((total_num_steps - t as f64) / (total_num_steps - n).max(1.0)).max(0.0)
                };
                warmup_min_lr + (warmup_max_lr - warmup_min_lr) * gamma
            }
            LrSchedule::WarmupCosineLR {
                total_num_steps,
                warmup_min_ratio,
                warmup_num_steps,
                cos_min_ratio,
                warmup_type,
            } => {
                if t < 0 {
                    return 0.0;
                }
                let n = effective_warmup_steps(warmup_num_steps);
                let ratio = if (t as f64) < n {
                    warmup_min_ratio + warmup_fraction(warmup_type, t, n) * (1.0 - warmup_min_ratio)
                } else {
                    let into_cosine = t as f64 - n + 1.0;
                    let cosine_len = total_num_steps - n;
                    // DeepSpeed 0.16.5 divides by zero here; later releases read it as the end of the cosine.
                    let progress = if cosine_len == 0.0 { 1.0 } else { into_cosine / cosine_len };
                    let cosine = (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0;
                    (cos_min_ratio + (1.0 - cos_min_ratio) * cosine).max(0.0)
                };
                base_lr * ratio
            }
            LrSchedule::OneCycle {
                cycle_min_lr,
                cycle_max_lr,
                decay_lr_rate,
                cycle_first_step_size,
                cycle_second_step_size,
                decay_step_size,
                ..
            } => {
                let total = cycle_first_step_size + cycle_second_step_size.unwrap_or(cycle_first_step_size);
                if (t as f64) < total {
                    let scale = one_cycle_scale(t, cycle_first_step_size, total);
                    cycle_min_lr + (cycle_max_lr - cycle_min_lr) * scale
                } else if decay_step_size == 0.0 || decay_lr_rate == 0.0 {
                    cycle_min_lr
                } else {
                    let decay_steps = t as f64 - total + 1.0;
                    cycle_min_lr / (1.0 + decay_lr_rate * (decay_steps / decay_step_size))
                }
            }
            LrSchedule::LRRangeTest {
                lr_range_test_min_lr,
                lr_range_test_step_size,
                lr_range_test_step_rate,
                lr_range_test_staircase,
            } => {
                let intervals = (t + 1) as f64 / lr_range_test_step_size;
                let intervals = if lr_range_test_staircase { intervals.floor() } else { intervals };
                lr_range_test_min_lr * (1.0 + lr_range_test_step_rate * intervals)
            }
        }
    }

    /// The `(β₁, β₂)` OneCycle writes at `last_batch_iteration = t` when `cycle_momentum` is on; `None` for
    /// every other schedule (the optimizer keeps its configured betas). β₂ is always [`ONE_CYCLE_BETA2`].
    pub fn momentum(&self, last_batch_iteration: i64) -> Option<(f64, f64)> {
        let LrSchedule::OneCycle {
            cycle_first_step_size,
            cycle_second_step_size,
            decay_step_size,
            cycle_momentum: true,
            cycle_min_mom,
            cycle_max_mom,
            decay_mom_rate,
            ..
        } = *self
        else {
            return None;
        };
        let t = last_batch_iteration.max(-1);
        let total = cycle_first_step_size + cycle_second_step_size.unwrap_or(cycle_first_step_size);
        let beta1 = if t < 0 {
            // The constructor writes the minimum, not the cycle formula's value at t = -1 (the maximum).
            cycle_min_mom
        } else if (t as f64) < total {
            let scale = one_cycle_scale(t, cycle_first_step_size, total);
            cycle_max_mom - (cycle_max_mom - cycle_min_mom) * scale
        } else if decay_step_size == 0.0 || decay_mom_rate == 0.0 {
            cycle_max_mom
        } else {
            let decay_steps = t as f64 - total + 1.0;
            cycle_max_mom * (1.0 + decay_mom_rate * (decay_steps / decay_step_size))
        };
        Some((beta1, ONE_CYCLE_BETA2))
    }

    /// Rejects parameters with which DeepSpeed would fail (division by zero) or that are not finite numbers.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        for (key, value) in self.numeric_params() {
            if !value.is_finite() {
                return Err(ScheduleError::NotFinite { key, value });
            }
        }
        match *self {
            LrSchedule::WarmupCosineLR { total_num_steps, warmup_num_steps, .. }
                if total_num_steps == effective_warmup_steps(warmup_num_steps) =>
            {
                Err(ScheduleError::EmptyCosineWindow { total_num_steps, warmup_num_steps })
            }
            LrSchedule::OneCycle { cycle_first_step_size, .. } if cycle_first_step_size <= 0.0 => {
                Err(ScheduleError::NotPositive { key: "cycle_first_step_size", value: cycle_first_step_size })
            }
            LrSchedule::OneCycle { cycle_second_step_size: Some(value), .. } if value < 0.0 => {
                Err(ScheduleError::Negative { key: "cycle_second_step_size", value })
            }
            LrSchedule::LRRangeTest { lr_range_test_step_size, .. } if lr_range_test_step_size <= 0.0 => {
                Err(ScheduleError::NotPositive { key: "lr_range_test_step_size", value: lr_range_test_step_size })
            }
            _ => Ok(()),
        }
    }

    /// Every numeric parameter with its DeepSpeed key, for validation messages.
    fn numeric_params(&self) -> Vec<(&'static str, f64)> {
        match *self {
            LrSchedule::Constant => vec![],
            LrSchedule::WarmupLR { warmup_min_lr, warmup_max_lr, warmup_num_steps, .. } => vec![
                ("warmup_min_lr", warmup_min_lr),
                ("warmup_max_lr", warmup_max_lr),
                ("warmup_num_steps", warmup_num_steps),
            ],
            LrSchedule::WarmupDecayLR { total_num_steps, warmup_min_lr, warmup_max_lr, warmup_num_steps, .. } => {
                vec![
                    ("total_num_steps", total_num_steps),
                    ("warmup_min_lr", warmup_min_lr),
                    ("warmup_max_lr", warmup_max_lr),
                    ("warmup_num_steps", warmup_num_steps),
                ]
            }
            LrSchedule::WarmupCosineLR {
                total_num_steps, warmup_min_ratio, warmup_num_steps, cos_min_ratio, ..
            } => {
                vec![
                    ("total_num_steps", total_num_steps),
                    ("warmup_min_ratio", warmup_min_ratio),
                    ("warmup_num_steps", warmup_num_steps),
                    ("cos_min_ratio", cos_min_ratio),
                ]
            }
            LrSchedule::OneCycle {
                cycle_min_lr,
                cycle_max_lr,
                decay_lr_rate,
                cycle_first_step_size,
                cycle_second_step_size,
                decay_step_size,
                cycle_min_mom,
                cycle_max_mom,
                decay_mom_rate,
                ..
            } => {
                let mut params = vec![
                    ("cycle_min_lr", cycle_min_lr),
                    ("cycle_max_lr", cycle_max_lr),
                    ("decay_lr_rate", decay_lr_rate),
                    ("cycle_first_step_size", cycle_first_step_size),
                    ("decay_step_size", decay_step_size),
                    ("cycle_min_mom", cycle_min_mom),
                    ("cycle_max_mom", cycle_max_mom),
                    ("decay_mom_rate", decay_mom_rate),
                ];
                params.extend(cycle_second_step_size.map(|value| ("cycle_second_step_size", value)));
                params
            }
            LrSchedule::LRRangeTest {
                lr_range_test_min_lr, lr_range_test_step_size, lr_range_test_step_rate, ..
            } => {
                vec![
                    ("lr_range_test_min_lr", lr_range_test_min_lr),
                    ("lr_range_test_step_size", lr_range_test_step_size),
                    ("lr_range_test_step_rate", lr_range_test_step_rate),
                ]
            }
        }
    }
}

/// DeepSpeed's `max(2, warmup_num_steps)`: the log ramp needs `ln N > 0`.
fn effective_warmup_steps(warmup_num_steps: f64) -> f64 {
    warmup_num_steps.max(2.0)
}

/// The warm-up fraction γ at `0 ≤ t < n`, computed as DeepSpeed does (`(1/ln N)·ln(t+1)` or `t/N`).
fn warmup_fraction(warmup_type: WarmupType, t: i64, n: f64) -> f64 {
    match warmup_type {
        WarmupType::Log => (1.0 / n.ln()) * ((t + 1) as f64).ln(),
        WarmupType::Linear => t as f64 / n,
    }
}

/// OneCycle's position in the cycle as a height in [0, 1]: rising over the first `first` steps, falling over
/// the rest of `total` (`_get_scale_factor`).
fn one_cycle_scale(t: i64, first: f64, total: f64) -> f64 {
    let batch = (t + 1) as f64;
    let cycle = (1.0 + batch / total).floor();
    let position = 1.0 + batch / total - cycle;
    let rising_share = first / total;
    if position <= rising_share {
        position / rising_share
    } else {
        (position - 1.0) / (rising_share - 1.0)
    }
}
