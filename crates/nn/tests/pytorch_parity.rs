//! Whole-model parity with PyTorch: `tests/fixtures/*.safetensors`, written by `reference/make_fixtures.py`
//! (GPT, LSTM) and `reference/make_llama_fixtures.py` (Llama, by transformers' own `LlamaForCausalLM`)
//! (which computes in float64 from float32 weights), against rustspeed's fp32 models: logits, loss, every
//! parameter gradient, and the losses of 10 optimizer steps.

use rustspeed_kernels::gradcheck::{compare, to_f64};
use rustspeed_nn::io::{load_params, tensor_f32};
use rustspeed_nn::{hf_config, preset, Model, ModelConfig};
use rustspeed_optim::{adam_step, sgd_step, AdamHyper, SgdHyper};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

/// Tolerances are about 10x the worst error measured (fp32 model vs the float64 oracle), so a real change of
/// math shows while fp32 rounding does not.
/// Logits: fp32 matmuls and LayerNorms over widths <= 256; worst seen ~1e-5 relative on entries near 1e-2.
const LOGITS_ATOL: f64 = 1e-5;
const LOGITS_RTOL: f64 = 1e-4;
/// Loss: fp32 log-sum-exp per row, averaged; within 1e-7 relative seen.
const LOSS_RTOL: f64 = 1e-6;
/// Gradients: relative to the tensor's largest gradient as well, since tiny entries carry fp32 cancellation
/// noise of the tensor's overall scale; within 1e-6 of max + 1e-5 relative seen.
const GRAD_ATOL_OF_MAX: f64 = 1e-5;
const GRAD_RTOL: f64 = 1e-4;
/// 10 training steps: fp32 rounding compounds through the updates; within 2e-7 relative seen.
const TRAIN_LOSS_RTOL: f64 = 2e-6;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(name: &str) -> Self {
        let path = format!("{}/../../tests/fixtures/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {path}: {e}"));
        Fixture { bytes }
    }

    fn file(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture is a valid safetensors file")
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let file = self.file();
        tensor_f32(name, &file.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"))).unwrap()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let file = self.file();
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::I64);
        view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
    }

    fn meta(&self, key: &str) -> Value {
        let (_, header) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let text = header.metadata().as_ref().and_then(|m| m.get(key)).unwrap_or_else(|| panic!("no metadata {key}"));
        serde_json::from_str(text).unwrap()
    }
}

/// The model of `preset_name` with the fixture's vocabulary, its config checked against the fixture's.
fn build(fx: &Fixture, preset_name: &str) -> (Model, Vec<f32>) {
    let meta = fx.meta("config");
    let vocab = meta["vocab_size"].as_u64().unwrap() as usize;
    let config = preset(preset_name).unwrap().config(vocab).unwrap();
    let fields: Vec<(&str, usize)> = match &config {
        ModelConfig::Gpt(c) => {
            vec![("block_size", c.block_size), ("n_layer", c.n_layer), ("n_head", c.n_head), ("n_embd", c.n_embd)]
        }
        ModelConfig::Lstm(c) => {
            vec![("embedding_dim", c.embedding_dim), ("hidden_size", c.hidden_size), ("num_layers", c.num_layers)]
        }
        ModelConfig::Llama(_) => {
            let described = hf_config::from_hf_json(&meta).expect("the fixture's config.json reads");
            assert_eq!(described.config, config, "fixture's config differs from preset {preset_name}");
            Vec::new()
        }
    };
    for (key, value) in fields {
        assert_eq!(meta[key].as_u64(), Some(value as u64), "fixture's {key} differs from preset {preset_name}");
    }
    with_params(fx, config)
}

/// The model the fixture's Hugging Face `config.json` describes (read as `--model config.json` reads it).
fn build_from_config(fx: &Fixture) -> (Model, Vec<f32>) {
    let described = hf_config::from_hf_json(&fx.meta("config")).expect("the fixture's config.json reads");
    assert!(described.notes.is_empty(), "{:?}", described.notes);
    with_params(fx, described.config)
}

fn with_params(fx: &Fixture, config: ModelConfig) -> (Model, Vec<f32>) {
    let model = config.build().unwrap();
    let mut params = vec![0.0; model.num_params()];
    load_params(model.layout(), &mut params, &fx.bytes, "param.", true).unwrap();
    (model, params)
}

fn batch(fx: &Fixture) -> (Vec<u32>, Vec<u32>, usize, usize) {
    let b = fx.meta("batch");
    let (b, t) = (b["b"].as_u64().unwrap() as usize, b["t"].as_u64().unwrap() as usize);
    (fx.ids("tokens"), fx.ids("targets"), b, t)
}

fn check_forward_and_gradients(fixture: &str, preset_name: Option<&str>) {
    let fx = Fixture::open(fixture);
    let (mut model, params) = match preset_name {
        Some(name) => build(&fx, name),
        None => build_from_config(&fx),
    };
    let (tokens, targets, b, t) = batch(&fx);

    model.forward(&params, &tokens, None, b, t).unwrap();
    let logits = model.logits().expect("a forward without targets leaves logits");
    compare(&to_f64(logits), &to_f64(&fx.f32("logits")), LOGITS_ATOL, LOGITS_RTOL)
        .unwrap_or_else(|m| panic!("{fixture}: logits differ from PyTorch: {m}"));

    let loss = model.forward(&params, &tokens, Some(&targets), b, t).unwrap().unwrap();
    let expected_loss = fx.f32("loss")[0] as f64;
    compare(&[loss.mean as f64], &[expected_loss], 0.0, LOSS_RTOL).unwrap_or_else(|m| panic!("{fixture}: loss: {m}"));

    let mut grads = vec![0.0; params.len()];
    model.backward(&params, &mut grads, 1.0).unwrap();
    for entry in model.layout().entries() {
        let expected = to_f64(&fx.f32(&format!("grad.{}", entry.spec.name)));
        let scale = expected.iter().fold(0.0f64, |a, &g| a.max(g.abs()));
        compare(&to_f64(&grads[entry.range()]), &expected, GRAD_ATOL_OF_MAX * scale, GRAD_RTOL)
            .unwrap_or_else(|m| panic!("{fixture}: gradient of {} differs from PyTorch: {m}", entry.spec.name));
    }
}

/// Trains on the fixture's batch for as many steps as it recorded, with `update` applying one optimizer step
/// (given the 1-based step number, the model, parameters, gradients); returns the loss before each step.
fn train_losses(
    fx: &Fixture,
    model: &mut Model,
    params: &mut [f32],
    mut update: impl FnMut(u64, &Model, &mut [f32], &[f32]),
) -> Vec<f64> {
    let (tokens, targets, b, t) = batch(fx);
    let steps = fx.f32("train_losses").len();
    let mut grads = vec![0.0; params.len()];
    (1..=steps as u64)
        .map(|step| {
            grads.fill(0.0);
            let loss = model.forward(params, &tokens, Some(&targets), b, t).unwrap().unwrap();
            model.backward(params, &mut grads, 1.0).unwrap();
            update(step, model, params, &grads);
            loss.mean as f64
        })
        .collect()
}

#[test]
fn gpt_tiny_matches_pytorch_logits_loss_and_gradients() {
    check_forward_and_gradients("gpt_tiny", Some("gpt-tiny"));
}

#[test]
fn lstm_tiny_matches_pytorch_logits_loss_and_gradients() {
    check_forward_and_gradients("lstm_tiny", Some("lstm-tiny"));
}

/// The losses of AdamW steps (the fixture's hyperparameters, decay on matrices only) on the fixture's batch.
fn adamw_losses(fx: &Fixture, model: &mut Model, params: &mut [f32]) -> Vec<f64> {
    let opt = fx.meta("optimizer");
    assert_eq!(opt["type"], "AdamW");
    let f = |key: &str| opt[key].as_f64().unwrap() as f32;
    let betas = &opt["betas"];
    let hyper = AdamHyper {
        lr: f("lr"),
        beta1: betas[0].as_f64().unwrap() as f32,
        beta2: betas[1].as_f64().unwrap() as f32,
        eps: f("eps"),
        weight_decay: f("weight_decay"),
        bias_correction: true,
        adam_w_mode: true,
    };
    let mut m = vec![0.0; params.len()];
    let mut v = vec![0.0; params.len()];
    train_losses(fx, model, params, |step, model, params, grads| {
        for e in model.layout().entries() {
            let hp = AdamHyper { weight_decay: if e.spec.weight_decay { hyper.weight_decay } else { 0.0 }, ..hyper };
            let r = e.range();
            adam_step(&hp, step, &mut params[r.clone()], &grads[r.clone()], &mut m[r.clone()], &mut v[r]);
        }
    })
}

#[test]
fn gpt_tiny_adamw_ten_steps_match_pytorch() {
    let fx = Fixture::open("gpt_tiny");
    let (mut model, mut params) = build(&fx, "gpt-tiny");
    let losses = adamw_losses(&fx, &mut model, &mut params);
    compare(&losses, &to_f64(&fx.f32("train_losses")), 0.0, TRAIN_LOSS_RTOL)
        .unwrap_or_else(|mm| panic!("gpt AdamW losses {losses:?} differ from PyTorch: {mm}"));
}

/// Hugging Face `LlamaForCausalLM` with grouped-query attention and an untied head: the `llama-tiny` preset.
#[test]
fn llama_tiny_gqa_matches_transformers_logits_loss_and_gradients() {
    check_forward_and_gradients("llama_tiny_gqa", Some("llama-tiny"));
}

/// Multi-head attention with 3 heads of 10 (q narrower than the width), tied head, attention and MLP biases,
/// another rotary base and epsilon; built from the fixture's `config.json` as transformers 5 writes it.
#[test]
fn llama_tiny_tied_with_biases_matches_transformers_logits_loss_and_gradients() {
    check_forward_and_gradients("llama_tiny_tied", None);
}

#[test]
fn llama_adamw_ten_steps_match_transformers() {
    for fixture in ["llama_tiny_gqa", "llama_tiny_tied"] {
        let fx = Fixture::open(fixture);
        let (mut model, mut params) = build_from_config(&fx);
        let losses = adamw_losses(&fx, &mut model, &mut params);
        compare(&losses, &to_f64(&fx.f32("train_losses")), 0.0, TRAIN_LOSS_RTOL)
            .unwrap_or_else(|mm| panic!("{fixture}: AdamW losses {losses:?} differ from transformers: {mm}"));
    }
}

#[test]
fn lstm_tiny_sgd_momentum_ten_steps_match_pytorch() {
    let fx = Fixture::open("lstm_tiny");
    let (mut model, mut params) = build(&fx, "lstm-tiny");
    let opt = fx.meta("optimizer");
    assert_eq!(opt["type"], "SGD");
    let hyper = SgdHyper {
        lr: opt["lr"].as_f64().unwrap() as f32,
        momentum: opt["momentum"].as_f64().unwrap() as f32,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut buf = vec![0.0; params.len()];
    let losses = train_losses(&fx, &mut model, &mut params, |step, _, params, grads| {
        sgd_step(&hyper, step == 1, params, grads, Some(&mut buf));
    });
    compare(&losses, &to_f64(&fx.f32("train_losses")), 0.0, TRAIN_LOSS_RTOL)
        .unwrap_or_else(|mm| panic!("lstm SGD losses {losses:?} differ from PyTorch: {mm}"));
}
