//! Out-of-place transpose of a row-major matrix, in 8×8 register tiles (AVX) with scalar edges: `crate::few_rows`
//! transposes its operand and result.

use rayon::prelude::*;

/// Source rows per rayon task: a task writes an `ROWS_PER_TASK`-wide column band of the destination.
const ROWS_PER_TASK: usize = 64;
/// Source columns per block within a task (see [`band_transpose`]).
const COLS_PER_BLOCK: usize = 64;

/// `dst[cols, rows] = src[rows, cols]ᵀ`, where source row `r` starts at `src + r · src_rs` and destination row
/// `c` at `dst + c · dst_rs`; on the rayon pool when `parallel`. Only the matrices' own elements are touched (the
/// gaps between rows may belong to someone else).
///
/// # Safety
/// `src` must be valid for reads of its `rows × cols` strided elements and `dst` for writes of its `cols × rows`,
/// with `src_rs ≥ cols`, `dst_rs ≥ rows`, no overlap between them and no other access to `dst`'s elements meanwhile.
pub(crate) unsafe fn transpose_raw(
    (dst, dst_rs): (*mut f32, usize),
    (src, src_rs): (*const f32, usize),
    rows: usize,
    cols: usize,
    parallel: bool,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    debug_assert!(dst_rs >= rows && src_rs >= cols, "transpose strides shorter than the rows");
    let g = Geometry { src: crate::SendPtr(src as *mut f32), src_rs, dst: crate::SendPtr(dst), dst_rs, cols };
    let task = |band: usize| {
        let (r0, r1) = (band * ROWS_PER_TASK, ((band + 1) * ROWS_PER_TASK).min(rows));
        // SAFETY: this task writes only destination columns r0..r1 (of every destination row), disjoint from the
        // other tasks'; the caller vouches for the strided matrices.
        unsafe { band_transpose(g, r0, r1) }
    };
    match parallel {
        true => (0..rows.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(task),
        false => (0..rows.div_ceil(ROWS_PER_TASK)).for_each(task),
    }
}

/// The two matrices: pointers, row strides, and the source's column count.
#[derive(Clone, Copy)]
struct Geometry {
    src: crate::SendPtr,
    src_rs: usize,
    dst: crate::SendPtr,
    dst_rs: usize,
    cols: usize,
}

/// Source rows `r0..r1` into destination columns `r0..r1`.
unsafe fn band_transpose(g: Geometry, r0: usize, r1: usize) {
    let (src, dst) = (g.src.get() as *const f32, g.dst.get());
    let full_r = r0 + (r1 - r0) / 8 * 8;
    let full_c = g.cols / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // Blocks of COLS_PER_BLOCK source columns, so that the destination rows being written (one per source
        // column) stay few enough for the TLB and L1 while the band's rows pass.
        for c0 in (0..full_c).step_by(COLS_PER_BLOCK) {
            for r in (r0..full_r).step_by(8) {
                for c in (c0..(c0 + COLS_PER_BLOCK).min(full_c)).step_by(8) {
                    avx::tile8(src.add(r * g.src_rs + c), g.src_rs, dst.add(c * g.dst_rs + r), g.dst_rs);
                }
            }
        }
        scalar(g, (r0, full_r), (full_c, g.cols));
        scalar(g, (full_r, r1), (0, g.cols));
        return;
    }
    scalar(g, (r0, r1), (0, g.cols));
}

/// Element by element: source rows `r0..r1`, columns `c0..c1`.
unsafe fn scalar(g: Geometry, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) {
    for r in r0..r1 {
        for c in c0..c1 {
            *g.dst.get().add(c * g.dst_rs + r) = *g.src.get().add(r * g.src_rs + c);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// The 8×8 block at `src` (row stride `ss`) transposed into `dst` (row stride `ds`): unpack pairs of rows,
    /// shuffle quadruples, then swap 128-bit halves (the standard AVX 8×8 transpose).
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn tile8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    /// `dst[cols, rows] = src[rows, cols]ᵀ`, both row-major and dense.
    fn transpose(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
        assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
        // SAFETY: both buffers hold rows × cols dense elements (asserted) and do not overlap (one is borrowed mutably).
        unsafe { super::transpose_raw((dst.as_mut_ptr(), rows), (src.as_ptr(), cols), rows, cols, true) }
    }

    #[test]
    fn transposes_strided_matrices_and_leaves_the_gaps_alone() {
        let (rows, cols, src_rs, dst_rs) = (19, 13, 16, 23);
        let src: Vec<f32> = (0..rows * src_rs).map(|i| i as f32).collect();
        let mut dst = vec![-1.0f32; cols * dst_rs];
        assert!(src.len() >= (rows - 1) * src_rs + cols && dst.len() >= (cols - 1) * dst_rs + rows);
        // SAFETY: the buffers hold the strided matrices (asserted) and do not overlap.
        unsafe { super::transpose_raw((dst.as_mut_ptr(), dst_rs), (src.as_ptr(), src_rs), rows, cols, false) };
        for c in 0..cols {
            for r in 0..dst_rs {
                let want = if r < rows { src[r * src_rs + c] } else { -1.0 };
                assert_eq!(dst[c * dst_rs + r], want, "({c}, {r})");
            }
        }
    }

    #[test]
    fn transposes_every_shape_exactly() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 8), (9, 17), (64, 40), (130, 67), (200, 8)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&mut dst, &src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}x{cols} at ({r}, {c})");
                }
            }
        }
    }
}
