//! The float64-reference harness of the fp32 kernel tests (`kernels.rs`, `llama.rs`): a [`Case`] wraps one
//! kernel, its inputs and two runs with one signature, the reference in f64 and the fused kernel in fp32 (inputs
//! narrowed, results widened). [`check`] then (a) gradchecks the reference (small cases), (b) compares the fused
//! outputs and gradients with the reference's, and (c) checks that the fused backward adds into pre-filled
//! gradient buffers. Output buffers start as NaN, so an output element a forward fails to write shows up as a
//! mismatch.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use rustspeed_kernels::cast::Contents;
use rustspeed_kernels::gradcheck::{compare, numeric_gradient, to_f64};
use rustspeed_kernels::rng::Rng;

/// Central-difference step: truncation error ~ε²·|f'''| ≈ 1e-10, rounding error ~1e-16·|f|/ε ≈ 1e-11·|f|.
pub const FD_EPS: f64 = 1e-5;
/// Floor for gradients near zero: the rounding error above, for losses up to ~100.
pub const FD_ATOL: f64 = 1e-8;
/// Both finite-difference error terms are far below 1e-6 of a gradient of order one.
pub const FD_RTOL: f64 = 1e-6;
/// fp32 sums of ~100 order-one terms (linear N=128) that cancel to near zero keep ~1e-5 absolute error.
pub const FP32_ATOL: f64 = 5e-5;
/// fp32 accumulation over sums of up to a few hundred terms (reductions over rows, T·HS, C), ~100 ulps.
pub const FP32_RTOL: f64 = 1e-4;
/// Pre-filled buffers change fp32 rounding: row sums (dbias, N=128) round every partial sum at the prefill's scale.
pub const ACC_ATOL: f64 = 5e-5;
/// A backward that overwrote instead of adding would be off by the prefill itself, of order one.
pub const ACC_RTOL: f64 = 1e-6;
/// Finite differences cost two forwards per input element, so only small cases are gradchecked.
pub const GRADCHECK_MAX_INPUTS: usize = 1000;

pub type Tensors = Vec<Vec<f64>>;
/// One kernel run: returns the outputs (the test loss differentiates the first) and, given that output's
/// gradient `dout`, adds the inputs' gradients into `grads` (one buffer per input; untouched when `dout` is None).
pub type Run = Box<dyn Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>]) -> Tensors>;
/// A fused kernel's run: as [`Run`], with the parameters' gradients written as the [`Contents`] says (the inputs'
/// gradients are always added). To overwrite, the run first fills its parameters' gradients with NaN: what they
/// held must not matter.
pub type Fused = Box<dyn Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>], Contents) -> Tensors>;

pub struct Case {
    pub name: String,
    pub inputs: Tensors,
    pub input_names: &'static [&'static str],
    pub output_names: &'static [&'static str],
    pub reference: Run,
    pub fused: Fused,
}

pub fn run64(f: impl Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>]) -> Tensors + 'static) -> Run {
    Box::new(f)
}

/// Wraps an fp32 run: narrows inputs, `dout` and gradients (keeping any pre-filled values), widens results.
pub fn run32(f: impl Fn(&[Vec<f32>], Option<&[f32]>, &mut [Vec<f32>], Contents) -> Vec<Vec<f32>> + 'static) -> Fused {
    Box::new(move |ins, dout, grads, mode| {
        let narrow_all = |ts: &[Vec<f64>]| ts.iter().map(|t| narrow(t)).collect::<Vec<_>>();
        let mut g32 = narrow_all(grads);
        let outs = f(&narrow_all(ins), dout.map(narrow).as_deref(), &mut g32, mode);
        for (g, g32) in grads.iter_mut().zip(&g32) {
            *g = to_f64(g32);
        }
        outs.iter().map(|o| to_f64(o)).collect()
    })
}

pub fn narrow(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Normal values times `scale`, rounded to fp32 so that both runs see exactly the same data.
pub fn randn(rng: &mut Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| (rng.normal() * scale) as f32 as f64).collect()
}

pub fn random_tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// Before a run that overwrites parameter gradients: fills them with NaN, which must not survive.
pub fn nan_if_overwritten<'a>(mode: Contents, grads: impl IntoIterator<Item = &'a mut Vec<f32>>) {
    if mode == Contents::Overwrite {
        grads.into_iter().for_each(|g| g.fill(f32::NAN));
    }
}

pub fn zeros_like(ts: &[Vec<f64>]) -> Tensors {
    ts.iter().map(|t| vec![0.0; t.len()]).collect()
}

pub fn expect_close(case: &str, what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    if let Err(m) = compare(actual, expected, atol, rtol) {
        panic!("{case}: {what}: {m}");
    }
}

/// Runs (a), (b) and (c) of the module doc on one case.
pub fn check(case: &Case, rng: &mut Rng) {
    let name = &case.name;
    let ref_outs = (case.reference)(&case.inputs, None, &mut []);
    let dout = randn(rng, ref_outs[0].len(), 1.0);
    let mut ref_grads = zeros_like(&case.inputs);
    (case.reference)(&case.inputs, Some(&dout), &mut ref_grads);

    // (a) reference backward vs finite differences of loss = Σ out ⊙ dout.
    if case.inputs.iter().map(Vec::len).sum::<usize>() <= GRADCHECK_MAX_INPUTS {
        for (k, input_name) in case.input_names.iter().enumerate() {
            let mut probe = case.inputs.clone();
            let loss = |x: &[f64]| {
                probe[k].copy_from_slice(x);
                (case.reference)(&probe, None, &mut [])[0].iter().zip(&dout).map(|(o, g)| o * g).sum::<f64>()
            };
            let numeric = numeric_gradient(loss, &case.inputs[k], FD_EPS);
            expect_close(
                name,
                &format!("reference d{input_name} vs finite differences"),
                &ref_grads[k],
                &numeric,
                FD_ATOL,
                FD_RTOL,
            );
        }
    }

    // (b) fused fp32 forward and backward vs the reference, overwriting the parameters' gradients.
    let mut grads = zeros_like(&case.inputs);
    let outs = (case.fused)(&case.inputs, Some(&dout), &mut grads, Contents::Overwrite);
    assert_eq!((outs.len(), ref_outs.len()), (case.output_names.len(), case.output_names.len()), "{name}: outputs");
    for ((out, expected), out_name) in outs.iter().zip(&ref_outs).zip(case.output_names) {
        expect_close(name, &format!("fp32 {out_name}"), out, expected, FP32_ATOL, FP32_RTOL);
    }
    for ((g, expected), input_name) in grads.iter().zip(&ref_grads).zip(case.input_names) {
        expect_close(name, &format!("fp32 d{input_name}"), g, expected, FP32_ATOL, FP32_RTOL);
    }

    // (c) the fused backward adds into its gradient buffers.
    let prefill: Tensors = case.inputs.iter().map(|t| randn(rng, t.len(), 1.0)).collect();
    let mut accumulated = prefill.clone();
    (case.fused)(&case.inputs, Some(&dout), &mut accumulated, Contents::Accumulate);
    for (((acc, pre), g), input_name) in accumulated.iter().zip(&prefill).zip(&grads).zip(case.input_names) {
        let expected: Vec<f64> = pre.iter().zip(g).map(|(p, g)| p + g).collect();
        expect_close(
            name,
            &format!("d{input_name} accumulated into a pre-filled buffer"),
            acc,
            &expected,
            ACC_ATOL,
            ACC_RTOL,
        );
    }
}
