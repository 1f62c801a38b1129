//! The shipped model families and their presets.
//!
//! - `gpt`: GPT-2 (token + learned position embedding, pre-LayerNorm blocks with causal attention and a 4x
//!   tanh-GELU MLP, final LayerNorm, head tied to the token embedding), Hugging Face GPT-2 state-dict names.
//! - `llama`: Hugging Face `LlamaForCausalLM` (token embedding, pre-RMSNorm decoder layers with rotary
//!   positions, grouped-query causal attention and a SwiGLU MLP, final RMSNorm, head tied or not), its names.
//! - `lstm`: the seed's `MyLM`: `Embedding(V, E)` → `LSTM(E, H, L, batch_first)` → `Linear(H, V)`, PyTorch names.

use crate::error::ModelError;
use crate::layer::Layer;
use crate::layers::{Embedding, GptBlock, LayerNorm, LlamaBlock, LlamaDims, LmHead, Lstm, RmsNorm};
use crate::model::Model;
use crate::param::ParamLayout;
use rustspeed_kernels::cast::Element;
use rustspeed_kernels::rope::RopeTable;
use std::sync::Arc;

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

/// Llama hyperparameters (Hugging Face `LlamaConfig` names and defaults where it has them).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// Width `C`.
    pub hidden_size: usize,
    /// MLP width `I`.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Query heads `NH`.
    pub num_attention_heads: usize,
    /// Key/value heads `NKV`, dividing `NH` (`NH` for plain multi-head attention).
    pub num_key_value_heads: usize,
    /// Head size `HS` (`hidden_size / num_attention_heads` unless given).
    pub head_dim: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm's epsilon (default 1e-6).
    pub rms_norm_eps: f64,
    /// Rotary base (default 10000).
    pub rope_theta: f64,
    /// Head tied to the token embedding (default false).
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v and o (default false).
    pub attention_bias: bool,
    /// Biases on gate, up and down (default false).
    pub mlp_bias: bool,
    /// Standard deviation of the weights' normal init (default 0.02).
    pub initializer_range: f64,
}

impl LlamaConfig {
    fn dims(&self) -> LlamaDims {
        LlamaDims {
            c: self.hidden_size,
            nh: self.num_attention_heads,
            nkv: self.num_key_value_heads,
            hs: self.head_dim,
            inter: self.intermediate_size,
            eps: self.rms_norm_eps as f32,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Gpt(GptConfig),
    Llama(LlamaConfig),
    Lstm(LstmConfig),
}

/// Longest default sequence: GPT-2's whole 1024 context; longer contexts (SmolLM2's 8192) are asked for.
pub const DEFAULT_MAX_SEQ_LEN: usize = 1024;
/// Default sequence of the LSTM, which has no context limit.
pub const LSTM_DEFAULT_SEQ_LEN: usize = 64;

/// GPT-2's initializer range: embeddings and weights are `N(0, 0.02)`.
const GPT_INIT_STD: f32 = 0.02;
/// `nn.Embedding`'s default init is `N(0, 1)`.
const EMBEDDING_INIT_STD: f32 = 1.0;

impl ModelConfig {
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Lstm(c) => c.vocab_size,
        }
    }

    /// The longest sequence the model takes (its position embedding's or rotary table's length); `None` for the
    /// LSTM, which has no limit.
    pub fn context_length(&self) -> Option<usize> {
        match self {
            ModelConfig::Gpt(c) => Some(c.block_size),
            ModelConfig::Llama(c) => Some(c.max_position_embeddings),
            ModelConfig::Lstm(_) => None,
        }
    }

    /// The sequence length a run uses when none is given: the whole context up to [`DEFAULT_MAX_SEQ_LEN`], or
    /// [`LSTM_DEFAULT_SEQ_LEN`] for the LSTM.
    pub fn default_seq_len(&self) -> usize {
        self.context_length().map_or(LSTM_DEFAULT_SEQ_LEN, |context| context.min(DEFAULT_MAX_SEQ_LEN))
    }

    /// The family's name: `gpt`, `llama` or `lstm`.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Gpt(_) => "gpt",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Lstm(_) => "lstm",
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
            ModelConfig::Llama(c) => &[
                ("vocab_size", c.vocab_size),
                ("hidden_size", c.hidden_size),
                ("intermediate_size", c.intermediate_size),
                ("num_hidden_layers", c.num_hidden_layers),
                ("num_attention_heads", c.num_attention_heads),
                ("num_key_value_heads", c.num_key_value_heads),
                ("head_dim", c.head_dim),
                ("max_position_embeddings", c.max_position_embeddings),
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
        if let ModelConfig::Llama(c) = self {
            let invalid = |msg: String| Err(ModelError::InvalidConfig(msg));
            if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
                return invalid(format!(
                    "num_key_value_heads {} does not divide num_attention_heads {}",
                    c.num_key_value_heads, c.num_attention_heads
                ));
            }
            if !c.head_dim.is_multiple_of(2) {
                return invalid(format!("head_dim {} must be even (rotary embedding rotates pairs)", c.head_dim));
            }
            let positive = [("rms_norm_eps", c.rms_norm_eps), ("rope_theta", c.rope_theta)];
            if let Some((key, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
                return invalid(format!("{key} must be a positive number, not {v}"));
            }
            if !(c.initializer_range.is_finite() && c.initializer_range >= 0.0) {
                return invalid(format!(
                    "initializer_range must be finite and not negative, not {}",
                    c.initializer_range
                ));
            }
        }
        if self.vocab_size() > u32::MAX as usize {
            return Err(ModelError::InvalidConfig("vocab_size does not fit token ids of 32 bits".into()));
        }
        Ok(())
    }

    /// The number of parameters the built model's layout holds, computed without building it (so that sizes read
    /// from an untrusted file can be checked against the data actually present before anything is allocated
    /// from them); `None` when it does not fit a `usize`. `tests/models.rs` holds it equal to the layout's size.
    pub fn num_params(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        match self {
            ModelConfig::Gpt(c) => {
                let (v, t, l, w) = (c.vocab_size, c.block_size, c.n_layer, c.n_embd);
                // Per block: ln_1 and ln_2 (2w each), c_attn (3w² + 3w), attn c_proj (w² + w), c_fc (4w² + 4w),
                // mlp c_proj (4w² + w): 12w² + 13w. Then wte (v·w), wpe (t·w), ln_f (2w); the head is tied.
                let block = mul(12, mul(w, w)?)?.checked_add(mul(13, w)?)?;
                mul(l, block)?.checked_add(mul(v, w)?)?.checked_add(mul(t, w)?)?.checked_add(mul(2, w)?)
            }
            ModelConfig::Llama(c) => {
                let (v, w, i, l) = (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers);
                let q = mul(c.num_attention_heads, c.head_dim)?;
                let kv = mul(c.num_key_value_heads, c.head_dim)?;
                let qkv = q.checked_add(mul(2, kv)?)?;
                // Per layer: two RMSNorm gains (2w), q|k|v (w·qkv), o (q·w), gate, up and down (3·i·w), and the
                // biases where configured (qkv + w; 2i + w). Then the embedding, the final norm, an untied head.
                let mut layer = mul(2, w)?.checked_add(mul(w, qkv)?)?.checked_add(mul(q, w)?)?;
                layer = layer.checked_add(mul(3, mul(i, w)?)?)?;
                if c.attention_bias {
                    layer = layer.checked_add(qkv)?.checked_add(w)?;
                }
                if c.mlp_bias {
                    layer = layer.checked_add(mul(2, i)?)?.checked_add(w)?;
                }
                let head = if c.tie_word_embeddings { 0 } else { mul(v, w)? };
                mul(l, layer)?.checked_add(mul(v, w)?)?.checked_add(w)?.checked_add(head)
            }
            ModelConfig::Lstm(c) => {
                let (v, e, h, l) = (c.vocab_size, c.embedding_dim, c.hidden_size, c.num_layers);
                // Layer i: weight_ih 4h·input (input e for the first, h after), weight_hh 4h·h, two 4h biases.
                let gates = mul(4, h)?;
                let first = mul(gates, e)?.checked_add(mul(gates, h)?)?.checked_add(mul(2, gates)?)?;
                let later = mul(gates, h)?.checked_add(mul(gates, h)?)?.checked_add(mul(2, gates)?)?;
                // Embedding v·e, the first layer, the later ones, the head's h·v weight and v bias.
                let head = mul(h, v)?.checked_add(v)?;
                mul(l.checked_sub(1)?, later)?.checked_add(first)?.checked_add(mul(v, e)?)?.checked_add(head)
            }
        }
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
            ModelConfig::Llama(c) => {
                let std = c.initializer_range as f32;
                let (v, w) = (c.vocab_size, c.hidden_size);
                let embedding = Embedding::new(&mut layout, "model.embed_tokens.weight", None, v, w, std);
                let token = embedding.token_param();
                let rope = Arc::new(RopeTable::new(c.head_dim, c.max_position_embeddings, c.rope_theta));
                let mut layers: Vec<Box<dyn Layer<E>>> = vec![Box::new(embedding)];
                for i in 0..c.num_hidden_layers {
                    layers.push(Box::new(LlamaBlock::new(&mut layout, i, c.dims(), rope.clone(), std)));
                }
                layers.push(Box::new(RmsNorm::new(&mut layout, "model.norm", w, c.rms_norm_eps as f32)));
                let head = match c.tie_word_embeddings {
                    true => LmHead::tied(token, w, v),
                    false => LmHead::projection(&mut layout, "lm_head", w, v, std),
                };
                Model::new(layout, layers, head, v, Some(c.max_position_embeddings))
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

/// A Llama shape with Hugging Face's defaults for the rest (eps 1e-5 as Llama 2 and SmolLM2 use).
#[allow(clippy::too_many_arguments)]
fn llama(
    vocab_size: usize,
    context: usize,
    layers: usize,
    width: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    tied: bool,
) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size,
        hidden_size: width,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: width / heads,
        max_position_embeddings: context,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: tied,
        attention_bias: false,
        mlp_bias: false,
        initializer_range: 0.02,
    })
}

/// SmolLM2-135M as published (HuggingFaceTB/SmolLM2-135M `config.json`).
fn smollm2_135m(vocab_size: usize) -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama(vocab_size, 8192, 30, 576, 9, 3, 1536, true) else { unreachable!() };
    c.rope_theta = 100000.0;
    c.initializer_range = 0.041666666666666664;
    ModelConfig::Llama(c)
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
        name: "llama-tiny",
        description: "Llama architecture, 2 layers, 4 query and 2 key/value heads of 16, width 64, MLP 176, context 64, untied head; for tests",
        vocab_size: None,
        make: |v| llama(v, 64, 2, 64, 4, 2, 176, false),
    },
    Preset {
        name: "llama-bench",
        description: "the Llama benchmark, gpt-bench's FLOPs per token: 4 layers, 4 query and 2 key/value heads of 64, width 256, MLP 768, context 128, tied head",
        vocab_size: Some(8192),
        make: |v| llama(v, 128, 4, 256, 4, 2, 768, true),
    },
    Preset {
        name: "smollm2-135m",
        description: "SmolLM2-135M: 30 layers, 9 query and 3 key/value heads of 64, width 576, MLP 1536, context 8192, tied head",
        vocab_size: Some(49152),
        make: smollm2_135m,
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
