//! Error messages: each names the key path, the value and the rule, or is DeepSpeed's own text.

use rustspeed_config::{ConfigError, DeepSpeedConfig};

fn error(text: &str) -> ConfigError {
    match DeepSpeedConfig::from_json_str(text) {
        Ok(config) => panic!("{text} parsed as {config:?}"),
        Err(e) => e,
    }
}

fn message(text: &str) -> String {
    error(text).to_string()
}

fn unknown(text: &str) -> (String, Option<String>) {
    match error(text) {
        ConfigError::UnknownKey { path, suggestion, .. } => (path, suggestion),
        other => panic!("expected an unknown key, got {other}"),
    }
}

#[test]
fn the_seeds_config_gets_shape_errors_one_by_one() {
    // The seed's config (shared/seed, §5.3), in JSON.
    let seed = r#"{"train_batch_size": 64, "fp16": true, "loss_scale": 1024, "optimizer": "deepspeed",
        "lr": 0.001, "scheduler": "constant", "gradient_accumulation_steps": 1}"#;
    assert_eq!(message(seed), r#"`fp16` must be an object such as `"fp16": {"enabled": true}`, got true"#);
    let step2 = seed.replace(r#""fp16": true"#, r#""fp16": {"enabled": true}"#);
    let m = message(&step2);
    assert!(m.starts_with("`optimizer` must be an object such as `\"optimizer\": {\"type\": \"AdamW\""), "{m}");
    assert!(m.ends_with("got \"deepspeed\""), "{m}");
    let step3 = step2.replace(r#""optimizer": "deepspeed""#, r#""optimizer": {"type": "Adam"}"#);
    let m = message(&step3);
    assert!(m.starts_with("`scheduler` must be an object such as `\"scheduler\": {\"type\": \"WarmupLR\""), "{m}");
    assert!(m.contains("constant learning rate"), "{m}");
    let step4 = step3.replace(r#", "scheduler": "constant""#, "");
    let m = message(&step4);
    assert!(m.starts_with("unknown key `loss_scale`; `loss_scale` belongs in the fp16 block"), "{m}");
    let step5 = step4.replace(r#" "loss_scale": 1024,"#, "");
    let m = message(&step5);
    assert!(m.starts_with("unknown key `lr`; optimizer settings go in optimizer.params"), "{m}");
    let fixed = step5.replace(r#""lr": 0.001,"#, "");
    assert!(DeepSpeedConfig::from_json_str(&fixed).unwrap().fp16.enabled);
}

#[test]
fn bare_bf16_bool_says_the_right_shape() {
    assert_eq!(
        message(r#"{"bf16": true}"#),
        r#"`bf16` must be an object such as `"bf16": {"enabled": true}`, got true"#
    );
    assert_eq!(
        message(r#"{"fp16": false}"#),
        r#"`fp16` must be an object such as `"fp16": {"enabled": false}`, got false"#
    );
}

#[test]
fn unknown_keys_name_the_full_path_and_the_closest_key() {
    assert_eq!(
        unknown(r#"{"train_batch_sise": 8}"#),
        ("train_batch_sise".to_string(), Some("train_batch_size".to_string()))
    );
    assert_eq!(
        unknown(r#"{"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_sise": 100}}"#),
        ("zero_optimization.stage3_prefetch_bucket_sise".to_string(), Some("stage3_prefetch_bucket_size".to_string()))
    );
    assert_eq!(
        unknown(r#"{"optimizer": {"type": "AdamW", "params": {"weight_decy": 0.1}}}"#),
        ("optimizer.params.weight_decy".to_string(), Some("weight_decay".to_string()))
    );
    assert_eq!(
        unknown(r#"{"scheduler": {"type": "WarmupLR", "params": {"warmup_max_lrr": 0.1}}}"#),
        ("scheduler.params.warmup_max_lrr".to_string(), Some("warmup_max_lr".to_string()))
    );
    assert_eq!(
        unknown(r#"{"fp16": {"enabled": true, "loss_scale_windw": 500}}"#),
        ("fp16.loss_scale_windw".to_string(), Some("loss_scale_window".to_string()))
    );
    assert_eq!(
        unknown(r#"{"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memroy": true}}}"#),
        ("zero_optimization.offload_optimizer.pin_memroy".to_string(), Some("pin_memory".to_string()))
    );
    assert_eq!(
        message(r#"{"zero_optimization": {"stage3_prefetch_bucket_sise": 1}}"#),
        "unknown key `zero_optimization.stage3_prefetch_bucket_sise`; did you mean `stage3_prefetch_bucket_size`?"
    );
}

#[test]
fn far_away_unknown_keys_get_no_suggestion() {
    assert_eq!(unknown(r#"{"zero_optimization": {"colour": 1}}"#), ("zero_optimization.colour".to_string(), None));
    assert_eq!(unknown(r#"{"fp16": {"x": 1}}"#), ("fp16.x".to_string(), None));
    // Two edits in a four-letter key is another word, not a typo.
    assert_eq!(unknown(r#"{"bf16": {"enbl": true}}"#), ("bf16.enbl".to_string(), None));
}

#[test]
fn misplaced_keys_say_where_they_belong() {
    assert!(message(r#"{"stage": 2}"#).contains("belongs in the zero_optimization block"));
    assert!(message(r#"{"warmup_num_steps": 10}"#).contains("scheduler.params"));
    assert!(message(r#"{"max_grad_norm": 1.0}"#).contains("`gradient_clipping`"));
    assert!(message(r#"{"batch_size": 8}"#).contains("train_micro_batch_size_per_gpu"));
}

#[test]
fn wrong_types_name_path_value_and_rule() {
    assert_eq!(message(r#"{"gradient_clipping": "1.0"}"#), r#"`gradient_clipping` must be a number ≥ 0, got "1.0""#);
    assert_eq!(message(r#"{"gradient_clipping": -1}"#), "`gradient_clipping` must be a number ≥ 0, got -1");
    assert_eq!(message(r#"{"wall_clock_breakdown": 1}"#), "`wall_clock_breakdown` must be true or false, got 1");
    assert_eq!(message(r#"{"fp16": {"enabled": "yes"}}"#), r#"`fp16.enabled` must be true or false, got "yes""#);
    assert_eq!(
        message(r#"{"train_micro_batch_size_per_gpu": -2}"#),
        "`train_micro_batch_size_per_gpu` must be an integer ≥ 0, got -2"
    );
    assert_eq!(message(r#"{"steps_per_print": 0}"#), "`steps_per_print` must be an integer ≥ 1, got 0");
    assert_eq!(message(r#"{"fp16": {"hysteresis": 0}}"#), "`fp16.hysteresis` must be an integer ≥ 1, got 0");
    assert_eq!(
        message(r#"{"optimizer": {"type": "Adam", "params": {"lr": -0.1}}}"#),
        "`optimizer.params.lr` must be a number ≥ 0, got -0.1"
    );
}

#[test]
fn whole_floats_are_integers_and_fractions_are_refused() {
    // DeepSpeed's documentation writes bucket sizes as 5e8; a whole number is an integer whatever its spelling.
    let parsed = DeepSpeedConfig::from_json_str(
        r#"{"train_batch_size": 8.0, "zero_optimization": {"reduce_bucket_size": 5e8}}"#,
    )
    .unwrap();
    assert_eq!(parsed.train_batch_size, Some(8));
    assert_eq!(parsed.zero_optimization.reduce_bucket_size, 500_000_000);
    assert_eq!(message(r#"{"train_batch_size": 8.5}"#), "`train_batch_size` must be an integer ≥ 0, got 8.5");
    assert_eq!(message(r#"{"train_batch_size": -8.0}"#), "`train_batch_size` must be an integer ≥ 0, got -8.0");
}

#[test]
fn betas_errors_name_the_element() {
    assert_eq!(
        message(r#"{"optimizer": {"type": "Adam", "params": {"betas": [0.9]}}}"#),
        "`optimizer.params.betas` must be a list of two numbers [beta1, beta2], each in [0, 1), got [0.9]"
    );
    assert_eq!(
        message(r#"{"optimizer": {"type": "Lion", "params": {"betas": [0.9, 1.5]}}}"#),
        "`optimizer.params.betas[1]` must be a number in [0, 1), got 1.5"
    );
}

#[test]
fn zero_stage_out_of_range() {
    let m = message(r#"{"zero_optimization": {"stage": 4}}"#);
    assert!(m.starts_with("`zero_optimization.stage` must be 0, 1, 2 or 3"), "{m}");
    assert!(m.ends_with("got 4"), "{m}");
}

#[test]
fn auto_at_the_top_level_is_refused() {
    let m = message(r#"{"train_batch_size": "auto"}"#);
    assert!(m.starts_with("`train_batch_size` must be an integer: \"auto\""), "{m}");
}

#[test]
fn deepspeeds_own_error_texts() {
    assert_eq!(
        message(r#"{"optimizer": {"type": "AdamW", "params": {"lr": 0.001, "max_grad_norm": 1.0}}}"#),
        "`optimizer.params.max_grad_norm`: 'max_grad_norm' is not supported as an optimizer parameter, please \
         switch to using the deepspeed parameter 'gradient_clipping' see: \
         https://www.deepspeed.ai/docs/config-json/#gradient-clipping for more details"
    );
    assert_eq!(
        message(r#"{"fp16": {"enabled": true}, "bf16": {"enabled": true}}"#),
        "`bf16.enabled`: bfloat16 and fp16 modes cannot be simultaneously enabled"
    );
    let m = message(r#"{"optimizer": {"type": "Lamb"}, "fp16": {"enabled": true, "loss_scale": 128}}"#);
    assert!(m.starts_with("`fp16.loss_scale`: DeepSpeed lamb optimizer requires dynamic loss scaling"), "{m}");
    DeepSpeedConfig::from_json_str(r#"{"optimizer": {"type": "Lamb"}, "fp16": {"enabled": true}}"#).unwrap();
    DeepSpeedConfig::from_json_str(r#"{"optimizer": {"type": "Lamb"}, "fp16": {"loss_scale": 128}}"#).unwrap();
    assert_eq!(
        message(r#"{"communication_data_type": "fp64"}"#),
        "`communication_data_type`: Invalid communication_data_type. Supported data types: ['fp16', 'bf16', \
         'fp32']. Got: fp64"
    );
    assert_eq!(
        message(r#"{"fp16": {"enabled": true, "fp16_master_weights_and_grads": true}}"#),
        "`fp16.fp16_master_weights_and_grads`: Fp16_master_weights_and_grads is only supported with ZeRO Stage 2 \
         for now."
    );
    assert_eq!(
        message(r#"{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}}"#),
        "`zero_optimization.offload_optimizer.ratio`: Partial offloading only supported for ZeRO Stage 3."
    );
    assert!(message(r#"{"zero_optimization": {"stage": 1, "allgather_bucket_size": 7}}"#)
        .contains("allgather_bucket_size must be a multiple of nccl_start_alignment_factor, 2"));
}

#[test]
fn unknown_optimizer_types() {
    let m = message(r#"{"optimizer": {"type": "FusedAdam"}}"#);
    assert_eq!(
        m,
        "`optimizer.type`: FusedAdam is not a supported DeepSpeed Optimizer; rustspeed supports Adam, AdamW, Lamb, \
         Lion, SGD"
    );
    let m = message(r#"{"optimizer": {"type": "sgd"}}"#);
    assert!(m.contains("sgd is not a supported DeepSpeed Optimizer") && m.contains("did you mean `SGD`?"), "{m}");
    assert!(matches!(error(r#"{"optimizer": {"type": "OneBitAdam"}}"#), ConfigError::Unsupported { .. }));
    assert!(matches!(error(r#"{"optimizer": {"type": "RMSprop"}}"#), ConfigError::Unsupported { .. }));
    assert!(matches!(error(r#"{"optimizer": {"params": {}}}"#), ConfigError::MissingKey { .. }));
}

#[test]
fn optimizer_parameter_rules() {
    assert_eq!(
        message(r#"{"optimizer": {"type": "SGD", "params": {"nesterov": true}}}"#),
        "`optimizer.params.nesterov`: Nesterov momentum requires a momentum and zero dampening (torch.optim.SGD); \
         got momentum 0 and dampening 0"
    );
    DeepSpeedConfig::from_json_str(r#"{"optimizer": {"type": "SGD", "params": {"nesterov": true, "momentum": 0.9}}}"#)
        .unwrap();
    assert!(message(r#"{"optimizer": {"type": "AdamW", "params": {"adam_w_mode": false}}}"#)
        .contains("type \"AdamW\" always uses decoupled weight decay"));
    assert!(matches!(
        error(r#"{"optimizer": {"type": "Adam", "params": {"amsgrad": true}}}"#),
        ConfigError::Unsupported { .. }
    ));
}

#[test]
fn unknown_scheduler_types_and_missing_params() {
    assert_eq!(
        message(r#"{"scheduler": {"type": "Constant"}}"#),
        "`scheduler.type`: DeepSpeed does not recognize LR scheduler Constant; rustspeed supports WarmupLR, \
         WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest; leave the scheduler block out for a constant \
         learning rate"
    );
    assert!(message(r#"{"scheduler": {"type": "warmupLR"}}"#).contains("did you mean `WarmupLR`?"));
    assert!(matches!(error(r#"{"scheduler": {"type": "StepLR"}}"#), ConfigError::Unsupported { .. }));
    assert_eq!(
        message(r#"{"scheduler": {"type": "WarmupDecayLR"}}"#),
        "`scheduler.params.total_num_steps` is required for scheduler WarmupDecayLR"
    );
    assert_eq!(
        message(r#"{"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.1}}}"#),
        "`scheduler.params.cycle_max_lr` is required for scheduler OneCycle"
    );
    assert_eq!(
        message(r#"{"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}}"#),
        r#"`scheduler.params.warmup_type` must be one of "log", "linear", got "cosine""#
    );
    assert!(message(r#"{"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 1000}}}"#)
        .contains("must be greater than warmup_num_steps (1000)"));
}

#[test]
fn enabled_unimplemented_blocks_are_not_supported() {
    let m = message(r#"{"flops_profiler": {"enabled": true}}"#);
    assert!(m.starts_with("`flops_profiler.enabled` is not supported by rustspeed"), "{m}");
    let m = message(r#"{"activation_checkpointing": {"partition_activations": true}}"#);
    assert!(m.starts_with("`activation_checkpointing.partition_activations` is not supported by rustspeed"), "{m}");
    assert_eq!(
        unknown(r#"{"activation_checkpointing": {"cpu_checkpointin": false}}"#),
        ("activation_checkpointing.cpu_checkpointin".to_string(), Some("cpu_checkpointing".to_string()))
    );
    for key in ["contiguous_memory_optimization\": true", "number_checkpoints\": 4", "profile\": true"] {
        let m = message(&format!(r#"{{"activation_checkpointing": {{"{key}}}}}"#));
        let name = key.split('"').next().unwrap();
        assert!(m.starts_with(&format!("`activation_checkpointing.{name}` is not supported")), "{m}");
    }
    assert!(message(r#"{"amp": true}"#).starts_with("`amp` must be an object"));
}

#[test]
fn deprecated_and_conflicting_keys() {
    assert!(message(r#"{"zero_optimization": {"cpu_offload": true}}"#).contains("\"offload_optimizer\""));
    assert!(message(r#"{"zero_optimization": {"prefetch_bucket_size": 1, "stage3_prefetch_bucket_size": 2}}"#)
        .contains("give only one"));
    assert!(message(r#"{"bf16": {}, "bfloat16": {}}"#).contains("give only `bf16`"));
    assert!(matches!(
        error(r#"{"zero_optimization": {"offload_param": {"device": "nvme"}}}"#),
        ConfigError::MissingKey { .. }
    ));
}

#[test]
fn duplicate_keys_are_refused_with_their_path() {
    assert_eq!(
        error(r#"{"zero_optimization": {"stage": 1, "stage": 2}}"#),
        ConfigError::DuplicateKey { path: "zero_optimization.stage".to_string() }
    );
    assert_eq!(
        error(r#"{"a": [{"x": 1}, {"y": 1, "y": 2}]}"#),
        ConfigError::DuplicateKey { path: "a[1].y".to_string() }
    );
    // Keys compared after unescaping: "\u0061" is "a".
    assert_eq!(error(r#"{"a": 1, "\u0061": 2}"#), ConfigError::DuplicateKey { path: "a".to_string() });
}

#[test]
fn syntax_errors_give_line_and_column_and_spot_comments() {
    match error("{\n  \"train_batch_size\": 8,\n  // a comment\n}") {
        ConfigError::Syntax { line, message, .. } => {
            assert_eq!(line, 3);
            assert!(message.contains("comments are not allowed"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(matches!(error("[1, 2]"), ConfigError::InvalidValue { .. }));
}

#[test]
fn file_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("rustspeed-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.json");
    let e = DeepSpeedConfig::from_file(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }) && e.to_string().contains("missing.json"), "{e}");
    let latin1 = dir.join("latin1.json");
    std::fs::write(&latin1, b"{\"x\": \"caf\xe9\"}").unwrap();
    let e = DeepSpeedConfig::from_file(&latin1).unwrap_err();
    assert!(e.to_string().contains("latin1.json") && e.to_string().contains("not UTF-8"), "{e}");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"train_batch_size\": }").unwrap();
    let e = DeepSpeedConfig::from_file(&broken).unwrap_err();
    assert!(e.to_string().starts_with(&format!("`{}`: invalid JSON at line 1", broken.display())), "{e}");
    let good = dir.join("good.json");
    std::fs::write(&good, "\u{feff}{\"train_micro_batch_size_per_gpu\": 2}").unwrap();
    assert_eq!(DeepSpeedConfig::from_file(&good).unwrap().train_micro_batch_size_per_gpu, Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn network_monitors_stay_refused_and_say_why() {
    assert_eq!(
        message(r#"{"wandb": {"enabled": true, "project": "p"}}"#),
        "`wandb.enabled` is not supported by rustspeed: rustspeed does not implement DeepSpeed's `wandb` (it needs \
         the Weights & Biases service); use csv_monitor or tensorboard, or set \"enabled\": false"
    );
    let m = message(r#"{"comet": {"enabled": true}}"#);
    assert!(m.starts_with("`comet.enabled` is not supported by rustspeed"), "{m}");
    assert!(m.contains("it needs the Comet ML service") && m.contains("use csv_monitor or tensorboard"), "{m}");
    // Still accepted when off, other keys ignored as before.
    DeepSpeedConfig::from_json_str(r#"{"wandb": {"enabled": false, "team": "t"}, "comet": {}}"#).unwrap();
}

#[test]
fn monitor_blocks_check_their_keys_and_types() {
    for block in ["csv_monitor", "tensorboard"] {
        // Unknown keys are errors (pydantic extra="forbid"), enabled or not, with the closest key.
        for enabled in [true, false] {
            assert_eq!(
                unknown(&format!(r#"{{"{block}": {{"enabled": {enabled}, "output_pth": "x"}}}}"#)),
                (format!("{block}.output_pth"), Some("output_path".to_string()))
            );
        }
        // A misspelt switch is not a disabled block.
        assert_eq!(
            unknown(&format!(r#"{{"{block}": {{"enable": true}}}}"#)),
            (format!("{block}.enable"), Some("enabled".to_string()))
        );
        assert_eq!(
            message(&format!(r#"{{"{block}": {{"enabled": "yes"}}}}"#)),
            format!(r#"`{block}.enabled` must be true or false, got "yes""#)
        );
        assert_eq!(
            message(&format!(r#"{{"{block}": {{"enabled": true, "job_name": 7}}}}"#)),
            format!("`{block}.job_name` must be a string, got 7")
        );
        assert_eq!(
            message(&format!(r#"{{"{block}": true}}"#)),
            format!(r#"`{block}` must be an object such as `"{block}": {{"enabled": true}}`, got true"#)
        );
    }
    // A monitor key at the top level is unknown there.
    assert_eq!(unknown(r#"{"job_name": "x"}"#).0, "job_name");
}
