//! The engine's state to and from checkpoint directories ([`crate::checkpoint`]): parameters and optimizer
//! state as safetensors, everything else in the manifest.
//!
//! In fp16/bf16 the model file holds the 16-bit model copy (as fp32 tensors, exact) and the fp32 master weights
//! are saved with the optimizer state, as the slot [`MASTER_SLOT`] (DeepSpeed keeps them in its optimizer
//! states too); the manifest holds the loss scaler's state.

use crate::checkpoint::{self, Loaded};
use crate::engine::{Counters, Engine};
use crate::error::EngineError;
use crate::model_spec::ModelSpec;
use rustspeed_kernels::cast::{cast_from_f32, Element};
use rustspeed_nn::io::{load_params, save_params};
use rustspeed_nn::{Init, ParamLayout, ParamSpec};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// File of the parameters (state-dict names) inside a tag directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the optimizer state (`<slot>.<parameter name>`) inside a tag directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The optimizer-state slot of the fp32 master weights (16-bit runs only).
pub const MASTER_SLOT: &str = "fp32_master";

fn layout_json(layout: &ParamLayout) -> Value {
    layout.entries().iter().map(|e| json!({ "name": e.spec.name, "shape": e.spec.shape, "offset": e.offset })).collect()
}

/// Parameters and model description of a checkpoint, for `generate` and `export`.
pub struct Weights {
    pub spec: ModelSpec,
    pub params: Vec<f32>,
    pub manifest: Value,
    pub dir: PathBuf,
}

/// Reads the model of checkpoint `tag` (default: `latest`) under `root`: the fp32 master weights of a 16-bit
/// run (gathered from the optimizer partitions when sharded, as DeepSpeed's `zero_to_fp32`), else the parameters.
pub fn load_weights(root: &Path, tag: Option<&str>) -> Result<Weights, EngineError> {
    let tag = match tag {
        Some(t) => t.to_string(),
        None => checkpoint::latest_tag(root)?,
    };
    let Loaded { dir, manifest, files } = checkpoint::load(root, &tag)?;
    let spec = ModelSpec::from_json(&manifest["model"])?;
    let model = spec.config.build()?;
    let bytes = files
        .get(MODEL_FILE)
        .ok_or_else(|| EngineError::Checkpoint(format!("{} lacks {MODEL_FILE}", dir.display())))?;
    let mut params = vec![0.0; model.num_params()];
    load_params(model.layout(), &mut params, bytes, "", true)
        .map_err(|e| EngineError::Checkpoint(format!("{}/{MODEL_FILE}: {e}", dir.display())))?;
    if manifest["precision"] != json!("fp32") {
        params = read_masters(&manifest, &files, model.layout())
            .map_err(|e| EngineError::Checkpoint(format!("{}: {e}", dir.display())))?;
    }
    Ok(Weights { spec, params, manifest, dir })
}

/// The whole model's fp32 master weights of a 16-bit checkpoint.
fn read_masters(
    manifest: &Value,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    layout: &ParamLayout,
) -> Result<Vec<f32>, String> {
    let mut masters = vec![0.0; layout.numel()];
    if manifest["zero_stage"] == json!(0) {
        let bytes = files.get(OPTIMIZER_FILE).ok_or(format!("{OPTIMIZER_FILE} is missing"))?;
        load_params(layout, &mut masters, bytes, &format!("{MASTER_SLOT}."), false)
            .map_err(|e| format!("{OPTIMIZER_FILE}: {e}"))?;
        return Ok(masters);
    }
    let world = manifest["world_size"].as_u64().ok_or("world_size is missing")? as usize;
    let partition = manifest["partition_size"].as_u64().ok_or("partition_size is missing")? as usize;
    let mut all = Vec::with_capacity(world * partition);
    for rank in 0..world {
        let file = shard_file(rank);
        let bytes = files.get(&file).ok_or(format!("{file} is missing"))?;
        let mut one = ParamLayout::default();
        one.push(ParamSpec::new(MASTER_SLOT, &[partition], Init::Zeros));
        let mut values = vec![0.0; partition];
        load_params(&one, &mut values, bytes, "", false).map_err(|e| format!("{file}: {e}"))?;
        all.extend_from_slice(&values);
    }
    if all.len() < layout.numel() {
        return Err(format!("{world} partitions of {partition} cannot hold {} parameters", layout.numel()));
    }
    masters.copy_from_slice(&all[..layout.numel()]);
    Ok(masters)
}

/// File of rank `r`'s optimizer partition (ZeRO stages 1 and 2): one 1-D tensor per state slot.
pub fn shard_file(rank: usize) -> String {
    format!("optimizer_rank{rank:03}.safetensors")
}

/// Serializes 1-D tensors `(name, values)`.
fn flat_tensors(tensors: &[(&str, &[f32])]) -> Result<Vec<u8>, EngineError> {
    let mut layout = ParamLayout::default();
    let mut values = Vec::new();
    for (name, data) in tensors {
        layout.push(ParamSpec::new(*name, &[data.len()], Init::Zeros));
        values.extend_from_slice(data);
    }
    save_params(&layout, &values, "", None).map_err(EngineError::Io)
}

impl<E: Element> Engine<E> {
    /// The optimizer's state buffers and, in 16-bit runs, the fp32 master weights, as checkpoints store them.
    fn state_tensors(&self) -> Vec<(&str, &[f32])> {
        let master = self.master.separate();
        let master = (!master.is_empty()).then_some((MASTER_SLOT, master));
        self.optimizer.slots().chain(master).collect()
    }

    /// Slot names of [`Engine::state_tensors`].
    fn state_names(&self) -> Vec<&'static str> {
        let master = (!E::IS_F32).then_some(MASTER_SLOT);
        self.optimizer.rule().slot_names().iter().copied().chain(master).collect()
    }

    /// Saves a checkpoint tagged `global_step{N}` under `root` and points `latest` at it: a collective, called
    /// by every rank. Rank 0 writes the parameters (the same on every rank) and, at stage 0, the optimizer state;
    /// at stages 1 and 2 each rank writes its own optimizer partition. `client_state` (e.g. the data loader's
    /// position) is stored in the manifest and returned by [`Engine::load_checkpoint`]. A rank that does not take
    /// part makes the others fail at the communicator's timeout, naming it.
    pub fn save_checkpoint(&self, root: &Path, spec: &ModelSpec, client_state: Value) -> Result<PathBuf, EngineError> {
        let tag = format!("global_step{}", self.counters.global_steps);
        let (rank, zero) = (self.comm.rank(), self.zero);
        if rank == 0 {
            checkpoint::begin(root, &tag)?;
        }
        self.comm.barrier()?;
        let partial = checkpoint::partial_dir(root, &tag);
        let slots = self.state_tensors();
        if zero.sharded() {
            checkpoint::write_file(&partial, &shard_file(rank), &flat_tensors(&slots)?)?;
        }
        let mut files = vec![MODEL_FILE.to_string()];
        if rank == 0 {
            let layout = self.model.layout();
            checkpoint::write_file(
                &partial,
                MODEL_FILE,
                &save_params(layout, &self.params_f32(), "", None).map_err(EngineError::Io)?,
            )?;
            if !zero.sharded() && !slots.is_empty() {
                let mut names = ParamLayout::default();
                let mut state = Vec::with_capacity(slots.len() * layout.numel());
                for (slot, buf) in &slots {
                    for e in layout.entries() {
                        names.push(ParamSpec { name: format!("{slot}.{}", e.spec.name), ..e.spec.clone() });
                    }
                    state.extend_from_slice(buf);
                }
                checkpoint::write_file(
                    &partial,
                    OPTIMIZER_FILE,
                    &save_params(&names, &state, "", None).map_err(EngineError::Io)?,
                )?;
                files.push(OPTIMIZER_FILE.to_string());
            }
        }
        if zero.sharded() && !slots.is_empty() {
            files.extend((0..zero.world).map(shard_file));
        }
        self.comm.barrier()?;
        if rank == 0 {
            checkpoint::commit(root, &tag, &files, self.manifest(spec, client_state))?;
        }
        self.comm.barrier()?;
        Ok(root.join(tag))
    }

    fn manifest(&self, spec: &ModelSpec, client_state: Value) -> Value {
        let c = self.counters;
        json!({
            "model": spec.to_json(),
            "layout": layout_json(self.model.layout()),
            "world_size": self.zero.world,
            "zero_stage": self.zero.stage.number(),
            "partition_size": self.zero.partition,
            "precision": E::NAME,
            "loss_scaler": self.precision.scaler_json(),
            "counters": {
                "micro_steps": c.micro_steps, "global_steps": c.global_steps,
                "global_samples": c.global_samples, "skipped_steps": c.skipped_steps,
            },
            "optimizer": { "slots": self.optimizer.rule().slot_names(), "applied_steps": self.optimizer.applied_steps() },
            "lr_scheduler": { "last_batch_iteration": self.optimizer.applied_steps() as i64 - 1 },
            "ds_config": self.config.to_json(),
            "client_state": client_state,
        })
    }

    /// Restores parameters, optimizer state, counters and schedule from the `latest` checkpoint under `root`;
    /// returns its client state. The checkpoint must be of the same model (names and shapes), world size, ZeRO
    /// stage and precision.
    pub fn load_checkpoint(&mut self, root: &Path) -> Result<Value, EngineError> {
        let tag = checkpoint::latest_tag(root)?;
        let Loaded { dir, manifest, files } = checkpoint::load(root, &tag)?;
        let bad = |msg: String| EngineError::Checkpoint(format!("{}: {msg}", dir.display()));
        if manifest["layout"] != layout_json(self.model.layout()) {
            return Err(bad("its parameter layout differs from this model's (another preset or vocabulary?)".into()));
        }
        let zero = self.zero;
        if manifest["world_size"] != json!(zero.world) || manifest["zero_stage"] != json!(zero.stage.number()) {
            return Err(bad(format!(
                "it was written by {} rank(s) at ZeRO stage {}; this run has {} at stage {} (resuming on another world size or stage is not implemented yet)",
                manifest["world_size"], manifest["zero_stage"], zero.world, zero.stage.number()
            )));
        }
        if manifest["precision"] != json!(E::NAME) {
            return Err(bad(format!("it was written in {}; this run trains in {}", manifest["precision"], E::NAME)));
        }
        let model_bytes = files.get(MODEL_FILE).ok_or_else(|| bad(format!("{MODEL_FILE} is missing")))?;
        let mut params = vec![0.0; zero.numel];
        load_params(self.model.layout(), &mut params, model_bytes, "", true)
            .map_err(|e| bad(format!("{MODEL_FILE}: {e}")))?;

        let names = self.optimizer.rule().slot_names();
        if manifest["optimizer"]["slots"] != json!(names) {
            return Err(bad(format!(
                "its optimizer state {} does not fit the configured optimizer",
                manifest["optimizer"]["slots"]
            )));
        }
        let mut slots = match zero.sharded() {
            true => self.read_shard(&files, &bad)?,
            false => self.read_full_state(&files, &bad)?,
        };
        let mut precision = self.precision.clone();
        precision.restore_scaler(&manifest["loss_scaler"]).map_err(bad)?;
        let counter =
            |key: &str| manifest["counters"][key].as_u64().ok_or_else(|| bad(format!("counters.{key} is missing")));
        let counters = Counters {
            micro_steps: counter("micro_steps")?,
            global_steps: counter("global_steps")?,
            global_samples: counter("global_samples")?,
            skipped_steps: counter("skipped_steps")?,
        };
        let applied = manifest["optimizer"]["applied_steps"]
            .as_u64()
            .ok_or_else(|| bad("optimizer.applied_steps is missing".into()))?;
        params.resize(zero.padded(), 0.0);
        cast_from_f32(&mut self.params, &params);
        if !E::IS_F32 {
            self.master.restore(slots.pop().expect("the master slot is read last"));
        }
        self.precision = precision;
        self.optimizer.restore(slots, applied);
        self.counters = counters;
        self.grads.fill(E::default());
        Ok(manifest["client_state"].clone())
    }

    fn read_full_state(
        &self,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
        bad: &dyn Fn(String) -> EngineError,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let layout = self.model.layout();
        let names = self.state_names();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = files.get(OPTIMIZER_FILE).ok_or_else(|| bad(format!("{OPTIMIZER_FILE} is missing")))?;
        let mut slots = Vec::new();
        for slot in names {
            let mut buf = vec![0.0; layout.numel()];
            load_params(layout, &mut buf, bytes, &format!("{slot}."), false)
                .map_err(|e| bad(format!("{OPTIMIZER_FILE}: {e}")))?;
            slots.push(buf);
        }
        Ok(slots)
    }

    fn read_shard(
        &self,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
        bad: &dyn Fn(String) -> EngineError,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let names = self.state_names();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let file = shard_file(self.comm.rank());
        let bytes = files.get(&file).ok_or_else(|| bad(format!("{file} is missing")))?;
        let mut layout = ParamLayout::default();
        names.iter().for_each(|n| {
            layout.push(ParamSpec::new(*n, &[self.zero.partition], Init::Zeros));
        });
        let mut all = vec![0.0; layout.numel()];
        load_params(&layout, &mut all, bytes, "", true).map_err(|e| bad(format!("{file}: {e}")))?;
        Ok(all.chunks(self.zero.partition).map(|c| c.to_vec()).collect())
    }
}
