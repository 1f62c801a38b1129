//! Fused causal self-attention over a packed QKV buffer: multi-head (GPT-2) and grouped-query (Llama).
//!
//! Input `qkv[B, T, (NH + 2·NKV)·HS]` holds, per position, the query, key and value vectors side by side
//! (`[q | k | v]`: `NH` query heads, then `NKV` key heads, then `NKV` value heads, each `HS` wide; see
//! [`AttentionShape`]). With `NKV = NH` this is GPT-2's `c_attn` output `[B, T, 3C]`. Query head `h` uses
//! key/value head `g = h / (NH/NKV)` (Hugging Face's `repeat_kv`). Per `(b, h)`: `S = scale · Q_h K_gᵀ` with
//! `scale = 1/√HS`, causal mask (`j > i` excluded), `A = softmax(S)` row-wise, `out_h = A V_g`. The forward keeps
//! only `A[B, NH, T, T]` for the backward; the backward needs one `T x T` scratch per query head for `dA`, then
//! `dS = A ⊙ (dA - rowsum(dA ⊙ A))`, `dQ_h = scale · dS K_g`, `dK_g = scale · Σ_h dSᵀ Q_h`, `dV_g = Σ_h Aᵀ dout_h`
//! (sums over the query heads of the group).
//!
//! The forward runs heads in parallel (rayon over `B·NH`); the backward runs key/value heads in parallel (over
//! `B·NKV`), with the query heads of a group nested in parallel for `dS` and `dQ`. Each product is
//! single-threaded.

use crate::cast::{load, store, Contents, Element};

use crate::gemm_dispatch::gemm_raw;
use crate::gemm_types::{Dst, Threads};
use crate::vmath::{self, simd_fn};
use crate::SendPtr;
use rayon::prelude::*;

simd_fn! {
    /// Causal softmax of a `T x T` score block in place: row `i` over columns `0..=i`, zeros above the diagonal.
    fn causal_softmax(a: &mut [f32], t: usize) {
        for (i, row) in a.chunks_exact_mut(t).enumerate() {
            let (live, masked) = row.split_at_mut(i + 1);
            let max = vmath::max(live);
            let inv = 1.0 / vmath::exp_shifted_in_place(live, max);
            live.iter_mut().for_each(|x| *x *= inv);
            masked.fill(0.0);
        }
    }
}

simd_fn! {
    /// `dS = A ⊙ (dA - rowsum(dA ⊙ A))` in place of `dA`, causal part only; zeros above the diagonal.
    fn softmax_backward(ds: &mut [f32], a: &[f32], t: usize) {
        for (i, (ds_row, a_row)) in ds.chunks_exact_mut(t).zip(a.chunks_exact(t)).enumerate() {
            let dot = vmath::dot(&ds_row[..=i], &a_row[..=i]);
            for (d, &p) in ds_row[..=i].iter_mut().zip(&a_row[..=i]) {
                *d = p * (*d - dot);
            }
            ds_row[i + 1..].fill(0.0);
        }
    }
}

/// Shape of one attention call: `NH` query heads and `NKV` key/value heads, all of size `HS`.
///
/// The packed input row of each position is `[q | k | v]`, [`AttentionShape::qkv_width`] `= (NH + 2·NKV)·HS`
/// wide: query head `h` at columns `h·HS..`, key head `g` at `NH·HS + g·HS..`, value head `g` at
/// `(NH + NKV)·HS + g·HS..`. Query head `h` attends with key/value head `h / (NH/NKV)` (grouped-query attention,
/// Hugging Face's `repeat_kv`); `NKV = NH` is multi-head attention (GPT-2: the row is `[q | k | v]` of `3C`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size `B`.
    pub b: usize,
    /// Sequence length `T`.
    pub t: usize,
    /// Query heads `NH`.
    pub nh: usize,
    /// Key/value heads `NKV`; must divide `NH`.
    pub nkv: usize,
    /// Head size `HS`.
    pub hs: usize,
}

impl AttentionShape {
    /// Multi-head attention over width `C` (GPT-2): `NKV = NH`, `HS = C / NH`; `NH` must divide `C`.
    pub fn mha(b: usize, t: usize, c: usize, nh: usize) -> AttentionShape {
        assert!(nh > 0 && c.is_multiple_of(nh), "attention: {nh} heads do not divide width {c}");
        AttentionShape { b, t, nh, nkv: nh, hs: c / nh }
    }

    /// Grouped-query attention: `NH` query heads sharing `NKV` key/value heads of size `HS` in groups of
    /// `NH / NKV` (Llama's `num_attention_heads`, `num_key_value_heads`, `head_dim`).
    pub fn gqa(b: usize, t: usize, nh: usize, nkv: usize, hs: usize) -> AttentionShape {
        let shape = AttentionShape { b, t, nh, nkv, hs };
        shape.check();
        shape
    }

    /// Head size `HS`.
    pub fn head_size(&self) -> usize {
        self.hs
    }

    /// Query heads per key/value head, `NH / NKV`.
    pub fn group_size(&self) -> usize {
        self.nh / self.nkv
    }

    /// Width of the queries and of the output, `NH·HS` (GPT-2's `C`).
    pub fn q_width(&self) -> usize {
        self.nh * self.hs
    }

    /// Width of the keys, and of the values, `NKV·HS`.
    pub fn kv_width(&self) -> usize {
        self.nkv * self.hs
    }

    /// Width of a packed `[q | k | v]` row, `(NH + 2·NKV)·HS` (GPT-2's `3C`).
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }

    /// Length of the saved probabilities `att[B, NH, T, T]`, `B·NH·T²`.
    pub fn att_len(&self) -> usize {
        self.b * self.nh * self.t * self.t
    }

    /// Length of the backward's fp32 scratch: one `T x T` block of `dA`/`dS` per query head, `B·NH·T²` (equal to
    /// [`AttentionShape::att_len`]). Per query head rather than per key/value head so that the heads of one group
    /// compute their `dS` in parallel before their key/value head sums them.
    pub fn scratch_len(&self) -> usize {
        self.att_len()
    }

    fn check(&self) {
        assert!(self.hs > 0, "attention: head size 0");
        assert!(
            self.nkv > 0 && self.nh.is_multiple_of(self.nkv),
            "attention: {} key/value heads do not divide {} query heads",
            self.nkv,
            self.nh
        );
    }
}

/// Column offsets inside a packed row and row strides of one call, shared by the forward and the backward.
#[derive(Clone, Copy)]
struct Layout {
    /// Row stride of `qkv`/`dqkv`, `(NH + 2·NKV)·HS`.
    w: usize,
    /// Row stride of `out`/`dout`, `NH·HS`.
    qw: usize,
    /// Column where the values start, `(NH + NKV)·HS`.
    v0: usize,
    hs: usize,
}

impl Layout {
    fn of(shape: AttentionShape) -> Layout {
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        Layout { w: qw + 2 * kvw, qw, v0: qw + kvw, hs: shape.hs }
    }

    /// Offsets into the packed row of query head `h` and of key/value head `g`: `(q, k, v)`.
    fn offsets(&self, h: usize, g: usize) -> (usize, usize, usize) {
        (h * self.hs, self.qw + g * self.hs, self.v0 + g * self.hs)
    }
}

/// The fp32 kernel of [`attention_forward`].
fn attention_forward_f32(out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: AttentionShape) {
    shape.check();
    let AttentionShape { b, t, nh, .. } = shape;
    let (lay, group) = (Layout::of(shape), shape.group_size());
    let (w, qw, hs) = (lay.w, lay.qw, lay.hs);
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(out.len() >= b * t * qw && qkv.len() >= b * t * w && att.len() >= shape.att_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    att[..shape.att_len()].par_chunks_mut(t * t).enumerate().for_each(|(bh, a)| {
        let (bi, h) = (bh / nh, bh % nh);
        let (qo, ko, vo) = lay.offsets(h, h / group);
        let base = bi * t * w;
        let (q, k, v) = (qkv[base + qo..].as_ptr(), qkv[base + ko..].as_ptr(), qkv[base + vo..].as_ptr());
        let o = out_ptr.get();
        // SAFETY: `a` is this task's own T x T block; q, k, v are T x HS strided reads inside `qkv` (length
        // checked above; heads of one group read the same k, v); task (bi, h) writes only
        // out[bi, :, h*HS..(h+1)*HS], which no other task touches.
        // Row block [i0, i1) needs keys and values 0..i1 only (causal), which roughly halves the work.
        unsafe {
            for (i0, i1) in causal_blocks(t) {
                let (rows, rq) = (i1 - i0, q.add(i0 * w));
                let dst = a.as_mut_ptr().add(i0 * t);
                gemm_raw(rows, i1, hs, dst, t, 1, (rq, w, 1), (k, 1, w), scale, Dst::Overwrite, Threads::Single);
            }
            causal_softmax(a, t);
            for (i0, i1) in causal_blocks(t) {
                let (rows, dst) = (i1 - i0, o.add(bi * t * qw + h * hs + i0 * qw));
                let lhs = (a.as_ptr().add(i0 * t), t, 1);
                gemm_raw(rows, hs, i1, dst, qw, 1, lhs, (v, w, 1), 1.0, Dst::Overwrite, Threads::Single);
            }
        }
    });
}

/// Rows per block of the causal products: large enough for efficient products, small enough that the part
/// above the diagonal they compute needlessly stays small.
const CAUSAL_BLOCK: usize = 32;

/// `[i0, i1)` row blocks covering `0..t`.
fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(CAUSAL_BLOCK).map(move |i0| (i0, (i0 + CAUSAL_BLOCK).min(t)))
}

/// The fp32 kernel of [`attention_backward`].
///
/// One task per `(b, key/value head g)`: the key and value gradients of head `g` sum contributions from every
/// query head of its group, so they must be written by one task. Inside it, the group's query heads first compute
/// their own `dS` (in their own scratch block) and `dQ` in parallel, then `dK_g` and `dV_g` add up the heads'
/// products one after the other. With `NKV = NH` (GPT-2) each task is one head and its four products, as many
/// tasks as the forward has: grouping costs multi-head attention nothing.
fn attention_backward_f32(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    shape: AttentionShape,
) {
    shape.check();
    let AttentionShape { b, t, nkv, .. } = shape;
    let (lay, group) = (Layout::of(shape), shape.group_size());
    let (w, qw, hs) = (lay.w, lay.qw, lay.hs);
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(dqkv.len() >= b * t * w && qkv.len() >= b * t * w && dout.len() >= b * t * qw);
    assert!(att.len() >= shape.att_len() && scratch.len() >= shape.scratch_len());
    let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
    // att[B, NH, T, T] and the scratch hold a group's query heads h = g·group + r next to each other.
    let block = group * t * t;
    scratch[..shape.scratch_len()]
        .par_chunks_mut(block)
        .zip(att[..shape.att_len()].par_chunks(block))
        .enumerate()
        .for_each(|(bg, (ds_group, a_group))| {
            let (bi, g) = (bg / nkv, bg % nkv);
            let base = bi * t * w;
            // Per query head of the group: dS in its own scratch block, then dQ.
            ds_group.par_chunks_mut(t * t).zip(a_group.par_chunks(t * t)).enumerate().for_each(|(r, (ds, a))| {
                let h = g * group + r;
                let (qo, ko, vo) = lay.offsets(h, g);
                let (k, v) = (qkv[base + ko..].as_ptr(), qkv[base + vo..].as_ptr());
                let dy = dout[bi * t * qw + h * hs..].as_ptr();
                let dq = dqkv_ptr.get().wrapping_add(base + qo);
                // SAFETY: `ds` is this head's own T x T scratch; reads stay inside qkv/dout/att (lengths checked
                // above); writes go to dqkv[bi, :, q columns of head h], which belong to this head alone. Only the
                // causal (lower) part of A and dS is non-zero, so row blocks read columns 0..i1.
                unsafe {
                    for (i0, i1) in causal_blocks(t) {
                        // dA[i0..i1, 0..i1] = dout[i0..i1] Vᵀ
                        let (dst, lhs) = (ds.as_mut_ptr().add(i0 * t), (dy.add(i0 * qw), qw, 1));
                        gemm_raw(i1 - i0, i1, hs, dst, t, 1, lhs, (v, 1, w), 1.0, Dst::Overwrite, Threads::Single);
                    }
                    softmax_backward(ds, a, t);
                    for (i0, i1) in causal_blocks(t) {
                        // dQ[i0..i1] += scale · dS[i0..i1, 0..i1] K[0..i1]
                        let (dst, lhs) = (dq.add(i0 * w), (ds.as_ptr().add(i0 * t), t, 1));
                        gemm_raw(i1 - i0, hs, i1, dst, w, 1, lhs, (k, w, 1), scale, Dst::Accumulate, Threads::Single);
                    }
                }
            });
            // Key/value head g sums its query heads' products.
            let (_, ko, vo) = lay.offsets(0, g);
            let d = dqkv_ptr.get();
            let (dk, dv) = (d.wrapping_add(base + ko), d.wrapping_add(base + vo));
            for (r, (ds, a)) in ds_group.chunks_exact(t * t).zip(a_group.chunks_exact(t * t)).enumerate() {
                let h = g * group + r;
                let q = qkv[base + h * hs..].as_ptr();
                let dy = dout[bi * t * qw + h * hs..].as_ptr();
                // SAFETY: as above; writes go to dqkv[bi, :, k and v columns of head g], which belong to this task
                // alone. Column blocks of the causal A and dS read rows j0..T.
                unsafe {
                    for (j0, j1) in causal_blocks(t) {
                        // dV[j0..j1] += A[j0..T, j0..j1]ᵀ dout[j0..T]
                        let (lhs, rhs) = ((a.as_ptr().add(j0 * t + j0), 1, t), (dy.add(j0 * qw), qw, 1));
                        let (rows, k_len, dst) = (j1 - j0, t - j0, dv.add(j0 * w));
                        gemm_raw(rows, hs, k_len, dst, w, 1, lhs, rhs, 1.0, Dst::Accumulate, Threads::Single);
                    }
                    for (j0, j1) in causal_blocks(t) {
                        // dK[j0..j1] += scale · dS[j0..T, j0..j1]ᵀ Q[j0..T]
                        let (lhs, rhs) = ((ds.as_ptr().add(j0 * t + j0), 1, t), (q.add(j0 * w), w, 1));
                        let (rows, k_len, dst) = (j1 - j0, t - j0, dk.add(j0 * w));
                        gemm_raw(rows, hs, k_len, dst, w, 1, lhs, rhs, scale, Dst::Accumulate, Threads::Single);
                    }
                }
            }
        });
}

/// Forward: writes `out[B, T, NH·HS]` (overwrites) and the probabilities `att[B, NH, T, T]` (zero above the
/// diagonal) from the packed `qkv[B, T, (NH + 2·NKV)·HS]`.
pub fn attention_forward<E: Element>(out: &mut [E], att: &mut [E], qkv: &[E], shape: AttentionShape) {
    let qkv = load(qkv);
    store(out, Contents::Overwrite, |out| {
        store(att, Contents::Overwrite, |att| attention_forward_f32(out, att, &qkv, shape))
    })
}

/// Backward: adds into `dqkv[B, T, (NH + 2·NKV)·HS]`. `scratch` (fp32, at least
/// [`AttentionShape::scratch_len`] `= B·NH·T²`) is overwritten.
pub fn attention_backward<E: Element>(
    dqkv: &mut [E],
    scratch: &mut [f32],
    dout: &[E],
    qkv: &[E],
    att: &[E],
    shape: AttentionShape,
) {
    let (dout, qkv, att) = (load(dout), load(qkv), load(att));
    store(dqkv, Contents::Accumulate, |dqkv| attention_backward_f32(dqkv, scratch, &dout, &qkv, &att, shape))
}
