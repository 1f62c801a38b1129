//! Hugging Face model directories in and out: the weights of `train --init-from` and `eval --init-from`, and
//! `export --format hf`, which writes a directory `AutoModelForCausalLM.from_pretrained` and
//! `AutoTokenizer.from_pretrained` load unchanged.

use crate::run_dir::RunDir;
use rustspeed_data::Tokenizer;
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::persist::load_weights;
use rustspeed_nn::hf_config::{self, Described};
use rustspeed_nn::hf_weights::{self, CONFIG_FILE, WEIGHTS_FILE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The model `--model` and `--init-from` describe together: `--model` (a preset or a description file) when
/// given, else the `config.json` of the `--init-from` directory. `data_vocab` symbols must each have a row.
pub fn describe(
    model: Option<&str>,
    init_from: Option<&Path>,
    data_vocab: usize,
) -> Result<(ModelSpec, Vec<String>), String> {
    let name = match (model, init_from) {
        (Some(model), _) => model.to_string(),
        (None, Some(dir)) if dir.join(CONFIG_FILE).is_file() => dir.display().to_string(),
        (None, Some(file)) => {
            return Err(format!(
                "--init-from {}: a weights file carries no model description; pass --model (a preset or config.json)",
                file.display()
            ))
        }
        (None, None) => {
            return Err("--model is required (a preset or a config.json), or --init-from a model directory".into())
        }
    };
    let Described { config, notes } = hf_config::resolve(&name, data_vocab).map_err(|e| e.to_string())?;
    Ok((ModelSpec { preset: name, config }, notes))
}

/// The fp32 parameters of `spec`'s model from the checkpoint at `path` (a safetensors file or a model directory),
/// checked tensor by tensor; the model's size is checked against the data in the files before it is allocated.
pub fn load_init(spec: &ModelSpec, path: &Path) -> Result<Vec<f32>, String> {
    let bad = |e: rustspeed_nn::ModelError| format!("--init-from {}: {e}", path.display());
    let checkpoint = hf_weights::read_checkpoint(path).map_err(bad)?;
    let numel =
        spec.config.num_params().ok_or_else(|| format!("--init-from {}: the model is too large", path.display()))?;
    let stored = checkpoint.stored_elements().map_err(bad)?;
    if numel > stored {
        return Err(format!(
            "--init-from {}: the model has {numel} parameters but the checkpoint holds only {stored} values",
            path.display()
        ));
    }
    let model = spec.config.build().map_err(|e| e.to_string())?;
    let mut params = vec![0.0; model.num_params()];
    hf_weights::load_into(model.layout(), &mut params, &checkpoint).map_err(bad)?;
    Ok(params)
}

/// `export --format hf`: the run's model as a Hugging Face directory at `out` (config.json, model.safetensors,
/// tokenizer.json, tokenizer_config.json), written beside it under a temporary name and renamed into place.
pub fn export_dir(run: &Path, tag: Option<&str>, out: &Path) -> Result<(), String> {
    if out.exists() {
        return Err(format!("{} exists; choose another --out (nothing is overwritten)", out.display()));
    }
    let weights = load_weights(&RunDir::new(run).checkpoints(), tag).map_err(|e| e.to_string())?;
    let tokenizer =
        Tokenizer::load(&RunDir::new(run).tokenizer()).map_err(|e| format!("run {}: {e}", run.display()))?;
    let model = weights.spec.config.build().map_err(|e| e.to_string())?;
    let name = out.file_name().ok_or_else(|| format!("--out {}: not a directory path", out.display()))?;
    let staging = out.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = (|| -> Result<(), String> {
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
        let config = hf_config::to_hf_json(&weights.spec.config);
        let config_path = staging.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&config).expect("JSON serializes");
        std::fs::write(&config_path, text).map_err(|e| io(&config_path, e))?;
        // transformers refuses a safetensors file whose metadata does not say which framework wrote it.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = rustspeed_nn::io::save_params(model.layout(), &weights.params, "", Some(metadata))?;
        let weights_path = staging.join(WEIGHTS_FILE);
        std::fs::write(&weights_path, bytes).map_err(|e| io(&weights_path, e))?;
        let context = weights.spec.config.context_length().unwrap_or(usize::MAX);
        tokenizer.export_hf(&staging, context).map_err(|e| e.to_string())?;
        sync_dir(&staging)
    })();
    let installed = written.and_then(|()| {
        std::fs::rename(&staging, out).map_err(|e| format!("renaming {} into place: {e}", staging.display()))
    });
    if installed.is_err() {
        // Best effort: the export already failed; a leftover hidden directory would only confuse a rerun.
        let _ = std::fs::remove_dir_all(&staging);
    }
    installed
}

/// Flushes every file of `dir` to disk before the rename makes it visible.
fn sync_dir(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    for path in paths.iter().chain(std::iter::once(&dir.to_path_buf())) {
        std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
