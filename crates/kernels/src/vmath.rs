//! Branch-free `exp`, `tanh` and `sigmoid` in fp32 that the compiler vectorizes, and the [`simd_fn!`] dispatch that
//! compiles a loop once more for AVX-512 and picks that copy at run time when the CPU has it.
//!
//! libm's `expf`/`tanhf` are scalar calls; GELU, the softmaxes and the LSTM gates spend most of their time in
//! them. The approximations here follow Cephes' `expf` (Cody–Waite range reduction `x = n ln2 + r`, a degree-6
//! polynomial for `e^r` on `|r| ≤ ln2/2`, then `2^n` built in the exponent bits) and `tanhf` (an odd polynomial
//! for `|x| < 0.625`, `1 - 2/(e^{2|x|} + 1)` beyond), both within a few ulp of the exact value (tested against
//! float64). No fused multiply-add is requested, so the vectorized copy gives bit-identical results to the
//! portable one.

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split into a part exact in fp32 and the rest (Cody–Waite), so `x - n ln2` loses no bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 · 2^23`: adding and subtracting it rounds an fp32 of magnitude below 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs are clamped to where `e^x` is a normal fp32: `2^-126 ≈ e^-87.3`, `FLT_MAX ≈ e^88.7`.
const EXP_MIN_X: f32 = -87.0;
const EXP_MAX_X: f32 = 88.0;
/// Below this magnitude `tanh` uses its odd polynomial (Cephes' switch point).
const TANH_POLY_LIMIT: f32 = 0.625;

/// `e^x` for `x` in `[-87, 88]` (clamped outside), relative error a few ulp.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN_X, EXP_MAX_X);
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Cephes expf: e^r ≈ 1 + r + r² P(r).
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * (r * r) + r + 1.0;
    // 2^n through the exponent field; n ∈ [-126, 127] after the clamp. `shifted` = 1.5·2^23 + n exactly (ulp 1
    // in that binade), so n is the difference of the bit patterns: integer arithmetic that vectorizes, where a
    // float-to-int `as` cast (saturating, NaN-checked) made the compiler convert lane by lane.
    let n_int = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    er * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// `tanh(x)`, absolute error below 1e-7 and relative error a few ulp.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    // Cephes tanhf, |x| < 0.625: x + x³ P(x²).
    let z = x * x;
    let p = -5.704_988_7e-3;
    let p = p * z + 2.063_909e-2;
    let p = p * z - 5.373_971_6e-2;
    let p = p * z + 1.333_144_2e-1;
    let p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    // Elsewhere: 1 - 2/(e^{2|x|} + 1), with the sign of x.
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < TANH_POLY_LIMIT {
        small
    } else {
        large
    }
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Defines `fn name(args)` whose body is compiled twice, portable and with AVX-512 enabled; calls pick the
/// AVX-512 copy when the CPU reports it. The body must be safe code; the copies compute the same results.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU supports every feature the copy was compiled for (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Lanes of the partial sums in [`sum`]: one AVX-512 register.
const SUM_LANES: usize = 16;

/// `Σ x` with 16 interleaved partial sums, so the loop vectorizes (a different order than a sequential sum).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; SUM_LANES];
    let chunks = x.chunks_exact(SUM_LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ x ⊙ y` with 16 interleaved partial sums.
#[inline(always)]
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f32; SUM_LANES];
    let (xc, yc) = (x.chunks_exact(SUM_LANES), y.chunks_exact(SUM_LANES));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (cx, cy) in xc.zip(yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(cx).zip(cy) {
            *a += u * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ (x - shift)²` with 16 interleaved partial sums.
#[inline(always)]
pub fn sum_squared_deviations(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; SUM_LANES];
    let chunks = x.chunks_exact(SUM_LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| (v - shift) * (v - shift)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += (v - shift) * (v - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Lanes of [`add_squares`]: two AVX-512 registers of f64.
pub const SQUARE_LANES: usize = 16;

simd_fn! {
    /// `lanes[i % SQUARE_LANES] += x[i]²` in f64 over the whole blocks of `x`; returns the remainder's `Σ x²`. A fixed
    /// order (deterministic); independent lanes, so the additions do not wait on each other. Compiled once more
    /// for AVX-512 (the gradient norm reads every gradient once per step).
    pub fn add_squares(lanes: &mut [f64; SQUARE_LANES], x: &[f32]) -> f64 {
        let mut blocks = x.chunks_exact(SQUARE_LANES);
        for block in &mut blocks {
            for (lane, &v) in lanes.iter_mut().zip(block) {
                *lane += v as f64 * v as f64;
            }
        }
        blocks.remainder().iter().map(|&v| v as f64 * v as f64).sum()
    }
}

/// Largest element (`-inf` for an empty slice), vectorizable.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; SUM_LANES];
    let chunks = x.chunks_exact(SUM_LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `x ← e^(x - shift)` in place; returns `Σ e^(x - shift)` (the softmax denominator).
#[inline(always)]
pub fn exp_shifted_in_place(x: &mut [f32], shift: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - shift);
    }
    sum(x)
}
