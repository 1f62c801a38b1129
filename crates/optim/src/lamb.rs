//! LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning") exactly as DeepSpeed's `FusedLamb`
//! computes it (`csrc/lamb/fused_lamb_cuda_kernel.cu`, v0.16.5; deepspeed-semantics.md §1.5). Per parameter
//! TENSOR, at step t:
//!
//! ```text
//! m ← β₁m + (1-β₁)g            v ← β₂v + (1-β₂)g²
//! u = m / (√v + ε) + wd·p       (eps_inside_sqrt: m / √(v + ε) + wd·p)
//! r = ‖p‖ / ‖u‖ clamped to [min_coeff, max_coeff]; r = 1 if ‖p‖ = 0 or ‖u‖ = 0
//! p ← p - s·r·u                 s = lr·√(1-β₂ᵗ)/(1-β₁ᵗ), or s = lr without bias correction
//! ```
//!
//! Choices settled from the kernel, which differ from the textbook "u = m̂/(√v̂+ε) + wd·p":
//! - Bias correction is folded into the step size `s`, not applied to m and v: `u` (and so the trust ratio) is
//!   built from the raw moments, ε is not rescaled by `√(1-β₂ᵗ)`, and `s` also scales the `wd·p` term. This is
//!   what DeepSpeed trains with, so rustspeed does the same.
//! - `eps_inside_sqrt` (default false) selects the kernel's mode 0 (`√(v+ε)`) over mode 1 (`√v + ε`).
//! - The clamp is applied as the kernel does, `max_coeff` first, then `min_coeff`.
//! - The norms are accumulated in float64 (the kernel reduces in fp32 trees); only rounding differs.
//!
//! The kernel's two passes are public so that a tensor split across ranks can be stepped: [`lamb_moments`] on
//! each shard, sum the [`LambSquaredNorms`] over the shards, [`lamb_trust_ratio`], then [`lamb_apply`] on each
//! shard. [`lamb_step`] does all three for a whole tensor.

use crate::rule::{betas_of, decay_of, slots_of, StepContext, UpdateRule};

use crate::adam::bias_corrections;

/// Hyperparameters of one Lamb step. Defaults are DeepSpeed's `FusedLamb` constructor defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LambHyper {
    /// Learning rate (default 1e-3), as set by the LR schedule for this step.
    pub lr: f32,
    /// First-moment decay β₁ (default 0.9).
    pub beta1: f32,
    /// Second-moment decay β₂ (default 0.999); OneCycle forces 0.99.
    pub beta2: f32,
    /// Added to `√v` (default 1e-8), or to `v` under the root with `eps_inside_sqrt`.
    pub eps: f32,
    /// `√(v + ε)` instead of `√v + ε` (default false).
    pub eps_inside_sqrt: bool,
    /// Weight decay added to the update before the trust ratio (default 0); pass 0 for tensors that do not decay.
    pub weight_decay: f32,
    /// Scale the step by `√(1-β₂ᵗ)/(1-β₁ᵗ)` (default true).
    pub bias_correction: bool,
    /// Upper bound of the trust ratio (default 10.0).
    pub max_coeff: f32,
    /// Lower bound of the trust ratio (default 0.01).
    pub min_coeff: f32,
}

/// What one Lamb step of a tensor reports (DeepSpeed's `get_lamb_coeffs()`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LambReport {
    /// The clamped `‖p‖/‖u‖` the update was scaled by.
    pub trust_ratio: f32,
}

/// Partial sums `Σp²` and `Σu²` over one range of a tensor, before the update; add the parts of a tensor
/// split across shards with `+`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LambSquaredNorms {
    /// Σ p² over the range.
    pub param: f64,
    /// Σ u² over the range, `u` the unscaled update of the module docs.
    pub update: f64,
}

impl std::ops::Add for LambSquaredNorms {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self { param: self.param + other.param, update: self.update + other.update }
    }
}

/// One Lamb step of a whole parameter tensor at step number `step` (1 for the first step): matching slices of
/// parameters, gradients and moments (`exp_avg` = m, `exp_avg_sq` = v, zero before the first step).
///
/// # Panics
/// If `step` is 0 or the slices differ in length (caller bugs, not user input).
pub fn lamb_step(
    hp: &LambHyper,
    step: u64,
    params: &mut [f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) -> LambReport {
    let norms = lamb_moments(hp, params, grads, exp_avg, exp_avg_sq);
    let trust_ratio = lamb_trust_ratio(hp, norms);
    lamb_apply(hp, step, trust_ratio, params, exp_avg, exp_avg_sq);
    LambReport { trust_ratio }
}

/// First pass (the kernel's part 1): updates m and v over this range and returns its share of `‖p‖²`, `‖u‖²`.
///
/// # Panics
/// If the slices differ in length.
pub fn lamb_moments(
    hp: &LambHyper,
    params: &[f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) -> LambSquaredNorms {
    let n = params.len();
    assert!(grads.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n, "Lamb slices differ in length");
    let mut norms = LambSquaredNorms::default();
    for (((&p, &g), m), v) in params.iter().zip(grads).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
        let u = update(hp, p, *m, *v) as f64;
        norms.param += p as f64 * p as f64;
        norms.update += u * u;
    }
    norms
}

/// The trust ratio from a whole tensor's squared norms (the kernel's part 3 prologue).
pub fn lamb_trust_ratio(hp: &LambHyper, norms: LambSquaredNorms) -> f32 {
    let (param_norm, update_norm) = (norms.param.sqrt() as f32, norms.update.sqrt() as f32);
    if param_norm == 0.0 || update_norm == 0.0 {
        return 1.0;
    }
    // Explicit comparisons rather than `f32::clamp`: the kernel's order, no panic when min > max, NaN passes.
    let mut ratio = param_norm / update_norm;
    if ratio > hp.max_coeff {
        ratio = hp.max_coeff;
    }
    if ratio < hp.min_coeff {
        ratio = hp.min_coeff;
    }
    ratio
}

/// Second pass (the kernel's part 3): `p ← p - s·r·u` over this range, with the moments left by
/// [`lamb_moments`] and the tensor's `trust_ratio`.
///
/// # Panics
/// If `step` is 0 or the slices differ in length.
pub fn lamb_apply(
    hp: &LambHyper,
    step: u64,
    trust_ratio: f32,
    params: &mut [f32],
    exp_avg: &[f32],
    exp_avg_sq: &[f32],
) {
    assert!(step >= 1, "Lamb steps are numbered from 1");
    let n = params.len();
    assert!(exp_avg.len() == n && exp_avg_sq.len() == n, "Lamb slices differ in length");
    let (bc1, bc2) = bias_corrections(hp.bias_correction, hp.beta1, hp.beta2, step);
    let step_size = (hp.lr as f64 * bc2.sqrt() / bc1) as f32;
    for ((p, &m), &v) in params.iter_mut().zip(exp_avg).zip(exp_avg_sq) {
        *p -= step_size * trust_ratio * update(hp, *p, m, v);
    }
}

/// `u = m/(√v + ε) + wd·p`, or `m/√(v + ε) + wd·p` with `eps_inside_sqrt`.
#[inline]
fn update(hp: &LambHyper, p: f32, m: f32, v: f32) -> f32 {
    let denom = if hp.eps_inside_sqrt { (v + hp.eps).sqrt() } else { v.sqrt() + hp.eps };
    m / denom + hp.weight_decay * p
}

impl UpdateRule for LambHyper {
    fn name(&self) -> &'static str {
        "Lamb"
    }

    fn slot_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn needs_whole_tensors(&self) -> bool {
        true
    }

    fn tested_with_zero(&self) -> bool {
        false
    }

    fn fused_fp16_wrapper(&self) -> bool {
        false
    }

    fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]) {
        let (beta1, beta2) = betas_of(context, self.beta1, self.beta2);
        let hp =
            LambHyper { lr: context.lr, beta1, beta2, weight_decay: decay_of(context, self.weight_decay), ..*self };
        let [m, v] = slots_of(self, slots);
        lamb_step(&hp, context.step, params, grads, m, v);
    }
}
