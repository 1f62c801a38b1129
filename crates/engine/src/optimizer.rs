//! The engine's optimizer: one update rule, its flat state buffers, and the count of applied steps. The update
//! itself is `rustspeed_optim`'s pure step functions, applied per parameter tensor so that weight decay follows
//! each tensor's flag (and Lamb's trust ratio is per tensor, as DeepSpeed's).

use crate::zero::Segment;
use rayon::prelude::*;
use rustspeed_kernels::cast::Element;
use rustspeed_nn::ParamLayout;
use rustspeed_optim::{
    adam_step, lamb_step, lion_step, sgd_step, AdamHyper, LambHyper, LionHyper, OptimizerKind, SgdHyper,
};

/// The update rule with its configured hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    Adam(AdamHyper),
    Lamb(LambHyper),
    Lion(LionHyper),
    Sgd(SgdHyper),
}

impl Rule {
    pub fn kind(&self) -> OptimizerKind {
        match self {
            Rule::Adam(_) => OptimizerKind::Adam,
            Rule::Lamb(_) => OptimizerKind::Lamb,
            Rule::Lion(_) => OptimizerKind::Lion,
            Rule::Sgd(h) => OptimizerKind::Sgd { with_momentum: h.momentum != 0.0 },
        }
    }

    /// Names of the state buffers, as checkpoints store them (PyTorch's optimizer-state names).
    pub fn slot_names(&self) -> &'static [&'static str] {
        match self {
            Rule::Adam(_) | Rule::Lamb(_) => &["exp_avg", "exp_avg_sq"],
            Rule::Lion(_) => &["exp_avg"],
            Rule::Sgd(h) if h.momentum != 0.0 => &["momentum_buffer"],
            Rule::Sgd(_) => &[],
        }
    }

    /// The configured learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            Rule::Adam(h) => h.lr,
            Rule::Lamb(h) => h.lr,
            Rule::Lion(h) => h.lr,
            Rule::Sgd(h) => h.lr,
        }
    }

    /// This step's hyperparameters for one tensor: the step's lr, OneCycle's betas when given, and no weight
    /// decay for tensors that do not decay.
    fn for_tensor(&self, lr: f32, betas: Option<(f64, f64)>, decay: bool) -> Rule {
        let wd = |w: f32| if decay { w } else { 0.0 };
        let pick = |d1: f32, d2: f32| betas.map_or((d1, d2), |(a, b)| (a as f32, b as f32));
        match *self {
            Rule::Adam(h) => {
                let (beta1, beta2) = pick(h.beta1, h.beta2);
                Rule::Adam(AdamHyper { lr, beta1, beta2, weight_decay: wd(h.weight_decay), ..h })
            }
            Rule::Lamb(h) => {
                let (beta1, beta2) = pick(h.beta1, h.beta2);
                Rule::Lamb(LambHyper { lr, beta1, beta2, weight_decay: wd(h.weight_decay), ..h })
            }
            Rule::Lion(h) => {
                let (beta1, beta2) = pick(h.beta1, h.beta2);
                Rule::Lion(LionHyper { lr, beta1, beta2, weight_decay: wd(h.weight_decay) })
            }
            Rule::Sgd(h) => Rule::Sgd(SgdHyper { lr, weight_decay: wd(h.weight_decay), ..h }),
        }
    }
}

/// Elements per parallel piece of an element-wise update: large enough that scheduling costs little.
const OPTIMIZER_CHUNK: usize = 1 << 16;

pub struct Optimizer {
    rule: Rule,
    /// One flat buffer per state slot, over the parameter layout.
    slots: Vec<Vec<f32>>,
    applied_steps: u64,
}

impl Optimizer {
    /// An optimizer whose state covers `owned_len` parameters (the whole model, or a ZeRO partition).
    pub fn new(rule: Rule, owned_len: usize) -> Self {
        let slots = rule.slot_names().iter().map(|_| vec![0.0; owned_len]).collect();
        Optimizer { rule, slots, applied_steps: 0 }
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
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

    /// Restores state buffers and the step count (from a checkpoint); `slots` in [`Rule::slot_names`] order.
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
                let rule = self.rule.for_tensor(lr, betas, entry.spec.weight_decay);
                let chunk = if matches!(rule, Rule::Lamb(_)) { end - start } else { OPTIMIZER_CHUNK };
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
                    pieces.push((rule, p, g, slots));
                    (rest_p, rest_g) = (rp, rg);
                    left -= len;
                }
                at = segment.at + (end - owned.start);
            }
        }
        pieces.into_par_iter().for_each(|(rule, p, grads, mut slots)| {
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
            step_piece(rule, step, p, g, &mut slots);
            if zero_grads {
                grads.fill(G::default());
            }
        });
    }
}

/// One rule's update of one piece of parameters, gradients and state slots.
fn step_piece(rule: Rule, step: u64, p: &mut [f32], g: &[f32], slots: &mut [&mut [f32]]) {
    match (rule, slots) {
        (Rule::Adam(h), [m, v]) => adam_step(&h, step, p, g, m, v),
        (Rule::Lamb(h), [m, v]) => {
            lamb_step(&h, step, p, g, m, v);
        }
        (Rule::Lion(h), [m]) => lion_step(&h, p, g, m),
        (Rule::Sgd(h), [buf]) => sgd_step(&h, step == 1, p, g, Some(buf)),
        (Rule::Sgd(h), []) => sgd_step(&h, step == 1, p, g, None),
        (rule, slots) => unreachable!("{rule:?} with {} state slots", slots.len()),
    }
}
