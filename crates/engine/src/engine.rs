//! The engine: DeepSpeed's `forward` / `backward` / `step` contract over rustspeed's flat buffers.
//!
//! Counters follow DeepSpeed (§3.2 of the semantics reference): `micro_steps` +1 on every `step()`,
//! `global_steps` and `global_samples` on every accumulation boundary (applied or skipped), `skipped_steps` on
//! skipped ones; the loss is divided by `gradient_accumulation_steps` in `backward`; the LR schedule advances only
//! on applied steps.

use crate::error::EngineError;
use crate::memory::MemoryReport;
use crate::optimizer::Optimizer;
use crate::reduce::{accumulate, reduce_piece, release_zeroed};
use crate::setup::Setup;
use crate::zero::{ZeroPlan, ZeroStage};
use rayon::prelude::*;
use rustspeed_comm::background::Background;
use rustspeed_comm::{Communicator, ReduceOp, SingleRank};
use rustspeed_config::{BatchSizes, DeepSpeedConfig};
use rustspeed_nn::Model;
use rustspeed_optim::LrSchedule;
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
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f32,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Whether the step was skipped (never in fp32).
    pub skipped: bool,
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

pub struct Engine {
    pub(crate) model: Model,
    /// Parameters, padded to the ZeRO plan's `W · S` (the model reads the first `P`).
    pub(crate) params: Vec<f32>,
    /// This micro-step's (stage 2) or window's (stages 0, 1) local gradients, padded like `params`.
    pub(crate) grads: Vec<f32>,
    /// Reduced gradients of the owned partition (stages 1, 2); empty at stage 0.
    grad_partition: Vec<f32>,
    /// This rank's updated partition, sent to the all-gather (stages 1, 2), reused across steps.
    gather_buffer: Vec<f32>,
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

/// Elements per task of the parallel passes over the flat buffers below.
const FLAT_CHUNK: usize = 1 << 16;

/// `Σ x²` in f64, in parallel over fixed chunks whose partial sums are added in order, so the result does not
/// depend on the thread count.
fn sum_of_squares(x: &[f32]) -> f64 {
    let partial: Vec<f64> = x.par_chunks(FLAT_CHUNK).map(|c| c.iter().map(|&g| g as f64 * g as f64).sum()).collect();
    partial.iter().sum()
}

fn zero_fill(x: &mut [f32]) {
    x.par_chunks_mut(FLAT_CHUNK).for_each(|c| c.fill(0.0));
}

/// How gradients are reduced over ranks (`zero_optimization.overlap_comm`, `reduce_bucket_size`).
#[derive(Clone, Copy, Debug)]
struct Reduction {
    overlap: bool,
    bucket: usize,
}

/// DeepSpeed's epsilon in the clipping coefficient `clip / (‖g‖ + 1e-6)`.
const CLIP_EPS: f64 = 1e-6;

impl Engine {
    /// Builds a single-rank engine for `model` with parameters `params` (its layout's size) from a DeepSpeed
    /// config; every choice (optimizer, schedule, precision, ZeRO stage) is made by [`Setup::choose`].
    pub fn new(model: Model, params: Vec<f32>, config: DeepSpeedConfig) -> Result<Engine, EngineError> {
        Self::with_communicator(model, params, config, Box::new(SingleRank))
    }

    /// Builds this rank's engine of a data-parallel group. Rank 0's parameters are broadcast to all ranks (as
    /// DeepSpeed does at initialization), so every rank starts from the same model.
    pub fn with_communicator(
        model: Model,
        mut params: Vec<f32>,
        config: DeepSpeedConfig,
        comm: Box<dyn Communicator>,
    ) -> Result<Engine, EngineError> {
        let numel = model.num_params();
        if params.len() != numel {
            return Err(EngineError::Config(format!("{} parameters given, the model has {numel}", params.len())));
        }
        let Setup { optimizer, schedule, batch, zero } =
            Setup::choose(&config, model.layout(), comm.rank(), comm.world_size())?;
        params.resize(zero.padded(), 0.0);
        comm.broadcast(&mut params, 0)?;
        let partition_len = if zero.sharded() { zero.partition } else { 0 };
        let reduction = Reduction {
            overlap: config.zero_optimization.overlap_comm(),
            bucket: config.zero_optimization.reduce_bucket_size as usize,
        };
        Ok(Engine {
            model,
            grads: vec![0.0; params.len()],
            params,
            grad_partition: vec![0.0; partition_len],
            gather_buffer: vec![0.0; partition_len],
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

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's parameters (`P` of them; the padding is not part of the model).
    pub fn params(&self) -> &[f32] {
        &self.params[..self.zero.numel]
    }

    pub fn zero_plan(&self) -> ZeroPlan {
        self.zero
    }

    /// Bytes this rank holds for parameters, gradients and optimizer state, read off its buffers.
    pub fn memory(&self) -> MemoryReport {
        let f = std::mem::size_of::<f32>();
        let (gradients, staging) = match self.zero.stage {
            ZeroStage::Stage0 => (self.grads.len(), 0),
            ZeroStage::Stage1 => (self.grads.len() + self.grad_partition.len(), 0),
            ZeroStage::Stage2 => (self.grad_partition.len(), self.grads.len()),
        };
        MemoryReport {
            parameters: self.params.len() * f,
            gradients: gradients * f,
            gradient_staging: staging * f,
            master_weights: 0,
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
        (self.counters.micro_steps + 1) % self.batch.gradient_accumulation_steps as u64 == 0
    }

    fn expect_phase(&self, called: &'static str, want: EnginePhase, expected: &'static str) -> Result<(), EngineError> {
        match self.phase == want {
            true => Ok(()),
            false => Err(EngineError::Phase { called, expected, state: self.phase.describe() }),
        }
    }

    /// Forward of one micro-batch `tokens[B, T]` → mean loss against `targets[B, T]`.
    pub fn forward(&mut self, tokens: &[u32], targets: &[u32], t: usize) -> Result<f32, EngineError> {
        self.expect_phase("forward", EnginePhase::Ready, "step() (or construction)")?;
        let b = tokens.len() / t.max(1);
        let start = Instant::now();
        let loss = self
            .model
            .forward(&self.params[..self.zero.numel], tokens, Some(targets), b, t)?
            .expect("targets give a loss");
        self.window.timings.forward += start.elapsed();
        if !loss.mean.is_finite() {
            return Err(EngineError::NonFinite { step: self.counters.global_steps + 1, what: "the loss".into() });
        }
        self.window.tokens += tokens.len() as u64;
        self.window.last_loss = loss.mean;
        self.phase = EnginePhase::Forwarded;
        Ok(loss.mean)
    }

    /// Accumulates `∂(loss / GAS)/∂params` of the latest forward; at ZeRO stage 2 also reduce-scatters them into
    /// this rank's gradient partition (averaged over ranks).
    pub fn backward(&mut self) -> Result<(), EngineError> {
        self.expect_phase("backward", EnginePhase::Forwarded, "forward()")?;
        let gas = self.batch.gradient_accumulation_steps as f32;
        let start = Instant::now();
        // Gradients are reduced over ranks in this backward when the window ends (stages 0 and 1) or on every
        // micro-step (stage 2), layer by layer on a communication thread with `overlap_comm`.
        let reduce = self.zero.stage == ZeroStage::Stage2 || self.is_gradient_accumulation_boundary();
        let p = self.zero.numel;
        let Engine { model, params, grads, grad_partition, zero, comm, reduction, .. } = self;
        let (params, grads, comm, zero, bucket) = (&params[..p], &mut grads[..p], &**comm, *zero, reduction.bucket);
        match (reduce, reduction.overlap) {
            (false, _) => model.backward(params, grads, 1.0 / gas)?,
            (true, false) => {
                model.backward(params, grads, 1.0 / gas)?;
                accumulate(grad_partition, reduce_piece(comm, &zero, bucket, 0, grads)?);
                if zero.stage == ZeroStage::Stage2 {
                    release_zeroed(grads);
                }
            }
            (true, true) => std::thread::scope(|scope| -> Result<(), EngineError> {
                // Each finished piece is reduced on the communication thread while the backward goes on.
                let background = Background::start(scope, comm);
                let mut pending = Vec::new();
                let backward = model.backward_with(params, grads, 1.0 / gas, &mut |offset, piece| {
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
        let (zero, comm) = (self.zero, &self.comm);
        // 1. The window's gradients were reduced over ranks (averaged) by backward(): in place at stage 0, into
        //    this rank's partition at stages 1 and 2.
        let grads = if zero.sharded() { &mut self.grad_partition[..] } else { &mut self.grads[..zero.numel] };
        // 2. Global gradient norm: each rank's share of ‖g‖², summed over ranks when sharded.
        let mut sq = [sum_of_squares(grads) as f32];
        if zero.sharded() {
            comm.all_reduce(&mut sq, ReduceOp::Sum)?;
        }
        let grad_norm = (sq[0] as f64).sqrt();
        if !grad_norm.is_finite() {
            return Err(EngineError::NonFinite {
                step: self.counters.global_steps + 1,
                what: "the gradient norm".into(),
            });
        }
        // 3. Clip by the global norm (DeepSpeed / torch `clip_grad_norm_`: scale by clip/(‖g‖+ε) when below 1).
        if self.gradient_clipping > 0.0 {
            let coef = self.gradient_clipping / (grad_norm + CLIP_EPS);
            if coef < 1.0 {
                grads.iter_mut().for_each(|g| *g *= coef as f32);
            }
        }
        // 4. Optimizer step on the owned parameters with this step's learning rate (and OneCycle's momentum).
        let t = self.optimizer.applied_steps() as i64 - 1;
        let lr = self.schedule.lr(t, self.optimizer.base_lr());
        let betas = self.schedule.momentum(t);
        self.optimizer.apply(self.model.layout(), &mut self.params, grads, zero.owned(), lr as f32, betas);
        // 5. Sharded stages: every rank gathers the others' updated partitions.
        if zero.sharded() {
            self.gather_buffer.copy_from_slice(&self.params[zero.owned()]);
            comm.all_gather(&self.gather_buffer, &zero.counts(), &mut self.params)?;
        }
        // 6. The schedule advances with the optimizer's applied-step count (read at step 4).
        // 7. Zero gradients, agree on the window's loss, count, report.
        if zero.stage != ZeroStage::Stage2 {
            // (Stage 2's staging buffer was released, reading as zeros, when it was reduced; touching it here
            // would only bring its pages back.)
            zero_fill(&mut self.grads);
        }
        zero_fill(&mut self.grad_partition);
        let mut window = std::mem::take(&mut self.window);
        let mut loss = [window.loss_sum as f32];
        comm.all_reduce(&mut loss, ReduceOp::Avg)?;
        self.counters.micro_steps += 1;
        self.counters.global_steps += 1;
        self.counters.global_samples += self.batch.train_batch_size as u64;
        window.timings.optimizer = start.elapsed();
        Ok(Some(StepReport {
            step: self.counters.global_steps,
            loss: loss[0],
            grad_norm: grad_norm as f32,
            lr,
            skipped: false,
            tokens: window.tokens * zero.world as u64,
            timings: window.timings,
        }))
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
