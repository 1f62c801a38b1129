//! The backward of ZeRO stages 0 and 1, over the whole model copy and a gradient buffer of the whole layout
//! that accumulates the window: the gradients are reduced over ranks at the window's last micro-step, in
//! `reduce_bucket_size` buckets, after the backward or, with `overlap_comm`, piece by piece on the communication
//! thread while the backward of the earlier layers runs. (Stages 2 and 3 reduce every micro-step from per-group
//! buffers: [`crate::sharded`].)

use crate::error::EngineError;
use crate::grads::add_widened;
use crate::reduce::{accumulate, reduce_piece, Spread};
use crate::zero::ZeroPlan;
use rustspeed_comm::background::Background;
use rustspeed_comm::Communicator;
use rustspeed_kernels::cast::{Contents, Element};
use rustspeed_nn::Model;

/// How gradients are reduced over ranks (`zero_optimization.overlap_comm`, `reduce_bucket_size`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reduction {
    pub overlap: bool,
    pub bucket: usize,
}

pub(crate) struct WholeBackward<'a, E: Element> {
    pub model: &'a mut Model<E>,
    pub params: &'a [E],
    pub zero: &'a ZeroPlan,
    pub comm: &'a dyn Communicator,
    pub reduction: Reduction,
    /// The factor of the loss: the fp16 loss scale over GAS.
    pub dloss: f32,
}

impl<E: Element> WholeBackward<'_, E> {
    /// The backward into `local`; with `sum` (fp32 accumulation of 16-bit gradients) each micro-step is added
    /// into it; when `reduce`, the window's gradients are reduced: in place at stage 0, into `partition` at
    /// stage 1. `window_start`: this is the window's first micro-step.
    pub fn run(
        self,
        local: &mut [E],
        sum: Option<&mut [f32]>,
        partition: &mut [f32],
        reduce: bool,
        window_start: bool,
    ) -> Result<(), EngineError> {
        let WholeBackward { model, params, zero, comm, reduction, dloss } = self;
        let p = zero.numel;
        // The buffer the backward writes starts over (is overwritten, not first zeroed) when it holds nothing of
        // this window: at its first micro-step, and on every micro-step where it only stages this micro-step's
        // gradients (fp32 accumulation adds them into the fp32 sum).
        let contents = match window_start || sum.is_some() {
            true => Contents::Overwrite,
            false => Contents::Accumulate,
        };
        let (params, grads, bucket) = (&params[..p], &mut local[..p], reduction.bucket);
        let spread = Spread::of(zero, &zero.shards[0]);
        let mut backward = |grads| model.backward_with(params, grads, dloss, contents, &mut |_, _| {});
        match (sum, reduce, reduction.overlap) {
            // fp32 accumulation: each micro-step's 16-bit gradients are added into the fp32 sum, which is what
            // the boundary reduces (after the backward: no overlap in this mode).
            (Some(sum), _, _) => {
                backward(grads)?;
                add_widened(&mut sum[..p], grads);
                if reduce {
                    accumulate(partition, reduce_piece(comm, spread, bucket, 0, &mut sum[..p])?);
                }
            }
            (None, false, _) => backward(grads)?,
            (None, true, false) => {
                backward(grads)?;
                accumulate(partition, reduce_piece(comm, spread, bucket, 0, grads)?);
            }
            (None, true, true) => std::thread::scope(|scope| -> Result<(), EngineError> {
                // Each finished piece is reduced on the communication thread while the backward goes on.
                let background = Background::start(scope, comm);
                let mut pending = Vec::new();
                let backward = model.backward_with(params, grads, dloss, contents, &mut |offset, piece| {
                    pending.push(background.submit(move |c| reduce_piece(c, spread, bucket, offset, piece)));
                });
                // Wait for every submitted reduction even after an error, so that none is left running.
                let reduced: Vec<_> = pending.into_iter().map(|h| h.wait()).collect();
                backward?;
                for shares in reduced {
                    accumulate(partition, shares?);
                }
                Ok(())
            })?,
        }
        Ok(())
    }
}
