//! The `rustspeed` binary end to end on a small generated corpus: prepare, train, resume, generate, export, and
//! every kind of bad input a user can give (each a clear error and a non-zero exit, never a panic, nothing
//! overwritten).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

#[test]
fn train_resume_generate_and_export() {
    let sb = Sandbox::new("e2e");
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let (straight, split) = (sb.path("straight"), sb.path("split"));
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&straight), "6")));
    for file in ["metrics.csv", "loss.png", "run.json", "ds_config.json", "checkpoints/latest", "tokenizer"] {
        assert!(straight.join(file).exists(), "{file} missing");
    }
    assert_eq!(fs::read_to_string(straight.join("checkpoints/latest")).unwrap(), "global_step6");

    // 4 steps, then resume to 6 (the checkpoint at 3 is the latest complete one only if the run stops there; here
    // the run ends at 4 and saves, so resume continues from 4).
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&split), "4")));
    let resumed = rustspeed(&[&train_args(s(&config), s(&data), s(&split), "6")[..], &["--resume"]].concat());
    ok(&resumed);
    assert_eq!(metrics_without_timing(&straight), metrics_without_timing(&split), "resumed run differs");
    let header = &metrics_without_timing(&straight)[0];
    assert_eq!(header, "step,loss,lr,grad_norm,val_loss,loss_scale,skipped,overflow_layer");

    let gen = |seed: &str| {
        ok(&rustspeed(&["generate", "--run", s(&straight), "--prompt", "the ", "--tokens", "40", "--seed", seed]))
    };
    let (a, b) = (gen("5"), gen("5"));
    assert_eq!(a, b, "same seed, same text");
    assert!(a.starts_with("the ") && a.trim_end().chars().count() >= 40, "{a}");
    fails(&rustspeed(&["generate", "--run", s(&straight), "--prompt", "Zebra"]), &["prompt", "Z"]);

    let exported = sb.path("model.safetensors");
    ok(&rustspeed(&["export", "--run", s(&straight), "--out", s(&exported)]));
    let before = fs::read(&exported).unwrap();
    fails(&rustspeed(&["export", "--run", s(&straight), "--out", s(&exported)]), &["exists"]);
    assert_eq!(fs::read(&exported).unwrap(), before, "export must not overwrite");
}

#[test]
fn version_help_and_misspelt_commands() {
    let version = ok(&rustspeed(&["--version"]));
    assert_eq!(version.trim(), format!("rustspeed {}", env!("CARGO_PKG_VERSION")));
    let help = ok(&rustspeed(&["help", "train"]));
    assert!(help.contains("--world-size") && help.contains("--resume"), "{help}");
    assert_eq!(help, ok(&rustspeed(&["train", "--help"])), "help COMMAND is COMMAND --help");
    fails(&rustspeed(&["trian"]), &["unknown command 'trian'", "did you mean train?"]);
    fails(&rustspeed(&["help", "consolidat"]), &["unknown command 'consolidat'", "did you mean consolidate?"]);
    fails(&rustspeed(&["train", "--stpes", "3"]), &["unknown option --stpes", "did you mean --steps?"]);
}

/// Numbers at the edge of their type, zero or NaN are errors that give the allowed range, before anything runs.
#[test]
fn numeric_flags_are_checked_against_their_ranges() {
    let max = u64::MAX.to_string();
    let cases: [(&[&str], &str); 9] = [
        (&["estimate", "--model", "gpt2-124m", "--micro-batch", "0"], "--micro-batch 0: must be between 1 and"),
        (&["estimate", "--model", "gpt2-124m", "--seq-len", "0"], "--seq-len 0: must be between 1 and 1024"),
        (&["estimate", "--model", "gpt2-124m", "--seq-len", "4096"], "--seq-len 4096: must be between 1 and 1024"),
        (&["estimate", "--model", "gpt-tiny", "--world-size", &max], "--world-size"),
        (
            &["train", "--model", "gpt-tiny", "--config", "c", "--data", "d", "--out", "o", "--comm-timeout", &max],
            "--comm-timeout",
        ),
        (
            &["train", "--model", "gpt-tiny", "--config", "c", "--data", "d", "--out", "o", "--threads-per-rank", &max],
            "--threads-per-rank",
        ),
        (
            &["generate", "--run", "r", "--prompt", "a", "--temperature", "NaN"],
            "--temperature NaN: must be between 0 and",
        ),
        (&["generate", "--run", "r", "--prompt", "a", "--temperature", "-0.5"], "--temperature -0.5"),
        (&["generate", "--run", "r", "--prompt", "a", "--temperature", "inf"], "--temperature inf"),
    ];
    for (args, needle) in cases {
        fails(&rustspeed(args), &[needle]);
    }
}

/// A misspelt switch of a monitor block is an unknown key, not a silently disabled block.
#[test]
fn a_misspelt_switch_is_an_unknown_key() {
    let sb = Sandbox::new("switch");
    let config = sb
        .write("tb.json", r#"{"train_batch_size": 2, "optimizer": {"type": "Adam"}, "tensorboard": {"enable": true}}"#);
    let out = sb.path("run");
    fails(
        &rustspeed(&train_args(s(&config), "unused", s(&out), "1")),
        &["tensorboard.enable", "did you mean `enabled`?"],
    );
    assert!(!out.exists(), "nothing was written");
}

/// One writer per run directory: while a run trains, a second `train` on its directory (resumed or fresh) is an
/// error naming the holder's PID; once the holder is killed (kill -9, no clean-up), its lock is gone and the run
/// resumes.
#[test]
fn a_second_writer_is_refused_and_a_dead_holders_lock_does_not_block() {
    let sb = Sandbox::new("lock");
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let run = sb.path("run");
    // train_args saves every 3 steps.
    let long = train_args(s(&config), s(&data), s(&run), "1000000");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_rustspeed"))
        .args(&long)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Bounded wait for its first checkpoint (a few seconds at most on a loaded machine).
    let latest = run.join("checkpoints/latest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !latest.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(latest.exists(), "the holder wrote no checkpoint in time");
    let pid = format!("in use by process {}", holder.id());
    fails(&rustspeed(&[&train_args(s(&config), s(&data), s(&run), "1000000")[..], &["--resume"]].concat()), &[&pid]);
    fails(&rustspeed(&train_args(s(&config), s(&data), s(&run), "5")), &[&pid]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let done: u64 = fs::read_to_string(&latest).unwrap().trim().trim_start_matches("global_step").parse().unwrap();
    let next = (done + 1).to_string();
    ok(&rustspeed(&[&train_args(s(&config), s(&data), s(&run), &next)[..], &["--resume"]].concat()));
}

#[test]
fn bad_input_files_are_named_errors() {
    let sb = Sandbox::new("inputs");
    let out = sb.path("data");
    let missing = sb.path("nope.txt");
    fails(&rustspeed(&["prepare", "--input", s(&missing), "--out", s(&out)]), &["nope.txt"]);
    let empty = sb.write("empty.txt", "");
    fails(&rustspeed(&["prepare", "--input", s(&empty), "--out", s(&out)]), &["empty.txt", "empty"]);
    let binary = sb.write("latin1.txt", b"caf\xe9 au lait");
    fails(&rustspeed(&["prepare", "--input", s(&binary), "--out", s(&out)]), &["latin1.txt", "UTF-8"]);
    assert!(!out.exists(), "a failed prepare leaves no data directory");

    let data = sb.data();
    let meta = fs::read(data.join("meta.json")).unwrap();
    let corpus = sb.path("corpus.txt");
    fails(&rustspeed(&["prepare", "--input", s(&corpus), "--out", s(&data)]), &["--overwrite"]);
    assert_eq!(fs::read(data.join("meta.json")).unwrap(), meta, "existing data untouched");

    fails(&rustspeed(&["prepare", "--inptu", "x"]), &["--inptu", "did you mean --input"]);
    fails(&rustspeed(&["trian"]), &["unknown command 'trian'"]);
}

#[test]
fn bad_configs_presets_and_checkpoints_are_named_errors() {
    let sb = Sandbox::new("train");
    let data = sb.data();
    let run = sb.path("run");
    let train = |config: &Path, model: &str, extra: &[&str]| {
        let steps = if extra.contains(&"--resume") { "4" } else { "2" };
        let mut a = vec![
            "train",
            "--model",
            model,
            "--config",
            s(config),
            "--data",
            s(&data),
            "--out",
            s(&run),
            "--steps",
            steps,
        ];
        a.extend_from_slice(&["--seq-len", "16", "--eval-batches", "1"]);
        a.extend_from_slice(extra);
        rustspeed(&a)
    };
    let malformed = sb.write("malformed.json", r#"{"train_batch_size": 4,"#);
    fails(&train(&malformed, "gpt-tiny", &[]), &["malformed.json"]);
    let wrong_type = sb.write("type.json", r#"{"train_batch_size": "4", "optimizer": {"type": "Adam"}}"#);
    fails(&train(&wrong_type, "gpt-tiny", &[]), &["train_batch_size"]);
    let triple = sb.write("triple.json", r#"{"train_batch_size": 8, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2, "optimizer": {"type": "Adam"}}"#);
    fails(&train(&triple, "gpt-tiny", &[]), &["8 != 3 * 2 * 1"]);
    let seed_shape = sb.write("seed.json", r#"{"train_batch_size": 4, "fp16": true, "optimizer": {"type": "Adam"}}"#);
    fails(&train(&seed_shape, "gpt-tiny", &[]), &["fp16", "\"enabled\": true"]);
    let unknown_key = sb.write("unknown.json", r#"{"train_batch_size": 4, "optimizer": {"type": "Adam"}, "zero_optimization": {"stage3_prefetch_bucket_sise": 1}}"#);
    fails(
        &train(&unknown_key, "gpt-tiny", &[]),
        &["zero_optimization.stage3_prefetch_bucket_sise", "stage3_prefetch_bucket_size"],
    );

    let good = sb.write("good.json", CONFIG);
    fails(&train(&good, "gpt-huge", &[]), &["gpt-huge", "gpt-tiny"]);
    fails(&train(&good, "gpt-bench", &[]), &["8192", "vocabulary"]);
    fails(&train(&good, "gpt-tiny", &["--resume"]), &["--resume"]);
    assert!(!run.join("checkpoints").exists());

    ok(&train(&good, "gpt-tiny", &[]));
    let metrics = fs::read(run.join("metrics.csv")).unwrap();
    fails(&train(&good, "gpt-tiny", &[]), &["already holds a run", "--resume"]);
    assert_eq!(fs::read(run.join("metrics.csv")).unwrap(), metrics, "existing run untouched");

    let model_file = run.join("checkpoints/global_step2/model.safetensors");
    let bytes = fs::read(&model_file).unwrap();
    fs::write(&model_file, &bytes[..bytes.len() - 100]).unwrap();
    fails(&train(&good, "gpt-tiny", &["--resume"]), &["model.safetensors", "truncated"]);
    fails(&rustspeed(&["generate", "--run", s(&run), "--prompt", "the"]), &["truncated"]);
}

#[test]
fn two_ranks_train_like_one() {
    let sb = Sandbox::new("ranks");
    let data = sb.data();
    let zero1 = sb.write("zero1.json", CONFIG.replacen('{', r#"{"zero_optimization": {"stage": 1}, "#, 1));
    let (one, two) = (sb.path("one"), sb.path("two"));
    ok(&rustspeed(&train_args(s(&zero1), s(&data), s(&one), "4")));
    ok(&rustspeed(&[&train_args(s(&zero1), s(&data), s(&two), "4")[..], &["--world-size", "2"]].concat()));
    let losses = |run: &Path| -> Vec<f64> {
        metrics_without_timing(run)[1..].iter().map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect()
    };
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 4);
    // The same global batches, reduced over two ranks instead of one: equal up to fp32 summation order.
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4 * x, "{a:?} vs {b:?}");
    }
    assert!(two.join("checkpoints/global_step4/optimizer_rank001.safetensors").exists());
    // A copy of the two-rank run resumes on one rank at stage 3: the state is resharded, the change reported,
    // and the losses continue the two-rank run's up to the fp32 order of the reductions.
    let on_one = sb.path("two-on-one");
    copy_dir(&two, &on_one);
    let zero3 = sb.write("zero3.json", CONFIG.replacen('{', r#"{"zero_optimization": {"stage": 3}, "#, 1));
    let resumed = ok(&rustspeed(&[&train_args(s(&zero3), s(&data), s(&on_one), "6")[..], &["--resume"]].concat()));
    assert!(
        resumed.contains("world size 2 -> 1; ZeRO stage 1 -> 3; config zero_optimization.stage 1 -> 3"),
        "{resumed}"
    );
    // Resuming on the same two ranks continues exactly like an uninterrupted two-rank run.
    let two_ranks = ["--world-size", "2"];
    ok(&rustspeed(&[&train_args(s(&zero1), s(&data), s(&two), "6")[..], &two_ranks, &["--resume"]].concat()));
    let straight = sb.path("straight-two");
    ok(&rustspeed(&[&train_args(s(&zero1), s(&data), s(&straight), "6")[..], &two_ranks].concat()));
    assert_eq!(metrics_without_timing(&two), metrics_without_timing(&straight), "two-rank resume differs");
    let (c, d) = (losses(&on_one), losses(&straight));
    assert_eq!(c.len(), 6);
    for (x, y) in c.iter().zip(&d) {
        assert!((x - y).abs() < 1e-4 * x, "resumed on one rank {c:?} vs two ranks {d:?}");
    }
    let merged = sb.path("merged.safetensors");
    ok(&rustspeed(&["consolidate", s(&two), "--out", s(&merged)]));
    let single = sb.path("single.safetensors");
    ok(&rustspeed(&["consolidate", s(&one), "--out", s(&single)]));
    // One file of the same tensors; the values agree up to the fp32 summation order of the reductions.
    assert_eq!(fs::metadata(&merged).unwrap().len(), fs::metadata(&single).unwrap().len());
}

#[test]
fn stage_3_trains_like_stage_0_and_its_sharded_checkpoints_generate_export_and_consolidate() {
    let sb = Sandbox::new("zero3");
    let data = sb.data();
    let zero = |extra: &str| CONFIG.replacen('{', &format!(r#"{{"zero_optimization": {{{extra}}}, "#), 1);
    let zero0 = sb.write("zero0.json", zero(r#""stage": 0"#));
    let zero3 = sb.write("zero3.json", zero(r#""stage": 3, "stage3_param_persistence_threshold": 0"#));
    let gather =
        r#""stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": true"#;
    let zero3_gather = sb.write("zero3g.json", zero(gather));
    let two = ["--world-size", "2"];
    let run =
        |config: &Path, out: &Path| ok(&rustspeed(&[&train_args(s(config), s(&data), s(out), "4")[..], &two].concat()));
    let (base, sharded, gathered) = (sb.path("zero0"), sb.path("zero3"), sb.path("zero3g"));
    run(&zero0, &base);
    let out = run(&zero3, &sharded);
    assert!(out.contains("ZeRO stage 3"), "{out}");
    run(&zero3_gather, &gathered);
    let losses = |run: &Path| -> Vec<f64> {
        metrics_without_timing(run)[1..].iter().map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect()
    };
    for (x, y) in losses(&base).iter().zip(&losses(&sharded)) {
        assert!((x - y).abs() < 1e-4 * x, "stage 3 {:?} vs stage 0 {:?}", losses(&sharded), losses(&base));
    }
    // Each rank saved its shares; the whole model file only on request (it gathers the model on rank 0).
    let tag = sharded.join("checkpoints/global_step4");
    assert!(tag.join("optimizer_rank000.safetensors").exists() && tag.join("optimizer_rank001.safetensors").exists());
    assert!(!tag.join("model.safetensors").exists(), "stage 3 wrote the whole model without being asked");
    assert!(gathered.join("checkpoints/global_step4/model.safetensors").exists());
    // generate, export and consolidate read the partitions (DeepSpeed's zero_to_fp32) and agree with the file
    // gathered at save time.
    let text = ok(&rustspeed(&["generate", "--run", s(&sharded), "--prompt", "the ", "--tokens", "20", "--seed", "1"]));
    assert!(text.starts_with("the "), "{text}");
    let (a, b) = (sb.path("a.safetensors"), sb.path("b.safetensors"));
    ok(&rustspeed(&["consolidate", s(&sharded), "--out", s(&a)]));
    ok(&rustspeed(&["consolidate", s(&gathered), "--out", s(&b)]));
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "consolidated weights differ");
    ok(&rustspeed(&["export", "--run", s(&sharded), "--out", s(&sb.path("hf.safetensors"))]));
}

#[test]
fn fp16_overflows_are_skipped_reported_and_resumed_exactly() {
    // An initial scale of 2^24 overflows fp16 (the logits' gradient alone is ~2^24 / (B·T) > 65504): the fused
    // rule halves the scale on each overflowing step until the gradients fit.
    let sb = Sandbox::new("fp16");
    let data = sb.data();
    let config = sb.write(
        "fp16.json",
        r#"{"train_batch_size": 4, "optimizer": {"type": "Adam", "params": {"lr": 0.003}},
            "fp16": {"enabled": true, "initial_scale_power": 24}}"#,
    );
    let (straight, split) = (sb.path("straight"), sb.path("split"));
    let out = ok(&rustspeed(&train_args(s(&config), s(&data), s(&straight), "16")));
    assert!(out.contains("fp16") && out.contains("skipped: fp16 overflow (first in"), "{out}");
    let rows = metrics_without_timing(&straight);
    let skipped: Vec<&String> = rows.iter().filter(|r| r.split(',').nth(6) == Some("1")).collect();
    assert!(!skipped.is_empty() && skipped.len() < 15, "{rows:?}");
    assert!(skipped.iter().all(|r| !r.ends_with(',')), "skipped rows name the layer: {skipped:?}");
    assert!(rows[1].contains(",16777216,1,"), "the first step overflows at 2^24: {}", rows[1]);

    ok(&rustspeed(&train_args(s(&config), s(&data), s(&split), "6")));
    ok(&rustspeed(&[&train_args(s(&config), s(&data), s(&split), "16")[..], &["--resume"]].concat()));
    assert_eq!(rows, metrics_without_timing(&split), "the resumed fp16 run differs");

    let bf16 =
        sb.write("bf16.json", r#"{"train_batch_size": 4, "optimizer": {"type": "Adam"}, "bf16": {"enabled": true}}"#);
    let out = ok(&rustspeed(&train_args(s(&bf16), s(&data), s(&sb.path("bf16")), "3")));
    assert!(out.contains("bf16") && !out.contains("skipped"), "{out}");
}

/// Opt-in (about 5 minutes in release): `cargo test --release -p rustspeed --test cli -- --ignored`. gpt-tiny on
/// tinyshakespeare (from the workspace's `../shared`) for 1500 steps in fp32, bf16 and fp16: at every validation
/// the 16-bit runs' loss is within 2% of the fp32 run's at the same step.
#[test]
#[ignore]
fn tinyshakespeare_in_16_bits_validates_within_two_percent_of_fp32() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/tinyshakespeare.txt");
    assert!(corpus.exists(), "{} is needed for this check", corpus.display());
    let sb = Sandbox::new("shakespeare16");
    let data = sb.path("data");
    ok(&rustspeed(&["prepare", "--input", s(&corpus), "--out", s(&data)]));
    let example =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gpt-tiny.json")).unwrap();
    let val_losses = |block: &str| {
        let config = example.trim_end().trim_end_matches('}').to_string() + block + "}";
        let name = if block.is_empty() { "fp32" } else { &block[3..7] };
        let config = sb.write(&format!("{name}.json"), config);
        let run = sb.path(name);
        let args = ["train", "--model", "gpt-tiny", "--config", s(&config), "--data", s(&data), "--out", s(&run)];
        ok(&rustspeed(&[&args[..], &["--steps", "1500", "--eval-every", "250"]].concat()));
        let rows = fs::read_to_string(run.join("metrics.csv")).unwrap();
        rows.lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(5).filter(|v| !v.is_empty()).map(|v| v.parse::<f64>().unwrap()))
            .collect::<Vec<_>>()
    };
    let fp32 = val_losses("");
    for block in [r#", "bf16": {"enabled": true}"#, r#", "fp16": {"enabled": true}"#] {
        let half = val_losses(block);
        assert_eq!(half.len(), fp32.len());
        for (k, (h, f)) in half.iter().zip(&fp32).enumerate() {
            assert!((h - f).abs() <= 0.02 * f, "{block}: validation {k}: {h} vs fp32 {f}");
        }
    }
}
