//! Autoregressive generation: sampling (temperature, top-k, top-p, repetition penalty, seeded), and the
//! [`Batcher`] that decodes several sequences together — each prompt processed in one pass (prefill), then one
//! token per step for every active sequence (decode), with sequences joining and leaving between steps
//! (continuous batching). Stop strings are text, so they are the caller's (who holds the tokenizer): it cancels a
//! sequence whose text reached one.

use crate::error::EngineError;
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::decode::DecodeCache;
use rustspeed_nn::Model;

/// How a sequence is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Key/value caches (transformers) or carried `(h, c)` (LSTM): each step touches only the new position.
    Cached,
    /// The whole sequence again for every token: the plain path, kept as the oracle the cached one is checked
    /// against.
    Recompute,
}

/// How one sequence is sampled and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// New tokens at most.
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy, deterministic).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// CTRL's repetition penalty (as transformers applies it): a token already in the sequence has its logit
    /// divided by the penalty if positive, multiplied if negative; 1 = off.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Tokens that end the sequence (e.g. the tokenizer's end-of-text); not part of the output.
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 200,
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 1,
            stop_tokens: Vec::new(),
        }
    }
}

/// Why a sequence ended (OpenAI's `finish_reason` names where they exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// A stop token was drawn.
    Stop,
    /// The model's context is full: no further position exists.
    Window,
}

impl FinishReason {
    /// OpenAI's name: `length` (a window full is a length limit too) or `stop`.
    pub fn openai_name(self) -> &'static str {
        match self {
            FinishReason::Length | FinishReason::Window => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// Identifies a sequence of a [`Batcher`].
pub type SeqId = u64;

/// What one step produced for one sequence: a token (none when a stop token ended it) and whether it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub id: SeqId,
    pub token: Option<u32>,
    pub finish: Option<FinishReason>,
}

/// Applies the repetition penalty, temperature, top-k and top-p to `logits` and draws a token.
pub fn sample_token(logits: &mut [f32], history: &[u32], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if p.repetition_penalty != 1.0 {
        let vocab = logits.len();
        let mut seen = vec![false; vocab];
        for &t in history.iter().filter(|&&t| (t as usize) < vocab) {
            if !std::mem::replace(&mut seen[t as usize], true) {
                let x = &mut logits[t as usize];
                *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
            }
        }
    }
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best }) as u32;
    if p.temperature <= 0.0 {
        return argmax();
    }
    // Most likely first: top-k and top-p both keep a prefix of this order.
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    if p.top_k > 0 {
        order.truncate(p.top_k);
    }
    let max = logits[order[0] as usize];
    let mut weights: Vec<f64> =
        order.iter().map(|&i| (((logits[i as usize] - max) / p.temperature) as f64).exp()).collect();
    if p.top_p < 1.0 {
        let total: f64 = weights.iter().sum();
        let mut mass = 0.0;
        let keep = weights.iter().position(|w| {
            mass += w / total;
            mass >= p.top_p as f64
        });
        let keep = keep.map_or(weights.len(), |i| i + 1);
        weights.truncate(keep);
        order.truncate(keep);
    }
    let mut u = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, &w) in order.iter().zip(&weights) {
        if u < w {
            return i;
        }
        u -= w;
    }
    *order.last().unwrap_or(&argmax())
}

struct Seq {
    id: SeqId,
    slot: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SamplingParams,
    rng: Rng,
    /// The logits of the next position.
    next: Vec<f32>,
}

/// Decodes up to `capacity` sequences together over one model.
pub struct Batcher {
    model: Model,
    params: Vec<f32>,
    strategy: Strategy,
    cache: DecodeCache,
    seqs: Vec<Seq>,
    free_slots: Vec<usize>,
    next_id: SeqId,
}

impl Batcher {
    pub fn new(model: Model, params: Vec<f32>, capacity: usize, strategy: Strategy) -> Result<Batcher, EngineError> {
        if params.len() != model.num_params() {
            return Err(EngineError::Config(format!(
                "{} parameters given for a model of {}",
                params.len(),
                model.num_params()
            )));
        }
        let cache = model.decode_cache(capacity);
        Ok(Batcher {
            model,
            params,
            strategy,
            cache,
            seqs: Vec::new(),
            free_slots: (0..capacity).rev().collect(),
            next_id: 0,
        })
    }

    /// Sequences that fit at once.
    pub fn capacity(&self) -> usize {
        self.cache.slots()
    }

    /// Sequences now decoding.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    /// The longest sequence (prompt and output) the model takes; `None` for the LSTM.
    pub fn context_length(&self) -> Option<usize> {
        self.model.max_seq_len()
    }

    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Adds a sequence and processes its prompt in one pass; its first token comes with the next [`Batcher::step`].
    pub fn add(&mut self, prompt: &[u32], params: SamplingParams) -> Result<SeqId, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Config("the prompt is empty; give at least one token".into()));
        }
        if let Some(context) = self.context_length().filter(|&c| prompt.len() >= c) {
            return Err(EngineError::Config(format!(
                "the prompt has {} tokens; the model's context is {context}, which leaves no room to generate",
                prompt.len()
            )));
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err(EngineError::Config(format!("all {} sequences are in use", self.capacity())));
        };
        let next = match self.strategy {
            Strategy::Cached => self.model.prefill(&self.params, &mut self.cache, slot, prompt),
            Strategy::Recompute => last_logits(&mut self.model, &self.params, prompt),
        };
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                self.model.clear_slot(&mut self.cache, slot);
                self.free_slots.push(slot);
                return Err(e.into());
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let rng = Rng::new(params.seed);
        self.seqs.push(Seq { id, slot, tokens: prompt.to_vec(), prompt_len: prompt.len(), params, rng, next });
        Ok(id)
    }

    /// Ends a sequence (a caller's stop string, a closed connection) and frees its place.
    pub fn cancel(&mut self, id: SeqId) {
        if let Some(i) = self.seqs.iter().position(|s| s.id == id) {
            let seq = self.seqs.swap_remove(i);
            self.release(seq.slot);
        }
    }

    fn release(&mut self, slot: usize) {
        self.model.clear_slot(&mut self.cache, slot);
        self.free_slots.push(slot);
    }

    /// Draws one token for every active sequence, ends those that are done, and runs the others' new tokens
    /// through the model together.
    pub fn step(&mut self) -> Result<Vec<Emitted>, EngineError> {
        let mut emitted = Vec::with_capacity(self.seqs.len());
        let mut finished = Vec::new();
        for seq in &mut self.seqs {
            let history = &seq.tokens[..];
            let token = sample_token(&mut seq.next, history, &seq.params, &mut seq.rng);
            let finish = if seq.params.stop_tokens.contains(&token) {
                Some(FinishReason::Stop)
            } else {
                seq.tokens.push(token);
                let generated = seq.tokens.len() - seq.prompt_len;
                let full = self.model.max_seq_len().is_some_and(|c| seq.tokens.len() >= c);
                match (generated >= seq.params.max_tokens, full) {
                    (true, _) => Some(FinishReason::Length),
                    (false, true) => Some(FinishReason::Window),
                    (false, false) => None,
                }
            };
            let token = (finish != Some(FinishReason::Stop)).then_some(token);
            emitted.push(Emitted { id: seq.id, token, finish });
            if finish.is_some() {
                finished.push(seq.id);
            }
        }
        for id in finished {
            self.cancel(id);
        }
        self.advance()?;
        Ok(emitted)
    }

    /// Feeds every active sequence's newest token.
    fn advance(&mut self) -> Result<(), EngineError> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        match self.strategy {
            Strategy::Cached => {
                let rows: Vec<(usize, u32)> =
                    self.seqs.iter().map(|s| (s.slot, *s.tokens.last().expect("a token"))).collect();
                let logits = self.model.decode_step(&self.params, &mut self.cache, &rows)?;
                let vocab = self.model.vocab_size();
                for (seq, row) in self.seqs.iter_mut().zip(logits.chunks_exact(vocab)) {
                    seq.next.copy_from_slice(row);
                }
            }
            Strategy::Recompute => {
                for seq in &mut self.seqs {
                    seq.next = last_logits(&mut self.model, &self.params, &seq.tokens)?;
                }
            }
        }
        Ok(())
    }
}

/// The logits of the last position of `tokens`, from a forward over all of them.
fn last_logits(model: &mut Model, params: &[f32], tokens: &[u32]) -> Result<Vec<f32>, rustspeed_nn::ModelError> {
    model.forward(params, tokens, None, 1, tokens.len())?;
    let vocab = model.vocab_size();
    let logits = model.logits().expect("a forward without targets leaves logits");
    Ok(logits[(tokens.len() - 1) * vocab..tokens.len() * vocab].to_vec())
}

/// Continues one prompt (cached decoding); returns the new tokens and why it stopped.
pub fn generate(
    model: Model,
    params: Vec<f32>,
    prompt: &[u32],
    sampling: SamplingParams,
) -> Result<(Vec<u32>, FinishReason), EngineError> {
    let mut batcher = Batcher::new(model, params, 1, Strategy::Cached)?;
    batcher.add(prompt, sampling)?;
    let mut out = Vec::new();
    loop {
        for e in batcher.step()? {
            out.extend(e.token);
            if let Some(finish) = e.finish {
                return Ok((out, finish));
            }
        }
    }
}
