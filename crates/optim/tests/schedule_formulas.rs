//! Every LR schedule, step by step, against its formula written out here from deepspeed-semantics.md §1.6
//! (`t` = `last_batch_iteration`), plus the boundary values and quirks that section names.

use rustspeed_optim::schedule::ONE_CYCLE_BETA2;
use rustspeed_optim::{LrSchedule, ScheduleError, WarmupType};
use std::f64::consts::PI;

/// The schedule and the test evaluate the same f64 formula, possibly in a different operation order.
const FORMULA_RTOL: f64 = 1e-12;

fn assert_formula(
    name: &str,
    schedule: &LrSchedule,
    base_lr: f64,
    ts: std::ops::RangeInclusive<i64>,
    f: impl Fn(i64) -> f64,
) {
    for t in ts {
        let (got, want) = (schedule.lr(t, base_lr), f(t));
        assert!((got - want).abs() <= FORMULA_RTOL * want.abs().max(1e-300), "{name}: lr({t}) = {got}, formula {want}");
    }
}

fn assert_near(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= FORMULA_RTOL * want.abs(), "{what}: {got} vs {want}");
}

fn warmup_lr(warmup_type: WarmupType, n: f64) -> LrSchedule {
    LrSchedule::WarmupLR { warmup_min_lr: 0.001, warmup_max_lr: 0.01, warmup_num_steps: n, warmup_type }
}

#[test]
fn warmup_lr_log_and_linear_follow_the_ramp_then_hold() {
    let (min, max, n) = (0.001, 0.01, 10.0);
    let log = warmup_lr(WarmupType::Log, n);
    assert_formula("WarmupLR log", &log, 0.5, -1..=20, |t| match t {
        t if t < 0 => min,
        t if (t as f64) < n => min + (max - min) * ((t + 1) as f64).ln() / n.ln(),
        _ => max,
    });
    let linear = warmup_lr(WarmupType::Linear, n);
    assert_formula("WarmupLR linear", &linear, 0.5, -1..=20, |t| match t {
        t if t < 0 => min,
        t if (t as f64) < n => min + (max - min) * t as f64 / n,
        _ => max,
    });
    for schedule in [log, linear] {
        // The quirk: the constructor value and the first step's value are both min_lr (first two updates).
        assert_eq!((schedule.lr(-1, 0.5), schedule.lr(0, 0.5)), (min, min));
        // From the boundary t = N on, γ = 1.
        assert_near("lr(N)", schedule.lr(10, 0.5), max);
    }
    // At t = N - 1 the log ramp is already at max (ln N / ln N) while the linear one is at (N-1)/N.
    assert_near("log lr(N-1)", log.lr(9, 0.5), max);
    assert_near("linear lr(N-1)", linear.lr(9, 0.5), min + (max - min) * 0.9);
}

#[test]
fn warmup_shorter_than_two_steps_counts_as_two() {
    for n in [0.0, 1.0, 2.0] {
        let schedule = warmup_lr(WarmupType::Linear, n);
        assert_formula("WarmupLR N<2", &schedule, 0.5, -1..=4, |t| match t {
            0 | -1 => 0.001,
            1 => 0.001 + 0.009 * 0.5,
            _ => 0.01,
        });
    }
}

#[test]
fn warmup_decay_lr_decays_linearly_to_min_and_clamps() {
    let (min, max, n, total) = (0.002, 0.02, 5.0, 20.0);
    for warmup_type in [WarmupType::Log, WarmupType::Linear] {
        let schedule = LrSchedule::WarmupDecayLR {
            total_num_steps: total,
            warmup_min_lr: min,
            warmup_max_lr: max,
            warmup_num_steps: n,
            warmup_type,
        };
        assert_formula("WarmupDecayLR", &schedule, 0.5, -1..=30, |t| {
            let gamma = match t {
                t if t < 0 => 0.0,
                t if (t as f64) < n => match warmup_type {
                    WarmupType::Log => ((t + 1) as f64).ln() / n.ln(),
                    WarmupType::Linear => t as f64 / n,
                },
                t => f64::max(0.0, (total - t as f64) / f64::max(1.0, total - n)),
            };
            min + (max - min) * gamma
        });
        assert_near("decay starts from max_lr at t = N", schedule.lr(5, 0.5), max);
        assert_near("gamma reaches 0 at t = T", schedule.lr(20, 0.5), min);
        assert_near("and stays clamped after it", schedule.lr(25, 0.5), min);
    }
    // T - N < 1: the divisor is clamped to 1, so the decay is one step per unit.
    let short = LrSchedule::WarmupDecayLR {
        total_num_steps: 5.0,
        warmup_min_lr: 0.0,
        warmup_max_lr: 1.0,
        warmup_num_steps: 5.0,
        warmup_type: WarmupType::Linear,
    };
    assert_eq!([short.lr(4, 1.0), short.lr(5, 1.0), short.lr(6, 1.0)], [0.8, 0.0, 0.0]);
}

#[test]
fn warmup_cosine_lr_is_a_ratio_of_the_base_lr() {
    let (wmin, n, total, cmin, base) = (0.1, 4.0, 14.0, 0.01, 0.3);
    for warmup_type in [WarmupType::Log, WarmupType::Linear] {
        let schedule = LrSchedule::WarmupCosineLR {
            total_num_steps: total,
            warmup_min_ratio: wmin,
            warmup_num_steps: n,
            cos_min_ratio: cmin,
            warmup_type,
        };
        assert_formula("WarmupCosineLR", &schedule, base, -1..=30, |t| {
            if t < 0 {
                return 0.0;
            }
            let ratio = if (t as f64) < n {
                let w = match warmup_type {
                    WarmupType::Log => ((t + 1) as f64).ln() / n.ln(),
                    WarmupType::Linear => t as f64 / n,
                };
                wmin + w * (1.0 - wmin)
            } else {
                let (k, big_k) = (t as f64 - n + 1.0, total - n);
                f64::max(0.0, cmin + (1.0 - cmin) * (1.0 + (PI * k / big_k).cos()) / 2.0)
            };
            ratio * base
        });
        // lr(-1) is 0 whatever warmup_min_ratio is; the first step gives warmup_min_ratio·base.
        assert_eq!(schedule.lr(-1, base), 0.0);
        assert_near("lr(0)", schedule.lr(0, base), wmin * base);
        // The cosine ends (k = K) at t = T - 1 with cos_min_ratio·base ...
        assert_near("end of the cosine", schedule.lr(13, base), cmin * base);
        // ... and, unclamped in DeepSpeed 0.16.5, rises again after it.
        assert!(schedule.lr(14, base) > schedule.lr(13, base));
    }
}

/// OneCycle: `T = first + second`, `r = first/T`; in the cycle `x = 1 + b/T - floor(1 + b/T)` with `b = t + 1`,
/// height `s = x/r` or `(x-1)/(r-1)`; after it `d = t - T + 1`.
fn one_cycle_height(t: i64, first: f64, total: f64) -> f64 {
    let b = (t + 1) as f64;
    let x = 1.0 + b / total - (1.0 + b / total).floor();
    let r = first / total;
    if x <= r {
        x / r
    } else {
        (x - 1.0) / (r - 1.0)
    }
}

#[test]
fn one_cycle_rises_falls_then_decays_lr_and_momentum() {
    let (min_lr, max_lr, first, second, rate, decay_size) = (0.01, 0.1, 4.0, 6.0, 0.5, 2.0);
    let (min_mom, max_mom, mom_rate) = (0.8, 0.9, 0.1);
    let total = first + second;
    let schedule = LrSchedule::OneCycle {
        cycle_min_lr: min_lr,
        cycle_max_lr: max_lr,
        decay_lr_rate: rate,
        cycle_first_step_size: first,
        cycle_second_step_size: Some(second),
        decay_step_size: decay_size,
        cycle_momentum: true,
        cycle_min_mom: min_mom,
        cycle_max_mom: max_mom,
        decay_mom_rate: mom_rate,
    };
    assert_formula("OneCycle lr", &schedule, 0.5, -1..=25, |t| {
        if (t as f64) < total {
            min_lr + (max_lr - min_lr) * one_cycle_height(t, first, total)
        } else {
            min_lr / (1.0 + rate * (t as f64 - total + 1.0) / decay_size)
        }
    });
    for t in 0..=25 {
        let want = if (t as f64) < total {
            max_mom - (max_mom - min_mom) * one_cycle_height(t, first, total)
        } else {
            max_mom * (1.0 + mom_rate * (t as f64 - total + 1.0) / decay_size)
        };
        let (beta1, beta2) = schedule.momentum(t).expect("cycle_momentum is on");
        assert!((beta1 - want).abs() <= FORMULA_RTOL, "momentum({t}) = {beta1}, formula {want}");
        assert_eq!(beta2, 0.99, "OneCycle forces β2 = 0.99");
    }
    // Peak at the end of the first phase (b = first), back to min at the end of the cycle (b = T wraps to 0).
    assert_near("peak lr", schedule.lr(3, 0.5), max_lr);
    assert_near("end of cycle lr", schedule.lr(9, 0.5), min_lr);
    assert_near("momentum at the peak", schedule.momentum(3).unwrap().0, min_mom);
    // The constructor writes (cycle_min_mom, 0.99) at t = -1 (lr_schedules.py `_initialize_momentum`).
    assert_eq!(schedule.momentum(-1), Some((min_mom, ONE_CYCLE_BETA2)));
    assert_eq!(schedule.lr(-1, 0.5), min_lr);
}

fn symmetric_one_cycle(cycle_momentum: bool) -> LrSchedule {
    LrSchedule::OneCycle {
        cycle_min_lr: 0.01,
        cycle_max_lr: 0.1,
        decay_lr_rate: 0.0,
        cycle_first_step_size: 3.0,
        cycle_second_step_size: None,
        decay_step_size: 0.0,
        cycle_momentum,
        cycle_min_mom: 0.85,
        cycle_max_mom: 0.95,
        decay_mom_rate: 0.0,
    }
}

#[test]
fn one_cycle_without_decay_holds_min_lr_and_max_momentum() {
    let schedule = symmetric_one_cycle(true);
    assert_formula("OneCycle symmetric", &schedule, 0.5, -1..=12, |t| {
        if t < 6 {
            0.01 + 0.09 * one_cycle_height(t, 3.0, 6.0)
        } else {
            0.01
        }
    });
    for t in 6..=12 {
        assert_eq!(schedule.momentum(t), Some((0.95, 0.99)));
    }
    assert_eq!(symmetric_one_cycle(false).momentum(2), None);
}

#[test]
fn lr_range_test_continuous_and_staircase() {
    let (min_lr, size, rate) = (0.01, 3.0, 2.0);
    for staircase in [false, true] {
        let schedule = LrSchedule::LRRangeTest {
            lr_range_test_min_lr: min_lr,
            lr_range_test_step_size: size,
            lr_range_test_step_rate: rate,
            lr_range_test_staircase: staircase,
        };
        assert_formula("LRRangeTest", &schedule, 0.5, -1..=12, |t| {
            let x = (t + 1) as f64 / size;
            min_lr * (1.0 + rate * if staircase { x.floor() } else { x })
        });
    }
    let stairs = LrSchedule::LRRangeTest {
        lr_range_test_min_lr: min_lr,
        lr_range_test_step_size: size,
        lr_range_test_step_rate: rate,
        lr_range_test_staircase: true,
    };
    let lrs: Vec<f64> = (-1..=5).map(|t| stairs.lr(t, 0.5)).collect();
    assert_eq!(lrs[..3], [min_lr; 3], "flat for the first step_size values of t + 1");
    assert_near("second stair", lrs[3], 3.0 * min_lr);
    assert!(lrs[3..6].iter().all(|&lr| lr == lrs[3]), "{lrs:?}");
    assert_near("third stair", lrs[6], 5.0 * min_lr);
}

#[test]
fn constant_and_non_cycle_schedules_keep_the_configured_values() {
    assert_eq!(LrSchedule::Constant.lr(-1, 0.25), 0.25);
    assert_eq!(LrSchedule::Constant.lr(1000, 0.25), 0.25);
    assert_eq!(LrSchedule::Constant.momentum(5), None);
    assert_eq!(warmup_lr(WarmupType::Log, 10.0).momentum(5), None);
}

#[test]
fn validate_rejects_what_deepspeed_would_divide_by_zero_on() {
    let cosine = |total| LrSchedule::WarmupCosineLR {
        total_num_steps: total,
        warmup_min_ratio: 0.0,
        warmup_num_steps: 1.0,
        cos_min_ratio: 0.0001,
        warmup_type: WarmupType::Log,
    };
    // warmup_num_steps 1 counts as 2, so T = 2 leaves no cosine window.
    let err = cosine(2.0).validate().unwrap_err();
    assert!(matches!(err, ScheduleError::EmptyCosineWindow { .. }));
    assert!(err.to_string().contains("total_num_steps = 2"), "{err}");
    assert_eq!(cosine(3.0).validate(), Ok(()));

    let range = LrSchedule::LRRangeTest {
        lr_range_test_min_lr: 0.001,
        lr_range_test_step_size: 0.0,
        lr_range_test_step_rate: 1.0,
        lr_range_test_staircase: false,
    };
    let err = range.validate().unwrap_err();
    assert_eq!(err, ScheduleError::NotPositive { key: "lr_range_test_step_size", value: 0.0 });
    assert!(err.to_string().starts_with("scheduler.params.lr_range_test_step_size = 0"), "{err}");

    let LrSchedule::OneCycle { cycle_min_lr, cycle_max_lr, cycle_momentum, cycle_min_mom, cycle_max_mom, .. } =
        symmetric_one_cycle(true)
    else {
        unreachable!()
    };
    let cycle = |first, second| LrSchedule::OneCycle {
        cycle_min_lr,
        cycle_max_lr,
        decay_lr_rate: 0.0,
        cycle_first_step_size: first,
        cycle_second_step_size: second,
        decay_step_size: 0.0,
        cycle_momentum,
        cycle_min_mom,
        cycle_max_mom,
        decay_mom_rate: 0.0,
    };
    assert_eq!(
        cycle(0.0, Some(4.0)).validate(),
        Err(ScheduleError::NotPositive { key: "cycle_first_step_size", value: 0.0 })
    );
    assert_eq!(
        cycle(3.0, Some(-1.0)).validate(),
        Err(ScheduleError::Negative { key: "cycle_second_step_size", value: -1.0 })
    );
    assert_eq!(cycle(3.0, Some(0.0)).validate(), Ok(()));

    let nan = warmup_lr(WarmupType::Linear, f64::NAN);
    assert!(matches!(nan.validate(), Err(ScheduleError::NotFinite { key: "warmup_num_steps", .. })));
    assert_eq!(warmup_lr(WarmupType::Linear, 10.0).validate(), Ok(()));
}
