//! The 16-bit storage harness of `kernels_16bit.rs` and `llama_16bit.rs` (whose module docs say what the checks
//! prove): inputs stored in `E` with their exact widenings, the tolerance of one final rounding to `E`, and the
//! bit-for-bit check that each stored value is the fp32 kernel's result rounded once.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use rustspeed_kernels::cast::Element;
use rustspeed_kernels::gradcheck::{compare, Mismatch};
use rustspeed_kernels::rng::Rng;

// ---------------------------------------------------------------------------------------------------------------
// Tolerances

/// fp16 keeps 11 significant bits: the one final rounding moves a normal value by at most 2^-11 of itself.
pub const FP16_UNIT_ROUNDOFF: f64 = 1.0 / 2048.0;
/// bf16 keeps 8 significant bits: the one final rounding moves a value by at most 2^-8 of itself.
pub const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 256.0;
/// Below fp16's smallest normal (2^-14) rounding error is absolute: half the subnormal spacing 2^-24.
pub const FP16_SUBNORMAL_ATOL: f64 = 1.0 / (1u64 << 25) as f64;
/// Covers 2δ, δ the fp32 kernel's own error relative to its result: worst seen 4.1e-7 (GELU backward), x5 margin.
pub const FP32_RTOL: f64 = 4e-6;
/// Covers 2δ for results that cancel to near zero, relative to the tensor's largest expected value (the scale of
/// the summed terms): worst seen 4.6e-7 (linear dinp), x4 margin.
pub const CANCELLATION_ATOL: f64 = 4e-6;

/// `|actual - expected| <= atol + rtol · |expected|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

/// The tolerance for values stored in `T` in a tensor whose largest expected magnitude is `scale`. With `y32` the
/// fp32 kernel's result, `δ` its error and `u` the unit roundoff, the stored `round(y32)` is within
/// `u · |y32| + δ <= u · |expected| + 2δ` of the exact result: `rtol` is `u` plus the fp32 terms, which cover `2δ`.
/// `T = f32` is for the values every precision keeps in fp32 (no final rounding).
pub fn tolerance<T: Element>(scale: f64) -> Tolerance {
    let fp32_atol = CANCELLATION_ATOL * scale;
    match T::NAME {
        "fp16" => Tolerance { atol: fp32_atol + FP16_SUBNORMAL_ATOL, rtol: FP16_UNIT_ROUNDOFF + FP32_RTOL },
        "bf16" => Tolerance { atol: fp32_atol, rtol: BF16_UNIT_ROUNDOFF + FP32_RTOL },
        "fp32" => Tolerance { atol: fp32_atol, rtol: FP32_RTOL },
        other => panic!("no tolerance for storage type {other}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Data and checks

/// One input tensor stored in `E`, with its exact widenings: what the 16-bit kernel (`e`), the fp32 kernel
/// (`f32`) and the float64 reference (`f64`) read.
#[derive(Clone)]
pub struct Tensor<E> {
    pub e: Vec<E>,
    pub f32: Vec<f32>,
    pub f64: Vec<f64>,
}

impl<E: Element> Tensor<E> {
    pub fn new(e: Vec<E>) -> Self {
        let f32: Vec<f32> = e.iter().map(|x| x.to_f32()).collect();
        let f64 = f32.iter().map(|&x| x as f64).collect();
        Tensor { e, f32, f64 }
    }

    /// Normal values times `scale`, rounded to `E`.
    pub fn randn(rng: &mut Rng, len: usize, scale: f64) -> Self {
        Self::new(round(&normals(rng, len, scale)))
    }
}

pub fn normals(rng: &mut Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.normal() * scale).collect()
}

pub fn round<E: Element>(x: &[f64]) -> Vec<E> {
    x.iter().map(|&v| E::from_f32(v as f32)).collect()
}

pub fn widen<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f32() as f64).collect()
}

pub fn zeros<T: Element>(len: usize) -> Vec<T> {
    vec![T::from_f32(0.0); len]
}

/// Output buffers start as NaN, so an element a forward fails to write shows up as a mismatch.
pub fn nans<T: Element>(len: usize) -> Vec<T> {
    vec![T::from_f32(f32::NAN); len]
}

pub fn random_tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// Compares values stored in `T` with the reference under [`tolerance`]; the error is the worst element.
pub fn close<T: Element>(actual: &[T], expected: &[f64]) -> Result<(), Mismatch> {
    let scale = expected.iter().fold(0.0, |max: f64, e| max.max(e.abs()));
    let Tolerance { atol, rtol } = tolerance::<T>(scale);
    compare(&widen(actual), expected, atol, rtol)
}

pub fn expect_close<T: Element>(kernel: &str, what: &str, actual: &[T], expected: &[f64]) {
    if let Err(mismatch) = close(actual, expected) {
        panic!("{kernel}: {what} ({}) vs the float64 reference: {mismatch}", T::NAME);
    }
}

/// The first element of `actual` that is not, bit for bit, `T::from_f32` of the fp32 kernel's value.
pub fn first_not_rounded_once<T: Element>(actual: &[T], fp32: &[f32]) -> Option<usize> {
    assert_eq!(actual.len(), fp32.len(), "compared buffers differ in length");
    // Widening is exact and keeps the sign of zero, so equal fp32 bits mean equal stored bits.
    actual.iter().zip(fp32).position(|(&a, &x)| a.to_f32().to_bits() != T::from_f32(x).to_f32().to_bits())
}

pub fn expect_rounded_once<T: Element>(kernel: &str, what: &str, actual: &[T], fp32: &[f32]) {
    if let Some(i) = first_not_rounded_once(actual, fp32) {
        panic!(
            "{kernel}: {what} ({}) element {i} is {:e}, but the fp32 kernel's {:e} rounds to {:e}",
            T::NAME,
            actual[i].to_f32(),
            fp32[i],
            T::from_f32(fp32[i]).to_f32()
        );
    }
}
