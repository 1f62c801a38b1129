//! The output head fused with the loss: `logits = x Wᵀ (+ bias)`, then softmax cross-entropy against the
//! targets (mean over counted tokens). The weight is `[V, C]` (nn.Linear orientation), either the head's own or
//! tied to the token embedding (GPT-2).

use crate::layer::GradWrites;
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::cast::{load, store, store_opt, Contents, Element};
use rustspeed_kernels::matmul::{linear_backward, linear_forward, WeightLayout};
use rustspeed_kernels::xent::{softmax_xent_backward_in_place, softmax_xent_forward, XentLoss};

/// What the head's `[N, V]` buffer holds after the latest forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOutput {
    /// Nothing usable: no forward yet, or the backward turned the probabilities into the logits' gradient.
    Empty,
    /// Logits (a forward without targets).
    Logits,
    /// Softmax probabilities (a forward with targets, ready for the backward).
    Probs,
}

pub struct LmHead<E: Element = f32> {
    weight: ParamId,
    bias: Option<ParamId>,
    /// Parameters declared by the head (none when the weight is tied).
    own: Vec<ParamId>,
    width: usize,
    vocab_size: usize,
    ignore_index: Option<u32>,
    /// `[N, V]`: logits, then probabilities, then the logits' gradient — fp32 in every precision: the loss and its
    /// gradient are computed in fp32, as autocast does for cross-entropy (in 16 bits a probability near 1 would
    /// round to 1 and its `p - 1` gradient to 0).
    out: Vec<f32>,
    marker: std::marker::PhantomData<E>,
    losses: Vec<f32>,
    state: HeadOutput,
}

impl<E: Element> LmHead<E> {
    /// A head with its own weight `{prefix}.weight` `[V, C]` and bias `{prefix}.bias` `[V]`, nn.Linear's init
    /// `U(-1/√C, 1/√C)` (the seed's `nn.Linear(hidden, vocab)`).
    pub fn linear(layout: &mut ParamLayout, prefix: &str, width: usize, vocab_size: usize) -> Self {
        let init = Init::Uniform { bound: 1.0 / (width as f32).sqrt() };
        let weight = layout.push(ParamSpec::new(format!("{prefix}.weight"), &[vocab_size, width], init));
        let bias = layout.push(ParamSpec::new(format!("{prefix}.bias"), &[vocab_size], init));
        Self::build(weight, Some(bias), vec![weight, bias], width, vocab_size)
    }

    /// A bias-free head with its own weight `{prefix}.weight` `[V, C]`, `N(0, std)` (Llama's untied `lm_head`).
    pub fn projection(layout: &mut ParamLayout, prefix: &str, width: usize, vocab_size: usize, std: f32) -> Self {
        let spec = ParamSpec::new(format!("{prefix}.weight"), &[vocab_size, width], Init::Normal { std });
        let weight = layout.push(spec);
        Self::build(weight, None, vec![weight], width, vocab_size)
    }

    /// A bias-free head reading the `[V, C]` token embedding `weight` (GPT-2's weight tying).
    pub fn tied(weight: ParamId, width: usize, vocab_size: usize) -> Self {
        Self::build(weight, None, Vec::new(), width, vocab_size)
    }

    fn build(weight: ParamId, bias: Option<ParamId>, own: Vec<ParamId>, width: usize, vocab_size: usize) -> Self {
        LmHead {
            weight,
            bias,
            own,
            width,
            vocab_size,
            ignore_index: None,
            out: Vec::new(),
            marker: std::marker::PhantomData,
            losses: Vec::new(),
            state: HeadOutput::Empty,
        }
    }

    /// Targets equal to `ignore_index` do not count in the loss (PyTorch's `ignore_index`).
    pub fn set_ignore_index(&mut self, ignore_index: Option<u32>) {
        self.ignore_index = ignore_index;
    }

    pub fn ignore_index(&self) -> Option<u32> {
        self.ignore_index
    }

    /// Bytes of the head's buffers: the `[N, V]` logits (or probabilities, or their gradient) and the row losses.
    pub fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(self.out.as_slice()) + std::mem::size_of_val(self.losses.as_slice())
    }

    /// Training FLOPs per token of the head's product `x Wᵀ`: `V·C` multiply-adds forward, `6·V·C` for training
    /// (the bias's adds, the softmax and the loss left out). A head tied to the token embedding counts here what
    /// nanoGPT's `6·N` counts for `wte`.
    pub fn flops_per_token(&self) -> f64 {
        6.0 * (self.vocab_size * self.width) as f64
    }

    /// Floats the head's activations count for `b` sequences of `t` tokens: the `[N, V]` logits and their
    /// gradient, fp32 in every precision (`2·N·V`). The head computes the gradient in place of the
    /// probabilities, so its buffers ([`LmHead::saved_bytes`]) hold `N·V` of them, plus the `N` row losses.
    pub fn activation_floats(&self, b: usize, t: usize) -> usize {
        2 * b * t * self.vocab_size
    }

    /// The weight the head reads: its own, or the tied token embedding.
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    pub fn params(&self) -> &[ParamId] {
        &self.own
    }

    /// The parameters whose gradients the backward writes: the weight (tied or not) and the bias.
    pub fn written(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    pub fn state(&self) -> HeadOutput {
        self.state
    }

    /// The `[N, V]` buffer: logits or probabilities, see [`LmHead::state`].
    pub fn output(&self) -> &[f32] {
        &self.out
    }

    /// Logits of the `n` rows of `x[N, C]`; with `targets`, turns them into probabilities and returns the loss.
    pub fn forward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        x: &[E],
        n: usize,
        targets: Option<&[u32]>,
    ) -> Option<XentLoss> {
        let v = self.vocab_size;
        self.out.resize(n * v, 0.0);
        // 16-bit inputs are widened (exactly); the product and the loss run in fp32.
        let bias = self.bias.map(|b| load(layout.view(params, b)));
        let (x, weight) = (load(x), load(layout.view(params, self.weight)));
        linear_forward(&mut self.out, &x, &weight, bias.as_deref(), WeightLayout::OutIn, n, self.width, v);
        self.state = HeadOutput::Logits;
        let targets = targets?;
        self.losses.resize(n, 0.0);
        let loss = softmax_xent_forward(&mut self.out, &mut self.losses, targets, self.ignore_index, n, v);
        self.state = HeadOutput::Probs;
        Some(loss)
    }

    /// Gradient of `dloss · loss` into `dx[N, C]` (added) and the head's weight (and bias) gradients (written as
    /// `writes` says for the weight).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        x: &[E],
        targets: &[u32],
        loss: XentLoss,
        dloss: f32,
        dx: &mut [E],
    ) {
        debug_assert_eq!(
            self.state,
            HeadOutput::Probs,
            "head backward needs the probabilities of a forward with targets"
        );
        let (n, v) = (targets.len(), self.vocab_size);
        // The probabilities become the logits' gradient in place; the buffer holds neither afterwards.
        softmax_xent_backward_in_place(&mut self.out, targets, self.ignore_index, dloss, loss.count, n, v);
        self.state = HeadOutput::Empty;
        let (x, weight) = (load(x), load(layout.view(params, self.weight)));
        let (dw, db) = match self.bias {
            Some(b) => {
                let [dw, db] = layout.views_mut(grads, [self.weight, b]);
                (dw, Some(db))
            }
            None => (layout.view_mut(grads, self.weight), None),
        };
        // The fp32 logits' gradient against widened inputs; the 16-bit gradients are summed in fp32, rounded once.
        let (width, dlogits, mode) = (self.width, &self.out, writes.of(self.weight));
        store(dx, Contents::Accumulate, |dx| {
            store(dw, mode, |dw| {
                store_opt(db, mode, |db| {
                    linear_backward(Some(dx), dw, db, mode, dlogits, &x, &weight, WeightLayout::OutIn, n, width, v)
                })
            })
        });
    }
}
