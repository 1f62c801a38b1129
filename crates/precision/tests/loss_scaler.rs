//! The loss scaler against sequences worked out by hand from DeepSpeed's code (semantics reference §2.1, §2.4,
//! §2.5): growth after the window, hysteresis, consecutive hysteresis, the minimum scale, static scaling.

use rustspeed_precision::{AtMinimumScale, DynamicScaling, LossScaler, ScaleEvent, ScaleRule};

const O: bool = true; // overflow
const G: bool = false; // good step

fn settings(initial_scale: f64, window: u64, hysteresis: u64, consecutive: bool) -> DynamicScaling {
    DynamicScaling { initial_scale, window, min_scale: 1.0, hysteresis, consecutive_hysteresis: consecutive }
}

/// Feeds `steps` and returns (scale after each update, skipped?) pairs.
fn run(scaler: &mut LossScaler, steps: &[bool]) -> Vec<(f64, bool)> {
    steps
        .iter()
        .map(|&overflow| {
            let event = scaler.update(overflow).unwrap();
            (scaler.scale(), event.skipped())
        })
        .collect()
}

#[test]
fn zero_rule_grows_every_window_and_halves_on_overflow() {
    // window 3, no hysteresis: growth when (iter - last_overflow) % 3 == 0, last_overflow starting at -1:
    // iters 0,1,2 good → grows at iter 2 (2 - (-1) = 3); overflow at iter 3 halves; iters 4,5 good; iter 6:
    // 6 - 3 = 3 → grows.
    let mut s = LossScaler::dynamic(ScaleRule::Zero, settings(8.0, 3, 1, false));
    let got = run(&mut s, &[G, G, G, O, G, G, G]);
    let want = [(8.0, false), (8.0, false), (16.0, false), (8.0, true), (8.0, false), (8.0, false), (16.0, false)];
    assert_eq!(got, want);
}

#[test]
fn hysteresis_absorbs_the_first_overflow_and_is_refilled_only_at_growth() {
    // hysteresis 2: the first overflow only spends it (skipped, scale kept); later overflows halve every time,
    // since halving does not refill it; the next growth does.
    let mut s = LossScaler::dynamic(ScaleRule::Zero, settings(64.0, 2, 2, false));
    let events: Vec<ScaleEvent> = [O, O, O, G, G, O].iter().map(|&o| s.update(o).unwrap()).collect();
    assert_eq!(
        events,
        [
            ScaleEvent::HysteresisSpent { remaining: 1 },
            ScaleEvent::Reduced { from: 64.0, to: 32.0 },
            ScaleEvent::Reduced { from: 32.0, to: 16.0 },
            ScaleEvent::Kept,              // iter 3: 3 - 2 = 1
            ScaleEvent::Grew { to: 32.0 }, // iter 4: 4 - 2 = 2 → grow, hysteresis back to 2
            ScaleEvent::HysteresisSpent { remaining: 1 },
        ]
    );
    assert!(events.iter().map(ScaleEvent::skipped).eq([true, true, true, false, false, true]));
}

#[test]
fn consecutive_hysteresis_refills_on_every_good_step() {
    let mut s = LossScaler::dynamic(ScaleRule::Zero, settings(64.0, 1000, 2, true));
    let events: Vec<ScaleEvent> = [O, G, O, O].iter().map(|&o| s.update(o).unwrap()).collect();
    assert_eq!(
        events,
        [
            ScaleEvent::HysteresisSpent { remaining: 1 },
            ScaleEvent::Kept,
            ScaleEvent::HysteresisSpent { remaining: 1 },
            ScaleEvent::Reduced { from: 64.0, to: 32.0 },
        ]
    );
}

#[test]
fn the_minimum_scale_is_an_error_that_says_what_to_try() {
    let mut s = LossScaler::dynamic(ScaleRule::Zero, DynamicScaling { min_scale: 2.0, ..settings(4.0, 10, 1, false) });
    assert_eq!(s.update(O).unwrap(), ScaleEvent::Reduced { from: 4.0, to: 2.0 });
    let err = s.update(O).unwrap_err();
    assert_eq!(err, AtMinimumScale { scale: 2.0 });
    let message = err.to_string();
    assert!(message.contains("bf16") && message.contains("learning rate"), "{message}");
    // The fused rule has the same guard (DeepSpeed would skip forever there).
    let mut f = LossScaler::dynamic(ScaleRule::Fused, settings(1.0, 10, 1, false));
    assert!(f.update(O).is_err());
    // Halving never goes below the minimum: 3 → max(1.5, 2) = 2.
    let mut m = LossScaler::dynamic(ScaleRule::Zero, DynamicScaling { min_scale: 2.0, ..settings(3.0, 10, 1, false) });
    assert_eq!(m.update(O).unwrap(), ScaleEvent::Reduced { from: 3.0, to: 2.0 });
}

#[test]
fn fused_rule_doubles_after_window_stable_steps() {
    // stable = iter - last_overflow - 1; doubles when stable > 0 and stable % window == 0. window 2: iter 0
    // (stable 0), iter 1 (1), iter 2 (2 → grow); overflow at iter 3 halves; iter 4 (0), iter 5 (1), iter 6 (2
    // → grow).
    let mut s = LossScaler::dynamic(ScaleRule::Fused, settings(16.0, 2, 1, false));
    let got = run(&mut s, &[G, G, G, O, G, G, G]);
    let want = [(16.0, false), (16.0, false), (32.0, false), (16.0, true), (16.0, false), (16.0, false), (32.0, false)];
    assert_eq!(got, want);
}

#[test]
fn static_scale_never_changes_but_skips_overflows() {
    let mut s = LossScaler::fixed(1024.0);
    assert_eq!(run(&mut s, &[G, O, G]), [(1024.0, false), (1024.0, true), (1024.0, false)]);
}

#[test]
fn defaults_depend_on_whether_any_dynamic_key_was_given_and_on_the_rule() {
    let none_zero = DynamicScaling::from_fp16_block(ScaleRule::Zero, false, 16, 1000, 1.0, 2, false);
    assert_eq!(
        none_zero,
        DynamicScaling {
            initial_scale: 4294967296.0,
            window: 1000,
            min_scale: 1.0,
            hysteresis: 1,
            consecutive_hysteresis: false
        }
    );
    let none_fused = DynamicScaling::from_fp16_block(ScaleRule::Fused, false, 16, 1000, 1.0, 2, false);
    assert_eq!((none_fused.initial_scale, none_fused.min_scale), (65536.0, 1.0));
    // FP16_UnfusedOptimizer (no ZeRO, not Adam): 2^16, window 1000, minimum 0.25.
    let none_unfused = DynamicScaling::from_fp16_block(ScaleRule::Unfused, false, 16, 1000, 1.0, 2, false);
    assert_eq!((none_unfused.initial_scale, none_unfused.window, none_unfused.min_scale), (65536.0, 1000, 0.25));
    let mut u = LossScaler::dynamic(ScaleRule::Unfused, none_unfused);
    let scales: Vec<f64> = (0..18)
        .map(|_| {
            u.update(true).unwrap();
            u.scale()
        })
        .collect();
    assert_eq!(scales[15..], [1.0, 0.5, 0.25], "halves down to 0.25, not 1");
    assert!(u.update(true).is_err(), "then the minimum-scale error");
    let given = DynamicScaling::from_fp16_block(ScaleRule::Zero, true, 12, 500, 0.5, 3, true);
    assert_eq!(
        given,
        DynamicScaling {
            initial_scale: 4096.0,
            window: 500,
            min_scale: 0.5,
            hysteresis: 3,
            consecutive_hysteresis: true
        }
    );
}

#[test]
fn a_long_clean_run_grows_exactly_every_window() {
    // Default window 1000 from 2^16: after 3000 good steps the scale has doubled 3 times, first at the 1000th.
    let mut s = LossScaler::dynamic(ScaleRule::Zero, settings(65536.0, 1000, 2, false));
    let grew: Vec<usize> =
        (0..3000).filter(|_| matches!(s.update(false).unwrap(), ScaleEvent::Grew { .. })).collect::<Vec<_>>();
    assert_eq!(grew.len(), 3);
    assert_eq!(s.scale(), 65536.0 * 8.0);
    let mut t = LossScaler::dynamic(ScaleRule::Zero, settings(65536.0, 1000, 2, false));
    let first = (0..).find(|_| matches!(t.update(false).unwrap(), ScaleEvent::Grew { .. })).unwrap();
    assert_eq!(first, 999, "the 1000th clean boundary");
}
