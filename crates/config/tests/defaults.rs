//! Default values of every block, checked against DeepSpeed 0.16.5's code defaults as listed in the semantics
//! reference (§1.3–1.7), written out here by hand.

use rustspeed_config::*;

fn parse(text: &str) -> DeepSpeedConfig {
    DeepSpeedConfig::from_json_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn empty_config_has_deepspeeds_top_level_defaults() {
    let c = parse("{}");
    assert_eq!(c.train_batch_size, None);
    assert_eq!(c.train_micro_batch_size_per_gpu, None);
    assert_eq!(c.gradient_accumulation_steps, None);
    assert_eq!(c.steps_per_print, None);
    assert_eq!(c.gradient_clipping, 0.0);
    assert!(c.optimizer.is_none() && c.scheduler.is_none());
    assert!(!c.wall_clock_breakdown && !c.memory_breakdown && !c.dump_state && !c.prescale_gradients);
    assert_eq!(c.gradient_predivide_factor, 1.0);
    assert_eq!(c.communication_data_type, None);
    assert_eq!(c.seq_parallel_comm_data_type, DataType::Fp32);
    assert!(!c.sparse_gradients && !c.zero_allow_untested_optimizer && c.zero_force_ds_cpu_optimizer);
    assert!(!c.dataloader_drop_last && !c.graph_harvesting);
    assert_eq!(c.vocabulary_size, None);
    assert_eq!(c.grad_accum_dtype, None);
    assert_eq!(c, DeepSpeedConfig::default());
}

#[test]
fn activation_checkpointing_is_on_when_its_block_is_present() {
    assert_eq!(parse("{}").activation_checkpointing, None);
    let c = parse(
        r#"{"activation_checkpointing": {"partition_activations": false, "number_checkpoints": null,
            "cpu_checkpointing": true, "synchronize_checkpoint_boundary": true}}"#,
    );
    let on = c.activation_checkpointing.expect("the block turns it on");
    assert!(on.cpu_checkpointing && on.synchronize_checkpoint_boundary && !on.profile);
    assert!(parse(r#"{"activation_checkpointing": {}}"#).activation_checkpointing.is_some());
}

#[test]
fn fp16_defaults() {
    for text in ["{}", r#"{"fp16": {}}"#, r#"{"fp16": {"enabled": false}}"#] {
        let f = parse(text).fp16;
        assert!(!f.enabled && !f.auto_cast && !f.consecutive_hysteresis && !f.fp16_master_weights_and_grads);
        assert_eq!(f.loss_scale, 0.0);
        assert!(f.is_dynamic());
        assert_eq!(f.initial_scale_power, 16);
        assert_eq!(f.loss_scale_window, 1000);
        assert_eq!(f.hysteresis, 2);
        assert_eq!(f.min_loss_scale, 1.0);
        assert!(!f.dynamic_keys_given);
    }
}

#[test]
fn fp16_records_whether_any_dynamic_key_was_given() {
    let f = parse(r#"{"fp16": {"enabled": true, "loss_scale": 0}}"#).fp16;
    assert!(f.enabled && !f.dynamic_keys_given, "loss_scale is not a dynamic-scaler key");
    for key in ["initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"] {
        let f = parse(&format!(r#"{{"fp16": {{"enabled": true, "{key}": 4}}}}"#)).fp16;
        assert!(f.dynamic_keys_given, "{key}");
    }
    assert!(parse(r#"{"fp16": {"consecutive_hysteresis": false}}"#).fp16.dynamic_keys_given);
    assert!(!parse(r#"{"fp16": {"hysteresis": "auto"}}"#).fp16.dynamic_keys_given, "\"auto\" = not given");
}

#[test]
fn bf16_defaults_and_legacy_alias() {
    let b = parse("{}").bf16;
    assert!(!b.enabled && !b.immediate_grad_update);
    assert!(parse(r#"{"bf16": {"enabled": true}}"#).bf16.enabled);
    assert!(parse(r#"{"bfloat16": {"enabled": true}}"#).bf16.enabled);
}

#[test]
fn adam_defaults() {
    for name in ["Adam", "adam", "ADAM"] {
        let Some(OptimizerConfig::Adam(a)) = parse(&format!(r#"{{"optimizer": {{"type": "{name}"}}}}"#)).optimizer
        else {
            panic!("{name} is Adam")
        };
        assert_eq!(a.kind, AdamKind::Adam);
        assert_eq!((a.lr, a.betas, a.eps, a.weight_decay), (1e-3, [0.9, 0.999], 1e-8, 0.0));
        assert!(a.bias_correction && a.adam_w_mode && !a.torch_adam);
    }
    let Some(OptimizerConfig::Adam(a)) = parse(r#"{"optimizer": {"type": "adamw", "params": {}}}"#).optimizer else {
        panic!("AdamW is Adam")
    };
    assert_eq!(a.kind, AdamKind::AdamW);
    assert!(a.adam_w_mode);
    let Some(OptimizerConfig::Adam(a)) =
        parse(r#"{"optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}}"#).optimizer
    else {
        panic!()
    };
    assert!(!a.adam_w_mode, "Adam with adam_w_mode false is L2-regularized Adam");
}

#[test]
fn lamb_lion_sgd_defaults() {
    let Some(OptimizerConfig::Lamb(l)) = parse(r#"{"optimizer": {"type": "LAMB"}}"#).optimizer else { panic!() };
    assert_eq!((l.lr, l.betas, l.eps, l.weight_decay), (1e-3, [0.9, 0.999], 1e-8, 0.0));
    assert_eq!((l.max_coeff, l.min_coeff), (10.0, 0.01));
    assert!(l.bias_correction && !l.eps_inside_sqrt);
    let Some(OptimizerConfig::Lion(l)) = parse(r#"{"optimizer": {"type": "lion"}}"#).optimizer else { panic!() };
    assert_eq!((l.lr, l.betas, l.weight_decay), (1e-3, [0.9, 0.999], 0.0));
    let Some(OptimizerConfig::Sgd(s)) = parse(r#"{"optimizer": {"type": "SGD"}}"#).optimizer else { panic!() };
    // torch.optim.SGD (torch 2.15): lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False.
    assert_eq!((s.lr, s.momentum, s.dampening, s.weight_decay, s.nesterov), (1e-3, 0.0, 0.0, 0.0, false));
}

fn scheduler(text: &str) -> SchedulerConfig {
    parse(&format!(r#"{{"scheduler": {text}}}"#)).scheduler.unwrap()
}

#[test]
fn scheduler_defaults() {
    let warmup = WarmupLrConfig {
        warmup_min_lr: 0.0,
        warmup_max_lr: 0.001,
        warmup_num_steps: 1000,
        warmup_type: WarmupType::Log,
    };
    assert_eq!(scheduler(r#"{"type": "WarmupLR"}"#), SchedulerConfig::WarmupLR(warmup.clone()));
    assert_eq!(
        scheduler(r#"{"type": "WarmupDecayLR", "params": {"total_num_steps": 5000}}"#),
        SchedulerConfig::WarmupDecayLR(WarmupDecayLrConfig { total_num_steps: 5000, warmup })
    );
    assert_eq!(
        scheduler(r#"{"type": "WarmupCosineLR", "params": {"total_num_steps": 5000}}"#),
        SchedulerConfig::WarmupCosineLR(WarmupCosineLrConfig {
            total_num_steps: 5000,
            warmup_min_ratio: 0.0,
            warmup_num_steps: 1000,
            cos_min_ratio: 0.0001,
            warmup_type: WarmupType::Log,
        })
    );
    assert_eq!(
        scheduler(r#"{"type": "OneCycle", "params": {"cycle_min_lr": 0.0001, "cycle_max_lr": 0.01}}"#),
        SchedulerConfig::OneCycle(OneCycleConfig {
            cycle_min_lr: 0.0001,
            cycle_max_lr: 0.01,
            decay_lr_rate: 0.0,
            cycle_first_step_size: 2000,
            cycle_second_step_size: None,
            cycle_first_stair_count: 0,
            cycle_second_stair_count: None,
            decay_step_size: 0,
            cycle_momentum: true,
            cycle_min_mom: 0.8,
            cycle_max_mom: 0.9,
            decay_mom_rate: 0.0,
        })
    );
    assert_eq!(
        scheduler(r#"{"type": "LRRangeTest"}"#),
        SchedulerConfig::LRRangeTest(LrRangeTestConfig {
            lr_range_test_min_lr: 1e-3,
            lr_range_test_step_size: 2000,
            lr_range_test_step_rate: 1.0,
            lr_range_test_staircase: false,
        })
    );
}

#[test]
fn warmup_num_steps_is_clamped_to_two_as_deepspeed_does() {
    for (given, stored) in [(0, 2), (1, 2), (2, 2), (3, 3)] {
        let text = format!(r#"{{"type": "WarmupLR", "params": {{"warmup_num_steps": {given}}}}}"#);
        let SchedulerConfig::WarmupLR(w) = scheduler(&text) else { panic!() };
        assert_eq!(w.warmup_num_steps, stored, "given {given}");
    }
    let SchedulerConfig::WarmupLR(w) = scheduler(r#"{"type": "WarmupLR", "params": {"warmup_type": "linear"}}"#) else {
        panic!()
    };
    assert_eq!(w.warmup_type, WarmupType::Linear);
}

#[test]
fn zero_defaults() {
    let z = parse(r#"{"zero_optimization": {}}"#).zero_optimization;
    assert_eq!(z, parse("{}").zero_optimization);
    assert_eq!(z.stage, 0);
    assert!(z.contiguous_gradients && z.reduce_scatter && z.use_multi_rank_bucket_allreduce);
    assert!(z.allgather_partitions && z.load_from_fp32_weights && z.ignore_unused_parameters);
    assert!(z.memory_efficient_linear && z.override_module_apply);
    assert_eq!(z.reduce_bucket_size, 500_000_000);
    assert_eq!(z.allgather_bucket_size, 500_000_000);
    assert_eq!(z.overlap_comm, None);
    assert!(!z.overlap_comm(), "stage 0: overlap off");
    assert!(!z.elastic_checkpoint && !z.round_robin_gradients && !z.log_trace_cache_warnings);
    assert!(!z.zero_quantized_weights && !z.zero_quantized_nontrainable_weights && !z.zero_quantized_gradients);
    assert!(!z.mics_hierarchical_params_gather && !z.pipeline_loading_checkpoint);
    assert!(z.offload_optimizer.is_none() && z.offload_param.is_none() && z.zeropp_loco_param.is_none());
    assert_eq!(z.sub_group_size, 1_000_000_000);
    assert_eq!(z.stage3_prefetch_bucket_size, 50_000_000, "code default 5e7, not the docs' 5e8");
    assert_eq!(z.stage3_param_persistence_threshold, 100_000);
    assert_eq!(z.stage3_model_persistence_threshold, 9_223_372_036_854_775_807, "Python's sys.maxsize");
    assert_eq!(z.stage3_max_live_parameters, 1_000_000_000);
    assert_eq!(z.stage3_max_reuse_distance, 1_000_000_000);
    assert!(!z.stage3_gather_16bit_weights_on_model_save && !z.stage3_use_all_reduce_for_fetch_params);
    assert_eq!(z.stage3_module_granularity_threshold, 0);
    assert_eq!(z.zero_hpz_partition_size, 1);
    assert_eq!(z.mics_shard_size, -1);
}

#[test]
fn overlap_comm_defaults_to_true_only_for_stage_3() {
    for (stage, overlap) in [(0, false), (1, false), (2, false), (3, true)] {
        let z = parse(&format!(r#"{{"zero_optimization": {{"stage": {stage}}}}}"#)).zero_optimization;
        assert_eq!(z.overlap_comm(), overlap, "stage {stage}");
    }
    let z = parse(r#"{"zero_optimization": {"stage": 3, "overlap_comm": false}}"#).zero_optimization;
    assert!(!z.overlap_comm());
}

#[test]
fn offload_and_loco_defaults() {
    let z = parse(
        r#"{"zero_optimization": {"stage": 3, "offload_optimizer": {}, "offload_param": {}, "zeropp_loco_param": {}}}"#,
    )
    .zero_optimization;
    let o = z.offload_optimizer.unwrap();
    assert_eq!((o.device, o.nvme_path.as_deref(), o.buffer_count, o.ratio), (OffloadDevice::None, None, 4, 1.0));
    assert!(!o.pin_memory && !o.pipeline_read && !o.pipeline_write && !o.fast_init);
    let p = z.offload_param.unwrap();
    assert_eq!(
        (p.device, p.buffer_count, p.buffer_size, p.max_in_cpu),
        (OffloadDevice::None, 5, 100_000_000, 1_000_000_000)
    );
    assert!(!p.pin_memory);
    let l = z.zeropp_loco_param.unwrap();
    assert_eq!((l.err_beta, l.reset_t), (0.8, 1024));
}

#[test]
fn legacy_zero_bool_is_stage_one_or_zero() {
    assert_eq!(parse(r#"{"zero_optimization": true}"#).zero_optimization.stage, 1);
    assert_eq!(parse(r#"{"zero_optimization": false}"#).zero_optimization.stage, 0);
    let z = parse(r#"{"zero_optimization": true, "allgather_size": 1000}"#).zero_optimization;
    assert_eq!((z.stage, z.allgather_bucket_size), (1, 1000));
    assert_eq!(z.reduce_bucket_size, 500_000_000);
}

#[test]
fn stage3_aliases_are_accepted() {
    let z = parse(
        r#"{"zero_optimization": {"stage": 3, "prefetch_bucket_size": 7, "max_live_parameters": 9,
            "stage3_gather_fp16_weights_on_model_save": true}}"#,
    )
    .zero_optimization;
    assert_eq!((z.stage3_prefetch_bucket_size, z.stage3_max_live_parameters), (7, 9));
    assert!(z.stage3_gather_16bit_weights_on_model_save);
}

#[test]
fn auto_inside_blocks_means_the_default() {
    let c = parse(
        r#"{"train_micro_batch_size_per_gpu": 4,
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
            "fp16": {"enabled": "auto", "loss_scale": "auto"},
            "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "overlap_comm": "auto"}}"#,
    );
    let Some(OptimizerConfig::Adam(a)) = c.optimizer else { panic!() };
    assert_eq!((a.lr, a.weight_decay), (1e-3, 0.0));
    assert!(!c.fp16.enabled);
    assert_eq!(c.zero_optimization.reduce_bucket_size, 500_000_000);
    assert_eq!(c.zero_optimization.overlap_comm, None);
}

#[test]
fn unimplemented_blocks_are_accepted_when_disabled_or_default() {
    let c = parse(
        r#"{"tensorboard": {"enabled": false, "output_path": "logs/"}, "wandb": {}, "csv_monitor": {"enabled": false},
            "flops_profiler": {"enabled": false, "profile_step": 1}, "comms_logger": {"enabled": false},
            "elasticity": {"enabled": false}, "amp": {"enabled": false},
            "checkpoint": {"tag_validation": "warn"}, "aio": {"block_size": 1048576}, "pipeline": {}}"#,
    );
    assert_eq!(c, DeepSpeedConfig::default());
}

#[test]
fn monitor_blocks_take_deepspeeds_defaults_and_custom_values() {
    // DeepSpeed's TensorBoardConfig / CSVConfig defaults (§1.10), written out.
    let expected_default =
        MonitorConfig { enabled: false, output_path: String::new(), job_name: "DeepSpeedJobName".into() };
    assert_eq!(MonitorConfig::default(), expected_default);
    let c = parse("{}");
    assert_eq!((c.tensorboard.clone(), c.csv_monitor.clone()), (expected_default.clone(), expected_default.clone()));

    let c = parse(r#"{"tensorboard": {"enabled": true}, "csv_monitor": {"enabled": true, "job_name": "auto"}}"#);
    let enabled_default = MonitorConfig { enabled: true, ..expected_default.clone() };
    assert_eq!(c.tensorboard, enabled_default);
    assert_eq!(c.csv_monitor, enabled_default, "\"auto\" is the default");

    let c = parse(
        r#"{"tensorboard": {"enabled": true, "output_path": "logs/tb", "job_name": "bert"},
            "csv_monitor": {"enabled": true, "output_path": "/tmp/csv", "job_name": null}}"#,
    );
    assert_eq!(c.tensorboard, MonitorConfig { enabled: true, output_path: "logs/tb".into(), job_name: "bert".into() });
    assert_eq!(
        c.csv_monitor,
        MonitorConfig { enabled: true, output_path: "/tmp/csv".into(), job_name: "DeepSpeedJobName".into() }
    );
    // Nothing else of the config changes.
    assert_eq!(
        DeepSpeedConfig { tensorboard: expected_default.clone(), csv_monitor: expected_default, ..c },
        parse("{}")
    );
}

#[test]
fn a_disabled_monitor_is_the_default_whatever_its_other_keys() {
    let c = parse(r#"{"tensorboard": {"enabled": false, "output_path": "logs/", "job_name": "x"}, "csv_monitor": {}}"#);
    assert_eq!(c, DeepSpeedConfig::default());
}
