//! Hugging Face checkpoints in: model directories written by transformers' `save_pretrained`
//! (`reference/make_llama_fixtures.py`), a bf16 Llama sharded over two files with an index and an fp16 GPT-2 in
//! `Conv1D` orientation, load into fp32 and give transformers' loss; a checkpoint of another model is refused
//! naming each tensor.

use rustspeed_nn::hf_config::from_hf_json;
use rustspeed_nn::hf_weights::{load_into, read_checkpoint};
use serde_json::Value;
use std::path::PathBuf;

/// fp32 forward against transformers' float64 one on the same (16-bit, exactly widened) weights: within 1e-6
/// relative seen; 10x margin.
const LOSS_RTOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")))
}

fn check(name: &str) {
    let dir = fixture(name);
    let checkpoint = read_checkpoint(&dir).unwrap();
    let config = from_hf_json(checkpoint.config.as_ref().expect("a directory with config.json")).unwrap().config;
    let mut model = config.build().unwrap();
    let mut params = vec![f32::NAN; model.num_params()];
    load_into(model.layout(), &mut params, &checkpoint).unwrap();
    assert!(params.iter().all(|p| p.is_finite()), "{name}: every parameter was filled");
    let expected: Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32))
            .collect()
    };
    let (tokens, targets) = (ids("tokens"), ids("targets"));
    let b = expected["tokens"].as_array().unwrap().len();
    let loss = model.forward(&params, &tokens, Some(&targets), b, tokens.len() / b).unwrap().unwrap();
    let want = expected["loss"].as_f64().unwrap();
    assert!(((loss.mean as f64 - want) / want).abs() < LOSS_RTOL, "{name}: loss {} vs transformers {want}", loss.mean);
}

#[test]
fn a_sharded_bf16_llama_from_save_pretrained_gives_transformers_loss() {
    check("hf_llama_sharded_bf16");
}

#[test]
fn an_fp16_gpt2_from_save_pretrained_gives_transformers_loss() {
    check("hf_gpt2_fp16");
}

#[test]
fn a_checkpoint_of_another_model_is_refused_naming_each_tensor() {
    let checkpoint = read_checkpoint(&fixture("hf_llama_sharded_bf16")).unwrap();
    let mut config = from_hf_json(checkpoint.config.as_ref().unwrap()).unwrap().config;
    let rustspeed_nn::ModelConfig::Llama(c) = &mut config else { panic!("a llama fixture") };
    c.num_hidden_layers = 3;
    c.intermediate_size = 48;
    let model = config.build().unwrap();
    let mut params = vec![0.0; model.num_params()];
    let err = load_into(model.layout(), &mut params, &checkpoint).unwrap_err().to_string();
    for needle in [
        "tensor 'model.layers.2.self_attn.q_proj.weight' is missing",
        "tensor 'model.layers.0.mlp.up_proj.weight' has shape [64, 32], the model needs [48, 32]",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let gpt = rustspeed_nn::preset("gpt-tiny").unwrap().config(40).unwrap().build().unwrap();
    let mut params = vec![0.0; gpt.num_params()];
    let err = load_into(gpt.layout(), &mut params, &checkpoint).unwrap_err().to_string();
    assert!(
        err.contains("unexpected tensor 'model.embed_tokens.weight'")
            && err.contains("'transformer.wte.weight' is missing"),
        "{err}"
    );
}

/// GPT-2 as the original conversion wrote it (`openai-community/gpt2`): names without `transformer.`, the
/// attention-mask buffers, and the tied head's copy; it loads into the same parameters as the prefixed file.
#[test]
fn gpt2_names_without_the_prefix_and_its_buffers_load_the_same() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = fixture("hf_gpt2_fp16");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (name.trim_start_matches("transformer.").to_string(), v.dtype(), v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    let wte = tensors.iter().find(|t| t.0 == "wte.weight").unwrap().clone();
    tensors.push(("lm_head.weight".into(), wte.1, wte.2, wte.3));
    tensors.push(("h.0.attn.bias".into(), Dtype::F16, vec![1, 1, 2, 2], vec![0; 8]));
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let renamed = std::env::temp_dir().join(format!("rustspeed-gpt2-unprefixed-{}.safetensors", std::process::id()));
    std::fs::write(&renamed, safetensors::serialize(views, &None).unwrap()).unwrap();

    let config = from_hf_json(read_checkpoint(&dir).unwrap().config.as_ref().unwrap()).unwrap().config;
    let model = config.build().unwrap();
    let load = |path: &std::path::Path| {
        let mut params = vec![0.0; model.num_params()];
        load_into(model.layout(), &mut params, &read_checkpoint(path).unwrap()).unwrap();
        params
    };
    assert_eq!(load(&renamed), load(&dir));
    std::fs::remove_file(renamed).unwrap();
}
