//! Adam with decoupled weight decay (AdamW; Loshchilov & Hutter 2019), in PyTorch's `torch.optim.AdamW` form:
//! `p ← p (1 - lr·wd)`, `m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`,
//! `p ← p - lr · (m / bc₁) / (√(v / bc₂) + ε)` with `bc_i = 1 - β_iᵗ` (or 1 without bias correction).

/// Hyperparameters of one AdamW step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay; pass 0 for tensors that do not decay.
    pub weight_decay: f32,
    pub bias_correction: bool,
}

/// One AdamW step at step number `step` (1 for the first step) over matching slices.
pub fn adamw_step(hp: &AdamHyper, step: u64, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
    assert!(step >= 1, "Adam steps are numbered from 1");
    assert!(params.len() == grads.len() && params.len() == m.len() && params.len() == v.len());
    let (bc1, bc2) = if hp.bias_correction {
        (1.0 - (hp.beta1 as f64).powi(step as i32), 1.0 - (hp.beta2 as f64).powi(step as i32))
    } else {
        (1.0, 1.0)
    };
    let step_size = (hp.lr as f64 / bc1) as f32;
    let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
        *p = *p * decay - step_size * *m / (v.sqrt() * inv_sqrt_bc2 + hp.eps);
    }
}
