//! `rustspeed generate`: continue one prompt (streamed to stdout as it is produced) or a file of prompts (decoded
//! together by one [`Batcher`]), and what `serve` shares with it: loading a model with its tokenizer, and
//! [`TextStream`], which turns tokens into text incrementally and applies stop strings.

use crate::args::{opt, parse, switch, ArgError, Args, Opt};
use crate::run_dir::RunDir;
use rustspeed_data::Tokenizer;
use rustspeed_engine::generate::{Batcher, FinishReason, SamplingParams, SeqId, Strategy};
use rustspeed_engine::model_spec::ModelSpec;
use rustspeed_engine::persist::load_weights;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OPTS: &[Opt] = &[
    opt("run", "RUN_DIR", "a directory written by `rustspeed train`"),
    opt("tag", "TAG", "checkpoint tag of --run (default: latest)"),
    opt("init-from", "PATH", "Hugging Face weights instead of a run: a model directory (with tokenizer.json)"),
    opt("model", "PRESET|config.json", "the model of --init-from weights without a config.json"),
    opt("prompt", "TEXT", "text to continue (streamed to stdout as it is generated)"),
    opt("prompts", "FILE", "a file of prompts, one per line, decoded together"),
    opt("tokens", "N", "new tokens at most (default 200)"),
    opt("temperature", "T", "softmax temperature, 0 = greedy (default 0.8)"),
    opt("top-k", "K", "sample among the K most likely tokens, 0 = all (default 0)"),
    opt("top-p", "P", "sample among the most likely tokens holding probability P, 1 = all (default 1)"),
    opt("repetition-penalty", "R", "divide the logits of tokens already present by R, 1 = off (default 1)"),
    opt("seed", "S", "sampling seed (default 1; prompt i of --prompts uses S+i)"),
    opt("stop", "STR", "end the text before STR (repeatable)"),
    switch("json", "one JSON line per prompt: prompt, text, tokens, finish_reason"),
    switch("verbose", "prefill and decode speed on stderr"),
];

/// Bounds of `generate`'s numbers: more tokens than a run could want, a temperature past which sampling is
/// uniform to within fp32.
pub const MAX_GENERATED_TOKENS: usize = 1 << 20;
const MAX_TEMPERATURE: f32 = 1e4;
/// Bounds of the repetition penalty (both `generate` and `serve`): past a factor of 100 either way the penalty
/// already decides every choice it touches; the bounds keep a 0 or a negative (which would flip signs) out.
pub const MIN_REPETITION_PENALTY: f32 = 0.01;
pub const MAX_REPETITION_PENALTY: f32 = 100.0;
/// Sequences of `--prompts` decoded together; more prompts wait for a free place. Past a few dozen a step's
/// batched products gain little, while every place holds a key/value cache of the whole context.
const MAX_BATCH: usize = 32;

/// A model ready to generate: its description, parameters and tokenizer.
pub struct Loaded {
    pub spec: ModelSpec,
    pub params: Vec<f32>,
    pub tokenizer: Tokenizer,
    /// The run directory or model directory it came from.
    pub source: PathBuf,
}

/// The model of `--run [--tag]` or `--init-from [--model]`, with its tokenizer; every symbol of the tokenizer
/// must have a row in the model (one without would be read out of bounds, or silently mean another token).
pub fn load(a: &Args) -> Result<Loaded, String> {
    let loaded = match (a.get("run"), a.get("init-from")) {
        (Some(run), None) => {
            let run = PathBuf::from(run);
            let tokenizer =
                Tokenizer::load(&RunDir::new(&run).tokenizer()).map_err(|e| format!("run {}: {e}", run.display()))?;
            let weights = load_weights(&RunDir::new(&run).checkpoints(), a.get("tag")).map_err(|e| e.to_string())?;
            Loaded { spec: weights.spec, params: weights.params, tokenizer, source: run }
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let tokenizer =
                Tokenizer::from_hf_dir(&path).map_err(|e| format!("--init-from {}: {e}", path.display()))?;
            let (spec, notes) = crate::hf::describe(a.get("model"), Some(&path), tokenizer.vocab_size())?;
            notes.iter().for_each(|note| eprintln!("note: {note}"));
            let params = crate::hf::load_init(&spec, &path)?;
            Loaded { spec, params, tokenizer, source: path }
        }
        (Some(_), Some(_)) => return Err("give --run or --init-from, not both".into()),
        (None, None) => return Err("give --run RUN_DIR or --init-from PATH".into()),
    };
    let (symbols, rows) = (loaded.tokenizer.vocab_size(), loaded.spec.config.vocab_size());
    if symbols > rows {
        return Err(format!(
            "{}: its tokenizer has {symbols} symbols but the model only {rows} token rows (tokenizer and weights are not of one model)",
            loaded.source.display()
        ));
    }
    Ok(loaded)
}

/// The tokenizer's end-of-text token (the document separator of the training data), which ends a sequence like
/// OpenAI's `finish_reason: "stop"`; `None` for a tokenizer without one.
pub fn end_of_text_token(tokenizer: &Tokenizer) -> Option<u32> {
    tokenizer.eot_id()
}

/// Prompt tokens decoded ahead of the output: a tokenizer may decode a token differently at the start of a text
/// (a leading-space marker dropped), so the output is decoded as it reads after the prompt. vLLM uses the same
/// number.
const DECODE_CONTEXT_TOKENS: usize = 5;

/// What a byte-level tokenizer decodes an incomplete UTF-8 character to.
const REPLACEMENT: char = '\u{FFFD}';

/// The text of a sequence's output, token by token: only whole characters are given out (a byte-level BPE token
/// may end inside one), and the text ends before the first occurrence of any stop string. The last characters
/// are held back while they could be the start of a stop string, so no part of one is ever given out.
///
/// Each token decodes a short window (vLLM's incremental detokenization): the tokens since the last complete
/// character, after those decoded before them, so the cost per token does not grow with the output.
pub struct TextStream {
    /// A few prompt tokens, then the output's tokens.
    tokens: Vec<u32>,
    /// `tokens[prefix..read]` decoded last time; `tokens[read..]` are not in `text` yet.
    prefix: usize,
    read: usize,
    /// The output's text so far.
    text: String,
    /// Bytes of `text` given out.
    sent: usize,
    stops: Vec<String>,
    /// Characters held back: one less than the longest stop string.
    hold: usize,
    stopped: bool,
}

impl TextStream {
    /// A stream for the output after `prompt`; empty stop strings are the caller's to refuse.
    pub fn new(prompt: &[u32], stops: Vec<String>) -> TextStream {
        let context = &prompt[prompt.len().saturating_sub(DECODE_CONTEXT_TOKENS)..];
        let hold = stops.iter().map(|s| s.chars().count()).max().unwrap_or(0).saturating_sub(1);
        TextStream {
            tokens: context.to_vec(),
            prefix: 0,
            read: context.len(),
            text: String::new(),
            sent: 0,
            stops,
            hold,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that can be given out now (often empty: an incomplete character, or
    /// characters held back). A token past the tokenizer's vocabulary (a model may have more rows than its
    /// tokenizer has symbols) has no text and is skipped.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<String, String> {
        if self.stopped || token as usize >= tokenizer.vocab_size() {
            return Ok(String::new());
        }
        self.tokens.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids).map_err(|e| format!("decoding the output: {e}"));
        let before = decode(&self.tokens[self.prefix..self.read])?;
        let now = decode(&self.tokens[self.prefix..])?;
        let complete = now.len() > before.len() && !now.ends_with(REPLACEMENT);
        if complete && now.is_char_boundary(before.len()) && now.starts_with(&before) {
            self.append(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.tokens.len();
        }
        Ok(self.take())
    }

    /// The rest of the text once the sequence has ended: the held-back characters, and an incomplete character
    /// at the very end as U+FFFD.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, String> {
        if !self.stopped && self.read < self.tokens.len() {
            let decode = |ids: &[u32]| tokenizer.decode(ids).map_err(|e| format!("decoding the output: {e}"));
            let before = decode(&self.tokens[self.prefix..self.read])?;
            let now = decode(&self.tokens[self.prefix..])?;
            if let Some(rest) = now.strip_prefix(before.as_str()) {
                self.append(rest);
            }
            self.read = self.tokens.len();
        }
        self.hold = 0;
        Ok(self.take())
    }

    /// Whether a stop string was reached (the text ends before it).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The output's text so far (all of it after [`TextStream::finish`]).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Appends new text and cuts it at the first stop string. Only the new text and the characters before it
    /// that a stop string could span are searched: earlier text was searched already.
    fn append(&mut self, new: &str) {
        let longest = self.stops.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let from = chars_back(&self.text, longest.saturating_sub(1));
        self.text.push_str(new);
        let first = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str())).min();
        if let Some(at) = first {
            self.text.truncate(from + at);
            self.stopped = true;
        }
    }

    /// The text not given out yet, less the held-back tail.
    fn take(&mut self) -> String {
        let end = match self.stopped {
            true => self.text.len(),
            false => chars_back(&self.text, self.hold),
        };
        let end = end.max(self.sent);
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }
}

/// The byte offset `n` characters before the end of `s` (0 when it has fewer).
fn chars_back(s: &str, n: usize) -> usize {
    match n {
        0 => s.len(),
        _ => s.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i),
    }
}

/// Removes every `--NAME VALUE` / `--NAME=VALUE` from `argv` and returns the values and the other arguments: a
/// repeatable option, which the flag parser (one value per flag) does not take.
pub fn take_repeated(argv: &[String], name: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let (flag, inline) = (format!("--{name}"), format!("--{name}="));
    let (mut values, mut rest) = (Vec::new(), Vec::new());
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        if *arg == flag {
            values.push(it.next().ok_or_else(|| format!("{flag} needs a value"))?.clone());
        } else if let Some(value) = arg.strip_prefix(&inline) {
            values.push(value.to_string());
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((values, rest))
}

/// One prompt of the command and what became of it.
struct Job {
    prompt: String,
    ids: Vec<u32>,
    stream: TextStream,
    tokens: usize,
    finish: Option<FinishReason>,
}

pub fn run(argv: &[String]) -> Result<(), String> {
    let (stops, argv) = take_repeated(argv, "stop")?;
    let Some(a) = parse("generate", OPTS, &argv)? else { return Ok(()) };
    if stops.iter().any(String::is_empty) {
        return Err("--stop: an empty stop string would end the text before it begins".into());
    }
    let prompts = prompts(&a)?;
    let sampling = sampling(&a).map_err(|e| e.to_string())?;
    let (json, verbose) = (a.flag("json"), a.flag("verbose"));
    let Loaded { spec, params, tokenizer, .. } = load(&a)?;
    let sampling = SamplingParams { stop_tokens: end_of_text_token(&tokenizer).into_iter().collect(), ..sampling };
    let context = spec.config.context_length();

    let single = prompts.len() == 1;
    let mut jobs = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.into_iter().enumerate() {
        let which = if single { "the prompt".to_string() } else { format!("--prompts line {}", i + 1) };
        let ids = tokenizer.encode(&prompt).map_err(|e| format!("{which} cannot be encoded: {e}"))?;
        if ids.is_empty() {
            return Err(format!("{which} is empty; give at least one token"));
        }
        if let Some(context) = context.filter(|&c| ids.len() >= c) {
            return Err(format!(
                "{which} has {} tokens, but the model's context is {context} tokens (at most {} leave room to generate)",
                ids.len(),
                context - 1
            ));
        }
        let stream = TextStream::new(&ids, stops.clone());
        jobs.push(Job { prompt, ids, stream, tokens: 0, finish: None });
    }

    let model = spec.config.build().map_err(|e| e.to_string())?;
    let mut batcher =
        Batcher::new(model, params, jobs.len().min(MAX_BATCH), Strategy::Cached).map_err(|e| e.to_string())?;
    // A lone prompt is streamed: the prompt at once, then its continuation as each character completes.
    let stream_out = single && !json;
    let mut stdout = std::io::stdout().lock();
    if stream_out {
        write!(stdout, "{}", jobs[0].prompt).and_then(|()| stdout.flush()).map_err(|e| format!("stdout: {e}"))?;
    }

    let mut clock = Clock::new();
    let mut waiting: VecDeque<usize> = (0..jobs.len()).collect();
    let mut live: HashMap<SeqId, usize> = HashMap::new();
    loop {
        while batcher.active() < batcher.capacity() {
            let Some(i) = waiting.pop_front() else { break };
            let params = SamplingParams { seed: sampling.seed.wrapping_add(i as u64), ..sampling.clone() };
            let started = Instant::now();
            let id = batcher.add(&jobs[i].ids, params).map_err(|e| e.to_string())?;
            clock.prefilled(jobs[i].ids.len(), started.elapsed());
            live.insert(id, i);
        }
        if live.is_empty() {
            break;
        }
        let started = Instant::now();
        let emitted = batcher.step().map_err(|e| e.to_string())?;
        clock.stepped(emitted.iter().filter(|e| e.token.is_some()).count(), started.elapsed());
        for e in emitted {
            let Some(&i) = live.get(&e.id) else { continue };
            let job = &mut jobs[i];
            let mut text = String::new();
            if let Some(token) = e.token {
                job.tokens += 1;
                text = job.stream.push(&tokenizer, token)?;
            }
            let finish = if job.stream.stopped() { Some(FinishReason::Stop) } else { e.finish };
            if let Some(finish) = finish {
                batcher.cancel(e.id);
                live.remove(&e.id);
                job.finish = Some(finish);
                text.push_str(&job.stream.finish(&tokenizer)?);
            }
            if stream_out && !text.is_empty() {
                write!(stdout, "{text}").and_then(|()| stdout.flush()).map_err(|e| format!("stdout: {e}"))?;
            }
        }
    }

    for (i, job) in jobs.iter().enumerate() {
        let finish = job.finish.unwrap_or(FinishReason::Length);
        let line = match json {
            true => json!({
                "prompt": job.prompt,
                "text": job.stream.text(),
                "tokens": job.tokens,
                "finish_reason": finish.openai_name(),
            })
            .to_string(),
            false if stream_out => String::new(),
            false if single => format!("{}{}", job.prompt, job.stream.text()),
            false => format!("=== prompt {} of {} ===\n{}{}", i + 1, jobs.len(), job.prompt, job.stream.text()),
        };
        writeln!(stdout, "{line}").map_err(|e| format!("stdout: {e}"))?;
        if finish == FinishReason::Window {
            let which = if single { String::new() } else { format!("prompt {}: ", i + 1) };
            let context = context.unwrap_or_default();
            eprintln!("{which}stopped: the model's context of {context} tokens is full");
        }
    }
    if verbose {
        clock.report();
    }
    Ok(())
}

/// The prompts of `--prompt` or `--prompts` (one per line; blank lines are skipped).
fn prompts(a: &Args) -> Result<Vec<String>, String> {
    match (a.get("prompt"), a.get("prompts")) {
        (Some(prompt), None) => Ok(vec![prompt.to_string()]),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(Path::new(file)).map_err(|e| format!("--prompts {file}: {e}"))?;
            let prompts: Vec<String> = text
                .lines()
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            match prompts.is_empty() {
                true => Err(format!("--prompts {file}: no prompts (one per line)")),
                false => Ok(prompts),
            }
        }
        (Some(_), Some(_)) => Err("give --prompt or --prompts, not both".into()),
        (None, None) => Err("`rustspeed generate` needs --prompt TEXT or --prompts FILE".into()),
    }
}

/// The sampling flags, each within its range.
fn sampling(a: &Args) -> Result<SamplingParams, ArgError> {
    let d = SamplingParams::default();
    Ok(SamplingParams {
        max_tokens: a.parsed_in("tokens", d.max_tokens, 1..=MAX_GENERATED_TOKENS)?,
        // Finite and not negative (0 is greedy); a NaN is in no range.
        temperature: a.parsed_in("temperature", d.temperature, 0.0..=MAX_TEMPERATURE)?,
        top_k: a.parsed("top-k", d.top_k)?,
        top_p: a.parsed_in("top-p", d.top_p, 0.0..=1.0)?,
        repetition_penalty: a.parsed_in(
            "repetition-penalty",
            d.repetition_penalty,
            MIN_REPETITION_PENALTY..=MAX_REPETITION_PENALTY,
        )?,
        seed: a.parsed("seed", d.seed)?,
        stop_tokens: Vec::new(),
    })
}

/// Where `--verbose`'s time went: prefills (prompts processed) and decode steps.
struct Clock {
    start: Instant,
    prompt_tokens: usize,
    prefill: Duration,
    first_token: Option<Duration>,
    decoded: usize,
    decode: Duration,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            prompt_tokens: 0,
            prefill: Duration::ZERO,
            first_token: None,
            decoded: 0,
            decode: Duration::ZERO,
        }
    }

    fn prefilled(&mut self, tokens: usize, took: Duration) {
        self.prompt_tokens += tokens;
        self.prefill += took;
    }

    fn stepped(&mut self, tokens: usize, took: Duration) {
        self.first_token.get_or_insert_with(|| self.start.elapsed());
        self.decoded += tokens;
        self.decode += took;
    }

    fn report(&self) {
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        eprintln!(
            "prefill: {} prompt tokens in {:.1} ms ({:.0} tokens/s); first token after {:.1} ms",
            self.prompt_tokens,
            self.prefill.as_secs_f64() * 1e3,
            rate(self.prompt_tokens, self.prefill),
            self.first_token.unwrap_or_default().as_secs_f64() * 1e3
        );
        eprintln!(
            "decode: {} tokens in {:.2} s ({:.1} tokens/s); {:.2} s in all",
            self.decoded,
            self.decode.as_secs_f64(),
            rate(self.decoded, self.decode),
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn char_tokenizer() -> Tokenizer {
        Tokenizer::char_from_corpus("abcdefgh XYZ.\n")
    }

    fn stream_all(text: &str, stops: &[&str]) -> (Vec<String>, String, bool) {
        let tok = char_tokenizer();
        let ids = tok.encode(text).unwrap();
        let mut s = TextStream::new(&tok.encode("ab").unwrap(), stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for &id in &ids {
            pieces.push(s.push(&tok, id).unwrap());
            if s.stopped() {
                break;
            }
        }
        pieces.push(s.finish(&tok).unwrap());
        (pieces, s.text().to_string(), s.stopped())
    }

    #[test]
    fn streams_every_character_and_ends_before_a_stop_string() {
        let (pieces, text, stopped) = stream_all("abc def", &[]);
        assert_eq!(pieces.concat(), "abc def");
        assert_eq!((text.as_str(), stopped), ("abc def", false));
        assert_eq!(pieces[0], "a", "nothing held back without stop strings");

        let (pieces, text, stopped) = stream_all("abc. def. gh", &[". g", "ZZ"]);
        // Nothing of the stop string was given out, though its first characters came before the "g" that
        // completed it: they were held back.
        assert_eq!((pieces.concat().as_str(), text.as_str(), stopped), ("abc. def", "abc. def", true));
        assert_eq!(pieces.last().map(String::as_str), Some(""), "{pieces:?}");
    }

    #[test]
    fn whole_characters_only_from_byte_tokens() {
        let tok = Tokenizer::train_bpe("héllo wörld ünïcode ✓✓ ", 257).unwrap();
        let text = "wörld ✓ ünï";
        let ids = tok.encode(text).unwrap();
        let mut s = TextStream::new(&[], vec![]);
        let mut out = String::new();
        for &id in &ids {
            let piece = s.push(&tok, id).unwrap();
            assert!(!piece.contains(REPLACEMENT), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&s.finish(&tok).unwrap());
        assert_eq!(out, text);
    }

    #[test]
    fn repeated_options_are_taken_out() {
        let argv: Vec<String> = ["--stop", "a", "--tokens", "3", "--stop=b c"].iter().map(|s| s.to_string()).collect();
        let (stops, rest) = take_repeated(&argv, "stop").unwrap();
        assert_eq!((stops, rest), (vec!["a".to_string(), "b c".to_string()], vec!["--tokens".into(), "3".into()]));
        assert!(take_repeated(&argv[..1], "stop").is_err());
    }
}
