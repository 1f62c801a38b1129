//! The layer abstraction: a model is an ordered list of layers, each reading the previous layer's output
//! (`[B, T, width]`, stored as the model's element type `E`: fp32, fp16 or bf16) and the batch's token ids, over parameters that live in the model's flat buffer.

use crate::param::{ParamId, ParamLayout, Window, WindowMut};
use rustspeed_kernels::cast::{Contents, Element};

/// The token ids of one micro-batch, `B` sequences of `T` tokens, row-major `[B, T]`.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub b: usize,
    pub t: usize,
}

impl Batch<'_> {
    /// Rows of the flattened batch, `N = B * T`.
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
}

/// One step of a model's forward and backward.
///
/// A layer declares its parameters by pushing [`crate::ParamSpec`]s into the model's [`ParamLayout`] when it is
/// constructed and keeps the returned [`ParamId`]s; at run time it receives the whole flat parameter buffer (and
/// gradient buffer) and reads its own views through the layout. Activations a layer's backward needs are kept by
/// the layer itself, in buffers reused across steps.
///
/// Contract: `forward` overwrites `output` (`[B, T, output_width]`); `backward` *adds* into `dinput`, and into or
/// over its parameters' gradients as [`GradWrites`] says for each: adding serves gradient accumulation and a
/// shared (tied) parameter's later writers; overwriting lets a window's first backward skip a zeroing pass over
/// the gradients. `backward` uses the activations of the latest `forward`. Parameters, activations and gradients
/// are stored as `E`; the kernels compute in fp32.
pub trait Layer<E: Element = f32>: Send {
    /// A short name for reports, e.g. `h.3` or `lstm.l2`.
    fn name(&self) -> &str;

    /// The parameters this layer declared (and owns), in layout order. A tied parameter belongs to the layer that
    /// declared it.
    fn params(&self) -> &[ParamId];

    /// Width of one position of this layer's output.
    fn output_width(&self) -> usize;

    /// Bytes of the activations this layer keeps from its latest forward for its backward (its output, which
    /// the model keeps, not included).
    fn saved_bytes(&self) -> usize;

    /// Training FLOPs per token of this layer's work at sequence length `t`: a forward's multiply-adds at 2 FLOPs
    /// each, times 3 for forward plus backward (the backward's two products per forward one). What counts is the
    /// matrix products; a layer states what else it counts (GPT's layers follow nanoGPT's `6·N`, 6 per parameter
    /// whatever its use, and attention's `T x T` scores in full, causal mask or not). Summed by
    /// [`crate::Model::flops_per_token`] for the model FLOP/s and MFU that `bench` reports.
    fn flops_per_token(&self, t: usize) -> f64;

    /// Elements of activations this layer holds for a micro-batch of `b` sequences of `t` tokens: what it saves
    /// for its backward (what [`Layer::saved_bytes`] counts after a forward, at one element per value) and its
    /// output (`B·T·output_width`, which the model keeps). Summed by [`crate::Model::activation_estimate`].
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats;

    /// Frees what [`Layer::saved_bytes`] counts. Activation checkpointing calls it after the forward; before the
    /// backward the model runs the forward again on the same input, which restores it exactly.
    fn release_saved(&mut self);

    /// Computes `output` from `input` (the previous layer's output; empty for the first layer) and the batch.
    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, input: &[E], output: &mut [E]);

    /// An empty generation cache for `slots` sequences: what [`Layer::decode`] keeps between calls.
    fn decode_cache(&self, _slots: usize) -> LayerCache<E> {
        LayerCache::Stateless
    }

    /// The forward of generation: `output` rows for the positions `rows` describes, from `input` rows and what
    /// `cache` holds of the sequences' earlier positions, which it extends. Nothing is kept for a backward.
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        input: &[E],
        output: &mut [E],
        cache: &mut LayerCache<E>,
    );

    /// Adds the gradients of `dot(output, dout)` into `dinput`, and writes them into the layer's slots of `grads`
    /// as `writes` says (adding, or overwriting everything of that parameter). `input` and `output` are those of
    /// the latest `forward`. `scratch` is a buffer shared by all layers for temporaries; a layer may resize it.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        batch: &Batch,
        input: &[E],
        output: &[E],
        dout: &[E],
        dinput: &mut [E],
        scratch: &mut Scratch<E>,
    );
}

/// The rows of an incremental forward ([`Layer::decode`]): row `r` is token `tokens[r]` at position
/// `positions[r]` of the sequence in cache slot `slots[r]`. Either a prompt (one slot's positions `0..n`, in
/// order) or a step (one new position for each of several slots).
#[derive(Clone, Copy, Debug)]
pub struct DecodeRows<'a> {
    pub tokens: &'a [u32],
    pub slots: &'a [usize],
    pub positions: &'a [usize],
}

impl DecodeRows<'_> {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether these rows are a whole prompt of one sequence (positions `0..n` of one slot), which the layers
    /// run with their training kernels (the same numbers as a forward over the prompt).
    pub fn is_prompt(&self) -> bool {
        self.slots.iter().all(|&s| s == self.slots[0]) && self.positions.iter().enumerate().all(|(i, &p)| p == i)
    }
}

/// What a layer keeps of each sequence's earlier positions for generation, per cache slot.
pub enum LayerCache<E> {
    /// Nothing (the layer looks at one position at a time).
    Stateless,
    /// A transformer block's keys and values, rows of `width` per position (keys after rotation, as Hugging
    /// Face caches them).
    Kv { width: usize, k: Vec<Vec<E>>, v: Vec<Vec<E>> },
    /// A recurrent layer's hidden and cell state after the slot's latest position (zeros before the first).
    Recurrent { h: Vec<Vec<E>>, c: Vec<Vec<E>> },
}

impl<E: Copy + Default> LayerCache<E> {
    pub fn kv(slots: usize, width: usize) -> Self {
        LayerCache::Kv { width, k: vec![Vec::new(); slots], v: vec![Vec::new(); slots] }
    }

    pub fn recurrent(slots: usize, hidden: usize) -> Self {
        LayerCache::Recurrent { h: vec![vec![E::default(); hidden]; slots], c: vec![vec![E::default(); hidden]; slots] }
    }

    /// Forgets slot `slot`'s sequence.
    pub fn clear(&mut self, slot: usize) {
        match self {
            LayerCache::Stateless => {}
            LayerCache::Kv { k, v, .. } => {
                k[slot].clear();
                v[slot].clear();
            }
            LayerCache::Recurrent { h, c } => {
                h[slot].fill(E::default());
                c[slot].fill(E::default());
            }
        }
    }

    /// Appends each row's key and value (columns `k_at..k_at + width` and `v_at..` of `qkv`'s rows of `stride`)
    /// to its slot; each row's position must be its slot's next one.
    pub fn append_kv(&mut self, rows: &DecodeRows, qkv: &[E], stride: usize, k_at: usize, v_at: usize) {
        let LayerCache::Kv { width, k, v } = self else { unreachable!("a transformer block's cache holds keys") };
        for (r, (&slot, &position)) in rows.slots.iter().zip(rows.positions).enumerate() {
            assert_eq!(k[slot].len(), position * *width, "decode: slot {slot} is not at position {position}");
            let row = &qkv[r * stride..(r + 1) * stride];
            k[slot].extend_from_slice(&row[k_at..k_at + *width]);
            v[slot].extend_from_slice(&row[v_at..v_at + *width]);
        }
    }

    /// The cached keys and values each row attends to: its sequence up to and including its own position.
    pub fn sequences(&self, rows: &DecodeRows) -> Vec<rustspeed_kernels::attention_decode::CachedSequence<'_, E>> {
        let LayerCache::Kv { k, v, .. } = self else { unreachable!("a transformer block's cache holds keys") };
        let seq = |(&slot, &position): (&usize, &usize)| rustspeed_kernels::attention_decode::CachedSequence {
            k: &k[slot],
            v: &v[slot],
            len: position + 1,
        };
        rows.slots.iter().zip(rows.positions).map(seq).collect()
    }
}

/// Elements of activations one layer holds for a micro-batch ([`Layer::activation_floats`]), split as activation
/// checkpointing treats them: `saved`, what the layer keeps from its forward for its backward (freed after the
/// forward and recomputed under checkpointing), and `output`, its output (kept either way: the next layer's input).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivationFloats {
    pub saved: usize,
    pub output: usize,
}

impl ActivationFloats {
    /// Everything the layer holds without checkpointing.
    pub fn total(&self) -> usize {
        self.saved + self.output
    }
}

/// How one backward writes each parameter's gradient: [`Contents::Accumulate`] adds into it,
/// [`Contents::Overwrite`] writes all of it (the buffer holds nothing of value; only for the first writer of that
/// gradient in the backward).
#[derive(Clone, Debug, PartialEq)]
pub struct GradWrites(Vec<Contents>);

impl GradWrites {
    /// Every one of `count` parameters written the same way.
    pub fn all(contents: Contents, count: usize) -> Self {
        GradWrites(vec![contents; count])
    }

    /// How each writer of a backward that starts the gradients writes them: `writers` in the order the backward
    /// runs them, each the parameters it writes; a parameter's first writer overwrites it, later ones (a tied
    /// parameter's) add. One [`GradWrites`] per writer, in `writers` order.
    pub fn starting(count: usize, writers: &[&[ParamId]]) -> Vec<Self> {
        let mut written = vec![false; count];
        let mut all = Vec::with_capacity(writers.len());
        for ids in writers {
            let mut writes = GradWrites::all(Contents::Accumulate, count);
            for &ParamId(i) in *ids {
                if !std::mem::replace(&mut written[i], true) {
                    writes.0[i] = Contents::Overwrite;
                }
            }
            all.push(writes);
        }
        all
    }

    /// How `id`'s gradient is written.
    pub fn of(&self, id: ParamId) -> Contents {
        self.0[id.0]
    }
}

/// Temporaries of the layers' backward passes, one set shared by all layers (a layer may resize them): `stored`
/// for intermediate gradients, stored as the model's element type like every gradient; `wide` for fp32 kernel
/// workspaces (e.g. attention's `dA`).
#[derive(Default)]
pub struct Scratch<E> {
    pub stored: Vec<E>,
    pub wide: Vec<f32>,
}

/// Sets `buf` to `len` zeros, reusing its allocation.
pub(crate) fn zeroed<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    buf.clear();
    buf.resize(len, T::default());
    buf
}

/// Resizes `buf` to `len` without caring about its contents (the caller overwrites them).
pub(crate) fn sized<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    buf.resize(len, T::default());
    &mut buf[..len]
}
