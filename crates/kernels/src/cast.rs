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
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The slice itself when `Self` is f32, so that the fp32 path of every kernel reads and writes its buffers
    /// directly, without a copy; `None` for 16-bit types.
    fn as_f32(x: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(x: &mut [Self]) -> Option<&mut [f32]>;
}

impl Element for f32 {
    const NAME: &'static str = "fp32";
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

/// What a kernel's fp32 view of an output buffer starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// The kernel overwrites the buffer (a forward's output): the view's initial values do not matter.
    Overwrite,
    /// The kernel adds into the buffer (every backward): the view starts with the buffer's values, so the sum is
    /// formed in fp32 and rounded once.
    Accumulate,
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
        d.iter_mut().zip(s).for_each(|(d, &s)| *d = E::from_f32(d.to_f32() + s.to_f32()));
    });
}
