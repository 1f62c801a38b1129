//! Optimizer steps whose outcome can be worked out by hand from the update rules of deepspeed-semantics.md §1.5
//! (and torch.optim.SGD's): the expected values below are derived in the comments, not taken from a run.

use rustspeed_optim::{
    adam_step, lamb_step, lion_step, sgd_step, AdamHyper, LambHyper, LionHyper, SgdHyper, StepContext, UpdateRule,
};

/// Relative error of hand-derived steps: the ε terms neglected in the derivations contribute ≤ 1e-5 and the
/// fp32 rounding of `p ± Δ` ≤ 4e-6 of Δ for the sizes used here.
const STEP_RTOL: f32 = 1e-5;
/// Absolute error of short fp32 sequences with O(1) values and an inexact lr (0.1 is not a binary fraction).
const SEQUENCE_ATOL: f32 = 1e-6;

fn assert_steps(name: &str, before: &[f32], after: &[f32], expected_delta: &[f32]) {
    for (i, ((&b, &a), &d)) in before.iter().zip(after).zip(expected_delta).enumerate() {
        let delta = a - b;
        assert!((delta - d).abs() <= STEP_RTOL * d.abs(), "{name}[{i}]: moved by {delta}, expected {d}");
    }
}

fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol, "{name}[{i}]: {g} vs {w}");
    }
}

fn adam(lr: f32, weight_decay: f32, bias_correction: bool, adam_w_mode: bool) -> AdamHyper {
    AdamHyper { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, bias_correction, adam_w_mode }
}

fn run_adam(hp: &AdamHyper, params: &[f32], grads: &[f32]) -> Vec<f32> {
    let mut p = params.to_vec();
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    adam_step(hp, 1, &mut p, grads, &mut m, &mut v);
    p
}

/// Step 1 with bias correction: m̂ = g, v̂ = g², so u = g/(|g| + ε) = sign(g) up to ε/|g|.
#[test]
fn adam_first_step_moves_each_param_by_lr_times_sign_of_grad() {
    let lr = 0.0625;
    let (p, g) = ([1.0, -0.5, 2.0, 0.25], [0.3, -2.0, 1e-3, -0.7]);
    for adam_w_mode in [true, false] {
        let after = run_adam(&adam(lr, 0.0, true, adam_w_mode), &p, &g);
        assert_steps("adam step 1", &p, &after, &[-lr, lr, -lr, lr]);
    }
}

/// Without bias correction, step 1 has m = (1-β₁)g and v = (1-β₂)g²: u = sign(g)·0.1/√0.001 = 3.1623·sign(g).
#[test]
fn adam_first_step_without_bias_correction_is_scaled_by_the_raw_moments() {
    let lr = 0.0625;
    let (p, g) = ([1.0, -0.5], [0.3, -2.0]);
    let size = lr * 0.1 / 0.001f32.sqrt();
    let after = run_adam(&adam(lr, 0.0, false, true), &p, &g);
    assert_steps("adam without bias correction", &p, &after, &[-size, size]);
}

/// p = 1, g = -0.05, wd = 0.1. L2 mode steps along sign(g + wd·p) = sign(0.05): p → 1 - lr. AdamW steps along
/// sign(g) and decays: p → 1 - lr·(-1 + wd·1) = 1 + 0.9·lr.
#[test]
fn adam_l2_and_decoupled_decay_differ_as_the_rules_say() {
    let lr = 0.0625;
    let l2 = run_adam(&adam(lr, 0.1, true, false), &[1.0], &[-0.05]);
    assert_steps("adam L2", &[1.0], &l2, &[-lr]);
    let decoupled = run_adam(&adam(lr, 0.1, true, true), &[1.0], &[-0.05]);
    assert_steps("adamw", &[1.0], &decoupled, &[0.9 * lr]);
}

/// With zero gradients the moments stay 0 and AdamW only decays: p·(1 - lr·wd) per step.
#[test]
fn adamw_with_zero_gradients_only_decays() {
    let hp = adam(0.0625, 0.5, true, true);
    let mut p = vec![2.0f32, -1.0];
    let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
    for step in 1..=3 {
        adam_step(&hp, step, &mut p, &[0.0, 0.0], &mut m, &mut v);
    }
    let decay = (1.0f32 - 0.0625 * 0.5).powi(3);
    assert_close("adamw decay", &p, &[2.0 * decay, -decay], SEQUENCE_ATOL);
    assert_eq!((m, v), (vec![0.0; 2], vec![0.0; 2]));
}

/// lr = 2⁻⁷ and the values below are binary fractions, so every step is exact. c = 0.9m + 0.1g:
/// m = [1, -1, 0, 0], g = [-0.5, 0.5, 0, -3] → c = [0.85, -0.85, 0, -0.3]: the first two move against c's sign,
/// not g's; the third (c = 0, sign 0) stays; the fourth moves by +lr.
#[test]
fn lion_moves_by_exactly_lr_times_sign_of_the_interpolation() {
    let lr = 1.0 / 128.0;
    let hp = LionHyper { lr, beta1: 0.9, beta2: 0.99, weight_decay: 0.0 };
    let mut p = [1.0, -2.0, 0.5, 0.75];
    let mut m = [1.0, -1.0, 0.0, 0.0];
    let g = [-0.5, 0.5, 0.0, -3.0];
    lion_step(&hp, &mut p, &g, &mut m);
    assert_eq!(p, [1.0 - lr, -2.0 + lr, 0.5, 0.75 + lr]);
    let want_m: Vec<f32> = [1.0f32, -1.0, 0.0, 0.0].iter().zip(&g).map(|(m, g)| 0.99 * m + 0.01 * g).collect();
    assert_close("lion momentum", &m, &want_m, SEQUENCE_ATOL);

    // Decoupled decay first: p(1 - lr·wd) - lr·sign(c), wd = 0.5: 1·(1 - 2⁻⁸) - 2⁻⁷ and -2·(1 - 2⁻⁸) + 2⁻⁷.
    let hp = LionHyper { weight_decay: 0.5, ..hp };
    let mut p = [1.0, -2.0];
    lion_step(&hp, &mut p, &[0.25, -0.25], &mut [0.0, 0.0]);
    assert_eq!(p, [0.98828125, -1.984375]);
}

/// p = 1, g = 1 every step, lr = 0.1:
/// - momentum 0.9: b = 1, p = 0.9; b = 0.9 + 1 = 1.9, p = 0.9 - 0.19 = 0.71
/// - nesterov: b = 1, d = 1 + 0.9 = 1.9, p = 0.81; b = 1.9, d = 1 + 1.71 = 2.71, p = 0.539
/// - dampening 0.5: b = 1 (no dampening on step 1), p = 0.9; b = 0.9 + 0.5 = 1.4, p = 0.76
/// - plain, wd 0.1: p = 1 - 0.1·1.1 = 0.89; p = 0.89 - 0.1·(1 + 0.089) = 0.7811
#[test]
fn sgd_two_steps_by_hand() {
    let base = SgdHyper { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    let cases = [
        ("momentum", base, [0.9, 0.71]),
        ("nesterov", SgdHyper { nesterov: true, ..base }, [0.81, 0.539]),
        ("dampening", SgdHyper { dampening: 0.5, ..base }, [0.9, 0.76]),
        ("plain with decay", SgdHyper { momentum: 0.0, weight_decay: 0.1, ..base }, [0.89, 0.7811]),
    ];
    for (name, hp, want) in cases {
        let mut p = [1.0f32];
        let mut buf = [0.0f32];
        let mut got = vec![];
        for step in 1..=2 {
            let state = if hp.momentum != 0.0 { Some(&mut buf[..]) } else { None };
            sgd_step(&hp, step == 1, &mut p, &[1.0], state);
            got.push(p[0]);
        }
        assert_close(name, &got, &want, SEQUENCE_ATOL);
    }
}

fn lamb(lr: f32) -> LambHyper {
    LambHyper {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        eps_inside_sqrt: false,
        weight_decay: 0.0,
        bias_correction: true,
        max_coeff: 10.0,
        min_coeff: 0.01,
    }
}

/// p = [3, 4] (‖p‖ = 5), g = [0.5, -0.5], wd = 0. Step 1: m = ±0.05, √v = √0.00025, u = ±0.1/√0.001 = ±√10,
/// ‖u‖ = √20, r = 5/√20 = √5/2; s = lr·√0.001/0.1 = lr/√10, so Δ = s·r·u = ∓lr·√5/2.
#[test]
fn lamb_first_step_scales_the_sign_step_by_the_trust_ratio() {
    let lr = 0.0625;
    let half_sqrt5 = 5.0f32.sqrt() / 2.0;
    for (max_coeff, min_coeff, ratio) in [(10.0, 0.01, half_sqrt5), (1.0, 0.01, 1.0), (10.0, 2.0, 2.0)] {
        let hp = LambHyper { max_coeff, min_coeff, ..lamb(lr) };
        let mut p = [3.0, 4.0];
        let report = lamb_step(&hp, 1, &mut p, &[0.5, -0.5], &mut [0.0; 2], &mut [0.0; 2]);
        assert!((report.trust_ratio - ratio).abs() <= STEP_RTOL * ratio, "ratio {} vs {ratio}", report.trust_ratio);
        assert_steps("lamb step 1", &[3.0, 4.0], &p, &[-lr * ratio, lr * ratio]);
    }
}

/// ‖p‖ = 0 or ‖u‖ = 0 gives ratio 1 (not 0/x or x/0): zero parameters still move by lr·sign(g) on step 1, and
/// zero gradients without decay leave the parameters where they are.
#[test]
fn lamb_zero_norms_give_trust_ratio_one() {
    let lr = 0.0625;
    let mut p = [0.0, 0.0];
    let report = lamb_step(&lamb(lr), 1, &mut p, &[0.5, -0.5], &mut [0.0; 2], &mut [0.0; 2]);
    assert_eq!(report.trust_ratio, 1.0);
    assert_steps("lamb from zero", &[0.0, 0.0], &p, &[-lr, lr]);

    let mut p = [3.0, 4.0];
    let report = lamb_step(&lamb(lr), 1, &mut p, &[0.0, 0.0], &mut [0.0; 2], &mut [0.0; 2]);
    assert_eq!((report.trust_ratio, p), (1.0, [3.0, 4.0]));
}

/// The state each rule names, as the engine sizes, checkpoints and the memory estimate read it (PyTorch's names:
/// Adam and Lamb m and v; Lion m; SGD a momentum buffer only with momentum), and what ZeRO may do with it.
#[test]
fn each_rule_names_its_state_and_its_zero_constraints() {
    let adam = AdamHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        bias_correction: true,
        adam_w_mode: true,
    };
    let sgd = |momentum| SgdHyper { lr: 1e-3, momentum, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    let lion = LionHyper { lr: 1e-3, beta1: 0.9, beta2: 0.99, weight_decay: 0.0 };
    let rules: [(&dyn UpdateRule, &[&str], bool); 5] = [
        (&adam, &["exp_avg", "exp_avg_sq"], false),
        (&lamb(1e-3), &["exp_avg", "exp_avg_sq"], true),
        (&lion, &["exp_avg"], false),
        (&sgd(0.9), &["momentum_buffer"], false),
        (&sgd(0.0), &[], false),
    ];
    for (rule, names, whole) in rules {
        assert_eq!(rule.slot_names(), names, "{rule:?}");
        assert_eq!(rule.needs_whole_tensors(), whole, "{rule:?}");
    }
}

/// A rule defined outside this crate plugs in through the trait alone: here plain gradient descent with a state
/// slot counting steps, stepped as the engine steps any rule.
#[test]
fn a_toy_rule_is_one_impl() {
    #[derive(Debug)]
    struct CountingDescent;
    impl UpdateRule for CountingDescent {
        fn name(&self) -> &'static str {
            "CountingDescent"
        }
        fn slot_names(&self) -> &'static [&'static str] {
            &["count"]
        }
        fn lr(&self) -> f32 {
            0.5
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
            for ((p, g), c) in params.iter_mut().zip(grads).zip(slots[0].iter_mut()) {
                *p -= context.lr * g;
                *c += 1.0;
            }
        }
    }
    let rule: &dyn UpdateRule = &CountingDescent;
    let (mut p, mut count) = ([1.0f32, 2.0], [0.0f32; 2]);
    for step in 1..=2 {
        let context = StepContext { step, lr: rule.lr(), betas: None, decay: true };
        rule.step(&context, &mut p, &[1.0, -2.0], &mut [&mut count[..]]);
    }
    assert_eq!((p, count), ([0.0, 4.0], [2.0, 2.0]));
}
