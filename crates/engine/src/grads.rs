//! The gradient buffers of one rank, by ZeRO stage, and the flat passes over them (norm, overflow flags,
//! widening, zeroing). [`Gradients`] is the one place that says where the window's reduced gradients are when
//! the step reads them.

use crate::zero::{Segment, ZeroPlan, ZeroStage};
use rayon::prelude::*;
use rustspeed_kernels::cast::{first_non_finite, Element};
use rustspeed_kernels::vmath::{add_squares, SQUARE_LANES};
use std::ops::Range;

/// A rank's gradient buffers.
pub(crate) enum Gradients<E> {
    /// Stage 0: the backward writes `local` (the whole layout), reduced in place at the window's last
    /// micro-step. With fp32 accumulation of 16-bit gradients (`data_types.grad_accum_dtype`, DeepSpeed's default
    /// for bf16 without ZeRO) each micro-step's are added into `sum`, which the boundary reduces instead.
    Replicated { local: Vec<E>, sum: Option<Vec<f32>> },
    /// Stage 1: the backward writes `local` (padded to `W · S`; the window, or each micro-step before it is added
    /// into the fp32 `sum`), which the window's last micro-step reduce-scatters into this rank's fp32 `partition`.
    Partitioned { local: Vec<E>, sum: Option<Vec<f32>>, partition: Vec<f32> },
    /// Stages 2 and 3: each group's gradients live in a buffer of their own during the backward only
    /// ([`crate::sharded::Gatherer`]), reduce-scattered into the fp32 `partition` as soon as the backward
    /// finishes them, every micro-step: no buffer of the whole model's gradients exists.
    Grouped { partition: Vec<f32> },
}

/// The window's reduced gradients as the step reads them: the 16-bit or fp32 model buffer (stage 0), or an fp32
/// accumulator (the fp32 sum at stage 0, the partition at stages 1-3). Indexed as the plan's partition is (the
/// whole layout at stage 0).
pub(crate) enum Reduced<'a, E> {
    Stored(&'a mut [E]),
    Wide(&'a mut [f32]),
}

impl<E: Element> Gradients<E> {
    pub fn new(zero: &ZeroPlan, accumulate_in_fp32: bool) -> Self {
        let sum = || accumulate_in_fp32.then(|| vec![0.0; zero.padded()]);
        match zero.stage {
            ZeroStage::Stage0 => Gradients::Replicated { local: vec![E::default(); zero.numel], sum: sum() },
            ZeroStage::Stage1 => Gradients::Partitioned {
                local: vec![E::default(); zero.padded()],
                sum: sum(),
                partition: vec![0.0; zero.partition],
            },
            // Stages 2 and 3 accumulate in their fp32 partition whatever the accumulation type.
            ZeroStage::Stage2 | ZeroStage::Stage3 => Gradients::Grouped { partition: vec![0.0; zero.partition] },
        }
    }

    /// Where the reduced gradients are, for the step.
    pub fn reduced(&mut self) -> Reduced<'_, E> {
        match self {
            Gradients::Replicated { local, sum: None } => Reduced::Stored(local),
            Gradients::Replicated { sum: Some(sum), .. } => Reduced::Wide(sum),
            Gradients::Partitioned { partition, .. } | Gradients::Grouped { partition } => Reduced::Wide(partition),
        }
    }

    /// Clears the accumulators the optimizer did not read (it zeroes what it reads when that is an
    /// accumulator): after a skipped step all of them, and stage 1's fp32 sum (already reduced into the partition).
    pub fn clear_unread(&mut self, skipped: bool) {
        match self {
            Gradients::Replicated { sum, .. } if skipped => sum.iter_mut().for_each(|s| zero_fill(s)),
            Gradients::Replicated { .. } => {}
            Gradients::Partitioned { sum, partition, .. } => {
                sum.iter_mut().for_each(|s| zero_fill(s));
                if skipped {
                    zero_fill(partition);
                }
            }
            Gradients::Grouped { partition } if skipped => zero_fill(partition),
            Gradients::Grouped { .. } => {}
        }
    }

    /// Bytes held across micro-steps for the optimizer (the per-group buffers of stages 2 and 3 exist only
    /// during a backward; the engine measures them).
    pub fn bytes(&self) -> usize {
        let (e, f) = (std::mem::size_of::<E>(), std::mem::size_of::<f32>());
        let sum_len = |sum: &Option<Vec<f32>>| sum.as_ref().map_or(0, |s| s.len());
        match self {
            Gradients::Replicated { local, sum } => local.len() * e + sum_len(sum) * f,
            Gradients::Partitioned { local, sum, partition } => local.len() * e + (sum_len(sum) + partition.len()) * f,
            Gradients::Grouped { partition } => partition.len() * f,
        }
    }
}

/// Elements per task of the parallel passes over the flat buffers below.
const FLAT_CHUNK: usize = 1 << 16;

/// `Σ x²` in f64, in parallel over fixed chunks whose partial sums are added in order, so the result does not
/// depend on the thread count.
pub(crate) fn sum_of_squares<G: Element>(x: &[G]) -> f64 {
    let partial: Vec<f64> = x.par_chunks(FLAT_CHUNK).map(chunk_sum_of_squares).collect();
    partial.iter().sum()
}

/// Elements widened to fp32 at a time (a stack buffer) by [`chunk_sum_of_squares`] and [`add_widened`].
const WIDEN_RUN: usize = 1024;

/// `Σ x²` of one chunk in f64, over `SQUARE_LANES` interleaved partial sums (a fixed order: deterministic). One
/// chain of dependent f64 additions was bound by the adder's latency (26 ms for lstm-seed's 64M gradients).
fn chunk_sum_of_squares<G: Element>(chunk: &[G]) -> f64 {
    let mut lanes = [0.0f64; SQUARE_LANES];
    let mut tail = 0.0f64;
    match G::as_f32(chunk) {
        Some(x) => tail += add_squares(&mut lanes, x),
        None => {
            let mut wide = [0.0f32; WIDEN_RUN];
            for run in chunk.chunks(WIDEN_RUN) {
                let wide = &mut wide[..run.len()];
                G::widen_run(wide, run);
                tail += add_squares(&mut lanes, wide);
            }
        }
    }
    lanes.iter().sum::<f64>() + tail
}

pub(crate) fn zero_fill<G: Element>(x: &mut [G]) {
    x.par_chunks_mut(FLAT_CHUNK).for_each(|c| c.fill(G::default()));
}

/// `sum[i] += f32(grads[i])`: a micro-step's 16-bit gradients into the fp32 accumulator.
pub(crate) fn add_widened<G: Element>(sum: &mut [f32], grads: &[G]) {
    sum.par_chunks_mut(FLAT_CHUNK).zip(grads.par_chunks(FLAT_CHUNK)).for_each(|(s, g)| {
        let mut wide = [0.0f32; WIDEN_RUN];
        for (s, g) in s.chunks_mut(WIDEN_RUN).zip(g.chunks(WIDEN_RUN)) {
            let wide = &mut wide[..g.len()];
            G::widen_run(wide, g);
            s.iter_mut().zip(wide.iter()).for_each(|(s, &w)| *s += w);
        }
    });
}

/// 1.0 for each owner whose parameters' gradients hold an inf or NaN, looking at the partition `grads` whose
/// `segments` map it onto the layout.
pub(crate) fn non_finite_flags<G: Element>(
    grads: &[G],
    segments: &[Segment],
    owners: &[(String, Vec<Range<usize>>)],
) -> Vec<f32> {
    let hit = |r: &Range<usize>| {
        segments.iter().any(|s| {
            let (lo, hi) = (r.start.max(s.layout.start), r.end.min(s.layout.end));
            let at = |i: usize| s.at + i - s.layout.start;
            lo < hi && first_non_finite(&grads[at(lo)..at(hi)]).is_some()
        })
    };
    owners.iter().map(|(_, ranges)| if ranges.iter().any(hit) { 1.0 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::sum_of_squares;

    /// Reordered f64 sums of 200k squares of order one: relative differences near 1e-16 · √n, far below this.
    const REORDER_RTOL: f64 = 1e-12;

    #[test]
    fn sum_of_squares_matches_a_plain_sum_and_ignores_the_thread_count() {
        let x: Vec<f32> = (0..200_003).map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.5).collect();
        let plain: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let (one, two) = (pool(1).install(|| sum_of_squares(&x)), pool(2).install(|| sum_of_squares(&x)));
        assert_eq!(one.to_bits(), two.to_bits(), "the thread count changed the result");
        assert!((one - plain).abs() <= REORDER_RTOL * plain, "{one} vs {plain}");
    }
}
