//! The engine's state to and from checkpoint directories ([`crate::checkpoint`]): parameters and optimizer
//! state as safetensors, everything else in the manifest.
//!
//! In fp16/bf16 the model file holds the 16-bit model copy (as fp32 tensors, exact) and the fp32 master weights
//! are saved with the optimizer state, as the slot [`MASTER_SLOT`] (DeepSpeed keeps them in its optimizer
//! states too); the manifest holds the loss scaler's state. At stage 3 every rank saves the masters of its
//! partition whatever the precision, and the whole model file is written only with
//! `stage3_gather_16bit_weights_on_model_save` (as DeepSpeed), since gathering it puts the whole model on rank 0.
//!
//! Loading reshards (DeepSpeed needs its offline `ds_to_universal` for this): the saved partitions are read
//! through the saved plan's shards into whole-layout tensors, and the engine takes its own partition of them, so a
//! checkpoint resumes at any world size, ZeRO stage and precision (through the fp32 masters).

use crate::checkpoint::{self, Loaded};
use crate::engine::{Counters, Engine, ModelCopy};
use crate::error::EngineError;
use crate::model_spec::ModelSpec;
use crate::zero::{Shard, ZeroStage};
use rustspeed_kernels::cast::{cast_from_f32, Element};
use rustspeed_nn::io::{load_params, save_params, stored_f32s};
use rustspeed_nn::{Init, ParamLayout, ParamSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File of the parameters (state-dict names) inside a tag directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the optimizer state (`<slot>.<parameter name>`) inside a tag directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The optimizer-state slot of the fp32 master weights (16-bit runs, and every stage-3 run).
pub const MASTER_SLOT: &str = "fp32_master";

type Files = BTreeMap<String, Vec<u8>>;

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

/// What a checkpoint's partitions are: its world size, stage and shards, read from the manifest and checked
/// against the layout before anything is allocated from them.
struct SavedPlan {
    world: usize,
    stage: ZeroStage,
    shards: Vec<Shard>,
}

impl SavedPlan {
    fn read(manifest: &Value, numel: usize) -> Result<SavedPlan, String> {
        let world = manifest["world_size"].as_u64().filter(|&w| w >= 1).ok_or("world_size is missing or 0")? as usize;
        let stage = manifest["zero_stage"]
            .as_u64()
            .and_then(|s| ZeroStage::from_number(s as u8))
            .ok_or("zero_stage is missing or not 0-3")?;
        let shards = match manifest["shards"].as_array() {
            Some(list) => list
                .iter()
                .map(|s| {
                    let n =
                        |i: usize| s[i].as_u64().map(|v| v as usize).ok_or(format!("shards entry {s} is malformed"));
                    Ok(Shard { span: n(0)?..n(1)?, size: n(2)?, at: n(3)? })
                })
                .collect::<Result<Vec<_>, String>>()?,
            // Checkpoints from before stage 3: one contiguous partition of `partition_size`.
            None => {
                let size = manifest["partition_size"].as_u64().ok_or("partition_size is missing")? as usize;
                vec![Shard { span: 0..numel, size, at: 0 }]
            }
        };
        // The shards must tile the layout in order, each share the size the stage gives it (so the partition,
        // which is allocated from them, is at most the layout plus a padding element per shard and rank).
        let (mut end, mut at) = (0, 0);
        let tiles = |s: &Shard| match stage {
            ZeroStage::Stage0 => s.size == s.span.len(),
            _ => s.size == s.span.len().div_ceil(world),
        };
        for s in &shards {
            if s.span.start != end || s.span.end <= s.span.start || s.at != at || !tiles(s) {
                return Err(format!("its shards do not tile the {numel} parameters over {world} ranks"));
            }
            (end, at) = (s.span.end, at + s.size);
        }
        if end != numel || (stage != ZeroStage::Stage3 && shards.len() != 1) {
            return Err(format!("its shards do not tile the {numel} parameters at ZeRO stage {}", stage.number()));
        }
        Ok(SavedPlan { world, stage, shards })
    }

    fn partition(&self) -> usize {
        self.shards.iter().map(|s| s.size).sum()
    }
}

/// Reads checkpoint `tag` (default: `latest`) under `root`.
fn load_tag(root: &Path, tag: Option<&str>) -> Result<Loaded, EngineError> {
    let tag = match tag {
        Some(t) => t.to_string(),
        None => checkpoint::latest_tag(root)?,
    };
    checkpoint::load(root, &tag)
}

/// Reads the model of checkpoint `tag` (default: `latest`) under `root`: the fp32 master weights where the
/// checkpoint has them (16-bit runs and stage 3, gathered from the partitions as DeepSpeed's `zero_to_fp32`),
/// else the parameters.
pub fn load_weights(root: &Path, tag: Option<&str>) -> Result<Weights, EngineError> {
    let Loaded { dir, manifest, files } = load_tag(root, tag)?;
    let bad = |msg: String| EngineError::Checkpoint(format!("{}: {msg}", dir.display()));
    let spec = ModelSpec::from_json(&manifest["model"])?;
    spec.config.validate()?;
    // The model's size is checked against the tensors present before the model is built or anything allocated.
    let numel = spec.config.num_params().ok_or_else(|| bad("its model's parameter count overflows".into()))?;
    let plan = SavedPlan::read(&manifest, numel).map_err(bad)?;
    check_stored(&files, &manifest, &plan, numel).map_err(bad)?;
    let model = spec.config.build()?;
    if manifest["layout"] != layout_json(model.layout()) {
        return Err(bad("its parameter layout differs from the model its manifest describes".into()));
    }
    let params = match saved_masters(&manifest, &plan) {
        true => read_slots(&files, &plan, &[MASTER_SLOT], model.layout()).map_err(bad)?.remove(0),
        false => read_model_file(&files, model.layout()).map_err(bad)?,
    };
    Ok(Weights { spec, params, manifest, dir })
}

/// Checks that the checkpoint's files hold exactly the F32 elements its plan implies for `numel` parameters
/// (read from the files' headers, which are checked against their bytes), so that no size from the manifest is
/// allocated unless that much data is really there.
fn check_stored(files: &Files, manifest: &Value, plan: &SavedPlan, numel: usize) -> Result<(), String> {
    let slot_names = manifest["optimizer"]["slots"].as_array().ok_or("optimizer.slots is missing")?;
    let slots = slot_names.len() + saved_masters(manifest, plan) as usize;
    let expect = |name: &str, want: usize| -> Result<(), String> {
        let bytes = files.get(name).ok_or(format!("{name} is missing"))?;
        match stored_f32s(bytes).map_err(|e| format!("{name}: {e}"))? {
            got if got == want => Ok(()),
            got => Err(format!("{name} holds {got} values; its manifest implies {want}")),
        }
    };
    if files.contains_key(MODEL_FILE) {
        expect(MODEL_FILE, numel)?;
    }
    match (slots, plan.stage) {
        (0, _) => Ok(()),
        (_, ZeroStage::Stage0) => expect(OPTIMIZER_FILE, slots * numel),
        _ => (0..plan.world).try_for_each(|rank| expect(&shard_file(rank), slots * plan.partition())),
    }
}

/// Whether the checkpoint's optimizer state holds the fp32 masters.
fn saved_masters(manifest: &Value, plan: &SavedPlan) -> bool {
    manifest["precision"] != json!("fp32") || plan.stage == ZeroStage::Stage3
}

fn read_model_file(files: &Files, layout: &ParamLayout) -> Result<Vec<f32>, String> {
    let bytes = files.get(MODEL_FILE).ok_or(format!("{MODEL_FILE} is missing"))?;
    let mut params = vec![0.0; layout.numel()];
    load_params(layout, &mut params, bytes, "", true).map_err(|e| format!("{MODEL_FILE}: {e}"))?;
    Ok(params)
}

/// The whole-layout tensors of optimizer-state slots `names`, from the saved plan's files: the named tensors of
/// stage 0's optimizer file, or each rank's partition mapped back through the shards.
fn read_slots(files: &Files, plan: &SavedPlan, names: &[&str], layout: &ParamLayout) -> Result<Vec<Vec<f32>>, String> {
    // An optimizer without state (SGD without momentum, in fp32 below stage 3) saved no file to read.
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if plan.stage == ZeroStage::Stage0 {
        let bytes = files.get(OPTIMIZER_FILE).ok_or(format!("{OPTIMIZER_FILE} is missing"))?;
        return names
            .iter()
            .map(|slot| {
                let mut buf = vec![0.0; layout.numel()];
                load_params(layout, &mut buf, bytes, &format!("{slot}."), false)
                    .map_err(|e| format!("{OPTIMIZER_FILE}: {e}"))?;
                Ok(buf)
            })
            .collect();
    }
    let partition = plan.partition();
    let mut whole = vec![vec![0.0; layout.numel()]; names.len()];
    let mut one = ParamLayout::default();
    for name in names {
        one.push(ParamSpec::new(*name, &[partition], Init::Zeros));
    }
    let mut values = vec![0.0; one.numel()];
    for rank in 0..plan.world {
        let file = shard_file(rank);
        let bytes = files.get(&file).ok_or(format!("{file} is missing"))?;
        load_params(&one, &mut values, bytes, "", false).map_err(|e| format!("{file}: {e}"))?;
        for (slot, saved) in whole.iter_mut().zip(values.chunks(partition)) {
            for shard in &plan.shards {
                let owned = shard.owned(rank);
                slot[owned.clone()].copy_from_slice(&saved[shard.at..shard.at + owned.len()]);
            }
        }
    }
    Ok(whole)
}

/// File of rank `r`'s optimizer partition (ZeRO stages 1-3): one 1-D tensor per state slot.
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

/// The key paths whose values differ between two configs, each as `path old -> new`.
fn changed_keys(old: &Value, new: &Value, prefix: &str) -> Vec<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    changed_keys(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), &path)
                })
                .collect()
        }
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{prefix} {a} -> {b}")],
    }
}

/// The largest counter a checkpoint may hold: no run takes 2^53 steps, and below it a counter is exact in an
/// f64 (JSON readers of other languages) and can be advanced without overflow.
const MAX_COUNTER: u64 = 1 << 53;

/// The counters must agree with one another and with the tag (every step, applied or skipped, advances
/// `global_steps`; only applied ones advance the optimizer and the schedule; each step has at least one
/// micro-step and one sample), so that a damaged counter is an error instead of a wrong continuation.
fn check_counters(manifest: &Value, c: &Counters, applied: u64) -> Result<(), String> {
    let all = [c.micro_steps, c.global_steps, c.global_samples, c.skipped_steps, applied];
    if all.iter().any(|&n| n > MAX_COUNTER) {
        return Err(format!("a counter exceeds {MAX_COUNTER}: {c:?}, applied_steps {applied}"));
    }
    let tag = format!("global_step{}", c.global_steps);
    if manifest["tag"] != tag {
        return Err(format!("counters.global_steps {} does not match its tag {}", c.global_steps, manifest["tag"]));
    }
    if c.skipped_steps > c.global_steps || applied != c.global_steps - c.skipped_steps {
        return Err(format!(
            "optimizer.applied_steps {applied} is not global_steps {} less skipped_steps {}",
            c.global_steps, c.skipped_steps
        ));
    }
    if c.micro_steps < c.global_steps || c.global_samples < c.global_steps {
        return Err(format!(
            "counters (micro_steps {}, global_samples {}) are fewer than its global_steps {}",
            c.micro_steps, c.global_samples, c.global_steps
        ));
    }
    if manifest["lr_scheduler"]["last_batch_iteration"] != json!(applied as i64 - 1) {
        return Err(format!(
            "lr_scheduler.last_batch_iteration {} does not follow optimizer.applied_steps {applied}",
            manifest["lr_scheduler"]["last_batch_iteration"]
        ));
    }
    Ok(())
}

/// What a resume changed relative to the saved run, in words (empty when nothing did).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resumed {
    /// The saved `client_state` (e.g. the data loader's position).
    pub client_state: Value,
    pub changes: Vec<String>,
}

impl<E: Element> Engine<E> {
    /// The optimizer's state buffers and the fp32 masters where they are separate from the parameters (16-bit
    /// runs) or the only whole copy (stage 3), as checkpoints store them: over this rank's partition.
    fn state_tensors(&self) -> Vec<(&str, &[f32])> {
        let master = match &self.copy {
            ModelCopy::Whole { master, .. } => master.separate(),
            ModelCopy::Sharded(sharded) => &sharded.master,
        };
        let master = (!master.is_empty()).then_some((MASTER_SLOT, master));
        self.optimizer.slots().chain(master).collect()
    }

    /// Saves a checkpoint tagged `global_step{N}` under `root` and points `latest` at it: a collective, called
    /// by every rank. Rank 0 writes the parameters (gathered at stage 3, and only with
    /// `stage3_gather_16bit_weights_on_model_save`) and, at stage 0, the optimizer state; at stages 1-3 each rank
    /// writes its own optimizer partition. `client_state` (e.g. the data loader's position) is stored in the
    /// manifest and returned by [`Engine::load_checkpoint`]. A rank that does not take part makes the others fail
    /// at the communicator's timeout, naming it.
    pub fn save_checkpoint(&self, root: &Path, spec: &ModelSpec, client_state: Value) -> Result<PathBuf, EngineError> {
        let tag = format!("global_step{}", self.counters.global_steps);
        let (rank, zero) = (self.comm.rank(), &self.zero);
        if rank == 0 {
            checkpoint::begin(root, &tag)?;
        }
        self.comm.barrier()?;
        let partial = checkpoint::partial_dir(root, &tag);
        let slots = self.state_tensors();
        if zero.sharded() && !slots.is_empty() {
            checkpoint::write_file(&partial, &shard_file(rank), &flat_tensors(&slots)?)?;
        }
        let whole_model =
            !zero.shards_params() || self.config.zero_optimization.stage3_gather_16bit_weights_on_model_save;
        let params = match whole_model {
            true => Some(self.params_f32()?),
            false => None,
        };
        let mut files = Vec::new();
        if let Some(params) = &params {
            files.push(MODEL_FILE.to_string());
            if rank == 0 {
                let bytes = save_params(self.model.layout(), params, "", None).map_err(EngineError::Io)?;
                checkpoint::write_file(&partial, MODEL_FILE, &bytes)?;
            }
        }
        if !zero.sharded() && !slots.is_empty() {
            if rank == 0 {
                let layout = self.model.layout();
                let mut names = ParamLayout::default();
                let mut state = Vec::with_capacity(slots.len() * layout.numel());
                for (slot, buf) in &slots {
                    for e in layout.entries() {
                        names.push(ParamSpec { name: format!("{slot}.{}", e.spec.name), ..e.spec.clone() });
                    }
                    state.extend_from_slice(buf);
                }
                let bytes = save_params(&names, &state, "", None).map_err(EngineError::Io)?;
                checkpoint::write_file(&partial, OPTIMIZER_FILE, &bytes)?;
            }
            files.push(OPTIMIZER_FILE.to_string());
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
        let shards: Vec<Value> =
            self.zero.shards.iter().map(|s| json!([s.span.start, s.span.end, s.size, s.at])).collect();
        json!({
            "model": spec.to_json(),
            "layout": layout_json(self.model.layout()),
            "world_size": self.zero.world,
            "zero_stage": self.zero.stage.number(),
            "partition_size": self.zero.partition,
            "shards": shards,
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

    /// Restores parameters, optimizer state, counters and schedule from the `latest` checkpoint under `root`. The
    /// checkpoint must be of the same model (names and shapes) and optimizer; its world size, ZeRO stage and
    /// precision may differ from this engine's (the state is resharded, and crosses precisions through the fp32
    /// masters): the returned [`Resumed`] says what changed, with the saved client state.
    pub fn load_checkpoint(&mut self, root: &Path) -> Result<Resumed, EngineError> {
        self.expect_phase("load_checkpoint", crate::EnginePhase::Ready, "step() (or construction)")?;
        let Loaded { dir, manifest, files } = load_tag(root, None)?;
        let bad = |msg: String| EngineError::Checkpoint(format!("{}: {msg}", dir.display()));
        let layout = self.model.layout();
        if manifest["layout"] != layout_json(layout) {
            return Err(bad("its parameter layout differs from this model's (another preset or vocabulary?)".into()));
        }
        let plan = SavedPlan::read(&manifest, layout.numel()).map_err(bad)?;
        check_stored(&files, &manifest, &plan, layout.numel()).map_err(bad)?;
        let names = self.optimizer.rule().slot_names();
        if manifest["optimizer"]["slots"] != json!(names) {
            return Err(bad(format!(
                "its optimizer state {} does not fit the configured optimizer",
                manifest["optimizer"]["slots"]
            )));
        }
        let saved_precision = manifest["precision"].as_str().unwrap_or("?").to_string();
        let mut wanted: Vec<&str> = names.to_vec();
        if saved_masters(&manifest, &plan) {
            wanted.push(MASTER_SLOT);
        }
        let mut slots = read_slots(&files, &plan, &wanted, layout).map_err(bad)?;
        let masters = match saved_masters(&manifest, &plan) {
            true => slots.pop().expect("the master slot is read last"),
            false => read_model_file(&files, layout).map_err(bad)?,
        };
        let mut precision = self.precision.clone();
        let mut changes = Vec::new();
        if saved_precision == E::NAME {
            precision.restore_scaler(&manifest["loss_scaler"]).map_err(bad)?;
        } else {
            changes.push(format!("precision {saved_precision} -> {} (from the fp32 master weights)", E::NAME));
        }
        if plan.world != self.zero.world {
            changes.push(format!("world size {} -> {}", plan.world, self.zero.world));
        }
        if plan.stage != self.zero.stage {
            changes.push(format!("ZeRO stage {} -> {}", plan.stage.number(), self.zero.stage.number()));
        }
        let config_changes = changed_keys(&manifest["ds_config"], &self.config.to_json(), "");
        if !config_changes.is_empty() {
            changes.push(format!("config {}", config_changes.join(", ")));
        }
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
        check_counters(&manifest, &counters, applied).map_err(bad)?;
        let gas = self.batch.gradient_accumulation_steps as u64;
        if !counters.micro_steps.is_multiple_of(gas) {
            return Err(bad(format!(
                "counters.micro_steps {} is not a multiple of gradient_accumulation_steps {gas}: the run would resume inside an accumulation window",
                counters.micro_steps
            )));
        }
        self.restore(&masters, slots, applied)?;
        self.precision = precision;
        self.counters = counters;
        Ok(Resumed { client_state: manifest["client_state"].clone(), changes })
    }

    /// Takes this rank's part of whole-layout fp32 masters and optimizer slots: the model copy is rounded from
    /// the masters (which is what a 16-bit run's copy always holds), the state covers the partition.
    fn restore(&mut self, masters: &[f32], slots: Vec<Vec<f32>>, applied: u64) -> Result<(), EngineError> {
        let segments = self.zero.segments();
        let partition_of = |whole: &[f32]| {
            let mut part = vec![0.0; self.zero.partition];
            for s in &segments {
                part[s.at..s.at + s.layout.len()].copy_from_slice(&whole[s.layout.clone()]);
            }
            part
        };
        let state: Vec<Vec<f32>> = slots.iter().map(|s| partition_of(s)).collect();
        match &mut self.copy {
            ModelCopy::Whole { params, master } => {
                cast_from_f32(&mut params[..masters.len()], masters);
                if !E::IS_F32 {
                    let owned = self.zero.owned();
                    let mut wide = vec![0.0; owned.len()];
                    let valid = owned.start.min(masters.len())..owned.end.min(masters.len());
                    wide[..valid.len()].copy_from_slice(&masters[valid]);
                    master.restore(wide);
                }
            }
            ModelCopy::Sharded(sharded) => {
                sharded.master = partition_of(masters);
                for (shard, copy) in self.zero.shards.iter().zip(sharded.persistent.iter_mut()) {
                    if let Some(copy) = copy {
                        cast_from_f32(copy, &masters[shard.span.clone()]);
                    }
                }
            }
        }
        self.optimizer.restore(state, applied);
        // Nothing of a window in progress survives a load.
        self.grads.clear_unread(true);
        Ok(())
    }
}
