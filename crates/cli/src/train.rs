//! `rustspeed train`: the training loop, read top to bottom.
//!
//! Run directory:
//! ```text
//! RUN_DIR/run.json        what was trained: preset, data directory, sequence length, seed
//! RUN_DIR/ds_config.json  the DeepSpeed config as parsed (defaults filled in)
//! RUN_DIR/tokenizer/      the data's tokenizer, so that `generate` needs only the run
//! RUN_DIR/metrics.csv     step,loss,lr,grad_norm,tokens_per_s,val_loss,loss_scale,skipped,overflow_layer
//! RUN_DIR/loss.png        the loss curves, written at the end
//! RUN_DIR/<job_name>/     DeepSpeed's csv_monitor and tensorboard files, where enabled (default output_path)
//! RUN_DIR/checkpoints/    `latest` and one directory per saved step
//! ```

use crate::args::{opt, parse, switch, Opt};
use crate::metrics::{Metrics, Row};
use crate::monitor::{Event, Monitors};
use crate::plot::write_loss_curve_png;
use crate::progress::{format_duration, Progress};
use crate::run_dir::RunDir;
use rustspeed_comm::threads::ThreadGroup;
use rustspeed_comm::{Communicator, SingleRank};
use rustspeed_config::DeepSpeedConfig;
use rustspeed_data::{Dataset, Loader, LoaderState};
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::{Engine, Precision, StorageType};
use rustspeed_kernels::cast::{bf16, f16, Element};
use rustspeed_nn::ModelConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bounds of the numeric flags: beyond them a run cannot be meant (and a timeout past ~2^63 ns overflows).
const MAX_THREAD_RANKS: usize = 4096;
const MAX_THREADS_PER_RANK: usize = 1024;
/// A week.
const MAX_COMM_TIMEOUT_S: u64 = 7 * 24 * 3600;

const OPTS: &[Opt] = &[
    opt("model", "PRESET|config.json", "a model preset (rustspeed presets lists them) or a model description file"),
    opt("init-from", "PATH", "start from Hugging Face weights: a .safetensors file or a model directory (config.json + weights; --model may then be left out)"),
    opt("config", "DS.json", "DeepSpeed JSON config"),
    opt("data", "DATA_DIR", "directory written by `rustspeed prepare`"),
    opt("out", "RUN_DIR", "run directory (created; never overwritten without --resume)"),
    opt("steps", "N", "train until this many optimizer steps in total (default 1000)"),
    switch("resume", "continue the run in RUN_DIR from its latest checkpoint"),
    opt("seq-len", "T", "tokens per sequence (default: the model's context up to 1024, 64 for LSTMs)"),
    opt("seed", "S", "seed of initialization and data order (default 1337)"),
    opt("eval-every", "N", "validate every N steps (default 100)"),
    opt("eval-batches", "N", "validation micro-batches per evaluation (default 20)"),
    opt("save-every", "N", "checkpoint every N steps (default 500; always at the end)"),
    opt("print-every", "N", "progress line every N steps when not on a terminal (default: steps_per_print or 10)"),
    opt("world-size", "N", "data-parallel ranks, as threads of this process (default 1)"),
    opt("threads-per-rank", "N", "compute threads of each rank (default: cores / world size)"),
    opt("comm-timeout", "SECONDS", "how long a collective waits for a peer before failing (default 600)"),
];

/// Seed of a fresh run when `--seed` is not given.
const DEFAULT_SEED: u64 = 1337;

struct Settings {
    /// `--model`; on `--resume` optional (the run's own model).
    preset: Option<String>,
    init_from: Option<PathBuf>,
    config_path: PathBuf,
    data: PathBuf,
    out: PathBuf,
    steps: u64,
    resume: bool,
    seq_len: Option<usize>,
    /// `None` until given or adopted: a fresh run defaults to [`DEFAULT_SEED`], a resumed one takes its own.
    seed: Option<u64>,
    eval_every: u64,
    eval_batches: usize,
    save_every: u64,
    print_every: Option<u64>,
    world_size: usize,
    threads_per_rank: Option<usize>,
    comm_timeout_s: u64,
}

impl Settings {
    fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

fn settings(argv: &[String]) -> Result<Option<Settings>, String> {
    let Some(a) = parse("train", OPTS, argv)? else { return Ok(None) };
    let e = |e: crate::args::ArgError| e.to_string();
    let positive = |name: &str, v: u64| if v == 0 { Err(format!("--{name} must be at least 1")) } else { Ok(v) };
    Ok(Some(Settings {
        preset: a.get("model").map(str::to_string),
        init_from: a.get("init-from").map(PathBuf::from),
        config_path: a.required("config").map_err(e)?.into(),
        data: a.required("data").map_err(e)?.into(),
        out: a.required("out").map_err(e)?.into(),
        steps: positive("steps", a.parsed("steps", 1000).map_err(e)?)?,
        resume: a.flag("resume"),
        seq_len: a.get("seq-len").map(|v| v.parse().map_err(|err| format!("--seq-len {v}: {err}"))).transpose()?,
        seed: a.get("seed").map(|_| a.parsed("seed", DEFAULT_SEED)).transpose().map_err(e)?,
        eval_every: positive("eval-every", a.parsed("eval-every", 100).map_err(e)?)?,
        eval_batches: positive("eval-batches", a.parsed("eval-batches", 20).map_err(e)?)? as usize,
        save_every: positive("save-every", a.parsed("save-every", 500).map_err(e)?)?,
        print_every: a
            .get("print-every")
            .map(|v| v.parse().map_err(|err| format!("--print-every {v}: {err}")))
            .transpose()?,
        world_size: a.parsed_in("world-size", 1, 1..=MAX_THREAD_RANKS).map_err(e)?,
        threads_per_rank: match a.get("threads-per-rank") {
            None => None,
            Some(_) => Some(a.parsed_in("threads-per-rank", 1, 1..=MAX_THREADS_PER_RANK).map_err(e)?),
        },
        comm_timeout_s: a.parsed_in("comm-timeout", 600, 1..=MAX_COMM_TIMEOUT_S).map_err(e)?,
    }))
}

fn seq_len_for(config: &ModelConfig, asked: Option<usize>) -> Result<usize, String> {
    match (asked.unwrap_or(config.default_seq_len()), config.context_length()) {
        (0, _) => Err("--seq-len must be at least 1".into()),
        (t, Some(max)) if t > max => Err(format!("--seq-len {t} exceeds the model's context length {max}")),
        (t, _) => Ok(t),
    }
}

/// Mean loss over the first `batches` micro-batches of the validation split (the same ones every time).
fn validate<E: Element>(
    engine: &mut Engine<E>,
    data: &Dataset,
    b: usize,
    t: usize,
    batches: usize,
    seed: u64,
) -> Result<f32, String> {
    let mut loader = Loader::new(&data.val, b, t, seed, 0, 1).map_err(|e| format!("validation: {e}"))?;
    let batches = batches.min(loader.windows_per_epoch() / b).max(1);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..batches)
        .map(|_| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            loader.next_batch(&mut x, &mut y);
            (x, y)
        })
        .collect();
    engine.evaluate(t, pairs.iter().map(|(x, y)| (x.as_slice(), y.as_slice()))).map_err(|e| e.to_string())
}

/// On `--resume`, the sequence length and seed come from the run's `run.json` (a different value would break
/// the exact continuation); one given on the command line must agree.
fn adopt_run_settings(s: &mut Settings) -> Result<ModelSpec, String> {
    let path = RunDir::new(&s.out).run_settings();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--resume: {}: {e}", path.display()))?;
    let run: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("--resume: {}: {e}", path.display()))?;
    let (Some(t), Some(seed)) = (run["seq_len"].as_u64(), run["seed"].as_u64()) else {
        return Err(format!("--resume: {} lacks seq_len or seed", path.display()));
    };
    if s.seq_len.is_some_and(|asked| asked as u64 != t) {
        return Err(format!("--resume: the run was trained with --seq-len {t}"));
    }
    if s.seed.is_some_and(|asked| asked != seed) {
        return Err(format!(
            "--resume: the run was trained with --seed {seed} (its data order follows it); leave --seed out"
        ));
    }
    s.seq_len = Some(t as usize);
    s.seed = Some(seed);
    ModelSpec::from_json(&run["model"]).map_err(|e| format!("--resume: {}: {e}", path.display()))
}

/// What every rank needs to start: the checked inputs of the run.
struct Run {
    s: Settings,
    config: DeepSpeedConfig,
    data: Dataset,
    spec: ModelSpec,
    /// The starting parameters of `--init-from` (loaded once for all ranks); `None`: initialized from the seed.
    init: Option<Vec<f32>>,
    t: usize,
}

/// The run's model and, with `--init-from`, its starting weights. A resumed run keeps its own model (a `--model`
/// given again must describe the same one) and starts from its checkpoint.
fn model_and_init(
    s: &Settings,
    saved: Option<ModelSpec>,
    data_vocab: usize,
) -> Result<(ModelSpec, Option<Vec<f32>>), String> {
    if let Some(saved) = saved {
        if let Some(model) = &s.preset {
            let (asked, _) = crate::hf::describe(Some(model), None, data_vocab)?;
            if asked.config != saved.config {
                return Err(format!(
                    "--resume: --model {model} is not the run's model ({}); leave --model out",
                    saved.preset
                ));
            }
        }
        return Ok((saved, None));
    }
    let (spec, notes) = crate::hf::describe(s.preset.as_deref(), s.init_from.as_deref(), data_vocab)?;
    notes.iter().for_each(|note| eprintln!("note: {note}"));
    let init = s.init_from.as_deref().map(|path| crate::hf::load_init(&spec, path)).transpose()?;
    Ok((spec, init))
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some(mut s) = settings(argv)? else { return Ok(()) };
    let run_dir = RunDir::new(&s.out);
    // A run killed before its first checkpoint has nothing to resume: it is started over by a plain `train`.
    if s.resume && !run_dir.has_checkpoint() {
        return Err(match run_dir.holds_a_run() {
            true => format!(
                "--resume: {} saved no checkpoint before it stopped, so there is nothing to resume; run the same command without --resume to start it over",
                s.out.display()
            ),
            false => format!("--resume: {} holds no run to resume", s.out.display()),
        });
    }
    let saved_model = match s.resume {
        true => Some(adopt_run_settings(&mut s)?),
        false => None,
    };
    // 1. Inputs: config, data, model. All checked before anything is written.
    let config = DeepSpeedConfig::from_file(&s.config_path).map_err(|e| e.to_string())?;
    config.batch_sizes(s.world_size).map_err(|e| e.to_string())?;
    let data = Dataset::open(&s.data).map_err(|e| e.to_string())?;
    let (spec, init) = model_and_init(&s, saved_model, data.vocab_size())?;
    let t = seq_len_for(&spec.config, s.seq_len)?;
    // Under a multi-process launcher only global rank 0 creates the run directory (the others write their
    // checkpoint shards into it, after the barrier that opens each checkpoint).
    let process_comm = process_communicator(&s)?;
    let lead_process = process_comm.as_ref().is_none_or(|c| c.rank() == 0);
    // One writer per run directory: the lead process (the only one, or global rank 0 of a launched job, whose
    // other ranks are part of the same run) holds the lock for the run's life, taken once the inputs are checked.
    let _lock = match lead_process {
        true => Some(RunDir::new(&s.out).lock()?),
        false => None,
    };
    if !s.resume && lead_process {
        prepare_run_dir(&s, &config, &data, &spec, t)?;
    }
    let run = Run { s, config, data, spec, init, t };
    // 2. Ranks: threads of this process, or this process alone under a launcher; each rank gets its own rayon
    //    pool, the host's cores shared among the ranks on it, so that they do not fight over cores.
    let world = run.s.world_size;
    let ranks_here = match &process_comm {
        Some(_) => std::env::var("LOCAL_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1),
        None => world,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = run.s.threads_per_rank.unwrap_or((cores / ranks_here).max(1));
    let pool = |rank: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("rank{rank}-worker{i}"))
            .build()
            .map_err(|e| format!("cannot start rank {rank}'s threads: {e}"))
    };
    if let Some(comm) = process_comm {
        return pool(comm.rank())?.install(|| train_rank(&run, comm));
    }
    if world == 1 {
        return pool(0)?.install(|| train_rank(&run, Box::new(SingleRank)));
    }
    let comms = ThreadGroup::new(world, std::time::Duration::from_secs(run.s.comm_timeout_s));
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let run = &run;
                scope.spawn(move || pool(rank)?.install(|| train_rank(run, Box::new(comm))))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| h.join().unwrap_or_else(|_| Err(format!("rank {rank} panicked"))))
            .collect()
    });
    // A rank's own failure explains the others' "left the group" errors, so it is the one to report.
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    match errors.iter().find(|e| !e.contains("communication failed")).or(errors.first()) {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// The communicator of a process started as one rank of a multi-process job (`RUSTSPEED_BACKEND=mpi`, set by
/// `rustspeed launch`), or `None` for a single process (whose ranks, if several, are threads).
fn process_communicator(s: &Settings) -> Result<Option<Box<dyn Communicator>>, String> {
    match std::env::var("RUSTSPEED_BACKEND").ok().as_deref() {
        None | Some("") | Some("threads") => Ok(None),
        Some("mpi") if s.world_size > 1 => {
            Err("--world-size starts ranks as threads; under `rustspeed launch` (mpirun) each process is one rank, so leave it out".into())
        }
        #[cfg(feature = "mpi")]
        Some("mpi") => {
            let comm = rustspeed_comm::mpi::MpiComm::from_env().map_err(|e| format!("MPI: {e}"))?;
            let comm = comm.with_timeout(std::time::Duration::from_secs(s.comm_timeout_s));
            Ok(Some(Box::new(comm)))
        }
        #[cfg(not(feature = "mpi"))]
        Some("mpi") => Err(
            "RUSTSPEED_BACKEND=mpi, but this rustspeed was built without MPI; build with `cargo build --release -p rustspeed --features mpi` (system packages: scripts/install-mpi.sh)".into(),
        ),
        Some(other) => Err(format!("RUSTSPEED_BACKEND={other}: expected threads or mpi")),
    }
}

/// One rank's training, with the model stored in the config's precision.
fn train_rank(run: &Run, comm: Box<dyn Communicator>) -> Result<(), String> {
    match StorageType::of(&run.config) {
        StorageType::Fp32 => train_rank_as::<f32>(run, comm),
        StorageType::Fp16 => train_rank_as::<f16>(run, comm),
        StorageType::Bf16 => train_rank_as::<bf16>(run, comm),
    }
}

/// One rank's training loop. Rank 0 also validates, writes metrics and reports progress.
fn train_rank_as<E: Element>(run: &Run, comm: Box<dyn Communicator>) -> Result<(), String> {
    let Run { s, config, data, spec, t, .. } = run;
    let (rank, world, t) = (comm.rank(), comm.world_size(), *t);
    let model = spec.config.build_as::<E>().map_err(|e| e.to_string())?;
    let seed = s.seed();
    let params = match &run.init {
        Some(init) => init.clone(),
        None => model.layout().init_params(seed),
    };
    let mut engine = Engine::with_communicator(model, params, config.clone(), comm).map_err(|e| e.to_string())?;
    let b = engine.batch_sizes().micro_batch_size;
    let mut loader = Loader::new(&data.train, b, t, seed, rank, world).map_err(|e| format!("training data: {e}"))?;
    let run_dir = RunDir::new(&s.out);
    let ckpt_dir = run_dir.checkpoints();
    if s.resume {
        let resumed = engine.load_checkpoint(&ckpt_dir).map_err(|e| format!("--resume: {e}"))?;
        if rank == 0 && !resumed.changes.is_empty() {
            eprintln!("resuming with changes from the saved run: {}", resumed.changes.join("; "));
        }
        let client = resumed.client_state;
        let state = LoaderState::from_json(&client["loader"]).map_err(|e| format!("--resume: data position: {e}"))?;
        loader.restore(&state).map_err(|e| format!("--resume: {e}"))?;
        // Every sample of every step came from the loader, so its position counts the run's samples exactly.
        let samples = engine.counters().global_samples;
        let read = state.epoch.checked_mul(loader.windows_per_epoch() as u64).and_then(|w| w.checked_add(state.cursor));
        if read != Some(samples) || state.seed != seed {
            return Err(format!(
                "--resume: the checkpoint's data position (epoch {}, window {}, seed {}) does not match its {samples} samples and seed {seed}",
                state.epoch, state.cursor, state.seed
            ));
        }
    }
    let first = engine.counters().global_steps;
    if first >= s.steps {
        return Err(format!("the run already has {first} steps; pass a larger --steps to continue it"));
    }
    let lead = rank == 0;
    // Rank 0 writes the run's records: metrics.csv and DeepSpeed's monitors, cut back to the checkpoint's step.
    let mut records = match lead {
        true => {
            let (metrics, mut notes) = Metrics::open(&run_dir.metrics(), first)?;
            let mut monitors = Monitors::open(config, &s.out, engine.counters().global_samples)?;
            notes.extend(monitors.take_notes());
            notes.iter().for_each(|note| eprintln!("{note}"));
            Some((metrics, monitors))
        }
        false => None,
    };
    let every = s.print_every.or(engine.config().steps_per_print).unwrap_or(10);
    let progress = Progress::new(first, s.steps, every);
    if lead {
        let bs = engine.batch_sizes();
        eprintln!(
            "training {} ({} parameters, {}) on {} tokens: {} steps of {} sequences x {t} tokens ({world} rank(s), micro-batch {b}, accumulation {}, ZeRO stage {})",
            spec.preset,
            engine.model().num_params(),
            E::NAME,
            data.train.len(),
            s.steps - first,
            bs.train_batch_size,
            bs.gradient_accumulation_steps,
            engine.zero_plan().stage.number(),
        );
    }

    // The loop: one optimizer step, its metrics, validation and checkpoints when due.
    let start = Instant::now();
    let mut last_val = None;
    for step in first + 1..=s.steps {
        let report = engine.train_batch(t, |x, y| loader.next_batch(x, y)).map_err(|e| e.to_string())?;
        // Every rank validates on the same batches: evaluation is a collective (stage 3 gathers the parameters),
        // and the other ranks would wait for rank 0 at the next step anyway. Rank 0 reports.
        let val_loss = match step % s.eval_every == 0 || step == s.steps {
            true => Some(validate(&mut engine, data, b, t, s.eval_batches, seed)?),
            false => None,
        };
        let save = step % s.save_every == 0 || step == s.steps;
        if let Some((metrics, monitors)) = records.as_mut() {
            let tokens_per_s = report.tokens as f64 / report.timings.total().as_secs_f64().max(1e-9);
            last_val = val_loss.or(last_val);
            let row = Row {
                step,
                loss: report.loss,
                lr: report.lr,
                grad_norm: report.grad_norm,
                tokens_per_s,
                val_loss,
                loss_scale: report.loss_scale,
                skipped: report.skipped,
                overflow_layer: report.overflow_layer.clone(),
            };
            metrics.append(&row)?;
            monitors.record(&Event {
                global_samples: engine.counters().global_samples,
                train_loss: report.loss,
                lr: report.lr,
                loss_scale: matches!(engine.precision(), Precision::Fp16(_)).then_some(report.loss_scale),
                val_loss,
            })?;
            // The step's records are on disk before its checkpoint exists: a kill after the commit loses none.
            if save {
                metrics.sync()?;
                monitors.sync()?;
            }
            let mut note = val_loss.map_or(String::new(), |v| format!("  val_loss {v:.4}"));
            if report.skipped {
                let layer = report.overflow_layer.as_deref().unwrap_or("?");
                let scale = engine.precision().loss_scale();
                note += &format!(
                    "  skipped: fp16 overflow (first in {layer}) at loss scale {}, now {scale}",
                    report.loss_scale
                );
            }
            progress.update(step, report.loss, report.lr, tokens_per_s, &note);
        }
        if save {
            let client = json!({ "loader": loader.state().to_json() });
            engine.save_checkpoint(&ckpt_dir, spec, client).map_err(|e| e.to_string())?;
        }
    }
    let Some((metrics, _)) = records else { return Ok(()) };

    // Summary and the loss curve.
    let rows = metrics.rows()?;
    let train: Vec<(u64, f32)> = rows.iter().map(|r| (r.step, r.loss)).collect();
    let val: Vec<(u64, f32)> = rows.iter().filter_map(|r| r.val_loss.map(|v| (r.step, v))).collect();
    let png = run_dir.loss_chart();
    write_loss_curve_png(&png, &train, &val).map_err(|e| format!("{}: {e}", png.display()))?;
    eprintln!(
        "done: {} steps in {}, final validation loss {}; metrics {}, curve {}, checkpoint {}",
        s.steps - first,
        format_duration(start.elapsed()),
        last_val.map_or("n/a".into(), |v| format!("{v:.4}")),
        run_dir.metrics().display(),
        png.display(),
        ckpt_dir.display()
    );
    Ok(())
}

/// Creates a new run directory; refuses one that already holds a run with a checkpoint, and starts over one
/// whose run stopped before saving any (there is nothing of it to resume, only its first rows of metrics).
fn prepare_run_dir(
    s: &Settings,
    config: &DeepSpeedConfig,
    data: &Dataset,
    spec: &ModelSpec,
    t: usize,
) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let run_dir = RunDir::new(&s.out);
    if run_dir.holds_a_run() && !run_dir.has_checkpoint() {
        eprintln!(
            "{} holds a run that stopped before its first checkpoint; starting it over",
            run_dir.root().display()
        );
        // Its monitor files inside the run directory are that attempt's, not another run's.
        for dir in crate::monitor::run_owned_dirs(config, run_dir.root()) {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
            }
        }
    } else if run_dir.holds_a_run() {
        return Err(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out (nothing is overwritten)",
            run_dir.root().display()
        ));
    }
    let tokenizer_dir = run_dir.tokenizer();
    std::fs::create_dir_all(&tokenizer_dir).map_err(|e| io(&tokenizer_dir, e))?;
    data.tokenizer.save(&tokenizer_dir).map_err(|e| e.to_string())?;
    let run = json!({
        "model": spec.to_json(), "data": data.dir().display().to_string(), "seq_len": t, "seed": s.seed(),
    });
    let write = |p: PathBuf, v: &serde_json::Value| {
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("JSON serializes")).map_err(|e| io(&p, e))
    };
    write(run_dir.run_settings(), &run)?;
    write(run_dir.ds_config(), &config.to_json())
}
