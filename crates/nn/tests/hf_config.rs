//! Model descriptions in Hugging Face's terms: the published `config.json` of GPT-2 and SmolLM2-135M read into
//! the presets' configurations, round trips, and every refusal naming its key.

use rustspeed_nn::hf_config::{from_hf_json, to_hf_json};
use rustspeed_nn::{preset, ModelConfig};
use serde_json::{json, Value};

/// `openai-community/gpt2`'s config.json as published.
fn gpt2() -> Value {
    json!({"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
        "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
        "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
        "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
        "vocab_size": 50257})
}

/// `HuggingFaceTB/SmolLM2-135M`'s config.json as published (transformers 4.x keys).
fn smollm2() -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
        "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
        "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
        "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false,
        "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": true, "vocab_size": 49152})
}

fn preset_config(name: &str) -> ModelConfig {
    let p = preset(name).unwrap();
    p.config(p.vocab_size.unwrap()).unwrap()
}

#[test]
fn published_configs_are_the_presets() {
    let gpt = from_hf_json(&gpt2()).unwrap();
    assert_eq!(gpt.config, preset_config("gpt2-124m"));
    assert_eq!(gpt.notes.len(), 3, "each dropout is reported as not applied: {:?}", gpt.notes);
    let smol = from_hf_json(&smollm2()).unwrap();
    assert_eq!(smol.config, preset_config("smollm2-135m"));
    assert!(smol.notes.is_empty());
}

#[test]
fn descriptions_round_trip() {
    for name in ["gpt2-124m", "smollm2-135m", "llama-tiny", "lstm-tiny"] {
        let p = preset(name).unwrap();
        let config = p.config(p.vocab_size.unwrap_or(77)).unwrap();
        assert_eq!(from_hf_json(&to_hf_json(&config)).unwrap().config, config, "{name}");
    }
    // transformers 5 writes the rotary base inside rope_parameters.
    let mut v5 = smollm2();
    let map = v5.as_object_mut().unwrap();
    map.remove("rope_theta");
    map.remove("rope_scaling");
    map.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 100000.0}));
    assert_eq!(from_hf_json(&v5).unwrap().config, preset_config("smollm2-135m"));
}

/// Each edit is refused with an error naming the key it gives.
#[test]
fn unsupported_and_unknown_keys_are_named() {
    let refused = |base: fn() -> Value, key: &str, value: Value| {
        let mut v = base();
        v[key] = value;
        let err = from_hf_json(&v).expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    };
    refused(smollm2, "rope_scaling", json!({"type": "linear", "factor": 2.0}));
    refused(smollm2, "hidden_act", json!("gelu"));
    refused(smollm2, "rope_interleaved", json!(true));
    refused(smollm2, "sliding_window", json!(4096));
    refused(smollm2, "num_key_value_heads", json!(2));
    refused(smollm2, "hidden_sizes", json!(576));
    refused(smollm2, "rope_parameters", json!({"rope_type": "yarn", "factor": 4.0}));
    refused(gpt2, "activation_function", json!("relu"));
    refused(gpt2, "tie_word_embeddings", json!(false));
    refused(gpt2, "n_inner", json!(1000));
    refused(gpt2, "model_type", json!("bert"));
    refused(gpt2, "n_embd", json!("768"));
    refused(gpt2, "n_head", json!(7));
}
