//! Model descriptions as the Hugging Face ecosystem writes them (`config.json`), both ways.
//!
//! `"model_type": "gpt2"` and `"model_type": "llama"` are read with `GPT2Config`'s and `LlamaConfig`'s key
//! names and defaults; `"model_type": "lstm"` is rustspeed's own description of the seed's LSTM in the same
//! spirit (`vocab_size`, `embedding_dim`, `hidden_size`, `num_layers`). Every key is one of three kinds:
//! - a size or switch of the architecture, read into the config;
//! - a key that would change the computation in a way rustspeed does not implement (`rope_scaling`, a sliding
//!   window, another activation, untied GPT-2 embeddings, …): accepted only at the value that changes nothing,
//!   otherwise an error naming the key;
//! - informational (`architectures`, `torch_dtype`, token ids, …): accepted and ignored.
//!
//! Any other key is an error naming it. Dropout probabilities are accepted and reported back as notes:
//! rustspeed trains without dropout (as nanoGPT's pretraining default does).

use crate::error::ModelError;
use crate::models::{GptConfig, LlamaConfig, LstmConfig, ModelConfig};
use serde_json::{json, Map, Value};

/// Keys `PretrainedConfig` and the model cards carry that do not change the computation.
const INFORMATIONAL: &[&str] = &[
    "_name_or_path",
    "architectures",
    "auto_map",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "use_cache",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "task_specific_params",
    "is_decoder",
    "is_encoder_decoder",
    "initializer_range",
    "model_type",
    "chunk_size_feed_forward",
    "prefix",
    "finetuning_task",
    "tie_encoder_decoder",
    "bad_words_ids",
    "max_length",
    "min_length",
    "do_sample",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "pruned_heads",
    "torchscript",
];

/// GPT-2's keys of no effect here: summary heads (`GPT2DoubleHeadsModel`), attention numerics that give the
/// same result up to rounding, and the legacy context key.
const GPT2_INFORMATIONAL: &[&str] = &[
    "summary_activation",
    "summary_first_dropout",
    "summary_proj_to_labels",
    "summary_type",
    "summary_use_proj",
    "reorder_and_upcast_attn",
    "output_past",
    "n_ctx",
];

const GPT2_DROPOUT: &[&str] = &["attn_pdrop", "embd_pdrop", "resid_pdrop"];

const LLAMA_INFORMATIONAL: &[&str] = &["pretraining_tp", "is_llama_config", "max_window_layers"];

/// A parsed description: the model, and what of the file rustspeed does not apply (in words).
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    pub config: ModelConfig,
    pub notes: Vec<String>,
}

/// Reads a key at a time, remembering which it has seen so that the rest can be checked.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

fn invalid(msg: String) -> ModelError {
    ModelError::InvalidConfig(msg)
}

impl<'a> Keys<'a> {
    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn size(&mut self, key: &'static str, default: Option<usize>) -> Result<usize, ModelError> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| invalid(format!("{key}: expected a whole number, got {v}"))),
            None => default.ok_or_else(|| invalid(format!("{key} is missing"))),
        }
    }

    fn number(&mut self, key: &'static str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| invalid(format!("{key}: expected a number, got {v}"))),
            None => Ok(default),
        }
    }

    fn flag(&mut self, key: &'static str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            Some(v) => v.as_bool().ok_or_else(|| invalid(format!("{key}: expected true or false, got {v}"))),
            None => Ok(default),
        }
    }

    /// A key rustspeed implements only at `allowed` values (null or absent always allowed).
    fn only(&mut self, key: &'static str, allowed: &[Value], why: &str) -> Result<(), ModelError> {
        match self.get(key) {
            Some(v) if !allowed.contains(v) => Err(invalid(format!("{key} {v} is not supported: {why}"))),
            _ => Ok(()),
        }
    }

    /// Every key not read is informational, or an error naming it.
    fn finish(self, family: &[&str]) -> Result<(), ModelError> {
        let known = |k: &str| self.seen.contains(&k) || INFORMATIONAL.contains(&k) || family.contains(&k);
        match self.map.keys().find(|k| !known(k)) {
            Some(key) => Err(invalid(format!("unknown key '{key}' (not a key rustspeed reads or knows to ignore)"))),
            None => Ok(()),
        }
    }
}

/// Reads a `config.json` (or rustspeed's LSTM description).
pub fn from_hf_json(value: &Value) -> Result<Described, ModelError> {
    let map = value.as_object().ok_or_else(|| invalid("a model description is a JSON object".into()))?;
    let mut keys = Keys { map, seen: Vec::new() };
    let mut notes = Vec::new();
    let config = match keys.get("model_type").and_then(Value::as_str) {
        Some("gpt2") => {
            let config = gpt2(&mut keys)?;
            for key in GPT2_DROPOUT {
                if let Some(p) = map.get(*key).and_then(Value::as_f64).filter(|&p| p != 0.0) {
                    notes.push(format!("{key} {p} is not applied: rustspeed trains without dropout"));
                }
            }
            keys.finish(&[GPT2_INFORMATIONAL, GPT2_DROPOUT].concat())?;
            config
        }
        Some("llama") => {
            let config = llama(&mut keys)?;
            keys.finish(LLAMA_INFORMATIONAL)?;
            config
        }
        Some("lstm") => {
            let config = ModelConfig::Lstm(LstmConfig {
                vocab_size: keys.size("vocab_size", None)?,
                embedding_dim: keys.size("embedding_dim", None)?,
                hidden_size: keys.size("hidden_size", None)?,
                num_layers: keys.size("num_layers", None)?,
            });
            keys.finish(&[])?;
            config
        }
        Some(other) => {
            return Err(invalid(format!("model_type '{other}' is not supported (gpt2, llama or lstm)")));
        }
        None => return Err(invalid("model_type is missing (gpt2, llama or lstm)".into())),
    };
    config.validate()?;
    Ok(Described { config, notes })
}

fn gpt2(keys: &mut Keys<'_>) -> Result<ModelConfig, ModelError> {
    let n_embd = keys.size("n_embd", Some(768))?;
    keys.only("activation_function", &[json!("gelu_new"), json!("gelu_pytorch_tanh")], "GPT-2 uses tanh-GELU")?;
    keys.only("layer_norm_epsilon", &[json!(1e-5)], "rustspeed's LayerNorm uses 1e-5")?;
    keys.only("tie_word_embeddings", &[json!(true)], "GPT-2's head is tied to wte")?;
    keys.only("n_inner", &[json!(4 * n_embd)], "the MLP is 4·n_embd wide")?;
    keys.only("scale_attn_weights", &[json!(true)], "attention scores are scaled by 1/√head_size")?;
    keys.only("scale_attn_by_inverse_layer_idx", &[json!(false)], "no per-layer score scaling")?;
    keys.only("add_cross_attention", &[json!(false)], "GPT-2 here is decoder-only")?;
    Ok(ModelConfig::Gpt(GptConfig {
        vocab_size: keys.size("vocab_size", Some(50257))?,
        block_size: keys.size("n_positions", Some(1024))?,
        n_layer: keys.size("n_layer", Some(12))?,
        n_head: keys.size("n_head", Some(12))?,
        n_embd,
    }))
}

fn llama(keys: &mut Keys<'_>) -> Result<ModelConfig, ModelError> {
    let hidden_size = keys.size("hidden_size", Some(4096))?;
    let heads = keys.size("num_attention_heads", Some(32))?;
    keys.only("hidden_act", &[json!("silu")], "Llama's MLP is SwiGLU (silu)")?;
    keys.only("rope_scaling", &[], "rotary positions are unscaled")?;
    // transformers 5 writes the rotary settings as `rope_parameters` {rope_type, rope_theta}; 4.x as `rope_theta`
    // (and `rope_scaling` for the other rope types).
    let rope_theta = match keys.get("rope_parameters") {
        Some(p) => rope_parameters(p)?,
        None => keys.number("rope_theta", 10000.0)?,
    };
    keys.only("rope_interleaved", &[json!(false)], "rotary embedding rotates halves, as Hugging Face's Llama")?;
    keys.only("sliding_window", &[], "attention is over the whole causal context")?;
    keys.only("use_sliding_window", &[json!(false)], "attention is over the whole causal context")?;
    keys.only("attention_dropout", &[json!(0.0), json!(0)], "rustspeed trains without dropout")?;
    let config = LlamaConfig {
        vocab_size: keys.size("vocab_size", Some(32000))?,
        hidden_size,
        intermediate_size: keys.size("intermediate_size", Some(11008))?,
        num_hidden_layers: keys.size("num_hidden_layers", Some(32))?,
        num_attention_heads: heads,
        num_key_value_heads: keys.size("num_key_value_heads", Some(heads))?,
        head_dim: keys.size("head_dim", Some(hidden_size / heads.max(1)))?,
        max_position_embeddings: keys.size("max_position_embeddings", Some(2048))?,
        rms_norm_eps: keys.number("rms_norm_eps", 1e-6)?,
        rope_theta,
        tie_word_embeddings: keys.flag("tie_word_embeddings", false)?,
        attention_bias: keys.flag("attention_bias", false)?,
        mlp_bias: keys.flag("mlp_bias", false)?,
        initializer_range: keys.number("initializer_range", 0.02)?,
    };
    Ok(ModelConfig::Llama(config))
}

/// The base of `rope_parameters` (transformers 5), which must ask for the default (unscaled) rotation.
fn rope_parameters(p: &Value) -> Result<f64, ModelError> {
    let map = p.as_object().ok_or_else(|| invalid(format!("rope_parameters: expected an object, got {p}")))?;
    if let Some(key) = map.keys().find(|k| !["rope_type", "rope_theta"].contains(&k.as_str())) {
        return Err(invalid(format!("rope_parameters.{key} is not supported: rotary positions are unscaled")));
    }
    match map.get("rope_type").and_then(Value::as_str) {
        None | Some("default") => {}
        Some(other) => {
            return Err(invalid(format!(
                "rope_parameters.rope_type '{other}' is not supported: rotary positions are unscaled (\"default\")"
            )))
        }
    }
    match map.get("rope_theta") {
        None => Ok(10000.0),
        Some(v) => v.as_f64().ok_or_else(|| invalid(format!("rope_parameters.rope_theta: expected a number, got {v}"))),
    }
}

/// The `config.json` of a model, as `save_pretrained` writes one: what `AutoConfig.from_pretrained` reads back.
pub fn to_hf_json(config: &ModelConfig) -> Value {
    match config {
        ModelConfig::Gpt(c) => json!({
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
            "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": null,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true,
            "initializer_range": 0.02, "scale_attn_weights": true,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32",
            // rustspeed's tokenizers declare no special tokens; GPT2Config's defaults (50256) would be outside a
            // small vocabulary.
            "bos_token_id": null, "eos_token_id": null,
        }),
        ModelConfig::Llama(c) => json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta, "rope_scaling": null, "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias, "hidden_act": "silu",
            "initializer_range": c.initializer_range, "attention_dropout": 0.0, "torch_dtype": "float32",
            "bos_token_id": null, "eos_token_id": null,
        }),
        ModelConfig::Lstm(c) => json!({
            "model_type": "lstm", "vocab_size": c.vocab_size, "embedding_dim": c.embedding_dim,
            "hidden_size": c.hidden_size, "num_layers": c.num_layers,
        }),
    }
}

/// What `--model` names: a preset (see [`crate::PRESETS`]), or a path to a model description (a `config.json`,
/// or a directory holding one). A description fixes its vocabulary, which must have a row for each of the
/// data's `data_vocab` symbols; a preset without one takes the data's.
pub fn resolve(arg: &str, data_vocab: usize) -> Result<Described, ModelError> {
    let path = std::path::Path::new(arg);
    let looks_like_path = arg.ends_with(".json") || arg.contains(std::path::MAIN_SEPARATOR) || path.is_dir();
    if !looks_like_path {
        let config = crate::preset(arg)?.config(data_vocab)?;
        return Ok(Described { config, notes: Vec::new() });
    }
    let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("{}: not valid JSON: {e}", file.display())))?;
    let described = from_hf_json(&value).map_err(|e| invalid(format!("{}: {e}", file.display())))?;
    let rows = described.config.vocab_size();
    if data_vocab > rows {
        return Err(invalid(format!(
            "{}: vocab_size {rows} is smaller than the data's vocabulary of {data_vocab} symbols",
            file.display()
        )));
    }
    Ok(described)
}
