//! Every optimizer against float64 reference sequences: `tests/fixtures/optim.json`, written by
//! `reference/optim_fixtures.py` (torch.optim.AdamW / Adam / SGD, and the Adam-without-bias-correction, Lion and
//! DeepSpeed-FusedLamb rules written out in torch). Each case starts from the fixture's fp32 tensors, replays its
//! gradients for 5 steps and compares the parameters after every step (and Lamb's trust ratios).

use rustspeed_optim::lamb::{lamb_apply, lamb_moments, lamb_trust_ratio, LambSquaredNorms};
use rustspeed_optim::{lamb_step, lion_step, AdamHyper, LambHyper, LionHyper, SgdHyper, StepContext, UpdateRule};
use serde_json::Value;

/// Parameters are below 2.5 in magnitude and stored in fp32 (ulp ≤ 2.4e-7); five steps leave ≤ 3.5e-7 of
/// rounding, while any rule difference (a missed bias correction, decay mode, sign or clamp) moves them ≥ 1e-4.
const PARAM_ATOL: f64 = 2e-6;
/// Trust ratios are quotients of fp32-rounded norms: a few ulps of relative error.
const TRUST_RATIO_RTOL: f64 = 1e-5;

struct Case {
    name: String,
    hyper: Value,
    /// Per tensor, the fp32 starting values.
    initial: Vec<Vec<f32>>,
    /// Per step, per tensor.
    grads: Vec<Vec<Vec<f32>>>,
    /// Per step, per tensor, the float64 parameters after the step.
    params_after: Vec<Vec<Vec<f64>>>,
    /// Lamb only: per step, per tensor.
    trust_ratios: Option<Vec<Vec<f64>>>,
}

impl Case {
    fn f32(&self, key: &str) -> f32 {
        self.hyper[key].as_f64().unwrap_or_else(|| panic!("{}: hyper.{key} missing", self.name)) as f32
    }
    fn flag(&self, key: &str) -> bool {
        self.hyper[key].as_bool().unwrap_or_else(|| panic!("{}: hyper.{key} missing", self.name))
    }

    /// Runs `step(step_number, tensor_index, params, grads)` over every step and tensor and compares.
    fn replay(&self, mut step: impl FnMut(u64, usize, &mut [f32], &[f32]) -> Option<f32>) {
        let mut params = self.initial.clone();
        for (s, (grads, expected)) in self.grads.iter().zip(&self.params_after).enumerate() {
            for (i, tensor) in params.iter_mut().enumerate() {
                let ratio = step(s as u64 + 1, i, tensor, &grads[i]);
                if let (Some(ratio), Some(ratios)) = (ratio, &self.trust_ratios) {
                    let want = ratios[s][i];
                    assert!(
                        (ratio as f64 - want).abs() <= TRUST_RATIO_RTOL * want.abs(),
                        "{} step {} tensor {i}: trust ratio {ratio} vs reference {want}",
                        self.name,
                        s + 1
                    );
                }
                let worst = tensor.iter().zip(&expected[i]).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
                assert!(
                    worst <= PARAM_ATOL,
                    "{} step {} tensor {i}: max |param - reference| = {worst:e}\n ours {tensor:?}\n want {:?}",
                    self.name,
                    s + 1,
                    expected[i]
                );
            }
        }
    }
}

fn cases(optimizer: &str) -> Vec<Case> {
    let path = format!("{}/../../tests/fixtures/optim.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let fixture: Value = serde_json::from_str(&text).expect("optim.json is JSON");
    let f32s = |v: &Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let f64s = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let list = |v: &Value| v.as_array().unwrap().clone();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["optimizer"] == optimizer)
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            hyper: c["hyper"].clone(),
            initial: list(&c["initial"]).iter().map(f32s).collect(),
            grads: list(&c["grads"]).iter().map(|step| list(step).iter().map(f32s).collect()).collect(),
            params_after: list(&c["params_after"]).iter().map(|step| list(step).iter().map(f64s).collect()).collect(),
            trust_ratios: c.get("trust_ratios").map(|r| list(r).iter().map(f64s).collect()),
        })
        .collect()
}

/// State buffers as the engine sizes them: one zeroed buffer per slot the rule names, per tensor.
fn state(case: &Case, rule: &dyn UpdateRule) -> Vec<Vec<Vec<f32>>> {
    let slots = rule.slot_names().len();
    case.initial.iter().map(|t| vec![vec![0.0; t.len()]; slots]).collect()
}

fn lamb_hyper(case: &Case) -> LambHyper {
    LambHyper {
        lr: case.f32("lr"),
        beta1: case.f32("beta1"),
        beta2: case.f32("beta2"),
        eps: case.f32("eps"),
        eps_inside_sqrt: case.flag("eps_inside_sqrt"),
        weight_decay: case.f32("weight_decay"),
        bias_correction: case.flag("bias_correction"),
        max_coeff: case.f32("max_coeff"),
        min_coeff: case.f32("min_coeff"),
    }
}

#[test]
fn adam_both_decay_modes_with_and_without_bias_correction_match_reference() {
    let cases = cases("adam");
    assert_eq!(cases.len(), 4, "fixture has AdamW and L2, each with and without bias correction");
    for case in &cases {
        let hp = AdamHyper {
            lr: case.f32("lr"),
            beta1: case.f32("beta1"),
            beta2: case.f32("beta2"),
            eps: case.f32("eps"),
            weight_decay: case.f32("weight_decay"),
            bias_correction: case.flag("bias_correction"),
            adam_w_mode: case.flag("adam_w_mode"),
        };
        let mut st = state(case, &hp);
        // Through the rule's trait, as the engine steps it: the configured lr, decay on.
        case.replay(|step, i, params, grads| {
            let context = StepContext { step, lr: hp.lr, betas: None, decay: true };
            let mut slots: Vec<&mut [f32]> = st[i].iter_mut().map(|s| s.as_mut_slice()).collect();
            hp.step(&context, params, grads, &mut slots);
            None
        });
    }
}

#[test]
fn sgd_variants_match_pytorch() {
    let cases = cases("sgd");
    assert_eq!(cases.len(), 5, "fixture has plain, decay, momentum, dampening and nesterov cases");
    for case in &cases {
        let hp = SgdHyper {
            lr: case.f32("lr"),
            momentum: case.f32("momentum"),
            dampening: case.f32("dampening"),
            nesterov: case.flag("nesterov"),
            weight_decay: case.f32("weight_decay"),
        };
        let mut st = state(case, &hp);
        case.replay(|step, i, params, grads| {
            let context = StepContext { step, lr: hp.lr, betas: None, decay: true };
            let mut slots: Vec<&mut [f32]> = st[i].iter_mut().map(|s| s.as_mut_slice()).collect();
            hp.step(&context, params, grads, &mut slots);
            None
        });
    }
}

#[test]
fn lion_matches_reference_rule() {
    let cases = cases("lion");
    assert_eq!(cases.len(), 2, "fixture has Lion with and without weight decay");
    for case in &cases {
        let hp = LionHyper {
            lr: case.f32("lr"),
            beta1: case.f32("beta1"),
            beta2: case.f32("beta2"),
            weight_decay: case.f32("weight_decay"),
        };
        let mut st = state(case, &hp);
        case.replay(|_, i, params, grads| {
            lion_step(&hp, params, grads, &mut st[i][0]);
            None
        });
    }
}

#[test]
fn lamb_matches_deepspeed_kernel_rule_per_tensor() {
    let cases = cases("lamb");
    assert_eq!(cases.len(), 3, "fixture has plain, eps-inside-sqrt without bias correction, and clamped Lamb");
    for case in &cases {
        let hp = lamb_hyper(case);
        let mut st = state(case, &hp);
        case.replay(|step, i, params, grads| {
            let [m, v] = &mut st[i][..] else { panic!("Lamb keeps two state slots") };
            Some(lamb_step(&hp, step, params, grads, m, v).trust_ratio)
        });
    }
}

/// A tensor split into shards (as ZeRO would) and stepped with the two-pass API, summing the partial norms,
/// must follow the same per-tensor reference as the whole-tensor step.
#[test]
fn lamb_split_into_shards_matches_reference() {
    for case in &cases("lamb") {
        let hp = lamb_hyper(case);
        let mut st = state(case, &hp);
        case.replay(|step, i, params, grads| {
            let [m, v] = &mut st[i][..] else { panic!("Lamb keeps two state slots") };
            let cut = params.len() / 3 + 1;
            let first = lamb_moments(&hp, &params[..cut], &grads[..cut], &mut m[..cut], &mut v[..cut]);
            let second = lamb_moments(&hp, &params[cut..], &grads[cut..], &mut m[cut..], &mut v[cut..]);
            let ratio = lamb_trust_ratio(&hp, first + second);
            lamb_apply(&hp, step, ratio, &mut params[..cut], &m[..cut], &v[..cut]);
            lamb_apply(&hp, step, ratio, &mut params[cut..], &m[cut..], &v[cut..]);
            Some(ratio)
        });
    }
    assert_eq!(
        LambSquaredNorms { param: 1.0, update: 2.0 } + LambSquaredNorms { param: 3.0, update: 5.0 },
        LambSquaredNorms { param: 4.0, update: 7.0 }
    );
}
