//! Matrix products with few rows (or few columns) whose wide operand is stored column-contiguous: the LSTM's
//! per-time-step `h_{t-1} W_hhᵀ` (`[B, H] x [H, 4H]` with `B` of 4). Each output element is a dot product of an
//! `lhs` row with a contiguous `rhs` column, so the wide operand streams through once without packing; the `gemm`
//! crate reads it with a stride there and was measured 15x slower on that shape (bench/README.md).

use crate::matmul::{Dst, Threads};
use crate::vmath::{dot, simd_fn};
use crate::SendPtr;
use rayon::prelude::*;

/// At most this many rows (or columns) make a product skinny.
const SKINNY: usize = 8;
/// Output columns per rayon task: each task streams `k x SKINNY_COLS` of `rhs`.
const SKINNY_COLS: usize = 128;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 16;

/// A strided matrix: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Strided {
    ptr: SendPtr,
    rs: usize,
    cs: usize,
}

impl Strided {
    fn t(self) -> Strided {
        Strided { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// `dst[m, n] = scale · lhs[m, k] · rhs[k, n]` (or `+=`) when the product is skinny with a column-contiguous wide
/// operand; returns `false`, doing nothing, for any other product.
///
/// # Safety
/// As [`crate::matmul::gemm_raw`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn try_skinny(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    scale: f32,
    mode: Dst,
    threads: Threads,
) -> bool {
    let dst = Strided { ptr: SendPtr(dst), rs: dst_rs, cs: dst_cs };
    let lhs = Strided { ptr: SendPtr(lhs as *mut f32), rs: lhs_rs, cs: lhs_cs };
    let rhs = Strided { ptr: SendPtr(rhs as *mut f32), rs: rhs_rs, cs: rhs_cs };
    let (m, n, dst, lhs, rhs) = if m <= SKINNY && rhs.rs == 1 {
        (m, n, dst, lhs, rhs)
    } else if n <= SKINNY && lhs.cs == 1 {
        // dstᵀ = rhsᵀ lhsᵀ: few rows, and the columns of lhsᵀ are lhs's contiguous rows.
        (n, m, dst.t(), rhs.t(), lhs.t())
    } else {
        return false;
    };
    if m == 0 || n == 0 || k == 0 {
        return false;
    }
    let parallel = threads == Threads::Pool && m * n * k >= PARALLEL_MIN_FLOPS && rayon::current_num_threads() > 1;
    skinny(m, n, k, dst, lhs, rhs, scale, mode == Dst::Accumulate, parallel);
    true
}

/// The product with `m <= SKINNY` and `rhs` columns contiguous; tasks own blocks of output columns.
#[allow(clippy::too_many_arguments)]
unsafe fn skinny(
    m: usize,
    n: usize,
    k: usize,
    dst: Strided,
    lhs: Strided,
    rhs: Strided,
    scale: f32,
    accumulate: bool,
    parallel: bool,
) {
    // Dense copies of the lhs rows (at most SKINNY x k), so the dot products read contiguous memory.
    let mut a = vec![0.0f32; m * k];
    for (i, row) in a.chunks_exact_mut(k).enumerate() {
        for (p, v) in row.iter_mut().enumerate() {
            *v = *lhs.ptr.get().add(i * lhs.rs + p * lhs.cs);
        }
    }
    let a = &a;
    let task = |block: usize| {
        let j0 = block * SKINNY_COLS;
        let cols = SKINNY_COLS.min(n - j0);
        let mut out = [0.0f32; SKINNY * SKINNY_COLS];
        // SAFETY: columns j0..j0+cols of rhs lie inside the operand the caller described (k rows each).
        let block = std::slice::from_raw_parts(rhs.ptr.get().add(j0 * rhs.cs), (cols - 1) * rhs.cs + k);
        dots(a, block, rhs.cs, cols, m, k, &mut out);
        for i in 0..m {
            for j in 0..cols {
                // SAFETY: (i, j0 + j) lies inside dst, and only this task writes columns j0..j0+cols.
                let d = dst.ptr.get().add(i * dst.rs + (j0 + j) * dst.cs);
                let v = scale * out[i * SKINNY_COLS + j];
                *d = if accumulate { *d + v } else { v };
            }
        }
    };
    let blocks = n.div_ceil(SKINNY_COLS);
    if parallel {
        (0..blocks).into_par_iter().for_each(task);
    } else {
        (0..blocks).for_each(task);
    }
}

simd_fn! {
    /// `out[i, j] = a_i · rhs[:, j]` for the `m` rows of `a[m, k]` and `cols` columns of `rhs`, each contiguous
    /// and `cs` apart.
    fn dots(a: &[f32], rhs: &[f32], cs: usize, cols: usize, m: usize, k: usize, out: &mut [f32]) {
        for j in 0..cols {
            let col = &rhs[j * cs..j * cs + k];
            for i in 0..m {
                out[i * SKINNY_COLS + j] = dot(&a[i * k..(i + 1) * k], col);
            }
        }
    }
}
