//! What a run records about its model, so that `generate`, `export` and `--resume` rebuild the same one.

use crate::error::EngineError;
use rustspeed_nn::{hf_config, GptConfig, LstmConfig, ModelConfig};
use serde_json::{json, Value};

/// The preset a run was started with and the resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub preset: String,
    pub config: ModelConfig,
}

impl ModelSpec {
    pub fn to_json(&self) -> Value {
        let config = match &self.config {
            ModelConfig::Gpt(c) => json!({
                "family": "gpt", "vocab_size": c.vocab_size, "block_size": c.block_size,
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
            }),
            // Llama in Hugging Face's own terms (the family's other keys are its `config.json`'s).
            ModelConfig::Llama(_) => {
                let mut hf = hf_config::to_hf_json(&self.config);
                hf["family"] = json!("llama");
                hf
            }
            ModelConfig::Lstm(c) => json!({
                "family": "lstm", "vocab_size": c.vocab_size, "embedding_dim": c.embedding_dim,
                "hidden_size": c.hidden_size, "num_layers": c.num_layers,
            }),
        };
        json!({ "preset": self.preset, "config": config })
    }

    pub fn from_json(v: &Value) -> Result<Self, EngineError> {
        let bad = |what: &str| EngineError::Manifest(format!("model.{what} is missing or invalid"));
        let preset = v["preset"].as_str().ok_or_else(|| bad("preset"))?.to_string();
        let c = &v["config"];
        let size = |key: &str| c[key].as_u64().map(|x| x as usize).ok_or_else(|| bad(&format!("config.{key}")));
        let config = match c["family"].as_str() {
            Some("gpt") => ModelConfig::Gpt(GptConfig {
                vocab_size: size("vocab_size")?,
                block_size: size("block_size")?,
                n_layer: size("n_layer")?,
                n_head: size("n_head")?,
                n_embd: size("n_embd")?,
            }),
            Some("llama") => {
                let mut hf = c.clone();
                hf.as_object_mut().ok_or_else(|| bad("config"))?.remove("family");
                hf_config::from_hf_json(&hf).map_err(|e| EngineError::Manifest(format!("model.config: {e}")))?.config
            }
            Some("lstm") => ModelConfig::Lstm(LstmConfig {
                vocab_size: size("vocab_size")?,
                embedding_dim: size("embedding_dim")?,
                hidden_size: size("hidden_size")?,
                num_layers: size("num_layers")?,
            }),
            _ => return Err(bad("config.family")),
        };
        Ok(ModelSpec { preset, config })
    }
}
