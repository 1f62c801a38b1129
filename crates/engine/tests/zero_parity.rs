//! Data parallelism and ZeRO stages 0-3 on the `threads` communicator against the single-rank run: the same
//! global batches, split over ranks and micro-steps as the distributed sampler does, give the same losses and
//! parameters (up to the order of fp32 sums).

use rustspeed_comm::threads::{ThreadComm, ThreadGroup};
use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::Engine;
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, LlamaConfig, LstmConfig, ModelConfig};
use std::path::Path;
use std::time::Duration;

/// Sequences per optimizer step over all ranks.
const GLOBAL_BATCH: usize = 8;
const SEQ_LEN: usize = 6;
const STEPS: usize = 10;
/// Reductions over ranks and micro-steps add the same terms in another order (fp32): loss and parameters
/// agree to about 1e-6 relative; 20x margin.
const LOSS_RTOL: f32 = 2e-5;
const PARAM_ATOL: f32 = 2e-5;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Each model with the optimizer of its fixture: AdamW for GPT and Llama, SGD with momentum (the seed's) for the
/// LSTM.
/// SGD is not scale-invariant, so a wrong gradient average shows in its losses at once.
fn models() -> [(&'static str, ModelConfig, &'static str); 3] {
    [
        (
            "gpt",
            ModelConfig::Gpt(GptConfig { vocab_size: 19, block_size: 8, n_layer: 2, n_head: 2, n_embd: 8 }),
            r#"{"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}}"#,
        ),
        (
            // Grouped-query (2 query heads share 1 key/value head), untied head, biases: every switch at once.
            "llama",
            ModelConfig::Llama(LlamaConfig {
                vocab_size: 19,
                hidden_size: 8,
                intermediate_size: 12,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                num_key_value_heads: 1,
                head_dim: 4,
                max_position_embeddings: 8,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                tie_word_embeddings: false,
                attention_bias: true,
                mlp_bias: true,
                initializer_range: 0.2,
            }),
            r#"{"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}}"#,
        ),
        (
            "lstm",
            ModelConfig::Lstm(LstmConfig { vocab_size: 17, embedding_dim: 6, hidden_size: 8, num_layers: 2 }),
            r#"{"type": "SGD", "params": {"lr": 0.5, "momentum": 0.9}}"#,
        ),
    ]
}

/// The global batch of step `step`: `GLOBAL_BATCH` sequences of tokens and targets.
fn global_batch(step: usize, vocab: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(1000 + step as u64);
    let mut seq = || (0..SEQ_LEN).map(|_| rng.below(vocab as u64) as u32).collect::<Vec<u32>>();
    (0..GLOBAL_BATCH).map(|_| (seq(), seq())).collect()
}

fn config(stage: u8, gas: usize, optimizer: &str) -> DeepSpeedConfig {
    config_with(stage, gas, optimizer, &Extra::default())
}

/// Keys added to the test config: inside `zero_optimization` (e.g. `, "overlap_comm": true`) and at the top
/// level (e.g. `"activation_checkpointing": {}, `).
#[derive(Clone, Copy, Default)]
struct Extra<'a> {
    zero: &'a str,
    top: &'a str,
}

/// Stage 3 with every group sharded (DeepSpeed's default persistence threshold of 1e5 elements would keep these
/// tiny models' groups whole on every rank).
const SHARD_ALL: &str = r#", "stage3_param_persistence_threshold": 0"#;

fn config_with(stage: u8, gas: usize, optimizer: &str, extra: &Extra) -> DeepSpeedConfig {
    let (zero, top) = (extra.zero, extra.top);
    let zero = match stage {
        3 if !zero.contains("persistence") => format!("{zero}{SHARD_ALL}"),
        _ => zero.to_string(),
    };
    DeepSpeedConfig::from_json_str(&format!(
        r#"{{{top}"train_batch_size": {GLOBAL_BATCH}, "gradient_accumulation_steps": {gas}, "gradient_clipping": 1.0,
            "zero_optimization": {{"stage": {stage}{zero}}}, "zero_allow_untested_optimizer": true,
            "optimizer": {optimizer}}}"#
    ))
    .unwrap()
}

/// Overlapped reduction with tiny buckets: many collectives per backward, issued from the communication
/// thread while the backward runs.
const OVERLAP: &str = r#", "overlap_comm": true, "reduce_bucket_size": 37"#;

/// Trains one rank with the model stored as `E`; returns its losses and final parameters (as fp32).
fn train_rank<E: Element>(
    model: &ModelConfig,
    optimizer: &str,
    stage: u8,
    gas: usize,
    extra: &Extra,
    comm: ThreadComm,
) -> (Vec<f32>, Vec<f32>) {
    let (rank, world) = (rustspeed_comm::Communicator::rank(&comm), rustspeed_comm::Communicator::world_size(&comm));
    let m = model.build_as::<E>().unwrap();
    // Only rank 0's initialization counts: the engine broadcasts it. Other ranks start from another seed to
    // prove that.
    let params = m.layout().init_params(7 + rank as u64);
    let mut engine =
        Engine::with_communicator(m, params, config_with(stage, gas, optimizer, extra), Box::new(comm)).unwrap();
    let micro = engine.batch_sizes().micro_batch_size;
    let losses = (0..STEPS)
        .map(|step| {
            let batch = global_batch(step, model.vocab_size());
            let mut k = 0;
            let report = engine.train_batch(SEQ_LEN, |x, y| {
                // The distributed sampler's split: micro-step k of rank r takes sequences
                // [(k·W + r)·B, (k·W + r + 1)·B) of the global batch.
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
    (losses, engine.params_f32().unwrap())
}

/// How a group runs: random delays before collectives, overlapped bucketed reduction.
#[derive(Clone, Copy)]
struct Mode {
    delays: bool,
    overlap: bool,
}

const PLAIN: Mode = Mode { delays: false, overlap: false };

fn train_group(
    model: &ModelConfig,
    optimizer: &str,
    stage: u8,
    world: usize,
    gas: usize,
    mode: Mode,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let zero = if mode.overlap { OVERLAP } else { "" };
    train_group_with::<f32>(model, optimizer, stage, world, gas, mode, &Extra { zero, top: "" })
}

/// [`train_group`] with extra config keys, the model stored as `E` (the precision block is in `extra.top`).
fn train_group_with<E: Element>(
    model: &ModelConfig,
    optimizer: &str,
    stage: u8,
    world: usize,
    gas: usize,
    mode: Mode,
    extra: &Extra,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let comms = ThreadGroup::new(world, TIMEOUT);
    if mode.delays {
        comms.iter().for_each(|c| c.inject_delays(Duration::from_micros(500), 3));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| s.spawn(move || train_rank::<E>(model, optimizer, stage, gas, extra, c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check_matrix(mode: Mode, stages: &[u8], worlds: &[usize], gases: &[usize]) {
    for (name, model, optimizer) in models() {
        let reference = train_group(&model, optimizer, 0, 1, 1, PLAIN).remove(0);
        for &stage in stages {
            for &world in worlds {
                for &gas in gases {
                    let ranks = train_group(&model, optimizer, stage, world, gas, mode);
                    let case = format!("{name} stage {stage} world {world} GAS {gas}");
                    for (rank, (losses, params)) in ranks.iter().enumerate() {
                        for (step, (a, b)) in losses.iter().zip(&reference.0).enumerate() {
                            assert!((a - b).abs() <= LOSS_RTOL * b.abs(), "{case} rank {rank} step {step}: {a} vs {b}");
                        }
                        let worst = params.iter().zip(&reference.1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                        assert!(worst <= PARAM_ATOL, "{case} rank {rank}: parameters differ by {worst}");
                    }
                    assert!(ranks.iter().all(|r| r.1 == ranks[0].1), "{case}: ranks hold different parameters");
                }
            }
        }
    }
}

/// 16-bit runs against the single-rank run in the same precision. Gradients rounded to 16 bits on each rank (at
/// stage 1 also accumulated over micro-steps in 16 bits, DeepSpeed's default with ZeRO; at stage 0 their average
/// rounded back) differ from the single rank's by roundings that ten steps compound: observed worst loss 9.6e-4
/// relative (gpt bf16, stage 1, W = 4, GAS 2), 3.9e-4 (gpt fp16), under 4e-5 for the LSTM; 2x margin.
const SIXTEEN_BIT_LOSS_RTOL: f32 = 2e-3;
/// AdamW (lr 0.01) turns a rounding-sized gradient difference near zero into a full-size step of the other sign:
/// observed worst 3.4e-2 (gpt bf16), 1.5e-2 (gpt fp16), 2e-3 (LSTM, SGD); bounded by five such steps.
const SIXTEEN_BIT_PARAM_ATOL: f32 = 5e-2;

fn check_16bit_matrix<E: Element>(block: &str, stages: &[u8], worlds: &[usize], gases: &[usize]) {
    let extra = Extra { zero: "", top: block };
    let delays = Mode { delays: true, overlap: false };
    for (name, model, optimizer) in models() {
        let reference = train_group_with::<E>(&model, optimizer, 0, 1, 1, PLAIN, &extra).remove(0);
        for &stage in stages {
            for &world in worlds {
                for &gas in gases {
                    let ranks = train_group_with::<E>(&model, optimizer, stage, world, gas, delays, &extra);
                    let case = format!("{name} {} stage {stage} world {world} GAS {gas}", E::NAME);
                    let (losses, params) = &ranks[0];
                    for (step, (a, b)) in losses.iter().zip(&reference.0).enumerate() {
                        assert!((a - b).abs() <= SIXTEEN_BIT_LOSS_RTOL * b.abs(), "{case} step {step}: {a} vs {b}");
                    }
                    let worst = params.iter().zip(&reference.1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(worst <= SIXTEEN_BIT_PARAM_ATOL, "{case}: parameters differ by {worst}");
                    assert!(ranks.iter().all(|r| r.1 == ranks[0].1), "{case}: ranks hold different parameters");
                }
            }
        }
    }
}

#[test]
fn every_stage_world_size_and_accumulation_matches_one_rank_in_bf16_and_fp16() {
    check_16bit_matrix::<bf16>(r#""bf16": {"enabled": true}, "#, &[0, 1, 2, 3], &[1, 2, 4], &[1, 2]);
    check_16bit_matrix::<f16>(
        r#""fp16": {"enabled": true, "initial_scale_power": 8}, "#,
        &[0, 1, 2, 3],
        &[1, 2, 4],
        &[1, 2],
    );
}

#[test]
fn every_stage_world_size_and_accumulation_matches_one_rank() {
    check_matrix(PLAIN, &[0, 1, 2, 3], &[1, 2, 4], &[1, 2]);
}

#[test]
fn overlapped_bucketed_reduction_matches_one_rank() {
    check_matrix(Mode { delays: false, overlap: true }, &[0, 1, 2, 3], &[2, 4], &[1, 2]);
}

#[test]
fn random_delays_before_collectives_change_nothing() {
    check_matrix(Mode { delays: true, overlap: true }, &[0, 1, 2, 3], &[4], &[2]);
}

/// Stage 3 under tight residency limits (nothing prefetched, nothing kept for reuse, one group live) and with
/// the small groups persistent on every rank: the same training as one rank.
#[test]
fn stage_3_limits_and_persistence_change_nothing() {
    let tight = r#", "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0,
        "stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0, "reduce_bucket_size": 7"#;
    let persistent = r#", "stage3_param_persistence_threshold": 100"#;
    let eager = r#", "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 1000000"#;
    for (name, model, optimizer) in models() {
        let reference = train_group_with::<f32>(&model, optimizer, 0, 1, 1, PLAIN, &Extra::default()).remove(0);
        for zero in [tight, persistent, eager] {
            let extra = Extra { zero, top: "" };
            let ranks =
                train_group_with::<f32>(&model, optimizer, 3, 2, 2, Mode { delays: true, overlap: true }, &extra);
            for (a, b) in ranks[0].0.iter().zip(&reference.0) {
                assert!((a - b).abs() <= LOSS_RTOL * b.abs(), "{name} {zero}: {a} vs {b}");
            }
            let worst = ranks[1].1.iter().zip(&reference.1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst <= PARAM_ATOL, "{name} {zero}: parameters differ by {worst}");
        }
    }
}

/// Activation checkpointing recomputes what the backward needs: at every stage the same losses and parameters,
/// bit for bit.
#[test]
fn activation_checkpointing_changes_nothing_at_any_stage() {
    let on = Extra { zero: "", top: r#""activation_checkpointing": {"cpu_checkpointing": true}, "# };
    for (name, model, optimizer) in models() {
        for stage in [0, 1, 2, 3] {
            let plain = train_group_with::<f32>(&model, optimizer, stage, 2, 2, PLAIN, &Extra::default());
            let checkpointed = train_group_with::<f32>(&model, optimizer, stage, 2, 2, PLAIN, &on);
            assert!(plain == checkpointed, "{name} stage {stage}: checkpointing changed the training");
        }
    }
}

/// Trains `steps` steps on ranks of a group, optionally resuming from and/or saving to `dir`; returns rank 0's
/// losses.
fn run_with_checkpoint(
    stage: u8,
    world: usize,
    steps: std::ops::Range<usize>,
    resume: Option<&Path>,
    save: Option<&Path>,
) -> Vec<f32> {
    let (_, model, optimizer) = models().into_iter().next().unwrap();
    let spec = ModelSpec { preset: "test".into(), config: model.clone() };
    let comms = ThreadGroup::new(world, TIMEOUT);
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let (model, spec, steps) = (&model, &spec, steps.clone());
                s.spawn(move || {
                    let rank = rustspeed_comm::Communicator::rank(&comm);
                    let m = model.build().unwrap();
                    let params = m.layout().init_params(7);
                    let mut engine =
                        Engine::with_communicator(m, params, config(stage, 1, optimizer), Box::new(comm)).unwrap();
                    if let Some(dir) = resume {
                        engine.load_checkpoint(dir).unwrap();
                    }
                    let micro = engine.batch_sizes().micro_batch_size;
                    let losses = steps
                        .map(|step| {
                            let batch = global_batch(step, model.vocab_size());
                            let report = engine.train_batch(SEQ_LEN, |x, y| {
                                x.clear();
                                y.clear();
                                for (tokens, targets) in &batch[rank * micro..(rank + 1) * micro] {
                                    x.extend_from_slice(tokens);
                                    y.extend_from_slice(targets);
                                }
                            });
                            report.unwrap().loss
                        })
                        .collect();
                    if let Some(dir) = save {
                        engine.save_checkpoint(dir, spec, serde_json::Value::Null).unwrap();
                    }
                    losses
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.into_iter().next().unwrap()
}

#[test]
fn sharded_checkpoints_resume_exactly_on_the_same_world_size() {
    for stage in [0u8, 1, 2, 3] {
        let dir = std::env::temp_dir().join(format!("rustspeed-zero-ckpt-{stage}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let straight = run_with_checkpoint(stage, 2, 0..6, None, None);
        let mut split = run_with_checkpoint(stage, 2, 0..3, None, Some(&dir));
        split.extend(run_with_checkpoint(stage, 2, 3..6, Some(&dir), None));
        assert_eq!(split, straight, "stage {stage}: resumed losses differ");
        if stage > 0 {
            assert!(dir.join("global_step3/optimizer_rank001.safetensors").exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn saving_on_a_subset_of_ranks_fails_naming_the_missing_rank() {
    let dir = std::env::temp_dir().join(format!("rustspeed-zero-subset-{}", std::process::id()));
    let (_, model, optimizer) = models().into_iter().next().unwrap();
    let spec = ModelSpec { preset: "test".into(), config: model.clone() };
    let mut comms = ThreadGroup::new(2, Duration::from_millis(500));
    let lone = comms.remove(0);
    let idle = comms.remove(0);
    let errors = std::thread::scope(|s| {
        let model_of_absent = model.clone();
        let absent = s.spawn(move || {
            let model = model_of_absent;
            // Rank 1 builds its engine (the broadcast at construction) but never saves.
            let m = model.build().unwrap();
            let p = m.layout().init_params(7);
            let engine = Engine::with_communicator(m, p, config(1, 1, optimizer), Box::new(idle)).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            drop(engine);
        });
        let m = model.build().unwrap();
        let p = m.layout().init_params(7);
        let engine = Engine::with_communicator(m, p, config(1, 1, optimizer), Box::new(lone)).unwrap();
        let err = engine.save_checkpoint(&dir, &spec, serde_json::Value::Null).unwrap_err();
        absent.join().unwrap();
        err
    });
    let message = errors.to_string();
    assert!(message.contains("rank(s) [1]") && message.contains("barrier"), "{message}");
    assert!(!dir.join("latest").exists(), "no checkpoint is published");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rank 1 trains `rank1_steps` steps and then either stalls (`stall`) or returns (its engine and communicator
/// are dropped, as when a process dies); rank 0 keeps training and must fail naming rank 1.
fn rank0_error_when_rank1_stops(stall: bool, timeout: Duration) -> (String, Duration) {
    let (_, model, optimizer) = models().into_iter().next().unwrap();
    let mut comms = ThreadGroup::new(2, timeout);
    let (c0, c1) = (comms.remove(0), comms.remove(0));
    std::thread::scope(|s| {
        let model = &model;
        let engine = |comm: ThreadComm| {
            let m = model.build().unwrap();
            let p = m.layout().init_params(7);
            Engine::with_communicator(m, p, config(2, 1, optimizer), Box::new(comm)).unwrap()
        };
        let step = |e: &mut Engine, rank: usize, k: usize| {
            let batch = global_batch(k, model.vocab_size());
            let micro = e.batch_sizes().micro_batch_size;
            e.train_batch(SEQ_LEN, |x, y| {
                x.clear();
                y.clear();
                for (tokens, targets) in &batch[rank * micro..(rank + 1) * micro] {
                    x.extend_from_slice(tokens);
                    y.extend_from_slice(targets);
                }
            })
        };
        s.spawn(move || {
            let mut e = engine(c1);
            for k in 0..2 {
                step(&mut e, 1, k).unwrap();
            }
            if stall {
                std::thread::sleep(timeout * 3);
            }
        });
        let mut e = engine(c0);
        let started = std::time::Instant::now();
        let err = (0..10).find_map(|k| step(&mut e, 0, k).err()).expect("rank 0 must fail");
        (err.to_string(), started.elapsed())
    })
}

#[test]
fn a_dead_or_stalled_rank_is_named_within_the_timeout() {
    let (dead, waited) = rank0_error_when_rank1_stops(false, Duration::from_secs(30));
    assert!(dead.contains("rank 1 left the group"), "{dead}");
    assert!(waited < Duration::from_secs(10), "a dead peer is reported at once, not after the timeout: {waited:?}");
    // Long enough that healthy collectives never hit it on a loaded 2-core machine.
    let timeout = Duration::from_millis(1500);
    let (stalled, waited) = rank0_error_when_rank1_stops(true, timeout);
    assert!(stalled.contains("waiting for rank(s) [1]"), "{stalled}");
    assert!(waited < timeout * 3, "reported within the timeout: {waited:?}");
}
