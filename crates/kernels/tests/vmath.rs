//! The vectorizable `exp`, `tanh`, `sigmoid` and reductions against float64 evaluations of the same functions.

use rustspeed_kernels::vmath;

/// Relative error allowed for exp/sigmoid: 4 ulp of fp32 (2^-23 ≈ 1.19e-7 each), the Cephes polynomial's bound
/// with room for the final rounding.
const REL_4ULP: f64 = 4.0 * 1.19e-7;
/// tanh near 0 is computed by its odd polynomial, elsewhere through exp: 4 ulp relative, or 1e-7 absolute where
/// tanh is close to ±1 and ulps are small.
const TANH_ABS: f64 = 1e-7;
/// Sums of 1000 terms in fp32 against float64: each of the ~log2-depth additions rounds by 2^-24.
const SUM_REL: f64 = 1e-5;

/// `count` points evenly spaced over `[lo, hi]`, plus the ends.
fn grid(lo: f64, hi: f64, count: usize) -> impl Iterator<Item = f32> {
    (0..=count).map(move |i| (lo + (hi - lo) * i as f64 / count as f64) as f32)
}

#[test]
fn exp_matches_float64_over_the_normal_range() {
    for x in grid(-87.0, 88.0, 200_000).chain([0.0, -0.0, 1e-8, -1e-8, 0.5 * std::f32::consts::LN_2]) {
        let want = (x as f64).exp();
        let got = vmath::exp(x) as f64;
        assert!(((got - want) / want).abs() <= REL_4ULP, "exp({x}) = {got}, float64 {want}");
    }
}

#[test]
fn exp_clamps_outside_the_normal_range_instead_of_overflowing() {
    assert!(vmath::exp(-1000.0) >= 0.0 && vmath::exp(-1000.0) < 1e-37);
    assert!(vmath::exp(1000.0).is_finite() && vmath::exp(1000.0) > 1e38);
    assert!(vmath::exp(f32::NAN).is_nan());
}

#[test]
fn tanh_matches_float64() {
    for x in grid(-12.0, 12.0, 200_000).chain(grid(-1e-3, 1e-3, 1000)).chain([0.625, -0.625, 0.0, 30.0, -30.0]) {
        let want = (x as f64).tanh();
        let got = vmath::tanh(x) as f64;
        let err = (got - want).abs();
        assert!(err <= TANH_ABS.max(REL_4ULP * want.abs()), "tanh({x}) = {got}, float64 {want}");
        assert_eq!(got.signum(), want.signum(), "tanh({x}) has the wrong sign");
    }
}

#[test]
fn sigmoid_matches_float64() {
    for x in grid(-80.0, 80.0, 100_000) {
        let want = 1.0 / (1.0 + (-(x as f64)).exp());
        let got = vmath::sigmoid(x) as f64;
        assert!(((got - want) / want).abs() <= REL_4ULP, "sigmoid({x}) = {got}, float64 {want}");
    }
}

#[test]
fn reductions_match_float64() {
    for len in [0, 1, 15, 16, 17, 1000] {
        let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03).collect();
        let y: Vec<f32> = (0..len).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect();
        let sum64: f64 = x.iter().map(|&v| v as f64).sum();
        let abs64: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        assert!((vmath::sum(&x) as f64 - sum64).abs() <= SUM_REL * abs64.max(1.0), "sum of {len}");
        let dot64: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        let dabs: f64 = x.iter().zip(&y).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        assert!((vmath::dot(&x, &y) as f64 - dot64).abs() <= SUM_REL * dabs.max(1.0), "dot of {len}");
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(vmath::max(&x), max, "max of {len}");
        let mut e = x.clone();
        let shift = 0.7;
        let total = vmath::exp_shifted_in_place(&mut e, shift) as f64;
        let total64: f64 = x.iter().map(|&v| (v as f64 - shift as f64).exp()).sum();
        assert!((total - total64).abs() <= SUM_REL * total64.max(1.0), "exp-shift sum of {len}");
    }
}
