//! Incremental decoding for generation: a [`DecodeCache`] holds, for each of a fixed number of sequence slots,
//! what every layer keeps of the positions seen so far (keys and values of the transformer blocks, `(h, c)` of the
//! LSTM layers). [`Model::prefill`] runs a prompt in one pass (with the training kernels: the same numbers as a
//! forward over it) and returns the logits of its last position only; [`Model::decode_step`] runs one new token for
//! each of several sequences together, touching only the new positions.

use crate::error::ModelError;
use crate::layer::{DecodeRows, LayerCache};
use crate::model::Model;
use crate::param::Window;
use rustspeed_kernels::cast::Element;

/// The generation state of up to [`DecodeCache::slots`] sequences.
pub struct DecodeCache<E: Element = f32> {
    layers: Vec<LayerCache<E>>,
    /// Positions each slot holds.
    lens: Vec<usize>,
}

impl<E: Element> DecodeCache<E> {
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Positions slot `slot` holds (the next token's position).
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Whether no slot holds anything.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }
}

impl<E: Element> Model<E> {
    /// An empty cache for `slots` sequences.
    pub fn decode_cache(&self, slots: usize) -> DecodeCache<E> {
        DecodeCache { layers: self.layers().iter().map(|l| l.decode_cache(slots)).collect(), lens: vec![0; slots] }
    }

    /// Forgets slot `slot`'s sequence, for reuse by another.
    pub fn clear_slot(&self, cache: &mut DecodeCache<E>, slot: usize) {
        cache.layers.iter_mut().for_each(|l| l.clear(slot));
        cache.lens[slot] = 0;
    }

    /// Runs `prompt` as the start of the (empty) slot `slot`; returns the logits of its last position.
    pub fn prefill(
        &mut self,
        params: &[E],
        cache: &mut DecodeCache<E>,
        slot: usize,
        prompt: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        self.check_slot(cache, slot)?;
        if cache.lens[slot] != 0 {
            return Err(ModelError::InvalidConfig(format!("slot {slot} already holds a sequence")));
        }
        let positions: Vec<usize> = (0..prompt.len()).collect();
        let slots = vec![slot; prompt.len()];
        let rows = DecodeRows { tokens: prompt, slots: &slots, positions: &positions };
        let logits = self.decode_rows(params, cache, &rows, true)?;
        cache.lens[slot] = prompt.len();
        Ok(logits)
    }

    /// Runs one new token for each `(slot, token)` (distinct slots, each holding a sequence); returns their logits,
    /// row by row.
    pub fn decode_step(
        &mut self,
        params: &[E],
        cache: &mut DecodeCache<E>,
        step: &[(usize, u32)],
    ) -> Result<Vec<f32>, ModelError> {
        let mut seen = vec![false; cache.slots()];
        for &(slot, _) in step {
            self.check_slot(cache, slot)?;
            if std::mem::replace(&mut seen[slot], true) || cache.lens[slot] == 0 {
                return Err(ModelError::InvalidConfig(format!("slot {slot} is repeated or holds no sequence")));
            }
        }
        let tokens: Vec<u32> = step.iter().map(|&(_, t)| t).collect();
        let slots: Vec<usize> = step.iter().map(|&(s, _)| s).collect();
        let positions: Vec<usize> = slots.iter().map(|&s| cache.lens[s]).collect();
        let rows = DecodeRows { tokens: &tokens, slots: &slots, positions: &positions };
        let logits = self.decode_rows(params, cache, &rows, false)?;
        slots.iter().for_each(|&s| cache.lens[s] += 1);
        Ok(logits)
    }

    fn check_slot(&self, cache: &DecodeCache<E>, slot: usize) -> Result<(), ModelError> {
        match slot < cache.slots() {
            true => Ok(()),
            false => Err(ModelError::InvalidConfig(format!("slot {slot} of a cache of {}", cache.slots()))),
        }
    }

    /// The layers over `rows`, then the head over the last row (`last_only`) or all of them.
    fn decode_rows(
        &mut self,
        params: &[E],
        cache: &mut DecodeCache<E>,
        rows: &DecodeRows,
        last_only: bool,
    ) -> Result<Vec<f32>, ModelError> {
        let n = rows.len();
        if n == 0 {
            return Err(ModelError::InvalidConfig("nothing to decode".into()));
        }
        let vocab = self.vocab_size();
        if let Some((position, &token)) = rows.tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { what: "tokens", position, token, vocab_size: vocab });
        }
        if let Some(max) = self.max_seq_len() {
            if let Some(&p) = rows.positions.iter().find(|&&p| p >= max) {
                return Err(ModelError::SequenceTooLong { t: p + 1, block_size: max });
            }
        }
        self.check_buffer("parameter", params)?;
        let window = Window::whole(params);
        let (layout, layers, head) = self.decode_parts();
        let (mut input, mut output): (Vec<E>, Vec<E>) = (Vec::new(), Vec::new());
        for (layer, layer_cache) in layers.iter_mut().zip(&mut cache.layers) {
            output.clear();
            output.resize(n * layer.output_width(), E::default());
            layer.decode(layout, &window, rows, &input, &mut output, layer_cache);
            std::mem::swap(&mut input, &mut output);
        }
        let width = input.len() / n;
        let x = if last_only { &input[(n - 1) * width..] } else { &input[..] };
        let count = if last_only { 1 } else { n };
        head.forward(layout, &window, x, count, None);
        Ok(head.output()[..count * vocab].to_vec())
    }
}
