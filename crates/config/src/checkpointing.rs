//! `activation_checkpointing` (semantics §1.8). In DeepSpeed the block configures `deepspeed.checkpointing`,
//! which the model's code then calls around its blocks; rustspeed owns its models, so the block's presence (even
//! with every key at its default) turns activation checkpointing on: each transformer block or LSTM layer but the
//! last keeps only its input in the forward and recomputes its activations in the backward (the last one's
//! backward comes first, so it keeps what it saved). Keys that ask for something this engine cannot do are refused by
//! name; the ones whose purpose is already served here are accepted and change nothing.

use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::reader::Block;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivationCheckpointingConfig {
    /// `partition_activations` (default false): split the checkpoints over model-parallel ranks. rustspeed has no
    /// model parallelism, so true is refused.
    pub partition_activations: bool,
    /// `cpu_checkpointing` (default false): move the checkpoints to host memory, where this engine keeps them
    /// anyway; accepted.
    pub cpu_checkpointing: bool,
    /// `contiguous_memory_optimization` (default false): copy partitioned checkpoints into one buffer; it
    /// works with `partition_activations` only, so true is refused.
    pub contiguous_memory_optimization: bool,
    /// `number_checkpoints` (default None): sizes that contiguous buffer; a number is refused with it.
    pub number_checkpoints: Option<u64>,
    /// `synchronize_checkpoint_boundary` (default false): a device synchronize at each checkpoint; there is no
    /// device to wait for here, so it is accepted.
    pub synchronize_checkpoint_boundary: bool,
    /// `profile` (default false): time each checkpoint's forward and backward; true is refused (the step's
    /// report times forward and backward already).
    pub profile: bool,
}

impl ActivationCheckpointingConfig {
    pub(crate) fn parse(block: Block<'_>) -> Result<Self, ConfigError> {
        let config = ActivationCheckpointingConfig {
            partition_activations: block.bool_or("partition_activations", false)?,
            cpu_checkpointing: block.bool_or("cpu_checkpointing", false)?,
            contiguous_memory_optimization: block.bool_or("contiguous_memory_optimization", false)?,
            number_checkpoints: block.opt_u64("number_checkpoints", 1)?,
            synchronize_checkpoint_boundary: block.bool_or("synchronize_checkpoint_boundary", false)?,
            profile: block.bool_or("profile", false)?,
        };
        let refuse = |key: &'static str, reason: &str| {
            Err(ConfigError::Unsupported { path: block.path_of(key), reason: reason.to_string() })
        };
        if config.partition_activations {
            return refuse("partition_activations", "it splits checkpoints over model-parallel ranks, and rustspeed has no model parallelism; remove it (each rank keeps its own checkpoints)");
        }
        if config.contiguous_memory_optimization {
            return refuse("contiguous_memory_optimization", "it applies to partitioned activations only; remove it");
        }
        if config.number_checkpoints.is_some() {
            return refuse("number_checkpoints", "it sizes the buffer of contiguous_memory_optimization; remove it");
        }
        if config.profile {
            return refuse("profile", "the step report times forward and backward already; remove it");
        }
        block.finish()?;
        Ok(config)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "partition_activations": self.partition_activations,
            "cpu_checkpointing": self.cpu_checkpointing,
            "contiguous_memory_optimization": self.contiguous_memory_optimization,
            "number_checkpoints": self.number_checkpoints,
            "synchronize_checkpoint_boundary": self.synchronize_checkpoint_boundary,
            "profile": self.profile,
        })
    }
}
