//! Bytes per rank: what the engine holds ([`crate::Engine::memory`], read off its buffers) and what the ZeRO
//! paper's model predicts ([`estimate`]), so that the two can be compared.
//!
//! ZeRO (Rajbhandari et al. 2020, §5) counts, for Ψ parameters over N_d ranks with mixed-precision Adam:
//! 2Ψ (fp16 parameters) + 2Ψ (fp16 gradients) + KΨ (fp32 master + momentum + variance, K = 12), and shards the
//! K term at stage 1, also the gradients at stage 2, also the parameters at stage 3 (16Ψ/N in all). rustspeed's
//! fp16/bf16 mode holds exactly that at stage 0 (2 + 2 + 4 + 8 bytes per parameter with Adam); its reduced
//! gradient partition at stages 1-3 is fp32 (4Ψ/N instead of 2Ψ/N), and stage 3 keeps no 16-bit shard besides
//! the fp32 masters (a gathered group is rounded from them), so stage 3 holds 4 + 4 + 8 = 16Ψ/N. In fp32 the
//! parameters *are* the master weights: 4Ψ parameters + 4Ψ gradients + (4 · slots)Ψ optimizer state, sharded the
//! same way. Stages 2 and 3 add the per-group gradient buffers of the layers in flight, stage 3 the gathered
//! groups: a few layers' worth, measured by the engine as it runs.

use crate::precision::StorageType;
use crate::zero::ZeroStage;
use rustspeed_nn::{Model, ModelConfig};

const F32: usize = std::mem::size_of::<f32>();

/// Bytes per rank, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// The model's parameters as the forward reads them.
    pub parameters: usize,
    /// Gradients kept across micro-steps for the optimizer: the full buffer at stage 0; at stage 1 the full
    /// local buffer plus the reduced partition; at stages 2 and 3 only the partition.
    pub gradients: usize,
    /// Stages 2 and 3: the most bytes of per-group gradient buffers resident at once during a backward (the
    /// groups being written and those being reduce-scattered on the communication thread); the engine reports
    /// what it measured in the passes so far. At stages 0 and 1 the backward writes into the gradient buffer
    /// itself, counted above.
    pub gradient_staging: usize,
    /// Stage 3: the most parameters gathered at once during a forward or backward (whole groups of the layers
    /// running or prefetched), beyond the persistent ones counted in `parameters`.
    pub gathered_parameters: usize,
    /// fp32 master weights separate from the parameters (none in fp32 training).
    pub master_weights: usize,
    /// Optimizer state (Adam: momentum and variance).
    pub optimizer_state: usize,
    /// Activations of one micro-batch: the layers' outputs and their gradients, what the layers keep for their
    /// backward (with activation checkpointing only the layer being recomputed), the head's logits. The engine
    /// reports the most it measured at once in its passes so far.
    pub activations: usize,
}

impl MemoryReport {
    pub fn total(&self) -> usize {
        self.parameters
            + self.gradients
            + self.gradient_staging
            + self.gathered_parameters
            + self.master_weights
            + self.optimizer_state
            + self.activations
    }
}

/// Shape of the work whose memory is estimated.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub stage: ZeroStage,
    pub world: usize,
    /// Storage type of the model copy (parameters, gradients, activations).
    pub storage: StorageType,
    /// 16-bit gradients summed over micro-steps in an fp32 buffer (`data_types.grad_accum_dtype` fp32; DeepSpeed's
    /// default for bf16 without ZeRO, see [`crate::setup::default_accumulates_in_fp32`]).
    pub accumulate_in_fp32: bool,
    /// Optimizer state slots per parameter (Adam 2, Lion 1, SGD with momentum 1).
    pub optimizer_slots: usize,
    /// Activation checkpointing (`activation_checkpointing` given).
    pub activation_checkpointing: bool,
    /// Micro-batch `B` and sequence length `T`, for activations.
    pub micro_batch: usize,
    pub seq_len: usize,
}

/// The ZeRO paper's prediction for `params` (Ψ) parameters, plus the activations the model saves for its
/// backward, as its layers report them ([`rustspeed_nn::Model::activation_estimate`]: with activation
/// checkpointing every layer keeps its output and one at a time holds what it saved). Partitions are `⌈Ψ/N⌉`, as
/// the engine pads them. A config that does not build estimates no activations and no gathered groups.
pub fn estimate(model: &ModelConfig, params: usize, w: &Workload) -> MemoryReport {
    let part = params.div_ceil(w.world);
    let padded = part * w.world;
    let e = match w.storage {
        StorageType::Fp32 => F32,
        StorageType::Fp16 | StorageType::Bf16 => 2,
    };
    // The layers report their own activations and groups; a config that does not build has neither.
    let built = model.build().ok();
    // Stage 3 gathers one group at a time and prefetches the next; the gradient buffers of stages 2 and 3 are the
    // group being written and the one being reduced: about two of the largest group each.
    let live = 2 * built.as_ref().map_or(0, largest_group);
    // (model-copy elements, fp32 gradient-partition elements, staging elements, owned elements); at stage 3 the
    // fp32 masters are the model's only copy (in fp32 training they are the parameters).
    let (parameters, grad_partition, staging, owned) = match w.stage {
        ZeroStage::Stage0 => (params, 0, 0, params),
        ZeroStage::Stage1 => (padded, part, 0, part),
        ZeroStage::Stage2 => (padded, part, live, part),
        ZeroStage::Stage3 => (0, part, live, part),
    };
    let local_gradients = match w.stage {
        ZeroStage::Stage0 | ZeroStage::Stage1 => parameters,
        ZeroStage::Stage2 | ZeroStage::Stage3 => 0,
    };
    let (parameter_bytes, master_bytes) = match (w.stage, e == F32) {
        (ZeroStage::Stage3, true) => (owned * F32, 0),
        (_, true) => (parameters * e, 0),
        (_, false) => (parameters * e, owned * F32),
    };
    // The fp32 accumulator covers the local buffer at stages 0 and 1 (stage 2 accumulates in its fp32 partition).
    let accumulator = match (w.accumulate_in_fp32 && e != F32, w.stage) {
        (true, ZeroStage::Stage0 | ZeroStage::Stage1) => parameters,
        _ => 0,
    };
    MemoryReport {
        parameters: parameter_bytes,
        gradients: local_gradients * e + (grad_partition + accumulator) * F32,
        gradient_staging: staging * e,
        gathered_parameters: if w.stage == ZeroStage::Stage3 { live * e } else { 0 },
        master_weights: master_bytes,
        optimizer_state: owned * w.optimizer_slots * F32,
        // The head's logits and their gradient are fp32 in every precision; the saved statistics (LayerNorm
        // mean/rstd, a few floats per row) are counted at the storage size.
        activations: built
            .map_or(0, |m| m.activation_estimate(w.micro_batch, w.seq_len, w.activation_checkpointing).bytes(e)),
    }
}

/// Elements of the model's largest parameter group (the unit stage 3 gathers).
fn largest_group(model: &Model) -> usize {
    model.groups().iter().map(|g| g.len()).max().unwrap_or(0)
}
