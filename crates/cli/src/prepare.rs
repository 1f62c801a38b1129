//! `rustspeed prepare`: inputs (files, directories, glob patterns; text, JSON Lines, Parquet; gzip/zstd) ->
//! tokenizer + token shards of a train and a validation split.

use crate::args::{opt, parse, switch, Opt};
use rustspeed_data::{
    prepare as prepare_data, PrepareOptions, TokenizerSpec, ValSplit, DEFAULT_BPE_SAMPLE_BYTES, DEFAULT_SHARD_TOKENS,
};
use std::path::PathBuf;

const PREPARE_OPTS: &[Opt] = &[
    opt(
        "input",
        "PATH...",
        "files, directories (read recursively) or glob patterns, one or more after --input, --input repeatable",
    ),
    opt("tokenizer", "SPEC", "char | bpe:VOCAB | path/to/tokenizer.json (default char)"),
    opt("out", "DATA_DIR", "directory to create"),
    opt("format", "FORMAT", "text | jsonl | parquet for every file (default: by extension; .jsonl .json .parquet)"),
    opt("text-field", "NAME", "JSON Lines field / Parquet column of the text, dots for nested fields (default text)"),
    switch("split-blank-lines", "text files: one document per blank-line-separated block (default: one per file)"),
    switch("skip-bad-lines", "skip and count JSON lines without the text field (default: an error naming the line)"),
    opt(
        "eot",
        "TOKEN",
        "end-of-text token of a tokenizer.json (default: <|endoftext|>, <|end_of_text|>, </s> or <eos>)",
    ),
    opt("val-fraction", "F", "share of the documents kept for validation (default 0.1)"),
    opt("val-docs", "N", "exactly N documents for validation instead (a first pass counts them)"),
    opt("seed", "S", "seed of the validation choice (default 1337)"),
    opt("shard-tokens", "N", "tokens per shard file, K/M/G suffixes allowed (default 100M)"),
    opt("bpe-sample", "BYTES", "text bytes that bpe:VOCAB is trained on, K/M/G suffixes allowed (default 100M)"),
    switch("overwrite", "replace an existing DATA_DIR"),
];

/// `--input` takes every value up to the next option, so a shell-expanded glob (`--input data/*.jsonl`) is whole;
/// the argument parser takes each option once, so the inputs are taken out before it runs.
fn take_inputs(argv: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let (mut inputs, mut rest) = (Vec::new(), Vec::new());
    let mut it = argv.iter().peekable();
    while let Some(arg) = it.next() {
        if let Some(value) = arg.strip_prefix("--input=") {
            inputs.push(PathBuf::from(value));
        } else if arg == "--input" {
            while let Some(value) = it.next_if(|value| !value.starts_with("--")) {
                inputs.push(PathBuf::from(value));
            }
        } else {
            rest.push(arg.clone());
        }
    }
    (inputs, rest)
}

/// A count with an optional decimal suffix: `250000`, `100M`, `1.5G`, `64K`; a trailing `B` is allowed (bytes).
fn parse_count(text: &str) -> Result<u64, String> {
    let body = text.trim().trim_end_matches(['B', 'b']);
    let (number, scale) = match body.char_indices().last() {
        Some((at, 'K' | 'k')) => (&body[..at], 1e3),
        Some((at, 'M' | 'm')) => (&body[..at], 1e6),
        Some((at, 'G' | 'g')) => (&body[..at], 1e9),
        Some((at, 'T' | 't')) => (&body[..at], 1e12),
        _ => (body, 1.0),
    };
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a count (e.g. 250000, 100M, 1.5G)"))?;
    let scaled = value * scale;
    if !(scaled.is_finite() && scaled >= 1.0 && scaled < u64::MAX as f64) {
        return Err(format!("'{text}' must be at least 1"));
    }
    Ok(scaled.round() as u64)
}

/// Lets every tokenizing thread allocate from its own malloc arena. `main` keeps one arena for training (see
/// `keep_freed_memory`), but tokenizing allocates a few small blocks per token on every thread, and one arena's
/// lock then serializes the threads (measured: a third of the time in malloc and futex waits). Called before
/// `prepare` starts any thread, so that each new thread may get an arena of its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arena_per_thread() {
    // 8 × cores is glibc's own default limit on 64-bit systems.
    let arenas = std::thread::available_parallelism().map_or(8, |n| 8 * n.get()) as i32;
    // SAFETY: mallopt only changes allocator tuning; no other thread is running.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn arena_per_thread() {}

pub fn run(argv: &[String]) -> Result<(), String> {
    arena_per_thread();
    let (inputs, rest) = take_inputs(argv);
    let Some(a) = parse("prepare", PREPARE_OPTS, &rest)? else { return Ok(()) };
    if inputs.is_empty() {
        return Err("`rustspeed prepare` needs --input (a file, directory or glob pattern)".to_string());
    }
    let e = |e: crate::args::ArgError| e.to_string();
    let out = PathBuf::from(a.required("out").map_err(e)?);
    let spec: TokenizerSpec = a.get("tokenizer").unwrap_or("char").parse().map_err(|e| format!("--tokenizer: {e}"))?;
    let d = PrepareOptions::default();
    let val = match (a.get("val-fraction"), a.get("val-docs")) {
        (Some(_), Some(_)) => return Err("give --val-fraction or --val-docs, not both".to_string()),
        (_, Some(n)) => ValSplit::Documents(n.parse().map_err(|_| format!("--val-docs {n}: not a whole number"))?),
        (Some(_), None) => ValSplit::Fraction(a.parsed("val-fraction", 0.1).map_err(e)?),
        (None, None) => d.val,
    };
    let count = |name: &str, default: u64| {
        a.get(name).map_or(Ok(default), |text| parse_count(text).map_err(|problem| format!("--{name}: {problem}")))
    };
    let opts = PrepareOptions {
        val,
        seed: a.parsed("seed", d.seed).map_err(e)?,
        format: a.get("format").map(str::parse).transpose().map_err(|e| format!("--format: {e}"))?,
        text_field: a.get("text-field").unwrap_or(&d.text_field).to_string(),
        split_blank_lines: a.flag("split-blank-lines"),
        skip_bad_lines: a.flag("skip-bad-lines"),
        eot: a.get("eot").map(str::to_string),
        shard_tokens: count("shard-tokens", DEFAULT_SHARD_TOKENS)?,
        bpe_sample_bytes: count("bpe-sample", DEFAULT_BPE_SAMPLE_BYTES)?,
        overwrite: a.flag("overwrite"),
        // Progress lines redraw themselves with "\r": for a person watching, not for a log file or a pipe.
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let start = std::time::Instant::now();
    let r = prepare_data(&inputs, &spec, &out, &opts).map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let skipped = match r.skipped_records {
        0 => String::new(),
        n => format!(", {n} bad records skipped"),
    };
    println!(
        "prepared {} file(s), {:.1} MB -> {}: vocabulary {}, {} train tokens ({} documents, {} shard(s)), {} validation \
         tokens ({} documents, split by {}){skipped} ({seconds:.1}s, {:.1} MB/s)",
        r.files,
        r.bytes as f64 / 1e6,
        out.display(),
        r.vocab_size,
        r.train_tokens,
        r.train_documents,
        r.train_shards,
        r.val_tokens,
        r.val_documents,
        r.split_by.name(),
        r.bytes as f64 / 1e6 / seconds.max(1e-9),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn inputs_are_every_value_after_each_input_flag() {
        let (inputs, rest) = take_inputs(&argv("--input a.txt b/ c*.jsonl --out d --input=e.parquet --overwrite"));
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["a.txt", "b/", "c*.jsonl", "e.parquet"]);
        assert_eq!(rest, argv("--out d --overwrite"));
    }

    #[test]
    fn counts_take_decimal_suffixes() {
        assert_eq!(parse_count("250000").unwrap(), 250_000);
        assert_eq!(parse_count("100M").unwrap(), 100_000_000);
        assert_eq!(parse_count("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_count("64KB").unwrap(), 64_000);
        for bad in ["", "0", "-5", "lots", "1.5X", "nanM"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }
}
