//! The shipped model families and their presets.
//!
//! - `gpt`: GPT-2 (token + learned position embedding, pre-LayerNorm blocks with causal attention and a 4x
//!   tanh-GELU MLP, final LayerNorm, head tied to the token embedding), Hugging Face GPT-2 state-dict names.
//! - `lstm`: the seed's `MyLM`: `Embedding(V, E)` → `LSTM(E, H, L, batch_first)` → `Linear(H, V)`, PyTorch names.

use crate::error::ModelError;
use crate::layer::Layer;
use crate::layers::{Embedding, GptBlock, LayerNorm, LmHead, Lstm};
use crate::model::Model;
use crate::param::ParamLayout;
use rustspeed_kernels::cast::Element;

/// GPT-2 hyperparameters (Hugging Face `GPT2Config` names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// Context length (`n_positions`).
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

/// The seed's LSTM language model hyperparameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LstmConfig {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelConfig {
    Gpt(GptConfig),
    Lstm(LstmConfig),
}

/// GPT-2's initializer range: embeddings and weights are `N(0, 0.02)`.
const GPT_INIT_STD: f32 = 0.02;
/// `nn.Embedding`'s default init is `N(0, 1)`.
const EMBEDDING_INIT_STD: f32 = 1.0;

impl ModelConfig {
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Lstm(c) => c.vocab_size,
        }
    }

    /// Checks that every size is positive and the heads divide the width.
    pub fn validate(&self) -> Result<(), ModelError> {
        let sizes: &[(&str, usize)] = match self {
            ModelConfig::Gpt(c) => &[
                ("vocab_size", c.vocab_size),
                ("block_size", c.block_size),
                ("n_layer", c.n_layer),
                ("n_head", c.n_head),
                ("n_embd", c.n_embd),
            ],
            ModelConfig::Lstm(c) => &[
                ("vocab_size", c.vocab_size),
                ("embedding_dim", c.embedding_dim),
                ("hidden_size", c.hidden_size),
                ("num_layers", c.num_layers),
            ],
        };
        if let Some((key, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::InvalidConfig(format!("{key} must be positive")));
        }
        if let ModelConfig::Gpt(c) = self {
            if c.n_embd % c.n_head != 0 {
                return Err(ModelError::InvalidConfig(format!(
                    "n_head {} does not divide n_embd {}",
                    c.n_head, c.n_embd
                )));
            }
        }
        if self.vocab_size() > u32::MAX as usize {
            return Err(ModelError::InvalidConfig("vocab_size does not fit token ids of 32 bits".into()));
        }
        Ok(())
    }

    /// Builds the fp32 model: declares its parameters (in state-dict order) and its layers.
    pub fn build(&self) -> Result<Model, ModelError> {
        self.build_as::<f32>()
    }

    /// Builds the model with parameters, activations and gradients stored as `E` (fp32, fp16 or bf16).
    pub fn build_as<E: Element>(&self) -> Result<Model<E>, ModelError> {
        self.validate()?;
        let mut layout = ParamLayout::default();
        let model = match self {
            ModelConfig::Gpt(c) => {
                let pos = Some(("transformer.wpe.weight", c.block_size));
                let embedding =
                    Embedding::new(&mut layout, "transformer.wte.weight", pos, c.vocab_size, c.n_embd, GPT_INIT_STD);
                let head = LmHead::tied(embedding.token_param(), c.n_embd, c.vocab_size);
                let mut layers: Vec<Box<dyn Layer<E>>> = vec![Box::new(embedding)];
                for i in 0..c.n_layer {
                    layers.push(Box::new(GptBlock::new(&mut layout, i, c.n_layer, c.n_embd, c.n_head)));
                }
                layers.push(Box::new(LayerNorm::new(&mut layout, "transformer.ln_f", c.n_embd)));
                Model::new(layout, layers, head, c.vocab_size, Some(c.block_size))
            }
            ModelConfig::Lstm(c) => {
                let embedding = Embedding::new(
                    &mut layout,
                    "embedding.weight",
                    None,
                    c.vocab_size,
                    c.embedding_dim,
                    EMBEDDING_INIT_STD,
                );
                let mut layers: Vec<Box<dyn Layer<E>>> = vec![Box::new(embedding)];
                for i in 0..c.num_layers {
                    let input = if i == 0 { c.embedding_dim } else { c.hidden_size };
                    layers.push(Box::new(Lstm::new(&mut layout, "lstm", i, input, c.hidden_size)));
                }
                let head = LmHead::linear(&mut layout, "linear", c.hidden_size, c.vocab_size);
                Model::new(layout, layers, head, c.vocab_size, None)
            }
        };
        Ok(model)
    }
}

/// A named model shape. `vocab_size: None` takes the vocabulary from the data.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub vocab_size: Option<usize>,
    make: fn(usize) -> ModelConfig,
}

impl Preset {
    /// The preset's configuration for a vocabulary of `vocab_size`; an error if the preset fixes another one.
    pub fn config(&self, vocab_size: usize) -> Result<ModelConfig, ModelError> {
        match self.vocab_size {
            Some(fixed) if fixed != vocab_size => {
                Err(ModelError::VocabMismatch { preset: self.name.into(), preset_vocab: fixed, requested: vocab_size })
            }
            _ => Ok((self.make)(vocab_size)),
        }
    }
}

const fn gpt(vocab_size: usize, block_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size, block_size, n_layer, n_head, n_embd })
}

const fn lstm(vocab_size: usize, embedding_dim: usize, hidden_size: usize, num_layers: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig { vocab_size, embedding_dim, hidden_size, num_layers })
}

/// Every shipped preset.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gpt-tiny",
        description: "GPT-2 architecture, 2 layers, 4 heads, width 64, context 64; for tests and demos",
        vocab_size: None,
        make: |v| gpt(v, 64, 2, 4, 64),
    },
    Preset {
        name: "gpt-bench",
        description: "the GPT benchmark: 4 layers, 4 heads, width 256, context 128",
        vocab_size: Some(8192),
        make: |v| gpt(v, 128, 4, 4, 256),
    },
    Preset {
        name: "gpt2-124m",
        description: "GPT-2 small: 12 layers, 12 heads, width 768, context 1024",
        vocab_size: Some(50257),
        make: |v| gpt(v, 1024, 12, 12, 768),
    },
    Preset {
        name: "lstm-tiny",
        description: "the seed's LSTM LM, small: embedding 64, 2 layers of hidden 128",
        vocab_size: None,
        make: |v| lstm(v, 64, 128, 2),
    },
    Preset {
        name: "lstm-seed",
        description: "the seed's MyLM: embedding 512, 6 layers of hidden 1024",
        vocab_size: Some(10000),
        make: |v| lstm(v, 512, 1024, 6),
    },
];

/// Looks up a preset by name.
pub fn preset(name: &str) -> Result<&'static Preset, ModelError> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ModelError::UnknownPreset { name: name.into(), known: PRESETS.iter().map(|p| p.name).collect() })
}
