//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as DeepSpeed's `FusedLion` /
//! `DeepSpeedCPULion` apply it (deepspeed-semantics.md §1.5):
//! `c = β₁m + (1-β₁)g`, `p ← p(1 - lr·wd) - lr·sign(c)`, `m ← β₂m + (1-β₂)g`.
//!
//! `sign(0) = 0` as `torch.sign` (and the paper's reference code): a parameter whose interpolated momentum is
//! exactly zero (never-seen embedding rows on the first step) only decays. DeepSpeed's kernels differ there:
//! the CUDA kernel treats `c = 0` as negative (moves by `+lr`) and the CPU kernel uses `copysign`, so `+0` moves
//! by `-lr`; rustspeed follows the sign function rather than either artefact.

use crate::rule::{betas_of, decay_of, slots_of, StepContext, UpdateRule};

/// Hyperparameters of one Lion step. Defaults are DeepSpeed's `FusedLion` constructor defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LionHyper {
    /// Learning rate (default 1e-3), as set by the LR schedule for this step.
    pub lr: f32,
    /// Interpolation between momentum and gradient for the update direction (default 0.9).
    pub beta1: f32,
    /// Momentum decay (default 0.999); OneCycle forces 0.99.
    pub beta2: f32,
    /// Decoupled weight decay (default 0); pass 0 for tensors that do not decay.
    pub weight_decay: f32,
}

/// One Lion step over matching slices of parameters, gradients and the momentum buffer `exp_avg` (zero before
/// the first step). Lion has no step counter.
///
/// # Panics
/// If the slices differ in length (a caller bug, not user input).
pub fn lion_step(hp: &LionHyper, params: &mut [f32], grads: &[f32], exp_avg: &mut [f32]) {
    assert!(grads.len() == params.len() && exp_avg.len() == params.len(), "Lion slices differ in length");
    let after_decay = 1.0 - hp.lr * hp.weight_decay;
    for ((p, &g), m) in params.iter_mut().zip(grads).zip(exp_avg.iter_mut()) {
        let c = hp.beta1 * *m + (1.0 - hp.beta1) * g;
        *p = *p * after_decay - hp.lr * sign(c);
        *m = hp.beta2 * *m + (1.0 - hp.beta2) * g;
    }
}

/// `torch.sign`: -1, ±0 or +1, NaN for NaN so that a bad gradient shows in the parameters (`f32::signum` gives
/// ±1 for ±0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

impl UpdateRule for LionHyper {
    fn name(&self) -> &'static str {
        "Lion"
    }

    fn slot_names(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn needs_whole_tensors(&self) -> bool {
        false
    }

    fn tested_with_zero(&self) -> bool {
        true
    }

    fn fused_fp16_wrapper(&self) -> bool {
        false
    }

    fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]) {
        let (beta1, beta2) = betas_of(context, self.beta1, self.beta2);
        let hp = LionHyper { lr: context.lr, beta1, beta2, weight_decay: decay_of(context, self.weight_decay) };
        let [m] = slots_of(self, slots);
        lion_step(&hp, params, grads, m);
    }
}
