//! The engine's per-rank byte accounting against the ZeRO paper's model ([`estimate`]), and the sharding it
//! promises: at world size 4, stage 1 holds a quarter of stage 0's optimizer state, stage 2 also a quarter of
//! its gradients (within padding), stage 3 16Ψ/W for parameters, gradients and Adam state; in fp32, fp16 and bf16.
//! Stage 3's gathered parameters stay within the configured limits.

use rustspeed_comm::threads::ThreadGroup;
use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::memory::{estimate, MemoryReport, Workload};
use rustspeed_engine::zero::ZeroStage;
use rustspeed_engine::{Engine, StorageType};
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_nn::{preset, GptConfig, ModelConfig};
use std::time::Duration;

const WORLD: usize = 4;

/// Every rank's accounting for `model` at `stage` over `WORLD` ranks with Adam, stored as `E`.
fn accounting<E: Element>(model: &ModelConfig, stage: u8) -> Vec<MemoryReport> {
    let precision = match E::NAME {
        "fp16" => r#", "fp16": {"enabled": true}"#,
        "bf16" => r#", "bf16": {"enabled": true}"#,
        _ => "",
    };
    let json = format!(
        r#"{{"train_batch_size": 4, "optimizer": {{"type": "Adam"}}{precision},
            "zero_optimization": {{"stage": {stage}, "stage3_param_persistence_threshold": 0}}}}"#
    );
    let comms = ThreadGroup::new(WORLD, Duration::from_secs(60));
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let json = &json;
                s.spawn(move || {
                    let m = model.build_as::<E>().unwrap();
                    let p = m.layout().init_params(0);
                    let e =
                        Engine::with_communicator(m, p, DeepSpeedConfig::from_json_str(json).unwrap(), Box::new(comm))
                            .unwrap();
                    e.memory()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn stage(n: u8) -> ZeroStage {
    ZeroStage::ALL[n as usize]
}

/// The ZeRO paper's stage-3 footprint is exact up to the per-group padding (at most `W - 1` elements per group);
/// 10% is the issue's bound.
const STAGE3_FORMULA_RTOL: f64 = 0.10;

#[test]
fn engine_accounting_matches_the_zero_estimate_and_shards_by_four() {
    check_accounting::<f32>(StorageType::Fp32);
    check_accounting::<f16>(StorageType::Fp16);
    check_accounting::<bf16>(StorageType::Bf16);
}

fn check_accounting<E: Element>(storage: StorageType) {
    for name in ["gpt-tiny", "lstm-tiny"] {
        let model = preset(name).unwrap().config(65).unwrap();
        let params = model.build().unwrap().num_params();
        let per_stage: Vec<MemoryReport> = (0..4u8)
            .map(|n| {
                let ranks = accounting::<E>(&model, n);
                let w = Workload {
                    stage: stage(n),
                    world: WORLD,
                    storage,
                    // DeepSpeed's default grad_accum_dtype: fp32 for bf16 without ZeRO, else the model's type.
                    accumulate_in_fp32: storage == StorageType::Bf16 && n == 0,
                    optimizer_slots: 2,
                    activation_checkpointing: false,
                    micro_batch: 1,
                    seq_len: 8,
                };
                // The gathered groups (stage 3) and per-group gradient buffers (stages 2, 3) are measured by the
                // engine while it runs (none before the first pass); the estimate predicts them separately.
                let predicted = match n {
                    2 | 3 => MemoryReport {
                        activations: 0,
                        gathered_parameters: 0,
                        gradient_staging: 0,
                        ..estimate(&model, params, &w)
                    },
                    _ => MemoryReport { activations: 0, ..estimate(&model, params, &w) },
                };
                for (rank, got) in ranks.iter().enumerate() {
                    assert_eq!(got, &predicted, "{name} {} stage {n} rank {rank}", E::NAME);
                }
                ranks[0]
            })
            .collect();
        // Padding: each rank's partition is ⌈Ψ/4⌉, so at most 3 padding elements per buffer (4 bytes each).
        let padding = 3 * 4;
        let quarter = |full: usize, part: usize| (4 * part).abs_diff(full) <= 4 * padding;
        assert!(quarter(per_stage[0].optimizer_state, per_stage[1].optimizer_state), "{name}: {per_stage:?}");
        assert!(quarter(per_stage[0].optimizer_state, per_stage[2].optimizer_state), "{name}: {per_stage:?}");
        // Stage 2 keeps only the reduced gradient partition, in fp32: a quarter of Ψ fp32 values.
        assert!(quarter(params * 4, per_stage[2].gradients), "{name}: {per_stage:?}");
        assert_eq!(per_stage[0].optimizer_state, params * 2 * 4, "{name}: Adam keeps 8 bytes per parameter");
        // Stage 3: parameters (or the fp32 masters that stand for them), gradients and Adam state, 16Ψ/W.
        let s3 = per_stage[3];
        let held = (s3.parameters + s3.master_weights + s3.gradients + s3.optimizer_state) as f64;
        let formula = 16.0 * params as f64 / WORLD as f64;
        assert!((held - formula).abs() <= STAGE3_FORMULA_RTOL * formula, "{name} {}: {held} vs {formula}", E::NAME);
    }
}

#[test]
fn the_estimate_follows_the_zero_paper_for_gpt2_small() {
    // Ψ = 124,439,808; fp32 Adam: 4Ψ parameters + 4Ψ gradients + 8Ψ state = 16Ψ at stage 0.
    let model = preset("gpt2-124m").unwrap().config(50257).unwrap();
    let psi = 124_439_808usize;
    let w = |stage| Workload {
        stage,
        world: 8,
        storage: StorageType::Fp32,
        accumulate_in_fp32: false,
        optimizer_slots: 2,
        activation_checkpointing: false,
        micro_batch: 4,
        seq_len: 256,
    };
    let s0 = estimate(&model, psi, &w(ZeroStage::Stage0));
    assert_eq!(s0.parameters + s0.gradients + s0.optimizer_state, 16 * psi);
    let s2 = estimate(&model, psi, &w(ZeroStage::Stage2));
    let part = psi.div_ceil(8);
    assert_eq!(s2.optimizer_state, 8 * part);
    assert_eq!(s2.gradients, 4 * part);
    // Activations: 12 blocks of (16·N·C + 4·N + B·NH·T²) + the embedding, ln_f and 2·N·V for the head.
    let (n, c, v) = (4 * 256, 768, 50257);
    let block = 16 * n * c + 4 * n + 4 * 12 * 256 * 256;
    assert_eq!(s0.activations, 4 * (12 * block + n * c + n * c + 2 * n + 2 * n * v));
}

/// Stages 2 and 3 over 2 ranks: after training, the most gathered parameters resident at once (stage 3) stay
/// within `stage3_max_live_parameters` (or the largest group, which a layer needs whatever the limit), and the
/// per-group gradient buffers stay a few groups (the one being written, the tied embedding's, the reductions in
/// flight), far from a whole-model buffer.
#[test]
fn stages_2_and_3_hold_a_few_groups_within_the_configured_limits() {
    let model = ModelConfig::Gpt(GptConfig { vocab_size: 65, block_size: 16, n_layer: 8, n_head: 2, n_embd: 16 });
    let built = model.build().unwrap();
    let largest = built.groups().iter().map(|g| g.len()).max().unwrap();
    let params = built.num_params();
    for (stage, limit) in [(2, 0), (3, 0usize), (3, 2 * largest), (3, 1_000_000_000)] {
        let json = format!(
            r#"{{"train_batch_size": 2, "optimizer": {{"type": "Adam"}},
                "zero_optimization": {{"stage": {stage}, "stage3_param_persistence_threshold": 0,
                "stage3_max_live_parameters": {limit}, "stage3_prefetch_bucket_size": 1000000000}}}}"#
        );
        let comms = ThreadGroup::new(2, Duration::from_secs(60));
        let reports: Vec<MemoryReport> = std::thread::scope(|s| {
            let handles: Vec<_> = comms
                .into_iter()
                .map(|comm| {
                    let (json, model) = (&json, &model);
                    s.spawn(move || {
                        let m = model.build().unwrap();
                        let p = m.layout().init_params(0);
                        let config = DeepSpeedConfig::from_json_str(json).unwrap();
                        let mut e = Engine::with_communicator(m, p, config, Box::new(comm)).unwrap();
                        let tokens: Vec<u32> = (0..16).map(|i| i % 65).collect();
                        e.train_batch(16, |x, y| {
                            *x = tokens.clone();
                            *y = tokens.iter().map(|t| (t + 1) % 65).collect();
                        })
                        .unwrap();
                        e.memory()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for m in reports {
            let gathered = m.gathered_parameters / 4;
            match stage {
                2 => assert_eq!(gathered, 0, "stage 2 keeps its whole model copy"),
                _ => {
                    assert!(gathered >= largest, "limit {limit}: the largest group was never gathered ({gathered})");
                    assert!(gathered <= limit.max(largest), "limit {limit}: {gathered} elements gathered at once");
                }
            }
            let staged = m.gradient_staging / 4;
            assert!(staged > 0 && staged <= 4 * largest, "limit {limit}: {staged} gradient elements at once");
            assert!(4 * largest < params / 2, "the model has too few groups to show it");
        }
    }
}
