//! Storage element types and the casts between them: the building blocks of 16-bit training, where the model's
//! parameters, activations and gradients are stored as fp16 or bf16 and every kernel accumulates in fp32.
//!
//! Casts round to nearest, ties to even (IEEE 754, the `half` crate); fp16 values beyond its range (±65504)
//! become ±inf, which is what the fp16 loss scaler's overflow check ([`first_non_finite`]) detects.

pub use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;

/// Elements per rayon task of the casts and checks.
const CHUNK: usize = 1 << 14;

/// A type the model's tensors can be stored in.
pub trait Element: Copy + Default + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The DeepSpeed config's name for it (`fp32`, `fp16`, `bf16`).
    const NAME: &'static str;
    /// Whether this is fp32 itself (no separate master weights, no conversions).
    const IS_F32: bool = false;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The slice itself when `Self` is f32, so that the fp32 path of every kernel reads and writes its buffers
    /// directly, without a copy; `None` for 16-bit types.
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
    /// `dst[i] = f32(src[i])` over a run of elements (exact); types with a faster bulk conversion override it.
    fn widen_run(dst: &mut [f32], src: &[Self]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f32());
    }
    /// `dst[i] = Self(src[i])` over a run of elements, rounded to nearest even.
    fn narrow_run(dst: &mut [Self], src: &[f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = Self::from_f32(s));
    }
    fn is_finite(self) -> bool {
        self.to_f32().is_finite()
    }
}

impl Element for f32 {
    const NAME: &'static str = "fp32";
    const IS_F32: bool = true;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(x: &[Self]) -> Option<&[f32]> {
        Some(x)
    }
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]> {
        Some(x)
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
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    // The `half` crate converts fp16 in software unless the whole build targets F16C; AVX-512F has the same
    // conversions for 16 lanes (`vcvtph2ps`, `vcvtps2ph` with round-to-nearest-even), picked at run time.
    fn widen_run(dst: &mut [f32], src: &[Self]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked).
            return unsafe { fp16_avx512::widen(dst, src) };
        }
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_f32());
    }
    fn narrow_run(dst: &mut [Self], src: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked).
            return unsafe { fp16_avx512::narrow(dst, src) };
        }
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s));
    }
    fn is_finite(self) -> bool {
        // Exponent bits all ones: inf or NaN.
        self.to_bits() & 0x7C00 != 0x7C00
    }
}

#[cfg(target_arch = "x86_64")]
mod fp16_avx512 {
    use super::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen(dst: &mut [f32], src: &[f16]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 16 <= n {
            let halves = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(halves));
            i += 16;
        }
        for k in i..n {
            dst[k] = src[k].to_f32();
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn narrow(dst: &mut [f16], src: &[f32]) {
        let n = dst.len().min(src.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let halves = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, halves);
            i += 16;
        }
        for k in i..n {
            dst[k] = f16::from_f32(src[k]);
        }
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
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn is_finite(self) -> bool {
        self.to_bits() & 0x7F80 != 0x7F80
    }
    // bf16 is the upper half of an fp32: widening is a shift, narrowing a rounding add on the bits, both written
    // branch-free so that they vectorize (the `half` crate's scalar conversion branches on NaN per element).
    fn widen_run(dst: &mut [f32], src: &[Self]) {
        bf16_bulk::widen(dst, src)
    }
    fn narrow_run(dst: &mut [Self], src: &[f32]) {
        bf16_bulk::narrow(dst, src)
    }
}

mod bf16_bulk {
    use super::bf16;
    use crate::vmath::simd_fn;

    simd_fn! {
        pub(super) fn widen(dst: &mut [f32], src: &[bf16]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f32::from_bits((s.to_bits() as u32) << 16);
            }
        }
    }

    simd_fn! {
        /// Round to nearest, ties to even: add `0x7FFF` plus the lowest kept bit, keep the upper half. NaNs keep
        /// their sign and upper payload, made quiet.
        pub(super) fn narrow(dst: &mut [bf16], src: &[f32]) {
            for (d, &x) in dst.iter_mut().zip(src) {
                let bits = x.to_bits();
                let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
                let quiet_nan = ((bits >> 16) as u16) | 0x0040;
                *d = bf16::from_bits(if x.is_nan() { quiet_nan } else { rounded });
            }
        }
    }
}

/// `dst[i] = E(src[i])`, rounded to nearest even (e.g. fp32 master weights → the 16-bit model copy).
pub fn cast_from_f32<E: Element>(dst: &mut [E], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "cast between buffers of different lengths");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| E::narrow_run(d, s));
}

/// `dst[i] = f32(src[i])`, exact (e.g. 16-bit gradients → fp32 for the optimizer).
pub fn cast_to_f32<E: Element>(dst: &mut [f32], src: &[E]) {
    assert_eq!(dst.len(), src.len(), "cast between buffers of different lengths");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| E::widen_run(d, s));
}

/// Index of the first inf or NaN in `x`, if any: the fp16 overflow check (DeepSpeed tests `isinf | isnan` on
/// every gradient).
pub fn first_non_finite<E: Element>(x: &[E]) -> Option<usize> {
    x.par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(k, c)| c.iter().position(|v| !v.is_finite()).map(|i| k * CHUNK + i))
}

/// What a kernel's fp32 view of an output buffer starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// The kernel overwrites the buffer (a forward's output, a gradient a backward starts): the view's initial
    /// values do not matter.
    Overwrite,
    /// The kernel adds into the buffer (a backward into an input's gradient, or into a parameter's within an
    /// accumulation window): the view starts with the buffer's values, so the sum is formed in fp32 and rounded
    /// once.
    Accumulate,
}

impl Contents {
    /// Readies an fp32 view for a kernel that adds into it: zeroes it when the kernel is to overwrite. (A
    /// gradient the backward starts, e.g. the first micro-step of an accumulation window, need not be zeroed
    /// beforehand by a separate pass.)
    pub fn prepare(self, view: &mut [f32]) {
        if self == Contents::Overwrite {
            view.fill(0.0);
        }
    }
}

/// The fp32 values of `x`, as a kernel loads them: `x` itself in fp32, a widened copy of 16-bit storage (exact).
pub fn load<E: Element>(x: &[E]) -> Cow<'_, [f32]> {
    match E::as_f32(x) {
        Some(x) => Cow::Borrowed(x),
        None => {
            let mut wide = vec![0.0; x.len()];
            cast_to_f32(&mut wide, x);
            Cow::Owned(wide)
        }
    }
}

/// Runs `compute` on an fp32 view of `dst` and stores the result: in fp32 the view is `dst` itself; for 16-bit
/// storage it is an fp32 buffer (holding `dst`'s values when `contents` is [`Contents::Accumulate`]) whose
/// result is rounded into `dst` once, to nearest even. This is how every kernel stores 16-bit outputs: loads
/// widen, arithmetic and accumulation are fp32, each stored value is rounded once.
pub fn store<E: Element, R>(dst: &mut [E], contents: Contents, compute: impl FnOnce(&mut [f32]) -> R) -> R {
    if let Some(dst) = E::as_f32_mut(dst) {
        return compute(dst);
    }
    let mut wide = vec![0.0; dst.len()];
    if contents == Contents::Accumulate {
        cast_to_f32(&mut wide, dst);
    }
    let result = compute(&mut wide);
    cast_from_f32(dst, &wide);
    result
}

/// [`store`] for an optional output (a gradient the caller does not want is `None`).
pub fn store_opt<E: Element, R>(
    dst: Option<&mut [E]>,
    contents: Contents,
    compute: impl FnOnce(Option<&mut [f32]>) -> R,
) -> R {
    match dst {
        Some(dst) => store(dst, contents, |d| compute(Some(d))),
        None => compute(None),
    }
}

/// `dst[i] += src[i]`, summed in fp32 and rounded once (residual connections inside a layer).
pub fn add_into<E: Element>(dst: &mut [E], src: &[E]) {
    assert_eq!(dst.len(), src.len(), "add_into between buffers of different lengths");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        let (mut wide_d, mut wide_s) = ([0.0f32; RUN], [0.0f32; RUN]);
        for (d, s) in d.chunks_mut(RUN).zip(s.chunks(RUN)) {
            let n = d.len();
            E::widen_run(&mut wide_d[..n], d);
            E::widen_run(&mut wide_s[..n], s);
            wide_d[..n].iter_mut().zip(&wide_s[..n]).for_each(|(x, y)| *x += y);
            E::narrow_run(d, &wide_d[..n]);
        }
    });
}

/// Elements [`add_into`] widens at a time (two stack buffers of this many floats).
const RUN: usize = 256;
