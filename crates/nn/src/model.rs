//! A model: an ordered list of layers and a fused head + loss, over one [`ParamLayout`].
//!
//! The model owns activations (reused across steps), never parameters or gradients: those are flat buffers the
//! caller (the engine) owns, so that it alone decides where they live (sharded, 16-bit, on another rank).

use crate::error::ModelError;
use crate::layer::{zeroed, ActivationFloats, Batch, GradWrites, Layer, Scratch};
use crate::layers::{HeadOutput, LmHead};
use crate::param::{ParamId, ParamLayout, Window, WindowMut};
use rustspeed_kernels::cast::{first_non_finite, Contents, Element};
use rustspeed_kernels::xent::XentLoss;
use std::ops::Range;

/// What the generation path borrows of a model at once: the layout, the layers, the head.
pub(crate) type DecodeParts<'a, E> = (&'a ParamLayout, &'a mut [Box<dyn Layer<E>>], &'a mut LmHead<E>);

/// Where the model is in its forward/backward cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No forward since construction, or the last backward consumed it.
    Idle,
    /// A forward without targets ran: logits are available, there is nothing to differentiate.
    Logits,
    /// A forward with targets ran: the loss is known and `backward` may run once.
    Loss,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Idle => "idle (no forward with targets since the last backward)",
            Phase::Logits => "holding logits of a forward without targets",
            Phase::Loss => "holding a loss not yet differentiated",
        }
    }
}

/// A model whose parameters, activations and gradients are stored as `E` (fp32, fp16 or bf16); its kernels
/// compute in fp32 whatever `E` is.
pub struct Model<E: Element = f32> {
    layout: ParamLayout,
    layers: Vec<Box<dyn Layer<E>>>,
    head: LmHead<E>,
    vocab_size: usize,
    /// Longest sequence the model accepts (`None`: any length).
    max_seq_len: Option<usize>,
    /// `acts[i]`: output of layer `i`; `dacts[i]`: its gradient.
    acts: Vec<Vec<E>>,
    dacts: Vec<Vec<E>>,
    scratch: Scratch<E>,
    /// How a backward writes each gradient when it adds to the buffer; and when it starts it, for the head and
    /// then each layer (in forward order): each gradient's first writer in the backward overwrites it.
    adding: GradWrites,
    starting_head: GradWrites,
    starting_layers: Vec<GradWrites>,
    /// Parameter groups (ZeRO-3's unit of gathering, FSDP2's parameter group): each layer's parameters, then the
    /// head's own; contiguous spans that tile the layout in order.
    groups: Vec<Range<usize>>,
    /// The group each layer reads (`None` for a layer without parameters), and the head's (its own, or the group
    /// that holds its tied weight).
    layer_groups: Vec<Option<usize>>,
    head_group: usize,
    /// Activation checkpointing: each layer but the last frees what it saved after its forward and recomputes it
    /// before its backward, so that only the layers' inputs (the outputs in `acts`) live between the passes. The
    /// last layer's backward comes right after the head's, so releasing it would gain nothing.
    checkpointing: bool,
    /// Which layers released their saved activations in the latest forward (and recompute them in the backward).
    released: Vec<bool>,
    /// The most activation bytes held at once since [`Model::take_activation_peak`].
    activation_peak: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    shape: (usize, usize),
    loss: Option<XentLoss>,
    phase: Phase,
}

impl<E: Element> Model<E> {
    /// Assembles a model from layers declared in `layout`. `max_seq_len` bounds `T` (GPT's context).
    pub fn new(
        layout: ParamLayout,
        layers: Vec<Box<dyn Layer<E>>>,
        head: LmHead<E>,
        vocab_size: usize,
        max_seq_len: Option<usize>,
    ) -> Self {
        assert!(!layers.is_empty(), "a model needs at least one layer before its head");
        let n = layers.len();
        let count = layout.entries().len();
        let head_writes = head.written();
        let writers: Vec<&[ParamId]> =
            std::iter::once(head_writes.as_slice()).chain(layers.iter().rev().map(|l| l.params())).collect();
        let mut starting = GradWrites::starting(count, &writers);
        let starting_head = starting.remove(0);
        starting.reverse();
        let mut groups = Vec::new();
        let layer_groups: Vec<Option<usize>> = layers
            .iter()
            .map(|l| {
                span(&layout, l.params()).map(|r| {
                    groups.push(r);
                    groups.len() - 1
                })
            })
            .collect();
        if let Some(r) = span(&layout, head.params()) {
            groups.push(r);
        }
        let mut end = 0;
        for g in &groups {
            assert_eq!(g.start, end, "parameter groups must tile the layout in order (a layer declared another's)");
            end = g.end;
        }
        assert_eq!(end, layout.numel(), "parameters declared outside every layer");
        let head_weight = layout.range(head.weight()).start;
        let head_group = groups.iter().position(|g| g.contains(&head_weight)).expect("the head's weight is declared");
        Model {
            layout,
            layers,
            head,
            vocab_size,
            max_seq_len,
            acts: vec![Vec::new(); n],
            dacts: vec![Vec::new(); n],
            scratch: Scratch::default(),
            adding: GradWrites::all(Contents::Accumulate, count),
            starting_head,
            starting_layers: starting,
            groups,
            layer_groups,
            head_group,
            checkpointing: false,
            released: vec![false; n],
            activation_peak: 0,
            tokens: Vec::new(),
            targets: Vec::new(),
            shape: (0, 0),
            loss: None,
            phase: Phase::Idle,
        }
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub fn layers(&self) -> &[Box<dyn Layer<E>>] {
        &self.layers
    }

    pub fn head(&self) -> &LmHead<E> {
        &self.head
    }

    pub fn head_mut(&mut self) -> &mut LmHead<E> {
        &mut self.head
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn max_seq_len(&self) -> Option<usize> {
        self.max_seq_len
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Turns activation checkpointing on or off (DeepSpeed's `activation_checkpointing`): losses and gradients
    /// are the same bit for bit; the forward's saved activations shrink to each layer's input.
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    pub fn activation_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// The most bytes of activations (layer outputs and their gradients, what layers saved for their backward,
    /// the head's buffers) held at once since the last call, which starts a new count.
    pub fn take_activation_peak(&mut self) -> usize {
        std::mem::take(&mut self.activation_peak)
    }

    /// Training FLOPs per token at sequence length `t`: the layers' [`Layer::flops_per_token`] and the head's
    /// [`LmHead::flops_per_token`]. For GPT this is nanoGPT's `estimate_mfu` count (PaLM, appendix B),
    /// `6·N + 12·L·T·C` with `N` the parameters without the position embedding; for the LSTM the gates' and the
    /// head's products, `3·(Σ_l 8H·(C_l + H) + 2·V·H)`.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        self.layers.iter().map(|l| l.flops_per_token(t)).sum::<f64>() + self.head.flops_per_token()
    }

    /// The activations of one micro-batch of `b` sequences of `t` tokens, from the layers'
    /// [`Layer::activation_floats`] and the head's [`LmHead::activation_floats`]: every layer's output, plus what
    /// the layers save for their backward — all of it without checkpointing; with `checkpointing`, the most one
    /// layer saves, since the model holds one layer's saved activations at a time (each layer but the last frees
    /// them after its forward and recomputes them right before its backward; the last keeps them from its
    /// forward through its backward and frees them then, before the next is recomputed).
    ///
    /// This is an estimate, not what [`Model::take_activation_peak`] measures over training steps. The
    /// measurement also counts each output's gradient (the model keeps every layer's `dout` buffer from the
    /// first backward on, another `Σ output` elements) and the head's `N` row losses, but only `N·V` floats of
    /// head buffer (the logits' gradient overwrites the probabilities in place, where the estimate counts
    /// `2·N·V`); and it counts LayerNorm statistics at 4 bytes in every precision. In fp32, from the second step
    /// on (or the first with checkpointing): measured = `4·(layers + Σ output + N·V + N)` bytes.
    pub fn activation_estimate(&self, b: usize, t: usize, checkpointing: bool) -> ActivationEstimate {
        let each: Vec<ActivationFloats> = self.layers.iter().map(|l| l.activation_floats(b, t)).collect();
        let outputs: usize = each.iter().map(|a| a.output).sum();
        let saved = each.iter().map(|a| a.saved);
        let saved = if checkpointing { saved.max().unwrap_or(0) } else { saved.sum() };
        ActivationEstimate { layers: outputs + saved, head: self.head.activation_floats(b, t) }
    }

    fn note_activations(&mut self) {
        let held = held_activations(&self.acts, &self.dacts, &self.layers, &self.head);
        self.activation_peak = self.activation_peak.max(held);
    }

    /// The parameter groups: spans of the layout, each gathered as one unit under ZeRO stage 3.
    pub fn groups(&self) -> &[Range<usize>] {
        &self.groups
    }

    /// The groups in the order a forward reads them, then the order a backward does (a tied group appears
    /// twice in each): the trace a gatherer prefetches along.
    pub fn group_trace(&self) -> (Vec<usize>, Vec<usize>) {
        let forward: Vec<usize> =
            self.layer_groups.iter().flatten().copied().chain(std::iter::once(self.head_group)).collect();
        let backward = forward.iter().rev().copied().collect();
        (forward, backward)
    }

    /// The layout, the layers and the head at once, for the generation path (`decode.rs`).
    pub(crate) fn decode_parts(&mut self) -> DecodeParts<'_, E> {
        (&self.layout, &mut self.layers, &mut self.head)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel()
    }

    fn check_ids(
        &self,
        what: &'static str,
        ids: &[u32],
        b: usize,
        t: usize,
        ignore: Option<u32>,
    ) -> Result<(), ModelError> {
        if ids.len() != b * t {
            return Err(ModelError::BatchShape { what, len: ids.len(), b, t });
        }
        match ids.iter().position(|&x| x as usize >= self.vocab_size && Some(x) != ignore) {
            Some(position) => {
                Err(ModelError::TokenOutOfRange { what, position, token: ids[position], vocab_size: self.vocab_size })
            }
            None => Ok(()),
        }
    }

    pub(crate) fn check_buffer(&self, what: &'static str, buf: &[E]) -> Result<(), ModelError> {
        match buf.len() == self.layout.numel() {
            true => Ok(()),
            false => Err(ModelError::BufferSize { what, len: buf.len(), expected: self.layout.numel() }),
        }
    }

    /// Runs the layers on `tokens[B, T]`. With `targets[B, T]` returns the mean cross-entropy and prepares a
    /// backward; without, leaves the logits in [`Model::logits`].
    pub fn forward(
        &mut self,
        params: &[E],
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<XentLoss>, ModelError> {
        self.check_buffer("parameter", params)?;
        self.forward_from(&mut Whole(params), tokens, targets, b, t)
    }

    /// [`Model::forward`] with each group's parameters from `source`, asked for before and released after each
    /// layer that reads them.
    pub fn forward_from<S: ParamSource<E>>(
        &mut self,
        source: &mut S,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<XentLoss>, S::Error> {
        self.check_ids("tokens", tokens, b, t, None)?;
        if let Some(targets) = targets {
            self.check_ids("targets", targets, b, t, self.head.ignore_index())?;
        }
        if let Some(max) = self.max_seq_len.filter(|&max| t > max) {
            return Err(ModelError::SequenceTooLong { t, block_size: max }.into());
        }
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        self.targets.clear();
        self.targets.extend_from_slice(targets.unwrap_or(&[]));
        self.shape = (b, t);
        self.phase = Phase::Idle;
        let batch = Batch { tokens, b, t };
        for i in 0..self.layers.len() {
            let (before, rest) = self.acts.split_at_mut(i);
            let input = before.last().map_or(&[][..], |v| v.as_slice());
            let out_len = batch.rows() * self.layers[i].output_width();
            rest[0].resize(out_len, E::default());
            let group = self.layer_groups[i];
            if let Some(g) = group {
                source.before(g, Pass::Forward)?;
            }
            let params = group.map_or(Window { base: 0, data: &[] }, |g| source.params(g));
            self.layers[i].forward(&self.layout, &params, &batch, input, &mut rest[0]);
            if let Some(g) = group {
                source.after(g, Pass::Forward, false)?;
            }
            self.note_activations();
            self.released[i] = self.checkpointing && i + 1 < self.layers.len() && self.layers[i].saved_bytes() > 0;
            if self.released[i] {
                self.layers[i].release_saved();
            }
        }
        let x = self.acts.last().map_or(&[][..], |v| v.as_slice());
        source.before(self.head_group, Pass::Forward)?;
        self.loss = self.head.forward(&self.layout, &source.params(self.head_group), x, batch.rows(), targets);
        source.after(self.head_group, Pass::Forward, false)?;
        self.note_activations();
        self.phase = if self.loss.is_some() { Phase::Loss } else { Phase::Logits };
        Ok(self.loss)
    }

    /// Adds `dloss · ∂loss/∂params` into `grads` for the latest forward with targets (`dloss` is 1 for the plain
    /// gradient; the engine passes `1/GAS` or the loss scale).
    pub fn backward(&mut self, params: &[E], grads: &mut [E], dloss: f32) -> Result<(), ModelError> {
        self.backward_with(params, grads, dloss, Contents::Accumulate, &mut |_, _| {})
    }

    /// [`Model::backward`] into `grads` as `contents` says: [`Contents::Accumulate`] adds to it,
    /// [`Contents::Overwrite`] overwrites every gradient (what `grads` held does not matter: the first micro-step of
    /// an accumulation window needs no zeroed buffer). Hands each piece of `grads` to `on_ready(offset, piece)` as
    /// soon as no later layer writes to it: layers run in reverse layout order, so after layer `i` everything from
    /// its first parameter to the previous piece is final. The pieces are disjoint and cover `grads` once (the part before the
    /// first layer's parameters, if any, comes last). This is what lets the engine reduce a layer's gradients
    /// on another thread while the backward of the layers before it runs (DeepSpeed's `overlap_comm`).
    pub fn backward_with<'g>(
        &mut self,
        params: &[E],
        grads: &'g mut [E],
        dloss: f32,
        contents: Contents,
        on_ready: &mut dyn FnMut(usize, &'g mut [E]),
    ) -> Result<(), ModelError> {
        self.check_buffer("parameter", params)?;
        self.check_buffer("gradient", grads)?;
        let loss = match (self.phase, self.loss) {
            (Phase::Loss, Some(loss)) => loss,
            (phase, _) => return Err(ModelError::Phase { called: "backward", state: phase.describe() }),
        };
        let (b, t) = self.shape;
        let batch = Batch { tokens: &self.tokens, b, t };
        let n = batch.rows();
        for (dact, layer) in self.dacts.iter_mut().zip(&self.layers) {
            zeroed(dact, n * layer.output_width());
        }
        let last = self.layers.len() - 1;
        // `pending` is the part of `grads` still being written: always a prefix, since later layers' (and the
        // head's own) parameters come later in the layout.
        let mut pending: &'g mut [E] = grads;
        let layout = &self.layout;
        let writes = |layer: Option<usize>| match (contents, layer) {
            (Contents::Accumulate, _) => &self.adding,
            (Contents::Overwrite, None) => &self.starting_head,
            (Contents::Overwrite, Some(i)) => &self.starting_layers[i],
        };
        let release = |pending: &mut &'g mut [E], from: usize, on_ready: &mut dyn FnMut(usize, &'g mut [E])| {
            if from < pending.len() {
                let (rest, ready) = std::mem::take(pending).split_at_mut(from);
                *pending = rest;
                on_ready(from, ready);
            }
        };
        let params = Window::whole(params);
        self.head.backward(
            layout,
            &params,
            &mut WindowMut::whole(&mut *pending),
            writes(None),
            &self.acts[last],
            &self.targets,
            loss,
            dloss,
            &mut self.dacts[last],
        );
        let first_offset = |ids: &[crate::ParamId]| ids.iter().map(|&id| layout.entry(id).offset).min();
        if let Some(from) = first_offset(self.head.params()) {
            release(&mut pending, from, on_ready);
        }
        for i in (0..self.layers.len()).rev() {
            if self.released[i] {
                let peak = &mut self.activation_peak;
                recompute(&mut self.layers, i, layout, &params, &batch, &mut self.acts, &self.dacts, &self.head, peak);
            }
            let (dbefore, drest) = self.dacts.split_at_mut(i);
            let dinput = dbefore.last_mut().map_or(&mut [][..], |v| v.as_mut_slice());
            let input = if i > 0 { self.acts[i - 1].as_slice() } else { &[] };
            let layer = &mut self.layers[i];
            let end = layer.params().iter().map(|&id| layout.range(id).end).max().unwrap_or(0);
            assert!(end <= pending.len(), "layer {} declares parameters after a later layer's", layer.name());
            let (output, dout) = (&self.acts[i], &drest[0]);
            let writes = writes(Some(i));
            let grads = &mut WindowMut::whole(&mut *pending);
            layer.backward(layout, &params, grads, writes, &batch, input, output, dout, dinput, &mut self.scratch);
            // What the backward used is dead now; without this the unreleased last layer would hold its
            // activations through the rest of the backward.
            if self.checkpointing {
                layer.release_saved();
            }
            if let Some(from) = first_offset(layer.params()) {
                release(&mut pending, from, on_ready);
            }
        }
        release(&mut pending, 0, on_ready);
        self.phase = Phase::Idle;
        Ok(())
    }

    /// The backward of the latest forward with targets, with each group's parameters and gradient buffer from
    /// `source` (ZeRO stages 2 and 3: a gradient buffer per group; stage 3 also gathers the parameters). The backward starts the
    /// gradients: each group's buffer is handed out holding anything, and its first writer overwrites it. After
    /// the last layer that writes a group's gradients, [`ParamSource::after`] says they are final.
    pub fn backward_from<S: ParamSource<E>>(&mut self, source: &mut S, dloss: f32) -> Result<(), S::Error> {
        let loss = match (self.phase, self.loss) {
            (Phase::Loss, Some(loss)) => loss,
            (phase, _) => return Err(ModelError::Phase { called: "backward", state: phase.describe() }.into()),
        };
        let (b, t) = self.shape;
        let batch = Batch { tokens: &self.tokens, b, t };
        let n = batch.rows();
        for (dact, layer) in self.dacts.iter_mut().zip(&self.layers) {
            zeroed(dact, n * layer.output_width());
        }
        let (_, trace) = self.group_trace();
        // A group's gradients are final after its last use in the backward.
        let is_last = |k: usize| !trace[k + 1..].contains(&trace[k]);
        let last = self.layers.len() - 1;
        let layout = &self.layout;
        let g = self.head_group;
        source.before(g, Pass::Backward)?;
        let (params, mut grads) = source.params_and_grads(g);
        let (x, dx) = (&self.acts[last], &mut self.dacts[last]);
        self.head.backward(layout, &params, &mut grads, &self.starting_head, x, &self.targets, loss, dloss, dx);
        source.after(g, Pass::Backward, is_last(0))?;
        let mut k = 1;
        for i in (0..self.layers.len()).rev() {
            let group = self.layer_groups[i];
            if let Some(g) = group {
                source.before(g, Pass::Backward)?;
            }
            if self.released[i] {
                let params = group.map_or(Window { base: 0, data: &[] }, |g| source.params(g));
                let peak = &mut self.activation_peak;
                recompute(&mut self.layers, i, layout, &params, &batch, &mut self.acts, &self.dacts, &self.head, peak);
            }
            let (dbefore, drest) = self.dacts.split_at_mut(i);
            let dinput = dbefore.last_mut().map_or(&mut [][..], |v| v.as_mut_slice());
            let input = if i > 0 { self.acts[i - 1].as_slice() } else { &[] };
            let (output, dout, writes) = (&self.acts[i], &drest[0], &self.starting_layers[i]);
            let layer = &mut self.layers[i];
            // A layer without parameters reads and writes empty windows.
            let (params, mut grads) = match group {
                Some(g) => source.params_and_grads(g),
                None => (Window { base: 0, data: &[][..] }, WindowMut { base: 0, data: &mut [][..] }),
            };
            layer.backward(layout, &params, &mut grads, writes, &batch, input, output, dout, dinput, &mut self.scratch);
            if let Some(g) = group {
                source.after(g, Pass::Backward, is_last(k))?;
                k += 1;
            }
            if self.checkpointing {
                self.layers[i].release_saved();
            }
        }
        self.phase = Phase::Idle;
        Ok(())
    }

    /// Logits `[B, T, V]` of the latest forward without targets.
    pub fn logits(&self) -> Option<&[f32]> {
        (self.head.state() == HeadOutput::Logits).then(|| self.head.output())
    }

    /// The first layer (in forward order) whose output of the latest forward holds an inf or NaN, if any: where a
    /// non-finite loss came from. `"head"` when every layer's output is finite but the logits are not.
    pub fn first_non_finite_output(&self) -> Option<&str> {
        let layer = self.layers.iter().zip(&self.acts).find(|(_, act)| first_non_finite(act).is_some());
        match layer {
            Some((layer, _)) => Some(layer.name()),
            None => first_non_finite(self.head.output()).map(|_| "head"),
        }
    }
}

/// Elements of activations a model holds for one micro-batch ([`Model::activation_estimate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivationEstimate {
    /// The layers' outputs and what they save for their backward, stored as the model's element type (the
    /// LayerNorm statistics, fp32 in every precision, are counted here too).
    pub layers: usize,
    /// The head's logits and their gradient, fp32 in every precision.
    pub head: usize,
}

impl ActivationEstimate {
    /// Bytes, with the layers' elements stored in `element_bytes` each and the head's in 4.
    pub fn bytes(&self, element_bytes: usize) -> usize {
        self.layers * element_bytes + self.head * std::mem::size_of::<f32>()
    }
}

/// Which pass runs a layer, for [`ParamSource`]'s hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

/// Where a model's parameters (and, in a grouped backward, gradients) live while it runs: the whole flat buffers,
/// or one gathered group at a time (ZeRO stage 3). The model calls `before` ahead of every layer that reads a
/// group and `after` once it ran, so gathering, prefetching and release live in the source alone.
pub trait ParamSource<E: Element> {
    type Error: From<ModelError>;

    /// A layer reading `group` is about to run in `pass`: make its parameters resident.
    fn before(&mut self, group: usize, pass: Pass) -> Result<(), Self::Error>;

    /// The resident parameters of `group` (between `before` and `after`).
    fn params(&self, group: usize) -> Window<'_, E>;

    /// `group`'s parameters and gradient buffer for a backward (between `before` and `after`).
    fn params_and_grads(&mut self, group: usize) -> (Window<'_, E>, WindowMut<'_, E>);

    /// A layer reading `group` ran in `pass`; in a backward, `grads_final` says no later layer writes the
    /// group's gradients.
    fn after(&mut self, group: usize, pass: Pass, grads_final: bool) -> Result<(), Self::Error>;
}

/// The whole flat parameter buffer as a [`ParamSource`] (forward only).
struct Whole<'a, E>(&'a [E]);

impl<E: Element> ParamSource<E> for Whole<'_, E> {
    type Error = ModelError;

    fn before(&mut self, _: usize, _: Pass) -> Result<(), ModelError> {
        Ok(())
    }

    fn params(&self, _: usize) -> Window<'_, E> {
        Window::whole(self.0)
    }

    fn params_and_grads(&mut self, _: usize) -> (Window<'_, E>, WindowMut<'_, E>) {
        unreachable!("the whole-buffer source serves forwards only; backward_with takes the gradient buffer")
    }

    fn after(&mut self, _: usize, _: Pass, _: bool) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Activation checkpointing: runs layer `i`'s forward again on its input (`acts[i - 1]`), which restores what it
/// released and rewrites its output `acts[i]` with the same values (the kernels are deterministic); `peak` takes
/// the activations held then, the backward's most.
#[allow(clippy::too_many_arguments)]
fn recompute<E: Element>(
    layers: &mut [Box<dyn Layer<E>>],
    i: usize,
    layout: &ParamLayout,
    params: &Window<'_, E>,
    batch: &Batch,
    acts: &mut [Vec<E>],
    dacts: &[Vec<E>],
    head: &LmHead<E>,
    peak: &mut usize,
) {
    let (before, rest) = acts.split_at_mut(i);
    let input = before.last().map_or(&[][..], |v| v.as_slice());
    layers[i].forward(layout, params, batch, input, &mut rest[0]);
    *peak = (*peak).max(held_activations(acts, dacts, layers, head));
}

/// Bytes of activations held: layer outputs and their gradients, what the layers saved, the head's buffers.
fn held_activations<E: Element>(
    acts: &[Vec<E>],
    dacts: &[Vec<E>],
    layers: &[Box<dyn Layer<E>>],
    head: &LmHead<E>,
) -> usize {
    acts.iter().chain(dacts).map(|a| std::mem::size_of_val(a.as_slice())).sum::<usize>()
        + layers.iter().map(|l| l.saved_bytes()).sum::<usize>()
        + head.saved_bytes()
}

/// The span of the layout that `ids` occupy (`None` without parameters); a layer's parameters are contiguous.
pub(crate) fn span(layout: &ParamLayout, ids: &[ParamId]) -> Option<Range<usize>> {
    let start = ids.iter().map(|&id| layout.range(id).start).min()?;
    let end = ids.iter().map(|&id| layout.range(id).end).max()?;
    let numel: usize = ids.iter().map(|&id| layout.range(id).len()).sum();
    assert_eq!(end - start, numel, "a layer's parameters must be contiguous in the layout");
    Some(start..end)
}
