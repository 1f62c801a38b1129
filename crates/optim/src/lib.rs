//! Optimizer steps as pure functions over flat slices: no I/O, no ranks, no knowledge of sharding. The caller
//! passes any contiguous range of the parameter buffer with the matching ranges of gradients and state, so the
//! same step serves a whole model, one tensor (with its own weight-decay setting) or one ZeRO partition.

mod adam;
mod sgd;

pub use adam::{adamw_step, AdamHyper};
pub use sgd::{sgd_step, SgdHyper};
