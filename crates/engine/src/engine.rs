//! The engine: DeepSpeed's `forward` / `backward` / `step` contract over rustspeed's flat buffers.
//!
//! Counters follow DeepSpeed (§3.2 of the semantics reference): `micro_steps` +1 on every `step()`,
//! `global_steps` and `global_samples` on every accumulation boundary (applied or skipped), `skipped_steps` on
//! skipped ones; the loss is divided by `gradient_accumulation_steps` (and multiplied by the fp16 loss scale) in
//! `backward`; the LR schedule advances only on applied steps.
//!
//! `Engine<E>` stores the model copy (parameters, activations, gradients) as `E`: f32, or fp16/bf16 over fp32
//! master weights ([`crate::precision`]). The caller picks `E` from the config's [`crate::StorageType`].

use crate::backward::{Reduction, WholeBackward};
use crate::error::EngineError;
use crate::grads::{non_finite_flags, sum_of_squares, Gradients, Reduced};
use crate::memory::MemoryReport;
use crate::optimizer::Optimizer;
use crate::precision::{check_storage, MasterWeights, Precision};
use crate::reduce::gather_params;
use crate::setup::Setup;
use crate::sharded::{run_pass, Limits, Residency, Resident, ShardedParams};
use crate::zero::ZeroPlan;
use rustspeed_comm::{Communicator, ReduceOp, SingleRank};
use rustspeed_config::{BatchSizes, DeepSpeedConfig};
use rustspeed_kernels::cast::{cast_from_f32, cast_to_f32, Element};
use rustspeed_nn::{Model, Pass};
use rustspeed_optim::LrSchedule;
use std::borrow::Cow;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Where the engine is in the forward → backward → step cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnginePhase {
    /// Ready for a forward (start of a micro-step).
    Ready,
    /// A forward with targets ran; `backward` is next.
    Forwarded,
    /// Gradients of this micro-step are accumulated; `step` is next.
    Backwarded,
}

impl EnginePhase {
    fn describe(self) -> &'static str {
        match self {
            EnginePhase::Ready => "before forward()",
            EnginePhase::Forwarded => "after forward() without backward()",
            EnginePhase::Backwarded => "after backward() without step()",
        }
    }
}

/// DeepSpeed's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub micro_steps: u64,
    pub global_steps: u64,
    pub global_samples: u64,
    pub skipped_steps: u64,
}

/// What one optimizer step did; returned by the boundary `step()`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// `global_steps` after this step (1 for the first).
    pub step: u64,
    /// Mean loss over the global batch (all micro-batches of the window, on every rank).
    pub loss: f32,
    /// Global L2 norm of the (unscaled) gradients before clipping; inf or NaN on an fp16 overflow.
    pub grad_norm: f32,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Whether the step was skipped (fp16 overflow; never in fp32 or bf16).
    pub skipped: bool,
    /// The loss scale this step's gradients carried (1 without fp16 loss scaling).
    pub loss_scale: f64,
    /// On an fp16 overflow, the layer whose gradients held inf/NaN that the backward reached first.
    pub overflow_layer: Option<String>,
    /// Tokens processed in the window.
    pub tokens: u64,
    /// Wall time of the window: forward, backward, optimizer.
    pub timings: StepTimings,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub forward: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
}

impl StepTimings {
    pub fn total(&self) -> Duration {
        self.forward + self.backward + self.optimizer
    }
}

/// State of the current accumulation window.
#[derive(Clone, Debug, Default)]
struct Window {
    loss_sum: f64,
    tokens: u64,
    timings: StepTimings,
    last_loss: f32,
}

/// The parameters a rank holds, by ZeRO stage.
pub(crate) enum ModelCopy<E> {
    /// Stages 0-2: every parameter as `E`, padded to the plan's `W · S` (the model reads the first `P`), and the
    /// fp32 master weights of the owned range (separate in 16-bit storage only).
    Whole { params: Vec<E>, master: MasterWeights },
    /// Stage 3: the fp32 masters of this rank's shares of every group; groups are gathered per use.
    Sharded(ShardedParams<E>),
}

pub struct Engine<E: Element = f32> {
    pub(crate) model: Model<E>,
    pub(crate) copy: ModelCopy<E>,
    pub(crate) grads: Gradients<E>,
    /// The all-gather's buffer (stages 1, 2), reused across steps.
    gather_buffer: Vec<f32>,
    /// Stages 2 and 3: the most gathered parameters (stage 3) and per-group gradient buffers resident during any
    /// pass so far.
    residency: Residency,
    /// The most activation bytes the model held at once during any pass so far.
    activation_peak: usize,
    pub(crate) precision: Precision,
    /// Each layer's parameter ranges, in the order the backward reaches them (head first), to name the layer
    /// whose gradients went non-finite.
    grad_owners: Vec<(String, Vec<Range<usize>>)>,
    pub(crate) zero: ZeroPlan,
    pub(crate) comm: Box<dyn Communicator>,
    reduction: Reduction,
    pub(crate) optimizer: Optimizer,
    pub(crate) schedule: LrSchedule,
    pub(crate) batch: BatchSizes,
    pub(crate) gradient_clipping: f64,
    pub(crate) counters: Counters,
    pub(crate) config: DeepSpeedConfig,
    phase: EnginePhase,
    window: Window,
}

/// DeepSpeed's epsilon in the clipping coefficient `clip / (‖g‖ + 1e-6)`.
const CLIP_EPS: f64 = 1e-6;

impl<E: Element> Engine<E> {
    /// Builds a single-rank engine for `model` with parameters `params` (fp32, its layout's size) from a
    /// DeepSpeed config; every choice (optimizer, schedule, precision, ZeRO stage) is made by [`Setup::choose`].
    pub fn new(model: Model<E>, params: Vec<f32>, config: DeepSpeedConfig) -> Result<Engine<E>, EngineError> {
        Self::with_communicator(model, params, config, Box::new(SingleRank))
    }

    /// Builds this rank's engine of a data-parallel group. Rank 0's parameters are broadcast to all ranks (as
    /// DeepSpeed does at initialization), so every rank starts from the same model. In 16-bit storage the model
    /// copy is rounded from `params` and the fp32 master weights are taken from that copy (DeepSpeed casts the
    /// module to 16 bits before its optimizer copies the weights to fp32).
    pub fn with_communicator(
        model: Model<E>,
        mut params: Vec<f32>,
        config: DeepSpeedConfig,
        comm: Box<dyn Communicator>,
    ) -> Result<Engine<E>, EngineError> {
        let numel = model.num_params();
        if params.len() != numel {
            return Err(EngineError::Config(format!("{} parameters given, the model has {numel}", params.len())));
        }
        let Setup { optimizer, schedule, batch, zero, precision, accumulate_in_fp32, activation_checkpointing } =
            Setup::choose(&config, model.layout(), model.groups(), comm.rank(), comm.world_size())?;
        let mut model = model;
        model.set_activation_checkpointing(activation_checkpointing);
        check_storage::<E>(&precision)?;
        comm.broadcast(&mut params, 0)?;
        let copy = match zero.shards_params() {
            true => ModelCopy::Sharded(ShardedParams::new(&zero, &params, Limits::of(&config.zero_optimization))),
            false => {
                params.resize(zero.padded(), 0.0);
                let mut copy = vec![E::default(); params.len()];
                cast_from_f32(&mut copy, &params);
                ModelCopy::Whole { master: MasterWeights::new(&copy[zero.owned()]), params: copy }
            }
        };
        drop(params);
        let reduction = Reduction {
            overlap: config.zero_optimization.overlap_comm(),
            bucket: config.zero_optimization.reduce_bucket_size as usize,
        };
        let grad_owners = grad_owners(&model);
        Ok(Engine {
            grads: Gradients::new(&zero, accumulate_in_fp32),
            copy,
            model,
            gather_buffer: Vec::new(),
            residency: Residency::default(),
            activation_peak: 0,
            precision,
            grad_owners,
            reduction,
            zero,
            comm,
            optimizer,
            schedule,
            batch,
            gradient_clipping: config.gradient_clipping,
            counters: Counters::default(),
            config,
            phase: EnginePhase::Ready,
            window: Window::default(),
        })
    }

    pub fn model(&self) -> &Model<E> {
        &self.model
    }

    /// The model copy of the parameters (`P` of them; the padding is not part of the model). At stage 3 a
    /// collective that gathers every group: every rank calls it.
    pub fn params(&self) -> Result<Cow<'_, [E]>, EngineError> {
        match &self.copy {
            ModelCopy::Whole { params, .. } => Ok(Cow::Borrowed(&params[..self.zero.numel])),
            ModelCopy::Sharded(sharded) => Ok(Cow::Owned(sharded.gather_all(&*self.comm, &self.zero)?)),
        }
    }

    /// The model copy's parameters as fp32 (exact), e.g. for sampling or saving (a collective at stage 3).
    pub fn params_f32(&self) -> Result<Vec<f32>, EngineError> {
        let mut wide = vec![0.0; self.zero.numel];
        cast_to_f32(&mut wide, &self.params()?);
        Ok(wide)
    }

    pub fn zero_plan(&self) -> &ZeroPlan {
        &self.zero
    }

    pub fn precision(&self) -> &Precision {
        &self.precision
    }

    /// Bytes this rank holds for parameters, gradients, master weights and optimizer state, read off its buffers.
    pub fn memory(&self) -> MemoryReport {
        let (e, f) = (std::mem::size_of::<E>(), std::mem::size_of::<f32>());
        let gradients = self.grads.bytes();
        // Stage 3: the persistent groups' whole copies, and the masters, which in fp32 are the parameters (as at
        // the other stages in fp32).
        let (parameters, master_weights) = match &self.copy {
            ModelCopy::Whole { params, master } => (params.len() * e, master.separate().len() * f),
            ModelCopy::Sharded(sharded) if E::IS_F32 => ((sharded.master.len() + sharded.persistent_len()) * f, 0),
            ModelCopy::Sharded(sharded) => (sharded.persistent_len() * e, sharded.master.len() * f),
        };
        MemoryReport {
            parameters,
            gradients,
            gradient_staging: self.residency.gradients * e,
            gathered_parameters: self.residency.gathered * e,
            master_weights,
            optimizer_state: self.optimizer.slots().map(|(_, s)| s.len()).sum::<usize>() * f,
            activations: self.activation_peak,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn batch_sizes(&self) -> BatchSizes {
        self.batch
    }

    pub fn config(&self) -> &DeepSpeedConfig {
        &self.config
    }

    pub fn phase(&self) -> EnginePhase {
        self.phase
    }

    /// The learning rate the next applied step will use.
    pub fn lr(&self) -> f64 {
        self.schedule.lr(self.optimizer.applied_steps() as i64 - 1, self.optimizer.base_lr())
    }

    /// `(micro_steps + 1) % GAS == 0`, as DeepSpeed.
    pub fn is_gradient_accumulation_boundary(&self) -> bool {
        (self.counters.micro_steps + 1).is_multiple_of(self.batch.gradient_accumulation_steps as u64)
    }

    pub(crate) fn expect_phase(
        &self,
        called: &'static str,
        want: EnginePhase,
        expected: &'static str,
    ) -> Result<(), EngineError> {
        match self.phase == want {
            true => Ok(()),
            false => Err(EngineError::Phase { called, expected, state: self.phase.describe() }),
        }
    }

    /// Forward of one micro-batch `tokens[B, T]` → mean loss against `targets[B, T]`. A non-finite loss is an
    /// error naming the first layer whose output went non-finite, except in fp16, where the overflow check of
    /// `step` skips the step instead (as DeepSpeed).
    pub fn forward(&mut self, tokens: &[u32], targets: &[u32], t: usize) -> Result<f32, EngineError> {
        self.expect_phase("forward", EnginePhase::Ready, "step() (or construction)")?;
        let b = tokens.len() / t.max(1);
        let start = Instant::now();
        let loss = self.run_forward(tokens, Some(targets), b, t)?.expect("targets give a loss");
        self.window.timings.forward += start.elapsed();
        self.activation_peak = self.activation_peak.max(self.model.take_activation_peak());
        if !loss.mean.is_finite() && !matches!(self.precision, Precision::Fp16(_)) {
            let source = match self.model.first_non_finite_output() {
                Some(layer) => format!("the first non-finite output is {layer}'s"),
                None => "every layer's output is finite".to_string(),
            };
            return Err(EngineError::NonFinite {
                step: self.counters.global_steps + 1,
                what: format!("the loss (in {}; {source})", E::NAME),
            });
        }
        self.window.tokens += tokens.len() as u64;
        self.window.last_loss = loss.mean;
        self.phase = EnginePhase::Forwarded;
        Ok(loss.mean)
    }

    /// The model's forward over this rank's model copy (gathering each group at stage 3).
    fn run_forward(
        &mut self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<rustspeed_kernels::xent::XentLoss>, EngineError> {
        let Engine { model, copy, zero, comm, reduction, residency, .. } = self;
        match copy {
            ModelCopy::Whole { params, .. } => Ok(model.forward(&params[..zero.numel], tokens, targets, b, t)?),
            ModelCopy::Sharded(sharded) => {
                let params = Resident::Sharded(sharded);
                let (loss, peak) =
                    run_pass(model, &**comm, zero, params, Pass::Forward, None, reduction.bucket, |m, g| {
                        m.forward_from(g, tokens, targets, b, t)
                    })?;
                residency.note(peak);
                Ok(loss)
            }
        }
    }

    /// Accumulates `∂(scale · loss / GAS)/∂params` of the latest forward (`scale`: the fp16 loss scale, else 1);
    /// at ZeRO stages 2 and 3 also reduce-scatters them into this rank's gradient partition (averaged over ranks).
    pub fn backward(&mut self) -> Result<(), EngineError> {
        self.expect_phase("backward", EnginePhase::Forwarded, "forward()")?;
        let gas = self.batch.gradient_accumulation_steps as f32;
        let dloss = (self.precision.loss_scale() / gas as f64) as f32;
        let start = Instant::now();
        // Gradients are reduced over ranks in this backward when the window ends (stages 0 and 1: with
        // `overlap_comm` layer by layer on a communication thread), or on every micro-step as soon as each
        // group's are final (stages 2 and 3, whose per-group gradient buffers exist only until they are reduced).
        let reduce = self.is_gradient_accumulation_boundary();
        let window_start = self.counters.micro_steps.is_multiple_of(self.batch.gradient_accumulation_steps as u64);
        let Engine { model, copy, grads, zero, comm, reduction, residency, .. } = self;
        match (copy, grads) {
            (copy, Gradients::Grouped { partition }) => {
                let params = match copy {
                    ModelCopy::Sharded(sharded) => Resident::Sharded(sharded),
                    ModelCopy::Whole { params, .. } => Resident::Whole(&params[..zero.numel]),
                };
                let bucket = reduction.bucket;
                let (_, peak) =
                    run_pass(model, &**comm, zero, params, Pass::Backward, Some(partition), bucket, |m, g| {
                        m.backward_from(g, dloss)
                    })?;
                residency.note(peak);
            }
            (ModelCopy::Whole { params, .. }, Gradients::Replicated { local, sum }) => {
                let whole = WholeBackward { model, params, zero, comm: &**comm, reduction: *reduction, dloss };
                whole.run(local, sum.as_deref_mut(), &mut [], reduce, window_start)?
            }
            (ModelCopy::Whole { params, .. }, Gradients::Partitioned { local, sum, partition }) => {
                let whole = WholeBackward { model, params, zero, comm: &**comm, reduction: *reduction, dloss };
                whole.run(local, sum.as_deref_mut(), partition, reduce, window_start)?
            }
            _ => unreachable!("Setup chooses the model copy and the gradient buffers for one stage"),
        }
        self.window.timings.backward += start.elapsed();
        self.activation_peak = self.activation_peak.max(self.model.take_activation_peak());
        self.window.loss_sum += self.window.last_loss as f64 / gas as f64;
        self.phase = EnginePhase::Backwarded;
        Ok(())
    }

    /// Ends a micro-step. At an accumulation boundary, the optimizer step in numbered phases; returns its
    /// report. Elsewhere only counts the micro-step and returns `None`.
    pub fn step(&mut self) -> Result<Option<StepReport>, EngineError> {
        self.expect_phase("step", EnginePhase::Backwarded, "backward()")?;
        self.phase = EnginePhase::Ready;
        if !self.is_gradient_accumulation_boundary() {
            self.counters.micro_steps += 1;
            return Ok(None);
        }
        let start = Instant::now();
        let step = self.counters.global_steps + 1;
        // 1. The window's gradients, multiplied by the loss scale, were reduced over ranks (averaged) by
        //    backward(): in place at stage 0, into this rank's fp32 partition at stages 1-3.
        let scale = self.precision.loss_scale();
        // 2. Global norm of the scaled gradients (each rank's share of ‖g‖², summed over ranks when sharded). A
        //    non-finite norm is an overflow: some gradient is inf or NaN. Find the layer (an agreed flag per layer).
        let scaled_norm = self.global_norm()?;
        let overflow_layer = match scaled_norm.is_finite() {
            true => None,
            false => Some(self.non_finite_layer()?),
        };
        // 3. fp16: the loss scaler takes the overflow flag and says whether to skip the step (an overflow at the
        //    minimum scale is an error saying what to try). fp32 and bf16 never skip: a non-finite gradient stops.
        let skipped = match (&mut self.precision, &overflow_layer) {
            (Precision::Fp16(scaler), _) => {
                scaler.update(overflow_layer.is_some()).map_err(|e| EngineError::Precision(e.to_string()))?.skipped()
            }
            (Precision::Fp32 | Precision::Bf16, None) => false,
            (Precision::Fp32 | Precision::Bf16, Some(layer)) => {
                return Err(EngineError::NonFinite { step, what: format!("the gradient norm (first in {layer})") });
            }
        };
        // 4. Unscale and clip in one multiply (semantics §2.6): the optimizer sees g · clip_coef / scale, where
        //    clip_coef = clip / (‖g‖/scale + ε) when that is below 1 (torch `clip_grad_norm_`).
        let grad_norm = scaled_norm / scale;
        let mut grad_scale = 1.0 / scale;
        if self.gradient_clipping > 0.0 {
            grad_scale *= (self.gradient_clipping / (grad_norm + CLIP_EPS)).min(1.0);
        }
        // 5. Unless skipped: optimizer step on the fp32 master weights of the owned range with this step's
        //    learning rate (and OneCycle's momentum), then the model copy is rounded from them; sharded stages
        //    all-gather every rank's updated partition. The schedule follows the optimizer's applied-step count.
        let t = self.optimizer.applied_steps() as i64 - 1;
        let lr = self.schedule.lr(t, self.optimizer.base_lr());
        if !skipped {
            self.apply_optimizer(grad_scale as f32, lr as f32, self.schedule.momentum(t))?;
        }
        // 6. Zero the accumulators, agree on the window's loss, count (a skipped step still counts), report.
        //    The model's gradient buffer needs no zeroing: the next window's first backward overwrites it. The
        //    optimizer zeroed the accumulators it read (the fp32 sum or partition) while they were in cache; the
        //    rest is zeroed here: after a skipped step, and stage 1's fp32 sum (reduced into the partition).
        self.grads.clear_unread(skipped);
        let mut window = std::mem::take(&mut self.window);
        let mut loss = [window.loss_sum as f32];
        self.comm.all_reduce(&mut loss, ReduceOp::Avg)?;
        self.counters.micro_steps += 1;
        self.counters.global_steps += 1;
        self.counters.global_samples += self.batch.train_batch_size as u64;
        self.counters.skipped_steps += skipped as u64;
        window.timings.optimizer = start.elapsed();
        Ok(Some(StepReport {
            step: self.counters.global_steps,
            loss: loss[0],
            grad_norm: grad_norm as f32,
            lr,
            skipped,
            loss_scale: scale,
            overflow_layer,
            tokens: window.tokens * self.zero.world as u64,
            timings: window.timings,
        }))
    }

    /// ‖g‖ of the reduced, still scaled gradients over all ranks.
    fn global_norm(&mut self) -> Result<f64, EngineError> {
        let sq = match self.grads.reduced() {
            Reduced::Stored(g) => sum_of_squares::<E>(g),
            Reduced::Wide(g) => sum_of_squares(g),
        };
        if !self.zero.sharded() {
            return Ok(sq.sqrt());
        }
        // The communicator sums fp32: a share beyond fp32's range (a norm above ~1e19) reads as an overflow.
        let mut sq = [sq as f32];
        self.comm.all_reduce(&mut sq, ReduceOp::Sum)?;
        Ok((sq[0] as f64).sqrt())
    }

    /// The layer whose gradients hold an inf or NaN that the backward reached first, agreed over ranks (each
    /// rank checks its own partition, as DeepSpeed's overflow check).
    fn non_finite_layer(&mut self) -> Result<String, EngineError> {
        let segments = self.zero.segments();
        let mut flags = match self.grads.reduced() {
            Reduced::Stored(g) => non_finite_flags::<E>(g, &segments, &self.grad_owners),
            Reduced::Wide(g) => non_finite_flags(g, &segments, &self.grad_owners),
        };
        if self.zero.sharded() {
            self.comm.all_reduce(&mut flags, ReduceOp::Max)?;
        }
        let first = flags.iter().position(|&f| f > 0.0);
        Ok(first.map_or_else(|| "an unknown layer".to_string(), |i| self.grad_owners[i].0.clone()))
    }

    /// Test hook: overwrites the reduced gradient of parameter `index` of this accumulation boundary (call it
    /// after the boundary's `backward`, before `step`), e.g. with inf, as an fp16 overflow would leave it. On a
    /// sharded rank that does not own `index` it does nothing. Not for training code.
    #[doc(hidden)]
    pub fn inject_gradient(&mut self, index: usize, value: f32) -> Result<(), EngineError> {
        self.expect_phase("inject_gradient", EnginePhase::Backwarded, "backward()")?;
        let segment = self.zero.segments().into_iter().find(|s| s.layout.contains(&index));
        let Some(segment) = segment else { return Ok(()) };
        let at = segment.at + index - segment.layout.start;
        match self.grads.reduced() {
            Reduced::Stored(g) => g[at] = E::from_f32(value),
            Reduced::Wide(g) => g[at] = value,
        }
        Ok(())
    }

    /// Phase 5 of [`Engine::step`].
    fn apply_optimizer(&mut self, grad_scale: f32, lr: f32, betas: Option<(f64, f64)>) -> Result<(), EngineError> {
        let segments = self.zero.segments();
        let Engine { model, copy, grads, optimizer, zero, comm, gather_buffer, .. } = self;
        let layout = model.layout();
        // The fp32 partition and sum are accumulators, zeroed as they are read; the model's own buffer is
        // overwritten by the next window's first backward.
        let mut step = |weights: &mut [f32]| match grads.reduced() {
            Reduced::Stored(g) => optimizer.apply(layout, weights, g, false, grad_scale, &segments, lr, betas),
            Reduced::Wide(g) => optimizer.apply(layout, weights, g, true, grad_scale, &segments, lr, betas),
        };
        match copy {
            ModelCopy::Whole { params, master } => {
                master.update(&mut params[zero.owned()], step);
                if zero.sharded() {
                    gather_params(&**comm, zero, params, gather_buffer)?;
                }
            }
            // Stage 3 keeps the masters only: a group's model copy is rounded from them as it is gathered.
            ModelCopy::Sharded(sharded) => {
                step(&mut sharded.master);
                sharded.refresh_persistent(&**comm, zero)?;
            }
        }
        Ok(())
    }

    /// One whole optimizer step: `GAS` micro-batches drawn from `next_micro_batch` (which fills tokens and
    /// targets of `[B, T]`), each forward, backward, step.
    pub fn train_batch(
        &mut self,
        t: usize,
        mut next_micro_batch: impl FnMut(&mut Vec<u32>, &mut Vec<u32>),
    ) -> Result<StepReport, EngineError> {
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        loop {
            next_micro_batch(&mut tokens, &mut targets);
            self.forward(&tokens, &targets, t)?;
            self.backward()?;
            if let Some(report) = self.step()? {
                return Ok(report);
            }
        }
    }

    /// Mean loss over `batches` of `[B, T]` without touching gradients or counters. A collective at stage 3 (the
    /// forward gathers the parameters): every rank calls it, with the same number of batches.
    pub fn evaluate<'a>(
        &mut self,
        t: usize,
        batches: impl IntoIterator<Item = (&'a [u32], &'a [u32])>,
    ) -> Result<f32, EngineError> {
        self.expect_phase(
            "evaluate",
            EnginePhase::Ready,
            "step() (evaluation between micro-steps would discard activations)",
        )?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (tokens, targets) in batches {
            let loss = self.run_forward(tokens, Some(targets), tokens.len() / t, t)?.expect("targets");
            // Evaluation batches may be of another shape: the accounting covers training passes.
            self.model.take_activation_peak();
            sum += loss.mean as f64;
            count += 1;
        }
        Ok(if count > 0 { (sum / count as f64) as f32 } else { f32::NAN })
    }
}

/// Each layer's parameter ranges in the order the backward reaches them: the head's own parameters, then the
/// layers from last to first. A layer whose parameter the head reads (GPT's tied token embedding, to which the head
/// adds first) is named with the head.
fn grad_owners<E: Element>(model: &Model<E>) -> Vec<(String, Vec<Range<usize>>)> {
    let layout = model.layout();
    let ranges = |ids: &[rustspeed_nn::ParamId]| ids.iter().map(|&id| layout.range(id)).collect::<Vec<_>>();
    let head = ("head".to_string(), ranges(model.head().params()));
    let tied = |l: &dyn rustspeed_nn::Layer<E>| {
        model.head().params().is_empty() && l.params().contains(&model.head().weight())
    };
    let layers = model.layers().iter().rev().map(|l| {
        let name = match tied(l.as_ref()) {
            true => format!("{} (tied with the head)", l.name()),
            false => l.name().to_string(),
        };
        (name, ranges(l.params()))
    });
    std::iter::once(head).chain(layers).filter(|(_, r)| !r.is_empty()).collect()
}
