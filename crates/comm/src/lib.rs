//! Communicators: the collectives data parallelism and ZeRO need, each with a timeout, so that a peer that died
//! or never came is an error naming the rank and the operation, never a hang.
//!
//! - [`SingleRank`]: world size 1, every collective is the identity.
//! - [`threads::ThreadGroup`]: ranks are threads of one process, collectives go through shared memory.
//! - `mpi::MpiComm` (feature `mpi`): one process per rank through the system's MPI.
//!
//! [`background::Background`] runs collectives asynchronously on a communication thread and hands out
//! [`background::Handle`]s to wait on.
//!
//! Every rank must call the same collectives in the same order (as with MPI or NCCL). Reductions add the ranks'
//! contributions in rank order, so every rank gets bit-identical results.

pub mod background;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

use std::fmt;
use std::time::Duration;

/// How contributions are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the world size.
    Avg,
    Max,
}

impl ReduceOp {
    /// Finishes a reduction computed as a sum: `Avg` divides by the world size (multiplying by `1/W`, as every
    /// backend does, so that results agree bit for bit).
    pub(crate) fn finish(self, buf: &mut [f32], world: usize) {
        if self == ReduceOp::Avg {
            let inv = 1.0 / world as f32;
            buf.iter_mut().for_each(|x| *x *= inv);
        }
    }

    fn combine(self, acc: f32, x: f32) -> f32 {
        match self {
            ReduceOp::Sum | ReduceOp::Avg => acc + x,
            ReduceOp::Max => acc.max(x),
        }
    }
}

/// The collective an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AllReduce,
    ReduceScatter,
    AllGather,
    Broadcast,
    Barrier,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::AllReduce => "all_reduce",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CommError {
    /// Peers did not arrive at a collective within the timeout.
    Timeout { op: Op, rank: usize, missing: Vec<usize>, waited: Duration },
    /// An earlier failure (a timeout, or a peer that left) broke the group; every later collective fails.
    Broken { op: Op, rank: usize, cause: String },
    /// Buffer sizes that do not fit the collective (a caller bug, reported rather than hidden).
    Size { op: Op, rank: usize, detail: String },
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Timeout { op, rank, missing, waited } => {
                let whom = match missing.is_empty() {
                    // MPI completes a collective or not; it cannot tell which peer is late.
                    true => "a peer (the backend cannot name it)".to_string(),
                    false => format!("rank(s) {missing:?}"),
                };
                write!(
                    f,
                    "rank {rank}: {op} timed out after {:.1}s waiting for {whom} (dead, stalled, or calling a different collective)",
                    waited.as_secs_f64()
                )
            }
            CommError::Broken { op, rank, cause } => write!(f, "rank {rank}: {op} on a broken group: {cause}"),
            CommError::Size { op, rank, detail } => write!(f, "rank {rank}: {op}: {detail}"),
        }
    }
}

impl std::error::Error for CommError {}

/// Collectives over `world_size` ranks. Buffers are fp32; `counts` give each rank's share where shares differ.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank's `buf` becomes the reduction of all ranks' `buf`.
    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError>;
    /// `input` is split into consecutive pieces of `counts[r]` elements (summing to `input.len()`); rank `r`
    /// receives in `output` (length `counts[r]`) the reduction of piece `r` over all ranks.
    fn reduce_scatter(
        &self,
        input: &[f32],
        counts: &[usize],
        output: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError>;
    /// `output` (length `Σ counts`) becomes the concatenation of every rank's `input` (rank `r`'s has
    /// `counts[r]` elements).
    fn all_gather(&self, input: &[f32], counts: &[usize], output: &mut [f32]) -> Result<(), CommError>;
    /// Every rank's `buf` becomes `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    fn barrier(&self) -> Result<(), CommError>;
}

/// World size 1: no peers, nothing to wait for.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&self, _buf: &mut [f32], _op: ReduceOp) -> Result<(), CommError> {
        Ok(())
    }

    fn reduce_scatter(
        &self,
        input: &[f32],
        counts: &[usize],
        output: &mut [f32],
        _op: ReduceOp,
    ) -> Result<(), CommError> {
        check_counts(Op::ReduceScatter, 0, 1, counts, input.len(), output.len())?;
        output.copy_from_slice(input);
        Ok(())
    }

    fn all_gather(&self, input: &[f32], counts: &[usize], output: &mut [f32]) -> Result<(), CommError> {
        check_counts(Op::AllGather, 0, 1, counts, output.len(), input.len())?;
        output.copy_from_slice(input);
        Ok(())
    }

    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<(), CommError> {
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}

/// Checks that `counts` has one entry per rank summing to `total`, and that this rank's share is `mine` long.
pub(crate) fn check_counts(
    op: Op,
    rank: usize,
    world: usize,
    counts: &[usize],
    total: usize,
    mine: usize,
) -> Result<(), CommError> {
    let size = |detail: String| Err(CommError::Size { op, rank, detail });
    if counts.len() != world {
        return size(format!("{} counts for {world} ranks", counts.len()));
    }
    if counts.iter().sum::<usize>() != total {
        return size(format!("counts {counts:?} sum to {}, the buffer has {total}", counts.iter().sum::<usize>()));
    }
    if counts[rank] != mine {
        return size(format!("this rank's share is {} elements, its buffer has {mine}", counts[rank]));
    }
    Ok(())
}

/// Equal shares of `len` elements over `world` ranks after padding `len` up to a multiple of `world`: ZeRO's
/// partition size.
pub fn partition_size(len: usize, world: usize) -> usize {
    len.div_ceil(world)
}
