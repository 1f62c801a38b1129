//! DeepSpeed's batch-size inference table and assertions (semantics §1.2), each row computed by hand.

use rustspeed_config::{BatchSizes, ConfigError, DeepSpeedConfig};

fn config(tb: Option<usize>, mb: Option<usize>, gas: Option<usize>) -> DeepSpeedConfig {
    let mut fields = Vec::new();
    if let Some(tb) = tb {
        fields.push(format!("\"train_batch_size\": {tb}"));
    }
    if let Some(mb) = mb {
        fields.push(format!("\"train_micro_batch_size_per_gpu\": {mb}"));
    }
    if let Some(gas) = gas {
        fields.push(format!("\"gradient_accumulation_steps\": {gas}"));
    }
    DeepSpeedConfig::from_json_str(&format!("{{{}}}", fields.join(", "))).unwrap()
}

fn sizes(train_batch_size: usize, micro_batch_size: usize, gradient_accumulation_steps: usize) -> BatchSizes {
    BatchSizes { train_batch_size, micro_batch_size, gradient_accumulation_steps }
}

/// The DeepSpeed message (first line) and the hint (second line) of a batch-size error.
fn batch_error(result: Result<BatchSizes, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::BatchSize { message, hint }) => (message, hint),
        other => panic!("expected a batch-size error, got {other:?}"),
    }
}

#[test]
fn all_three_given_are_only_checked() {
    assert_eq!(config(Some(48), Some(4), Some(3)).batch_sizes(4).unwrap(), sizes(48, 4, 3));
}

#[test]
fn train_and_micro_infer_accumulation() {
    // GAS = 64 // 4 // 2 = 8
    assert_eq!(config(Some(64), Some(4), None).batch_sizes(2).unwrap(), sizes(64, 4, 8));
}

#[test]
fn train_and_accumulation_infer_micro() {
    // MB = 96 // 4 // 3 = 8
    assert_eq!(config(Some(96), None, Some(3)).batch_sizes(4).unwrap(), sizes(96, 8, 3));
}

#[test]
fn micro_and_accumulation_infer_train() {
    // TB = 6 × 5 × 3 = 90
    assert_eq!(config(None, Some(6), Some(5)).batch_sizes(3).unwrap(), sizes(90, 6, 5));
}

#[test]
fn train_only_gives_one_accumulation_step() {
    // GAS = 1, MB = 64 // 8 = 8
    assert_eq!(config(Some(64), None, None).batch_sizes(8).unwrap(), sizes(64, 8, 1));
}

#[test]
fn micro_only_gives_train_over_world() {
    // TB = 5 × 7 = 35, GAS = 1
    assert_eq!(config(None, Some(5), None).batch_sizes(7).unwrap(), sizes(35, 5, 1));
}

#[test]
fn accumulation_only_or_nothing_is_deepspeeds_error() {
    for cfg in [config(None, None, Some(4)), config(None, None, None)] {
        let (message, hint) = batch_error(cfg.batch_sizes(1));
        assert_eq!(message, "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided");
        assert!(hint.contains("train_micro_batch_size_per_gpu"), "{hint}");
    }
}

#[test]
fn non_divisible_train_batch_rounds_down_then_fails_the_equality() {
    // GAS = 25 // 8 // 1 = 3; 8 × 3 × 1 = 24 ≠ 25.
    let err = config(Some(25), Some(8), None).batch_sizes(1).unwrap_err();
    let text = err.to_string();
    let (first, second) = text.split_once('\n').unwrap();
    assert_eq!(
        first,
        "Check batch related parameters. train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * \
         world_size 25 != 8 * 3 * 1"
    );
    assert!(second.starts_with(
        "hint: with world size 1, train_batch_size must equal train_micro_batch_size_per_gpu × \
         gradient_accumulation_steps × world size = 8 × 3 × 1 = 24"
    ));
    assert!(second.contains("25 // 8 // 1 = 3"), "{second}");
}

#[test]
fn non_divisible_train_over_world_and_accumulation() {
    // MB = 50 // 4 // 3 = 4; 4 × 3 × 4 = 48 ≠ 50.
    let (message, hint) = batch_error(config(Some(50), None, Some(3)).batch_sizes(4));
    assert!(message.ends_with("50 != 4 * 3 * 4"), "{message}");
    assert!(hint.contains("= 48") && hint.contains("50 // 4 // 3 = 4"), "{hint}");
    // TB only: MB = 10 // 4 = 2; 2 × 1 × 4 = 8 ≠ 10.
    let (message, _) = batch_error(config(Some(10), None, None).batch_sizes(4));
    assert!(message.ends_with("10 != 2 * 1 * 4"), "{message}");
}

#[test]
fn inconsistent_triple_is_the_equality_error() {
    let (message, hint) = batch_error(config(Some(32), Some(4), Some(2)).batch_sizes(2));
    assert!(message.ends_with("32 != 4 * 2 * 2"), "{message}");
    assert!(hint.contains("= 16"), "{hint}");
}

#[test]
fn zero_train_batch_is_deepspeeds_error() {
    let (message, _) = batch_error(config(Some(0), Some(4), Some(1)).batch_sizes(1));
    assert_eq!(message, "Train batch size: 0 has to be greater than 0");
    // MB only with MB = 0 → TB = 0 × W = 0, checked first.
    let (message, hint) = batch_error(config(None, Some(0), None).batch_sizes(2));
    assert_eq!(message, "Train batch size: 0 has to be greater than 0");
    assert!(hint.contains("0 × 1 × 2 = 0"), "{hint}");
}

#[test]
fn micro_batch_below_one_is_deepspeeds_error() {
    // TB only: MB = 4 // 8 = 0.
    let (message, hint) = batch_error(config(Some(4), None, None).batch_sizes(8));
    assert_eq!(message, "Micro batch size per gpu: 0 has to be greater than 0");
    assert!(hint.contains("4 // 8 = 0"), "{hint}");
    // TB, GAS: MB = 8 // 2 // 8 = 0.
    let (message, hint) = batch_error(config(Some(8), None, Some(8)).batch_sizes(2));
    assert_eq!(message, "Micro batch size per gpu: 0 has to be greater than 0");
    assert!(hint.contains("8 // 2 // 8 = 0") && hint.contains("at least world size × accumulation = 16"), "{hint}");
}

#[test]
fn accumulation_below_one_is_deepspeeds_error() {
    // TB, MB: GAS = 8 // 4 // 4 = 0.
    let (message, hint) = batch_error(config(Some(8), Some(4), None).batch_sizes(4));
    assert_eq!(message, "Gradient accumulation steps: 0 has to be greater than 0");
    assert!(hint.contains("8 // 4 // 4 = 0"), "{hint}");
    let (message, _) = batch_error(config(Some(8), Some(4), Some(0)).batch_sizes(1));
    assert_eq!(message, "Gradient accumulation steps: 0 has to be greater than 0");
}

#[test]
fn division_by_a_given_zero_is_an_error_not_a_panic() {
    let (message, _) = batch_error(config(Some(8), Some(0), None).batch_sizes(1));
    assert_eq!(message, "Micro batch size per gpu: 0 has to be greater than 0");
    let (message, _) = batch_error(config(Some(8), None, Some(0)).batch_sizes(1));
    assert_eq!(message, "Gradient accumulation steps: 0 has to be greater than 0");
    assert!(matches!(config(Some(8), None, None).batch_sizes(0), Err(ConfigError::BatchSize { .. })));
}

#[test]
fn every_success_satisfies_the_identity_and_keeps_given_values() {
    let values = [None, Some(1), Some(2), Some(3), Some(6), Some(12), Some(24)];
    for tb in values {
        for mb in values {
            for gas in values {
                for world in [1, 2, 3, 4] {
                    let Ok(s) = config(tb, mb, gas).batch_sizes(world) else { continue };
                    assert_eq!(s.train_batch_size, s.micro_batch_size * s.gradient_accumulation_steps * world);
                    assert!(tb.is_none_or(|tb| tb == s.train_batch_size));
                    assert!(mb.is_none_or(|mb| mb == s.micro_batch_size));
                    assert!(gas.is_none_or(|gas| gas == s.gradient_accumulation_steps));
                }
            }
        }
    }
}
