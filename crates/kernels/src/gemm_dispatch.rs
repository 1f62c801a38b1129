//! The choice of path for every matrix product: [`gemm_raw`] (behind the safe [`crate::matmul::gemm`] and called
//! directly by the attention kernel) hands the product to [`crate::skinny`] or [`crate::few_rows`] when its shape
//! suits them, and to the `gemm` crate otherwise.

use crate::gemm_types::{Dst, Threads};

/// Raw-pointer form of [`gemm`](crate::matmul::gemm) for kernels that hand disjoint strided pieces of one buffer
/// to parallel tasks.
///
/// # Safety
/// `dst` must be valid for writes of the `m x n` strided matrix, with no overlap among its elements and no other
/// access to them during the call; the operands must be valid for reads of `m x k` and `k x n`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    scale: f32,
    mode: Dst,
    threads: Threads,
) {
    let lhs_view = (lhs, lhs_rs, lhs_cs);
    let rhs_view = (rhs, rhs_rs, rhs_cs);
    if crate::skinny::try_skinny(m, n, k, dst, (dst_rs, dst_cs), lhs_view, rhs_view, scale, mode, threads) {
        return;
    }
    // x · Wᵀ with W's rows contiguous (nn.Linear weights) and few rows of x: the transposed product.
    let accumulate = mode == Dst::Accumulate;
    if crate::few_rows::try_few_rows(m, n, k, (dst, dst_rs, dst_cs), lhs_view, rhs_view, scale, accumulate, threads) {
        return;
    }
    let read_dst = mode == Dst::Accumulate;
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        read_dst,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        threads.parallelism(),
    );
}
