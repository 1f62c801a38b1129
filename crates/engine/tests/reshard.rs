//! Checkpoints that load anywhere: a run saved at one world size, ZeRO stage and precision resumes at another
//! (the saved partitions are mapped back to whole tensors and resharded on load), and continues the loss
//! trajectory of the uninterrupted run with the same global batch.

use rustspeed_comm::threads::ThreadGroup;
use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::persist::load_weights;
use rustspeed_engine::Engine;
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, ModelConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GLOBAL_BATCH: usize = 8;
const SEQ_LEN: usize = 6;
const VOCAB: usize = 19;
/// Another world size or stage sums the same terms in another order (fp32): the losses agree to about 1e-6
/// relative, as in `zero_parity.rs`; 20x margin.
const FP32_LOSS_RTOL: f32 = 2e-5;
/// An fp16 run resumed at another world size and stage: 16-bit gradients reduced over another number of ranks
/// round differently (observed 3.4e-7 relative); 50x margin.
const RESHARD_16BIT_LOSS_RTOL: f32 = 2e-5;
/// A run resumed in another precision against the run it continues: the model copy is rounded to 8 (bf16) or 11
/// (fp16) significant bits, or no longer is (fp32) — observed 3e-5 relative over three steps; a lost optimizer
/// state moves them by ~3e-3.
const PRECISION_CHANGE_LOSS_RTOL: f32 = 5e-4;

fn model() -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: VOCAB, block_size: 8, n_layer: 2, n_head: 2, n_embd: 8 })
}

fn precision_block<E: Element>() -> &'static str {
    match E::NAME {
        "bf16" => r#", "bf16": {"enabled": true}"#,
        "fp16" => r#", "fp16": {"enabled": true, "initial_scale_power": 8}"#,
        _ => "",
    }
}

fn config<E: Element>(stage: u8) -> DeepSpeedConfig {
    DeepSpeedConfig::from_json_str(&format!(
        r#"{{"train_batch_size": {GLOBAL_BATCH}, "gradient_clipping": 1.0,
            "zero_optimization": {{"stage": {stage}, "stage3_param_persistence_threshold": 0}},
            "optimizer": {{"type": "AdamW", "params": {{"lr": 0.01, "weight_decay": 0.1}}}}{}}}"#,
        precision_block::<E>()
    ))
    .unwrap()
}

fn global_batch(step: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(1000 + step as u64);
    let mut seq = || (0..SEQ_LEN).map(|_| rng.below(VOCAB as u64) as u32).collect::<Vec<u32>>();
    (0..GLOBAL_BATCH).map(|_| (seq(), seq())).collect()
}

/// What a run ended with: rank 0's losses, and the model copy as fp32 right after any resume (before training).
struct Outcome {
    losses: Vec<f32>,
    loaded: Option<Vec<f32>>,
    changes: Vec<String>,
}

/// Trains `steps` on `world` thread ranks at `stage` in `E`, resuming from and/or saving to a directory.
fn run<E: Element>(
    world: usize,
    stage: u8,
    steps: std::ops::Range<usize>,
    resume: Option<&Path>,
    save: Option<&Path>,
) -> Outcome {
    let model = model();
    let spec = ModelSpec { preset: "test".into(), config: model.clone() };
    let comms = ThreadGroup::new(world, Duration::from_secs(60));
    let mut outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (model, spec, steps) = (&model, &spec, steps.clone());
                s.spawn(move || {
                    let rank = rustspeed_comm::Communicator::rank(&comm);
                    let m = model.build_as::<E>().unwrap();
                    let params = m.layout().init_params(7);
                    let mut e = Engine::with_communicator(m, params, config::<E>(stage), Box::new(comm)).unwrap();
                    let (mut loaded, mut changes) = (None, Vec::new());
                    if let Some(dir) = resume {
                        changes = e.load_checkpoint(dir).unwrap().changes;
                        loaded = Some(e.params_f32().unwrap());
                    }
                    let micro = e.batch_sizes().micro_batch_size;
                    let losses = steps
                        .map(|step| {
                            let batch = global_batch(step);
                            let mut k = 0;
                            let report = e.train_batch(SEQ_LEN, |x, y| {
                                let first = (k * world + rank) * micro;
                                x.clear();
                                y.clear();
                                for (tokens, targets) in &batch[first..first + micro] {
                                    x.extend_from_slice(tokens);
                                    y.extend_from_slice(targets);
                                }
                                k += 1;
                            });
                            report.unwrap().loss
                        })
                        .collect();
                    if let Some(dir) = save {
                        e.save_checkpoint(dir, spec, serde_json::Value::Null).unwrap();
                    }
                    Outcome { losses, loaded, changes }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    outcomes.swap_remove(0)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustspeed-reshard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn assert_close(case: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{case}");
    for (step, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= rtol * b.abs(), "{case}: step {step}: {a} vs {b} ({got:?} vs {want:?})");
    }
}

/// The model copy after a resume into `E` is the saved fp32 masters rounded to `E`, exactly.
fn assert_rounded<E: Element>(case: &str, loaded: &[f32], masters: &[f32]) {
    let rounded: Vec<f32> = masters.iter().map(|&w| E::from_f32(w).to_f32()).collect();
    assert!(loaded == rounded.as_slice(), "{case}: the resumed model copy is not the rounded masters");
}

#[test]
fn saved_at_4_ranks_stage_1_fp32_resumes_at_2_ranks_stage_3_and_at_1_rank_stage_0() {
    let dir = temp_dir("s1w4");
    let straight = run::<f32>(4, 1, 0..6, None, None).losses;
    let first = run::<f32>(4, 1, 0..3, None, Some(&dir));
    assert_close("before the save", &first.losses, &straight[..3], 0.0);
    let masters = load_weights(&dir, None).unwrap().params;

    // fp32 at (2, stage 3) and (1, stage 0): the moments are resharded exactly, so the trajectory continues to
    // fp32 reduction-order tolerance.
    let on_two = run::<f32>(2, 3, 3..6, Some(&dir), None);
    assert_eq!(on_two.changes, ["world size 4 -> 2", "ZeRO stage 1 -> 3", "config zero_optimization.stage 1 -> 3"]);
    assert_eq!(on_two.loaded.as_deref(), Some(masters.as_slice()), "stage 3 gathers the saved parameters");
    assert_close("(4, 1) -> (2, 3) fp32", &on_two.losses, &straight[3..], FP32_LOSS_RTOL);
    let on_one = run::<f32>(1, 0, 3..6, Some(&dir), None);
    assert_eq!(on_one.changes, ["world size 4 -> 1", "ZeRO stage 1 -> 0", "config zero_optimization.stage 1 -> 0"]);
    assert_close("(4, 1) -> (1, 0) fp32", &on_one.losses, &straight[3..], FP32_LOSS_RTOL);

    // bf16 at (2, stage 3): the model copy is the masters rounded; the losses follow the fp32 run closely.
    let bf16_two = run::<bf16>(2, 3, 3..6, Some(&dir), None);
    assert_eq!(bf16_two.changes[0], "precision fp32 -> bf16 (from the fp32 master weights)");
    assert_rounded::<bf16>("(4, 1) fp32 -> (2, 3) bf16", bf16_two.loaded.as_deref().unwrap(), &masters);
    assert_close("(4, 1) fp32 -> (2, 3) bf16", &bf16_two.losses, &straight[3..], PRECISION_CHANGE_LOSS_RTOL);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saved_at_2_ranks_stage_3_fp16_resumes_at_4_ranks_stage_2_and_back_in_fp32() {
    let dir = temp_dir("s3w2");
    let straight = run::<f16>(2, 3, 0..6, None, None).losses;
    run::<f16>(2, 3, 0..3, None, Some(&dir));
    let masters = load_weights(&dir, None).unwrap().params;
    let on_four = run::<f16>(4, 2, 3..6, Some(&dir), None);
    assert_eq!(on_four.changes, ["world size 2 -> 4", "ZeRO stage 3 -> 2", "config zero_optimization.stage 3 -> 2"]);
    assert_rounded::<f16>("(2, 3) -> (4, 2) fp16", on_four.loaded.as_deref().unwrap(), &masters);
    // The loss scaler's state carries over; 16-bit gradients reduced over another number of ranks round
    // differently.
    assert_close("(2, 3) -> (4, 2) fp16", &on_four.losses, &straight[3..], RESHARD_16BIT_LOSS_RTOL);
    // And into fp32 on one rank: the model is the fp32 masters themselves.
    let fp32_one = run::<f32>(1, 0, 3..6, Some(&dir), None);
    assert_eq!(fp32_one.loaded.as_deref(), Some(masters.as_slice()), "fp32 resumes from the masters' bits");
    assert_close("(2, 3) fp16 -> (1, 0) fp32", &fp32_one.losses, &straight[3..], PRECISION_CHANGE_LOSS_RTOL);
    std::fs::remove_dir_all(&dir).unwrap();
}
