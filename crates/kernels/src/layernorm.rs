//! LayerNorm over the last dimension: `y = (x - mean) * rstd * weight + bias`, `rstd = 1/sqrt(var + eps)`,
//! with the biased variance, as PyTorch's `nn.LayerNorm`.

use crate::cast::{load, store, Contents, Element};
use crate::vmath::{dot, simd_fn, sum, sum_squared_deviations};
use crate::ROWS_PER_TASK;
use rayon::prelude::*;

/// PyTorch's and GPT-2's default epsilon.
pub const LAYERNORM_EPS: f32 = 1e-5;
/// Columns of `dweight`/`dbias` per rayon task in the backward reduction.
const COLS_PER_TASK: usize = 64;

simd_fn! {
    /// One row: `y = (x - mean) · rstd · weight + bias`; returns `(mean, rstd)`. The sums run over 16 interleaved
    /// partial sums (a chain of dependent additions per row cost GPT-bench ~8 ms per step).
    fn normalize_row(y: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32]) -> (f32, f32) {
        let c = x.len() as f32;
        let mu = sum(x) / c;
        let s = 1.0 / (sum_squared_deviations(x, mu) / c + LAYERNORM_EPS).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
            *y = (x - mu) * s * w + b;
        }
        (mu, s)
    }
}

simd_fn! {
    /// One row's input gradient, added into `dx`: with `g = dy ⊙ weight` and `x̂ = (x - mu) · s`,
    /// `dx += s (g - mean(g) - x̂ mean(g ⊙ x̂))`.
    fn row_input_grad(dx: &mut [f32], dy: &[f32], x: &[f32], weight: &[f32], mu: f32, s: f32) {
        let c = x.len() as f32;
        let (mut g, mut xhat) = ([0.0f32; ROW_CHUNK], [0.0f32; ROW_CHUNK]);
        let (mut sum_g, mut sum_gxhat) = (0.0f32, 0.0f32);
        // Through stack buffers of g and x̂, in chunks: both sums vectorize.
        for ((dy, x), w) in dy.chunks(ROW_CHUNK).zip(x.chunks(ROW_CHUNK)).zip(weight.chunks(ROW_CHUNK)) {
            let (g, xhat) = (&mut g[..dy.len()], &mut xhat[..dy.len()]);
            for ((((g, xhat), &dy), &x), &w) in g.iter_mut().zip(xhat.iter_mut()).zip(dy).zip(x).zip(w) {
                *g = dy * w;
                *xhat = (x - mu) * s;
            }
            sum_g += sum(g);
            sum_gxhat += dot(g, xhat);
        }
        let (mean_g, mean_gxhat) = (sum_g / c, sum_gxhat / c);
        for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            let xhat = (x - mu) * s;
            *dx += s * (dy * w - mean_g - xhat * mean_gxhat);
        }
    }
}

simd_fn! {
    /// One row's share of the parameter gradients: `dweight += dy ⊙ x̂`, `dbias += dy`.
    fn add_row_param_grads(dweight: &mut [f32], dbias: &mut [f32], dy: &[f32], x: &[f32], mu: f32, s: f32) {
        for (((dw, db), &dy), &x) in dweight.iter_mut().zip(dbias.iter_mut()).zip(dy).zip(x) {
            *dw += dy * (x - mu) * s;
            *db += dy;
        }
    }
}

/// Columns per chunk of [`row_input_grad`]'s stack buffer.
const ROW_CHUNK: usize = 256;

/// The fp32 kernel of [`layernorm_forward`].
#[allow(clippy::too_many_arguments)]
fn layernorm_forward_f32(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
) {
    let task = ROWS_PER_TASK * c;
    out[..n * c]
        .par_chunks_mut(task)
        .zip(inp[..n * c].par_chunks(task))
        .zip(mean[..n].par_chunks_mut(ROWS_PER_TASK).zip(rstd[..n].par_chunks_mut(ROWS_PER_TASK)))
        .for_each(|((out, inp), (mean, rstd))| {
            for (((y, x), m), r) in out.chunks_exact_mut(c).zip(inp.chunks_exact(c)).zip(mean).zip(rstd) {
                (*m, *r) = normalize_row(y, x, &weight[..c], &bias[..c]);
            }
        });
}

/// The fp32 kernel of [`layernorm_backward`].
#[allow(clippy::too_many_arguments)]
fn layernorm_backward_f32(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    grads: Contents,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let task = ROWS_PER_TASK * c;
    dinp[..n * c]
        .par_chunks_mut(task)
        .zip(dout[..n * c].par_chunks(task))
        .zip(inp[..n * c].par_chunks(task))
        .zip(mean[..n].par_chunks(ROWS_PER_TASK).zip(rstd[..n].par_chunks(ROWS_PER_TASK)))
        .for_each(|(((dinp, dout), inp), (mean, rstd))| {
            let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(inp.chunks_exact(c));
            for (((dx, dy), x), (&mu, &s)) in rows.zip(mean.iter().zip(rstd)) {
                row_input_grad(dx, dy, x, &weight[..c], mu, s);
            }
        });
    grads.prepare(&mut dweight[..c]);
    grads.prepare(&mut dbias[..c]);
    // Column-parallel reduction over rows: each task owns a block of columns, so no partial buffers are needed.
    dweight[..c].par_chunks_mut(COLS_PER_TASK).zip(dbias[..c].par_chunks_mut(COLS_PER_TASK)).enumerate().for_each(
        |(block, (dw, db))| {
            let c0 = block * COLS_PER_TASK;
            for row in 0..n {
                let (mu, s) = (mean[row], rstd[row]);
                let dy = &dout[row * c + c0..row * c + c0 + dw.len()];
                let x = &inp[row * c + c0..row * c + c0 + dw.len()];
                add_row_param_grads(dw, db, dy, x, mu, s);
            }
        },
    );
}

/// Normalizes each of the `N` rows of `inp[N, C]`; writes `out[N, C]` and saves `mean[N]`, `rstd[N]` (fp32 in
/// every precision) for the backward.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<E: Element>(
    out: &mut [E],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[E],
    weight: &[E],
    bias: &[E],
    n: usize,
    c: usize,
) {
    store(out, Contents::Overwrite, |out| {
        layernorm_forward_f32(out, mean, rstd, &load(inp), &load(weight), &load(bias), n, c)
    })
}

/// Backward of [`layernorm_forward`]; adds into `dinp`, and adds into or (`grads` = [`Contents::Overwrite`])
/// overwrites `dweight`, `dbias`.
///
/// With `x̂ = (x - mean) rstd` and `g = dout ⊙ weight`:
/// `dx = rstd (g - mean(g) - x̂ mean(g ⊙ x̂))`, `dweight = Σ_rows dout ⊙ x̂`, `dbias = Σ_rows dout`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<E: Element>(
    dinp: &mut [E],
    dweight: &mut [E],
    dbias: &mut [E],
    grads: Contents,
    dout: &[E],
    inp: &[E],
    weight: &[E],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let (dout, inp, weight) = (load(dout), load(inp), load(weight));
    store(dinp, Contents::Accumulate, |dinp| {
        store(dweight, grads, |dweight| {
            store(dbias, grads, |dbias| {
                layernorm_backward_f32(dinp, dweight, dbias, grads, &dout, &inp, &weight, mean, rstd, n, c)
            })
        })
    })
}
