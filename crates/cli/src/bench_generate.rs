//! `rustspeed bench-generate PRESET`: generation speed on random weights and random prompts — time to first token
//! (the prompts' prefill and the first sampled tokens) and decode tokens/s (greedy, cached, every sequence of the
//! batch decoded together) — and, with `--compare-transformers`, transformers' `generate` with its cache on the
//! same model and shapes in the same invocation (`bench/hf_generate_bench.py`, embedded in the binary).

use crate::args::{opt, parse, switch, Opt};
use rustspeed_engine::generate::{Batcher, SamplingParams, Strategy};
use rustspeed_kernels::rng::Rng;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

const OPTS: &[Opt] = &[
    opt("prompt-tokens", "N", "tokens of each prompt (default 512)"),
    opt("new-tokens", "N", "tokens generated for each prompt (default 256)"),
    opt("batch", "B[,B...]", "prompts decoded together (default 1,8)"),
    opt("threads", "N", "threads for rustspeed and PyTorch (default: all cores)"),
    switch("compare-transformers", "run transformers' generate on the same model and shapes, and print the ratio"),
];

/// The transformers side, fed to the interpreter on stdin so that the binary runs it from anywhere.
const HF_GENERATE_BENCH: &str = include_str!("../../../bench/hf_generate_bench.py");
const SEED: u64 = 1337;

/// Time to first token (ms) and decode tokens/s.
struct Speed {
    ttft_ms: f64,
    decode_tokens_per_s: f64,
}

fn rustspeed_speed(
    config: &rustspeed_nn::ModelConfig,
    prompt: usize,
    new: usize,
    batch: usize,
) -> Result<Speed, String> {
    let model = config.build().map_err(|e| e.to_string())?;
    let params = model.layout().init_params(SEED);
    let vocab = model.vocab_size() as u64;
    let mut batcher = Batcher::new(model, params, batch, Strategy::Cached).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(SEED);
    let sampling = SamplingParams { max_tokens: new, temperature: 0.0, ..SamplingParams::default() };
    // Warm-up, as the transformers side does one: a prompt and two steps, so that first-touch page faults of the
    // buffers and caches are not timed.
    let warm: Vec<u32> = (0..prompt).map(|_| rng.below(vocab) as u32).collect();
    let id = batcher.add(&warm, sampling.clone()).map_err(|e| e.to_string())?;
    for _ in 0..2 {
        batcher.step().map_err(|e| e.to_string())?;
    }
    batcher.cancel(id);
    let start = Instant::now();
    for _ in 0..batch {
        let ids: Vec<u32> = (0..prompt).map(|_| rng.below(vocab) as u32).collect();
        batcher.add(&ids, sampling.clone()).map_err(|e| e.to_string())?;
    }
    batcher.step().map_err(|e| e.to_string())?;
    let ttft = start.elapsed();
    let mut tokens = 0;
    while batcher.active() > 0 {
        tokens += batcher.step().map_err(|e| e.to_string())?.iter().filter(|e| e.token.is_some()).count();
    }
    let decode = start.elapsed() - ttft;
    Ok(Speed { ttft_ms: ttft.as_secs_f64() * 1e3, decode_tokens_per_s: tokens as f64 / decode.as_secs_f64() })
}

fn transformers_speed(
    hf_config: &str,
    prompt: usize,
    new: usize,
    batch: usize,
    threads: usize,
) -> Result<Speed, String> {
    let python = std::env::var("RUSTSPEED_PYTHON").unwrap_or_else(|_| "python3".into());
    let args = [
        "-".to_string(),
        format!("--hf-config={hf_config}"),
        format!("--prompt-tokens={prompt}"),
        format!("--new-tokens={new}"),
        format!("--batch={batch}"),
        format!("--threads={threads}"),
    ];
    let mut child = Command::new(&python)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{python}: {e} (set RUSTSPEED_PYTHON to an interpreter with torch and transformers)"))?;
    child.stdin.take().expect("piped").write_all(HF_GENERATE_BENCH.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        text.lines().last()?.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
    };
    match (out.status.success(), field("ttft_ms"), field("decode_tokens_per_s")) {
        (true, Some(ttft_ms), Some(decode_tokens_per_s)) => Ok(Speed { ttft_ms, decode_tokens_per_s }),
        _ => Err(format!("transformers' benchmark failed: {text}")),
    }
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some((name, rest)) = argv.split_first().filter(|(n, _)| !n.starts_with("--")) else {
        parse("bench-generate", OPTS, argv)?;
        return Err("`rustspeed bench-generate` needs a preset, e.g. rustspeed bench-generate gpt2-124m".into());
    };
    let Some(a) = parse("bench-generate", OPTS, rest)? else { return Ok(()) };
    let e = |e: crate::args::ArgError| e.to_string();
    let p = rustspeed_nn::preset(name).map_err(|e| e.to_string())?;
    let config = p.config(p.vocab_size.unwrap_or(256)).map_err(|e| e.to_string())?;
    let context = config.context_length().unwrap_or(usize::MAX);
    let prompt = a.parsed_in("prompt-tokens", 512, 1..=context.saturating_sub(1)).map_err(e)?;
    let new = a.parsed_in("new-tokens", 256, 2..=context.saturating_sub(prompt).max(2)).map_err(e)?;
    let batches: Vec<usize> = a
        .get("batch")
        .unwrap_or("1,8")
        .split(',')
        .map(|b| b.trim().parse().ok().filter(|&b| (1..=256).contains(&b)).ok_or(format!("--batch {b}: 1 to 256")))
        .collect::<Result<_, _>>()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.parsed_in("threads", cores, 1..=1024).map_err(e)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    let hf_config = rustspeed_nn::hf_config::to_hf_json(&config).to_string();
    println!("bench-generate {name}: prompts of {prompt} tokens, {new} new tokens, greedy, {threads} threads, random weights");
    for batch in batches {
        let ours = pool.install(|| rustspeed_speed(&config, prompt, new, batch))?;
        let mut line = format!(
            "batch {batch}: rustspeed ttft {:.0} ms, decode {:.1} tok/s",
            ours.ttft_ms, ours.decode_tokens_per_s
        );
        if a.flag("compare-transformers") {
            let theirs = transformers_speed(&hf_config, prompt, new, batch, threads)?;
            line += &format!(
                " | transformers ttft {:.0} ms, decode {:.1} tok/s | decode ratio {:.2}, ttft ratio {:.2}",
                theirs.ttft_ms,
                theirs.decode_tokens_per_s,
                ours.decode_tokens_per_s / theirs.decode_tokens_per_s,
                theirs.ttft_ms / ours.ttft_ms
            );
        }
        println!("{line}");
    }
    Ok(())
}
