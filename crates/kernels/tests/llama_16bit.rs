//! The Llama kernels (RMSNorm, rotary position embedding, SwiGLU) with fp16 and bf16 storage, as
//! `kernels_16bit.rs` checks the others (grouped-query attention is with its attention checks): on inputs rounded to
//! the storage type, (1) every output and gradient is within one final rounding of the float64 reference, and
//! (2) equals, bit for bit, the fp32 kernel's result on the widened inputs rounded once, for gradients added into
//! pre-filled buffers too (values kept in fp32 in every precision, RMSNorm's rstd, equal the fp32 kernel's).

#[path = "common/storage.rs"]
mod storage;

use rustspeed_kernels::cast::{bf16, f16, Contents, Element};
use rustspeed_kernels::gradcheck::to_f64;
use rustspeed_kernels::reference as r;
use rustspeed_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::rope::{rope_backward, rope_forward, RopeTable, ROPE_THETA};
use rustspeed_kernels::swiglu::{swiglu_backward, swiglu_forward};
use storage::*;

/// Runs the RMSNorm backward into `grads = [dinp, dweight]` (`dinp` added to, `dweight` as `grads_mode` says).
#[allow(clippy::too_many_arguments)]
fn rmsnorm_backward_into<T: Element>(
    grads: &mut [Vec<T>; 2],
    grads_mode: Contents,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let [dinp, dweight] = grads;
    rmsnorm_backward(dinp, dweight, grads_mode, dout, inp, weight, rstd, n, c);
}

fn check_rmsnorm<E: Element>(rng: &mut Rng) {
    // 37 rows and 130 columns split unevenly into the kernel's row and column tasks.
    for (n, c, eps) in [(3, 5, 1e-5), (13, 12, 1e-6), (37, 130, 1e-5)] {
        let kernel = format!("{} rmsnorm N={n} C={c}", E::NAME);
        let inp = Tensor::<E>::randn(rng, n * c, 2.0);
        let weight = Tensor::<E>::randn(rng, c, 1.0);
        let dout = Tensor::<E>::randn(rng, n * c, 1.0);

        let (mut out, mut rstd) = (nans::<E>(n * c), nans::<f32>(n));
        rmsnorm_forward(&mut out, &mut rstd, &inp.e, &weight.e, n, c, eps);
        let (mut ref_out, mut ref_rstd) = (vec![f64::NAN; n * c], vec![f64::NAN; n]);
        r::rmsnorm_forward(&mut ref_out, &mut ref_rstd, &inp.f64, &weight.f64, n, c, eps as f64);
        expect_close(&kernel, "out", &out, &ref_out);
        expect_close(&kernel, "rstd", &rstd, &ref_rstd);
        let (mut out32, mut rstd32) = (nans::<f32>(n * c), nans::<f32>(n));
        rmsnorm_forward(&mut out32, &mut rstd32, &inp.f32, &weight.f32, n, c, eps);
        expect_rounded_once(&kernel, "out", &out, &out32);
        expect_rounded_once(&kernel, "rstd", &rstd, &rstd32);

        let mut grads = [zeros::<E>(n * c), zeros(c)];
        rmsnorm_backward_into(&mut grads, Contents::Accumulate, &dout.e, &inp.e, &weight.e, &rstd, n, c);
        let mut expected = [vec![0.0; n * c], vec![0.0; c]];
        let [dinp, dweight] = &mut expected;
        r::rmsnorm_backward(dinp, dweight, &dout.f64, &inp.f64, &weight.f64, &widen(&rstd), n, c);
        for ((grad, expected), name) in grads.iter().zip(&expected).zip(["dinp", "dweight"]) {
            expect_close(&kernel, name, grad, expected);
        }
        // Overwriting a dweight of NaNs gives what adding into zeros gave.
        let mut overwritten = [zeros::<E>(n * c), nans(c)];
        rmsnorm_backward_into(&mut overwritten, Contents::Overwrite, &dout.e, &inp.e, &weight.e, &rstd, n, c);
        let zero_start: Vec<f32> = grads[1].iter().map(|g| g.to_f32()).collect();
        expect_rounded_once(&kernel, "dweight overwritten", &overwritten[1], &zero_start);

        let prefill = [n * c, c].map(|len| Tensor::<E>::randn(rng, len, 1.0));
        let mut grads = prefill.clone().map(|g| g.e);
        let mut grads32 = prefill.map(|g| g.f32);
        let add = Contents::Accumulate;
        rmsnorm_backward_into(&mut grads, add, &dout.e, &inp.e, &weight.e, &rstd, n, c);
        rmsnorm_backward_into(&mut grads32, add, &dout.f32, &inp.f32, &weight.f32, &rstd, n, c);
        for ((grad, grad32), name) in grads.iter().zip(&grads32).zip(["dinp", "dweight"]) {
            expect_rounded_once(&kernel, &format!("{name} added into a pre-filled buffer"), grad, grad32);
        }
    }
}

/// Where the rotated heads sit in each row (see [`rope_forward`]).
#[derive(Clone, Copy)]
struct RopeSpan {
    heads: usize,
    row_stride: usize,
    col_offset: usize,
}

/// [`rope_forward`], or [`rope_backward`] when `backward`, in place.
fn rotate<T: Element>(x: &mut [T], backward: bool, table: &RopeTable, b: usize, t: usize, span: RopeSpan) {
    let RopeSpan { heads, row_stride, col_offset } = span;
    match backward {
        false => rope_forward(x, table, b, t, heads, row_stride, col_offset),
        true => rope_backward(x, table, b, t, heads, row_stride, col_offset),
    }
}

fn check_rope<E: Element>(rng: &mut Rng) {
    // (B, T, NH, NKV, D): the q part and the k part of packed [q | k | v] rows; columns outside them stay as they
    // are (the bit-for-bit check covers them).
    for (b, t, nh, nkv, d) in [(1, 3, 2, 2, 4), (2, 9, 4, 2, 6), (3, 20, 6, 2, 10)] {
        let row_stride = (nh + 2 * nkv) * d;
        let table = RopeTable::new(d, t, ROPE_THETA);
        let cos: Vec<f64> = (0..t).flat_map(|p| to_f64(table.cos(p))).collect();
        let sin: Vec<f64> = (0..t).flat_map(|p| to_f64(table.sin(p))).collect();
        for (heads, col_offset) in [(nh, 0), (nkv, nh * d)] {
            let kernel = format!("{} rope B={b} T={t} D={d} heads={heads} at column {col_offset}", E::NAME);
            let x = Tensor::<E>::randn(rng, b * t * row_stride, 1.0);
            let span = RopeSpan { heads, row_stride, col_offset };
            for backward in [false, true] {
                let what = if backward { "dx" } else { "out" };
                let mut out = x.e.clone();
                rotate(&mut out, backward, &table, b, t, span);
                let mut expected = x.f64.clone();
                let reference = if backward { r::rope_backward } else { r::rope_forward };
                reference(&mut expected, &cos, &sin, d, b, t, heads, row_stride, col_offset);
                expect_close(&kernel, what, &out, &expected);
                let mut out32 = x.f32.clone();
                rotate(&mut out32, backward, &table, b, t, span);
                expect_rounded_once(&kernel, what, &out, &out32);
            }
        }
    }
}

fn check_swiglu<E: Element>(rng: &mut Rng) {
    for (n, i) in [(1, 3), (5, 7), (37, 130)] {
        let kernel = format!("{} swiglu N={n} I={i}", E::NAME);
        let gate_up = Tensor::<E>::randn(rng, n * 2 * i, 3.0);
        let dout = Tensor::<E>::randn(rng, n * i, 1.0);

        let mut out = nans::<E>(n * i);
        swiglu_forward(&mut out, &gate_up.e, n, i);
        let mut expected = vec![f64::NAN; n * i];
        r::swiglu_forward(&mut expected, &gate_up.f64, n, i);
        expect_close(&kernel, "out", &out, &expected);
        let mut out32 = nans::<f32>(n * i);
        swiglu_forward(&mut out32, &gate_up.f32, n, i);
        expect_rounded_once(&kernel, "out", &out, &out32);

        let mut dgate_up = zeros::<E>(n * 2 * i);
        swiglu_backward(&mut dgate_up, &dout.e, &gate_up.e, n, i);
        let mut expected = vec![0.0; n * 2 * i];
        r::swiglu_backward(&mut expected, &dout.f64, &gate_up.f64, n, i);
        expect_close(&kernel, "dgate_up", &dgate_up, &expected);

        let prefill = Tensor::<E>::randn(rng, n * 2 * i, 1.0);
        let (mut dgate_up, mut dgate_up32) = (prefill.e, prefill.f32);
        swiglu_backward(&mut dgate_up, &dout.e, &gate_up.e, n, i);
        swiglu_backward(&mut dgate_up32, &dout.f32, &gate_up.f32, n, i);
        expect_rounded_once(&kernel, "dgate_up added into a pre-filled buffer", &dgate_up, &dgate_up32);
    }
}

#[test]
fn rmsnorm() {
    let mut rng = Rng::new(31);
    check_rmsnorm::<f16>(&mut rng);
    check_rmsnorm::<bf16>(&mut rng);
}

#[test]
fn rope() {
    let mut rng = Rng::new(32);
    check_rope::<f16>(&mut rng);
    check_rope::<bf16>(&mut rng);
}

#[test]
fn swiglu() {
    let mut rng = Rng::new(33);
    check_swiglu::<f16>(&mut rng);
    check_swiglu::<bf16>(&mut rng);
}
