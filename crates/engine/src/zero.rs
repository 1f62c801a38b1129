//! ZeRO partitioning over the flat parameter layout (Rajbhandari et al. 2020).
//!
//! Stages 1 and 2 (DeepSpeed's layout): the layout's `P` elements are padded to `W · S` with `S = ⌈P / W⌉`, and
//! rank `r` owns the contiguous range `[r·S, (r+1)·S)`. Stage 1 keeps optimizer state for that range only; stage 2
//! also keeps only that range's gradients, reduce-scattering every micro-step.
//!
//! Stage 3 shards every parameter group (a layer's parameters: the unit a forward gathers, as FSDP2's parameter
//! group) on its own: group `g` of `n_g` elements is padded to `W · s_g` with `s_g = ⌈n_g / W⌉`, rank `r` owns
//! `[r·s_g, (r+1)·s_g)` of it, and a rank's partition is its shards of all groups one after another. So every rank
//! holds `1/W` of every layer, and gathering a layer asks every rank for the same amount.
//!
//! Either way a rank's partition is a list of [`Segment`]s: owned spans of the layout and where they sit in the
//! partition; the optimizer, the master weights and checkpoints address the partition through them.

use std::ops::Range;
use std::sync::Arc;

/// What is sharded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroStage {
    /// Nothing: gradients all-reduced at the accumulation boundary, optimizer replicated.
    Stage0,
    /// Optimizer state: gradients reduce-scattered at the boundary, updated parameters all-gathered.
    Stage1,
    /// Optimizer state and gradients: gradients reduce-scattered into the owned partition every micro-step.
    Stage2,
    /// Optimizer state, gradients and parameters: each parameter group is gathered before a layer that reads it
    /// runs and released after; its gradients are reduce-scattered as soon as the backward finishes them.
    Stage3,
}

impl ZeroStage {
    /// The `zero_optimization.stage` number.
    pub fn number(self) -> u8 {
        match self {
            ZeroStage::Stage0 => 0,
            ZeroStage::Stage1 => 1,
            ZeroStage::Stage2 => 2,
            ZeroStage::Stage3 => 3,
        }
    }

    /// The stage of a `zero_optimization.stage` number.
    pub fn from_number(n: u8) -> Option<ZeroStage> {
        match n {
            0 => Some(ZeroStage::Stage0),
            1 => Some(ZeroStage::Stage1),
            2 => Some(ZeroStage::Stage2),
            3 => Some(ZeroStage::Stage3),
            _ => None,
        }
    }

    pub const ALL: [ZeroStage; 4] = [ZeroStage::Stage0, ZeroStage::Stage1, ZeroStage::Stage2, ZeroStage::Stage3];
}

/// One span of the layout sharded over the ranks: padded to `W · size`, rank `r` owning
/// `[span.start + r·size, span.start + (r+1)·size)`, which sits at `at` in every rank's partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub span: Range<usize>,
    /// Elements of each rank's share (`⌈len / W⌉`).
    pub size: usize,
    /// Where the share starts in a rank's partition.
    pub at: usize,
}

impl Shard {
    /// The part of the layout rank `rank` owns (shorter than `size`, or empty, where the padding begins).
    pub fn owned(&self, rank: usize) -> Range<usize> {
        let start = (self.span.start + rank * self.size).min(self.span.end);
        start..(start + self.size).min(self.span.end)
    }

    /// Every rank's share, for a reduce-scatter or all-gather of the padded span.
    pub fn counts(&self, world: usize) -> Vec<usize> {
        vec![self.size; world]
    }
}

/// An owned span of the layout and where it sits in the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub layout: Range<usize>,
    pub at: usize,
}

/// This rank's share of the flat layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZeroPlan {
    pub stage: ZeroStage,
    pub rank: usize,
    pub world: usize,
    /// Parameters in the layout, `P`.
    pub numel: usize,
    /// Elements of a rank's partition: `S = ⌈P / W⌉` at stages 1 and 2, `Σ_g ⌈n_g / W⌉` at stage 3, `P` at
    /// stage 0 (one rank owns everything).
    pub partition: usize,
    /// The sharded spans: the whole layout at stages 0-2, one per parameter group at stage 3.
    pub shards: Arc<[Shard]>,
}

impl ZeroPlan {
    /// The plan for a layout of `numel` elements whose parameter groups are `groups` (spans that tile it).
    pub fn new(stage: ZeroStage, groups: &[Range<usize>], numel: usize, rank: usize, world: usize) -> Self {
        let shards: Vec<Shard> = match stage {
            ZeroStage::Stage0 => vec![Shard { span: 0..numel, size: numel, at: 0 }],
            ZeroStage::Stage1 | ZeroStage::Stage2 => {
                vec![Shard { span: 0..numel, size: numel.div_ceil(world), at: 0 }]
            }
            ZeroStage::Stage3 => {
                let mut at = 0;
                groups
                    .iter()
                    .map(|g| {
                        let size = g.len().div_ceil(world);
                        at += size;
                        Shard { span: g.clone(), size, at: at - size }
                    })
                    .collect()
            }
        };
        let partition = shards.iter().map(|s| s.size).sum();
        ZeroPlan { stage, rank, world, numel, partition, shards: shards.into() }
    }

    /// Length of the model copy's flat buffers at stages 0-2: padded to `W · S` when sharded, `P` at stage 0.
    /// (Stage 3 has no whole buffer.)
    pub fn padded(&self) -> usize {
        match self.stage {
            ZeroStage::Stage1 | ZeroStage::Stage2 => self.partition * self.world,
            ZeroStage::Stage0 | ZeroStage::Stage3 => self.numel,
        }
    }

    /// Whether optimizer state (and the gradients it reads) covers only this rank's partition.
    pub fn sharded(&self) -> bool {
        self.stage != ZeroStage::Stage0
    }

    /// Whether parameters are sharded too (stage 3).
    pub fn shards_params(&self) -> bool {
        self.stage == ZeroStage::Stage3
    }

    /// The spans of the layout this rank's optimizer steps, and where they sit in its partition (in layout order).
    pub fn segments(&self) -> Vec<Segment> {
        let rank = if self.sharded() { self.rank } else { 0 };
        self.shards
            .iter()
            .map(|s| Segment { layout: s.owned(rank), at: s.at })
            .filter(|s| !s.layout.is_empty())
            .collect()
    }

    /// Stages 0-2: the range of the padded buffer this rank owns (all of it at stage 0).
    pub fn owned(&self) -> Range<usize> {
        match self.stage {
            ZeroStage::Stage0 => 0..self.numel,
            ZeroStage::Stage1 | ZeroStage::Stage2 => self.rank * self.partition..(self.rank + 1) * self.partition,
            ZeroStage::Stage3 => unreachable!("stage 3's partition is not one range of the layout; use segments()"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of the layout is owned by exactly one rank, each at a distinct place of its partition.
    #[test]
    fn segments_cover_the_layout_once_at_every_stage() {
        let groups = [0..7, 7..8, 8..30, 30..31];
        for stage in ZeroStage::ALL {
            for world in [1, 2, 3, 4, 8] {
                let mut owner = vec![None; 31];
                for rank in 0..world {
                    let plan = ZeroPlan::new(stage, &groups, 31, rank, world);
                    let mut used = vec![false; plan.partition];
                    for seg in plan.segments() {
                        for (k, i) in seg.layout.clone().enumerate() {
                            assert!(owner[i].is_none() || !plan.sharded(), "{stage:?} W={world}: {i} owned twice");
                            owner[i] = Some(rank);
                            assert!(!std::mem::replace(&mut used[seg.at + k], true), "partition slot reused");
                        }
                    }
                }
                assert!(owner.iter().all(|o| o.is_some()), "{stage:?} W={world}: an element has no owner");
            }
        }
        // Stage 3 gives every rank a share of every group: ⌈n_g / W⌉ each.
        let plan = ZeroPlan::new(ZeroStage::Stage3, &groups, 31, 1, 4);
        assert_eq!(plan.partition, 2 + 1 + 6 + 1);
        assert_eq!(plan.segments().iter().map(|s| s.layout.clone()).collect::<Vec<_>>(), [2..4, 14..20]);
    }
}
