//! `rustspeed`: prepare a corpus, train a model from a DeepSpeed config, sample from it, export it.

mod args;
mod atomic;
mod bench;
mod bench_generate;
mod bench_zero;
mod commands;
mod eval;
mod generate;
mod hf;
mod launch;
mod metrics;
mod monitor;
mod plot;
mod prepare;
mod progress;
mod run_dir;
mod serve;
mod train;

use std::process::ExitCode;

const USAGE: &str = "\
rustspeed: train language models from a DeepSpeed-style config

usage: rustspeed <command> [options]     (rustspeed help <command>, or <command> --help, for its options)
       rustspeed --version

commands:
  prepare    corpus (text, JSON Lines, Parquet; files, directories, globs) -> tokenizer + token shards
  train      train a model (a preset, a config.json, or Hugging Face weights) on prepared data with a DeepSpeed JSON config
  generate   sample text from a run (or Hugging Face weights): one prompt streamed, or a file of prompts batched
  serve      an HTTP server with OpenAI's completions API (streaming, continuous batching) over a run's model
  eval       mean loss and perplexity of a run (or Hugging Face weights) on a data split or a text file
  export     write a run's weights as one safetensors file, or (--format hf) a Hugging Face model directory
  presets    list the model presets; `presets NAME` prints one as a config.json to edit
  launch     run a command on N ranks through mpirun (DeepSpeed's hostfile, --include/--exclude, --num_gpus)
  estimate   predicted memory per rank for ZeRO stages 0-3
  consolidate  one fp32 safetensors file from a (sharded) checkpoint (DeepSpeed's zero_to_fp32)
  bench      time training steps of a fixed workload (gpt|lstm|gpt2-124m|llama|smollm2-135m), optionally against PyTorch
  bench-zero per-rank memory and tokens/s of a workload on N thread ranks at each ZeRO stage
  bench-generate  time to first token and decode tokens/s of a preset, optionally against transformers
";

/// Keeps freed memory in the process instead of returning it to the kernel after every large allocation:
/// glibc serves big blocks (the gemm crate's packing buffers, per call) with mmap and unmaps them on free, and
/// each unmap costs page faults and cross-core TLB shootdowns on the next step. A training step reuses the same
/// sizes, so the memory is better kept. One arena for all threads: the steps run on rayon's workers, and a
/// worker's own arena gives freed blocks back (`madvise`) regardless of the thresholds above, which measured ~10%
/// of the LSTM step in page faults and TLB shootdowns.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Every command, as an unknown command's suggestion searches them.
const COMMANDS: [&str; 14] = [
    "prepare",
    "train",
    "generate",
    "serve",
    "eval",
    "export",
    "presets",
    "launch",
    "estimate",
    "consolidate",
    "bench",
    "bench-zero",
    "bench-generate",
    "help",
];

/// Runs `command` with its arguments `rest`.
fn run(command: &str, rest: &[String]) -> Result<(), String> {
    match command {
        "prepare" => prepare::run(rest),
        "train" => train::run(rest),
        "generate" => generate::run(rest),
        "serve" => serve::run(rest),
        "eval" => eval::run(rest),
        "export" => commands::export(rest),
        "presets" => commands::presets(rest),
        "launch" => launch::run(rest),
        "estimate" => commands::estimate(rest),
        "consolidate" => commands::consolidate(rest),
        "bench" => bench::run(rest),
        "bench-zero" => bench_zero::run(rest),
        "bench-generate" => bench_generate::run(rest),
        // `help COMMAND` is `COMMAND --help`; `help` alone the command list.
        "help" => match rest.first() {
            Some(topic) if topic != "help" && !topic.starts_with('-') => run(topic, &["--help".to_string()]),
            _ => {
                print!("{USAGE}");
                Ok(())
            }
        },
        "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "-V" | "--version" | "version" => {
            println!("rustspeed {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => {
            let hint =
                rustspeed_config::closest(other, COMMANDS).map_or(String::new(), |c| format!(" (did you mean {c}?)"));
            Err(format!("unknown command '{other}'{hint}\n\n{USAGE}"))
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(command, rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
