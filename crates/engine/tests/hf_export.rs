//! `rustspeed export` against Hugging Face transformers: `tests/fixtures/hf_gpt2_export.safetensors`, written by
//! `reference/export_hf_gpt2.py`, holds the tensors of a real export of a trained `gpt-tiny` run, a token batch,
//! and the float64 logits `transformers.GPT2LMHeadModel` computes after loading that export by name. Matching
//! them proves the export's names, Conv1D orientation, tied head, LayerNorm epsilon and tanh-GELU agree with GPT-2.

use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_nn::io::load_params;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeSet;

/// fp32 against float64 logits of order 1 (measured 1.2e-6); the nearest wrong model on this fixture, erf-GELU
/// instead of tanh-GELU, is off by 3e-4, and LayerNorm eps 1e-6 instead of 1e-5 by 4e-3.
const LOGITS_ATOL: f64 = 1e-4;

/// The fixture's tensors that are not model parameters.
const TOKENS: &str = "tokens";
const LOGITS: &str = "logits";

fn fixture_bytes() -> Vec<u8> {
    let path = format!("{}/../../tests/fixtures/hf_gpt2_export.safetensors", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (regenerate with reference/export_hf_gpt2.py)"))
}

fn spec_of(bytes: &[u8]) -> ModelSpec {
    let (_, header) = SafeTensors::read_metadata(bytes).expect("fixture header");
    let metadata = header.metadata().as_ref().expect("fixture metadata");
    let json: serde_json::Value = serde_json::from_str(&metadata["rustspeed_model"]).expect("rustspeed_model JSON");
    ModelSpec::from_json(&json).expect("rustspeed_model describes a model")
}

fn f64_values(view: &TensorView<'_>) -> Vec<f64> {
    assert_eq!(view.dtype(), Dtype::F64, "fixture logits are float64");
    view.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn i64_values(view: &TensorView<'_>) -> Vec<i64> {
    assert_eq!(view.dtype(), Dtype::I64, "fixture tokens are int64");
    view.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn export_holds_exactly_the_gpt2_state_dict_names_of_the_model() {
    let bytes = fixture_bytes();
    let model = spec_of(&bytes).config.build().unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let in_file: BTreeSet<&str> =
        file.names().into_iter().map(String::as_str).filter(|n| ![TOKENS, LOGITS].contains(n)).collect();
    let in_model: BTreeSet<&str> = model.layout().entries().iter().map(|e| e.spec.name.as_str()).collect();
    assert_eq!(in_file, in_model);
    assert!(!in_file.contains("lm_head.weight"), "the head is tied to transformer.wte.weight, not exported");
}

#[test]
fn exported_gpt_reproduces_transformers_gpt2_logits() {
    let bytes = fixture_bytes();
    let spec = spec_of(&bytes);
    let mut model = spec.config.build().unwrap();
    let mut params = vec![f32::NAN; model.num_params()];
    load_params(model.layout(), &mut params, &bytes, "", false).expect("fixture loads into the model");
    assert!(params.iter().all(|p| p.is_finite()), "every parameter was filled from the fixture");

    // Trained weights, not the initializer's: LayerNorm biases start at exactly zero.
    let ln_bias = model.layout().find("transformer.h.0.ln_1.bias").expect("ln_1.bias in the layout");
    assert!(params[model.layout().range(ln_bias)].iter().any(|&x| x != 0.0), "fixture weights look untrained");

    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tokens_view = file.tensor(TOKENS).unwrap();
    let (b, t) = match tokens_view.shape() {
        [b, t] => (*b, *t),
        shape => panic!("tokens have shape {shape:?}; expected [B, T]"),
    };
    let tokens: Vec<u32> = i64_values(&tokens_view).into_iter().map(|x| u32::try_from(x).unwrap()).collect();
    let logits_view = file.tensor(LOGITS).unwrap();
    assert_eq!(logits_view.shape(), [b, t, model.vocab_size()]);
    let expected = f64_values(&logits_view);

    model.forward(&params, &tokens, None, b, t).unwrap();
    let actual = model.logits().expect("a forward without targets leaves logits");
    assert_eq!(actual.len(), expected.len());
    let (worst, max_diff) = actual
        .iter()
        .zip(&expected)
        .map(|(&a, &e)| (a as f64 - e).abs())
        .enumerate()
        .fold((0, 0.0_f64), |best, (i, d)| if d > best.1 { (i, d) } else { best });
    let v = model.vocab_size();
    println!("max |rustspeed - transformers| logit difference: {max_diff:.3e}");
    assert!(
        max_diff <= LOGITS_ATOL,
        "logit [b={}, t={}, v={}]: rustspeed {} vs transformers {} (|diff| {max_diff:.3e} > {LOGITS_ATOL:e})",
        worst / (t * v),
        worst / v % t,
        worst % v,
        actual[worst],
        expected[worst]
    );
}
