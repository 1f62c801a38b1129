//! LayerNorm over the last dimension: `y = (x - mean) * rstd * weight + bias`, `rstd = 1/sqrt(var + eps)`,
//! with the biased variance, as PyTorch's `nn.LayerNorm`.

use crate::cast::{load, store, Contents, Element};

use crate::ROWS_PER_TASK;
use rayon::prelude::*;

/// PyTorch's and GPT-2's default epsilon.
pub const LAYERNORM_EPS: f32 = 1e-5;
/// Columns of `dweight`/`dbias` per rayon task in the backward reduction.
const COLS_PER_TASK: usize = 64;

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
                let mu = x.iter().sum::<f32>() / c as f32;
                let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
                let s = 1.0 / (var + LAYERNORM_EPS).sqrt();
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                    *y = (x - mu) * s * w + b;
                }
                *m = mu;
                *r = s;
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
                let mut mean_g = 0.0f32;
                let mut mean_gx = 0.0f32;
                for ((&dy, &x), &w) in dy.iter().zip(x).zip(weight) {
                    let g = dy * w;
                    mean_g += g;
                    mean_gx += g * (x - mu) * s;
                }
                mean_g /= c as f32;
                mean_gx /= c as f32;
                for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
                    let xhat = (x - mu) * s;
                    *dx += s * (dy * w - mean_g - xhat * mean_gx);
                }
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
                for (((dw, db), &dy), &x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                    *dw += dy * (x - mu) * s;
                    *db += dy;
                }
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
