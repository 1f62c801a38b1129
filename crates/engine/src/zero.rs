//! ZeRO partitioning over the flat parameter layout (Rajbhandari et al. 2020; DeepSpeed's stage 1/2 layout):
//! the layout's `P` elements are padded to `W · S` with `S = ⌈P / W⌉`, and rank `r` owns the contiguous range
//! `[r·S, (r+1)·S)`. Stage 1 keeps optimizer state for that range only; stage 2 also keeps only that range's
//! gradients, reduce-scattering every micro-step.

use std::ops::Range;

/// What is sharded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroStage {
    /// Nothing: gradients all-reduced at the accumulation boundary, optimizer replicated.
    Stage0,
    /// Optimizer state: gradients reduce-scattered at the boundary, updated parameters all-gathered.
    Stage1,
    /// Optimizer state and gradients: gradients reduce-scattered into the owned partition every micro-step.
    Stage2,
}

impl ZeroStage {
    /// The `zero_optimization.stage` number.
    pub fn number(self) -> u8 {
        match self {
            ZeroStage::Stage0 => 0,
            ZeroStage::Stage1 => 1,
            ZeroStage::Stage2 => 2,
        }
    }
}

/// This rank's share of the flat layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroPlan {
    pub stage: ZeroStage,
    pub rank: usize,
    pub world: usize,
    /// Parameters in the layout, `P`.
    pub numel: usize,
    /// Partition size `S = ⌈P / W⌉`.
    pub partition: usize,
}

impl ZeroPlan {
    pub fn new(stage: ZeroStage, numel: usize, rank: usize, world: usize) -> Self {
        ZeroPlan { stage, rank, world, numel, partition: numel.div_ceil(world) }
    }

    /// Length of the flat buffers: padded to `W · S` when sharded, `P` at stage 0 (nothing is split).
    pub fn padded(&self) -> usize {
        match self.sharded() {
            true => self.partition * self.world,
            false => self.numel,
        }
    }

    /// Whether optimizer state (and the gradients it reads) covers only this rank's partition.
    pub fn sharded(&self) -> bool {
        self.stage != ZeroStage::Stage0
    }

    /// The parameters this rank's optimizer steps: all of them at stage 0, its partition otherwise.
    pub fn owned(&self) -> Range<usize> {
        match self.sharded() {
            false => 0..self.numel,
            true => self.rank * self.partition..(self.rank + 1) * self.partition,
        }
    }

    /// Every rank's share of a reduce-scatter or all-gather over the padded buffer.
    pub fn counts(&self) -> Vec<usize> {
        vec![self.partition; self.world]
    }
}
