//! The options every matrix-product path takes: how many threads it may use ([`Threads`]) and whether it
//! overwrites or adds to its destination ([`Dst`]). Shared by the dispatcher ([`crate::gemm_dispatch`]) and the
//! paths it chooses between ([`crate::skinny`], [`crate::few_rows`], the `gemm` crate); public as
//! `rustspeed_kernels::matmul::{Threads, Dst}`.

use crate::cast::Contents;

use gemm::Parallelism;

/// How many threads a matrix product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One thread: for products issued from inside an already parallel loop (e.g. one attention head each).
    Single,
    /// All threads of the current rayon pool.
    Pool,
}

impl Threads {
    pub(crate) fn parallelism(self) -> Parallelism {
        match self {
            Threads::Single => Parallelism::None,
            Threads::Pool => Parallelism::Rayon(0),
        }
    }
}

/// Whether a product overwrites its destination or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dst {
    Overwrite,
    Accumulate,
}

impl From<Contents> for Dst {
    fn from(contents: Contents) -> Dst {
        match contents {
            Contents::Overwrite => Dst::Overwrite,
            Contents::Accumulate => Dst::Accumulate,
        }
    }
}
