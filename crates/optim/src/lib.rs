//! Optimizer steps as pure functions over flat slices: no I/O, no ranks, no knowledge of sharding. The caller
//! passes any contiguous range of the parameter buffer with the matching ranges of gradients and state, so the
//! same step serves a whole model, one tensor (with its own weight-decay setting) or one ZeRO partition. Lamb is
//! the exception that needs a whole tensor (its trust ratio is per tensor); see [`lamb`] for the split form.
//!
//! Update rules follow DeepSpeed's optimizers (deepspeed-semantics.md §1.5), the LR schedules DeepSpeed's
//! `lr_schedules.py` (§1.6, in [`schedule`]). Parameters, gradients and state are fp32; per-step scalars (bias
//! corrections, step sizes) are formed in f64 and rounded once.

mod adam;
pub mod lamb;
mod lion;
mod rule;
pub mod schedule;
mod sgd;

pub use adam::{adam_step, AdamHyper};
pub use lamb::{lamb_step, LambHyper, LambReport};
pub use lion::{lion_step, LionHyper};
pub use rule::{StepContext, UpdateRule};
pub use schedule::{LrSchedule, ScheduleError, WarmupType};
pub use sgd::{sgd_step, SgdHyper};
