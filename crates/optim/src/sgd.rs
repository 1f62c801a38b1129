//! SGD with momentum, in PyTorch's `torch.optim.SGD` form (DeepSpeed builds `torch.optim.SGD` for
//! `"type": "SGD"`, deepspeed-semantics.md §1.5):
//! `g ← g + wd·p`; `b ← g` on the first step, else `b ← μb + (1-τ)g`; `g ← g + μb` (Nesterov) or `g ← b`;
//! `p ← p - lr·g`.

use crate::rule::{decay_of, StepContext, UpdateRule};

/// Hyperparameters of one SGD step. Defaults are `torch.optim.SGD`'s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    /// Learning rate (default 1e-3), as set by the LR schedule for this step.
    pub lr: f32,
    /// Momentum factor μ (default 0: plain SGD, no state).
    pub momentum: f32,
    /// Dampening τ of the gradient added to the momentum buffer (default 0); not applied on the first step.
    pub dampening: f32,
    /// Nesterov momentum (default false); PyTorch requires `momentum > 0` and `dampening = 0` for it.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient (default 0); pass 0 for tensors that do not decay.
    pub weight_decay: f32,
}

/// One SGD step. `momentum_buf` is required when `momentum != 0`; `first_step` initializes it from the gradient
/// (PyTorch's behaviour, which ignores dampening on the first step).
///
/// # Panics
/// If the slices differ in length, or `momentum != 0` without a buffer (caller bugs, not user input).
pub fn sgd_step(hp: &SgdHyper, first_step: bool, params: &mut [f32], grads: &[f32], momentum_buf: Option<&mut [f32]>) {
    assert_eq!(params.len(), grads.len());
    match momentum_buf {
        Some(buf) if hp.momentum != 0.0 => {
            assert_eq!(buf.len(), params.len());
            for ((p, &g), b) in params.iter_mut().zip(grads).zip(buf.iter_mut()) {
                let g = g + hp.weight_decay * *p;
                *b = if first_step { g } else { hp.momentum * *b + (1.0 - hp.dampening) * g };
                let d = if hp.nesterov { g + hp.momentum * *b } else { *b };
                *p -= hp.lr * d;
            }
        }
        None if hp.momentum != 0.0 => panic!("SGD with momentum needs a momentum buffer"),
        _ => {
            for (p, &g) in params.iter_mut().zip(grads) {
                *p -= hp.lr * (g + hp.weight_decay * *p);
            }
        }
    }
}

impl UpdateRule for SgdHyper {
    fn name(&self) -> &'static str {
        "SGD"
    }

    /// A momentum buffer when the momentum is non-zero, else no state.
    fn slot_names(&self) -> &'static [&'static str] {
        match self.momentum != 0.0 {
            true => &["momentum_buffer"],
            false => &[],
        }
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn needs_whole_tensors(&self) -> bool {
        false
    }

    fn tested_with_zero(&self) -> bool {
        false
    }

    fn fused_fp16_wrapper(&self) -> bool {
        false
    }

    fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]) {
        let hp = SgdHyper { lr: context.lr, weight_decay: decay_of(context, self.weight_decay), ..*self };
        let first = context.step == 1;
        match slots {
            [buf] => sgd_step(&hp, first, params, grads, Some(buf)),
            [] => sgd_step(&hp, first, params, grads, None),
            _ => panic!("{self:?} takes at most one state slot, got {}", slots.len()),
        }
    }
}
