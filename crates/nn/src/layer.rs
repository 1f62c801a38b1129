//! The layer abstraction: a model is an ordered list of layers, each reading the previous layer's output
//! (`[B, T, width]`, fp32) and the batch's token ids, over parameters that live in the model's flat buffer.

use crate::param::{ParamId, ParamLayout};

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
/// Contract: `forward` overwrites `output` (`[B, T, output_width]`); `backward` *adds* into `dinput` and into its
/// parameters' gradients, so gradient accumulation and shared (tied) parameters need no extra passes. `backward`
/// uses the activations of the latest `forward`.
pub trait Layer: Send {
    /// A short name for reports, e.g. `h.3` or `lstm.l2`.
    fn name(&self) -> &str;

    /// The parameters this layer declared (and owns), in layout order. A tied parameter belongs to the layer that
    /// declared it.
    fn params(&self) -> &[ParamId];

    /// Width of one position of this layer's output.
    fn output_width(&self) -> usize;

    /// Computes `output` from `input` (the previous layer's output; empty for the first layer) and the batch.
    fn forward(&mut self, layout: &ParamLayout, params: &[f32], batch: &Batch, input: &[f32], output: &mut [f32]);

    /// Adds the gradients of `dot(output, dout)` into `dinput` and into the layer's slots of `grads`. `input` and
    /// `output` are those of the latest `forward`. `scratch` is a buffer shared by all layers for temporaries; a
    /// layer may resize it.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &[f32],
        grads: &mut [f32],
        batch: &Batch,
        input: &[f32],
        output: &[f32],
        dout: &[f32],
        dinput: &mut [f32],
        scratch: &mut Vec<f32>,
    );
}

/// Sets `buf` to `len` zeros, reusing its allocation.
pub(crate) fn zeroed(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

/// Resizes `buf` to `len` without caring about its contents (the caller overwrites them).
pub(crate) fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}
