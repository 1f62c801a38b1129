//! A realistic DeepSpeed config parses with the right values, and `to_json` round-trips exactly.

use rustspeed_config::*;

/// In the shape of DeepSpeed's documented examples (Adam + WarmupLR + fp16 + ZeRO stage 2), with the bucket sizes
/// written as integers (the docs write `2e8`, which rustspeed refuses as a float).
const DOCS_STYLE_CONFIG: &str = r#"{
  "train_batch_size": 32,
  "train_micro_batch_size_per_gpu": 4,
  "gradient_accumulation_steps": 4,
  "steps_per_print": 100,
  "gradient_clipping": 1.0,
  "wall_clock_breakdown": false,
  "optimizer": {
    "type": "Adam",
    "params": {"lr": 0.0001, "betas": [0.8, 0.999], "eps": 1e-8, "weight_decay": 3e-7}
  },
  "scheduler": {
    "type": "WarmupLR",
    "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 1000}
  },
  "fp16": {
    "enabled": true,
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "initial_scale_power": 16,
    "hysteresis": 2,
    "min_loss_scale": 1
  },
  "zero_optimization": {
    "stage": 2,
    "allgather_partitions": true,
    "allgather_bucket_size": 200000000,
    "overlap_comm": true,
    "reduce_scatter": true,
    "reduce_bucket_size": 200000000,
    "contiguous_gradients": true
  },
  "tensorboard": {"enabled": false, "output_path": "logs/", "job_name": "bert"}
}"#;

#[test]
fn docs_style_config_parses_with_the_right_values() {
    let c = DeepSpeedConfig::from_json_str(DOCS_STYLE_CONFIG).unwrap();
    assert_eq!(
        c.batch_sizes(2).unwrap(),
        BatchSizes { train_batch_size: 32, micro_batch_size: 4, gradient_accumulation_steps: 4 }
    );
    assert!(c.batch_sizes(1).is_err(), "32 != 4 * 4 * 1");
    assert_eq!(c.steps_per_print, Some(100));
    assert_eq!(c.gradient_clipping, 1.0);
    let Some(OptimizerConfig::Adam(adam)) = &c.optimizer else { panic!("{:?}", c.optimizer) };
    assert_eq!(adam.kind, AdamKind::Adam);
    assert!(adam.adam_w_mode, "DeepSpeed's \"Adam\" is AdamW unless adam_w_mode is false");
    assert_eq!((adam.lr, adam.betas, adam.eps, adam.weight_decay), (0.0001, [0.8, 0.999], 1e-8, 3e-7));
    let Some(SchedulerConfig::WarmupLR(warmup)) = &c.scheduler else { panic!("{:?}", c.scheduler) };
    assert_eq!((warmup.warmup_min_lr, warmup.warmup_max_lr, warmup.warmup_num_steps), (0.0, 0.001, 1000));
    assert_eq!(warmup.warmup_type, WarmupType::Log);
    assert!(c.fp16.enabled && c.fp16.is_dynamic() && c.fp16.dynamic_keys_given);
    assert_eq!((c.fp16.initial_scale_power, c.fp16.loss_scale_window, c.fp16.hysteresis), (16, 1000, 2));
    assert_eq!(c.fp16.min_loss_scale, 1.0);
    assert!(!c.bf16.enabled);
    let z = &c.zero_optimization;
    assert_eq!(z.stage, 2);
    assert_eq!((z.allgather_bucket_size, z.reduce_bucket_size), (200_000_000, 200_000_000));
    assert!(z.overlap_comm() && z.reduce_scatter && z.contiguous_gradients && z.allgather_partitions);
}

fn round_trip(config: &DeepSpeedConfig) {
    let text = config.to_json().to_string();
    let again = DeepSpeedConfig::from_json_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(&again, config, "{text}");
}

#[test]
fn to_json_round_trips() {
    round_trip(&DeepSpeedConfig::default());
    round_trip(&DeepSpeedConfig::from_json_str(DOCS_STYLE_CONFIG).unwrap());
    // fp16 enabled without dynamic keys must stay "no dynamic key given".
    let c = DeepSpeedConfig::from_json_str(r#"{"fp16": {"enabled": true}}"#).unwrap();
    assert!(!c.fp16.dynamic_keys_given);
    round_trip(&c);
    // Floats that need all 17 digits.
    let c = DeepSpeedConfig::from_json_str(
        r#"{"gradient_clipping": 0.30000000000000004, "optimizer": {"type": "Lion",
            "params": {"lr": 0.00033333333333333332, "betas": [0.95, 0.98], "weight_decay": 0.1}}}"#,
    )
    .unwrap();
    round_trip(&c);
}

#[test]
fn every_block_with_non_default_values_round_trips() {
    let texts = [
        r#"{"train_micro_batch_size_per_gpu": 3, "steps_per_print": 7, "memory_breakdown": true, "dump_state": true,
            "prescale_gradients": true, "gradient_predivide_factor": 2.5, "communication_data_type": "BF16",
            "seq_parallel_comm_data_type": "fp16", "sparse_gradients": true, "zero_allow_untested_optimizer": true,
            "zero_force_ds_cpu_optimizer": false, "dataloader_drop_last": true, "vocabulary_size": 50257,
            "graph_harvesting": true, "data_types": {"grad_accum_dtype": "fp32"}, "wall_clock_breakdown": true,
            "bfloat16": {"enabled": true, "immediate_grad_update": true},
            "optimizer": {"type": "adamw", "params": {"bias_correction": false, "torch_adam": true}},
            "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 10, "warmup_type": "linear",
                "warmup_num_steps": 1}}}"#,
        r#"{"train_batch_size": 16, "fp16": {"enabled": true, "auto_cast": true, "loss_scale": 0,
                "consecutive_hysteresis": true, "min_loss_scale": 0.25, "fp16_master_weights_and_grads": true},
            "optimizer": {"type": "Lamb", "params": {"max_coeff": 5, "min_coeff": 0.1, "eps_inside_sqrt": true}},
            "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 0.001, "cycle_max_lr": 0.01,
                "cycle_second_step_size": 300, "cycle_second_stair_count": 2, "decay_step_size": 10,
                "decay_lr_rate": 0.1, "cycle_momentum": false}},
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": true}}}"#,
        r#"{"optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "nesterov": true,
                "weight_decay": 0.0001}},
            "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 5000, "warmup_min_ratio": 0.1,
                "cos_min_ratio": 0.01}},
            "zero_optimization": {"stage": 3, "overlap_comm": false, "sub_group_size": 1000,
                "prefetch_bucket_size": 5, "stage3_param_persistence_threshold": 6, "max_reuse_distance": 8,
                "offload_param": {"device": "nvme", "nvme_path": "/local_nvme"},
                "offload_optimizer": {"device": "nvme", "nvme_path": "/nvme", "ratio": 0.5},
                "zeropp_loco_param": {"err_beta": 0.5, "reset_T": 10}, "mics_shard_size": 4,
                "zero_hpz_partition_size": 8, "zero_quantized_gradients": true, "elastic_checkpoint": true}}"#,
        r#"{"scheduler": {"type": "LRRangeTest", "params": {"lr_range_test_min_lr": 0.0001,
                "lr_range_test_step_size": 10, "lr_range_test_step_rate": 2, "lr_range_test_staircase": true}},
            "zero_optimization": true, "allgather_size": 64}"#,
        r#"{"tensorboard": {"enabled": true}, "csv_monitor": {"enabled": true, "output_path": "logs/", "job_name": "j"}}"#,
    ];
    for text in texts {
        let config = DeepSpeedConfig::from_json_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_ne!(config, DeepSpeedConfig::default());
        round_trip(&config);
    }
}

#[test]
fn to_json_writes_the_canonical_names() {
    let c = DeepSpeedConfig::from_json_str(
        r#"{"bfloat16": {"enabled": true}, "zero_optimization": true, "optimizer": {"type": "adamw"},
            "communication_data_type": "FP32", "zero_optimization_unused": null}"#,
    );
    // `null` counts as absent, so the unknown key with a null value is still unknown.
    assert!(c.is_err());
    let c = DeepSpeedConfig::from_json_str(
        r#"{"bfloat16": {"enabled": true}, "zero_optimization": true, "optimizer": {"type": "adamw"},
            "communication_data_type": "FP32"}"#,
    )
    .unwrap();
    let json = c.to_json();
    assert_eq!(json["bf16"]["enabled"], true);
    assert!(json.get("bfloat16").is_none());
    assert_eq!(json["zero_optimization"]["stage"], 1);
    assert_eq!(json["optimizer"]["type"], "AdamW");
    assert_eq!(json["communication_data_type"], "fp32");
}

#[test]
fn monitors_appear_in_the_record_only_when_enabled() {
    // A disabled block (the docs-style config's tensorboard) is left out, so records of runs without monitors
    // stay as they were.
    let json = DeepSpeedConfig::from_json_str(DOCS_STYLE_CONFIG).unwrap().to_json();
    assert!(json.get("tensorboard").is_none() && json.get("csv_monitor").is_none(), "{json}");
    let c = DeepSpeedConfig::from_json_str(r#"{"csv_monitor": {"enabled": true, "output_path": "out"}}"#).unwrap();
    let json = c.to_json();
    assert_eq!(
        json["csv_monitor"],
        serde_json::json!({"enabled": true, "output_path": "out", "job_name": "DeepSpeedJobName"})
    );
    assert!(json.get("tensorboard").is_none());
}
