//! Layers and models: finite-difference gradient checks, presets, initialization, the flat layout, errors.

use rustspeed_kernels::cast::{bf16, Contents, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::rope::RopeTable;
use rustspeed_nn::gradcheck::{check_layer, check_model, GradCheck};
use rustspeed_nn::io::{load_params, save_params, LoadError};
use rustspeed_nn::layers::{Embedding, GptBlock, LayerNorm, LlamaBlock, LlamaDims, Lstm, RmsNorm};
use rustspeed_nn::{
    preset, Batch, GptConfig, Layer, LlamaConfig, LstmConfig, ModelConfig, ModelError, ParamLayout, Phase, PRESETS,
};
use std::sync::Arc;

/// Init statistics over >= 10k draws: the sample std of N(0, σ) is within ~1% of σ; 5% leaves room.
const INIT_STD_RTOL: f64 = 0.05;

fn random(rng: &mut Rng, len: usize, scale: f64) -> Vec<f32> {
    (0..len).map(|_| (rng.normal() * scale) as f32).collect()
}

fn tokens(rng: &mut Rng, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Initializes `layout` and perturbs every parameter so that gains are not exactly 1 and biases not 0 (a check
/// at the init point would miss terms multiplied by them).
fn perturbed_params(layout: &ParamLayout, rng: &mut Rng) -> Vec<f32> {
    let mut p = layout.init_params(3);
    p.iter_mut().for_each(|x| *x += (rng.normal() * 0.1) as f32);
    p
}

fn gradcheck_layer(mut layer: impl Layer, layout: &ParamLayout, b: usize, t: usize, input_width: usize, vocab: usize) {
    let mut rng = Rng::new(11);
    let params = perturbed_params(layout, &mut rng);
    let toks = tokens(&mut rng, b * t, vocab);
    let input = random(&mut rng, b * t * input_width, 1.0);
    let batch = Batch { tokens: &toks, b, t };
    let name = layer.name().to_string();
    check_layer(&mut layer, layout, &params, &batch, &input, &GradCheck::default())
        .unwrap_or_else(|m| panic!("{name}: {m}"));
}

#[test]
fn embedding_with_positions_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let emb = Embedding::new(&mut layout, "wte", Some(("wpe", 9)), 7, 5, 0.5);
    gradcheck_layer(emb, &layout, 2, 6, 0, 7);
}

#[test]
fn layernorm_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let ln = LayerNorm::new(&mut layout, "ln_f", 11);
    gradcheck_layer(ln, &layout, 2, 3, 11, 5);
}

#[test]
fn gpt_block_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let block = GptBlock::new(&mut layout, 0, 2, 12, 3);
    gradcheck_layer(block, &layout, 2, 5, 12, 5);
}

#[test]
fn lstm_layer_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let lstm = Lstm::new(&mut layout, "lstm", 0, 5, 6);
    gradcheck_layer(lstm, &layout, 2, 4, 5, 5);
}

#[test]
fn rmsnorm_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let norm = RmsNorm::new(&mut layout, "model.norm", 11, 1e-5);
    gradcheck_layer(norm, &layout, 2, 3, 11, 5);
}

/// Grouped-query (6 query heads over 2 key/value heads of 3), biases, q narrower than the width.
#[test]
fn llama_block_passes_gradcheck() {
    let mut layout = ParamLayout::default();
    let dims = LlamaDims { c: 10, nh: 6, nkv: 2, hs: 2, inter: 7, eps: 1e-5, attention_bias: true, mlp_bias: true };
    let rope = Arc::new(RopeTable::new(2, 8, 10000.0));
    let block = LlamaBlock::new(&mut layout, 0, dims, rope, 0.5);
    gradcheck_layer(block, &layout, 2, 5, 10, 5);
}

fn gradcheck_model(config: ModelConfig, b: usize, t: usize) {
    let mut model = config.build().unwrap();
    let mut rng = Rng::new(5);
    let params = perturbed_params(model.layout(), &mut rng);
    let v = config.vocab_size();
    let (toks, targets) = (tokens(&mut rng, b * t, v), tokens(&mut rng, b * t, v));
    check_model(&mut model, &params, &toks, &targets, (b, t), &GradCheck::default())
        .unwrap_or_else(|m| panic!("{config:?}: {m}"));
}

#[test]
fn whole_gpt_with_tied_head_passes_gradcheck() {
    gradcheck_model(
        ModelConfig::Gpt(GptConfig { vocab_size: 13, block_size: 8, n_layer: 2, n_head: 2, n_embd: 8 }),
        2,
        5,
    );
}

#[test]
fn whole_llama_with_untied_head_passes_gradcheck() {
    let config = LlamaConfig {
        vocab_size: 13,
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        max_position_embeddings: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 100.0,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        initializer_range: 0.3,
    };
    gradcheck_model(ModelConfig::Llama(config.clone()), 2, 5);
    gradcheck_model(ModelConfig::Llama(LlamaConfig { tie_word_embeddings: true, ..config }), 2, 5);
}

#[test]
fn whole_lstm_lm_passes_gradcheck() {
    gradcheck_model(
        ModelConfig::Lstm(LstmConfig { vocab_size: 11, embedding_dim: 4, hidden_size: 6, num_layers: 2 }),
        2,
        4,
    );
}

#[test]
fn ignored_targets_do_not_count() {
    // Loss with targets [a, IGNORE, b] equals the mean over the two counted positions, and the ignored
    // position gets no gradient: compare against running only the counted rows' targets with a fresh model.
    let config = ModelConfig::Lstm(LstmConfig { vocab_size: 9, embedding_dim: 4, hidden_size: 5, num_layers: 1 });
    let mut model = config.build().unwrap();
    let params = model.layout().init_params(1);
    let ignore = u32::MAX;
    model.head_mut().set_ignore_index(Some(ignore));
    let toks = [1, 2, 3];
    let all = model.forward(&params, &toks, Some(&[4, 5, 6]), 1, 3).unwrap().unwrap();
    let masked = model.forward(&params, &toks, Some(&[4, ignore, 6]), 1, 3).unwrap().unwrap();
    assert_eq!((all.count, masked.count), (3, 2));
    let per_row: Vec<f32> = model.head().output().chunks(9).zip([4usize, 5, 6]).map(|(p, t)| -p[t].ln()).collect();
    assert!((masked.mean - (per_row[0] + per_row[2]) / 2.0).abs() < 1e-5, "{masked:?} vs {per_row:?}");
}

#[test]
fn preset_parameter_counts_match_the_reference_models() {
    // Hugging Face GPT2LMHeadModel ("gpt2") has 124,439,808 parameters (head tied); PyTorch's MyLM of the seed
    // (Embedding(10000, 512), LSTM(512, 1024, 6), Linear(1024, 10000)) has 63,653,648.
    let count = |name: &str| {
        let p = preset(name).unwrap();
        p.config(p.vocab_size.unwrap()).unwrap().build().unwrap().num_params()
    };
    assert_eq!(count("gpt2-124m"), 124_439_808);
    assert_eq!(count("lstm-seed"), 63_653_648);
    // gpt-bench: wte 8192·256 + wpe 128·256 + 4 blocks of 12·256² + 13·256 + ln_f 2·256.
    assert_eq!(count("gpt-bench"), 8192 * 256 + 128 * 256 + 4 * (12 * 256 * 256 + 13 * 256) + 2 * 256);
    // SmolLM2-135M as transformers counts it (`sum(p.numel() for p in model.parameters())`, head tied):
    // 134,515,008.
    assert_eq!(count("smollm2-135m"), 134_515_008);
}

#[test]
fn presets_check_the_vocabulary_and_names() {
    assert!(PRESETS.iter().any(|p| p.name == "gpt-tiny" && p.vocab_size.is_none()));
    match preset("gpt-huge") {
        Err(e @ ModelError::UnknownPreset { .. }) => assert!(e.to_string().contains("gpt-tiny"), "{e}"),
        other => panic!("expected UnknownPreset, got {other:?}"),
    }
    let err = preset("gpt-bench").unwrap().config(65).unwrap_err();
    assert_eq!(err, ModelError::VocabMismatch { preset: "gpt-bench".into(), preset_vocab: 8192, requested: 65 });
    assert!(preset("lstm-tiny").unwrap().config(65).is_ok());
    let bad = ModelConfig::Gpt(GptConfig { vocab_size: 10, block_size: 8, n_layer: 1, n_head: 3, n_embd: 8 });
    assert!(matches!(bad.build(), Err(ModelError::InvalidConfig(_))));
}

fn sample_std(x: &[f32]) -> f64 {
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

#[test]
fn initialization_follows_gpt2_and_pytorch_and_is_reproducible() {
    let gpt = preset("gpt-tiny").unwrap().config(500).unwrap().build().unwrap();
    let layout = gpt.layout();
    let p = layout.init_params(42);
    let view = |name: &str| layout.view(&p, layout.find(name).unwrap());
    let close = |got: f64, want: f64| (got - want).abs() <= INIT_STD_RTOL * want;
    assert!(close(sample_std(view("transformer.wte.weight")), 0.02));
    assert!(close(sample_std(view("transformer.h.0.mlp.c_fc.weight")), 0.02));
    assert!(close(sample_std(view("transformer.h.1.mlp.c_proj.weight")), 0.02 / (2.0f64 * 2.0).sqrt()));
    assert!(view("transformer.h.0.ln_1.weight").iter().all(|&x| x == 1.0));
    assert!(view("transformer.h.0.attn.c_attn.bias").iter().all(|&x| x == 0.0));
    assert_eq!(p, layout.init_params(42));
    assert_ne!(p, layout.init_params(43));

    let lstm = preset("lstm-tiny").unwrap().config(50).unwrap().build().unwrap();
    let layout = lstm.layout();
    let p = layout.init_params(42);
    let w = layout.view(&p, layout.find("lstm.weight_hh_l1").unwrap());
    let bound = 1.0 / 128f32.sqrt();
    assert!(w.iter().all(|&x| x.abs() <= bound));
    // U(-a, a) has std a/√3.
    assert!(close(sample_std(w), bound as f64 / 3f64.sqrt()));
    assert!(close(sample_std(layout.view(&p, layout.find("embedding.weight").unwrap())), 1.0));
}

#[test]
fn layout_is_packed_in_declaration_order_with_weight_decay_on_matrices() {
    let model = preset("gpt-tiny").unwrap().config(10).unwrap().build().unwrap();
    let layout = model.layout();
    let mut offset = 0;
    for e in layout.entries() {
        assert_eq!(e.offset, offset, "{} is not packed", e.spec.name);
        offset += e.spec.numel();
        assert_eq!(e.spec.weight_decay, e.spec.shape.len() >= 2, "{}", e.spec.name);
    }
    assert_eq!(offset, layout.numel());
    assert_eq!(layout.entries()[0].spec.name, "transformer.wte.weight");
    assert!(layout.find("lm_head.weight").is_none(), "the head is tied to wte, not a parameter of its own");
}

#[test]
fn bad_batches_and_misuse_are_errors_not_panics() {
    let mut model = preset("gpt-tiny").unwrap().config(10).unwrap().build().unwrap();
    let params = model.layout().init_params(0);
    let mut grads = vec![0.0; params.len()];
    assert!(matches!(model.backward(&params, &mut grads, 1.0), Err(ModelError::Phase { .. })));
    assert!(matches!(model.forward(&params, &[1, 2, 3], None, 2, 2), Err(ModelError::BatchShape { .. })));
    let err = model.forward(&params, &[1, 10], None, 1, 2).unwrap_err();
    assert_eq!(err, ModelError::TokenOutOfRange { what: "tokens", position: 1, token: 10, vocab_size: 10 });
    assert!(matches!(
        model.forward(&params, &[1, 2], Some(&[3, 11]), 1, 2),
        Err(ModelError::TokenOutOfRange { what: "targets", .. })
    ));
    assert!(matches!(
        model.forward(&params, &vec![1; 65], None, 1, 65),
        Err(ModelError::SequenceTooLong { t: 65, block_size: 64 })
    ));
    assert!(matches!(model.forward(&params[1..], &[1, 2], None, 1, 2), Err(ModelError::BufferSize { .. })));
    model.forward(&params, &[1, 2], None, 1, 2).unwrap();
    assert_eq!(model.phase(), Phase::Logits);
    assert!(
        matches!(model.backward(&params, &mut grads, 1.0), Err(ModelError::Phase { .. })),
        "no loss to differentiate"
    );
    model.forward(&params, &[1, 2], Some(&[2, 3]), 1, 2).unwrap();
    model.backward(&params, &mut grads, 1.0).unwrap();
    assert!(matches!(model.backward(&params, &mut grads, 1.0), Err(ModelError::Phase { .. })), "backward twice");
}

#[test]
fn safetensors_round_trip_and_load_errors() {
    let model = preset("lstm-tiny").unwrap().config(12).unwrap().build().unwrap();
    let layout = model.layout();
    let params = layout.init_params(9);
    let bytes = save_params(layout, &params, "", None).unwrap();
    let mut loaded = vec![0.0; params.len()];
    load_params(layout, &mut loaded, &bytes, "", true).unwrap();
    assert_eq!(loaded, params);

    let other = preset("lstm-tiny").unwrap().config(13).unwrap().build().unwrap();
    let err = load_params(other.layout(), &mut vec![0.0; other.num_params()], &bytes, "", true).unwrap_err();
    assert!(matches!(err, LoadError::Shape { ref name, .. } if name == "embedding.weight"), "{err}");
    let err = load_params(layout, &mut loaded, &bytes[..bytes.len() / 2], "", true).unwrap_err();
    assert!(matches!(err, LoadError::Format(_)), "{err}");
    let err = load_params(layout, &mut loaded, &bytes, "model.", true).unwrap_err();
    assert!(matches!(err, LoadError::Missing(ref n) if n == "model.embedding.weight"), "{err}");
}

/// A backward that overwrites (into a buffer of NaNs) hands out final pieces that cover the buffer once and
/// equal, bit for bit, the gradient added into zeros; a second backward that adds then gives what two adding
/// backwards give. gpt-tiny ties its head to the token embedding (two writers of one gradient, the second must
/// add) and uses 3 of its 64 positions (rows of the position table no token reaches must be written too).
fn backward_pieces_and_overwrite<E: Element>() {
    let as_f32 = |x: &[E]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
    for name in ["gpt-tiny", "lstm-tiny"] {
        let mut model = preset(name).unwrap().config(11).unwrap().build_as::<E>().unwrap();
        let params: Vec<E> = model.layout().init_params(4).iter().map(|&v| E::from_f32(v)).collect();
        let (toks, targets) = ([1u32, 2, 3, 4, 5, 6], [2u32, 3, 4, 5, 6, 7]);
        model.forward(&params, &toks, Some(&targets), 2, 3).unwrap();
        let mut plain = vec![E::default(); params.len()];
        model.backward(&params, &mut plain, 1.0).unwrap();
        let mut twice = plain.clone();
        model.forward(&params, &toks, Some(&targets), 2, 3).unwrap();
        model.backward(&params, &mut twice, 1.0).unwrap();
        let (plain, twice) = (as_f32(&plain), as_f32(&twice));

        model.forward(&params, &toks, Some(&targets), 2, 3).unwrap();
        let mut grads = vec![E::from_f32(f32::NAN); params.len()];
        let mut pieces: Vec<(usize, Vec<f32>)> = Vec::new();
        model
            .backward_with(&params, &mut grads, 1.0, Contents::Overwrite, &mut |offset, piece| {
                pieces.push((offset, as_f32(piece)))
            })
            .unwrap();
        // Pieces arrive from the end of the buffer to its start, adjacent, covering it once, and hold their
        // final values when handed out (the copies taken then equal the finished gradient).
        let mut end = params.len();
        for (offset, piece) in &pieces {
            assert_eq!(offset + piece.len(), end, "{name}: pieces are adjacent and in reverse order");
            assert_eq!(piece.as_slice(), &plain[*offset..end], "{name}: piece at {offset} was not final");
            end = *offset;
        }
        assert_eq!(end, 0, "{name}: the pieces cover the buffer");
        assert!(pieces.len() > model.layers().len() / 2, "{name}: one piece per layer with parameters");
        assert_eq!(as_f32(&grads), plain, "{name}: overwritten gradients");

        model.forward(&params, &toks, Some(&targets), 2, 3).unwrap();
        model.backward_with(&params, &mut grads, 1.0, Contents::Accumulate, &mut |_, _| {}).unwrap();
        assert_eq!(as_f32(&grads), twice, "{name}: a second backward adds");
    }
}

#[test]
fn backward_hands_out_final_pieces_and_overwrites_or_adds() {
    backward_pieces_and_overwrite::<f32>();
    backward_pieces_and_overwrite::<bf16>();
}
