//! RMSNorm over the last dimension, Hugging Face's `LlamaRMSNorm`: `y = weight ⊙ (x · rstd)`,
//! `rstd = 1/sqrt(mean(x²) + eps)` per row of `C` (no mean subtraction, no bias).
//!
//! Precision: `LlamaRMSNorm` computes `x · rstd` in fp32, rounds it to the input's dtype, and multiplies by the
//! weight in that dtype (two roundings in 16-bit). Here the whole row is fp32 and each output is rounded once,
//! like every kernel of this crate; the fp32 product order `weight · (x · rstd)` is HF's.

use crate::cast::{load, store, Contents, Element};
use crate::vmath::{dot, simd_fn};
use crate::ROWS_PER_TASK;
use rayon::prelude::*;

/// Columns of `dweight` per rayon task in the backward reduction.
const COLS_PER_TASK: usize = 64;
/// Columns per chunk of [`row_input_grad`]'s stack buffers.
const ROW_CHUNK: usize = 256;

simd_fn! {
    /// One row: `y = weight ⊙ (x · rstd)`; returns `rstd`. `Σ x²` runs over 16 interleaved partial sums.
    fn normalize_row(y: &mut [f32], x: &[f32], weight: &[f32], eps: f32) -> f32 {
        let s = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
            *y = w * (x * s);
        }
        s
    }
}

simd_fn! {
    /// One row's input gradient, added into `dx`: with `g = dy ⊙ weight` and `x̂ = x · s`,
    /// `dx += s (g - x̂ mean(g ⊙ x̂))` (`∂x̂_j/∂x_k = s δ_jk - s x̂_j x̂_k / C`, from `∂s/∂x_k = -s³ x_k / C`).
    fn row_input_grad(dx: &mut [f32], dy: &[f32], x: &[f32], weight: &[f32], s: f32) {
        let c = x.len() as f32;
        let (mut g, mut xhat) = ([0.0f32; ROW_CHUNK], [0.0f32; ROW_CHUNK]);
        let mut sum_gxhat = 0.0f32;
        // Through stack buffers of g and x̂, in chunks, so the dot product vectorizes.
        for ((dy, x), w) in dy.chunks(ROW_CHUNK).zip(x.chunks(ROW_CHUNK)).zip(weight.chunks(ROW_CHUNK)) {
            let (g, xhat) = (&mut g[..dy.len()], &mut xhat[..dy.len()]);
            for ((((g, xhat), &dy), &x), &w) in g.iter_mut().zip(xhat.iter_mut()).zip(dy).zip(x).zip(w) {
                *g = dy * w;
                *xhat = x * s;
            }
            sum_gxhat += dot(g, xhat);
        }
        let mean_gxhat = sum_gxhat / c;
        for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            *dx += s * (dy * w - x * s * mean_gxhat);
        }
    }
}

simd_fn! {
    /// One row's share of the weight gradient: `dweight += dy ⊙ x̂`.
    fn add_row_weight_grad(dweight: &mut [f32], dy: &[f32], x: &[f32], s: f32) {
        for ((dw, &dy), &x) in dweight.iter_mut().zip(dy).zip(x) {
            *dw += dy * (x * s);
        }
    }
}

/// The fp32 kernel of [`rmsnorm_forward`].
#[allow(clippy::too_many_arguments)]
fn rmsnorm_forward_f32(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], n: usize, c: usize, eps: f32) {
    let task = ROWS_PER_TASK * c;
    out[..n * c]
        .par_chunks_mut(task)
        .zip(inp[..n * c].par_chunks(task))
        .zip(rstd[..n].par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((out, inp), rstd)| {
            for ((y, x), r) in out.chunks_exact_mut(c).zip(inp.chunks_exact(c)).zip(rstd) {
                *r = normalize_row(y, x, &weight[..c], eps);
            }
        });
}

/// The fp32 kernel of [`rmsnorm_backward`].
#[allow(clippy::too_many_arguments)]
fn rmsnorm_backward_f32(
    dinp: &mut [f32],
    dweight: &mut [f32],
    grads: Contents,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let task = ROWS_PER_TASK * c;
    dinp[..n * c]
        .par_chunks_mut(task)
        .zip(dout[..n * c].par_chunks(task))
        .zip(inp[..n * c].par_chunks(task))
        .zip(rstd[..n].par_chunks(ROWS_PER_TASK))
        .for_each(|(((dinp, dout), inp), rstd)| {
            let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(inp.chunks_exact(c));
            for (((dx, dy), x), &s) in rows.zip(rstd) {
                row_input_grad(dx, dy, x, &weight[..c], s);
            }
        });
    grads.prepare(&mut dweight[..c]);
    // Column-parallel reduction over rows: each task owns a block of columns, so no partial buffers are needed.
    dweight[..c].par_chunks_mut(COLS_PER_TASK).enumerate().for_each(|(block, dw)| {
        let c0 = block * COLS_PER_TASK;
        for (row, &s) in rstd[..n].iter().enumerate() {
            let cols = row * c + c0..row * c + c0 + dw.len();
            add_row_weight_grad(dw, &dout[cols.clone()], &inp[cols], s);
        }
    });
}

/// Normalizes each of the `N` rows of `inp[N, C]`: writes `out[N, C]` (overwrites) and saves `rstd[N]` (fp32 in
/// every precision) for the backward. Llama's `rms_norm_eps` is `1e-5` or `1e-6` depending on the model.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<E: Element>(
    out: &mut [E],
    rstd: &mut [f32],
    inp: &[E],
    weight: &[E],
    n: usize,
    c: usize,
    eps: f32,
) {
    store(out, Contents::Overwrite, |out| rmsnorm_forward_f32(out, rstd, &load(inp), &load(weight), n, c, eps))
}

/// Backward of [`rmsnorm_forward`]; adds into `dinp`, and adds into or (`grads` = [`Contents::Overwrite`])
/// overwrites `dweight`.
///
/// With `x̂ = x · rstd` and `g = dout ⊙ weight`: `dx = rstd (g - x̂ mean(g ⊙ x̂))`, `dweight = Σ_rows dout ⊙ x̂`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<E: Element>(
    dinp: &mut [E],
    dweight: &mut [E],
    grads: Contents,
    dout: &[E],
    inp: &[E],
    weight: &[E],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let (dout, inp, weight) = (load(dout), load(inp), load(weight));
    store(dinp, Contents::Accumulate, |dinp| {
        store(dweight, grads, |dweight| rmsnorm_backward_f32(dinp, dweight, grads, &dout, &inp, &weight, rstd, n, c))
    })
}
