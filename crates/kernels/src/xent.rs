//! Softmax cross-entropy over logits, the loss half of the fused output head.
//!
//! Loss is the mean over counted rows of `logsumexp(logits[n]) - logits[n, target[n]]`; rows whose target equals
//! the ignore index are not counted (PyTorch's `ignore_index`). The forward turns logits into probabilities in
//! place, which is all the backward needs: `dlogits = (probs - onehot(target)) · dloss / count`.

use crate::cast::{load, store, Contents, Element};

use crate::vmath::{self, simd_fn};
use crate::ROWS_PER_TASK;
use rayon::prelude::*;

simd_fn! {
    /// Softmax of one row in place; returns `ln Σ exp(x - max)` and `max`.
    fn softmax_row(row: &mut [f32]) -> (f32, f32) {
        let max = vmath::max(row);
        let sum = vmath::exp_shifted_in_place(row, max);
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
        (sum.ln(), max)
    }
}

/// Result of [`softmax_xent_forward`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XentLoss {
    /// Mean loss over counted rows (0 when no row counts).
    pub mean: f32,
    /// Rows that count (targets not equal to the ignore index).
    pub count: usize,
}

/// The fp32 kernel of [`softmax_xent_forward`].
fn softmax_xent_forward_f32(
    logits_to_probs: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    ignore_index: Option<u32>,
    n: usize,
    v: usize,
) -> XentLoss {
    logits_to_probs[..n * v]
        .par_chunks_mut(ROWS_PER_TASK * v)
        .zip(losses[..n].par_chunks_mut(ROWS_PER_TASK))
        .zip(targets[..n].par_chunks(ROWS_PER_TASK))
        .for_each(|((rows, losses), targets)| {
            for ((row, loss), &target) in rows.chunks_exact_mut(v).zip(losses).zip(targets) {
                let counted = Some(target) != ignore_index;
                let logit_target = if counted { row[target as usize] } else { 0.0 };
                let (log_sum, max) = softmax_row(row);
                // -log p[target] = log Σ exp(logit - max) - (logit[target] - max)
                *loss = if counted { log_sum - (logit_target - max) } else { 0.0 };
            }
        });
    let count = match ignore_index {
        Some(ig) => targets[..n].iter().filter(|&&t| t != ig).count(),
        None => n,
    };
    let total: f32 = losses[..n].iter().sum();
    XentLoss { mean: if count > 0 { total / count as f32 } else { 0.0 }, count }
}

/// The fp32 kernel of [`softmax_xent_backward`].
#[allow(clippy::too_many_arguments)]
fn softmax_xent_backward_f32(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    ignore_index: Option<u32>,
    dloss: f32,
    count: usize,
    n: usize,
    v: usize,
) {
    if count == 0 {
        return;
    }
    let scale = dloss / count as f32;
    dlogits[..n * v]
        .par_chunks_mut(ROWS_PER_TASK * v)
        .zip(probs[..n * v].par_chunks(ROWS_PER_TASK * v))
        .zip(targets[..n].par_chunks(ROWS_PER_TASK))
        .for_each(|((drows, prows), targets)| {
            for ((d, p), &target) in drows.chunks_exact_mut(v).zip(prows.chunks_exact(v)).zip(targets) {
                if Some(target) == ignore_index {
                    continue;
                }
                for (d, &p) in d.iter_mut().zip(p) {
                    *d += scale * p;
                }
                d[target as usize] -= scale;
            }
        });
}

/// The fp32 kernel of [`softmax_xent_backward_in_place`].
#[allow(clippy::too_many_arguments)]
fn softmax_xent_backward_in_place_f32(
    probs_to_dlogits: &mut [f32],
    targets: &[u32],
    ignore_index: Option<u32>,
    dloss: f32,
    count: usize,
    n: usize,
    v: usize,
) {
    let scale = if count == 0 { 0.0 } else { dloss / count as f32 };
    probs_to_dlogits[..n * v].par_chunks_mut(ROWS_PER_TASK * v).zip(targets[..n].par_chunks(ROWS_PER_TASK)).for_each(
        |(rows, targets)| {
            for (row, &target) in rows.chunks_exact_mut(v).zip(targets) {
                if Some(target) == ignore_index {
                    row.fill(0.0);
                    continue;
                }
                row.iter_mut().for_each(|p| *p *= scale);
                row[target as usize] -= scale;
            }
        },
    );
}

/// Replaces `logits[N, V]` by `softmax(logits)` row-wise and writes per-row losses into `losses[N]` (0 for
/// ignored rows; fp32 in every precision). Panics if a counted target is `>= V`; callers validate targets first.
pub fn softmax_xent_forward<E: Element>(
    logits_to_probs: &mut [E],
    losses: &mut [f32],
    targets: &[u32],
    ignore_index: Option<u32>,
    n: usize,
    v: usize,
) -> XentLoss {
    store(logits_to_probs, Contents::Accumulate, |l| softmax_xent_forward_f32(l, losses, targets, ignore_index, n, v))
}

/// Adds `dloss / count · (probs - onehot(target))` into `dlogits[N, V]` for counted rows.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_backward<E: Element>(
    dlogits: &mut [E],
    probs: &[E],
    targets: &[u32],
    ignore_index: Option<u32>,
    dloss: f32,
    count: usize,
    n: usize,
    v: usize,
) {
    let probs = load(probs);
    store(dlogits, Contents::Accumulate, |d| {
        softmax_xent_backward_f32(d, &probs, targets, ignore_index, dloss, count, n, v)
    })
}

/// [`softmax_xent_backward`] in place: turns `probs_to_dlogits[N, V]` (the forward's probabilities, no longer
/// needed) into `dloss / count · (probs - onehot(target))`, and ignored rows into zeros. Saves the output head a
/// second `[N, V]` buffer and the pass that zeroes it.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_backward_in_place<E: Element>(
    probs_to_dlogits: &mut [E],
    targets: &[u32],
    ignore_index: Option<u32>,
    dloss: f32,
    count: usize,
    n: usize,
    v: usize,
) {
    store(probs_to_dlogits, Contents::Accumulate, |p| {
        softmax_xent_backward_in_place_f32(p, targets, ignore_index, dloss, count, n, v)
    })
}
