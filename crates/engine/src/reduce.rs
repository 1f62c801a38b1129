//! Gradient reduction over ranks, one contiguous piece of gradients at a time (a piece of the whole buffer, or a
//! parameter group's own buffer), in buckets of at most `reduce_bucket_size` elements (DeepSpeed's bucketing):
//! stage 0 all-reduces a piece in place; stages 1-3 reduce-scatter it, each rank receiving the part that falls in
//! its share of the shard. Every reduction averages over ranks, so the result is the gradient of the mean loss over
//! the global batch. Also the all-gather of stages 1-2's updated parameters.

use crate::zero::{Shard, ZeroPlan};
use rustspeed_comm::{CommError, Communicator, ReduceOp};
use rustspeed_kernels::cast::{cast_from_f32, load, store, Contents, Element};

/// This rank's reduced share of one bucket: where it goes in the partition, and its values.
pub(crate) type Share = (usize, Vec<f32>);

/// How a reduction spreads over the ranks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Spread<'a> {
    /// Stage 0: every rank keeps the whole average (all-reduce in place).
    Everywhere,
    /// Stages 1-3: each rank keeps the average of the part of `shard` it owns (reduce-scatter).
    Sharded { shard: &'a Shard, rank: usize, world: usize },
}

impl<'a> Spread<'a> {
    /// The spread of gradients over the span of `shard` under `zero`.
    pub(crate) fn of(zero: &ZeroPlan, shard: &'a Shard) -> Self {
        match zero.sharded() {
            false => Spread::Everywhere,
            true => Spread::Sharded { shard, rank: zero.rank, world: zero.world },
        }
    }
}

/// Reduces `piece`, which starts at element `offset` of the layout (and may run into the shard's padding).
/// Stage 0 reduces it in place and returns nothing; sharded stages return this rank's shares, to be added into
/// its partition ([`accumulate`]). 16-bit gradients travel as fp32 (exact) and are averaged in fp32; stage 0
/// rounds the average back into place.
pub(crate) fn reduce_piece<E: Element>(
    comm: &dyn Communicator,
    spread: Spread,
    bucket: usize,
    offset: usize,
    piece: &mut [E],
) -> Result<Vec<Share>, CommError> {
    let bucket = bucket.max(1);
    let mut shares = Vec::new();
    for (k, chunk) in piece.chunks_mut(bucket).enumerate() {
        let Spread::Sharded { shard, rank, world } = spread else {
            store(chunk, Contents::Accumulate, |chunk| comm.all_reduce(chunk, ReduceOp::Avg))?;
            continue;
        };
        let wide;
        let chunk: &[f32] = match E::as_f32(chunk) {
            Some(chunk) => chunk,
            None => {
                wide = load(chunk).into_owned();
                &wide
            }
        };
        // Positions relative to the shard's span; the chunk splits into consecutive pieces by owner (shares are
        // contiguous and in rank order).
        let start = offset + k * bucket - shard.span.start;
        let end = start + chunk.len();
        let s = shard.size;
        let counts: Vec<usize> = (0..world).map(|r| end.min((r + 1) * s).saturating_sub(start.max(r * s))).collect();
        let mut mine = vec![0.0; counts[rank]];
        comm.reduce_scatter(chunk, &counts, &mut mine, ReduceOp::Avg)?;
        if !mine.is_empty() {
            shares.push((shard.at + start.max(rank * s) - rank * s, mine));
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

/// Elements of each rank's partition per all-gather of 16-bit parameters (which travel as fp32): bounds the
/// temporary fp32 buffer to `world · GATHER_CHUNK` elements.
const GATHER_CHUNK: usize = 1 << 20;

/// Every rank's updated partition of the model copy into `params` (padded, `W · S`), from this rank's
/// `partition` (`S` elements). fp32 gathers in one call into `params`; 16-bit values travel as fp32 (exact both
/// ways) in chunks. `gather_buffer` is reused across steps.
pub(crate) fn gather_params<E: Element>(
    comm: &dyn Communicator,
    zero: &ZeroPlan,
    params: &mut [E],
    gather_buffer: &mut Vec<f32>,
) -> Result<(), CommError> {
    let s = zero.partition;
    if let Some(params) = E::as_f32_mut(params) {
        gather_buffer.clear();
        gather_buffer.extend_from_slice(&params[zero.owned()]);
        return comm.all_gather(gather_buffer, &zero.shards[0].counts(zero.world), params);
    }
    let mut at = 0;
    while at < s {
        let len = GATHER_CHUNK.min(s - at);
        let mine = load(&params[zero.rank * s + at..zero.rank * s + at + len]);
        gather_buffer.resize(zero.world * len, 0.0);
        comm.all_gather(&mine, &vec![len; zero.world], gather_buffer)?;
        for (r, values) in gather_buffer.chunks(len).enumerate() {
            cast_from_f32(&mut params[r * s + at..r * s + at + len], values);
        }
        at += len;
    }
    Ok(())
}
