//! Autoregressive sampling from a trained model: temperature, top-k, seeded.

use crate::error::EngineError;
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::Model;

/// Longest context fed back to a model without a context limit (the LSTM): sampling re-runs the whole window
/// per token, so this bounds its cost.
pub const UNBOUNDED_CONTEXT_WINDOW: usize = 256;

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleOptions {
    /// New tokens to produce.
    pub tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { tokens: 200, temperature: 0.8, top_k: 0, seed: 1 }
    }
}

/// Draws the next token from one row of logits.
pub fn sample_token(logits: &[f32], temperature: f32, top_k: usize, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best }) as u32;
    if temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    if top_k > 0 && top_k < logits.len() {
        order.select_nth_unstable_by(top_k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order.truncate(top_k);
    }
    let max = order.iter().map(|&i| logits[i as usize]).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = order.iter().map(|&i| (((logits[i as usize] - max) / temperature) as f64).exp()).collect();
    let mut u = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, &w) in order.iter().zip(&weights) {
        if u < w {
            return i;
        }
        u -= w;
    }
    *order.last().unwrap_or(&argmax())
}

/// Continues `prompt` by `opts.tokens` tokens; returns only the new tokens.
pub fn generate(
    model: &mut Model,
    params: &[f32],
    prompt: &[u32],
    opts: &SampleOptions,
) -> Result<Vec<u32>, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::Config("the prompt is empty; give at least one token".into()));
    }
    let window = model.max_seq_len().unwrap_or(UNBOUNDED_CONTEXT_WINDOW);
    let vocab = model.vocab_size();
    let mut rng = Rng::new(opts.seed);
    let mut seq = prompt.to_vec();
    for _ in 0..opts.tokens {
        let ctx = &seq[seq.len().saturating_sub(window)..];
        model.forward(params, ctx, None, 1, ctx.len())?;
        let logits = model.logits().expect("a forward without targets leaves logits");
        let last = &logits[(ctx.len() - 1) * vocab..ctx.len() * vocab];
        seq.push(sample_token(last, opts.temperature, opts.top_k, &mut rng));
    }
    Ok(seq.split_off(prompt.len()))
}
