//! The Llama family end to end through the binary: trained from a preset, exported as a Hugging Face directory,
//! evaluated from the run and from the export (the same loss), and fine-tuned from the export.

mod common;

use common::*;
use std::fs;

const ADAMW: &str = r#"{"train_batch_size": 8,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5, "warmup_max_lr": 0.003}}}"#;

fn train(config: &str, data: &str, out: &str, steps: &str, extra: &[&str]) -> String {
    let mut args = vec!["train", "--config", config, "--data", data, "--out", out, "--steps", steps];
    args.extend(["--seq-len", "32", "--eval-every", "1000", "--eval-batches", "4", "--save-every", "1000"]);
    args.extend(extra);
    ok(&rustspeed(&args))
}

/// The machine-readable last line of `eval`: `loss=… ppl=… tokens=…`.
fn eval_line(args: &[&str]) -> String {
    let out = rustspeed(&[&["eval"][..], args].concat());
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout.lines().last().unwrap_or_default().to_string();
    assert!(line.starts_with("loss=") && line.contains(" ppl=") && line.contains(" tokens="), "{stdout}");
    line
}

#[test]
fn llama_trains_exports_to_hugging_face_and_evaluates_the_same_from_the_export() {
    let sb = Sandbox::new("llama-e2e");
    let data = sb.data();
    let config = sb.write("ds.json", ADAMW);
    let run = sb.path("run");
    train(s(&config), s(&data), s(&run), "6", &["--model", "llama-tiny"]);
    let export = sb.path("export");
    ok(&rustspeed(&["export", "--run", s(&run), "--format", "hf", "--out", s(&export)]));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(export.join(file).is_file(), "{file} missing from the export");
    }
    let config_json: serde_json::Value =
        serde_json::from_slice(&fs::read(export.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json["model_type"], "llama");
    assert_eq!(config_json["num_key_value_heads"], 2);

    // The same weights, read back from the export, give the same loss on the same data, bit for bit.
    let from_run = eval_line(&["--run", s(&run), "--data", s(&data), "--seq-len", "32"]);
    let from_export = eval_line(&["--init-from", s(&export), "--data", s(&data), "--seq-len", "32"]);
    assert_eq!(from_run, from_export);
    // And on a text file, through each side's tokenizer (the run's, and the exported tokenizer.json).
    let text = sb.write("text.txt", "the quick brown fox jumps over a lazy dog. to be or not to be. ".repeat(8));
    let text_run = eval_line(&["--run", s(&run), "--text", s(&text), "--seq-len", "16"]);
    let text_export = eval_line(&["--init-from", s(&export), "--text", s(&text), "--seq-len", "16"]);
    assert_eq!(text_run, text_export);

    // Fine-tuning starts from the export: no --model (the directory's config.json), and its first loss is the
    // exported model's, far below a fresh model's ln(V).
    let tuned = sb.path("tuned");
    train(s(&config), s(&data), s(&tuned), "2", &["--init-from", s(&export)]);
    let first = |run: &std::path::Path| -> f32 {
        let metrics = fs::read_to_string(run.join("metrics.csv")).unwrap();
        metrics.lines().nth(1).unwrap().split(',').nth(1).unwrap().parse().unwrap()
    };
    let fresh = sb.path("fresh");
    train(s(&config), s(&data), s(&fresh), "2", &["--model", "llama-tiny"]);
    assert!(first(&tuned) < first(&fresh) - 0.3, "tuned {} vs fresh {}", first(&tuned), first(&fresh));

    // Bad input: a weights file without a description, a model that does not fit the weights.
    let weights = export.join("model.safetensors");
    fails(&rustspeed(&["eval", "--init-from", s(&weights), "--data", s(&data)]), &["--model"]);
    fails(
        &rustspeed(&["eval", "--init-from", s(&weights), "--model", "gpt-tiny", "--data", s(&data)]),
        &["holds only"],
    );
    let mut shallow = config_json.clone();
    shallow["num_hidden_layers"] = 1.into();
    let shallow = sb.write("shallow.json", serde_json::to_string(&shallow).unwrap());
    fails(
        &rustspeed(&["eval", "--init-from", s(&weights), "--model", s(&shallow), "--data", s(&data)]),
        &["unexpected tensor 'model.layers.1.self_attn.q_proj.weight'"],
    );
}

/// A description file in place of a preset: `presets NAME` prints one, edited it trains.
#[test]
fn a_printed_preset_edited_is_a_model_description() {
    let sb = Sandbox::new("llama-describe");
    let data = sb.data();
    let out = rustspeed(&["presets", "llama-tiny"]);
    ok(&out);
    let mut description: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    description["num_hidden_layers"] = 1.into();
    description["vocab_size"] = 32.into();
    let file = sb.write("model.json", serde_json::to_string(&description).unwrap());
    let config = sb.write("ds.json", ADAMW);
    let run = sb.path("run");
    let log = train(s(&config), s(&data), s(&run), "2", &["--model", s(&file)]);
    assert!(log.contains("2 steps"), "{log}");
    description["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    let scaled = sb.write("scaled.json", serde_json::to_string(&description).unwrap());
    fails(
        &rustspeed(&[
            "train",
            "--model",
            s(&scaled),
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--out",
            s(&sb.path("x")),
        ]),
        &["rope_scaling"],
    );
}

/// The last validation loss of a run.
fn final_val_loss(run: &std::path::Path) -> f32 {
    let metrics = fs::read_to_string(run.join("metrics.csv")).unwrap();
    let last = metrics.lines().last().unwrap();
    last.split(',').nth(5).unwrap().parse().unwrap_or_else(|_| panic!("no validation in the last row: {last}"))
}

/// Fine-tuning end to end, as a user does it: a `llama-tiny` pretrained on one corpus, exported as a Hugging Face
/// directory, the second corpus prepared with the exported `tokenizer.json`, then trained from `--init-from` on
/// it: a lower validation loss than the same steps from scratch.
#[test]
fn fine_tuning_from_an_export_beats_training_from_scratch() {
    let sb = Sandbox::new("llama-finetune");
    let first = sb.data();
    let config = sb.write("ds.json", ADAMW);
    let pretrained = sb.path("pretrained");
    train(s(&config), s(&first), s(&pretrained), "40", &["--model", "llama-tiny"]);
    let export = sb.path("export");
    ok(&rustspeed(&["export", "--run", s(&pretrained), "--format", "hf", "--out", s(&export)]));

    // The other half: the same characters in other sentences.
    let text: String = (0..300)
        .map(|i| match i % 3 {
            0 => "a lazy fox jumps over the quick dog. ",
            1 => "to be quick or not to be. ",
            _ => "the brown dog jumps. ",
        })
        .collect();
    let second_text = sb.write("second.txt", text);
    let second = sb.path("second");
    let tokenizer = export.join("tokenizer.json");
    ok(&rustspeed(&["prepare", "--input", s(&second_text), "--out", s(&second), "--tokenizer", s(&tokenizer)]));

    // The last step is always validated.
    let (tuned, fresh) = (sb.path("tuned"), sb.path("fresh"));
    train(s(&config), s(&second), s(&tuned), "10", &["--init-from", s(&export)]);
    train(s(&config), s(&second), s(&fresh), "10", &["--model", "llama-tiny"]);
    let (tuned, fresh) = (final_val_loss(&tuned), final_val_loss(&fresh));
    assert!(tuned < fresh, "fine-tuned {tuned} vs from scratch {fresh}");
}

/// New tokens of the greedy continuation compared with transformers' `generate` (the context of gpt-tiny and
/// llama-tiny, 64, less the 42-token prompt, with room to spare).
const GREEDY_TOKENS: usize = 20;

/// Writes exports for `reference/check_hf_export.py` (run by hand before a release; not a test of its own):
/// `RUSTSPEED_HF_CHECK_DIR/{llama,gpt}/` from short runs, each with `expected.json` holding a text, its ids by
/// rustspeed's tokenizer, and the logits rustspeed computes from the exported weights.
#[test]
#[ignore = "writes exports for reference/check_hf_export.py; set RUSTSPEED_HF_CHECK_DIR"]
fn write_exports_for_transformers() {
    let out_root = std::path::PathBuf::from(std::env::var("RUSTSPEED_HF_CHECK_DIR").expect("RUSTSPEED_HF_CHECK_DIR"));
    let sb = Sandbox::new("hf-check");
    let data = sb.data();
    let config = sb.write("ds.json", ADAMW);
    for (name, preset) in [("llama", "llama-tiny"), ("gpt", "gpt-tiny")] {
        let run = sb.path(name);
        train(s(&config), s(&data), s(&run), "6", &["--model", preset]);
        let export = out_root.join(name);
        let _ = fs::remove_dir_all(&export);
        ok(&rustspeed(&["export", "--run", s(&run), "--format", "hf", "--out", s(&export)]));
        let text = "the quick brown fox jumps over a lazy dog.";
        let tokenizer = rustspeed_data::Tokenizer::load(&run.join("tokenizer")).unwrap();
        let ids = tokenizer.encode(text).unwrap();
        let checkpoint = rustspeed_nn::hf_weights::read_checkpoint(&export).unwrap();
        let described = rustspeed_nn::hf_config::from_hf_json(checkpoint.config.as_ref().unwrap()).unwrap();
        let mut model = described.config.build().unwrap();
        let mut params = vec![0.0; model.num_params()];
        rustspeed_nn::hf_weights::load_into(model.layout(), &mut params, &checkpoint).unwrap();
        model.forward(&params, &ids, None, 1, ids.len()).unwrap();
        let logits = model.logits().unwrap().to_vec();
        // Greedy continuation with the cache, as `rustspeed generate --temperature 0` produces it.
        let sampling = rustspeed_engine::generate::SamplingParams {
            max_tokens: GREEDY_TOKENS,
            temperature: 0.0,
            ..Default::default()
        };
        let (greedy, _) = rustspeed_engine::generate::generate(model, params, &ids, sampling).unwrap();
        let expected = serde_json::json!({ "text": text, "ids": ids, "logits": logits, "greedy": greedy });
        fs::write(export.join("expected.json"), expected.to_string()).unwrap();
    }
}
