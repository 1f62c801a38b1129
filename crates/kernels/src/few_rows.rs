//! Products `x[M, K] · Wᵀ` with a few hundred rows of `x` and a weight `W[N, K]` stored row-major (PyTorch's
//! `nn.Linear` orientation): the LSTM's input projection and output head, where `M = B·T`. The `gemm` crate reads
//! such a right operand (column-contiguous) at about half its speed when `M` is small; with both operands
//! row-major it runs at full speed. So the product is computed transposed, `outᵀ[N, M] = W · xᵀ`, from a
//! transposed copy of `x`, and the result is transposed back: two copies of `M·K` and `N·M` floats against a
//! product of `2·M·N·K` flops (measured 128×1024 · (4096×1024)ᵀ: 12–14 ms directly, 6.3–6.6 ms this way;
//! bench/README.md).

use crate::gemm_types::Threads;
use crate::transpose::transpose_raw;
use rayon::prelude::*;

/// Products whose left operand has at most this many rows take this path (measured: at 512 rows it is as fast as
/// the direct product, at 1024 slower).
const MAX_ROWS: usize = 512;
/// Products summing fewer terms per output (e.g. attention's `q · kᵀ` over a head's 64 channels) stay with the
/// `gemm` crate: the copies are paid per output, the speedup per multiply-add.
const MIN_DEPTH: usize = 256;
/// Below this many multiply-adds the copies are not worth it.
const MIN_FLOPS: usize = 1 << 20;
/// Side of the square tiles of the transposes.
const TILE: usize = 32;

/// `dst[m, n] = scale · lhs[m, k] · rhs[k, n]` (or `+=` when `accumulate`) for a column-contiguous `rhs`
/// (`rhs_rs == 1`), through the transposed product; returns `false`, doing nothing, when the shape does not
/// qualify.
///
/// # Safety
/// As [`crate::gemm_dispatch::gemm_raw`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn try_few_rows(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
    accumulate: bool,
    threads: Threads,
) -> bool {
    let (rhs_ptr, rhs_rs, rhs_cs) = rhs;
    if rhs_rs != 1 || rhs_cs < k || m > MAX_ROWS || k < MIN_DEPTH || m * n * k < MIN_FLOPS {
        return false;
    }
    let parallel = threads == Threads::Pool;
    // xᵀ[k, m]: element (p, i) = lhs(i, p); 8×8 AVX tiles when lhs's rows are contiguous.
    let mut xt = vec![0.0f32; k * m];
    let (lhs_ptr, lhs_rs, lhs_cs) = lhs;
    if lhs_cs == 1 {
        // SAFETY: the caller vouches for lhs's m × k strided elements; xt is a fresh dense k × m buffer.
        transpose_raw((xt.as_mut_ptr(), m), (lhs_ptr, lhs_rs), m, k, parallel);
    } else {
        gather_transposed(&mut xt, lhs, m, k, parallel);
    }
    // outᵀ[n, m] = W[n, k] · xᵀ[k, m], W's rows being rhs's contiguous columns.
    let mut out_t = vec![0.0f32; n * m];
    gemm::gemm(
        n,
        m,
        k,
        out_t.as_mut_ptr(),
        1,
        m as isize,
        false,
        rhs_ptr,
        1,
        rhs_cs as isize,
        xt.as_ptr(),
        1,
        m as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        threads.parallelism(),
    );
    // dst(i, j) = scale · outᵀ(j, i) (+ dst(i, j)): transposed straight into a plain destination, else into a
    // dense `out` that is then scaled and added row by row.
    let (dst_ptr, dst_rs, dst_cs) = dst;
    if dst_cs == 1 && !accumulate && scale == 1.0 {
        // SAFETY: the caller vouches for dst's m × n strided elements (and nothing else touches them); out_t is a
        // dense n × m buffer of this function.
        transpose_raw((dst_ptr, dst_rs), (out_t.as_ptr(), m), n, m, parallel);
        return true;
    }
    let mut out = vec![0.0f32; m * n];
    // SAFETY: out_t and out are this function's dense n × m and m × n buffers.
    transpose_raw((out.as_mut_ptr(), n), (out_t.as_ptr(), m), n, m, parallel);
    let dst = crate::SendPtr(dst_ptr);
    let row = |i: usize| {
        let values = &out[i * n..(i + 1) * n];
        if dst_cs == 1 {
            // SAFETY: row i of the destination is n contiguous elements inside it; only this task writes row i.
            let d = std::slice::from_raw_parts_mut(dst.get().add(i * dst_rs), n);
            match accumulate {
                true => d.iter_mut().zip(values).for_each(|(d, &v)| *d += scale * v),
                false => d.iter_mut().zip(values).for_each(|(d, &v)| *d = scale * v),
            }
            return;
        }
        for (j, &v) in values.iter().enumerate() {
            // SAFETY: (i, j) lies inside the m×n destination; only this task writes row i.
            let d = dst.get().add(i * dst_rs + j * dst_cs);
            *d = if accumulate { *d + scale * v } else { scale * v };
        }
    };
    run_blocks(m, parallel, row);
    true
}

/// `dst[k, m] = src[m, k]ᵀ` for a `src` with any strides, element by element in square tiles.
unsafe fn gather_transposed(
    dst: &mut [f32],
    (src, rs, cs): (*const f32, usize, usize),
    m: usize,
    k: usize,
    parallel: bool,
) {
    let src = crate::SendPtr(src as *mut f32);
    let fill = |(block, out): (usize, &mut [f32])| {
        let p0 = block * TILE;
        for i0 in (0..m).step_by(TILE) {
            for p in p0..(p0 + TILE).min(k) {
                for i in i0..(i0 + TILE).min(m) {
                    // SAFETY: (i, p) lies inside the m×k operand the caller described.
                    out[(p - p0) * m + i] = *src.get().add(i * rs + p * cs);
                }
            }
        }
    };
    match parallel {
        true => dst.par_chunks_mut(TILE * m).enumerate().for_each(fill),
        false => dst.chunks_mut(TILE * m).enumerate().for_each(fill),
    }
}

fn run_blocks(blocks: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    match parallel {
        true => (0..blocks).into_par_iter().for_each(f),
        false => (0..blocks).for_each(f),
    }
}
