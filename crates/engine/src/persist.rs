//! The engine's state to and from checkpoint directories ([`crate::checkpoint`]): parameters and optimizer
//! state as safetensors, everything else in the manifest.

use crate::checkpoint::{self, Loaded};
use crate::engine::{Counters, Engine};
use crate::error::EngineError;
use crate::model_spec::ModelSpec;
use rustspeed_nn::io::{load_params, save_params};
use rustspeed_nn::ParamLayout;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// File of the parameters (state-dict names) inside a tag directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the optimizer state (`<slot>.<parameter name>`) inside a tag directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

/// Reads the model of checkpoint `tag` (default: `latest`) under `root`.
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
    Ok(Weights { spec, params, manifest, dir })
}

impl Engine {
    /// Saves a checkpoint tagged `global_step{N}` under `root` and points `latest` at it. `client_state` (e.g.
    /// the data loader's position) is stored in the manifest and returned by [`Engine::load_checkpoint`].
    pub fn save_checkpoint(&self, root: &Path, spec: &ModelSpec, client_state: Value) -> Result<PathBuf, EngineError> {
        self.single_rank_checkpoints()?;
        let layout = self.model.layout();
        let tag = format!("global_step{}", self.counters.global_steps);
        let model_bytes = save_params(layout, self.params(), "", None).map_err(EngineError::Io)?;
        let mut files = vec![(MODEL_FILE, model_bytes)];
        let slots: Vec<_> = self.optimizer.slots().collect();
        if !slots.is_empty() {
            let mut state = Vec::with_capacity(slots.len() * layout.numel());
            let mut names = ParamLayout::default();
            for (slot, buf) in &slots {
                for e in layout.entries() {
                    names.push(rustspeed_nn::ParamSpec { name: format!("{slot}.{}", e.spec.name), ..e.spec.clone() });
                }
                state.extend_from_slice(buf);
            }
            files.push((OPTIMIZER_FILE, save_params(&names, &state, "", None).map_err(EngineError::Io)?));
        }
        let c = self.counters;
        let manifest = json!({
            "model": spec.to_json(),
            "layout": layout_json(layout),
            "world_size": 1,
            "zero_stage": 0,
            "precision": "fp32",
            "counters": {
                "micro_steps": c.micro_steps, "global_steps": c.global_steps,
                "global_samples": c.global_samples, "skipped_steps": c.skipped_steps,
            },
            "optimizer": { "slots": self.optimizer.rule().slot_names(), "applied_steps": self.optimizer.applied_steps() },
            "lr_scheduler": { "last_batch_iteration": self.optimizer.applied_steps() as i64 - 1 },
            "ds_config": self.config.to_json(),
            "client_state": client_state,
        });
        checkpoint::save(root, &tag, &files, manifest)
    }

    /// Restores parameters, optimizer state, counters and schedule from the `latest` checkpoint under `root`;
    /// returns its client state. The checkpoint must be of the same model (names and shapes).
    pub fn load_checkpoint(&mut self, root: &Path) -> Result<Value, EngineError> {
        self.single_rank_checkpoints()?;
        let tag = checkpoint::latest_tag(root)?;
        let Loaded { dir, manifest, files } = checkpoint::load(root, &tag)?;
        let bad = |msg: String| EngineError::Checkpoint(format!("{}: {msg}", dir.display()));
        if manifest["layout"] != layout_json(self.model.layout()) {
            return Err(bad("its parameter layout differs from this model's (another preset or vocabulary?)".into()));
        }
        let model_bytes = files.get(MODEL_FILE).ok_or_else(|| bad(format!("{MODEL_FILE} is missing")))?;
        let mut params = vec![0.0; self.model.num_params()];
        load_params(self.model.layout(), &mut params, model_bytes, "", true)
            .map_err(|e| bad(format!("{MODEL_FILE}: {e}")))?;

        let names = self.optimizer.rule().slot_names();
        if manifest["optimizer"]["slots"] != json!(names) {
            return Err(bad(format!(
                "its optimizer state {} does not fit the configured optimizer",
                manifest["optimizer"]["slots"]
            )));
        }
        let mut slots = Vec::new();
        for slot in names {
            let bytes = files.get(OPTIMIZER_FILE).ok_or_else(|| bad(format!("{OPTIMIZER_FILE} is missing")))?;
            let mut buf = vec![0.0; self.model.num_params()];
            load_params(self.model.layout(), &mut buf, bytes, &format!("{slot}."), false)
                .map_err(|e| bad(format!("{OPTIMIZER_FILE}: {e}")))?;
            slots.push(buf);
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
        params.resize(self.zero.padded(), 0.0);
        self.params = params;
        self.optimizer.restore(slots, applied);
        self.counters = counters;
        self.grads.fill(0.0);
        Ok(manifest["client_state"].clone())
    }

    /// Multi-rank runs need sharded checkpoints (each rank its own optimizer partition), which this build does
    /// not write yet; with one rank every partition is the whole model.
    fn single_rank_checkpoints(&self) -> Result<(), EngineError> {
        match self.zero.world {
            1 => Ok(()),
            w => Err(EngineError::Unsupported(format!(
                "checkpoints of a {w}-rank run (sharded checkpoints are not implemented yet)"
            ))),
        }
    }
}
