//! Attention for generation: each query row is one new position of its own sequence and attends to that
//! sequence's cached keys and values up to and including itself. The product the training kernel
//! ([`crate::attention`]) computes for the last row of a causal block, without the `T x T` block: `T·HS` work per
//! head and row instead of `T²·HS`.
//!
//! Layouts: `q` rows of `q_stride` with the `NH` query heads of `HS` at columns `0..NH·HS`; each sequence's cache
//! holds rows of `NKV·HS` (`k`) and `NKV·HS` (`v`), one per position; query head `h` reads key/value head
//! `h / (NH/NKV)` (grouped-query). `out` rows are `NH·HS`.

use crate::cast::{load, store, Contents, Element};
use crate::vmath::{self, simd_fn};
use rayon::prelude::*;

/// One query row's keys and values: the first `len` rows of its sequence's cache.
#[derive(Clone, Copy, Debug)]
pub struct CachedSequence<'a, E> {
    pub k: &'a [E],
    pub v: &'a [E],
    pub len: usize,
}

/// Heads and sizes of a decode attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    pub nh: usize,
    pub nkv: usize,
    pub hs: usize,
}

/// `out[r, h] = softmax(q[r, h] · K_rᵀ / √HS) V_r` over the `len` cached positions of row `r`'s sequence.
pub fn attention_decode<E: Element>(
    out: &mut [E],
    q: &[E],
    q_stride: usize,
    rows: &[CachedSequence<'_, E>],
    shape: DecodeShape,
) {
    let DecodeShape { nh, nkv, hs } = shape;
    assert!(nkv > 0 && nh.is_multiple_of(nkv), "attention_decode: {nkv} key/value heads do not divide {nh}");
    assert!(q.len() >= rows.len() * q_stride && q_stride >= nh * hs, "attention_decode: q too short");
    let kv_width = nkv * hs;
    for r in rows {
        assert!(r.len > 0 && r.k.len() >= r.len * kv_width && r.v.len() >= r.len * kv_width, "attention_decode: cache");
    }
    let q = load(q);
    let caches: Vec<_> =
        rows.iter().map(|r| (load(&r.k[..r.len * kv_width]), load(&r.v[..r.len * kv_width]), r.len)).collect();
    let scale = 1.0 / (hs as f32).sqrt();
    let group = nh / nkv;
    store(out, Contents::Overwrite, |out| {
        out[..rows.len() * nh * hs].par_chunks_mut(hs).enumerate().for_each_init(Vec::new, |scores, (task, o)| {
            let (r, h) = (task / nh, task % nh);
            let (k, v, len) = (&caches[r].0, &caches[r].1, caches[r].2);
            let qh = &q[r * q_stride + h * hs..r * q_stride + (h + 1) * hs];
            scores.resize(len, 0.0);
            head_attention(o, qh, k, v, scores, kv_width, (h / group) * hs, scale);
        });
    })
}

simd_fn! {
    /// One head of one row: `o = softmax(scale · K q) V` over the `scores.len()` cached positions, reading head
    /// columns `col..col + HS` of the cache rows.
    #[allow(clippy::too_many_arguments)]
    fn head_attention(o: &mut [f32], q: &[f32], k: &[f32], v: &[f32], scores: &mut [f32], kv_width: usize, col: usize, scale: f32) {
        let hs = q.len();
        for (j, s) in scores.iter_mut().enumerate() {
            *s = vmath::dot(q, &k[j * kv_width + col..j * kv_width + col + hs]) * scale;
        }
        let max = vmath::max(scores);
        let inv = 1.0 / vmath::exp_shifted_in_place(scores, max);
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let p = p * inv;
            o.iter_mut().zip(&v[j * kv_width + col..j * kv_width + col + hs]).for_each(|(o, v)| *o += p * v);
        }
    }
}
