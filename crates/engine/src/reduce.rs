//! Gradient reduction over ranks, one contiguous piece of the flat gradient buffer at a time, in buckets of at
//! most `reduce_bucket_size` elements (DeepSpeed's bucketing): stage 0 all-reduces a piece in place; stages 1
//! and 2 reduce-scatter it, each rank receiving the part that falls in its partition. Every reduction averages
//! over ranks, so the result is the gradient of the mean loss over the global batch.

use crate::zero::ZeroPlan;
use rustspeed_comm::{CommError, Communicator, ReduceOp};

/// Reduces `piece`, which starts at element `offset` of the gradient buffer. Sharded stages add this rank's
/// share into `partition` (the reduced gradients of its partition); `scratch` holds the reduce-scatter result.
pub(crate) fn reduce_piece(
    comm: &dyn Communicator,
    zero: &ZeroPlan,
    bucket: usize,
    offset: usize,
    piece: &mut [f32],
    partition: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), CommError> {
    let bucket = bucket.max(1);
    for (k, chunk) in piece.chunks_mut(bucket).enumerate() {
        if !zero.sharded() {
            comm.all_reduce(chunk, ReduceOp::Avg)?;
            continue;
        }
        let (start, end) = (offset + k * bucket, offset + k * bucket + chunk.len());
        let s = zero.partition;
        // The chunk splits into consecutive pieces by owner (partitions are contiguous and in rank order).
        let counts: Vec<usize> =
            (0..zero.world).map(|r| end.min((r + 1) * s).saturating_sub(start.max(r * s))).collect();
        let mine = counts[zero.rank];
        scratch.resize(mine, 0.0);
        comm.reduce_scatter(chunk, &counts, scratch, ReduceOp::Avg)?;
        if mine > 0 {
            let local = start.max(zero.rank * s) - zero.rank * s;
            partition[local..local + mine].iter_mut().zip(scratch.iter()).for_each(|(acc, g)| *acc += g);
        }
    }
    Ok(())
}
