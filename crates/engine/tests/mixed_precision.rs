//! fp16 and bf16 training against the fp32 run and against DeepSpeed's loss-scaling rules: 20-step loss parity of
//! the tiny GPT and LSTM, an injected overflow that skips exactly its step (and halves the scale, or spends the
//! hysteresis, as DeepSpeed's scalers do), the minimum-scale error, exact resume with the scaler's state, the
//! non-finite-loss error of bf16, and the 2 + 2 + 4 + 8 bytes per parameter of mixed-precision Adam.

use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::persist::load_weights;
use rustspeed_engine::{Engine, EngineError};
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{preset, ModelConfig};
use std::path::PathBuf;

/// Per-step loss of the bf16 run vs the fp32 run over 20 steps. One rounding to 8 significant bits (2^-8 = 0.4%)
/// per stored value averages out in the loss, but the differences compound through training; observed worst
/// 7.6e-4 (gpt-tiny), so ~6x margin.
const BF16_LOSS_RTOL: f32 = 5e-3;
/// The same for fp16 (11 significant bits): observed worst 7.0e-4 — after 20 steps the compounding of earlier
/// rounding differences, not the format's precision, dominates, so the same bound.
const FP16_LOSS_RTOL: f32 = 5e-3;

fn tiny(name: &str, vocab: usize) -> ModelConfig {
    preset(name).unwrap().config(vocab).unwrap()
}

fn config(json: &str) -> DeepSpeedConfig {
    DeepSpeedConfig::from_json_str(json).unwrap()
}

fn engine<E: Element>(model: &ModelConfig, json: &str) -> Engine<E> {
    let m = model.build_as::<E>().unwrap();
    let params = m.layout().init_params(7);
    Engine::new(m, params, config(json)).unwrap()
}

/// Four fixed batches of `[B, T]` from a sparse random Markov chain over `vocab` tokens (each token has three
/// likely successors), served in a cycle: a model learns them within a few steps, so the loss moves.
struct Cycle {
    batches: Vec<(Vec<u32>, Vec<u32>)>,
    next: usize,
}

impl Cycle {
    fn new(vocab: usize, b: usize, t: usize) -> Cycle {
        let mut rng = Rng::new(5);
        let successors: Vec<[u32; 3]> =
            (0..vocab).map(|_| std::array::from_fn(|_| rng.below(vocab as u64) as u32)).collect();
        let batches = (0..4)
            .map(|_| {
                let mut seq = vec![rng.below(vocab as u64) as u32];
                while seq.len() < b * t + 1 {
                    let last = *seq.last().unwrap() as usize;
                    seq.push(successors[last][rng.below(3) as usize]);
                }
                (seq[..b * t].to_vec(), seq[1..].to_vec())
            })
            .collect();
        Cycle { batches, next: 0 }
    }

    fn fill(&mut self, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        let (bx, by) = &self.batches[self.next % self.batches.len()];
        self.next += 1;
        x.clone_from(bx);
        y.clone_from(by);
    }
}

fn losses<E: Element>(model: &ModelConfig, json: &str, t: usize, steps: usize) -> Vec<f32> {
    let mut e = engine::<E>(model, json);
    let b = e.batch_sizes().micro_batch_size;
    let mut data = Cycle::new(model.vocab_size(), b, t);
    (0..steps).map(|_| e.train_batch(t, |x, y| data.fill(x, y)).unwrap().loss).collect()
}

fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f32::max)
}

#[test]
fn twenty_steps_in_bf16_and_fp16_track_fp32() {
    let adam = r#"{"train_batch_size": 8, "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.1}}"#;
    let sgd = r#"{"train_batch_size": 8, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "SGD", "params": {"lr": 0.5, "momentum": 0.9}}"#;
    for (name, json) in [("gpt-tiny", adam), ("lstm-tiny", sgd)] {
        let model = tiny(name, 40);
        let t = 32;
        let fp32 = losses::<f32>(&model, &format!("{json}}}"), t, 20);
        let bf = losses::<bf16>(&model, &format!(r#"{json}, "bf16": {{"enabled": true}}}}"#), t, 20);
        let fp = losses::<f16>(
            &model,
            &format!(r#"{json}, "fp16": {{"enabled": true, "initial_scale_power": 12}}}}"#),
            t,
            20,
        );
        assert!(fp32[19] < 0.9 * fp32[0], "{name}: the fp32 run must learn for the comparison to mean something");
        let (bf_err, fp_err) = (worst_relative(&bf, &fp32), worst_relative(&fp, &fp32));
        assert!(bf_err <= BF16_LOSS_RTOL, "{name}: bf16 losses {bf:?} vs fp32 {fp32:?}: worst {bf_err}");
        assert!(fp_err <= FP16_LOSS_RTOL, "{name}: fp16 losses {fp:?} vs fp32 {fp32:?}: worst {fp_err}");
        assert_ne!(bf, fp32, "{name}: bf16 must actually round");
        assert_ne!(fp, fp32, "{name}: fp16 must actually round");
    }
}

/// One accumulation window of `e` with the gradient of parameter `poison` (if any) set to inf before the step.
fn window<E: Element>(
    e: &mut Engine<E>,
    data: &mut Cycle,
    t: usize,
    poison: Option<usize>,
) -> rustspeed_engine::StepReport {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    loop {
        data.fill(&mut x, &mut y);
        e.forward(&x, &y, t).unwrap();
        e.backward().unwrap();
        if e.is_gradient_accumulation_boundary() {
            if let Some(index) = poison {
                e.inject_gradient(index, f32::INFINITY).unwrap();
            }
        }
        if let Some(report) = e.step().unwrap() {
            return report;
        }
    }
}

#[test]
fn an_injected_overflow_skips_exactly_its_step_and_halves_the_scale() {
    let model = tiny("gpt-tiny", 30);
    let t = 16;
    let layout = model.build().unwrap().layout().clone();
    let poisoned = layout.find("transformer.h.1.mlp.c_fc.weight").unwrap();
    let index = layout.range(poisoned).start + 5;
    // Stage 0 follows the fused FP16_Optimizer rule: every overflow halves the scale.
    let json = r#"{"train_batch_size": 4, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "Adam", "params": {"lr": 0.001}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.001, "warmup_num_steps": 10}},
        "fp16": {"enabled": true, "initial_scale_power": 10}}"#;
    let mut clean = engine::<f16>(&model, json);
    let mut e = engine::<f16>(&model, json);
    let (mut clean_data, mut data) = (Cycle::new(30, 2, t), Cycle::new(30, 2, t));
    let clean_reports: Vec<_> = (0..4).map(|_| window(&mut clean, &mut clean_data, t, None)).collect();
    let mut reports = Vec::new();
    for step in 1..=5u64 {
        let before = e.params().unwrap().to_vec();
        let lr_before = e.lr();
        let report = window(&mut e, &mut data, t, (step == 3).then_some(index));
        assert_eq!(report.skipped, step == 3, "step {step}");
        if step == 3 {
            assert_eq!(&*e.params().unwrap(), before.as_slice(), "a skipped step leaves the parameters alone");
            assert_eq!(e.lr(), lr_before, "a skipped step does not advance the schedule");
            assert_eq!(report.overflow_layer.as_deref(), Some("h.1"));
            assert!(!report.grad_norm.is_finite());
        }
        reports.push(report);
    }
    let scales: Vec<f64> = reports.iter().map(|r| r.loss_scale).collect();
    assert_eq!(scales, [1024.0, 1024.0, 1024.0, 512.0, 512.0], "halved after the overflow, not before");
    assert_eq!(e.counters().skipped_steps, 1);
    assert_eq!(e.counters().global_steps, 5);
    // Before the overflow the run is the clean run; the step after it uses the lr the skipped step would have.
    assert_eq!(reports[..2].iter().map(|r| r.loss).collect::<Vec<_>>(), [clean_reports[0].loss, clean_reports[1].loss]);
    assert_eq!(reports[3].lr, clean_reports[2].lr);
    assert_eq!(reports[4].lr, clean_reports[3].lr);
}

#[test]
fn zero_stages_spend_hysteresis_first_and_a_static_scale_never_changes() {
    let model = tiny("lstm-tiny", 30);
    let t = 8;
    let index = 3; // in the embedding table
    let base = r#""train_batch_size": 2, "optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}"#;
    // ZeRO's DynamicLossScaler with hysteresis 2: the first overflow only spends hysteresis, the second halves.
    let dynamic = format!(r#"{{{base}, "fp16": {{"enabled": true, "initial_scale_power": 8, "hysteresis": 2}}}}"#);
    let mut e = engine::<f16>(&model, &dynamic);
    let mut data = Cycle::new(30, 2, t);
    let scales: Vec<(f64, bool)> = [false, true, true, false]
        .iter()
        .map(|&p| window(&mut e, &mut data, t, p.then_some(index)))
        .map(|r| (r.loss_scale, r.skipped))
        .collect();
    assert_eq!(scales, [(256.0, false), (256.0, true), (256.0, true), (128.0, false)]);
    assert_eq!(e.counters().skipped_steps, 2);

    let fixed = format!(r#"{{{base}, "fp16": {{"enabled": true, "loss_scale": 1024}}}}"#);
    let mut e = engine::<f16>(&model, &fixed);
    let scales: Vec<(f64, bool)> = [true, false, true]
        .iter()
        .map(|&p| window(&mut e, &mut data, t, p.then_some(index)))
        .map(|r| (r.loss_scale, r.skipped))
        .collect();
    assert_eq!(scales, [(1024.0, true), (1024.0, false), (1024.0, true)]);
    assert_eq!(window(&mut e, &mut data, t, None).overflow_layer, None);
}

#[test]
fn an_overflow_at_the_minimum_scale_is_an_error_that_says_what_to_try() {
    let model = tiny("lstm-tiny", 30);
    let json = r#"{"train_batch_size": 2, "optimizer": {"type": "Adam"},
        "fp16": {"enabled": true, "initial_scale_power": 1, "min_loss_scale": 1}}"#;
    let mut e = engine::<f16>(&model, json);
    let mut data = Cycle::new(30, 2, 8);
    assert!(window(&mut e, &mut data, 8, Some(0)).skipped);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    data.fill(&mut x, &mut y);
    e.forward(&x, &y, 8).unwrap();
    e.backward().unwrap();
    e.inject_gradient(0, f32::NAN).unwrap();
    match e.step() {
        Err(EngineError::Precision(m)) => assert!(m.contains("minimum loss scale 1") && m.contains("bf16"), "{m}"),
        other => panic!("expected the minimum-scale error, got {other:?}"),
    }
}

#[test]
fn a_non_finite_bf16_loss_names_the_step_and_the_first_non_finite_layer() {
    let model = tiny("gpt-tiny", 30);
    let m = model.build_as::<bf16>().unwrap();
    let mut params = m.layout().init_params(1);
    let gain = m.layout().find("transformer.h.1.ln_2.weight").unwrap();
    params[m.layout().range(gain).start] = f32::INFINITY;
    let mut e = Engine::new(
        m,
        params,
        config(r#"{"train_batch_size": 2, "optimizer": {"type": "Adam"}, "bf16": {"enabled": true}}"#),
    )
    .unwrap();
    let mut data = Cycle::new(30, 2, 8);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    data.fill(&mut x, &mut y);
    match e.forward(&x, &y, 8) {
        Err(EngineError::NonFinite { step: 1, what }) => {
            assert!(what.contains("h.1") && what.contains("bf16"), "{what}")
        }
        other => panic!("expected a non-finite loss error, got {other:?}"),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustspeed-mixed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Trains 3 windows (the second overflowing, so the scaler's state is not the initial one), saves, trains 3 more;
/// a fresh engine resumed from the checkpoint must repeat those 3 exactly.
fn resume_is_exact<E: Element>(stage: u8, precision_block: &str) {
    let model = tiny("lstm-tiny", 30);
    let json = format!(
        r#"{{"train_batch_size": 4, "gradient_accumulation_steps": 2,
        "zero_optimization": {{"stage": {stage}, "stage3_param_persistence_threshold": 0}},
        "optimizer": {{"type": "AdamW", "params": {{"lr": 0.01}}}}, {precision_block}}}"#
    );
    let spec = ModelSpec { preset: "lstm-tiny".into(), config: model.clone() };
    let dir = temp_dir(&format!("{}-{stage}", E::NAME));
    let mut first = engine::<E>(&model, &json);
    let mut data = Cycle::new(30, 2, 8);
    for k in 0..3 {
        window(&mut first, &mut data, 8, (k == 1 && E::NAME == "fp16").then_some(7));
    }
    first.save_checkpoint(&dir, &spec, serde_json::Value::Null).unwrap();
    let mut resumed = engine::<E>(&model, &json);
    resumed.load_checkpoint(&dir).unwrap();
    assert_eq!(resumed.precision(), first.precision(), "{}: scaler state", E::NAME);
    let mut resumed_data = Cycle { batches: data.batches.clone(), next: data.next };
    let straight: Vec<_> = (0..3).map(|_| window(&mut first, &mut data, 8, None)).collect();
    let again: Vec<_> = (0..3).map(|_| window(&mut resumed, &mut resumed_data, 8, None)).collect();
    let strip = |r: &rustspeed_engine::StepReport| (r.loss, r.grad_norm, r.lr, r.loss_scale, r.skipped);
    assert_eq!(straight.iter().map(strip).collect::<Vec<_>>(), again.iter().map(strip).collect::<Vec<_>>());
    assert_eq!(*resumed.params().unwrap(), *first.params().unwrap(), "{} stage {stage}: parameters", E::NAME);

    // The checkpoint's weights for export are the fp32 master weights: the model copy is their rounding.
    let weights = load_weights(&dir, None).unwrap();
    let rounded: Vec<E> = weights.params.iter().map(|&w| E::from_f32(w)).collect();
    let saved = {
        let mut e = engine::<E>(&model, &json);
        e.load_checkpoint(&dir).unwrap();
        e.params().unwrap().to_vec()
    };
    assert_eq!(rounded, saved, "{} stage {stage}: masters round to the model copy", E::NAME);
    assert_ne!(weights.params, saved.iter().map(|w| w.to_f32()).collect::<Vec<_>>(), "masters keep fp32 bits");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resuming_a_mixed_precision_run_is_exact() {
    for stage in [0, 1, 2, 3] {
        resume_is_exact::<f16>(stage, r#""fp16": {"enabled": true, "initial_scale_power": 10, "hysteresis": 1}"#);
        resume_is_exact::<bf16>(stage, r#""bf16": {"enabled": true}"#);
    }
}

#[test]
fn mixed_precision_adam_holds_2_2_4_8_bytes_per_parameter() {
    let model = tiny("gpt-tiny", 65);
    let p = model.build().unwrap().num_params();
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}, "fp16": {"enabled": true}}"#;
    let m = engine::<f16>(&model, json).memory();
    assert_eq!((m.parameters, m.gradients, m.master_weights, m.optimizer_state), (2 * p, 2 * p, 4 * p, 8 * p));
    assert_eq!(m.total(), 16 * p, "DeepSpeed's 16 bytes per parameter with Adam");
    // bf16 without ZeRO accumulates gradients in fp32 by default (DeepSpeed's grad_accum_dtype): 4 more bytes;
    // asking for bf16 accumulation gives them back.
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}, "bf16": {"enabled": true}}"#;
    assert_eq!(engine::<bf16>(&model, json).memory().total(), 20 * p);
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}, "bf16": {"enabled": true},
        "data_types": {"grad_accum_dtype": "bf16"}}"#;
    assert_eq!(engine::<bf16>(&model, json).memory().total(), 16 * p);
    let json = r#"{"train_batch_size": 1, "optimizer": {"type": "Adam"}}"#;
    let m = engine::<f32>(&model, json).memory();
    assert_eq!((m.master_weights, m.total()), (0, 16 * p), "fp32: 4 + 4 + 8, the parameters are the masters");
}

/// 16-bit gradients of a rank's share of the batch, averaged over ranks in fp32, against the single rank's
/// 16-bit gradients of the whole batch: the roundings differ and compound over 10 steps; observed worst 1.5e-4
/// (bf16, stage 2) and 3.6e-5 (fp16), so ~7x margin.
const DISTRIBUTED_16BIT_LOSS_RTOL: f32 = 1e-3;

/// Losses of `world` thread ranks at `stage` (with overlapped, bucketed reduction) training gpt-tiny on the same
/// global batches, and whether all ranks ended with bit-identical parameters.
fn group_losses<E: Element>(world: usize, stage: u8, precision_block: &str) -> (Vec<f32>, bool) {
    use rustspeed_comm::threads::ThreadGroup;
    let model = tiny("gpt-tiny", 30);
    let (global, t) = (8, 16);
    let json = format!(
        r#"{{"train_batch_size": {global}, "gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
        "zero_optimization": {{"stage": {stage}, "overlap_comm": true, "reduce_bucket_size": 5000,
            "stage3_param_persistence_threshold": 0}},
        "optimizer": {{"type": "AdamW", "params": {{"lr": 0.003}}}}, {precision_block}}}"#
    );
    let comms = ThreadGroup::new(world, std::time::Duration::from_secs(60));
    let results: Vec<(Vec<f32>, Vec<E>)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (model, json) = (&model, &json);
                s.spawn(move || {
                    let rank = rustspeed_comm::Communicator::rank(&comm);
                    let m = model.build_as::<E>().unwrap();
                    let params = m.layout().init_params(7);
                    let mut e = Engine::with_communicator(m, params, config(json), Box::new(comm)).unwrap();
                    let micro = e.batch_sizes().micro_batch_size;
                    // One global batch of 8 sequences per step; micro-step k of rank r takes sequences
                    // [(k·W + r)·B, (k·W + r + 1)·B), as the distributed sampler does.
                    let mut data = Cycle::new(30, global, t);
                    let losses = (0..10)
                        .map(|_| {
                            let (mut gx, mut gy) = (Vec::new(), Vec::new());
                            data.fill(&mut gx, &mut gy);
                            let mut k = 0;
                            let report = e.train_batch(t, |x, y| {
                                let first = (k * world + rank) * micro * t;
                                x.clear();
                                y.clear();
                                x.extend_from_slice(&gx[first..first + micro * t]);
                                y.extend_from_slice(&gy[first..first + micro * t]);
                                k += 1;
                            });
                            report.unwrap().loss
                        })
                        .collect();
                    (losses, e.params().unwrap().to_vec())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let identical = results.iter().all(|(_, p)| p == &results[0].1);
    (results[0].0.clone(), identical)
}

#[test]
fn two_ranks_in_16_bits_track_the_single_rank_run_at_every_zero_stage() {
    fn check<E: Element>(block: &str) {
        let (single, _) = group_losses::<E>(1, 0, block);
        for stage in [0, 1, 2, 3] {
            let (losses, identical) = group_losses::<E>(2, stage, block);
            assert!(identical, "{} stage {stage}: ranks diverged", E::NAME);
            let worst = worst_relative(&losses, &single);
            assert!(worst <= DISTRIBUTED_16BIT_LOSS_RTOL, "{} stage {stage}: {losses:?} vs {single:?}", E::NAME);
        }
    }
    check::<bf16>(r#""bf16": {"enabled": true}"#);
    check::<f16>(r#""fp16": {"enabled": true, "initial_scale_power": 12}"#);
}

#[test]
fn the_seeds_config_trains_lstm_seed_in_fp16_with_a_static_scale_of_1024() {
    // examples/seed-lstm.json as shipped: "fp16": {"enabled": true, "loss_scale": 1024}, Adam, batch 64.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-lstm.json");
    let json = std::fs::read_to_string(path).unwrap();
    let model = tiny("lstm-seed", 10000);
    let mut e = engine::<f16>(&model, &json);
    let (b, t) = (e.batch_sizes().micro_batch_size, 16);
    let mut data = Cycle::new(10000, b, t);
    data.batches.truncate(1); // the same batch twice: the second loss must be lower
    let first = window(&mut e, &mut data, t, None);
    let second = window(&mut e, &mut data, t, None);
    for r in [&first, &second] {
        assert_eq!((r.loss_scale, r.skipped), (1024.0, false));
        assert!(r.loss.is_finite() && r.grad_norm.is_finite());
    }
    assert!((first.loss - 10000f32.ln()).abs() < 0.1, "an untrained model is near uniform: {}", first.loss);
    assert!(second.loss < first.loss, "{} then {}", first.loss, second.loss);
    assert_eq!(e.memory().master_weights, 4 * model.build().unwrap().num_params());
}

/// The engine sums the same widened gradients as the f64 oracle, in fp32 and in another order, and reports the norm
/// in fp32: ~1e-7 relative per operation over a few terms per element, far below this.
const ACCUMULATION_NORM_RTOL: f64 = 1e-5;

#[test]
fn gradients_accumulate_in_fp32_when_asked_and_by_default_for_bf16_without_zero() {
    // Oracle: the same window run as fp32-accumulated micro-steps by hand. The first window of a bf16 engine with
    // GAS 4 and lr 0 (the parameters stay put) must report the norm of the fp32 sum of its 4 micro-steps' bf16
    // gradients: each micro-step's gradient is a bf16 model's own backward, summed in f64 here.
    let model = tiny("lstm-tiny", 30);
    let t = 8;
    let (b, gas) = (2, 4);
    let json = |accumulation: &str| {
        format!(
            r#"{{"train_batch_size": {}, "gradient_accumulation_steps": {gas},
            "optimizer": {{"type": "SGD", "params": {{"lr": 0.0}}}}, "bf16": {{"enabled": true}}{accumulation}}}"#,
            b * gas
        )
    };
    let mut data = Cycle::new(30, b, t);
    let mut m = model.build_as::<bf16>().unwrap();
    let master = m.layout().init_params(7);
    let params: Vec<bf16> = master.iter().map(|&w| bf16::from_f32(w)).collect();
    let mut sum = vec![0.0f64; params.len()];
    for batch in &data.batches {
        let mut grads = vec![bf16::from_f32(0.0); params.len()];
        m.forward(&params, &batch.0, Some(&batch.1), b, t).unwrap();
        m.backward(&params, &mut grads, 1.0 / gas as f32).unwrap();
        sum.iter_mut().zip(&grads).for_each(|(s, g)| *s += g.to_f32() as f64);
    }
    let expected = sum.iter().map(|g| g * g).sum::<f64>().sqrt();
    let mut norm = |accumulation: &str| {
        data.next = 0;
        window(&mut engine::<bf16>(&model, &json(accumulation)), &mut data, t, None).grad_norm
    };
    let fp32_sum = norm("");
    assert!(((fp32_sum as f64 - expected) / expected).abs() < ACCUMULATION_NORM_RTOL, "{fp32_sum} vs {expected}");
    let explicit = norm(r#", "data_types": {"grad_accum_dtype": "fp32"}"#);
    assert_eq!(explicit, fp32_sum);
    let in_bf16 = norm(r#", "data_types": {"grad_accum_dtype": "bf16"}"#);
    assert_ne!(in_bf16, fp32_sum, "bf16 accumulation rounds every micro-step's sum");

    // Over several windows at stage 1 (one rank: the partition is everything) the fp32 sum must be emptied after
    // each step exactly as at stage 0: the two runs are the same arithmetic.
    let windows = |stage: u8| {
        let extra = format!(
            r#", "data_types": {{"grad_accum_dtype": "fp32"}}, "zero_optimization": {{"stage": {stage}}},
            "zero_allow_untested_optimizer": true"#
        );
        let sgd = json(&extra).replace(r#""lr": 0.0"#, r#""lr": 0.5"#);
        let mut e = engine::<bf16>(&model, &sgd);
        let mut data = Cycle::new(30, b, t);
        (0..3).map(|_| window(&mut e, &mut data, t, None).loss).collect::<Vec<_>>()
    };
    assert_eq!(windows(1), windows(0));

    let refused = |extra: &str| Engine::<bf16>::new(model.build_as().unwrap(), master.clone(), config(&json(extra)));
    let err = refused(r#", "data_types": {"grad_accum_dtype": "fp16"}"#).err().unwrap().to_string();
    assert!(err.contains("grad_accum_dtype") && err.contains("\"fp16\""), "{err}");
    let err = refused(r#", "communication_data_type": "bf16""#).err().unwrap().to_string();
    assert!(err.contains("communication_data_type") && err.contains("fp32"), "{err}");
}
