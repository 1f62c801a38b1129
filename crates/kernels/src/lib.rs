//! rustspeed's CPU kernels: each layer's math as a `forward`/`backward` pair over plain slices.
//!
//! Every kernel stores fp32 and accumulates in fp32; matrix products go to the `gemm` crate; loops that are
//! independent across rows run on rayon. Each kernel has a float64 counterpart in [`reference`] (feature
//! `reference`, used by tests only) that the tests compare against, and those references are in turn checked
//! against central finite differences ([`gradcheck`]).
//!
//! # Shape letters
//! Used in every doc comment and variable name of the project:
//! - `B`: batch size (sequences per micro-batch)
//! - `T`: sequence length (time steps, tokens per sequence)
//! - `C`: channels (model width, `d_model`, or an LSTM layer's input width)
//! - `H`: LSTM hidden size
//! - `V`: vocabulary size
//! - `NH`: number of attention (query) heads, of head size `HS` (`C / NH` in GPT-2; Llama's `head_dim`)
//! - `NKV`: number of key/value heads in grouped-query attention (`NKV = NH` is multi-head attention)
//! - `I`: the gated MLP's intermediate width (Llama's `intermediate_size`)
//! - `L`: number of layers
//! - `N`: rows of a flattened batch, `N = B * T`
//!
//! Buffers are row-major: `[B, T, C]` means index `(b * T + t) * C + c`.

pub mod attention;
pub mod attention_decode;
pub mod cast;
pub mod embedding;
mod few_rows;
pub mod gelu;
mod gemm_dispatch;
mod gemm_types;
pub mod layernorm;
pub mod lstm;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rng;
pub mod rope;
mod skinny;
pub mod swiglu;
mod transpose;
pub mod vmath;
pub mod xent;

#[cfg(feature = "reference")]
pub mod gradcheck;
#[cfg(feature = "reference")]
pub mod reference;

/// Rows per rayon task for row-wise element kernels: large enough that scheduling costs little next to the work.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// A raw pointer that may cross into rayon tasks, for kernels whose tasks write disjoint, strided parts of one
/// buffer (each use argues the disjointness).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used to hand disjoint regions of one buffer, or read-only operands, to parallel tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Taking `self` makes closures capture the whole wrapper (which is `Sync`) rather than its raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
