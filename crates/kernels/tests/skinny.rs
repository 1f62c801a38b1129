//! Products with few rows or few columns (the path that skips packing, `skinny.rs`) against a float64 product
//! written out here, for every orientation `matmul::gemm` may route there, overwrite and accumulate, with a scale.

use rustspeed_kernels::matmul::{gemm, Dst, MatMut, MatRef, Threads};
use rustspeed_kernels::rng::Rng;

/// fp32 dot products of up to 300 terms of size ~1 against float64: accumulated rounding stays well below this.
const ATOL: f64 = 5e-5;
const RTOL: f64 = 1e-4;

fn randn(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// Checks `dst = scale · lhs · rhs (+ dst0)` for an `m x k` lhs and `k x n` rhs, each stored row-major or
/// transposed, against float64.
#[allow(clippy::too_many_arguments)]
fn check(rng: &mut Rng, m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool, mode: Dst, threads: Threads) {
    let (a, b, dst0) = (randn(rng, m * k), randn(rng, k * n), randn(rng, m * n));
    let scale = 0.75f32;
    let at = |i: usize, p: usize| if lhs_t { a[p * m + i] } else { a[i * k + p] } as f64;
    let bt = |p: usize, j: usize| if rhs_t { b[j * k + p] } else { b[p * n + j] } as f64;
    let lhs = if lhs_t { MatRef::row_major(&a, k, m).t() } else { MatRef::row_major(&a, m, k) };
    let rhs = if rhs_t { MatRef::row_major(&b, n, k).t() } else { MatRef::row_major(&b, k, n) };
    let mut dst = dst0.clone();
    gemm(MatMut::row_major(&mut dst, m, n), lhs, rhs, scale, mode, threads);
    for i in 0..m {
        for j in 0..n {
            let product: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            let base = if mode == Dst::Accumulate { dst0[i * n + j] as f64 } else { 0.0 };
            let want = base + scale as f64 * product;
            let got = dst[i * n + j] as f64;
            assert!(
                (got - want).abs() <= ATOL + RTOL * want.abs(),
                "m={m} n={n} k={k} lhs_t={lhs_t} rhs_t={rhs_t} {mode:?} {threads:?}: ({i},{j}) = {got}, want {want}"
            );
        }
    }
}

#[test]
fn few_rows_and_few_columns_match_float64() {
    let mut rng = Rng::new(7);
    // Few rows with a column-contiguous rhs (rhs_t), few columns with a row-contiguous lhs, and neighbours of
    // both that take the general path; every row count 1-8 (each has its own AVX-512 kernel); sizes cross the
    // 128-column task blocks, the 4-column passes and the 16-lane vectors, and 4 x 300 x 60 is large enough to
    // run on the pool.
    let shapes = [
        (1, 1, 1),
        (2, 37, 33),
        (4, 300, 60),
        (5, 19, 16),
        (6, 64, 47),
        (7, 130, 31),
        (8, 129, 17),
        (3, 7, 300),
        (9, 40, 20),
        (300, 4, 60),
        (129, 8, 16),
    ];
    for (m, n, k) in shapes {
        for (lhs_t, rhs_t) in [(false, true), (false, false), (true, true), (true, false)] {
            for mode in [Dst::Overwrite, Dst::Accumulate] {
                for threads in [Threads::Single, Threads::Pool] {
                    check(&mut rng, m, n, k, lhs_t, rhs_t, mode, threads);
                }
            }
        }
    }
}

#[test]
fn strided_destination_of_a_skinny_product() {
    // dst is a column block of a wider buffer (row stride 10); the untouched columns must stay as they were.
    let mut rng = Rng::new(11);
    let (m, n, k) = (4, 6, 50);
    let (a, b) = (randn(&mut rng, m * k), randn(&mut rng, n * k));
    let mut buf = vec![9.0f32; m * 10];
    gemm(
        MatMut::strided(&mut buf[2..], m, n, 10, 1),
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, n, k).t(),
        1.0,
        Dst::Overwrite,
        Threads::Pool,
    );
    for i in 0..m {
        for c in 0..10 {
            let got = buf[i * 10 + c] as f64;
            if (2..2 + n).contains(&c) {
                let j = c - 2;
                let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[j * k + p] as f64).sum();
                assert!((got - want).abs() <= ATOL + RTOL * want.abs(), "({i},{j}) = {got}, want {want}");
            } else {
                assert_eq!(got, 9.0, "column {c} outside the view was written");
            }
        }
    }
}
