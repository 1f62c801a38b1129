//! The engine's optimizer: one update rule (any `rustspeed_optim::UpdateRule`), its flat state buffers (one per
//! slot the rule names), and the count of applied steps. The rule is applied per parameter tensor so that weight
//! decay follows each tensor's flag (and Lamb's trust ratio is per tensor, as DeepSpeed's).

use crate::zero::Segment;
use rayon::prelude::*;
use rustspeed_kernels::cast::Element;
use rustspeed_nn::ParamLayout;
use rustspeed_optim::{StepContext, UpdateRule};

/// Elements per parallel piece of an element-wise update: large enough that scheduling costs little.
const OPTIMIZER_CHUNK: usize = 1 << 16;

pub struct Optimizer {
    rule: Box<dyn UpdateRule>,
    /// One flat buffer per state slot the rule names, over the partition.
    slots: Vec<Vec<f32>>,
    applied_steps: u64,
}

impl Optimizer {
    /// An optimizer whose state covers `owned_len` parameters (the whole model, or a ZeRO partition).
    pub fn new(rule: Box<dyn UpdateRule>, owned_len: usize) -> Self {
        let slots = rule.slot_names().iter().map(|_| vec![0.0; owned_len]).collect();
        Optimizer { rule, slots, applied_steps: 0 }
    }

    pub fn rule(&self) -> &dyn UpdateRule {
        &*self.rule
    }

    pub fn base_lr(&self) -> f64 {
        self.rule.lr() as f64
    }

    /// Optimizer steps applied so far (DeepSpeed's scheduler `last_batch_iteration + 1`).
    pub fn applied_steps(&self) -> u64 {
        self.applied_steps
    }

    pub fn slots(&self) -> impl Iterator<Item = (&'static str, &[f32])> {
        self.rule.slot_names().iter().copied().zip(self.slots.iter().map(|s| s.as_slice()))
    }

    /// Restores state buffers and the step count (from a checkpoint); `slots` in [`UpdateRule::slot_names`] order.
    pub fn restore(&mut self, slots: Vec<Vec<f32>>, applied_steps: u64) {
        assert_eq!(slots.len(), self.slots.len(), "optimizer state slot count");
        self.slots = slots;
        self.applied_steps = applied_steps;
    }

    /// One step over the parameters in `segments` (the whole layout, or this rank's ZeRO partition) with learning
    /// rate `lr` (and OneCycle's `betas`). `params` (fp32 master weights), `grads` and the state buffers cover the
    /// partition: a segment's first parameter is at index `segment.at`. The optimizer sees `grad_scale · grads` in
    /// fp32 (unscaling and clipping in one multiply, semantics §2.6; 16-bit gradients are widened piece by piece,
    /// so no fp32 copy of all gradients exists). With `zero_grads` (an accumulator the next window adds into) each
    /// piece of `grads` is zeroed right after its update, while it is in cache, which saves a separate pass; a
    /// buffer the next window's first backward overwrites is left as it is. Tensors cut by a partition boundary
    /// are stepped piecewise, which is exact for the element-wise rules (Lamb's per-tensor trust ratio is not, so
    /// the engine refuses Lamb with ZeRO).
    #[allow(clippy::too_many_arguments)]
    pub fn apply<G: Element>(
        &mut self,
        layout: &ParamLayout,
        params: &mut [f32],
        grads: &mut [G],
        zero_grads: bool,
        grad_scale: f32,
        segments: &[Segment],
        lr: f32,
        betas: Option<(f64, f64)>,
    ) {
        self.applied_steps += 1;
        let step = self.applied_steps;
        // Carve the owned part of every tensor (and its gradient and state) into disjoint pieces, then update the
        // pieces in parallel. Element-wise rules split tensors into chunks; Lamb's trust ratio needs whole tensors.
        let mut pieces = Vec::new();
        let mut rest_p = params;
        let mut rest_g = grads;
        let mut rest_slots: Vec<&mut [f32]> = self.slots.iter_mut().map(|s| s.as_mut_slice()).collect();
        // Index in the partition of the first element of the `rest` buffers.
        let mut at = 0;
        let mut entries: Vec<_> = layout.entries().iter().collect();
        entries.sort_by_key(|e| e.offset);
        for segment in segments {
            let owned = &segment.layout;
            for entry in &entries {
                let (start, end) = (entry.offset.max(owned.start), (entry.offset + entry.spec.numel()).min(owned.end));
                if start >= end {
                    continue;
                }
                let context = StepContext { step, lr, betas, decay: entry.spec.weight_decay };
                let chunk = if self.rule.needs_whole_tensors() { end - start } else { OPTIMIZER_CHUNK };
                // Skip to the tensor's place in the partition (past padding or another segment's gap).
                let skip = segment.at + (start - owned.start) - at;
                (_, rest_p) = std::mem::take(&mut rest_p).split_at_mut(skip);
                (_, rest_g) = std::mem::take(&mut rest_g).split_at_mut(skip);
                for s in rest_slots.iter_mut() {
                    (_, *s) = std::mem::take(s).split_at_mut(skip);
                }
                let mut left = end - start;
                while left > 0 {
                    let len = chunk.min(left);
                    let (p, rp) = std::mem::take(&mut rest_p).split_at_mut(len);
                    let (g, rg) = std::mem::take(&mut rest_g).split_at_mut(len);
                    let slots: Vec<&mut [f32]> = rest_slots
                        .iter_mut()
                        .map(|s| {
                            let (head, tail) = std::mem::take(s).split_at_mut(len);
                            *s = tail;
                            head
                        })
                        .collect();
                    pieces.push((context, p, g, slots));
                    (rest_p, rest_g) = (rp, rg);
                    left -= len;
                }
                at = segment.at + (end - owned.start);
            }
        }
        let rule = &*self.rule;
        pieces.into_par_iter().for_each(|(context, p, grads, mut slots)| {
            let wide: Vec<f32>;
            let g: &[f32] = match G::as_f32(grads) {
                Some(g) if grad_scale == 1.0 => g,
                _ => {
                    let mut widened = vec![0.0; grads.len()];
                    G::widen_run(&mut widened, grads);
                    widened.iter_mut().for_each(|x| *x *= grad_scale);
                    wide = widened;
                    &wide
                }
            };
            rule.step(&context, p, g, &mut slots);
            if zero_grads {
                grads.fill(G::default());
            }
        });
    }
}
