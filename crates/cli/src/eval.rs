//! `rustspeed eval`: the mean next-token loss and perplexity of a model (a run's checkpoint, or Hugging Face
//! weights) on a prepared data split or a text file: the mean over consecutive, non-overlapping windows of
//! `--seq-len` tokens from the start, each window's targets the tokens one ahead, up to `--max-tokens`.

use crate::args::{opt, parse, Opt};
use crate::run_dir::RunDir;
use rustspeed_data::{Dataset, Tokenizer};
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::persist::load_weights;
use std::path::{Path, PathBuf};

const OPTS: &[Opt] = &[
    opt("run", "RUN_DIR", "a run directory: its latest checkpoint (or --tag) and tokenizer"),
    opt("tag", "TAG", "checkpoint tag of --run (default: latest)"),
    opt(
        "init-from",
        "PATH",
        "Hugging Face weights instead of a run: a model directory, or a .safetensors file with --model",
    ),
    opt("model", "PRESET|config.json", "the model of a --init-from weights file"),
    opt("data", "DATA_DIR", "a prepared data directory (tokenized as the model's data was)"),
    opt("split", "SPLIT", "val (default) or train, of --data"),
    opt("text", "FILE", "a UTF-8 text file instead of --data, tokenized with the model's tokenizer"),
    opt("seq-len", "T", "tokens per window (default: the model's context, 64 for LSTMs)"),
    opt("max-tokens", "N", "evaluate at most this many target tokens from the start (default: all)"),
    opt("batch", "B", "windows per forward pass (default 8)"),
];

/// Largest batch of windows per pass: beyond it the logits alone (B·T·V floats) outgrow any machine.
const MAX_BATCH: usize = 4096;

/// What is evaluated: a model and its parameters, and the tokenizer that turns text into its ids.
struct Subject {
    spec: ModelSpec,
    params: Vec<f32>,
    tokenizer: Option<Tokenizer>,
}

fn subject(a: &crate::args::Args, data_vocab: Option<usize>) -> Result<Subject, String> {
    match (a.get("run"), a.get("init-from")) {
        (Some(run), None) => {
            let run = Path::new(run);
            let weights = load_weights(&RunDir::new(run).checkpoints(), a.get("tag")).map_err(|e| e.to_string())?;
            let tokenizer =
                Tokenizer::load(&RunDir::new(run).tokenizer()).map_err(|e| format!("run {}: {e}", run.display()))?;
            Ok(Subject { spec: weights.spec, params: weights.params, tokenizer: Some(tokenizer) })
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let (spec, notes) = crate::hf::describe(a.get("model"), Some(&path), data_vocab.unwrap_or(1))?;
            notes.iter().for_each(|note| eprintln!("note: {note}"));
            let params = crate::hf::load_init(&spec, &path)?;
            let tokenizer = match path.join(rustspeed_data::HF_TOKENIZER_FILE).is_file() {
                true => Some(Tokenizer::from_hf_dir(&path).map_err(|e| e.to_string())?),
                false => None,
            };
            Ok(Subject { spec, params, tokenizer })
        }
        (Some(_), Some(_)) => Err("give --run or --init-from, not both".into()),
        (None, None) => Err("give --run RUN_DIR or --init-from PATH".into()),
    }
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let Some(a) = parse("eval", OPTS, argv)? else { return Ok(()) };
    let e = |e: crate::args::ArgError| e.to_string();
    let data = a.get("data").map(|d| Dataset::open(Path::new(d)).map_err(|e| e.to_string())).transpose()?;
    let Subject { spec, params, tokenizer } = subject(&a, data.as_ref().map(Dataset::vocab_size))?;
    let rows = spec.config.vocab_size();
    let max_tokens = a.parsed_in("max-tokens", usize::MAX, 1..=usize::MAX).map_err(e)?;
    let (stream, source): (Vec<u32>, String) = match (&data, a.get("text")) {
        (Some(data), None) => {
            if data.vocab_size() > rows {
                return Err(format!(
                    "--data {}: {} symbols, but the model has {rows} token rows",
                    data.dir().display(),
                    data.vocab_size()
                ));
            }
            let split = match a.get("split").unwrap_or("val") {
                "val" => &data.val,
                "train" => &data.train,
                other => return Err(format!("--split {other}: expected val or train")),
            };
            // Only what the windows can use (the targets reach one token past --max-tokens): a large split is
            // never read whole.
            let used = split.len().min(max_tokens.saturating_add(1));
            (split.tokens(0..used), format!("{} ({})", data.dir().display(), split.split()))
        }
        (None, Some(file)) => {
            let tokenizer = tokenizer.ok_or(
                "--text needs the model's tokenizer: a --run, or an --init-from directory with tokenizer.json",
            )?;
            if tokenizer.vocab_size() > rows {
                return Err(format!(
                    "the tokenizer has {} symbols, but the model has {rows} token rows",
                    tokenizer.vocab_size()
                ));
            }
            let text = std::fs::read_to_string(file).map_err(|e| format!("--text {file}: {e}"))?;
            let ids = tokenizer.encode(&text).map_err(|e| format!("--text {file}: {e}"))?;
            (ids, file.to_string())
        }
        (Some(_), Some(_)) => return Err("give --data or --text, not both".into()),
        (None, None) => return Err("give --data DATA_DIR or --text FILE to evaluate on".into()),
    };
    let context = spec.config.context_length();
    let t = a
        .parsed_in("seq-len", context.unwrap_or(spec.config.default_seq_len()), 1..=context.unwrap_or(usize::MAX))
        .map_err(e)?;
    let batch = a.parsed_in("batch", 8, 1..=MAX_BATCH).map_err(e)?;
    let windows = (stream.len().saturating_sub(1) / t).min(max_tokens / t);
    if windows == 0 {
        return Err(format!(
            "{source}: {} tokens (up to --max-tokens) make no window of {t} tokens and its targets; use a smaller --seq-len",
            stream.len().min(max_tokens.saturating_add(1))
        ));
    }
    let mut model = spec.config.build().map_err(|e| e.to_string())?;
    let mut loss_sum = 0.0f64;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for first in (0..windows).step_by(batch) {
        let b = batch.min(windows - first);
        x.clear();
        y.clear();
        for w in first..first + b {
            x.extend_from_slice(&stream[w * t..(w + 1) * t]);
            y.extend_from_slice(&stream[w * t + 1..(w + 1) * t + 1]);
        }
        let loss = model.forward(&params, &x, Some(&y), b, t).map_err(|e| e.to_string())?.expect("targets were given");
        // Each window's loss is a mean over its t targets; windows are equally long.
        loss_sum += loss.mean as f64 * (b * t) as f64;
    }
    let tokens = windows * t;
    let loss = loss_sum / tokens as f64;
    let ppl = loss.exp();
    eprintln!(
        "{} on {source}: mean loss {loss:.4} (perplexity {ppl:.3}) over {tokens} tokens in {windows} windows of {t}",
        spec.preset
    );
    println!("loss={loss:.6} ppl={ppl:.6} tokens={tokens}");
    Ok(())
}
