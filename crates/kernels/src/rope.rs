//! Rotary position embedding, Hugging Face's `LlamaRotaryEmbedding` (default rope type, no scaling) and
//! `apply_rotary_pos_emb` with `rotate_half`: the two halves of a head are rotated against each other (not the
//! interleaved pairs of GPT-J).
//!
//! For head dim `D` (even) and `j < D/2`, at position `p` with angle `θ_j = p · inv_freq[j]`,
//! `inv_freq[j] = 1 / theta^(2j/D)`:
//! `x'[j] = x[j] cos θ_j - x[j + D/2] sin θ_j`, `x'[j + D/2] = x[j + D/2] cos θ_j + x[j] sin θ_j`
//! (HF: `x · cos + rotate_half(x) · sin`, `rotate_half(x) = [-x[D/2..], x[..D/2]]`, `cos = cat(cos θ, cos θ)`).
//! The backward applies the transpose, the rotation by `-θ`.
//!
//! # Matching PyTorch's rounding
//! HF computes the table in fp32: `inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, then
//! `freqs = inv_freq · position` (an fp32 product) and `freqs.cos()`, `freqs.sin()` in fp32. [`RopeTable::new`]
//! does the same steps: the exponent `2j/D` divided in fp32, `theta^e` in f64 rounded to fp32 (torch's fp32 `pow`
//! is within an ulp of that), the reciprocal in fp32, the angle as the fp32 product `p · inv_freq[j]`, and its
//! cosine and sine in f64 rounded to fp32 (torch's fp32 `cos`/`sin` are within an ulp of those). Against
//! transformers 5.25 / torch 2.15 on CPU: `inv_freq` is bit-exact for `D` = 64 and 128 at theta 10^4 and 5·10^5
//! (at `D` = 96 one of 48 frequencies is an ulp off, torch's `pow` not being correctly rounded), and `cos`/`sin`
//! are within one ulp (about 5% of the entries differ); the tests pin samples of the `D` = 128 tables.
//!
//! Precision of the rotation: HF casts `cos`/`sin` to the activations' dtype and rotates in it (bf16 products
//! and sums); here the rotation is fp32 from the fp32 table and each stored value is rounded once.

use crate::cast::{store, Contents, Element};
use crate::vmath::simd_fn;
use crate::ROWS_PER_TASK;
use rayon::prelude::*;

/// Llama 1 and 2's `rope_theta` (Llama 3 uses 500000).
pub const ROPE_THETA: f64 = 10_000.0;

/// Precomputed `cos θ` and `sin θ` for positions `0..max_positions` and the `D/2` frequencies of one head.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    head_dim: usize,
    max_positions: usize,
    inv_freq: Vec<f32>,
    /// `cos[p · D/2 + j] = cos(p · inv_freq[j])`, `[max_positions, D/2]`.
    cos: Vec<f32>,
    /// `sin[p · D/2 + j] = sin(p · inv_freq[j])`, `[max_positions, D/2]`.
    sin: Vec<f32>,
}

impl RopeTable {
    /// The table of HF's default rotary embedding for `head_dim` (even) and base `theta`, rounded as PyTorch
    /// rounds it (module doc).
    pub fn new(head_dim: usize, max_positions: usize, theta: f64) -> RopeTable {
        assert!(head_dim > 0 && head_dim.is_multiple_of(2), "rope: head dim {head_dim} is not a positive even number");
        let inv_freq = (0..head_dim / 2)
            .map(|j| {
                let exponent = (2 * j) as f32 / head_dim as f32;
                1.0 / theta.powf(exponent as f64) as f32
            })
            .collect();
        RopeTable::from_inv_freq(inv_freq, max_positions)
    }

    /// The table for given frequencies (`D/2` of them; e.g. a scaled rope type's), positions `0..max_positions`.
    pub fn from_inv_freq(inv_freq: Vec<f32>, max_positions: usize) -> RopeTable {
        let half = inv_freq.len();
        assert!(half > 0, "rope: no frequencies");
        let (mut cos, mut sin) = (Vec::with_capacity(max_positions * half), Vec::with_capacity(max_positions * half));
        for p in 0..max_positions {
            for &f in &inv_freq {
                // HF: `inv_freq @ position_ids.float()`, one fp32 product per entry.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { head_dim: 2 * half, max_positions, inv_freq, cos, sin }
    }

    /// Head dim `D`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions the table covers, `0..max_positions`.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// `inv_freq[j]`, `j < D/2`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos θ_j` at position `p`, `D/2` values.
    pub fn cos(&self, p: usize) -> &[f32] {
        let half = self.head_dim / 2;
        &self.cos[p * half..(p + 1) * half]
    }

    /// `sin θ_j` at position `p`, `D/2` values.
    pub fn sin(&self, p: usize) -> &[f32] {
        let half = self.head_dim / 2;
        &self.sin[p * half..(p + 1) * half]
    }
}

simd_fn! {
    /// Rotates each head of `heads` (consecutive heads of `2 · cos.len()` values) by `+θ`, or by `-θ` when
    /// `transpose` (negating `sin` is exact, so both directions round alike).
    fn rotate_heads(heads: &mut [f32], cos: &[f32], sin: &[f32], transpose: bool) {
        let half = cos.len();
        for head in heads.chunks_exact_mut(2 * half) {
            let (lo, hi) = head.split_at_mut(half);
            for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                let s = if transpose { -s } else { s };
                let (x0, x1) = (*a, *b);
                // HF's `x · cos + rotate_half(x) · sin`, in its order of products and sums.
                *a = x0 * c - x1 * s;
                *b = x1 * c + x0 * s;
            }
        }
    }
}

/// The fp32 kernel of [`rope_forward`] (`transpose = false`) and [`rope_backward`] (`true`).
#[allow(clippy::too_many_arguments)]
fn rope_f32(
    x: &mut [f32],
    table: &RopeTable,
    b: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
    transpose: bool,
) {
    let width = heads * table.head_dim;
    assert!(
        col_offset + width <= row_stride,
        "rope: {heads} heads at column {col_offset} overrun rows of {row_stride}"
    );
    assert!(t <= table.max_positions, "rope: {t} positions, the table has {}", table.max_positions);
    assert!(x.len() >= b * t * row_stride, "rope: buffer shorter than B·T rows");
    if width == 0 {
        return;
    }
    x[..b * t * row_stride].par_chunks_mut(ROWS_PER_TASK * row_stride).enumerate().for_each(|(task, rows)| {
        for (k, row) in rows.chunks_exact_mut(row_stride).enumerate() {
            let p = (task * ROWS_PER_TASK + k) % t;
            rotate_heads(&mut row[col_offset..col_offset + width], table.cos(p), table.sin(p), transpose);
        }
    });
}

/// Rotates, in place, the `heads` heads of `D = table.head_dim()` values that start at column `col_offset` of each
/// of the `B·T` rows of `x` (rows `row_stride` wide; the row of batch `b`, position `p` is `b·T + p`, and is
/// rotated by position `p`). Columns outside the heads are left as they are; e.g. the q part of a packed
/// `[q | k | v]` row is `col_offset = 0, heads = NH`, its k part `col_offset = NH·D, heads = NKV`.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward<E: Element>(
    x: &mut [E],
    table: &RopeTable,
    b: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
) {
    // Accumulate: the fp32 view starts with x's values (the kernel rewrites them in place).
    store(x, Contents::Accumulate, |x| rope_f32(x, table, b, t, heads, row_stride, col_offset, false))
}

/// Backward of [`rope_forward`], in place: the gradient of the rotated heads becomes the gradient of the heads
/// before the rotation, `dx = Rᵀ dy` (the rotation by `-θ`), same arguments. Unlike the other backwards it does not
/// add: the rotation is applied to the gradient buffer itself.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward<E: Element>(
    dx: &mut [E],
    table: &RopeTable,
    b: usize,
    t: usize,
    heads: usize,
    row_stride: usize,
    col_offset: usize,
) {
    store(dx, Contents::Accumulate, |dx| rope_f32(dx, table, b, t, heads, row_stride, col_offset, true))
}

/// [`rope_forward`] for rows at arbitrary positions (generation: each row a new token of its own sequence): row
/// `r` of `x` is rotated by position `positions[r]`, with the same rounding as [`rope_forward`] at that position.
pub fn rope_rows<E: Element>(
    x: &mut [E],
    table: &RopeTable,
    positions: &[usize],
    heads: usize,
    row_stride: usize,
    col_offset: usize,
) {
    let width = heads * table.head_dim;
    assert!(
        col_offset + width <= row_stride,
        "rope: {heads} heads at column {col_offset} overrun rows of {row_stride}"
    );
    assert!(x.len() >= positions.len() * row_stride, "rope: buffer shorter than its rows");
    if let Some(&p) = positions.iter().find(|&&p| p >= table.max_positions) {
        panic!("rope: position {p}, the table has {}", table.max_positions);
    }
    store(x, Contents::Accumulate, |x| {
        for (row, &p) in x.chunks_exact_mut(row_stride).zip(positions) {
            rotate_heads(&mut row[col_offset..col_offset + width], table.cos(p), table.sin(p), false);
        }
    })
}
