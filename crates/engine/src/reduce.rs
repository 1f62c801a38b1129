//! Gradient reduction over ranks, one contiguous piece of the flat gradient buffer at a time, in buckets of at
//! most `reduce_bucket_size` elements (DeepSpeed's bucketing): stage 0 all-reduces a piece in place; stages 1
//! and 2 reduce-scatter it, each rank receiving the part that falls in its partition. Every reduction averages
//! over ranks, so the result is the gradient of the mean loss over the global batch.

use crate::zero::ZeroPlan;
use rustspeed_comm::{CommError, Communicator, ReduceOp};

/// This rank's reduced share of one bucket: where it goes in the partition, and its values.
pub(crate) type Share = (usize, Vec<f32>);

/// Reduces `piece`, which starts at element `offset` of the gradient buffer. Stage 0 reduces it in place and
/// returns nothing; sharded stages return this rank's shares, to be added into its partition ([`accumulate`]).
pub(crate) fn reduce_piece(
    comm: &dyn Communicator,
    zero: &ZeroPlan,
    bucket: usize,
    offset: usize,
    piece: &mut [f32],
) -> Result<Vec<Share>, CommError> {
    let bucket = bucket.max(1);
    let mut shares = Vec::new();
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
        let mut mine = vec![0.0; counts[zero.rank]];
        comm.reduce_scatter(chunk, &counts, &mut mine, ReduceOp::Avg)?;
        if !mine.is_empty() {
            shares.push((start.max(zero.rank * s) - zero.rank * s, mine));
        }
    }
    Ok(shares)
}

/// Adds reduced shares into the partition's gradients.
pub(crate) fn accumulate(partition: &mut [f32], shares: Vec<Share>) {
    for (at, values) in shares {
        partition[at..at + values.len()].iter_mut().zip(&values).for_each(|(acc, g)| *acc += g);
    }
}
