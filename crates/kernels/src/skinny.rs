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

/// `out[i, j] = a_i · rhs[:, j]` for the `m` rows of `a[m, k]` and `cols` columns of `rhs`, each contiguous and
/// `cs` apart: on AVX-512 all rows against four columns per pass, so each column is read once.
fn dots(a: &[f32], rhs: &[f32], cs: usize, cols: usize, m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked); the slices hold m rows of k and `cols` columns `cs` apart.
        unsafe {
            match m {
                1 => avx512::dots::<1>(a, rhs, cs, cols, k, out),
                2 => avx512::dots::<2>(a, rhs, cs, cols, k, out),
                3 => avx512::dots::<3>(a, rhs, cs, cols, k, out),
                4 => avx512::dots::<4>(a, rhs, cs, cols, k, out),
                5 => avx512::dots::<5>(a, rhs, cs, cols, k, out),
                6 => avx512::dots::<6>(a, rhs, cs, cols, k, out),
                7 => avx512::dots::<7>(a, rhs, cs, cols, k, out),
                _ => avx512::dots::<8>(a, rhs, cs, cols, k, out),
            }
        }
        return;
    }
    dots_portable(a, rhs, cs, cols, m, k, out)
}

simd_fn! {
    /// [`dots`] one dot product at a time.
    fn dots_portable(a: &[f32], rhs: &[f32], cs: usize, cols: usize, m: usize, k: usize, out: &mut [f32]) {
        for j in 0..cols {
            let col = &rhs[j * cs..j * cs + k];
            for i in 0..m {
                out[i * SKINNY_COLS + j] = dot(&a[i * k..(i + 1) * k], col);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::SKINNY_COLS;
    use std::arch::x86_64::*;

    /// Columns per pass. With up to 4 rows the `M × COLS` accumulators, the `COLS` column vectors and a row vector
    /// fit in the 32 AVX-512 registers; more rows spill some accumulators (correct, a little slower).
    const COLS: usize = 4;

    /// [`super::dots`] for exactly `M` rows: per 16 lanes of `k`, `M + COLS` loads feed `M·COLS` multiply-adds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots<const M: usize>(
        a: &[f32],
        rhs: &[f32],
        cs: usize,
        cols: usize,
        k: usize,
        out: &mut [f32],
    ) {
        assert!(a.len() >= M * k && (cols == 0 || rhs.len() >= (cols - 1) * cs + k) && out.len() >= M * SKINNY_COLS);
        let (a, rhs) = (a.as_ptr(), rhs.as_ptr());
        let tail = k % 16;
        let mask: __mmask16 = ((1u32 << tail) - 1) as u16;
        let mut j = 0;
        while j < cols {
            let width = COLS.min(cols - j);
            let mut acc = [[_mm512_setzero_ps(); COLS]; M];
            // Columns past `cols` repeat the last one (read, never stored), so the loop body has no branches.
            let col: [*const f32; COLS] = std::array::from_fn(|c| rhs.add((j + c.min(width - 1)) * cs));
            let mut p = 0;
            while p + 16 <= k {
                let w: [__m512; COLS] = std::array::from_fn(|c| _mm512_loadu_ps(col[c].add(p)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_loadu_ps(a.add(r * k + p));
                    for c in 0..COLS {
                        acc[c] = _mm512_fmadd_ps(x, w[c], acc[c]);
                    }
                }
                p += 16;
            }
            if tail > 0 {
                let w: [__m512; COLS] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, col[c].add(p)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_maskz_loadu_ps(mask, a.add(r * k + p));
                    for c in 0..COLS {
                        acc[c] = _mm512_fmadd_ps(x, w[c], acc[c]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, &v) in acc.iter().enumerate().take(width) {
                    out[r * SKINNY_COLS + j + c] = _mm512_reduce_add_ps(v);
                }
            }
            j += COLS;
        }
    }
}
