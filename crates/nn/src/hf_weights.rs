//! Hugging Face checkpoints in: a `model.safetensors` file, or a directory with `config.json` and the weights
//! (one `model.safetensors`, or the shards a `model.safetensors.index.json` lists), loaded into a model's flat
//! fp32 parameters by state-dict name.
//!
//! rustspeed's models use Hugging Face's names (GPT-2's `transformer.*` in `Conv1D` orientation, Llama's
//! `model.*` and `lm_head.*` in `nn.Linear` orientation), so loading is a lookup. What a real checkpoint adds is
//! handled by name: GPT-2 files written by the original conversion lack the `transformer.` prefix; buffers that
//! are not parameters (GPT-2's attention masks `attn.bias`/`attn.masked_bias`, old Llama's
//! `rotary_emb.inv_freq`) and the copy of a tied head (`lm_head.weight` where the model ties it) are skipped.
//! F32, F16 and BF16 tensors load (16-bit ones widened exactly into the fp32 master weights). Every missing,
//! unexpected or mis-shaped tensor is reported, each by name, in one error.

use crate::error::ModelError;
use crate::param::ParamLayout;
use rustspeed_kernels::cast::{bf16, f16};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights file of a single-file checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint directory (`{"weight_map": {tensor: file}}`).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model description of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// A checkpoint read from disk: its `config.json` (when a directory has one) and its weight files' bytes.
pub struct HfCheckpoint {
    pub config: Option<Value>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn invalid(msg: String) -> ModelError {
    ModelError::InvalidConfig(msg)
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    serde_json::from_slice(&read(path)?).map_err(|e| invalid(format!("{}: not valid JSON: {e}", path.display())))
}

/// Reads a checkpoint: a safetensors file, or a directory as `save_pretrained` writes one.
pub fn read_checkpoint(path: &Path) -> Result<HfCheckpoint, ModelError> {
    if !path.is_dir() {
        return Ok(HfCheckpoint { config: None, files: vec![(path.to_path_buf(), read(path)?)] });
    }
    let config_path = path.join(CONFIG_FILE);
    let config = match config_path.exists() {
        true => Some(read_json(&config_path)?),
        false => None,
    };
    let single = path.join(WEIGHTS_FILE);
    let index = path.join(INDEX_FILE);
    let names: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let map = read_json(&index)?;
        let weight_map = map["weight_map"]
            .as_object()
            .ok_or_else(|| invalid(format!("{}: no \"weight_map\" object", index.display())))?;
        let mut shards: Vec<&str> = Vec::new();
        for (tensor, file) in weight_map {
            let file = file.as_str().filter(|f| !f.contains(['/', '\\']) && !f.starts_with('.'));
            let file = file.ok_or_else(|| invalid(format!("{}: tensor {tensor}: bad file name", index.display())))?;
            if !shards.contains(&file) {
                shards.push(file);
            }
        }
        shards.into_iter().map(|f| path.join(f)).collect()
    } else {
        return Err(invalid(format!("{}: neither {WEIGHTS_FILE} nor {INDEX_FILE} is there", path.display())));
    };
    let files = names.into_iter().map(|p| read(&p).map(|bytes| (p, bytes))).collect::<Result<_, _>>()?;
    Ok(HfCheckpoint { config, files })
}

/// A tensor of the file that is not a parameter, or a tied copy the model does not keep.
fn skipped(name: &str, layout: &ParamLayout) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || (name == "lm_head.weight" && layout.find(name).is_none())
}

/// The layout's name of a file's tensor: itself, or with GPT-2's `transformer.` prefix restored.
fn layout_name(name: &str, layout: &ParamLayout) -> Option<String> {
    [name.to_string(), format!("transformer.{name}")].into_iter().find(|n| layout.find(n).is_some())
}

/// Widens a tensor's little-endian F32/F16/BF16 bytes into `dst`.
fn widen(dtype: Dtype, bytes: &[u8], dst: &mut [f32]) -> Result<(), String> {
    let pairs = || bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    match dtype {
        Dtype::F32 => {
            let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            dst.iter_mut().zip(values).for_each(|(d, v)| *d = v);
        }
        Dtype::F16 => dst.iter_mut().zip(pairs()).for_each(|(d, v)| *d = f16::from_bits(v).to_f32()),
        Dtype::BF16 => dst.iter_mut().zip(pairs()).for_each(|(d, v)| *d = bf16::from_bits(v).to_f32()),
        other => return Err(format!("{other:?} (F32, F16 or BF16 load)")),
    }
    Ok(())
}

/// Fills `params` (over `layout`) from the checkpoint. Every parameter must come from exactly one tensor of the
/// right shape; every tensor must be a parameter or one of the known skipped kinds.
pub fn load_into(layout: &ParamLayout, params: &mut [f32], ckpt: &HfCheckpoint) -> Result<(), ModelError> {
    let mut problems = Vec::new();
    let mut loaded: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (path, bytes) in &ckpt.files {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
        for (name, view) in file.tensors() {
            if skipped(&name, layout) {
                continue;
            }
            let Some(ours) = layout_name(&name, layout) else {
                problems.push(format!("unexpected tensor '{name}' (the model has no such parameter)"));
                continue;
            };
            let id = layout.find(&ours).expect("layout_name found it");
            let entry = layout.entry(id);
            if let Some(first) = loaded.insert(ours.clone(), path.clone()) {
                problems.push(format!("tensor '{name}' appears twice ({} and {})", first.display(), path.display()));
                continue;
            }
            if view.shape() != entry.spec.shape.as_slice() {
                problems.push(format!(
                    "tensor '{name}' has shape {:?}, the model needs {:?}",
                    view.shape(),
                    entry.spec.shape
                ));
                continue;
            }
            if let Err(dtype) = widen(view.dtype(), view.data(), &mut params[entry.range()]) {
                problems.push(format!("tensor '{name}' is {dtype}"));
            }
        }
    }
    for entry in layout.entries() {
        if !loaded.contains_key(&entry.spec.name) {
            problems.push(format!("tensor '{}' is missing", entry.spec.name));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(invalid(format!("the checkpoint does not fit the model: {}", problems.join("; ")))),
    }
}

impl HfCheckpoint {
    /// Elements of all the files' tensors, from their headers (which the parser checks against the bytes): a
    /// model described as larger cannot be filled from them, and is refused before it is allocated.
    pub fn stored_elements(&self) -> Result<usize, ModelError> {
        let mut total = 0usize;
        for (path, bytes) in &self.files {
            let file = SafeTensors::deserialize(bytes)
                .map_err(|e| invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
            total += file.tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>()).sum::<usize>();
        }
        Ok(total)
    }
}
