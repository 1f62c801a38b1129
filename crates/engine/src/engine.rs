//! The engine: DeepSpeed's `forward` / `backward` / `step` contract over rustspeed's flat buffers.
//!
//! Counters follow DeepSpeed (§3.2 of the semantics reference): `micro_steps` +1 on every `step()`,
//! `global_steps` and `global_samples` on every accumulation boundary (applied or skipped), `skipped_steps` on
//! skipped ones; the loss is divided by `gradient_accumulation_steps` (and multiplied by the fp16 loss scale) in
//! `backward`; the LR schedule advances only on applied steps.
//!
//! `Engine<E>` stores the model copy (parameters, activations, gradients) as `E`: f32, or fp16/bf16 over fp32
//! master weights ([`crate::precision`]). The caller picks `E` from the config's [`crate::StorageType`].

use crate::error::EngineError;
use crate::memory::MemoryReport;
use crate::optimizer::Optimizer;
use crate::precision::{check_storage, MasterWeights, Precision};
use crate::reduce::{accumulate, gather_params, reduce_piece, release_zeroed};
use crate::setup::Setup;
use crate::zero::{ZeroPlan, ZeroStage};
use rayon::prelude::*;
use rustspeed_comm::background::Background;
use rustspeed_comm::{Communicator, ReduceOp, SingleRank};
use rustspeed_config::{BatchSizes, DeepSpeedConfig};
use rustspeed_kernels::cast::{cast_from_f32, cast_to_f32, first_non_finite, Contents, Element};
use rustspeed_kernels::vmath::{add_squares, SQUARE_LANES};
use rustspeed_nn::Model;
use rustspeed_optim::LrSchedule;
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

pub struct Engine<E: Element = f32> {
    pub(crate) model: Model<E>,
    /// The model copy of the parameters, padded to the ZeRO plan's `W · S` (the model reads the first `P`).
    pub(crate) params: Vec<E>,
    /// fp32 master weights of the owned range (16-bit storage only).
    pub(crate) master: MasterWeights,
    /// This micro-step's (stage 2) or window's (stages 0, 1) local gradients, padded like `params`.
    pub(crate) grads: Vec<E>,
    /// Reduced fp32 gradients of the owned partition (stages 1, 2); empty at stage 0.
    grad_partition: Vec<f32>,
    /// The window's gradients summed in fp32 over micro-steps, padded like `params` (16-bit storage at stages 0
    /// and 1 when `data_types.grad_accum_dtype` is fp32, DeepSpeed's default for bf16 without ZeRO); else empty.
    /// `grads` then holds one micro-step's gradients at a time.
    grad_accum: Vec<f32>,
    /// The all-gather's buffer (stages 1, 2), reused across steps.
    gather_buffer: Vec<f32>,
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

/// Where the window's reduced gradients are at the step: the fp32 partition (ZeRO stages 1, 2), the local 16-bit
/// or fp32 buffer (stage 0), or the fp32 sum over micro-steps (stage 0 with fp32 accumulation of 16-bit gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduced {
    Partition,
    Local,
    Accumulated,
}

/// Elements per task of the parallel passes over the flat buffers below.
const FLAT_CHUNK: usize = 1 << 16;

/// `Σ x²` in f64, in parallel over fixed chunks whose partial sums are added in order, so the result does not
/// depend on the thread count.
fn sum_of_squares<G: Element>(x: &[G]) -> f64 {
    let partial: Vec<f64> = x.par_chunks(FLAT_CHUNK).map(chunk_sum_of_squares).collect();
    partial.iter().sum()
}

/// Elements widened to fp32 at a time (a stack buffer) by [`chunk_sum_of_squares`] and [`add_widened`].
const WIDEN_RUN: usize = 1024;

/// `Σ x²` of one chunk in f64, over `SQUARE_LANES` interleaved partial sums (a fixed order: deterministic). One
/// chain of dependent f64 additions was bound by the adder's latency (26 ms for lstm-seed's 64M gradients).
fn chunk_sum_of_squares<G: Element>(chunk: &[G]) -> f64 {
    let mut lanes = [0.0f64; SQUARE_LANES];
    let mut tail = 0.0f64;
    match G::as_f32(chunk) {
        Some(x) => tail += add_squares(&mut lanes, x),
        None => {
            let mut wide = [0.0f32; WIDEN_RUN];
            for run in chunk.chunks(WIDEN_RUN) {
                let wide = &mut wide[..run.len()];
                G::widen_run(wide, run);
                tail += add_squares(&mut lanes, wide);
            }
        }
    }
    lanes.iter().sum::<f64>() + tail
}

fn zero_fill<G: Element>(x: &mut [G]) {
    x.par_chunks_mut(FLAT_CHUNK).for_each(|c| c.fill(G::default()));
}

/// `sum[i] += f32(grads[i])`: a micro-step's 16-bit gradients into the fp32 accumulator.
fn add_widened<G: Element>(sum: &mut [f32], grads: &[G]) {
    sum.par_chunks_mut(FLAT_CHUNK).zip(grads.par_chunks(FLAT_CHUNK)).for_each(|(s, g)| {
        let mut wide = [0.0f32; WIDEN_RUN];
        for (s, g) in s.chunks_mut(WIDEN_RUN).zip(g.chunks(WIDEN_RUN)) {
            let wide = &mut wide[..g.len()];
            G::widen_run(wide, g);
            s.iter_mut().zip(wide.iter()).for_each(|(s, &w)| *s += w);
        }
    });
}

/// 1.0 for each owner whose parameters' gradients (over the owned range `owned`, `grads[0]` being parameter
/// `owned.start`) hold an inf or NaN.
fn non_finite_flags<G: Element>(grads: &[G], owned: &Range<usize>, owners: &[(String, Vec<Range<usize>>)]) -> Vec<f32> {
    let hit = |r: &Range<usize>| {
        let (lo, hi) = (r.start.max(owned.start), r.end.min(owned.end));
        lo < hi && first_non_finite(&grads[lo - owned.start..hi - owned.start]).is_some()
    };
    owners.iter().map(|(_, ranges)| if ranges.iter().any(hit) { 1.0 } else { 0.0 }).collect()
}

/// How gradients are reduced over ranks (`zero_optimization.overlap_comm`, `reduce_bucket_size`).
#[derive(Clone, Copy, Debug)]
struct Reduction {
    overlap: bool,
    bucket: usize,
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
        let Setup { optimizer, schedule, batch, zero, precision, accumulate_in_fp32 } =
            Setup::choose(&config, model.layout(), comm.rank(), comm.world_size())?;
        check_storage::<E>(&precision)?;
        params.resize(zero.padded(), 0.0);
        comm.broadcast(&mut params, 0)?;
        let mut copy = vec![E::default(); params.len()];
        cast_from_f32(&mut copy, &params);
        drop(params);
        let partition_len = if zero.sharded() { zero.partition } else { 0 };
        let reduction = Reduction {
            overlap: config.zero_optimization.overlap_comm(),
            bucket: config.zero_optimization.reduce_bucket_size as usize,
        };
        let grad_owners = grad_owners(&model);
        let accumulate_len = match accumulate_in_fp32 && zero.stage != ZeroStage::Stage2 {
            true => copy.len(),
            false => 0,
        };
        Ok(Engine {
            grad_accum: vec![0.0; accumulate_len],
            master: MasterWeights::new(&copy[zero.owned()]),
            grads: vec![E::default(); copy.len()],
            params: copy,
            model,
            grad_partition: vec![0.0; partition_len],
            gather_buffer: Vec::new(),
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

    /// The model copy of the parameters (`P` of them; the padding is not part of the model).
    pub fn params(&self) -> &[E] {
        &self.params[..self.zero.numel]
    }

    /// The model copy's parameters as fp32 (exact), e.g. for sampling or saving.
    pub fn params_f32(&self) -> Vec<f32> {
        let mut wide = vec![0.0; self.zero.numel];
        cast_to_f32(&mut wide, self.params());
        wide
    }

    pub fn zero_plan(&self) -> ZeroPlan {
        self.zero
    }

    pub fn precision(&self) -> &Precision {
        &self.precision
    }

    /// Bytes this rank holds for parameters, gradients, master weights and optimizer state, read off its buffers.
    pub fn memory(&self) -> MemoryReport {
        let (e, f) = (std::mem::size_of::<E>(), std::mem::size_of::<f32>());
        let (gradients, staging) = match self.zero.stage {
            ZeroStage::Stage0 => (self.grads.len() * e, 0),
            ZeroStage::Stage1 => (self.grads.len() * e + self.grad_partition.len() * f, 0),
            ZeroStage::Stage2 => (self.grad_partition.len() * f, self.grads.len() * e),
        };
        let gradients = gradients + self.grad_accum.len() * f;
        MemoryReport {
            parameters: self.params.len() * e,
            gradients,
            gradient_staging: staging,
            master_weights: self.master.separate().len() * f,
            optimizer_state: self.optimizer.slots().map(|(_, s)| s.len()).sum::<usize>() * f,
            activations: 0,
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

    fn expect_phase(&self, called: &'static str, want: EnginePhase, expected: &'static str) -> Result<(), EngineError> {
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
        let loss = self
            .model
            .forward(&self.params[..self.zero.numel], tokens, Some(targets), b, t)?
            .expect("targets give a loss");
        self.window.timings.forward += start.elapsed();
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

    /// Accumulates `∂(scale · loss / GAS)/∂params` of the latest forward (`scale`: the fp16 loss scale, else 1);
    /// at ZeRO stage 2 also reduce-scatters them into this rank's gradient partition (averaged over ranks).
    pub fn backward(&mut self) -> Result<(), EngineError> {
        self.expect_phase("backward", EnginePhase::Forwarded, "forward()")?;
        let gas = self.batch.gradient_accumulation_steps as f32;
        let dloss = (self.precision.loss_scale() / gas as f64) as f32;
        let start = Instant::now();
        // Gradients are reduced over ranks in this backward when the window ends (stages 0 and 1) or on every
        // micro-step (stage 2), layer by layer on a communication thread with `overlap_comm`.
        let reduce = self.zero.stage == ZeroStage::Stage2 || self.is_gradient_accumulation_boundary();
        let accumulate_wide = !self.grad_accum.is_empty();
        // The buffer the backward writes starts over (is overwritten, not first zeroed) when it holds nothing of
        // this window: at its first micro-step, and on every micro-step where it only stages this micro-step's
        // gradients (stage 2 reduces them right away; fp32 accumulation adds them into the fp32 sum).
        let window_start = self.counters.micro_steps.is_multiple_of(self.batch.gradient_accumulation_steps as u64);
        let contents = match window_start || self.zero.stage == ZeroStage::Stage2 || accumulate_wide {
            true => Contents::Overwrite,
            false => Contents::Accumulate,
        };
        let p = self.zero.numel;
        let Engine { model, params, grads, grad_partition, grad_accum, zero, comm, reduction, .. } = self;
        let (params, grads, comm, zero, bucket) = (&params[..p], &mut grads[..p], &**comm, *zero, reduction.bucket);
        let mut backward = |grads| model.backward_with(params, grads, dloss, contents, &mut |_, _| {});
        match (reduce, reduction.overlap && !accumulate_wide) {
            // fp32 accumulation: each micro-step's 16-bit gradients are added into the fp32 sum, which is what
            // the boundary reduces (after the backward: no overlap in this mode).
            (_, false) if accumulate_wide => {
                backward(grads)?;
                add_widened(&mut grad_accum[..p], grads);
                if reduce {
                    accumulate(grad_partition, reduce_piece(comm, &zero, bucket, 0, &mut grad_accum[..p])?);
                }
            }
            (false, _) => backward(grads)?,
            (true, false) => {
                backward(grads)?;
                accumulate(grad_partition, reduce_piece(comm, &zero, bucket, 0, grads)?);
                if zero.stage == ZeroStage::Stage2 {
                    release_zeroed(grads);
                }
            }
            (true, true) => std::thread::scope(|scope| -> Result<(), EngineError> {
                // Each finished piece is reduced on the communication thread while the backward goes on.
                let background = Background::start(scope, comm);
                let mut pending = Vec::new();
                let backward = model.backward_with(params, grads, dloss, contents, &mut |offset, piece| {
                    pending.push(background.submit(move |c| {
                        let shares = reduce_piece(c, &zero, bucket, offset, piece)?;
                        // Stage 2 keeps no gradients outside the partition: the reduced piece's memory goes.
                        if zero.stage == ZeroStage::Stage2 {
                            release_zeroed(piece);
                        }
                        Ok(shares)
                    }));
                });
                // Wait for every submitted reduction even after an error, so that none is left running.
                let reduced: Vec<_> = pending.into_iter().map(|h| h.wait()).collect();
                backward?;
                for shares in reduced {
                    accumulate(grad_partition, shares?);
                }
                Ok(())
            })?,
        }
        self.window.timings.backward += start.elapsed();
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
        let zero = self.zero;
        let step = self.counters.global_steps + 1;
        // 1. The window's gradients, multiplied by the loss scale, were reduced over ranks (averaged) by
        //    backward(): in place at stage 0, into this rank's fp32 partition at stages 1 and 2.
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
        if skipped || zero.stage == ZeroStage::Stage1 {
            zero_fill(&mut self.grad_accum);
        }
        if skipped {
            zero_fill(&mut self.grad_partition);
        }
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
            tokens: window.tokens * zero.world as u64,
            timings: window.timings,
        }))
    }

    /// Which buffer holds the window's reduced gradients when the step reads them.
    fn reduced(&self) -> Reduced {
        match (self.zero.sharded(), self.grad_accum.is_empty()) {
            (true, _) => Reduced::Partition,
            (false, true) => Reduced::Local,
            (false, false) => Reduced::Accumulated,
        }
    }

    /// ‖g‖ of the reduced, still scaled gradients over all ranks.
    fn global_norm(&self) -> Result<f64, EngineError> {
        let numel = self.zero.numel;
        let sq = match self.reduced() {
            Reduced::Local => return Ok(sum_of_squares(&self.grads[..numel]).sqrt()),
            Reduced::Accumulated => return Ok(sum_of_squares(&self.grad_accum[..numel]).sqrt()),
            Reduced::Partition => sum_of_squares(&self.grad_partition),
        };
        // The communicator sums fp32: a share beyond fp32's range (a norm above ~1e19) reads as an overflow.
        let mut sq = [sq as f32];
        self.comm.all_reduce(&mut sq, ReduceOp::Sum)?;
        Ok((sq[0] as f64).sqrt())
    }

    /// The layer whose gradients hold an inf or NaN that the backward reached first, agreed over ranks (each
    /// rank checks its own partition, as DeepSpeed's overflow check).
    fn non_finite_layer(&self) -> Result<String, EngineError> {
        let (zero, owned) = (self.zero, self.zero.owned());
        let mut flags = match self.reduced() {
            Reduced::Partition => non_finite_flags(&self.grad_partition, &owned, &self.grad_owners),
            Reduced::Local => non_finite_flags(&self.grads[..zero.numel], &owned, &self.grad_owners),
            Reduced::Accumulated => non_finite_flags(&self.grad_accum[..zero.numel], &owned, &self.grad_owners),
        };
        if zero.sharded() {
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
        let owned = self.zero.owned();
        match self.reduced() {
            Reduced::Partition if owned.contains(&index) => self.grad_partition[index - owned.start] = value,
            Reduced::Partition => {}
            Reduced::Local => self.grads[index] = E::from_f32(value),
            Reduced::Accumulated => self.grad_accum[index] = value,
        }
        Ok(())
    }

    /// Phase 5 of [`Engine::step`].
    fn apply_optimizer(&mut self, grad_scale: f32, lr: f32, betas: Option<(f64, f64)>) -> Result<(), EngineError> {
        let (zero, reduced) = (self.zero, self.reduced());
        let Engine { model, params, grads, grad_partition, grad_accum, master, optimizer, .. } = self;
        let layout = model.layout();
        let (owned, numel) = (zero.owned(), zero.numel);
        // The fp32 partition and sum are accumulators, zeroed as they are read; the model's own buffer is
        // overwritten by the next window's first backward.
        let zero_read = reduced != Reduced::Local;
        master.update(&mut params[zero.owned()], |weights| match reduced {
            Reduced::Partition => {
                optimizer.apply(layout, weights, grad_partition, zero_read, grad_scale, owned, lr, betas)
            }
            Reduced::Local => {
                optimizer.apply(layout, weights, &mut grads[..numel], zero_read, grad_scale, owned, lr, betas)
            }
            Reduced::Accumulated => {
                optimizer.apply(layout, weights, &mut grad_accum[..numel], zero_read, grad_scale, owned, lr, betas)
            }
        });
        if zero.sharded() {
            gather_params(&*self.comm, &zero, &mut self.params, &mut self.gather_buffer)?;
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

    /// Mean loss over `batches` of `[B, T]` without touching gradients or counters.
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
            let loss = self
                .model
                .forward(&self.params[..self.zero.numel], tokens, Some(targets), tokens.len() / t, t)?
                .expect("targets");
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

#[cfg(test)]
mod tests {
    use super::sum_of_squares;

    /// Reordered f64 sums of 200k squares of order one: relative differences near 1e-16 · √n, far below this.
    const REORDER_RTOL: f64 = 1e-12;

    #[test]
    fn sum_of_squares_matches_a_plain_sum_and_ignores_the_thread_count() {
        let x: Vec<f32> = (0..200_003).map(|i| ((i * 7919) % 1000) as f32 / 300.0 - 1.5).collect();
        let plain: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let (one, two) = (pool(1).install(|| sum_of_squares(&x)), pool(2).install(|| sum_of_squares(&x)));
        assert_eq!(one.to_bits(), two.to_bits(), "the thread count changed the result");
        assert!((one - plain).abs() <= REORDER_RTOL * plain, "{one} vs {plain}");
    }
}
