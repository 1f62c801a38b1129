//! SwiGLU, the gated activation of Hugging Face's `LlamaMLP` (`hidden_act = "silu"`):
//! `h = silu(gate) ⊙ up`, `silu(x) = x · σ(x)`, `σ(x) = 1/(1 + e^-x)`.
//!
//! The input is one packed buffer `gate_up[N, 2I]` holding `[gate | up]` per row (`gate_proj` and `up_proj`
//! computed as one product), the output `h[N, I]`. Backward, with `g` the gate and `u` the up value:
//! `dgate = dh · u · σ(g) (1 + g (1 - σ(g)))` (`silu'(g) = σ(g) + g σ(g)(1 - σ(g))`), `dup = dh · silu(g)`.
//!
//! Precision: HF rounds `silu(gate)` to the activations' dtype before the product; here both steps are fp32 and
//! the output is rounded once.

use crate::cast::{load, store, Contents, Element};
use crate::vmath::{sigmoid, simd_fn};
use crate::ROWS_PER_TASK;
use rayon::prelude::*;

simd_fn! {
    /// `out = silu(gate) ⊙ up` over one row's halves.
    fn swiglu_row(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

simd_fn! {
    /// Adds one row's gradients into `dgate` and `dup`.
    fn swiglu_grad_row(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        for ((((dg, du), &dy), &g), &u) in dgate.iter_mut().zip(dup.iter_mut()).zip(dout).zip(gate).zip(up) {
            let s = sigmoid(g);
            *dg += dy * u * s * (1.0 + g * (1.0 - s));
            *du += dy * g * s;
        }
    }
}

/// The fp32 kernel of [`swiglu_forward`].
fn swiglu_forward_f32(out: &mut [f32], gate_up: &[f32], n: usize, i: usize) {
    if i == 0 {
        return;
    }
    out[..n * i]
        .par_chunks_mut(ROWS_PER_TASK * i)
        .zip(gate_up[..n * 2 * i].par_chunks(ROWS_PER_TASK * 2 * i))
        .for_each(|(out, gate_up)| {
            for (h, gu) in out.chunks_exact_mut(i).zip(gate_up.chunks_exact(2 * i)) {
                let (gate, up) = gu.split_at(i);
                swiglu_row(h, gate, up);
            }
        });
}

/// The fp32 kernel of [`swiglu_backward`].
fn swiglu_backward_f32(dgate_up: &mut [f32], dout: &[f32], gate_up: &[f32], n: usize, i: usize) {
    if i == 0 {
        return;
    }
    let task = ROWS_PER_TASK * 2 * i;
    dgate_up[..n * 2 * i]
        .par_chunks_mut(task)
        .zip(gate_up[..n * 2 * i].par_chunks(task))
        .zip(dout[..n * i].par_chunks(ROWS_PER_TASK * i))
        .for_each(|((dgu, gu), dout)| {
            for ((dgu, gu), dy) in dgu.chunks_exact_mut(2 * i).zip(gu.chunks_exact(2 * i)).zip(dout.chunks_exact(i)) {
                let ((dgate, dup), (gate, up)) = (dgu.split_at_mut(i), gu.split_at(i));
                swiglu_grad_row(dgate, dup, dy, gate, up);
            }
        });
}

/// `out[N, I] = silu(gate) ⊙ up` from `gate_up[N, 2I]` = `[gate | up]` per row (overwrites).
pub fn swiglu_forward<E: Element>(out: &mut [E], gate_up: &[E], n: usize, i: usize) {
    store(out, Contents::Overwrite, |out| swiglu_forward_f32(out, &load(gate_up), n, i))
}

/// Backward of [`swiglu_forward`]: adds `[dgate | dup]` into `dgate_up[N, 2I]`.
pub fn swiglu_backward<E: Element>(dgate_up: &mut [E], dout: &[E], gate_up: &[E], n: usize, i: usize) {
    let (dout, gate_up) = (load(dout), load(gate_up));
    store(dgate_up, Contents::Accumulate, |d| swiglu_backward_f32(d, &dout, &gate_up, n, i))
}
