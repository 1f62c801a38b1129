//! Casts to fp16/bf16 against an independent float64 rounding (round to nearest, ties to even, at the format's
//! precision), their range limits, and the overflow check.

use half::{bf16, f16};
use rustspeed_kernels::cast::{cast_from_f32, cast_to_f32, first_non_finite, Element};
use rustspeed_kernels::rng::Rng;

/// `x` rounded to a binary format with `mantissa` stored bits and minimum normal exponent `min_exp`, in f64:
/// the spacing of representable values around `x` is `2^(e - mantissa)` (`e = ⌊log2 |x|⌋`, not below `min_exp`,
/// which gives the subnormals' fixed spacing).
fn round_to_format(x: f64, mantissa: i32, min_exp: i32) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let e = x.abs().log2().floor() as i32;
    let spacing = 2f64.powi(e.max(min_exp) - mantissa);
    let q = x / spacing;
    let (floor, frac) = (q.floor(), q - q.floor());
    let rounded = if frac > 0.5 || (frac == 0.5 && floor % 2.0 != 0.0) { floor + 1.0 } else { floor };
    rounded * spacing
}

fn samples() -> Vec<f32> {
    let mut rng = Rng::new(17);
    let mut xs: Vec<f32> = (0..20_000).map(|_| (rng.normal() * 10f64.powf(rng.uniform_in(-6.0, 4.0))) as f32).collect();
    // Exact ties at both precisions: halfway between neighbours.
    xs.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)]);
    xs
}

#[test]
fn fp16_rounds_to_nearest_even_with_subnormals() {
    for x in samples().into_iter().filter(|x| x.abs() < 65504.0) {
        let got = f16::from_f32(x).to_f32() as f64;
        // fp16: 10 stored mantissa bits, normals from 2^-14.
        assert_eq!(got, round_to_format(x as f64, 10, -14), "fp16 of {x:e}");
    }
}

#[test]
fn bf16_rounds_to_nearest_even() {
    for x in samples() {
        let got = bf16::from_f32(x).to_f32() as f64;
        // bf16: 7 stored mantissa bits, fp32's exponent range.
        assert_eq!(got, round_to_format(x as f64, 7, -126), "bf16 of {x:e}");
    }
}

#[test]
fn fp16_overflows_to_infinity_past_its_range() {
    // The largest fp16 is 65504; halfway to the next step (65536) is 65520, which ties to even: infinity.
    assert_eq!(f16::from_f32(65519.0).to_f32(), 65504.0);
    assert!(f16::from_f32(65520.0).to_f32().is_infinite());
    assert!(f16::from_f32(-1e6).to_f32().is_infinite());
    assert_eq!(bf16::from_f32(1e30).to_f32(), round_to_format(1e30, 7, -126) as f32, "bf16 keeps fp32's range");
}

#[test]
fn buffer_casts_match_the_scalar_ones_and_widening_is_exact() {
    let xs = samples();
    let mut h = vec![f16::ZERO; xs.len()];
    cast_from_f32(&mut h, &xs);
    assert!(h.iter().zip(&xs).all(|(a, &x)| *a == f16::from_f32(x)));
    let mut back = vec![0.0f32; xs.len()];
    cast_to_f32(&mut back, &h);
    assert!(back.iter().zip(&h).all(|(&b, a)| b == a.to_f32()));
    let mut b16 = vec![bf16::ZERO; xs.len()];
    cast_from_f32(&mut b16, &xs);
    cast_to_f32(&mut back, &b16);
    assert!(back.iter().zip(&xs).all(|(&b, &x)| b as f64 == round_to_format(x as f64, 7, -126)));
}

#[test]
fn the_overflow_check_finds_the_first_inf_or_nan_anywhere() {
    let n = 100_003; // several tasks, the last one partial
    let clean = vec![0.5f32; n];
    assert_eq!(first_non_finite(&clean), None);
    for (at, bad) in [(0, f32::NAN), (16_384, f32::INFINITY), (n - 1, f32::NEG_INFINITY), (70_000, f32::NAN)] {
        let mut x = clean.clone();
        x[at] = bad;
        x[n - 1] = if at == n - 1 { bad } else { f32::NAN }; // a later one must not hide the first
        let expect = at.min(n - 1);
        assert_eq!(first_non_finite(&x), Some(expect), "{bad} at {at}");
    }
    let mut h = vec![f16::from_f32(1.0); n];
    cast_from_f32(&mut h[500..501], &[1e5]); // beyond fp16's range
    assert_eq!(first_non_finite(&h), Some(500));
    assert_eq!(<f16 as Element>::NAME, "fp16");
}

#[test]
fn bulk_fp16_conversions_agree_with_the_scalar_ones_on_every_pattern() {
    // Widening: all 65536 fp16 bit patterns (NaNs compared as NaNs: payload bits may be quieted differently).
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut wide = vec![0.0f32; all.len()];
    cast_to_f32(&mut wide, &all);
    for (h, &w) in all.iter().zip(&wide) {
        let want = h.to_f32();
        assert!(w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()), "{:#06x}: {w} vs {want}", h.to_bits());
    }
    // Narrowing: the samples, every fp16 value and the midpoints next to it, the range edges, the specials.
    let mut xs = samples();
    xs.extend(wide.iter().filter(|w| w.is_finite()).flat_map(|&w| [w, w * (1.0 + 2f32.powi(-11)), -w]));
    xs.extend([65519.0, 65520.0, 65535.0, -65520.0, 2f32.powi(-25), 2f32.powi(-26), -0.0, f32::INFINITY, f32::NAN]);
    xs.extend((0..16).map(|i| i as f32 * 0.1)); // lengths that are not a multiple of 16 leave a scalar tail
    let mut h = vec![f16::ZERO; xs.len()];
    cast_from_f32(&mut h, &xs);
    for (got, &x) in h.iter().zip(&xs) {
        let want = f16::from_f32(x);
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{x:e}: {got} vs {want}");
    }
}

#[test]
fn bulk_bf16_conversions_agree_with_the_scalar_ones() {
    let mut xs = samples();
    xs.extend([f32::MAX, -f32::MAX, 3.4e38, f32::MIN_POSITIVE, 1e-40, -0.0, f32::INFINITY, -f32::INFINITY, f32::NAN]);
    xs.extend((0..17).map(|i| i as f32 * 0.3)); // a length that leaves a tail
    let mut h = vec![bf16::ZERO; xs.len()];
    cast_from_f32(&mut h, &xs);
    for (got, &x) in h.iter().zip(&xs) {
        let want = bf16::from_f32(x);
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{x:e}: {got} vs {want}");
    }
    let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let mut wide = vec![0.0f32; all.len()];
    cast_to_f32(&mut wide, &all);
    for (b, &w) in all.iter().zip(&wide) {
        let want = b.to_f32();
        assert!(w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()), "{:#06x}", b.to_bits());
    }
}
