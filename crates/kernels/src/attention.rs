//! Fused causal multi-head self-attention over a packed QKV buffer.
//!
//! Input `qkv[B, T, 3C]` holds, per position, the query, key and value vectors side by side (`[q | k | v]`,
//! each `C = NH * HS` wide, head `h` at columns `h*HS..(h+1)*HS`), as GPT-2's `c_attn` produces them. Per
//! `(b, h)`: `S = scale · Q Kᵀ` with `scale = 1/√HS`, causal mask (`j > i` excluded), `A = softmax(S)` row-wise,
//! `out = A V`. The forward keeps only `A[B, NH, T, T]` for the backward; the backward needs one `T x T` scratch
//! per head for `dA`, then `dS = A ⊙ (dA - rowsum(dA ⊙ A))`, `dQ = scale · dS K`, `dK = scale · dSᵀ Q`,
//! `dV = Aᵀ dout`.
//!
//! Heads run in parallel (rayon over `B * NH`), each head's products single-threaded.

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

/// Shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size `B`.
    pub b: usize,
    /// Sequence length `T`.
    pub t: usize,
    /// Model width `C`.
    pub c: usize,
    /// Number of heads `NH`; must divide `C`.
    pub nh: usize,
}

impl AttentionShape {
    /// Head size `HS = C / NH`.
    pub fn head_size(&self) -> usize {
        self.c / self.nh
    }

    /// Length of the saved probabilities and of the backward scratch, `B * NH * T * T`.
    pub fn att_len(&self) -> usize {
        self.b * self.nh * self.t * self.t
    }

    fn check(&self) {
        assert!(
            self.nh > 0 && self.c.is_multiple_of(self.nh),
            "attention: {} heads do not divide width {}",
            self.nh,
            self.c
        );
    }
}

/// The fp32 kernel of [`attention_forward`].
fn attention_forward_f32(out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: AttentionShape) {
    shape.check();
    let AttentionShape { b: _, t, c, nh } = shape;
    let hs = shape.head_size();
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(out.len() >= shape.b * t * c && qkv.len() >= shape.b * t * 3 * c && att.len() >= shape.att_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    att[..shape.att_len()].par_chunks_mut(t * t).enumerate().for_each(|(bh, a)| {
        let (bi, h) = (bh / nh, bh % nh);
        let base = bi * t * 3 * c;
        let q = qkv[base + h * hs..].as_ptr();
        let k = qkv[base + c + h * hs..].as_ptr();
        let v = qkv[base + 2 * c + h * hs..].as_ptr();
        let o = out_ptr.get();
        // SAFETY: `a` is this task's own T x T block; q, k, v are T x HS strided reads inside `qkv` (length
        // checked above); task (bi, h) writes only out[bi, :, h*HS..(h+1)*HS], which no other task touches.
        // Row block [i0, i1) needs keys and values 0..i1 only (causal), which roughly halves the work.
        unsafe {
            for (i0, i1) in causal_blocks(t) {
                let (rows, rq) = (i1 - i0, q.add(i0 * 3 * c));
                let dst = a.as_mut_ptr().add(i0 * t);
                gemm_raw(
                    rows,
                    i1,
                    hs,
                    dst,
                    t,
                    1,
                    (rq, 3 * c, 1),
                    (k, 1, 3 * c),
                    scale,
                    Dst::Overwrite,
                    Threads::Single,
                );
            }
            causal_softmax(a, t);
            for (i0, i1) in causal_blocks(t) {
                let (rows, dst) = (i1 - i0, o.add(bi * t * c + h * hs + i0 * c));
                let lhs = (a.as_ptr().add(i0 * t), t, 1);
                gemm_raw(rows, hs, i1, dst, c, 1, lhs, (v, 3 * c, 1), 1.0, Dst::Overwrite, Threads::Single);
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
fn attention_backward_f32(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    shape: AttentionShape,
) {
    shape.check();
    let AttentionShape { b: _, t, c, nh } = shape;
    let hs = shape.head_size();
    let scale = 1.0 / (hs as f32).sqrt();
    let n3c = shape.b * t * 3 * c;
    assert!(dqkv.len() >= n3c && qkv.len() >= n3c && dout.len() >= shape.b * t * c);
    assert!(att.len() >= shape.att_len() && scratch.len() >= shape.att_len());
    let dqkv_ptr = SendPtr(dqkv.as_mut_ptr());
    scratch[..shape.att_len()].par_chunks_mut(t * t).zip(att.par_chunks(t * t)).enumerate().for_each(
        |(bh, (ds, a))| {
            let (bi, h) = (bh / nh, bh % nh);
            let base = bi * t * 3 * c;
            let q = qkv[base + h * hs..].as_ptr();
            let k = qkv[base + c + h * hs..].as_ptr();
            let v = qkv[base + 2 * c + h * hs..].as_ptr();
            let dy = dout[bi * t * c + h * hs..].as_ptr();
            let (dq, dk, dv) = {
                let d = dqkv_ptr.get();
                (
                    d.wrapping_add(base + h * hs),
                    d.wrapping_add(base + c + h * hs),
                    d.wrapping_add(base + 2 * c + h * hs),
                )
            };
            // SAFETY (all products below): `ds` is this task's own T x T scratch; reads stay inside qkv/dout/att
            // (lengths checked above); writes go to dqkv[bi, :, {q,k,v} columns of head h], which belong to this
            // task alone. Only the causal (lower) part of A and dS is non-zero, so row blocks read columns
            // 0..i1 and column blocks rows j0..T.
            unsafe {
                for (j0, j1) in causal_blocks(t) {
                    // dV[j0..j1] += A[j0..T, j0..j1]ᵀ dout[j0..T]
                    let (lhs, rhs) = ((a.as_ptr().add(j0 * t + j0), 1, t), (dy.add(j0 * c), c, 1));
                    gemm_raw(
                        j1 - j0,
                        hs,
                        t - j0,
                        dv.add(j0 * 3 * c),
                        3 * c,
                        1,
                        lhs,
                        rhs,
                        1.0,
                        Dst::Accumulate,
                        Threads::Single,
                    );
                }
                for (i0, i1) in causal_blocks(t) {
                    // dA[i0..i1, 0..i1] = dout[i0..i1] Vᵀ
                    let dst = ds.as_mut_ptr().add(i0 * t);
                    gemm_raw(
                        i1 - i0,
                        i1,
                        hs,
                        dst,
                        t,
                        1,
                        (dy.add(i0 * c), c, 1),
                        (v, 1, 3 * c),
                        1.0,
                        Dst::Overwrite,
                        Threads::Single,
                    );
                }
                softmax_backward(ds, a, t);
                for (i0, i1) in causal_blocks(t) {
                    // dQ[i0..i1] += scale · dS[i0..i1, 0..i1] K[0..i1]
                    let lhs = (ds.as_ptr().add(i0 * t), t, 1);
                    gemm_raw(
                        i1 - i0,
                        hs,
                        i1,
                        dq.add(i0 * 3 * c),
                        3 * c,
                        1,
                        lhs,
                        (k, 3 * c, 1),
                        scale,
                        Dst::Accumulate,
                        Threads::Single,
                    );
                }
                for (j0, j1) in causal_blocks(t) {
                    // dK[j0..j1] += scale · dS[j0..T, j0..j1]ᵀ Q[j0..T]
                    let (lhs, rhs) = ((ds.as_ptr().add(j0 * t + j0), 1, t), (q.add(j0 * 3 * c), 3 * c, 1));
                    gemm_raw(
                        j1 - j0,
                        hs,
                        t - j0,
                        dk.add(j0 * 3 * c),
                        3 * c,
                        1,
                        lhs,
                        rhs,
                        scale,
                        Dst::Accumulate,
                        Threads::Single,
                    );
                }
            }
        },
    );
}

/// Forward: writes `out[B, T, C]` (overwrites) and the probabilities `att[B, NH, T, T]` (zero above the diagonal).
pub fn attention_forward<E: Element>(out: &mut [E], att: &mut [E], qkv: &[E], shape: AttentionShape) {
    let qkv = load(qkv);
    store(out, Contents::Overwrite, |out| {
        store(att, Contents::Overwrite, |att| attention_forward_f32(out, att, &qkv, shape))
    })
}

/// Backward: adds into `dqkv[B, T, 3C]`. `scratch` (length `B * NH * T * T`, fp32) is overwritten.
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
