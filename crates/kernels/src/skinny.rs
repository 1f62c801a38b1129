//! Matrix products with few rows (or few columns), which stream their wide operand once without packing:
//! - [`dots`] (and, through `gemm`, [`try_skinny`]) when the wide operand is stored column-contiguous: the LSTM's
//!   per-time-step `h_{t-1} W_hhᵀ` (`[B, H] x [H, 4H]` with `B` of 4). Each output element is a dot product of an
//!   `lhs` row with a contiguous `rhs` column; the `gemm` crate reads it with a stride there and was measured 15x
//!   slower on that shape (bench/README.md).
//! - [`add_rows_product`] when it is row-major and only a block of its rows takes part: the LSTM backward's
//!   `dgates_t · W_hh`, one block of `W_hh`'s rows per task, read in place instead of through a transposed copy.

use crate::gemm_types::{Dst, Threads};
use crate::vmath::{dot, simd_fn};
use crate::SendPtr;
use rayon::prelude::*;

/// At most this many rows (or columns) make a product skinny.
pub(crate) const SKINNY: usize = 8;
/// Output columns per rayon task: each task streams `k x SKINNY_COLS` of `rhs`.
pub(crate) const SKINNY_COLS: usize = 128;
/// Below this many multiply-adds a product runs on the calling thread.
pub(crate) const PARALLEL_MIN_FLOPS: usize = 1 << 16;

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
/// As [`crate::gemm_dispatch::gemm_raw`].
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
    // `dots` reads rows with any stride; only rows with strided elements need dense copies (at most SKINNY x k).
    let copy: Vec<f32> = if lhs.cs == 1 {
        Vec::new()
    } else {
        (0..m * k).map(|e| *lhs.ptr.get().add(e / k * lhs.rs + e % k * lhs.cs)).collect()
    };
    let (a, lda) = if lhs.cs == 1 { (SendPtr(lhs.ptr.get()), lhs.rs) } else { (SendPtr(copy.as_ptr() as *mut f32), k) };
    let task = |block: usize| {
        let j0 = block * SKINNY_COLS;
        let cols = SKINNY_COLS.min(n - j0);
        let mut out = [0.0f32; DOTS_OUT];
        // SAFETY: `a` holds m rows of k, lda apart (the caller's lhs or the copy); columns j0..j0+cols of rhs lie
        // inside the operand the caller described.
        let columns = rhs.ptr.get().add(j0 * rhs.cs);
        // The next block's columns follow these (a prefetch past the operand's end is harmless).
        dots(a.get(), lda, m, columns, rhs.cs, cols, k, columns.wrapping_add(cols * rhs.cs), &mut out);
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

/// Size of [`dots`]' output block: `SKINNY` rows of `SKINNY_COLS`.
pub(crate) const DOTS_OUT: usize = SKINNY * SKINNY_COLS;

/// `out[i · SKINNY_COLS + j] = a_i · rhs_j` for `m <= SKINNY` rows `a_i` (each `k` contiguous floats, `lda` apart)
/// and `cols <= SKINNY_COLS` columns `rhs_j` (each `k` contiguous floats, `cs` apart): on AVX-512 all rows against
/// four columns per pass, so each column is read once. Each pass prefetches the next pass's columns into L2, the
/// last pass the four columns (`cs` apart) at `next`: where the caller reads next, so that its first pass does not
/// wait either (any address: a prefetch never faults).
///
/// # Safety
/// The `m` rows at `a` and the `cols` columns at `rhs` must be readable and not written during the call; the
/// memory between rows or columns is not touched (other threads may be writing it).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dots(
    a: *const f32,
    lda: usize,
    m: usize,
    rhs: *const f32,
    cs: usize,
    cols: usize,
    k: usize,
    next: *const f32,
    out: &mut [f32; DOTS_OUT],
) {
    assert!(m <= SKINNY && cols <= SKINNY_COLS);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked); the caller vouches for the rows and columns.
        unsafe {
            match m {
                1 => avx512::dots::<1>(a, lda, rhs, cs, cols, k, next, out),
                2 => avx512::dots::<2>(a, lda, rhs, cs, cols, k, next, out),
                3 => avx512::dots::<3>(a, lda, rhs, cs, cols, k, next, out),
                4 => avx512::dots::<4>(a, lda, rhs, cs, cols, k, next, out),
                5 => avx512::dots::<5>(a, lda, rhs, cs, cols, k, next, out),
                6 => avx512::dots::<6>(a, lda, rhs, cs, cols, k, next, out),
                7 => avx512::dots::<7>(a, lda, rhs, cs, cols, k, next, out),
                _ => avx512::dots::<8>(a, lda, rhs, cs, cols, k, next, out),
            }
        }
        return;
    }
    // The portable loop leaves prefetching to the hardware.
    let _ = next;
    // SAFETY: as above; each row and column is one contiguous run of k floats.
    let rows: [&[f32]; SKINNY] =
        std::array::from_fn(|i| if i < m { unsafe { std::slice::from_raw_parts(a.add(i * lda), k) } } else { &[] });
    let columns: [&[f32]; SKINNY_COLS] =
        std::array::from_fn(|j| if j < cols { unsafe { std::slice::from_raw_parts(rhs.add(j * cs), k) } } else { &[] });
    dots_portable(&rows[..m], &columns[..cols], out)
}

simd_fn! {
    /// [`dots`] one dot product at a time.
    fn dots_portable(rows: &[&[f32]], columns: &[&[f32]], out: &mut [f32; DOTS_OUT]) {
        for (j, col) in columns.iter().enumerate() {
            for (i, row) in rows.iter().enumerate() {
                out[i * SKINNY_COLS + j] = dot(row, col);
            }
        }
    }
}

/// `out_i += Σ_p a[i, p] · w_p` for `m <= SKINNY` rows of `a` (`k` contiguous floats each, `lda` apart) and the
/// `k` rows `w_p` of a row-major operand (`n` contiguous floats each, `ldw` apart), into `m` output rows (`n`
/// contiguous floats each, `ldo` apart): the product of a few rows with a block of whole rows of a matrix, as the
/// LSTM backward's `dgates_t · W_hh` restricted to one block of `W_hh`'s rows. Reads each row of `w` once per four
/// rows of `a`, with no horizontal sums.
///
/// # Safety
/// The rows at `a` and `w` must be readable and not written during the call, the `m` output rows writable and not
/// otherwise accessed; the memory between rows is not touched.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn add_rows_product(
    out: *mut f32,
    ldo: usize,
    a: *const f32,
    lda: usize,
    m: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    n: usize,
) {
    assert!(m <= SKINNY);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        for r0 in (0..m).step_by(4) {
            let (out, a) = (out.add(r0 * ldo), a.add(r0 * lda));
            // SAFETY: the CPU has AVX-512F (checked); the caller vouches for the rows.
            unsafe {
                match m - r0 {
                    1 => avx512::add_rows::<1>(out, ldo, a, lda, w, ldw, k, n),
                    2 => avx512::add_rows::<2>(out, ldo, a, lda, w, ldw, k, n),
                    3 => avx512::add_rows::<3>(out, ldo, a, lda, w, ldw, k, n),
                    _ => avx512::add_rows::<4>(out, ldo, a, lda, w, ldw, k, n),
                }
            }
        }
        return;
    }
    for i in 0..m {
        // SAFETY: as above; each row is one contiguous run.
        let (out, a) = unsafe {
            (std::slice::from_raw_parts_mut(out.add(i * ldo), n), std::slice::from_raw_parts(a.add(i * lda), k))
        };
        for (p, &x) in a.iter().enumerate() {
            // SAFETY: row p of w holds n floats.
            axpy(out, x, unsafe { std::slice::from_raw_parts(w.add(p * ldw), n) });
        }
    }
}

simd_fn! {
    /// `out += x · w`.
    fn axpy(out: &mut [f32], x: f32, w: &[f32]) {
        for (o, &v) in out.iter_mut().zip(w) {
            *o += x * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{DOTS_OUT, SKINNY_COLS};
    use std::arch::x86_64::*;

    /// Columns per pass. With up to 4 rows the `M × COLS` accumulators, the `COLS` column vectors and a row vector
    /// fit in the 32 AVX-512 registers; more rows spill some accumulators (correct, a little slower).
    const COLS: usize = 4;

    /// [`super::dots`] for exactly `M` rows: per 16 lanes of `k`, `M + COLS` loads feed `M·COLS` multiply-adds.
    /// The columns are typically rows of a matrix, a page apart, where the hardware prefetcher stops; hence the
    /// explicit prefetch of the next pass (measured on the seed LSTM's layer forward: ~15.7 -> ~14.8 ms).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dots<const M: usize>(
        a: *const f32,
        lda: usize,
        rhs: *const f32,
        cs: usize,
        cols: usize,
        k: usize,
        next: *const f32,
        out: &mut [f32; DOTS_OUT],
    ) {
        let tail = k % 16;
        let mask: __mmask16 = ((1u32 << tail) - 1) as u16;
        let mut j = 0;
        while j < cols {
            let width = COLS.min(cols - j);
            let mut acc = [[_mm512_setzero_ps(); COLS]; M];
            // Columns past `cols` repeat the last one (read, never stored), so the loop body has no branches.
            let col: [*const f32; COLS] = std::array::from_fn(|c| rhs.add((j + c.min(width - 1)) * cs));
            let ahead = if j + COLS < cols { rhs.wrapping_add((j + COLS) * cs) } else { next };
            let mut p = 0;
            while p + 16 <= k {
                for c in 0..COLS {
                    _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(c * cs + p) as *const i8);
                }
                let w: [__m512; COLS] = std::array::from_fn(|c| _mm512_loadu_ps(col[c].add(p)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_loadu_ps(a.add(r * lda + p));
                    for c in 0..COLS {
                        acc[c] = _mm512_fmadd_ps(x, w[c], acc[c]);
                    }
                }
                p += 16;
            }
            if tail > 0 {
                let w: [__m512; COLS] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, col[c].add(p)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_maskz_loadu_ps(mask, a.add(r * lda + p));
                    for c in 0..COLS {
                        acc[c] = _mm512_fmadd_ps(x, w[c], acc[c]);
                    }
                }
            }
            // Reduced with constant indices first: indexing `acc` by the run-time `width` would keep it in memory
            // (the compiler then spilled accumulators inside the loop above).
            // (Plain loops: a closure would not inherit this function's target features and is not inlined.)
            let mut sums = [[0.0f32; COLS]; M];
            for r in 0..M {
                for c in 0..COLS {
                    sums[r][c] = _mm512_reduce_add_ps(acc[r][c]);
                }
            }
            for (r, sums) in sums.iter().enumerate() {
                out[r * SKINNY_COLS + j..][..width].copy_from_slice(&sums[..width]);
            }
            j += COLS;
        }
    }

    /// Output columns per register tile of [`add_rows`]: four registers per row.
    const TILE: usize = 64;

    /// [`super::add_rows_product`] for exactly `M <= 4` rows: `M × 4` accumulators stay in registers while the
    /// tile's 64 columns of each of the `k` rows stream by; the next tile's lines of each row are prefetched
    /// meanwhile (the rows are a page apart, which the hardware prefetcher does not follow), into L2 only: rows a
    /// page apart share a handful of L1 sets, which a whole pass of them would overflow (measured: layer backward
    /// ~31 -> ~29 ms against no prefetch, ~30 with an L1 prefetch).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn add_rows<const M: usize>(
        out: *mut f32,
        ldo: usize,
        a: *const f32,
        lda: usize,
        w: *const f32,
        ldw: usize,
        k: usize,
        n: usize,
    ) {
        let mut j = 0;
        while j + TILE <= n {
            let mut acc: [[__m512; 4]; M] =
                std::array::from_fn(|r| std::array::from_fn(|c| _mm512_loadu_ps(out.add(r * ldo + j + 16 * c))));
            for p in 0..k {
                let row = w.add(p * ldw + j);
                for c in 0..4 {
                    // A prefetch never faults: past the last tile it touches the next row (wrapping_add: no
                    // out-of-bounds pointer arithmetic).
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(TILE + 16 * c) as *const i8);
                }
                let wv: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(row.add(16 * c)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + p));
                    for c in 0..4 {
                        acc[c] = _mm512_fmadd_ps(x, wv[c], acc[c]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, &v) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(r * ldo + j + 16 * c), v);
                }
            }
            j += TILE;
        }
        while j < n {
            let mask: __mmask16 = if n - j >= 16 { u16::MAX } else { ((1u32 << (n - j)) - 1) as u16 };
            let mut acc: [__m512; M] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, out.add(r * ldo + j)));
            for p in 0..k {
                let wv = _mm512_maskz_loadu_ps(mask, w.add(p * ldw + j));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * lda + p)), wv, *acc);
                }
            }
            for (r, &v) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * ldo + j), mask, v);
            }
            j += 16;
        }
    }
}
