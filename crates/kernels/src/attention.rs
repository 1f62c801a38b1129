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

use crate::matmul::{gemm_raw, Dst, Threads};
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
        assert!(self.nh > 0 && self.c % self.nh == 0, "attention: {} heads do not divide width {}", self.nh, self.c);
    }
}

/// Forward: writes `out[B, T, C]` (overwrites) and the probabilities `att[B, NH, T, T]` (zero above the diagonal).
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: AttentionShape) {
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
        // SAFETY: `a` is this task's own T x T block; q, k, v are T x HS strided reads inside `qkv` (length
        // checked above).
        unsafe {
            gemm_raw(
                t,
                t,
                hs,
                a.as_mut_ptr(),
                t,
                1,
                (q, 3 * c, 1),
                (k, 1, 3 * c),
                scale,
                Dst::Overwrite,
                Threads::Single,
            )
        };
        causal_softmax(a, t);
        // SAFETY: task (bi, h) writes only out[bi, :, h*HS..(h+1)*HS], which no other task touches; the region
        // lies inside `out` (length checked above).
        unsafe {
            let o = out_ptr.get().add(bi * t * c + h * hs);
            gemm_raw(t, hs, t, o, c, 1, (a.as_ptr(), t, 1), (v, 3 * c, 1), 1.0, Dst::Overwrite, Threads::Single)
        };
    });
}

/// Backward: adds into `dqkv[B, T, 3C]`. `scratch` (length `B * NH * T * T`) is overwritten.
pub fn attention_backward(
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
            // SAFETY (all products below): `ds` is this task's own T x T scratch; reads stay inside qkv/dout/att
            // (lengths checked above); writes go to dqkv[bi, :, {q,k,v} columns of head h], which belong to this
            // task alone.
            unsafe {
                let dv = dqkv_ptr.get().add(base + 2 * c + h * hs);
                // dV += Aᵀ dout
                gemm_raw(t, hs, t, dv, 3 * c, 1, (a.as_ptr(), 1, t), (dy, c, 1), 1.0, Dst::Accumulate, Threads::Single);
                // dA = dout Vᵀ
                gemm_raw(
                    t,
                    t,
                    hs,
                    ds.as_mut_ptr(),
                    t,
                    1,
                    (dy, c, 1),
                    (v, 1, 3 * c),
                    1.0,
                    Dst::Overwrite,
                    Threads::Single,
                );
            }
            softmax_backward(ds, a, t);
            unsafe {
                let dq = dqkv_ptr.get().add(base + h * hs);
                let dk = dqkv_ptr.get().add(base + c + h * hs);
                // dQ += scale · dS K ; dK += scale · dSᵀ Q
                gemm_raw(
                    t,
                    hs,
                    t,
                    dq,
                    3 * c,
                    1,
                    (ds.as_ptr(), t, 1),
                    (k, 3 * c, 1),
                    scale,
                    Dst::Accumulate,
                    Threads::Single,
                );
                gemm_raw(
                    t,
                    hs,
                    t,
                    dk,
                    3 * c,
                    1,
                    (ds.as_ptr(), 1, t),
                    (q, 3 * c, 1),
                    scale,
                    Dst::Accumulate,
                    Threads::Single,
                );
            }
        },
    );
}
