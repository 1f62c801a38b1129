//! Adam as DeepSpeed's `FusedAdam` / `DeepSpeedCPUAdam` compute it (deepspeed-semantics.md §1.5), with both of
//! its weight-decay modes:
//!
//! - `adam_w_mode = true` (DeepSpeed's default, also for `"type": "Adam"`): decoupled decay (AdamW, Loshchilov &
//!   Hutter 2019), `u = m̂/(√v̂ + ε) + wd·p`.
//! - `adam_w_mode = false`: L2 regularisation, `g ← g + wd·p` before the moments, `u = m̂/(√v̂ + ε)`.
//!
//! With `m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`, `m̂ = m/bc₁`, `v̂ = v/bc₂`, `bc_i = 1 - β_iᵗ` (1 without bias
//! correction) and `p ← p - lr·u`. The arithmetic is arranged as in `csrc/includes/cpu_adam.h` (rustspeed runs
//! on the CPU): `p ← p - lr·wd·p` then `p ← p - (lr/bc₁)·m / (√v·(1/√bc₂) + ε)`, which is the same update as the
//! GPU kernel's up to rounding. `torch.optim.AdamW` and `torch.optim.Adam(weight_decay=…)` are the same rules.

use crate::rule::{betas_of, decay_of, slots_of, StepContext, UpdateRule};

/// Hyperparameters of one Adam step. Defaults are DeepSpeed's `FusedAdam` constructor defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    /// Learning rate (default 1e-3), as set by the LR schedule for this step.
    pub lr: f32,
    /// First-moment decay β₁ (default 0.9); OneCycle overwrites it per step.
    pub beta1: f32,
    /// Second-moment decay β₂ (default 0.999); OneCycle forces 0.99.
    pub beta2: f32,
    /// Added to `√v̂` in the denominator (default 1e-8).
    pub eps: f32,
    /// Weight decay (default 0); pass 0 for tensors that do not decay.
    pub weight_decay: f32,
    /// Divide the moments by `1 - βᵗ` (default true).
    pub bias_correction: bool,
    /// Decoupled decay (AdamW) when true (default true), L2 regularisation folded into the gradient when false.
    pub adam_w_mode: bool,
}

/// One Adam step at step number `step` (1 for the first step) over matching slices of parameters, gradients
/// and the two moment buffers (`exp_avg` = m, `exp_avg_sq` = v, zero before the first step).
///
/// # Panics
/// If `step` is 0 or the slices differ in length (caller bugs, not user input).
pub fn adam_step(
    hp: &AdamHyper,
    step: u64,
    params: &mut [f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    assert!(step >= 1, "Adam steps are numbered from 1");
    let n = params.len();
    assert!(grads.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "Adam slices differ in length");
    let (bc1, bc2) = bias_corrections(hp.bias_correction, hp.beta1, hp.beta2, step);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
    // Decoupled decay multiplies the parameter; L2 decay adds to the gradient.
    let (l2, decoupled) = if hp.adam_w_mode { (0.0, hp.lr * hp.weight_decay) } else { (hp.weight_decay, 0.0) };
    let (beta1, beta2) = (hp.beta1, hp.beta2);
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
        let g = g + l2 * *p;
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        *p -= decoupled * *p;
        *p -= step_size * *m / (v.sqrt() * inv_sqrt_bc2 + hp.eps);
    }
}

/// `(1 - β₁ᵗ, 1 - β₂ᵗ)` in float64, or `(1, 1)` without bias correction. Shared with Lamb.
pub(crate) fn bias_corrections(enabled: bool, beta1: f32, beta2: f32, step: u64) -> (f64, f64) {
    if !enabled {
        return (1.0, 1.0);
    }
    // Steps past i32::MAX leave βᵗ at 0 for any β < 1, so saturating the exponent changes nothing.
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    (1.0 - (beta1 as f64).powi(t), 1.0 - (beta2 as f64).powi(t))
}

impl UpdateRule for AdamHyper {
    fn name(&self) -> &'static str {
        "Adam"
    }

    fn slot_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
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
        true
    }

    fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]) {
        let (beta1, beta2) = betas_of(context, self.beta1, self.beta2);
        let hp =
            AdamHyper { lr: context.lr, beta1, beta2, weight_decay: decay_of(context, self.weight_decay), ..*self };
        let [m, v] = slots_of(self, slots);
        adam_step(&hp, context.step, params, grads, m, v);
    }
}
