//! Models report their own costs: the training FLOPs per token and the activation elements summed over the
//! layers ([`Model::flops_per_token`], [`Model::activation_estimate`]) equal the per-family closed forms they
//! replaced (written out here independently), and each layer's estimate is what it really keeps.

use rustspeed_nn::{preset, GptConfig, LstmConfig, Model, ModelConfig};

/// Every shipped preset, at a vocabulary of 65 where the preset takes it from the data.
fn presets() -> Vec<ModelConfig> {
    ["gpt-tiny", "gpt-bench", "gpt2-124m", "llama-tiny", "llama-bench", "smollm2-135m", "lstm-tiny", "lstm-seed"]
        .into_iter()
        .map(|name| {
            let p = preset(name).unwrap();
            p.config(p.vocab_size.unwrap_or(65)).unwrap()
        })
        .collect()
}

/// The bench's former per-family formula: GPT, nanoGPT's `6·N + 12·L·T·C` with `N` the parameters without the
/// position embedding; LSTM, `3·(Σ_l 8H·(C_l + H) + 2·V·H)`.
fn old_flops_per_token(config: &ModelConfig, num_params: usize, t: usize) -> f64 {
    match config {
        ModelConfig::Gpt(c) => {
            let n = (num_params - c.block_size * c.n_embd) as f64;
            6.0 * n + 12.0 * (c.n_layer * t * c.n_embd) as f64
        }
        // Llama (written here, not from before): 6 per parameter but the token embedding's (a lookup; a tied
        // head's product counts once), plus `12·L·T·NH·HS` for the attention scores and weighted values.
        ModelConfig::Llama(c) => {
            let untied_embedding = if c.tie_word_embeddings { 0 } else { c.vocab_size * c.hidden_size };
            let attention = 12 * c.num_hidden_layers * t * c.num_attention_heads * c.head_dim;
            6.0 * (num_params - untied_embedding) as f64 + attention as f64
        }
        ModelConfig::Lstm(c) => {
            let h = c.hidden_size as f64;
            let layers: f64 = (0..c.num_layers)
                .map(|l| if l == 0 { c.embedding_dim } else { c.hidden_size } as f64)
                .map(|input| 2.0 * 4.0 * h * (input + h))
                .sum();
            3.0 * (layers + 2.0 * c.vocab_size as f64 * h)
        }
    }
}

#[test]
fn flops_per_token_sum_to_the_old_closed_forms() {
    for config in presets() {
        let model = config.build().unwrap();
        if let ModelConfig::Gpt(c) = &config {
            // GPT-2's parameters, written out: wte, wpe, 12·C² + 13·C per block, ln_f.
            let ch = c.n_embd;
            let blocks = c.n_layer * (12 * ch * ch + 13 * ch);
            assert_eq!(model.num_params(), c.vocab_size * ch + c.block_size * ch + blocks + 2 * ch, "{config:?}");
        }
        for t in [1, 8, 32, 128] {
            // Integers far below 2^53: the sums are exact whatever their order.
            let want = old_flops_per_token(&config, model.num_params(), t);
            assert_eq!(model.flops_per_token(t), want, "{config:?} T = {t}");
        }
    }
    // GPT-2 small at T = 1024: nanoGPT's 6·N + 12·L·T·C with N = 124,439,808 - 1024·768.
    let model = preset("gpt2-124m").unwrap().config(50257).unwrap().build().unwrap();
    let n = 124_439_808.0 - 1024.0 * 768.0;
    assert_eq!(model.flops_per_token(1024), 6.0 * n + 12.0 * 12.0 * 1024.0 * 768.0);
}

/// `engine::memory`'s former per-family formula, in elements (the head's `2·N·V` among them): GPT blocks of
/// `16·N·C + 4·N + B·NH·T²`, the embedding's output, `ln_f`'s output and statistics; LSTM layers of `6·N·H`, the
/// embedding's output. With checkpointing, each block or LSTM layer keeps only its output and one holds the rest.
fn old_activation_floats(config: &ModelConfig, b: usize, t: usize, checkpointing: bool) -> usize {
    let layers = |count: usize, each: usize, output: usize| match checkpointing {
        true => count * output + (each - output),
        false => count * each,
    };
    let n = b * t;
    match config {
        ModelConfig::Gpt(c) => {
            let ch = c.n_embd;
            let block = 16 * n * ch + 4 * n + b * c.n_head * t * t;
            let outer = n * ch + (n * ch + 2 * n) + 2 * n * c.vocab_size;
            layers(c.n_layer, block, n * ch) + outer
        }
        // Llama: per layer the two norms' outputs and the residual (3·N·C), their rstd (2·N), q|k|v, the
        // probabilities, the attention output, gate|up and the SwiGLU output, and the layer's output; around
        // them the embedding's output, the final norm's output and rstd, the head.
        ModelConfig::Llama(c) => {
            let (ch, i) = (c.hidden_size, c.intermediate_size);
            let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
            let saved = 3 * n * ch + 2 * n + n * (q + 2 * kv) + b * c.num_attention_heads * t * t + n * q + 3 * n * i;
            let outer = n * ch + (n * ch + n) + 2 * n * c.vocab_size;
            layers(c.num_hidden_layers, saved + n * ch, n * ch) + outer
        }
        ModelConfig::Lstm(c) => {
            let outer = n * c.embedding_dim + 2 * n * c.vocab_size;
            layers(c.num_layers, 6 * n * c.hidden_size, n * c.hidden_size) + outer
        }
    }
}

#[test]
fn activation_estimate_sums_to_the_old_closed_forms() {
    for config in presets() {
        let model = config.build().unwrap();
        for (b, t) in [(1, 1), (1, 8), (4, 32), (8, 64)] {
            let n = b * t;
            let head = 2 * n * config.vocab_size();
            let plain = model.activation_estimate(b, t, false);
            assert_eq!(plain.head, head, "{config:?} B = {b}, T = {t}");
            assert_eq!(plain.layers + plain.head, old_activation_floats(&config, b, t, false), "{config:?} {b}x{t}");
            let ckpt = model.activation_estimate(b, t, true);
            assert_eq!(ckpt.head, head, "{config:?} B = {b}, T = {t}");
            // The old GPT formula also counted `ln_f`'s mean and rstd (2·N) next to the block being recomputed; the
            // model frees the last layer's saved activations after its backward, before it recomputes any block,
            // so it never holds both (the LSTM's formula already held one layer's at a time).
            let over = match config {
                ModelConfig::Gpt(_) => 2 * n,
                ModelConfig::Llama(_) => n,
                ModelConfig::Lstm(_) => 0,
            };
            let old = old_activation_floats(&config, b, t, true);
            assert_eq!(ckpt.layers + ckpt.head, old - over, "{config:?} B = {b}, T = {t}, checkpointing");
        }
    }
    // GPT-2 small at B = 4, T = 256, as crates/engine/tests/memory.rs asserts it: 12 blocks, the embedding, ln_f,
    // the head.
    let model = preset("gpt2-124m").unwrap().config(50257).unwrap().build().unwrap();
    let (n, c, v) = (4 * 256, 768, 50257);
    let block = 16 * n * c + 4 * n + 4 * 12 * 256 * 256;
    let estimate = model.activation_estimate(4, 256, false);
    assert_eq!(estimate.bytes(4), 4 * (12 * block + n * c + n * c + 2 * n + 2 * n * v));
    // In 16 bits the layers' elements take 2 bytes, the head's fp32 logits and gradient 4.
    assert_eq!(estimate.bytes(2), 2 * (12 * block + n * c + n * c + 2 * n) + 4 * 2 * n * v);
}

const VOCAB: usize = 23;

fn gpt(n_layer: usize) -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: VOCAB, block_size: 16, n_layer, n_head: 2, n_embd: 16 })
}

fn lstm(num_layers: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig { vocab_size: VOCAB, embedding_dim: 8, hidden_size: 12, num_layers })
}

/// Two fp32 training steps (forward with targets, backward) on `B x T` tokens; returns the model. The model
/// reuses its buffers across steps, so from the second step on it holds the gradients of the outputs from its
/// forward on (the first step's forward ran before they existed).
fn steps(config: &ModelConfig, b: usize, t: usize, checkpointing: bool) -> Model {
    let mut model = config.build().unwrap();
    model.set_activation_checkpointing(checkpointing);
    let params = model.layout().init_params(5);
    let mut grads = vec![0.0; params.len()];
    let x: Vec<u32> = (0..b * t).map(|i| (i * 7 % VOCAB) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|i| (i * 5 % VOCAB) as u32).collect();
    for _ in 0..2 {
        model.forward(&params, &x, Some(&y), b, t).unwrap();
        model.backward(&params, &mut grads, 1.0).unwrap();
    }
    model
}

#[test]
fn each_layer_estimates_what_it_keeps() {
    let (b, t) = (3, 10);
    for config in [gpt(1), gpt(3), lstm(1), lstm(3)] {
        let mut model = config.build().unwrap();
        let params = model.layout().init_params(5);
        let x: Vec<u32> = (0..b * t).map(|i| (i % VOCAB) as u32).collect();
        model.forward(&params, &x, Some(&x), b, t).unwrap();
        for layer in model.layers() {
            let floats = layer.activation_floats(b, t);
            assert_eq!(layer.saved_bytes(), 4 * floats.saved, "{config:?} {}", layer.name());
            assert_eq!(floats.output, b * t * layer.output_width(), "{config:?} {}", layer.name());
        }
        // The head's buffer: N·V probabilities (their gradient overwrites them) and N row losses.
        assert_eq!(model.head().saved_bytes(), 4 * (b * t * VOCAB + b * t), "{config:?}");
    }
}

/// The estimate is not what the model measures ([`Model::activation_estimate`] says why): the measured peak of
/// training steps also holds every output's gradient and the head's row losses, and `N·V` floats fewer of head
/// buffer (the gradient overwrites the probabilities). Exactly that, with checkpointing or without.
#[test]
fn measured_peak_is_the_estimate_plus_output_gradients_less_one_head_buffer() {
    let (b, t) = (2, 12);
    let n = b * t;
    for config in [gpt(1), gpt(3), lstm(1), lstm(3)] {
        for checkpointing in [false, true] {
            let mut model = steps(&config, b, t, checkpointing);
            let estimate = model.activation_estimate(b, t, checkpointing).bytes(4);
            let outputs: usize = model.layers().iter().map(|l| l.activation_floats(b, t).output).sum();
            let measured = model.take_activation_peak();
            assert_eq!(
                measured + 4 * n * VOCAB,
                estimate + 4 * outputs + 4 * n,
                "{config:?} checkpointing {checkpointing}"
            );
        }
    }
}

/// The parameter count computed without building ([`ModelConfig::num_params`], used to check untrusted sizes) is
/// the built layout's size, for every preset and for odd shapes (one layer, widths not a power of two), and it
/// reports an overflow instead of wrapping.
#[test]
fn num_params_without_building_is_the_layouts_size() {
    let mut configs = presets();
    configs.push(ModelConfig::Gpt(GptConfig { vocab_size: 7, block_size: 5, n_layer: 1, n_head: 3, n_embd: 9 }));
    configs.push(ModelConfig::Lstm(LstmConfig { vocab_size: 11, embedding_dim: 3, hidden_size: 5, num_layers: 1 }));
    configs.push(ModelConfig::Lstm(LstmConfig { vocab_size: 11, embedding_dim: 3, hidden_size: 5, num_layers: 3 }));
    for config in configs {
        assert_eq!(config.num_params(), Some(config.build().unwrap().num_params()), "{config:?}");
    }
    let huge = ModelConfig::Gpt(GptConfig { vocab_size: 7, block_size: 5, n_layer: 1, n_head: 1, n_embd: 1 << 40 });
    assert_eq!(huge.num_params(), None);
}
