//! `rustspeed bench-zero gpt|lstm|gpt2-124m`: the same fixed workloads as `bench`, trained by `--world-size`
//! thread ranks (each with its own share of the cores, as `train --world-size` runs them) at each ZeRO stage
//! asked for, optionally with activation checkpointing: per-rank bytes as the engine accounts them (parameters,
//! gradients, per-group gradient buffers, gathered groups, masters, optimizer state, activations) and tokens/s
//! over all ranks. Each rank's micro-batch is the workload's batch, so the global batch grows with the ranks.

use crate::args::{opt, parse, Opt};
use crate::bench::{median, workload, Workload, SEED};
use rustspeed_comm::threads::ThreadGroup;
use rustspeed_comm::Communicator;
use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::memory::MemoryReport;
use rustspeed_engine::{Engine, StorageType};
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{preset, ModelConfig};
use std::time::{Duration, Instant};

const OPTS: &[Opt] = &[
    opt("world-size", "N", "thread ranks (default 4)"),
    opt(
        "stages",
        "LIST",
        "ZeRO stages to run, e.g. 0,1,2,3 (default); a stage followed by + adds activation checkpointing (3+)",
    ),
    opt("precision", "TYPE", "fp32 | fp16 | bf16 (default fp32)"),
    opt("prefetch-bucket", "N", "stage3_prefetch_bucket_size in elements (default DeepSpeed's 50000000)"),
    opt("steps", "N", "timed steps per stage (default 3)"),
    opt("warmup", "N", "untimed steps before them (default 1)"),
];

/// One configuration to run: a stage, with or without activation checkpointing.
#[derive(Clone, Copy)]
struct Case {
    stage: u8,
    checkpointing: bool,
}

impl Case {
    fn label(&self) -> String {
        format!("{}{}", self.stage, if self.checkpointing { " + act. ckpt" } else { "" })
    }
}

struct Settings {
    workload: &'static Workload,
    world: usize,
    cases: Vec<Case>,
    storage: StorageType,
    prefetch_bucket: u64,
    steps: usize,
    warmup: usize,
}

fn settings(argv: &[String]) -> Result<Option<Settings>, String> {
    let Some((name, rest)) = argv.split_first().filter(|(n, _)| !n.starts_with("--")) else {
        if argv.iter().any(|a| a == "--help" || a == "-h") {
            parse("bench-zero", OPTS, argv)?;
            return Ok(None);
        }
        return Err("`rustspeed bench-zero` needs a workload: rustspeed bench-zero gpt|lstm|gpt2-124m [options]".into());
    };
    let workload = workload(name)?;
    let Some(a) = parse("bench-zero", OPTS, rest)? else { return Ok(None) };
    let e = |e: crate::args::ArgError| e.to_string();
    let world: usize = a.parsed("world-size", 4).map_err(e)?;
    if world == 0 {
        return Err("--world-size must be at least 1".into());
    }
    let cases = a
        .get("stages")
        .unwrap_or("0,1,2,3")
        .split(',')
        .map(|item| {
            let (digits, checkpointing) = match item.trim().strip_suffix('+') {
                Some(d) => (d, true),
                None => (item.trim(), false),
            };
            match digits.parse::<u8>() {
                Ok(stage) if stage <= 3 => Ok(Case { stage, checkpointing }),
                _ => Err(format!("--stages: '{item}' is not a ZeRO stage 0-3 (optionally followed by +)")),
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let precision = a.get("precision").unwrap_or("fp32");
    let storage = StorageType::from_name(precision)
        .ok_or_else(|| format!("--precision {precision}: expected fp32, fp16 or bf16"))?;
    let steps: usize = a.parsed("steps", 3).map_err(e)?;
    if steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    Ok(Some(Settings {
        workload,
        world,
        cases,
        storage,
        prefetch_bucket: a.parsed("prefetch-bucket", 50_000_000).map_err(e)?,
        steps,
        warmup: a.parsed("warmup", 1).map_err(e)?,
    }))
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some(s) = settings(argv)? else { return Ok(()) };
    let w = s.workload;
    let config = preset(w.preset).and_then(|p| p.config(p.vocab_size.unwrap_or(0))).map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / s.world).max(1);
    println!(
        "bench-zero {} ({}): {} thread rank(s) x {threads} thread(s), batch {} x {} tokens per rank, {}, stage3_prefetch_bucket_size {}, {} warm-up + {} timed steps; MiB per rank:",
        w.name,
        w.preset,
        s.world,
        w.batch,
        w.seq,
        s.storage.name(),
        s.prefetch_bucket,
        s.warmup,
        s.steps
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>10}",
        "stage", "params", "grads", "grad bufs", "gathered", "master", "optimizer", "activations", "total", "tokens/s"
    );
    for case in &s.cases {
        let (memory, ms) = match s.storage {
            StorageType::Fp32 => run_case::<f32>(&s, &config, *case, threads)?,
            StorageType::Fp16 => run_case::<f16>(&s, &config, *case, threads)?,
            StorageType::Bf16 => run_case::<bf16>(&s, &config, *case, threads)?,
        };
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let tokens_per_s = (s.world * w.batch * w.seq) as f64 / ms * 1e3;
        println!(
            "{:<16} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>11.1} {:>10.1} {:>10.0}",
            case.label(),
            mib(memory.parameters),
            mib(memory.gradients),
            mib(memory.gradient_staging),
            mib(memory.gathered_parameters),
            mib(memory.master_weights),
            mib(memory.optimizer_state),
            mib(memory.activations),
            mib(memory.total()),
            tokens_per_s
        );
    }
    Ok(())
}

/// Trains `warmup + steps` steps on every rank; returns rank 0's memory report and the median step time (ms).
fn run_case<E: Element>(
    s: &Settings,
    config: &ModelConfig,
    case: Case,
    threads: usize,
) -> Result<(MemoryReport, f64), String> {
    let w = s.workload;
    let precision = match E::NAME {
        "fp16" => r#", "fp16": {"enabled": true}"#,
        "bf16" => r#", "bf16": {"enabled": true}"#,
        _ => "",
    };
    let checkpointing = if case.checkpointing { r#", "activation_checkpointing": {}"# } else { "" };
    let json = format!(
        r#"{{"train_micro_batch_size_per_gpu": {}, "gradient_accumulation_steps": 1, "optimizer": {},
            "zero_optimization": {{"stage": {}, "stage3_prefetch_bucket_size": {}}}{precision}{checkpointing}}}"#,
        w.batch, w.optimizer_json, case.stage, s.prefetch_bucket
    );
    let ds = DeepSpeedConfig::from_json_str(&json).map_err(|e| e.to_string())?;
    let comms = ThreadGroup::new(s.world, Duration::from_secs(600));
    let results: Vec<Result<(MemoryReport, f64), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let ds = ds.clone();
                scope.spawn(move || {
                    let pool =
                        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
                    pool.install(|| rank::<E>(s, config, ds, comm))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a rank panicked".into()))).collect()
    });
    // A rank's own failure explains the others' "communication failed", so it is the one to report.
    let errors: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    if let Some(e) = errors.iter().find(|e| !e.contains("communication failed")).or(errors.first()) {
        return Err(e.clone());
    }
    results.into_iter().next().expect("at least one rank")
}

fn rank<E: Element>(
    s: &Settings,
    config: &ModelConfig,
    ds: DeepSpeedConfig,
    comm: impl Communicator + 'static,
) -> Result<(MemoryReport, f64), String> {
    let w = s.workload;
    let model = config.build_as::<E>().map_err(|e| e.to_string())?;
    let params = model.layout().init_params(SEED);
    let rank = comm.rank();
    let mut engine = Engine::with_communicator(model, params, ds, Box::new(comm)).map_err(|e| e.to_string())?;
    // Each rank its own tokens, as the distributed sampler gives.
    let mut rng = Rng::new(SEED + rank as u64);
    let vocab = config.vocab_size() as u64;
    let mut ids = || (0..w.batch * w.seq).map(|_| rng.below(vocab) as u32).collect::<Vec<u32>>();
    let (tokens, targets) = (ids(), ids());
    let mut times = Vec::with_capacity(s.steps);
    for k in 0..s.warmup + s.steps {
        let start = Instant::now();
        engine
            .train_batch(w.seq, |x, y| {
                x.clone_from(&tokens);
                y.clone_from(&targets);
            })
            .map_err(|e| e.to_string())?;
        if k >= s.warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((engine.memory(), median(&mut times)))
}
