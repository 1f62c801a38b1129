//! GELU, tanh approximation (GPT-2's `gelu_new`, PyTorch `gelu(approximate="tanh")`):
//! `gelu(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.

use crate::cast::{load, store, Contents, Element};

use crate::vmath::{simd_fn, tanh};
use rayon::prelude::*;

/// √(2/π).
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
pub const GELU_CUBIC: f32 = 0.044_715;
/// Elements per rayon task.
const CHUNK: usize = 4096;

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    let th = tanh(u);
    let sech2 = 1.0 - th * th;
    0.5 * (1.0 + th) + 0.5 * x * sech2 * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
}

simd_fn! {
    fn gelu_chunk(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = gelu(x);
        }
    }
}

simd_fn! {
    fn gelu_grad_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            *d += gelu_grad(x) * g;
        }
    }
}

/// The fp32 kernel of [`gelu_forward`].
fn gelu_forward_f32(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, i)| gelu_chunk(o, i));
}

/// The fp32 kernel of [`gelu_backward`].
fn gelu_backward_f32(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, i), g)| gelu_grad_chunk(d, i, g));
}

/// `out = gelu(inp)` (overwrites).
pub fn gelu_forward<E: Element>(out: &mut [E], inp: &[E]) {
    store(out, Contents::Overwrite, |out| gelu_forward_f32(out, &load(inp)))
}

/// `dinp += gelu'(inp) * dout`.
pub fn gelu_backward<E: Element>(dinp: &mut [E], inp: &[E], dout: &[E]) {
    store(dinp, Contents::Accumulate, |dinp| gelu_backward_f32(dinp, &load(inp), &load(dout)))
}
