//! What an update rule is to the rest of rustspeed: one trait, implemented by each rule in its own file beside
//! its step function (as burn keeps one file per optimizer). The engine sizes and names the optimizer state, the
//! checkpoints name their slots, `estimate` counts bytes and the ZeRO checks decide, all from this trait; adding a
//! rule is one `impl UpdateRule` (and, for the JSON config, its `type` in the config crate).

use std::fmt::Debug;

/// What varies per step and per tensor of an update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepContext {
    /// The applied step's number, 1 for the first.
    pub step: u64,
    /// The learning rate of this step (the schedule's).
    pub lr: f32,
    /// OneCycle's momentum cycling: `(β₁, β₂)` of this step, replacing the configured ones where the rule has them.
    pub betas: Option<(f64, f64)>,
    /// Whether weight decay applies to this tensor (rank ≥ 2 by default).
    pub decay: bool,
}

/// An optimizer's update rule with its configured hyperparameters. Parameters, gradients and state are fp32; a
/// step sees one contiguous piece of one tensor (or the whole tensor, for rules that need it).
pub trait UpdateRule: Debug + Send + Sync {
    /// The rule's name in messages, as the config's `type` spells it.
    fn name(&self) -> &'static str;

    /// Names of its per-parameter fp32 state buffers, as checkpoints store them (PyTorch's optimizer-state names);
    /// the state is this many flat buffers of the parameters' length.
    fn slot_names(&self) -> &'static [&'static str];

    /// The configured learning rate (the schedule's base).
    fn lr(&self) -> f32;

    /// Whether a step must see whole tensors (Lamb's per-tensor trust ratio), which ZeRO's partitions cut.
    fn needs_whole_tensors(&self) -> bool;

    /// Whether DeepSpeed runs it under ZeRO without `zero_allow_untested_optimizer` (its Adam-family and Lion).
    fn tested_with_zero(&self) -> bool;

    /// Whether DeepSpeed's stage-0 fp16 wrapper for it is the fused one (`FP16_Optimizer`, Adam-family), whose
    /// dynamic loss-scale rule differs from the unfused wrapper's.
    fn fused_fp16_wrapper(&self) -> bool;

    /// One update of `params` from `grads` (already unscaled and clipped) and the matching pieces of the state
    /// buffers, in [`UpdateRule::slot_names`] order.
    fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]);
}

/// `(β₁, β₂)` of a step: OneCycle's when it cycles them, else the configured ones.
pub(crate) fn betas_of(context: &StepContext, beta1: f32, beta2: f32) -> (f32, f32) {
    context.betas.map_or((beta1, beta2), |(a, b)| (a as f32, b as f32))
}

/// The weight decay of a step: the configured one, or none for a tensor that does not decay.
pub(crate) fn decay_of(context: &StepContext, weight_decay: f32) -> f32 {
    if context.decay {
        weight_decay
    } else {
        0.0
    }
}

/// The state slots a rule was given, in its order; a count that differs from its slot names is a caller bug.
pub(crate) fn slots_of<'a, 'b, const K: usize>(
    rule: &dyn UpdateRule,
    slots: &'a mut [&'b mut [f32]],
) -> &'a mut [&'b mut [f32]; K] {
    let count = slots.len();
    slots.try_into().unwrap_or_else(|_| panic!("{rule:?} takes {K} state slots, got {count}"))
}
