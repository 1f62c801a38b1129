//! The LR schedules against DeepSpeed 0.16.5 itself: `tests/fixtures/lr_schedules.json`, written by
//! `reference/optim_fixtures.py`, records the lr and betas a torch optimizer held at each of its first
//! optimizer steps under the real `deepspeed.runtime.lr_schedules`, driven in DeepSpeed's engine order
//! (construct, then `optimizer.step()`; `lr_scheduler.step()` per step). This checks the schedules and the
//! documented convention together: the k-th applied step (k = 0, 1, …) uses `lr(k - 1)` and `momentum(k - 1)`.

use rustspeed_optim::{LrSchedule, WarmupType};
use serde_json::Value;

/// Same f64 formulas as DeepSpeed's Python, in places with a different operation order.
const DEEPSPEED_RTOL: f64 = 1e-12;

/// The case's `params` with DeepSpeed 0.16.5's constructor defaults (deepspeed-semantics.md §1.6) for the rest.
fn schedule(kind: &str, params: &Value) -> LrSchedule {
    let num = |key: &str, default: f64| params.get(key).map_or(default, |v| v.as_f64().unwrap());
    let flag = |key: &str, default: bool| params.get(key).map_or(default, |v| v.as_bool().unwrap());
    let required = |key: &str| params[key].as_f64().unwrap_or_else(|| panic!("{kind} needs {key}"));
    let warmup_type = match params.get("warmup_type").and_then(Value::as_str) {
        Some("linear") => WarmupType::Linear,
        _ => WarmupType::Log,
    };
    match kind {
        "WarmupLR" => LrSchedule::WarmupLR {
            warmup_min_lr: num("warmup_min_lr", 0.0),
            warmup_max_lr: num("warmup_max_lr", 0.001),
            warmup_num_steps: num("warmup_num_steps", 1000.0),
            warmup_type,
        },
        "WarmupDecayLR" => LrSchedule::WarmupDecayLR {
            total_num_steps: required("total_num_steps"),
            warmup_min_lr: num("warmup_min_lr", 0.0),
            warmup_max_lr: num("warmup_max_lr", 0.001),
            warmup_num_steps: num("warmup_num_steps", 1000.0),
            warmup_type,
        },
        "WarmupCosineLR" => LrSchedule::WarmupCosineLR {
            total_num_steps: required("total_num_steps"),
            warmup_min_ratio: num("warmup_min_ratio", 0.0),
            warmup_num_steps: num("warmup_num_steps", 1000.0),
            cos_min_ratio: num("cos_min_ratio", 0.0001),
            warmup_type,
        },
        "OneCycle" => LrSchedule::OneCycle {
            cycle_min_lr: required("cycle_min_lr"),
            cycle_max_lr: required("cycle_max_lr"),
            decay_lr_rate: num("decay_lr_rate", 0.0),
            cycle_first_step_size: num("cycle_first_step_size", 2000.0),
            cycle_second_step_size: params.get("cycle_second_step_size").map(|v| v.as_f64().unwrap()),
            decay_step_size: num("decay_step_size", 0.0),
            cycle_momentum: flag("cycle_momentum", true),
            cycle_min_mom: num("cycle_min_mom", 0.8),
            cycle_max_mom: num("cycle_max_mom", 0.9),
            decay_mom_rate: num("decay_mom_rate", 0.0),
        },
        "LRRangeTest" => LrSchedule::LRRangeTest {
            lr_range_test_min_lr: num("lr_range_test_min_lr", 1e-3),
            lr_range_test_step_size: num("lr_range_test_step_size", 2000.0),
            lr_range_test_step_rate: num("lr_range_test_step_rate", 1.0),
            lr_range_test_staircase: flag("lr_range_test_staircase", false),
        },
        other => panic!("fixture has an unknown schedule type {other}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= DEEPSPEED_RTOL * b.abs()
}

#[test]
fn every_schedule_matches_deepspeed_step_by_step() {
    let path = format!("{}/../../tests/fixtures/lr_schedules.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let fixture: Value = serde_json::from_str(&text).expect("lr_schedules.json is JSON");
    assert_eq!(fixture["deepspeed_version"], "0.16.5", "the schedules follow DeepSpeed 0.16.5");
    let cases = fixture["cases"].as_array().unwrap();
    let kinds: std::collections::BTreeSet<&str> = cases.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 5, "fixture covers all five DeepSpeed schedules: {kinds:?}");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let s = schedule(case["type"].as_str().unwrap(), &case["params"]);
        s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let base_lr = case["base_lr"].as_f64().unwrap();
        let base_betas: Vec<f64> = case["base_betas"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
        let lrs = case["lr_per_update"].as_array().unwrap();
        let betas = case["betas_per_update"].as_array().unwrap();
        for (k, (lr, beta)) in lrs.iter().zip(betas).enumerate() {
            let t = k as i64 - 1;
            let (want_lr, ours) = (lr.as_f64().unwrap(), s.lr(t, base_lr));
            assert!(close(ours, want_lr), "{name}: update {k} ran at lr {want_lr} in DeepSpeed, lr({t}) = {ours}");
            let want: Vec<f64> = beta.as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
            let (b1, b2) = s.momentum(t).unwrap_or((base_betas[0], base_betas[1]));
            assert!(
                close(b1, want[0]) && close(b2, want[1]),
                "{name}: update {k} ran with betas {want:?} in DeepSpeed, momentum({t}) gives ({b1}, {b2})"
            );
        }
    }
}
