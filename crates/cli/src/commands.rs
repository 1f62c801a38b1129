//! The small commands: `export`, `presets`, `estimate`, `consolidate` (`generate`, `prepare`: own files).

use crate::args::{opt, parse, switch, Args, Opt};
use crate::run_dir::RunDir;
use rustspeed_engine::persist::load_weights;
use rustspeed_nn::io::save_params;
use rustspeed_nn::PRESETS;
use std::collections::HashMap;
use std::path::PathBuf;

const EXPORT_OPTS: &[Opt] = &[
    opt("run", "RUN_DIR", "a directory written by `rustspeed train`"),
    opt("out", "PATH", "safetensors file to write (a directory with --format hf)"),
    opt("tag", "TAG", "checkpoint tag (default: latest)"),
    opt(
        "format",
        "FORMAT",
        "safetensors (default) | hf: a Hugging Face model directory (config.json, weights, tokenizer)",
    ),
];

/// Writes the weights under their state-dict names: Hugging Face GPT-2 (`GPT2LMHeadModel`, Conv1D orientation,
/// head tied to `transformer.wte.weight`) for `gpt`, PyTorch `MyLM` for `lstm`; the metadata holds the model
/// configuration.
pub fn export(argv: &[String]) -> Result<(), String> {
    let Some(a) = parse("export", EXPORT_OPTS, argv)? else { return Ok(()) };
    match a.get("format").unwrap_or("safetensors") {
        "safetensors" => write_weights(&a),
        "hf" => {
            let run = PathBuf::from(a.required("run").map_err(|e| e.to_string())?);
            let out = PathBuf::from(a.required("out").map_err(|e| e.to_string())?);
            crate::hf::export_dir(&run, a.get("tag"), &out)?;
            println!("wrote {} (config.json, model.safetensors, tokenizer)", out.display());
            Ok(())
        }
        other => Err(format!("--format {other}: expected safetensors or hf")),
    }
}

/// `rustspeed consolidate RUN_DIR --out FILE`: DeepSpeed's `zero_to_fp32` — one fp32 safetensors file of the
/// whole model from a (possibly sharded) checkpoint. In fp32 training every rank holds all parameters and the
/// checkpoint's `model.safetensors` is already whole, so this writes the same file as `export`; the optimizer
/// partitions stay in the checkpoint.
pub fn consolidate(argv: &[String]) -> Result<(), String> {
    let argv: Vec<String> = match argv.split_first() {
        Some((run, rest)) if !run.starts_with("--") => [vec!["--run".to_string(), run.clone()], rest.to_vec()].concat(),
        _ => argv.to_vec(),
    };
    // Everything of export but --format: consolidation writes one fp32 safetensors file.
    let Some(a) = parse("consolidate", &EXPORT_OPTS[..3], &argv)? else { return Ok(()) };
    write_weights(&a)
}

fn write_weights(a: &Args) -> Result<(), String> {
    let run = PathBuf::from(a.required("run").map_err(|e| e.to_string())?);
    let out = PathBuf::from(a.required("out").map_err(|e| e.to_string())?);
    if out.exists() {
        return Err(format!("{} exists; choose another --out (nothing is overwritten)", out.display()));
    }
    let weights = load_weights(&RunDir::new(&run).checkpoints(), a.get("tag")).map_err(|e| e.to_string())?;
    let model = weights.spec.config.build().map_err(|e| e.to_string())?;
    let metadata = HashMap::from([("rustspeed_model".to_string(), weights.spec.to_json().to_string())]);
    let bytes = save_params(model.layout(), &weights.params, "", Some(metadata))?;
    // Whole or not at all: a failed write (a full disk) leaves no truncated file that a rerun would refuse.
    crate::atomic::write_atomically(&out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("wrote {} ({} fp32 parameters of {})", out.display(), model.num_params(), weights.spec.preset);
    Ok(())
}

/// Vocabulary printed in the description of a preset that takes its vocabulary from the data: a placeholder to
/// edit (a description must fix one, with a row for each of the data's symbols).
const PLACEHOLDER_VOCAB: usize = 256;

/// `rustspeed presets` lists the presets; `rustspeed presets NAME` prints NAME's model description (a
/// Hugging Face `config.json`) to copy, edit and pass as `--model FILE`.
pub fn presets(argv: &[String]) -> Result<(), String> {
    match argv {
        [] => {
            for p in PRESETS {
                let vocab = p.vocab_size.map_or("from data".to_string(), |v| v.to_string());
                println!("{:<13} vocab {:<9} {}", p.name, vocab, p.description);
            }
            println!("\n`rustspeed presets NAME` prints a preset's config.json, to edit and pass as --model FILE");
            Ok(())
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!("usage: rustspeed presets [NAME]\n  lists the model presets; with NAME, prints its config.json (to edit and pass as --model FILE)");
            Ok(())
        }
        [name] => {
            let p = rustspeed_nn::preset(name).map_err(|e| e.to_string())?;
            let config = p.config(p.vocab_size.unwrap_or(PLACEHOLDER_VOCAB)).map_err(|e| e.to_string())?;
            if p.vocab_size.is_none() {
                eprintln!(
                    "{name} takes its vocabulary from the data; vocab_size {PLACEHOLDER_VOCAB} is a placeholder to set"
                );
            }
            let text = serde_json::to_string_pretty(&rustspeed_nn::hf_config::to_hf_json(&config));
            println!("{}", text.expect("JSON serializes"));
            Ok(())
        }
        _ => Err("usage: rustspeed presets [NAME]".into()),
    }
}

const ESTIMATE_OPTS: &[Opt] = &[
    opt("model", "PRESET|config.json", "a model preset or a model description file"),
    opt("world-size", "N", "data-parallel ranks (default 1)"),
    opt("vocab", "V", "vocabulary size for presets that take it from the data (default 65)"),
    opt("micro-batch", "B", "sequences per micro-batch, for activations (default 8)"),
    opt("seq-len", "T", "tokens per sequence (default: the GPT context, 64 for LSTMs)"),
    opt("optimizer", "NAME", "adam | lamb | lion | sgd | sgd-momentum (default adam)"),
    opt("precision", "TYPE", "fp32 | fp16 | bf16: storage of parameters, gradients, activations (default fp32)"),
    switch("activation-checkpointing", "recompute each block's activations in the backward"),
];

fn mib(bytes: usize) -> String {
    format!("{:>10.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The largest world size, micro-batch, vocabulary or LSTM sequence `estimate` takes: sizes beyond it are no
/// run's, and their products would overflow the byte counts.
const MAX_ESTIMATE_SIZE: usize = 1 << 20;

/// Prints the predicted bytes per rank for ZeRO stages 0-3 (the ZeRO paper's model plus activations).
pub fn estimate(argv: &[String]) -> Result<(), String> {
    use rustspeed_engine::memory::{estimate as predict, Workload};
    use rustspeed_engine::zero::ZeroStage;
    use rustspeed_engine::StorageType;
    let Some(a) = parse("estimate", ESTIMATE_OPTS, argv)? else { return Ok(()) };
    let e = |e: crate::args::ArgError| e.to_string();
    let name = a.required("model").map_err(e)?;
    let vocab = a.parsed_in("vocab", 65, 1..=MAX_ESTIMATE_SIZE).map_err(e)?;
    // A preset with its own vocabulary keeps it, one without takes --vocab; a description file fixes its own.
    let config = match rustspeed_nn::preset(name) {
        Ok(p) => p.config(p.vocab_size.unwrap_or(vocab)).map_err(|e| e.to_string())?,
        Err(_) => rustspeed_nn::hf_config::resolve(name, 1).map_err(|e| e.to_string())?.config,
    };
    let world: usize = a.parsed_in("world-size", 1, 1..=MAX_ESTIMATE_SIZE).map_err(e)?;
    // The rule of each name with DeepSpeed's defaults; its state slots are what it keeps per parameter.
    let block = match a.get("optimizer").unwrap_or("adam") {
        "adam" => r#"{"type": "Adam"}"#,
        "lamb" => r#"{"type": "Lamb"}"#,
        "lion" => r#"{"type": "Lion"}"#,
        "sgd" => r#"{"type": "SGD"}"#,
        "sgd-momentum" => r#"{"type": "SGD", "params": {"momentum": 0.9}}"#,
        other => return Err(format!("--optimizer {other}: expected adam, lamb, lion, sgd or sgd-momentum")),
    };
    let parsed = rustspeed_config::DeepSpeedConfig::from_json_str(&format!(r#"{{"optimizer": {block}}}"#))
        .map_err(|e| e.to_string())?;
    let rule = rustspeed_engine::setup::rule_of(parsed.optimizer.as_ref().expect("the block was given"));
    let slots = rule.slot_names().len();
    let precision = a.get("precision").unwrap_or("fp32");
    let storage = StorageType::from_name(precision)
        .ok_or_else(|| format!("--precision {precision}: expected fp32, fp16 or bf16"))?;
    // A GPT's sequence is at most its context; an LSTM has none.
    let (default_t, max_t) = (config.default_seq_len(), config.context_length().unwrap_or(MAX_ESTIMATE_SIZE));
    let params = config.build().map_err(|e| e.to_string())?.num_params();
    let b = a.parsed_in("micro-batch", 8, 1..=MAX_ESTIMATE_SIZE).map_err(e)?;
    let t = a.parsed_in("seq-len", default_t, 1..=max_t).map_err(e)?;
    println!(
        "{} ({params} parameters), {world} rank(s), micro-batch {b} x {t} tokens, {}; MiB per rank:",
        name,
        storage.name()
    );
    println!("stage  parameters  gradients    staging   gathered     master  optimizer  activations      total");
    for (n, stage) in ZeroStage::ALL.into_iter().enumerate() {
        let m = predict(
            &config,
            params,
            &Workload {
                stage,
                world,
                storage,
                accumulate_in_fp32: rustspeed_engine::setup::default_accumulates_in_fp32(storage, stage),
                optimizer_slots: slots,
                activation_checkpointing: a.flag("activation-checkpointing"),
                micro_batch: b,
                seq_len: t,
            },
        );
        println!(
            "{n:>5}  {} {} {} {} {} {}  {}  {}",
            mib(m.parameters),
            mib(m.gradients),
            mib(m.gradient_staging),
            mib(m.gathered_parameters),
            mib(m.master_weights),
            mib(m.optimizer_state),
            mib(m.activations),
            mib(m.total())
        );
    }
    Ok(())
}
