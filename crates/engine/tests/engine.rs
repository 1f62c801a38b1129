//! The engine against independent oracles: a hand-written training loop over the same model and optimizer
//! functions, DeepSpeed's counters and accumulation semantics, exact resume from a checkpoint, misuse errors.

use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::{Engine, EngineError, EnginePhase};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, LstmConfig, Model, ModelConfig};
use rustspeed_optim::{adam_step, AdamHyper};
use std::path::PathBuf;

/// Accumulating 2 micro-batches of B/2 against one batch of B: the same mean, summed in another order (fp32).
const ACCUMULATION_RTOL: f32 = 1e-5;

fn gpt() -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: 17, block_size: 8, n_layer: 1, n_head: 2, n_embd: 8 })
}

fn lstm() -> ModelConfig {
    ModelConfig::Lstm(LstmConfig { vocab_size: 13, embedding_dim: 6, hidden_size: 8, num_layers: 2 })
}

fn config(json: &str) -> DeepSpeedConfig {
    DeepSpeedConfig::from_json_str(json).unwrap()
}

fn engine(model: &ModelConfig, json: &str) -> Engine {
    let m: Model = model.build().unwrap();
    let params = m.layout().init_params(3);
    Engine::new(m, params, config(json)).unwrap()
}

/// A stream of random `[B, T]` batches (tokens, targets).
struct Batches {
    rng: Rng,
    vocab: usize,
    len: usize,
}

impl Batches {
    fn new(vocab: usize, b: usize, t: usize) -> Self {
        Batches { rng: Rng::new(99), vocab, len: b * t }
    }

    fn fill(&mut self, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        x.clear();
        y.clear();
        for _ in 0..self.len {
            x.push(self.rng.below(self.vocab as u64) as u32);
            y.push(self.rng.below(self.vocab as u64) as u32);
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustspeed-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn engine_steps_equal_a_hand_written_adamw_loop() {
    let json =
        r#"{"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}}}"#;
    let mut e = engine(&gpt(), json);
    let mut model = gpt().build().unwrap();
    let mut params = model.layout().init_params(3);
    let (mut m, mut v, mut grads) = (vec![0.0; params.len()], vec![0.0; params.len()], vec![0.0; params.len()]);
    let mut batches = Batches::new(17, 2, 8);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for step in 1..=4u64 {
        batches.fill(&mut x, &mut y);
        let report = e.train_batch(8, |a, b| {
            a.clone_from(&x);
            b.clone_from(&y);
        });
        let report = report.unwrap();
        grads.fill(0.0);
        let loss = model.forward(&params, &x, Some(&y), 2, 8).unwrap().unwrap();
        model.backward(&params, &mut grads, 1.0).unwrap();
        for entry in model.layout().entries() {
            let wd = if entry.spec.weight_decay { 0.1 } else { 0.0 };
            let hp = AdamHyper {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
                bias_correction: true,
                adam_w_mode: true,
            };
            let r = entry.range();
            adam_step(&hp, step, &mut params[r.clone()], &grads[r.clone()], &mut m[r.clone()], &mut v[r]);
        }
        assert_eq!(report.loss, loss.mean, "step {step}");
        assert_eq!(report.step, step);
        assert_eq!(&*e.params().unwrap(), params.as_slice(), "parameters after step {step}");
    }
    let c = e.counters();
    assert_eq!((c.micro_steps, c.global_steps, c.global_samples, c.skipped_steps), (4, 4, 8, 0));
}

#[test]
fn gradient_accumulation_matches_one_big_batch() {
    let opt = r#""optimizer": {"type": "SGD", "params": {"lr": 0.5, "momentum": 0.9}}"#;
    let mut whole = engine(&lstm(), &format!(r#"{{"train_batch_size": 4, {opt}}}"#));
    let mut split = engine(&lstm(), &format!(r#"{{"train_batch_size": 4, "gradient_accumulation_steps": 2, {opt}}}"#));
    assert_eq!(split.batch_sizes().micro_batch_size, 2);
    let mut batches = Batches::new(13, 4, 5);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for step in 1..=3 {
        batches.fill(&mut x, &mut y);
        let a = whole.train_batch(5, |p, q| {
            p.clone_from(&x);
            q.clone_from(&y);
        });
        let mut half = 0;
        let b = split.train_batch(5, |p, q| {
            let rows = 2 * 5;
            p.clear();
            p.extend_from_slice(&x[half * rows..(half + 1) * rows]);
            q.clear();
            q.extend_from_slice(&y[half * rows..(half + 1) * rows]);
            half += 1;
        });
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a.loss - b.loss).abs() <= ACCUMULATION_RTOL * a.loss, "step {step}: {} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() <= ACCUMULATION_RTOL * a.grad_norm.max(1e-3));
        let worst = whole
            .params()
            .unwrap()
            .iter()
            .zip(split.params().unwrap().iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "step {step}: parameters differ by {worst}");
    }
    assert_eq!(split.counters().micro_steps, 6);
    assert_eq!(split.counters().global_steps, 3);
    assert_eq!(split.counters().global_samples, 12);
}

#[test]
fn clipping_bounds_the_update_and_reports_the_unclipped_norm() {
    // With SGD (no momentum) the update is lr · clipped gradient, so its norm is lr · min(‖g‖, clip).
    let json =
        r#"{"train_batch_size": 2, "gradient_clipping": 0.05, "optimizer": {"type": "SGD", "params": {"lr": 1.0}}}"#;
    let mut e = engine(&gpt(), json);
    let before = e.params().unwrap().to_vec();
    let mut batches = Batches::new(17, 2, 8);
    let report = e.train_batch(8, |x, y| batches.fill(x, y)).unwrap();
    let moved =
        before.iter().zip(e.params().unwrap().iter()).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    assert!(report.grad_norm > 0.05, "the test needs a gradient larger than the clip, got {}", report.grad_norm);
    let expected = 0.05 * report.grad_norm as f64 / (report.grad_norm as f64 + 1e-6);
    assert!((moved - expected).abs() < 1e-4, "update norm {moved}, expected {expected}");
}

#[test]
fn the_schedule_advances_once_per_optimizer_step_with_deepspeed_offsets() {
    // WarmupLR, linear: lr(t) = min + (max - min) · t / N with t = applied steps - 1 and lr(-1) = min (DeepSpeed
    // sets the lr at construction, then steps the scheduler after each optimizer step).
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "SGD", "params": {"lr": 1.0}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 0.4, "warmup_num_steps": 4, "warmup_type": "linear"}}}"#;
    let mut e = engine(&lstm(), json);
    let mut batches = Batches::new(13, 1, 3);
    let lrs: Vec<f64> = (0..6).map(|_| e.train_batch(3, |x, y| batches.fill(x, y)).unwrap().lr).collect();
    let expected = [0.0, 0.0, 0.1, 0.2, 0.3, 0.4];
    for (got, want) in lrs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
}

#[test]
fn misuse_and_unsupported_configs_are_typed_errors() {
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}}"#;
    let mut e = engine(&lstm(), json);
    assert!(matches!(e.backward(), Err(EngineError::Phase { called: "backward", .. })));
    assert!(matches!(e.step(), Err(EngineError::Phase { called: "step", .. })));
    e.forward(&[1, 2], &[2, 3], 2).unwrap();
    assert!(matches!(e.forward(&[1, 2], &[2, 3], 2), Err(EngineError::Phase { called: "forward", .. })));
    assert!(matches!(e.evaluate(2, [(&[1u32, 2][..], &[2u32, 3][..])]), Err(EngineError::Phase { .. })));
    e.backward().unwrap();
    assert_eq!(e.phase(), EnginePhase::Backwarded);
    assert!(e.step().unwrap().is_some());
    assert!(matches!(e.forward(&[1, 99], &[2, 3], 2), Err(EngineError::Model(_))), "token out of range");

    let build = |json: &str| {
        let m = lstm().build().unwrap();
        let p = m.layout().init_params(0);
        Engine::new(m, p, config(json))
    };
    let fp16 = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}, "fp16": {"enabled": true}}"#;
    // An fp32 engine for an fp16 config: the caller must pick the element type from the config.
    assert!(matches!(build(fp16), Err(EngineError::Config(m)) if m.contains("stores fp32") && m.contains("fp16")));
    let nvme = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 3,
        "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}}"#;
    assert!(matches!(build(nvme), Err(EngineError::Unsupported(m)) if m.contains("offload_param.device \"nvme\"")));
    let lamb3 = r#"{"train_batch_size": 1, "optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 3}}"#;
    assert!(matches!(build(lamb3), Err(EngineError::Unsupported(m)) if m.contains("Lamb")));
    let lamb = r#"{"train_batch_size": 1, "optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 1}}"#;
    assert!(matches!(build(lamb), Err(EngineError::Unsupported(m)) if m.contains("Lamb")));
    let sgd = r#"{"train_batch_size": 1, "optimizer": {"type": "SGD"}, "zero_optimization": {"stage": 2}}"#;
    assert!(matches!(build(sgd), Err(EngineError::Config(m)) if m.contains("zero_allow_untested_optimizer")));
    let no_opt = r#"{"train_batch_size": 1}"#;
    assert!(matches!(build(no_opt), Err(EngineError::Config(m)) if m.contains("\"optimizer\"")));
}

/// Trains `steps` optimizer steps with GAS 2 and returns the losses.
fn train(e: &mut Engine, batches: &mut Batches, steps: usize) -> Vec<f32> {
    (0..steps).map(|_| e.train_batch(4, |x, y| batches.fill(x, y)).unwrap().loss).collect()
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_exactly() {
    let adam = r#"{"train_batch_size": 4, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 0.01, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 10, "warmup_num_steps": 3}}}"#;
    // SGD without momentum has no optimizer state: its checkpoints hold no optimizer file at all.
    let sgd = r#"{"train_batch_size": 4, "gradient_accumulation_steps": 2, "optimizer": {"type": "SGD",
        "params": {"lr": 0.1}}}"#;
    let sgd_zero = r#"{"train_batch_size": 4, "gradient_accumulation_steps": 2, "optimizer": {"type": "SGD",
        "params": {"lr": 0.1}}, "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": true}"#;
    let cases =
        [("gpt", gpt(), adam), ("lstm", lstm(), adam), ("lstm-sgd", lstm(), sgd), ("gpt-sgd-zero", gpt(), sgd_zero)];
    for (name, model, json) in cases {
        let spec = ModelSpec { preset: "test".into(), config: model.clone() };
        let mut straight = engine(&model, json);
        let mut batches = Batches::new(model.vocab_size(), 2, 4);
        let all = train(&mut straight, &mut batches, 6);

        let dir = temp_dir(name);
        let mut first = engine(&model, json);
        let mut batches = Batches::new(model.vocab_size(), 2, 4);
        let mut losses = train(&mut first, &mut batches, 3);
        first.save_checkpoint(&dir, &spec, serde_json::json!({"note": "client"})).unwrap();
        let mut resumed = engine(&model, json);
        let client = resumed.load_checkpoint(&dir).unwrap().client_state;
        assert_eq!(client["note"], "client");
        assert_eq!(resumed.counters(), first.counters());
        losses.extend(train(&mut resumed, &mut batches, 3));
        assert_eq!(losses, all, "{name}: resumed losses differ");
        assert_eq!(*resumed.params().unwrap(), *straight.params().unwrap(), "{name}: resumed parameters differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The manifest's partition plan is checked before anything is allocated from it: shards that do not tile the
/// layout with the sizes the stage gives them are an error naming the problem, not an allocation failure.
#[test]
fn a_manifest_whose_shards_do_not_tile_the_layout_is_an_error() {
    let json = r#"{"train_batch_size": 2, "optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 3,
        "stage3_param_persistence_threshold": 0}}"#;
    let dir = temp_dir("shards");
    let spec = ModelSpec { preset: "test".into(), config: lstm() };
    let mut e = engine(&lstm(), json);
    train(&mut e, &mut Batches::new(lstm().vocab_size(), 2, 4), 1);
    let tag = e.save_checkpoint(&dir, &spec, serde_json::Value::Null).unwrap();
    let path = tag.join("manifest.json");
    let good = std::fs::read_to_string(&path).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&good).unwrap();
    let numel = lstm().build().unwrap().num_params();
    let bad_plans = [
        serde_json::json!([[0, 0, numel, 0], [0, 0, numel, numel], [0, numel, numel, 2 * numel]]),
        serde_json::json!([[0, numel, 1, 0]]),
        serde_json::json!([[0, 5, 5, 0]]),
    ];
    for plan in bad_plans {
        let mut bad = manifest.clone();
        bad["shards"] = plan.clone();
        let text = serde_json::to_string(&bad).unwrap();
        std::fs::write(&path, &text).unwrap();
        let err = engine(&lstm(), json).load_checkpoint(&dir).err().unwrap().to_string();
        assert!(err.contains("fails its checksum"), "{plan}: {err}");
        // Signed as a writer would sign it, the edit is caught by the plan's own check.
        let sum = serde_json::json!({ "crc32": crc32fast::hash(text.as_bytes()), "bytes": text.len() });
        std::fs::write(tag.join("manifest.crc32"), sum.to_string()).unwrap();
        let err = engine(&lstm(), json).load_checkpoint(&dir).err().unwrap().to_string();
        assert!(err.contains("do not tile"), "{plan}: {err}");
        assert!(rustspeed_engine::persist::load_weights(&dir, None).is_err(), "{plan}");
    }
    std::fs::write(&path, &good).unwrap();
    let sum = serde_json::json!({ "crc32": crc32fast::hash(good.as_bytes()), "bytes": good.len() });
    std::fs::write(tag.join("manifest.crc32"), sum.to_string()).unwrap();
    assert!(engine(&lstm(), json).load_checkpoint(&dir).is_ok(), "the restored manifest loads again");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupted_truncated_or_missing_checkpoints_are_errors() {
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "AdamW"}}"#;
    let spec = ModelSpec { preset: "test".into(), config: lstm() };
    let dir = temp_dir("corrupt");
    let mut e = engine(&lstm(), json);
    assert!(matches!(e.load_checkpoint(&dir), Err(EngineError::NoCheckpoint(_))));
    let mut batches = Batches::new(13, 1, 4);
    train(&mut e, &mut batches, 1);
    let tag_dir = e.save_checkpoint(&dir, &spec, serde_json::Value::Null).unwrap();
    let model_file = tag_dir.join("model.safetensors");
    let bytes = std::fs::read(&model_file).unwrap();

    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&model_file, &flipped).unwrap();
    let err = engine(&lstm(), json).load_checkpoint(&dir).err().unwrap().to_string();
    assert!(err.contains("CRC-32") && err.contains("model.safetensors"), "{err}");

    std::fs::write(&model_file, &bytes[..bytes.len() / 2]).unwrap();
    let err = engine(&lstm(), json).load_checkpoint(&dir).err().unwrap().to_string();
    assert!(err.contains("truncated"), "{err}");

    std::fs::write(&model_file, &bytes).unwrap();
    let other = engine(&gpt(), json).load_checkpoint(&dir).err().unwrap().to_string();
    assert!(other.contains("layout differs"), "{other}");
    assert!(engine(&lstm(), json).load_checkpoint(&dir).is_ok(), "the restored file loads again");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rule written outside the optimizer crate plugs into the engine's optimizer through `UpdateRule` alone: the
/// engine sizes and names its state from the rule, and steps every tensor's owned piece with that tensor's
/// weight-decay flag (here: decaying tensors move by `lr·g`, others by `2·lr·g`, and the slot counts steps).
#[test]
fn a_rule_defined_in_a_test_runs_in_the_engine_optimizer() {
    use rustspeed_engine::optimizer::Optimizer;
    use rustspeed_engine::zero::Segment;
    use rustspeed_nn::{Init, ParamLayout, ParamSpec};
    use rustspeed_optim::{StepContext, UpdateRule};

    #[derive(Debug)]
    struct Toy;
    impl UpdateRule for Toy {
        fn name(&self) -> &'static str {
            "Toy"
        }
        fn slot_names(&self) -> &'static [&'static str] {
            &["steps"]
        }
        fn lr(&self) -> f32 {
            0.25
        }
        fn needs_whole_tensors(&self) -> bool {
            false
        }
        fn tested_with_zero(&self) -> bool {
            false
        }
        fn fused_fp16_wrapper(&self) -> bool {
            false
        }
        fn step(&self, context: &StepContext, params: &mut [f32], grads: &[f32], slots: &mut [&mut [f32]]) {
            let factor = if context.decay { 1.0 } else { 2.0 };
            for ((p, g), count) in params.iter_mut().zip(grads).zip(slots[0].iter_mut()) {
                *p -= factor * context.lr * g;
                *count = context.step as f32;
            }
        }
    }
    let mut layout = ParamLayout::default();
    layout.push(ParamSpec::new("w", &[2, 2], Init::Zeros)); // rank 2: decays
    layout.push(ParamSpec::new("b", &[3], Init::Zeros)); // rank 1: does not
                                                         // A rank owning elements 2..6 of the 7 (a partition cutting both tensors), at partition offset 0.
    let segments = [Segment { layout: 2..6, at: 0 }];
    let mut optimizer = Optimizer::new(Box::new(Toy), 4);
    let (mut params, mut grads) = (vec![0.0f32; 4], vec![1.0f32; 4]);
    optimizer.apply(&layout, &mut params, &mut grads, false, 1.0, &segments, 0.5, None);
    assert_eq!(params, [-0.5, -0.5, -1.0, -1.0], "w's elements 2, 3 decay; b's 0, 1 do not");
    let slots: Vec<(&str, Vec<f32>)> = optimizer.slots().map(|(n, s)| (n, s.to_vec())).collect();
    assert_eq!(slots, [("steps", vec![1.0; 4])]);
    assert_eq!(optimizer.applied_steps(), 1);
}
