//! Float64 reference kernels: the oracles the tests compare every fused fp32 kernel against. Each is the layer's
//! math written out as plain loops (no `gemm`, no rayon, no fusion), with the same arguments and conventions as
//! its fp32 counterpart but over `f64` slices: forwards overwrite their outputs (except [`position_forward`], which
//! adds, as its fp32 twin does, and the in-place rotations [`rope_forward`]) and backwards add into their gradient
//! outputs (except [`rope_backward`], in place like its fp32 twin). The backward formulas are derived
//! here from the forward math, independently of the fp32 code, and the tests check them in turn against central
//! finite differences of these forwards ([`crate::gradcheck`]).

use crate::attention::AttentionShape;
use crate::layernorm::LAYERNORM_EPS;
use crate::lstm::LstmShape;
use crate::matmul::WeightLayout;

// ---------------------------------------------------------------------------------------------------------------
// Embeddings

/// `out[n, :] = weight[tokens[n], :]` for `n < tokens.len()`.
pub fn token_forward(out: &mut [f64], tokens: &[u32], weight: &[f64], c: usize) {
    for (n, &tok) in tokens.iter().enumerate() {
        for j in 0..c {
            out[n * c + j] = weight[tok as usize * c + j];
        }
    }
}

/// `dweight[tokens[n], :] += dout[n, :]`.
pub fn token_backward(dweight: &mut [f64], dout: &[f64], tokens: &[u32], c: usize) {
    for (n, &tok) in tokens.iter().enumerate() {
        for j in 0..c {
            dweight[tok as usize * c + j] += dout[n * c + j];
        }
    }
}

/// `out[b, t, :] += pos[t, :]` (adds, like the fp32 kernel).
pub fn position_forward(out: &mut [f64], pos: &[f64], b: usize, t: usize, c: usize) {
    for bi in 0..b {
        for ti in 0..t {
            for j in 0..c {
                out[(bi * t + ti) * c + j] += pos[ti * c + j];
            }
        }
    }
}

/// `dpos[t, :] += Σ_b dout[b, t, :]`.
pub fn position_backward(dpos: &mut [f64], dout: &[f64], b: usize, t: usize, c: usize) {
    for bi in 0..b {
        for ti in 0..t {
            for j in 0..c {
                dpos[ti * c + j] += dout[(bi * t + ti) * c + j];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// LayerNorm

/// Row-wise LayerNorm of `inp[N, C]`, saving `mean[N]` and `rstd[N]`; same epsilon as the fp32 kernel.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f64],
    mean: &mut [f64],
    rstd: &mut [f64],
    inp: &[f64],
    weight: &[f64],
    bias: &[f64],
    n: usize,
    c: usize,
) {
    let eps = LAYERNORM_EPS as f64;
    for row in 0..n {
        let x = &inp[row * c..(row + 1) * c];
        let mu = x.iter().sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            out[row * c + j] = (x[j] - mu) * s * weight[j] + bias[j];
        }
        mean[row] = mu;
        rstd[row] = s;
    }
}

/// Backward of [`layernorm_forward`] through the explicit Jacobian of `x̂ = (x - μ) s`:
/// `∂μ/∂x_k = 1/C`, `∂s/∂x_k = -s² x̂_k / C`, hence `∂x̂_j/∂x_k = s (δ_jk - 1/C) - s x̂_j x̂_k / C`,
/// and `dx_k = Σ_j (dout_j weight_j) ∂x̂_j/∂x_k`. Adds into `dinp`, `dweight`, `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f64],
    dweight: &mut [f64],
    dbias: &mut [f64],
    dout: &[f64],
    inp: &[f64],
    weight: &[f64],
    mean: &[f64],
    rstd: &[f64],
    n: usize,
    c: usize,
) {
    let cf = c as f64;
    for row in 0..n {
        let (mu, s) = (mean[row], rstd[row]);
        let xhat: Vec<f64> = (0..c).map(|j| (inp[row * c + j] - mu) * s).collect();
        let dy = &dout[row * c..(row + 1) * c];
        for j in 0..c {
            dweight[j] += dy[j] * xhat[j];
            dbias[j] += dy[j];
        }
        for k in 0..c {
            let mut acc = 0.0;
            for j in 0..c {
                let delta = if j == k { 1.0 } else { 0.0 };
                let jac = s * (delta - 1.0 / cf) - s * xhat[j] * xhat[k] / cf;
                acc += dy[j] * weight[j] * jac;
            }
            dinp[row * c + k] += acc;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm

/// Row-wise RMSNorm of `inp[N, C]`: `out = weight ⊙ x · rstd`, `rstd = 1/sqrt(mean(x²) + eps)`, saving `rstd[N]`.
pub fn rmsnorm_forward(out: &mut [f64], rstd: &mut [f64], inp: &[f64], weight: &[f64], n: usize, c: usize, eps: f64) {
    for row in 0..n {
        let x = &inp[row * c..(row + 1) * c];
        let s = 1.0 / (x.iter().map(|&v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
        for j in 0..c {
            out[row * c + j] = weight[j] * x[j] * s;
        }
        rstd[row] = s;
    }
}

/// Backward of [`rmsnorm_forward`] through the explicit Jacobian of `x̂ = x s`: `∂s/∂x_k = -s³ x_k / C`, hence
/// `∂x̂_j/∂x_k = s δ_jk - s x̂_j x̂_k / C`, and `dx_k = Σ_j (dout_j weight_j) ∂x̂_j/∂x_k`,
/// `dweight_j = Σ_rows dout_j x̂_j`. Adds into `dinp`, `dweight`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f64],
    dweight: &mut [f64],
    dout: &[f64],
    inp: &[f64],
    weight: &[f64],
    rstd: &[f64],
    n: usize,
    c: usize,
) {
    for row in 0..n {
        let s = rstd[row];
        let xhat: Vec<f64> = (0..c).map(|j| inp[row * c + j] * s).collect();
        let dy = &dout[row * c..(row + 1) * c];
        for j in 0..c {
            dweight[j] += dy[j] * xhat[j];
        }
        for k in 0..c {
            let mut acc = 0.0;
            for j in 0..c {
                let delta = if j == k { 1.0 } else { 0.0 };
                acc += dy[j] * weight[j] * (s * delta - s * xhat[j] * xhat[k] / c as f64);
            }
            dinp[row * c + k] += acc;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rotary position embedding

/// The exact table `(cos, sin)`, each `[max_positions, D/2]`: `θ = p · theta^(-2j/D)` in f64.
pub fn rope_table(head_dim: usize, max_positions: usize, theta: f64) -> (Vec<f64>, Vec<f64>) {
    let half = head_dim / 2;
    let angles: Vec<f64> = (0..max_positions * half)
        .map(|k| (k / half) as f64 * theta.powf(-((2 * (k % half)) as f64) / head_dim as f64))
        .collect();
    (angles.iter().map(|a| a.cos()).collect(), angles.iter().map(|a| a.sin()).collect())
}

/// Rotates, in place, the `heads` heads of `head_dim` values from column `col_offset` of each `B·T` row (rows
/// `row_stride` wide, row `b·T + p` at position `p`) by the table's angles, `cos`/`sin` `[≥T, D/2]`: per pair
/// `(x_j, x_{j+D/2})`, `x_j ← x_j cos - x_{j+D/2} sin`, `x_{j+D/2} ← x_{j+D/2} cos + x_j sin`.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward(
    x: &mut [f64],
    cos: &[f64],
    sin: &[f64],
    head_dim: usize,
    b: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
) {
    rope_rotate(x, cos, sin, head_dim, b * t, t, heads, row_stride, col_offset, 1.0);
}

/// Backward of [`rope_forward`], in place like its fp32 twin (the gradient buffer is transformed, not added to):
/// the forward is `y = R x` with `R = [[cos, -sin], [sin, cos]]` per pair, so `dx = Rᵀ dy`, the rotation by `-θ`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward(
    dx: &mut [f64],
    cos: &[f64],
    sin: &[f64],
    head_dim: usize,
    b: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
) {
    rope_rotate(dx, cos, sin, head_dim, b * t, t, heads, row_stride, col_offset, -1.0);
}

/// Rotation by `sign · θ` of [`rope_forward`]'s heads.
#[allow(clippy::too_many_arguments)]
fn rope_rotate(
    x: &mut [f64],
    cos: &[f64],
    sin: &[f64],
    head_dim: usize,
    rows: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
    sign: f64,
) {
    let half = head_dim / 2;
    for row in 0..rows {
        let p = row % t;
        for h in 0..heads {
            let base = row * row_stride + col_offset + h * head_dim;
            for j in 0..half {
                let (c, s) = (cos[p * half + j], sign * sin[p * half + j]);
                let (x0, x1) = (x[base + j], x[base + half + j]);
                x[base + j] = x0 * c - x1 * s;
                x[base + half + j] = x1 * c + x0 * s;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Linear

/// Index of the weight connecting input `i` to output `o` in the given layout.
fn weight_index(layout: WeightLayout, c: usize, oc: usize, i: usize, o: usize) -> usize {
    match layout {
        WeightLayout::OutIn => o * c + i,
        WeightLayout::InOut => i * oc + o,
    }
}

/// `out[n, o] = bias[o] + Σ_i inp[n, i] W(i, o)` (overwrites).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    out: &mut [f64],
    inp: &[f64],
    weight: &[f64],
    bias: Option<&[f64]>,
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    for row in 0..n {
        for o in 0..oc {
            let mut acc = bias.map_or(0.0, |b| b[o]);
            for i in 0..c {
                acc += inp[row * c + i] * weight[weight_index(layout, c, oc, i, o)];
            }
            out[row * oc + o] = acc;
        }
    }
}

/// `dinp[n, i] += Σ_o dout[n, o] W(i, o)`, `dW(i, o) += Σ_n inp[n, i] dout[n, o]`, `dbias[o] += Σ_n dout[n, o]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    mut dinp: Option<&mut [f64]>,
    dweight: &mut [f64],
    mut dbias: Option<&mut [f64]>,
    dout: &[f64],
    inp: &[f64],
    weight: &[f64],
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    for row in 0..n {
        for o in 0..oc {
            let g = dout[row * oc + o];
            if let Some(db) = dbias.as_deref_mut() {
                db[o] += g;
            }
            for i in 0..c {
                let w = weight_index(layout, c, oc, i, o);
                dweight[w] += g * inp[row * c + i];
                if let Some(dx) = dinp.as_deref_mut() {
                    dx[row * c + i] += g * weight[w];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Attention

/// Index into the packed `[B, T, (NH + 2·NKV)·HS]` of batch `bi`, position `i`, part `p` (0 = q, 1 = k, 2 = v),
/// head `h` of that part (a query head for q, a key/value head for k and v), lane `d`.
fn qkv_index(shape: AttentionShape, bi: usize, i: usize, p: usize, h: usize, d: usize) -> usize {
    let AttentionShape { t, nh, nkv, hs, .. } = shape;
    let part = [0, nh * hs, (nh + nkv) * hs][p];
    (bi * t + i) * (nh + 2 * nkv) * hs + part + h * hs + d
}

/// Causal attention computed directly: query head `h` reads key/value head `g = h / (NH/NKV)`; scores
/// `scale · q_i·k_j` for `j <= i`, softmax over them, zero for `j > i`, then `out_i = Σ_j att_ij v_j`. Writes
/// `out[B, T, NH·HS]` and `att[B, NH, T, T]`.
pub fn attention_forward(out: &mut [f64], att: &mut [f64], qkv: &[f64], shape: AttentionShape) {
    let AttentionShape { b, t, nh, nkv, hs } = shape;
    let scale = 1.0 / (hs as f64).sqrt();
    for bi in 0..b {
        for h in 0..nh {
            let g = h / (nh / nkv);
            for i in 0..t {
                let row = &mut att[((bi * nh + h) * t + i) * t..][..t];
                for (j, a) in row.iter_mut().enumerate() {
                    *a = if j <= i {
                        scale
                            * (0..hs)
                                .map(|d| qkv[qkv_index(shape, bi, i, 0, h, d)] * qkv[qkv_index(shape, bi, j, 1, g, d)])
                                .sum::<f64>()
                    } else {
                        0.0
                    };
                }
                let max = row[..=i].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row[..=i].iter().map(|&s| (s - max).exp()).sum();
                for a in &mut row[..=i] {
                    *a = (*a - max).exp() / sum;
                }
                for d in 0..hs {
                    out[(bi * t + i) * nh * hs + h * hs + d] =
                        (0..=i).map(|j| row[j] * qkv[qkv_index(shape, bi, j, 2, g, d)]).sum();
                }
            }
        }
    }
}

/// Backward of [`attention_forward`]; adds into `dqkv[B, T, (NH + 2·NKV)·HS]`. Per row `i` of query head `h`
/// (key/value head `g`): `dv_j += a_ij dout_i`, `da_ij = dout_i·v_j`, softmax Jacobian
/// `∂a_ij/∂s_ik = a_ij (δ_jk - a_ik)` gives `ds_ik = a_ik (da_ik - Σ_j a_ij da_ij)`, and `s_ik = scale q_i·k_k`
/// gives `dq_i += scale Σ_k ds_ik k_k`, `dk_k += scale ds_ik q_i`. Key/value head `g` is shared by its group's
/// query heads, so its gradients collect all of theirs.
pub fn attention_backward(dqkv: &mut [f64], dout: &[f64], qkv: &[f64], att: &[f64], shape: AttentionShape) {
    let AttentionShape { b, t, nh, nkv, hs } = shape;
    let scale = 1.0 / (hs as f64).sqrt();
    for bi in 0..b {
        for h in 0..nh {
            let g = h / (nh / nkv);
            for i in 0..t {
                let a = &att[((bi * nh + h) * t + i) * t..][..t];
                let dy = &dout[(bi * t + i) * nh * hs + h * hs..][..hs];
                let mut da = vec![0.0; i + 1];
                for j in 0..=i {
                    for d in 0..hs {
                        da[j] += dy[d] * qkv[qkv_index(shape, bi, j, 2, g, d)];
                        dqkv[qkv_index(shape, bi, j, 2, g, d)] += a[j] * dy[d];
                    }
                }
                let dot: f64 = (0..=i).map(|j| a[j] * da[j]).sum();
                for k in 0..=i {
                    let ds = a[k] * (da[k] - dot);
                    for d in 0..hs {
                        dqkv[qkv_index(shape, bi, i, 0, h, d)] += scale * ds * qkv[qkv_index(shape, bi, k, 1, g, d)];
                        dqkv[qkv_index(shape, bi, k, 1, g, d)] += scale * ds * qkv[qkv_index(shape, bi, i, 0, h, d)];
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// GELU and residual

const GELU_CUBIC: f64 = 0.044715;

fn gelu_inner(x: f64) -> f64 {
    (2.0 / std::f64::consts::PI).sqrt() * (x + GELU_CUBIC * x * x * x)
}

/// `out = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub fn gelu_forward(out: &mut [f64], inp: &[f64]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = 0.5 * x * (1.0 + gelu_inner(x).tanh());
    }
}

/// `dinp += dout · d/dx gelu(x)`, with `d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) u'`,
/// `u' = √(2/π) (1 + 3 · 0.044715 x²)`.
pub fn gelu_backward(dinp: &mut [f64], inp: &[f64], dout: &[f64]) {
    for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
        let th = gelu_inner(x).tanh();
        let du = (2.0 / std::f64::consts::PI).sqrt() * (1.0 + 3.0 * GELU_CUBIC * x * x);
        *d += g * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du);
    }
}

/// `out = a + b`.
pub fn residual_forward(out: &mut [f64], a: &[f64], b: &[f64]) {
    for i in 0..out.len() {
        out[i] = a[i] + b[i];
    }
}

/// `da += dout`, `db += dout`.
pub fn residual_backward(da: &mut [f64], db: &mut [f64], dout: &[f64]) {
    for i in 0..dout.len() {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU

/// `out[n, j] = silu(g) u` with `g = gate_up[n, j]`, `u = gate_up[n, I + j]`, `silu(g) = g / (1 + e^-g)`.
pub fn swiglu_forward(out: &mut [f64], gate_up: &[f64], n: usize, i: usize) {
    for row in 0..n {
        for j in 0..i {
            let (g, u) = (gate_up[row * 2 * i + j], gate_up[row * 2 * i + i + j]);
            out[row * i + j] = g * sigmoid(g) * u;
        }
    }
}

/// Backward of [`swiglu_forward`]; adds into `dgate_up`: `d/dg (g σ(g)) = σ(g) + g σ(g) (1 - σ(g))` (from
/// `σ' = σ (1 - σ)`), so `dg += dout u (σ + g σ (1 - σ))`, and `du += dout g σ(g)`.
pub fn swiglu_backward(dgate_up: &mut [f64], dout: &[f64], gate_up: &[f64], n: usize, i: usize) {
    for row in 0..n {
        for j in 0..i {
            let (g, u, dy) = (gate_up[row * 2 * i + j], gate_up[row * 2 * i + i + j], dout[row * i + j]);
            let s = sigmoid(g);
            dgate_up[row * 2 * i + j] += dy * u * (s + g * s * (1.0 - s));
            dgate_up[row * 2 * i + i + j] += dy * g * s;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// LSTM

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One LSTM layer, one time step at a time per sequence, zero initial state. Writes `out[B, T, H]`, the
/// activated gates `gates[B, T, 4H]` (`i, f, g, o`) and `cell[B, T, H]`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward(
    out: &mut [f64],
    gates: &mut [f64],
    cell: &mut [f64],
    x: &[f64],
    w_ih: &[f64],
    w_hh: &[f64],
    b_ih: &[f64],
    b_hh: &[f64],
    shape: LstmShape,
) {
    let LstmShape { b, t, c, h } = shape;
    for bi in 0..b {
        let (mut h_prev, mut c_prev) = (vec![0.0; h], vec![0.0; h]);
        for step in 0..t {
            let xt = &x[(bi * t + step) * c..][..c];
            let pre: Vec<f64> = (0..4 * h)
                .map(|r| {
                    let from_x: f64 = (0..c).map(|k| w_ih[r * c + k] * xt[k]).sum();
                    let from_h: f64 = (0..h).map(|k| w_hh[r * h + k] * h_prev[k]).sum();
                    b_ih[r] + b_hh[r] + from_x + from_h
                })
                .collect();
            let g = &mut gates[(bi * t + step) * 4 * h..][..4 * h];
            for j in 0..h {
                let (ig, fg, gg, og) =
                    (sigmoid(pre[j]), sigmoid(pre[h + j]), pre[2 * h + j].tanh(), sigmoid(pre[3 * h + j]));
                (g[j], g[h + j], g[2 * h + j], g[3 * h + j]) = (ig, fg, gg, og);
                c_prev[j] = fg * c_prev[j] + ig * gg;
                h_prev[j] = og * c_prev[j].tanh();
            }
            cell[(bi * t + step) * h..][..h].copy_from_slice(&c_prev);
            out[(bi * t + step) * h..][..h].copy_from_slice(&h_prev);
        }
    }
}

/// Backpropagation through time, one sequence and one step at a time, from the saved activations. Adds into
/// `dx`, `dw_ih`, `dw_hh`, `db_ih`, `db_hh`.
///
/// At a step with carried `dh` (from `dout` and step `t+1`) and `dc` (from step `t+1`):
/// `dc += dh o (1 - tanh² c)`; the activated gates get `do = dh tanh c`, `di = dc g`, `dg = dc i`,
/// `df = dc c_{t-1}`; the pre-activations get those times `σ' = σ(1-σ)` or `tanh' = 1 - tanh²`; then
/// `dc_{t-1} = dc f` and `dh_{t-1} = Σ_r dpre_r W_hh[r, :]`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    dx: &mut [f64],
    dw_ih: &mut [f64],
    dw_hh: &mut [f64],
    db_ih: &mut [f64],
    db_hh: &mut [f64],
    dout: &[f64],
    x: &[f64],
    w_ih: &[f64],
    w_hh: &[f64],
    out: &[f64],
    gates: &[f64],
    cell: &[f64],
    shape: LstmShape,
) {
    let LstmShape { b, t, c, h } = shape;
    for bi in 0..b {
        let (mut dh_next, mut dc_next) = (vec![0.0; h], vec![0.0; h]);
        for step in (0..t).rev() {
            let row = bi * t + step;
            let g = &gates[row * 4 * h..][..4 * h];
            let zeros = vec![0.0; h];
            let (h_prev, c_prev) = if step > 0 {
                (&out[(row - 1) * h..][..h], &cell[(row - 1) * h..][..h])
            } else {
                (&zeros[..], &zeros[..])
            };
            let mut dpre = vec![0.0; 4 * h];
            for j in 0..h {
                let (ig, fg, gg, og) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
                let tc = cell[row * h + j].tanh();
                let dh = dout[row * h + j] + dh_next[j];
                let dc = dc_next[j] + dh * og * (1.0 - tc * tc);
                dpre[j] = dc * gg * ig * (1.0 - ig);
                dpre[h + j] = dc * c_prev[j] * fg * (1.0 - fg);
                dpre[2 * h + j] = dc * ig * (1.0 - gg * gg);
                dpre[3 * h + j] = dh * tc * og * (1.0 - og);
                dc_next[j] = dc * fg;
            }
            dh_next.fill(0.0);
            for (r, &dp) in dpre.iter().enumerate() {
                db_ih[r] += dp;
                db_hh[r] += dp;
                for k in 0..c {
                    dx[row * c + k] += dp * w_ih[r * c + k];
                    dw_ih[r * c + k] += dp * x[row * c + k];
                }
                for k in 0..h {
                    dw_hh[r * h + k] += dp * h_prev[k];
                    dh_next[k] += dp * w_hh[r * h + k];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Softmax cross-entropy

/// Writes `probs[N, V] = softmax(logits)` and per-row losses `losses[N] = logsumexp(logits[n]) - logits[n, target]`
/// (0 for ignored rows); returns the mean over counted rows (0 if none) and the count.
pub fn softmax_xent_forward(
    probs: &mut [f64],
    losses: &mut [f64],
    logits: &[f64],
    targets: &[u32],
    ignore_index: Option<u32>,
    n: usize,
    v: usize,
) -> (f64, usize) {
    let (mut total, mut count) = (0.0, 0);
    for row in 0..n {
        let l = &logits[row * v..(row + 1) * v];
        let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + l.iter().map(|&z| (z - max).exp()).sum::<f64>().ln();
        for j in 0..v {
            probs[row * v + j] = (l[j] - lse).exp();
        }
        losses[row] = 0.0;
        if Some(targets[row]) != ignore_index {
            losses[row] = lse - l[targets[row] as usize];
            total += losses[row];
            count += 1;
        }
    }
    (if count > 0 { total / count as f64 } else { 0.0 }, count)
}

/// `L = (1/count) Σ_counted (logsumexp(z_n) - z_{n,t})` so `∂L/∂z_{n,j} = (p_{n,j} - [j = t_n]) / count`;
/// adds `dloss` times that into `dlogits` for counted rows.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_backward(
    dlogits: &mut [f64],
    probs: &[f64],
    targets: &[u32],
    ignore_index: Option<u32>,
    dloss: f64,
    count: usize,
    n: usize,
    v: usize,
) {
    for row in 0..n {
        if Some(targets[row]) == ignore_index {
            continue;
        }
        for j in 0..v {
            let onehot = if j == targets[row] as usize { 1.0 } else { 0.0 };
            dlogits[row * v + j] += dloss * (probs[row * v + j] - onehot) / count as f64;
        }
    }
}
