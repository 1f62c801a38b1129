//! Storage element types and the casts between them: the building blocks of 16-bit training, where the model's
//! parameters, activations and gradients are stored as fp16 or bf16 and every kernel accumulates in fp32.
//!
//! Casts round to nearest, ties to even (IEEE 754, the `half` crate); fp16 values beyond its range (±65504)
//! become ±inf, which is what the fp16 loss scaler's overflow check ([`first_non_finite`]) detects.

use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per rayon task of the casts and checks.
const CHUNK: usize = 1 << 14;

/// A type the model's tensors can be stored in.
pub trait Element: Copy + Default + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The DeepSpeed config's name for it (`fp32`, `fp16`, `bf16`).
    const NAME: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const NAME: &'static str = "fp32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const NAME: &'static str = "fp16";
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// `dst[i] = E(src[i])`, rounded to nearest even (e.g. fp32 master weights → the 16-bit model copy).
pub fn cast_from_f32<E: Element>(dst: &mut [E], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "cast between buffers of different lengths");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = E::from_f32(s));
    });
}

/// `dst[i] = f32(src[i])`, exact (e.g. 16-bit gradients → fp32 for the optimizer).
pub fn cast_to_f32<E: Element>(dst: &mut [f32], src: &[E]) {
    assert_eq!(dst.len(), src.len(), "cast between buffers of different lengths");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = s.to_f32());
    });
}

/// Index of the first inf or NaN in `x`, if any: the fp16 overflow check (DeepSpeed tests `isinf | isnan` on
/// every gradient).
pub fn first_non_finite<E: Element>(x: &[E]) -> Option<usize> {
    x.par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(k, c)| c.iter().position(|v| !v.to_f32().is_finite()).map(|i| k * CHUNK + i))
}
