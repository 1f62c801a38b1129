//! SGD with momentum, in PyTorch's `torch.optim.SGD` form:
//! `g ← g + wd·p`; `b ← g` on the first step, else `b ← μb + (1-τ)g`; `g ← g + μb` (Nesterov) or `g ← b`;
//! `p ← p - lr·g`.

/// Hyperparameters of one SGD step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdHyper {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

/// One SGD step. `momentum_buf` is required when `momentum != 0`; `first_step` initializes it from the gradient
/// (PyTorch's behaviour, which ignores dampening on the first step).
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
