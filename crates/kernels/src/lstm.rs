//! One LSTM layer over a batch-first sequence, as PyTorch's `nn.LSTM(batch_first=True)` with zero initial state.
//!
//! Gates in PyTorch's order `i, f, g, o`, each `H` wide, from two biases:
//! `[i f g o] = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh`, `i, f, o = σ(·)`, `g = tanh(·)`,
//! `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`.
//!
//! The input projection of all time steps is one matrix product `[B·T, C] x [C, 4H]`; only the recurrent
//! product `[B, H] x [H, 4H]` runs per step. Per-step slices of the batch-first buffers are strided matrices
//! (row stride `T·4H` or `T·H`), which `gemm` reads and writes in place.

use crate::cast::{load, store, Contents, Element};

use crate::matmul::{gemm, Dst, MatMut, MatRef, Threads};
use crate::vmath::{sigmoid, simd_fn, tanh};

/// Shape of one LSTM layer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmShape {
    /// Batch size `B`.
    pub b: usize,
    /// Sequence length `T`.
    pub t: usize,
    /// Input width `C`.
    pub c: usize,
    /// Hidden size `H`.
    pub h: usize,
}

simd_fn! {
    /// One sequence's gates at one step: activates `g = [i f g o]` (pre-activations, `4H`) in place and writes
    /// `c = f ⊙ c_prev + i ⊙ g`, `h = o ⊙ tanh(c)` (`c_prev` is `None` at the first step: zero state).
    fn cell_forward(g: &mut [f32], c_prev: Option<&[f32]>, c: &mut [f32], out: &mut [f32]) {
        let hsize = c.len();
        let (gi, rest) = g.split_at_mut(hsize);
        let (gf, rest) = rest.split_at_mut(hsize);
        let (gg, go) = rest.split_at_mut(hsize);
        for j in 0..hsize {
            let i = sigmoid(gi[j]);
            let f = sigmoid(gf[j]);
            let gv = tanh(gg[j]);
            let o = sigmoid(go[j]);
            let cp = match c_prev {
                Some(cp) => cp[j],
                None => 0.0,
            };
            let cv = f * cp + i * gv;
            gi[j] = i;
            gf[j] = f;
            gg[j] = gv;
            go[j] = o;
            c[j] = cv;
            out[j] = o * tanh(cv);
        }
    }
}

simd_fn! {
    /// One sequence's gate gradients at one step, from the activated gates `g`, the cell `c` (and `c_prev`),
    /// `dh = dout + dh_next`; updates `dc_next ← dc ⊙ f` for the step before.
    #[allow(clippy::too_many_arguments)]
    fn cell_backward(
        dg: &mut [f32],
        g: &[f32],
        c: &[f32],
        c_prev: Option<&[f32]>,
        dout: &[f32],
        dh_next: &[f32],
        dc_next: &mut [f32],
    ) {
        let h = c.len();
        let (dgi, rest) = dg.split_at_mut(h);
        let (dgf, rest) = rest.split_at_mut(h);
        let (dgg, dgo) = rest.split_at_mut(h);
        for j in 0..h {
            let (i, f, gv, o) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
            let dh = dout[j] + dh_next[j];
            let tc = tanh(c[j]);
            let dc = dc_next[j] + dh * o * (1.0 - tc * tc);
            let cp = match c_prev {
                Some(cp) => cp[j],
                None => 0.0,
            };
            dgi[j] = dc * gv * i * (1.0 - i);
            dgf[j] = dc * cp * f * (1.0 - f);
            dgg[j] = dc * i * (1.0 - gv * gv);
            dgo[j] = dh * tc * o * (1.0 - o);
            dc_next[j] = dc * f;
        }
    }
}

/// The fp32 kernel of [`lstm_forward`].
#[allow(clippy::too_many_arguments)]
fn lstm_forward_f32(
    out: &mut [f32],
    gates: &mut [f32],
    cell: &mut [f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    b_ih: &[f32],
    b_hh: &[f32],
    shape: LstmShape,
) {
    let LstmShape { b, t, c, h } = shape;
    let (n, g4) = (b * t, 4 * h);
    // Phase 1: all time steps' input projections plus both biases, one product.
    for row in gates[..n * g4].chunks_exact_mut(g4) {
        for ((g, &bi), &bh) in row.iter_mut().zip(b_ih).zip(b_hh) {
            *g = bi + bh;
        }
    }
    gemm(
        MatMut::row_major(&mut gates[..n * g4], n, g4),
        MatRef::row_major(x, n, c),
        MatRef::row_major(w_ih, g4, c).t(),
        1.0,
        Dst::Accumulate,
        Threads::Pool,
    );
    // Phase 2: the recurrence.
    for step in 0..t {
        if step > 0 {
            gemm(
                MatMut::strided(&mut gates[step * g4..], b, g4, t * g4, 1),
                MatRef::strided(&out[(step - 1) * h..], b, h, t * h, 1),
                MatRef::row_major(w_hh, g4, h).t(),
                1.0,
                Dst::Accumulate,
                Threads::Pool,
            );
        }
        for bi in 0..b {
            let row = (bi * t + step) * h;
            let g = &mut gates[(bi * t + step) * g4..(bi * t + step + 1) * g4];
            let (before, now) = cell.split_at_mut(row);
            let c_prev = if step > 0 { Some(&before[row - h..]) } else { None };
            cell_forward(g, c_prev, &mut now[..h], &mut out[row..row + h]);
        }
    }
}

/// Caller-owned scratch for [`lstm_backward`], reused across steps.
#[derive(Default, Debug)]
pub struct LstmScratch {
    /// Gate pre-activation gradients `[B, T, 4H]`.
    pub dgates: Vec<f32>,
    /// Gradient flowing into `h_{t-1}` from step `t`, `[B, H]`.
    pub dh_next: Vec<f32>,
    /// Gradient flowing into `c_{t-1}` from step `t`, `[B, H]`.
    pub dc_next: Vec<f32>,
    /// The hidden states shifted one step later, `[B, T, H]` (`h_{t-1}`, zero at `t = 0`), for `dW_hh`.
    pub h_prev: Vec<f32>,
    /// `W_hhᵀ` `[H, 4H]`, so that the per-step `dgates_t W_hh` reads contiguous columns.
    pub w_hh_t: Vec<f32>,
}

impl LstmScratch {
    fn fit(&mut self, shape: LstmShape) {
        let LstmShape { b, t, h, .. } = shape;
        self.dgates.resize(b * t * 4 * h, 0.0);
        self.dh_next.clear();
        self.dh_next.resize(b * h, 0.0);
        self.dc_next.clear();
        self.dc_next.resize(b * h, 0.0);
        self.h_prev.resize(b * t * h, 0.0);
        self.w_hh_t.resize(4 * h * h, 0.0);
    }
}

/// The fp32 kernel of [`lstm_backward`].
#[allow(clippy::too_many_arguments)]
fn lstm_backward_f32(
    dx: &mut [f32],
    dw_ih: &mut [f32],
    dw_hh: &mut [f32],
    db_ih: &mut [f32],
    db_hh: &mut [f32],
    scratch: &mut LstmScratch,
    dout: &[f32],
    x: &[f32],
    w_ih: &[f32],
    w_hh: &[f32],
    out: &[f32],
    gates: &[f32],
    cell: &[f32],
    shape: LstmShape,
) {
    let LstmShape { b, t, c, h } = shape;
    let (n, g4) = (b * t, 4 * h);
    scratch.fit(shape);
    let LstmScratch { dgates, dh_next, dc_next, h_prev, w_hh_t } = scratch;
    // One transpose per backward (a pass over W_hh) lets each of the T recurrent products below stream W_hh's
    // columns contiguously, a few rows at a time (crate::skinny), instead of through the gemm crate with B rows.
    crate::transpose::transpose(w_hh_t, w_hh, g4, h);
    for step in (0..t).rev() {
        for bi in 0..b {
            let row = (bi * t + step) * h;
            let g = &gates[(bi * t + step) * g4..(bi * t + step + 1) * g4];
            let dg = &mut dgates[(bi * t + step) * g4..(bi * t + step + 1) * g4];
            let c_prev = if step > 0 { Some(&cell[row - h..row]) } else { None };
            let dh_next = &dh_next[bi * h..(bi + 1) * h];
            let dc_next = &mut dc_next[bi * h..(bi + 1) * h];
            cell_backward(dg, g, &cell[row..row + h], c_prev, &dout[row..row + h], dh_next, dc_next);
        }
        if step > 0 {
            // dh_{t-1} = dgates_t W_hh, with W_hh read as (W_hhᵀ)ᵀ.
            gemm(
                MatMut::row_major(dh_next, b, h),
                MatRef::strided(&dgates[step * g4..], b, g4, t * g4, 1),
                MatRef::row_major(w_hh_t, h, g4).t(),
                1.0,
                Dst::Overwrite,
                Threads::Pool,
            );
        }
    }
    let dgates_m = MatRef::row_major(&dgates[..n * g4], n, g4);
    // dx += dgates W_ih ; dW_ih += dgatesᵀ x
    gemm(MatMut::row_major(dx, n, c), dgates_m, MatRef::row_major(w_ih, g4, c), 1.0, Dst::Accumulate, Threads::Pool);
    gemm(
        MatMut::row_major(dw_ih, g4, c),
        dgates_m.t(),
        MatRef::row_major(x, n, c),
        1.0,
        Dst::Accumulate,
        Threads::Pool,
    );
    // dW_hh += Σ_b Σ_{t≥1} dgates[b, t]ᵀ h[b, t-1]: one product over all rows, with h_prev[b, t] = h[b, t-1] and
    // h_prev[b, 0] = 0 (the zero initial state contributes nothing).
    for (prev, seq) in h_prev.chunks_exact_mut(t * h).zip(out[..n * h].chunks_exact(t * h)) {
        prev[..h].fill(0.0);
        prev[h..].copy_from_slice(&seq[..(t - 1) * h]);
    }
    gemm(
        MatMut::row_major(dw_hh, g4, h),
        dgates_m.t(),
        MatRef::row_major(h_prev, n, h),
        1.0,
        Dst::Accumulate,
        Threads::Pool,
    );
    // Both biases enter the gates the same way, so they get the same gradient: one pass adds it to both.
    for row in dgates[..n * g4].chunks_exact(g4) {
        for ((bi, bh), &g) in db_ih[..g4].iter_mut().zip(db_hh[..g4].iter_mut()).zip(row) {
            *bi += g;
            *bh += g;
        }
    }
}

/// Forward. Writes `out[B, T, H]` (the hidden states), and saves `gates[B, T, 4H]` (activated gate values
/// `i, f, g, o`) and `cell[B, T, H]` for the backward. The recurrence runs in fp32 in every precision; what is
/// stored (the hidden states, gates and cells) is rounded to the storage type.
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward<E: Element>(
    out: &mut [E],
    gates: &mut [E],
    cell: &mut [E],
    x: &[E],
    w_ih: &[E],
    w_hh: &[E],
    b_ih: &[E],
    b_hh: &[E],
    shape: LstmShape,
) {
    let (x, w_ih, w_hh, b_ih, b_hh) = (load(x), load(w_ih), load(w_hh), load(b_ih), load(b_hh));
    store(out, Contents::Overwrite, |out| {
        store(gates, Contents::Overwrite, |gates| {
            store(cell, Contents::Overwrite, |cell| {
                lstm_forward_f32(out, gates, cell, &x, &w_ih, &w_hh, &b_ih, &b_hh, shape)
            })
        })
    })
}

/// Backward (backpropagation through time). Adds into `dx`, `dw_ih`, `dw_hh`, `db_ih`, `db_hh`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward<E: Element>(
    dx: &mut [E],
    dw_ih: &mut [E],
    dw_hh: &mut [E],
    db_ih: &mut [E],
    db_hh: &mut [E],
    scratch: &mut LstmScratch,
    dout: &[E],
    x: &[E],
    w_ih: &[E],
    w_hh: &[E],
    out: &[E],
    gates: &[E],
    cell: &[E],
    shape: LstmShape,
) {
    let (dout, x, w_ih, w_hh) = (load(dout), load(x), load(w_ih), load(w_hh));
    let (out, gates, cell) = (load(out), load(gates), load(cell));
    store(dx, Contents::Accumulate, |dx| {
        store(dw_ih, Contents::Accumulate, |dw_ih| {
            store(dw_hh, Contents::Accumulate, |dw_hh| {
                store(db_ih, Contents::Accumulate, |db_ih| {
                    store(db_hh, Contents::Accumulate, |db_hh| {
                        lstm_backward_f32(
                            dx, dw_ih, dw_hh, db_ih, db_hh, scratch, &dout, &x, &w_ih, &w_hh, &out, &gates, &cell,
                            shape,
                        )
                    })
                })
            })
        })
    })
}
