//! One LSTM layer over a batch-first sequence, as PyTorch's `nn.LSTM(batch_first=True)` with zero initial state.
//!
//! Gates in PyTorch's order `i, f, g, o`, each `H` wide, from two biases:
//! `[i f g o] = x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh`, `i, f, o = σ(·)`, `g = tanh(·)`,
//! `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`.
//!
//! The input projection of all time steps is one matrix product `[B·T, C] x [C, 4H]`; only the recurrent
//! product `[B, H] x [H, 4H]` runs per step. A time step is one parallel region: each task owns a block of hidden
//! units, computes their four gates' recurrent terms (dot products against the block's rows of `W_hh`, see
//! `crate::skinny::dots`) and then updates those units' cells, so the step needs one join and no serial cell pass.
//! The backward mirrors it: each task sums the blocks' partial `dh` products of the step after, computes its units'
//! gate gradients, and multiplies them by its block of `W_hh`'s rows (`crate::skinny::add_rows_product`), so
//! `W_hh` is read in place in both directions. Per-step rows of the batch-first buffers are `T·4H` or `T·H` apart and
//! are read in place. (Measured on the seed LSTM's layer, 2 threads: forward ~17.4 -> ~16.9 ms, backward ~30 ->
//! ~27 ms against a product per step, a serial cell pass and a transposed `W_hh` in the backward.) The forward also
//! keeps the last two steps' hidden states in a small padded ring, so that the rows a step reads do not share an L1
//! set; with `dots` prefetching across its calls and vectorized cell loops the layer forward went ~15.7 -> ~13.2 ms.

use crate::cast::{load, store, Contents, Element};
use crate::gemm_types::{Dst, Threads};
use crate::matmul::{gemm, MatMut, MatRef};
use crate::skinny::{add_rows_product, dots, DOTS_OUT, PARALLEL_MIN_FLOPS, SKINNY, SKINNY_COLS};
use crate::vmath::{sigmoid, simd_fn, tanh};
use crate::SendPtr;
use rayon::prelude::*;

/// Hidden units per task of a forward time step: the task streams `4·UNITS` rows of `W_hh` once. 64 gives 16 tasks
/// per step at `H = 1024`, enough to balance two threads (measured per seed-LSTM step: 32 units ~10 µs slower,
/// 128 no faster).
const UNITS: usize = 64;
/// Hidden units per task of a backward time step. Each task adds a partial `[B, H]` product that every task of the
/// next step sums over, so fewer, larger blocks than the forward's: 8 at `H = 1024`.
const BACKWARD_UNITS: usize = 128;

/// Runs `task(block, u0, width)` for the blocks `u0..u0 + width` of `units` of the `H` hidden units, as parallel
/// tasks when a step is large enough to pay for them. Returns when every block is done: one time step.
fn for_each_unit_block(shape: LstmShape, units: usize, task: impl Fn(usize, usize, usize) + Sync) {
    let h = shape.h;
    let run = |block: usize| {
        let u0 = block * units;
        task(block, u0, units.min(h - u0))
    };
    let blocks = h.div_ceil(units);
    if shape.b * 4 * h * h >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1 {
        (0..blocks).into_par_iter().for_each(run);
    } else {
        (0..blocks).for_each(run);
    }
}

/// `len` floats at `offset` of a buffer whose tasks write disjoint parts.
///
/// # Safety
/// The range lies inside the buffer, and no other live reference (in this task or another) overlaps it.
#[allow(clippy::mut_from_ref)]
unsafe fn part<'a>(buffer: SendPtr, offset: usize, len: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(buffer.get().add(offset), len)
}

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

/// The zero state `c_{-1}` of a block of units: the cell loops read a slice either way, which keeps them free of
/// per-element branches and bounds checks (a `match` inside the loop kept them scalar).
const NO_STATE: [f32; MAX_UNITS] = [0.0; MAX_UNITS];
/// The widest block of units a cell loop sees.
const MAX_UNITS: usize = if UNITS > BACKWARD_UNITS { UNITS } else { BACKWARD_UNITS };

simd_fn! {
    /// One sequence's gates at one step, for a block of hidden units: activates the pre-activations `g = [i, f,
    /// g, o]` in place and writes `c = f ⊙ c_prev + i ⊙ g`, `h = o ⊙ tanh(c)` (`c_prev` is `None` at the first
    /// step: zero state).
    fn cell_forward(g: [&mut [f32]; 4], c_prev: Option<&[f32]>, c: &mut [f32], out: &mut [f32]) {
        let units = c.len();
        let [gi, gf, gg, go] = g;
        let (gi, gf, gg, go, out) = (&mut gi[..units], &mut gf[..units], &mut gg[..units], &mut go[..units], &mut out[..units]);
        let c_prev = &c_prev.unwrap_or(&NO_STATE)[..units];
        for j in 0..units {
            let i = sigmoid(gi[j]);
            let f = sigmoid(gf[j]);
            let gv = tanh(gg[j]);
            let o = sigmoid(go[j]);
            let cp = c_prev[j];
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
    /// One sequence's gate gradients at one step, for a block of hidden units: from the activated gates `g`, the
    /// cell `c` (and `c_prev`), `dh = dout + dh_next`; updates `dc_next ← dc ⊙ f` for the step before.
    #[allow(clippy::too_many_arguments)]
    fn cell_backward(
        dg: [&mut [f32]; 4],
        g: [&[f32]; 4],
        c: &[f32],
        c_prev: Option<&[f32]>,
        dout: &[f32],
        dh_next: &[f32],
        dc_next: &mut [f32],
    ) {
        let units = c.len();
        let [dgi, dgf, dgg, dgo] = dg;
        let (dgi, dgf, dgg, dgo) = (&mut dgi[..units], &mut dgf[..units], &mut dgg[..units], &mut dgo[..units]);
        let [gi, gf, gg, go] = g;
        let (gi, gf, gg, go) = (&gi[..units], &gf[..units], &gg[..units], &go[..units]);
        let (dout, dh_next, dc_next) = (&dout[..units], &dh_next[..units], &mut dc_next[..units]);
        let c_prev = &c_prev.unwrap_or(&NO_STATE)[..units];
        for j in 0..units {
            let (i, f, gv, o) = (gi[j], gf[j], gg[j], go[j]);
            let dh = dout[j] + dh_next[j];
            let tc = tanh(c[j]);
            let dc = dc_next[j] + dh * o * (1.0 - tc * tc);
            let cp = c_prev[j];
            dgi[j] = dc * gv * i * (1.0 - i);
            dgf[j] = dc * cp * f * (1.0 - f);
            dgg[j] = dc * i * (1.0 - gv * gv);
            dgo[j] = dh * tc * o * (1.0 - o);
            dc_next[j] = dc * f;
        }
    }
}

/// The forward's outputs, which the tasks of one time step write in disjoint blocks of hidden units.
#[derive(Clone, Copy)]
struct ForwardBuffers {
    out: SendPtr,
    gates: SendPtr,
    cell: SendPtr,
    /// `[2, B, H + RING_PAD]`: each step's hidden states again (alternating steps), rows `H + RING_PAD` apart.
    ring: SendPtr,
}

/// Padding of the rows of [`ForwardBuffers::ring`], one cache line. In `out` the rows of `h_{t-1}` that a step
/// reads are `T·H` floats apart, for the seed LSTM 128 KB: all of them (and the `W_hh` rows, 4 KB apart) fall in
/// one L1 set and evict each other; a row stride one line longer than `H` spreads them over distinct sets
/// (measured in isolation: 244 -> 192 µs per seed-LSTM step).
const RING_PAD: usize = 16;

/// One task of forward time step `step`: hidden units `u0..u0 + width` get their recurrent terms
/// `h_{step-1} · W_hh[q·H + u]` for each gate `q`, then their cell update.
///
/// # Safety
/// The buffers hold `[B, T, H]`, `[B, T, 4H]`, `[B, T, H]`, `[2, B, H + RING_PAD]`; steps before `step` are
/// complete and no other task touches these units at `step`.
unsafe fn forward_units(buf: ForwardBuffers, w_hh: &[f32], shape: LstmShape, step: usize, u0: usize, width: usize) {
    let LstmShape { b, t, h, .. } = shape;
    let (g4, ring_row) = (4 * h, h + RING_PAD);
    let ring = |step: usize, bi: usize| ((step % 2) * b + bi) * ring_row;
    let gate = |bi: usize, q: usize| part(buf.gates, (bi * t + step) * g4 + q * h + u0, width);
    if step > 0 {
        let mut acc = [0.0f32; DOTS_OUT];
        for q in 0..4 {
            // After gate q's rows, gate q + 1's, then the next block's (which this thread likely runs next).
            let next = match q {
                3 => w_hh.as_ptr().wrapping_add((u0 + width) * h),
                _ => w_hh.as_ptr().wrapping_add(((q + 1) * h + u0) * h),
            };
            for r0 in (0..b).step_by(SKINNY) {
                let m = SKINNY.min(b - r0);
                // h_{step-1} of rows r0.. (in the ring, finished by the previous step) against W_hh's rows
                // q·H + u0 .. (H apart).
                let h_prev = buf.ring.get().add(ring(step - 1, r0));
                dots(h_prev, ring_row, m, w_hh[(q * h + u0) * h..].as_ptr(), h, width, h, next, &mut acc);
                for i in 0..m {
                    for (g, &v) in gate(r0 + i, q).iter_mut().zip(&acc[i * SKINNY_COLS..]) {
                        *g += v;
                    }
                }
            }
        }
    }
    for bi in 0..b {
        let row = (bi * t + step) * h + u0;
        let c_prev = (step > 0).then(|| &*part(buf.cell, row - h, width));
        let gates = [gate(bi, 0), gate(bi, 1), gate(bi, 2), gate(bi, 3)];
        let h_now = part(buf.out, row, width);
        cell_forward(gates, c_prev, part(buf.cell, row, width), h_now);
        part(buf.ring, ring(step, bi) + u0, width).copy_from_slice(h_now);
    }
}

/// The backward's per-step state, which the tasks of one step write in disjoint blocks of hidden units.
#[derive(Clone, Copy)]
struct BackwardBuffers {
    dgates: SendPtr,
    dh_next: SendPtr,
    dc_next: SendPtr,
    /// Two sets (alternating steps) of one `[B, H]` partial product per block of units.
    partials: SendPtr,
}

/// What the forward saved, read by every backward task.
#[derive(Clone, Copy)]
struct Saved<'a> {
    dout: &'a [f32],
    gates: &'a [f32],
    cell: &'a [f32],
}

/// One task of backward time step `step` (`T - 1` down to 0) for block `block` of hidden units
/// `u0..u0 + width`:
/// 1. `dh_next` of these units (the gradient reaching `h_step` from step `step + 1`): the sum of every block's
///    partial product from the step before (zero at the last step);
/// 2. the gate gradients of step `step` for these units;
/// 3. unless `step` is 0, this block's partial product `dgates_step[:, rows] · W_hh[rows, :]` over its rows
///    `q·H + u` of `W_hh` (whole rows, so `W_hh` is read in place, never transposed).
///
/// # Safety
/// The buffers hold `[B, T, 4H]`, `[B, H]`, `[B, H]` and `2 × blocks × [B, H]`; steps after `step` are complete
/// and no other task touches these units in this step.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_units(
    buf: BackwardBuffers,
    w_hh: &[f32],
    saved: Saved<'_>,
    shape: LstmShape,
    step: usize,
    block: usize,
    u0: usize,
    width: usize,
) {
    let LstmShape { b, t, h, .. } = shape;
    let g4 = 4 * h;
    let blocks = h.div_ceil(BACKWARD_UNITS);
    let partial = |parity: usize, of: usize, bi: usize| ((parity * blocks + of) * b + bi) * h;
    if step + 1 < t {
        for bi in 0..b {
            let dh = part(buf.dh_next, bi * h + u0, width);
            dh.fill(0.0);
            for of in 0..blocks {
                // Written by block `of` in the previous step; nobody writes this parity now.
                let share =
                    std::slice::from_raw_parts(buf.partials.get().add(partial((step + 1) % 2, of, bi) + u0), width);
                for (d, &v) in dh.iter_mut().zip(share) {
                    *d += v;
                }
            }
        }
    }
    for bi in 0..b {
        let row = (bi * t + step) * h + u0;
        let gate_row = (bi * t + step) * g4 + u0;
        let dg = [0, 1, 2, 3].map(|q| part(buf.dgates, gate_row + q * h, width));
        let g = [0, 1, 2, 3].map(|q| &saved.gates[gate_row + q * h..][..width]);
        let c_prev = (step > 0).then(|| &saved.cell[row - h..][..width]);
        let (dh_next, dc_next) = (part(buf.dh_next, bi * h + u0, width), part(buf.dc_next, bi * h + u0, width));
        cell_backward(dg, g, &saved.cell[row..][..width], c_prev, &saved.dout[row..][..width], dh_next, dc_next);
    }
    if step > 0 {
        let mine = part(buf.partials, partial(step % 2, block, 0), b * h);
        mine.fill(0.0);
        let mine = mine.as_mut_ptr();
        for q in 0..4 {
            for r0 in (0..b).step_by(SKINNY) {
                let m = SKINNY.min(b - r0);
                // This task's gate gradients of step `step` (just written), rows T·4H apart.
                let dgates = buf.dgates.get().add((r0 * t + step) * g4 + q * h + u0);
                let w_rows = w_hh[(q * h + u0) * h..].as_ptr();
                add_rows_product(mine.add(r0 * h), h, dgates, t * g4, m, w_rows, h, width, h);
            }
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
    // Phase 2: the recurrence, one parallel region per time step.
    let mut ring = vec![0.0f32; 2 * b * (h + RING_PAD)];
    let buf = ForwardBuffers {
        out: SendPtr(out.as_mut_ptr()),
        gates: SendPtr(gates.as_mut_ptr()),
        cell: SendPtr(cell.as_mut_ptr()),
        ring: SendPtr(ring.as_mut_ptr()),
    };
    assert!(out.len() >= n * h && gates.len() >= n * g4 && cell.len() >= n * h && w_hh.len() >= g4 * h);
    for step in 0..t {
        // SAFETY: the buffers have the asserted sizes, steps run in order, tasks own disjoint unit blocks.
        for_each_unit_block(shape, UNITS, |_, u0, width| unsafe { forward_units(buf, w_hh, shape, step, u0, width) });
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
    /// Per-block partial products `dgates_t W_hh` `[2, H / BACKWARD_UNITS, B, H]` (alternating steps).
    pub partials: Vec<f32>,
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
        self.partials.resize(2 * h.div_ceil(BACKWARD_UNITS) * b * h, 0.0);
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
    grads: Contents,
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
    let LstmScratch { dgates, dh_next, dc_next, h_prev, partials } = scratch;
    let buf = BackwardBuffers {
        dgates: SendPtr(dgates.as_mut_ptr()),
        dh_next: SendPtr(dh_next.as_mut_ptr()),
        dc_next: SendPtr(dc_next.as_mut_ptr()),
        partials: SendPtr(partials.as_mut_ptr()),
    };
    let saved = Saved { dout, gates, cell };
    assert!(dout.len() >= n * h && gates.len() >= n * g4 && cell.len() >= n * h && w_hh.len() >= g4 * h);
    for step in (0..t).rev() {
        // SAFETY: scratch was fitted to the shape, steps run in order, tasks own disjoint unit blocks.
        for_each_unit_block(shape, BACKWARD_UNITS, |block, u0, width| unsafe {
            backward_units(buf, w_hh, saved, shape, step, block, u0, width)
        });
    }
    let dgates_m = MatRef::row_major(&dgates[..n * g4], n, g4);
    // dx += dgates W_ih ; dW_ih (+)= dgatesᵀ x
    gemm(MatMut::row_major(dx, n, c), dgates_m, MatRef::row_major(w_ih, g4, c), 1.0, Dst::Accumulate, Threads::Pool);
    gemm(MatMut::row_major(dw_ih, g4, c), dgates_m.t(), MatRef::row_major(x, n, c), 1.0, grads.into(), Threads::Pool);
    // dW_hh (+)= Σ_b Σ_{t≥1} dgates[b, t]ᵀ h[b, t-1]: one product over all rows, with h_prev[b, t] = h[b, t-1] and
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
        grads.into(),
        Threads::Pool,
    );
    // Both biases enter the gates the same way, so they get the same gradient: one pass adds it to both.
    grads.prepare(&mut db_ih[..g4]);
    grads.prepare(&mut db_hh[..g4]);
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

/// Backward (backpropagation through time). Adds into `dx`, and adds into or (`grads` = [`Contents::Overwrite`])
/// overwrites `dw_ih`, `dw_hh`, `db_ih`, `db_hh`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward<E: Element>(
    dx: &mut [E],
    dw_ih: &mut [E],
    dw_hh: &mut [E],
    db_ih: &mut [E],
    db_hh: &mut [E],
    grads: Contents,
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
        store(dw_ih, grads, |dw_ih| {
            store(dw_hh, grads, |dw_hh| {
                store(db_ih, grads, |db_ih| {
                    store(db_hh, grads, |db_hh| {
                        lstm_backward_f32(
                            dx, dw_ih, dw_hh, db_ih, db_hh, grads, scratch, &dout, &x, &w_ih, &w_hh, &out, &gates,
                            &cell, shape,
                        )
                    })
                })
            })
        })
    })
}
