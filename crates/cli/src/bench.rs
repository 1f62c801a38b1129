//! `rustspeed bench gpt|lstm|gpt2-124m|llama|smollm2-135m`: times full training steps (forward, loss, backward, optimizer) of a fixed
//! workload, reports median ms/step, tokens/s, model FLOP/s and its share of this machine's sgemm peak (measured
//! on the spot), peak memory; with `--compare-pytorch`, runs the same model in PyTorch (`bench/pytorch_bench.py`,
//! embedded in the binary) alternately with rustspeed in the same invocation and prints the ratio.
//!
//! Workloads (DESIGN.md, "Benchmarks"): `gpt` = the `gpt-bench` preset, batch 8 x 128 tokens, AdamW lr 3e-4
//! weight decay 0.1; `lstm` = `lstm-seed`, batch 4 x 32, SGD momentum 0.9 lr 1e-3; `gpt2-124m` = GPT-2 small,
//! batch 4 x 256, AdamW as `gpt`; `llama` = `llama-bench` (gpt-bench's FLOPs per token), batch 8 x 128, AdamW as
//! `gpt`; `smollm2-135m` = SmolLM2-135M, batch 4 x 256, AdamW as `gpt`. Tokens and targets are uniform random ids,
//! drawn once.

use crate::args::{opt, parse, switch, Opt};
use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::{Engine, StepTimings};
use rustspeed_kernels::matmul::{gemm, Dst, MatMut, MatRef, Threads};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{preset, ModelConfig};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPTS: &[Opt] = &[
    opt("threads", "N", "threads for rustspeed and PyTorch (default: all cores)"),
    opt("steps", "N", "timed steps per round (default 20; 5 for gpt2-124m)"),
    opt("warmup", "N", "untimed steps before each round (default 3; 1 for gpt2-124m)"),
    opt("rounds", "N", "rounds of rustspeed (then PyTorch) runs (default 3 with --compare-pytorch, else 1)"),
    switch("compare-pytorch", "run the same model in PyTorch, alternating, and print the ratio"),
];

/// The PyTorch side, embedded so that the binary runs it from anywhere (fed to the interpreter on stdin).
const PYTORCH_BENCH: &str = include_str!("../../../bench/pytorch_bench.py");
/// Side of the square product that measures the sgemm peak: large enough that packing and threading overheads
/// are small next to its 2·n³ FLOPs.
const SGEMM_PEAK_SIZE: usize = 2048;
/// Timed repetitions of that product; the fastest counts (the peak, not the average under noise).
const SGEMM_PEAK_REPS: usize = 4;
/// Seed of the random tokens and of the parameters.
pub(crate) const SEED: u64 = 1337;

/// One fixed workload.
pub(crate) struct Workload {
    pub name: &'static str,
    pub preset: &'static str,
    pub batch: usize,
    pub seq: usize,
    pub optimizer_json: &'static str,
    default_steps: usize,
    default_warmup: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "gpt",
        preset: "gpt-bench",
        batch: 8,
        seq: 128,
        optimizer_json: r#"{"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.1}}"#,
        default_steps: 20,
        default_warmup: 3,
    },
    Workload {
        name: "lstm",
        preset: "lstm-seed",
        batch: 4,
        seq: 32,
        optimizer_json: r#"{"type": "SGD", "params": {"lr": 1e-3, "momentum": 0.9}}"#,
        default_steps: 20,
        default_warmup: 3,
    },
    Workload {
        name: "gpt2-124m",
        preset: "gpt2-124m",
        batch: 4,
        seq: 256,
        optimizer_json: r#"{"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.1}}"#,
        default_steps: 5,
        default_warmup: 1,
    },
    Workload {
        name: "llama",
        preset: "llama-bench",
        batch: 8,
        seq: 128,
        optimizer_json: r#"{"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.1}}"#,
        default_steps: 20,
        default_warmup: 3,
    },
    Workload {
        name: "smollm2-135m",
        preset: "smollm2-135m",
        batch: 4,
        seq: 256,
        optimizer_json: r#"{"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.1}}"#,
        default_steps: 5,
        default_warmup: 1,
    },
];

/// The workload named `name`.
pub(crate) fn workload(name: &str) -> Result<&'static Workload, String> {
    let names = || WORKLOADS.iter().map(|w| w.name).collect::<Vec<_>>().join("|");
    WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| format!("unknown benchmark '{name}'; known: {}", names()))
}

struct Settings {
    workload: &'static Workload,
    threads: usize,
    steps: usize,
    warmup: usize,
    rounds: usize,
    compare: bool,
}

fn settings(argv: &[String]) -> Result<Option<Settings>, String> {
    let names = || WORKLOADS.iter().map(|w| w.name).collect::<Vec<_>>().join("|");
    let Some((name, rest)) = argv.split_first().filter(|(n, _)| !n.starts_with("--")) else {
        if argv.iter().any(|a| a == "--help" || a == "-h") {
            parse("bench", OPTS, argv)?;
            return Ok(None);
        }
        return Err(format!("`rustspeed bench` needs a workload: rustspeed bench {} [options]", names()));
    };
    let workload = workload(name)?;
    let Some(a) = parse("bench", OPTS, rest)? else { return Ok(None) };
    let e = |e: crate::args::ArgError| e.to_string();
    let positive = |key: &str, v: usize| if v == 0 { Err(format!("--{key} must be at least 1")) } else { Ok(v) };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let compare = a.flag("compare-pytorch");
    Ok(Some(Settings {
        workload,
        threads: positive("threads", a.parsed("threads", cores).map_err(e)?)?,
        steps: positive("steps", a.parsed("steps", workload.default_steps).map_err(e)?)?,
        warmup: a.parsed("warmup", workload.default_warmup).map_err(e)?,
        rounds: positive("rounds", a.parsed("rounds", if compare { 3 } else { 1 }).map_err(e)?)?,
        compare,
    }))
}

/// The best FLOP/s of a square `SGEMM_PEAK_SIZE` product through the `gemm` crate on the current pool.
fn sgemm_peak() -> f64 {
    let n = SGEMM_PEAK_SIZE;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = Duration::MAX;
    for rep in 0..=SGEMM_PEAK_REPS {
        let start = Instant::now();
        gemm(
            MatMut::row_major(&mut c, n, n),
            MatRef::row_major(&a, n, n),
            MatRef::row_major(&b, n, n),
            1.0,
            Dst::Overwrite,
            Threads::Pool,
        );
        // The first product warms caches and the pool and is not counted.
        if rep > 0 {
            best = best.min(start.elapsed());
        }
    }
    2.0 * (n * n * n) as f64 / best.as_secs_f64()
}

/// Peak resident memory of this process (`VmHWM`), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    match values.len() % 2 {
        0 => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}

/// Medians of one round of rustspeed steps, in ms.
struct RoundTimes {
    step: f64,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

/// Runs `warmup` untimed and `steps` timed training steps on fixed tokens.
fn time_rustspeed(
    engine: &mut Engine,
    tokens: &[u32],
    targets: &[u32],
    t: usize,
    warmup: usize,
    steps: usize,
) -> Result<RoundTimes, String> {
    let mut step = || {
        let start = Instant::now();
        let report = engine
            .train_batch(t, |x, y| {
                x.clear();
                x.extend_from_slice(tokens);
                y.clear();
                y.extend_from_slice(targets);
            })
            .map_err(|e| e.to_string())?;
        Ok::<(Duration, StepTimings), String>((start.elapsed(), report.timings))
    };
    for _ in 0..warmup {
        step()?;
    }
    let mut runs = Vec::with_capacity(steps);
    for _ in 0..steps {
        runs.push(step()?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pick = |f: &dyn Fn(&(Duration, StepTimings)) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Ok(RoundTimes {
        step: pick(&|r| ms(r.0)),
        forward: pick(&|r| ms(r.1.forward)),
        backward: pick(&|r| ms(r.1.backward)),
        optimizer: pick(&|r| ms(r.1.optimizer)),
    })
}

/// What one PyTorch run reported.
struct TorchRun {
    ms_per_step: f64,
    peak_rss_mb: f64,
    version: String,
}

fn python() -> String {
    std::env::var("RUSTSPEED_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Checks that the interpreter imports torch; the error says how to get it.
fn check_torch(python: &str) -> Result<(), String> {
    let ok = Command::new(python)
        .args(["-c", "import torch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match ok {
        true => Ok(()),
        false => Err(format!(
            "--compare-pytorch: `{python}` cannot import torch; install it with `{python} -m pip install torch` \
             (pip install torch), or point RUSTSPEED_PYTHON at an interpreter that has it"
        )),
    }
}

/// The arguments of `bench/pytorch_bench.py` for this workload's shapes.
fn torch_args(config: &ModelConfig, w: &Workload, s: &Settings) -> Vec<String> {
    let mut args: Vec<String> = match config {
        ModelConfig::Gpt(c) => vec![
            "--model".into(),
            "gpt".into(),
            format!("--vocab={}", c.vocab_size),
            format!("--layers={}", c.n_layer),
            format!("--heads={}", c.n_head),
            format!("--width={}", c.n_embd),
            format!("--context={}", c.block_size),
        ],
        ModelConfig::Llama(c) => vec![
            "--model".into(),
            "llama".into(),
            format!("--vocab={}", c.vocab_size),
            format!("--hf-config={}", rustspeed_nn::hf_config::to_hf_json(config)),
        ],
        ModelConfig::Lstm(c) => vec![
            "--model".into(),
            "lstm".into(),
            format!("--vocab={}", c.vocab_size),
            format!("--layers={}", c.num_layers),
            format!("--width={}", c.embedding_dim),
            format!("--hidden={}", c.hidden_size),
        ],
    };
    args.extend([
        format!("--batch={}", w.batch),
        format!("--seq={}", w.seq),
        format!("--threads={}", s.threads),
        format!("--warmup={}", s.warmup),
        format!("--steps={}", s.steps),
    ]);
    args
}

/// Runs the embedded PyTorch benchmark once and parses its last line.
fn run_torch(python: &str, args: &[String]) -> Result<TorchRun, String> {
    let mut child = Command::new(python)
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("--compare-pytorch: cannot start `{python}`: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(PYTORCH_BENCH.as_bytes())
        .map_err(|e| format!("--compare-pytorch: writing the script to `{python}`: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("--compare-pytorch: `{python}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "--compare-pytorch: bench/pytorch_bench.py failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let last = stdout.lines().last().unwrap_or("");
    let field = |key: &str| {
        last.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))).map(String::from)
    };
    let number = |key: &str| {
        field(key)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("--compare-pytorch: no {key}=NUMBER in the script's last line '{last}'"))
    };
    Ok(TorchRun {
        ms_per_step: number("ms_per_step")?,
        peak_rss_mb: number("peak_rss_mb")?,
        version: field("torch").unwrap_or_default(),
    })
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some(s) = settings(argv)? else { return Ok(()) };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(s.threads)
        .build()
        .map_err(|e| format!("cannot start {} threads: {e}", s.threads))?;
    // Inside the pool, as `train` runs each rank: the calling thread is one of the workers, so every parallel region
    // starts directly instead of being injected from outside and waited for (~10 µs per region here, and the LSTM
    // step has ~400 of them).
    pool.install(|| measure(&s))
}

/// The benchmark proper, on the pool's threads.
fn measure(s: &Settings) -> Result<(), String> {
    let w = s.workload;
    let python = python();
    if s.compare {
        check_torch(&python)?;
    }
    let config = preset(w.preset).and_then(|p| p.config(p.vocab_size.unwrap_or(0))).map_err(|e| e.to_string())?;
    let model = config.build().map_err(|e| e.to_string())?;
    let num_params = model.num_params();
    // Training FLOPs per token as the layers count them (`Model::flops_per_token`: matrix products, 2 FLOPs per
    // multiply-add, backward 2x forward; GPT's is nanoGPT's `6·N + 12·L·T·C`).
    let flops_per_token = model.flops_per_token(w.seq);
    let params = model.layout().init_params(SEED);
    let ds = format!(
        r#"{{"train_micro_batch_size_per_gpu": {}, "gradient_accumulation_steps": 1, "optimizer": {}}}"#,
        w.batch, w.optimizer_json
    );
    let ds = DeepSpeedConfig::from_json_str(&ds).map_err(|e| e.to_string())?;
    let mut engine = Engine::new(model, params, ds).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(SEED);
    let vocab = config.vocab_size() as u64;
    let mut ids = || (0..w.batch * w.seq).map(|_| rng.below(vocab) as u32).collect::<Vec<u32>>();
    let (tokens, targets) = (ids(), ids());

    let peak = sgemm_peak();
    let tokens_per_step = (w.batch * w.seq) as f64;
    let flops_per_step = flops_per_token * tokens_per_step;
    println!(
        "bench {} ({}, {num_params} parameters): batch {} x {} tokens, {} threads, {} warm-up + {} timed steps x {} \
         round(s); sgemm peak {:.1} GFLOP/s at start ({n}^3 product), model {:.3} GFLOP/step",
        w.name,
        w.preset,
        w.batch,
        w.seq,
        s.threads,
        s.warmup,
        s.steps,
        s.rounds,
        peak / 1e9,
        flops_per_step / 1e9,
        n = SGEMM_PEAK_SIZE,
    );
    let t_args = torch_args(&config, w, s);
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut torch_rss: f64 = 0.0;
    let mut torch_version = String::new();
    for round in 1..=s.rounds {
        let r = time_rustspeed(&mut engine, &tokens, &targets, w.seq, s.warmup, s.steps)?;
        let mut line = format!(
            "round {round}: rustspeed {:.1} ms/step ({:.0} tok/s; forward {:.1}, backward {:.1}, optimizer {:.1} ms)",
            r.step,
            tokens_per_step / r.step * 1e3,
            r.forward,
            r.backward,
            r.optimizer
        );
        ours.push(r.step);
        if s.compare {
            let torch = run_torch(&python, &t_args)?;
            line.push_str(&format!(
                " | pytorch {:.1} ms/step ({:.0} tok/s) | ratio {:.2}",
                torch.ms_per_step,
                tokens_per_step / torch.ms_per_step * 1e3,
                torch.ms_per_step / r.step
            ));
            ratios.push(torch.ms_per_step / r.step);
            theirs.push(torch.ms_per_step);
            torch_rss = torch_rss.max(torch.peak_rss_mb);
            torch_version = torch.version;
        }
        println!("{line}");
    }

    // Read before the second peak measurement below, whose operands would count towards it.
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    // The peak once more after the rounds: a start-up measurement that a busy neighbour slowed (seen: half the
    // usual value) would otherwise inflate every share reported against it.
    let peak = peak.max(sgemm_peak());
    let ms = median(&mut ours);
    let tokens_per_s = tokens_per_step / ms * 1e3;
    let flops = flops_per_step / ms * 1e3;
    println!(
        "rustspeed: {ms:.1} ms/step, {tokens_per_s:.0} tokens/s, {:.1} GFLOP/s = {:.1}% of the sgemm peak ({:.1} \
         GFLOP/s, best before and after the rounds), peak RSS {rss:.0} MiB",
        flops / 1e9,
        100.0 * flops / peak,
        peak / 1e9
    );
    let mut last = format!(
        "tokens_per_s={tokens_per_s:.0} ms_per_step={ms:.1} mfu={:.3} model_gflops={:.1} sgemm_peak_gflops={:.1} \
         peak_rss_mb={rss:.0} threads={}",
        flops / peak,
        flops / 1e9,
        peak / 1e9,
        s.threads
    );
    if s.compare {
        let torch_ms = median(&mut theirs);
        let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let ratio = median(&mut ratios);
        println!(
            "pytorch {torch_version}: {torch_ms:.1} ms/step, {:.0} tokens/s, peak RSS {torch_rss:.0} MiB; \
             ratio (rustspeed / pytorch tokens/s) {ratio:.2}, per round {lo:.2}..{hi:.2}",
            tokens_per_step / torch_ms * 1e3
        );
        last.push_str(&format!(
            " pytorch_tokens_per_s={:.0} pytorch_ms_per_step={torch_ms:.1} pytorch_peak_rss_mb={torch_rss:.0} \
             ratio={ratio:.3} ratio_min={lo:.3} ratio_max={hi:.3}",
            tokens_per_step / torch_ms * 1e3
        ));
    }
    println!("{last}");
    Ok(())
}
