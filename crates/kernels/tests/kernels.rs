//! Every fused fp32 kernel against its float64 reference, and every reference backward against central finite
//! differences of its forward.
//!
//! Each kernel is wrapped as a [`Case`]: its inputs (everything differentiable: data and parameters), and two
//! runs with one signature, the reference in f64 and the fused kernel in fp32 (inputs narrowed, results widened).
//! [`check`] then (a) gradchecks the reference (small cases), (b) compares the fused outputs and gradients with
//! the reference's, and (c) checks that the fused backward adds into pre-filled gradient buffers. Output buffers
//! start as NaN, so an output element a forward fails to write shows up as a mismatch.

use rustspeed_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use rustspeed_kernels::cast::Contents;
use rustspeed_kernels::embedding::{position_backward, position_forward, token_backward, token_forward};
use rustspeed_kernels::gelu::{gelu_backward, gelu_forward};
use rustspeed_kernels::gradcheck::{compare, numeric_gradient, to_f64};
use rustspeed_kernels::layernorm::{layernorm_backward, layernorm_forward};
use rustspeed_kernels::lstm::{lstm_backward, lstm_forward, LstmScratch, LstmShape};
use rustspeed_kernels::matmul::{gemm, linear_backward, linear_forward, Dst, MatMut, MatRef, Threads, WeightLayout};
use rustspeed_kernels::reference as r;
use rustspeed_kernels::residual::{residual_backward, residual_forward};
use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::xent::{softmax_xent_backward, softmax_xent_forward};

/// Central-difference step: truncation error ~ε²·|f'''| ≈ 1e-10, rounding error ~1e-16·|f|/ε ≈ 1e-11·|f|.
const FD_EPS: f64 = 1e-5;
/// Floor for gradients near zero: the rounding error above, for losses up to ~100.
const FD_ATOL: f64 = 1e-8;
/// Both finite-difference error terms are far below 1e-6 of a gradient of order one.
const FD_RTOL: f64 = 1e-6;
/// fp32 sums of ~100 order-one terms (linear N=128) that cancel to near zero keep ~1e-5 absolute error.
const FP32_ATOL: f64 = 5e-5;
/// fp32 accumulation over sums of up to a few hundred terms (reductions over rows, T·HS, C), ~100 ulps.
const FP32_RTOL: f64 = 1e-4;
/// Pre-filled buffers change fp32 rounding: row sums (dbias, N=128) round every partial sum at the prefill's scale.
const ACC_ATOL: f64 = 5e-5;
/// A backward that overwrote instead of adding would be off by the prefill itself, of order one.
const ACC_RTOL: f64 = 1e-6;
/// Finite differences cost two forwards per input element, so only small cases are gradchecked.
const GRADCHECK_MAX_INPUTS: usize = 1000;

type Tensors = Vec<Vec<f64>>;
/// One kernel run: returns the outputs (the test loss differentiates the first) and, given that output's
/// gradient `dout`, adds the inputs' gradients into `grads` (one buffer per input; untouched when `dout` is None).
type Run = Box<dyn Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>]) -> Tensors>;
/// A fused kernel's run: as [`Run`], with the parameters' gradients written as the [`Contents`] says (the inputs'
/// gradients are always added). To overwrite, the run first fills its parameters' gradients with NaN: what they
/// held must not matter.
type Fused = Box<dyn Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>], Contents) -> Tensors>;

struct Case {
    name: String,
    inputs: Tensors,
    input_names: &'static [&'static str],
    output_names: &'static [&'static str],
    reference: Run,
    fused: Fused,
}

fn run64(f: impl Fn(&[Vec<f64>], Option<&[f64]>, &mut [Vec<f64>]) -> Tensors + 'static) -> Run {
    Box::new(f)
}

/// Wraps an fp32 run: narrows inputs, `dout` and gradients (keeping any pre-filled values), widens results.
fn run32(f: impl Fn(&[Vec<f32>], Option<&[f32]>, &mut [Vec<f32>], Contents) -> Vec<Vec<f32>> + 'static) -> Fused {
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

fn narrow(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Normal values times `scale`, rounded to fp32 so that both runs see exactly the same data.
fn randn(rng: &mut Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| (rng.normal() * scale) as f32 as f64).collect()
}

fn random_tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// Before a run that overwrites parameter gradients: fills them with NaN, which must not survive.
fn nan_if_overwritten<'a>(mode: Contents, grads: impl IntoIterator<Item = &'a mut Vec<f32>>) {
    if mode == Contents::Overwrite {
        grads.into_iter().for_each(|g| g.fill(f32::NAN));
    }
}

fn zeros_like(ts: &[Vec<f64>]) -> Tensors {
    ts.iter().map(|t| vec![0.0; t.len()]).collect()
}

fn expect_close(case: &str, what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    if let Err(m) = compare(actual, expected, atol, rtol) {
        panic!("{case}: {what}: {m}");
    }
}

/// Runs (a), (b) and (c) of the module doc on one case.
fn check(case: &Case, rng: &mut Rng) {
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

// ---------------------------------------------------------------------------------------------------------------
// Cases

fn token_case(rng: &mut Rng, n: usize, c: usize, v: usize) -> Case {
    let tokens = random_tokens(rng, n, v);
    let tokens32 = tokens.clone();
    Case {
        name: format!("token embedding N={n} C={c} V={v}"),
        inputs: vec![randn(rng, v * c, 1.0)],
        input_names: &["weight"],
        output_names: &["out"],
        reference: run64(move |ins, dout, grads| {
            let mut out = vec![f64::NAN; n * c];
            r::token_forward(&mut out, &tokens, &ins[0], c);
            if let Some(dout) = dout {
                r::token_backward(&mut grads[0], dout, &tokens, c);
            }
            vec![out]
        }),
        fused: run32(move |ins, dout, grads, mode| {
            let mut out = vec![f32::NAN; n * c];
            token_forward(&mut out, &tokens32, &ins[0], c);
            if let Some(dout) = dout {
                // Overwriting, rows of tokens not in the batch must come out zero.
                nan_if_overwritten(mode, [&mut grads[0]]);
                token_backward(&mut grads[0], mode, dout, &tokens32, c);
            }
            vec![out]
        }),
    }
}

/// The position table has `max_t > T` rows; the forward adds into an existing random `[B, T, C]` buffer.
fn position_case(rng: &mut Rng, b: usize, t: usize, max_t: usize, c: usize) -> Case {
    let base = randn(rng, b * t * c, 1.0);
    let base32 = narrow(&base);
    Case {
        name: format!("position embedding B={b} T={t} maxT={max_t} C={c}"),
        inputs: vec![randn(rng, max_t * c, 1.0)],
        input_names: &["pos"],
        output_names: &["out"],
        reference: run64(move |ins, dout, grads| {
            let mut out = base.clone();
            r::position_forward(&mut out, &ins[0], b, t, c);
            if let Some(dout) = dout {
                r::position_backward(&mut grads[0], dout, b, t, c);
            }
            vec![out]
        }),
        fused: run32(move |ins, dout, grads, mode| {
            let mut out = base32.clone();
            position_forward(&mut out, &ins[0], b, t, c);
            if let Some(dout) = dout {
                // Overwriting, the rows from T on must come out zero.
                nan_if_overwritten(mode, [&mut grads[0]]);
                position_backward(&mut grads[0], mode, dout, b, t, c);
            }
            vec![out]
        }),
    }
}

fn layernorm_case(rng: &mut Rng, n: usize, c: usize) -> Case {
    Case {
        name: format!("layernorm N={n} C={c}"),
        inputs: vec![randn(rng, n * c, 2.0), randn(rng, c, 1.0), randn(rng, c, 1.0)],
        input_names: &["inp", "weight", "bias"],
        output_names: &["out", "mean", "rstd"],
        reference: run64(move |ins, dout, grads| {
            let (mut out, mut mean, mut rstd) = (vec![f64::NAN; n * c], vec![f64::NAN; n], vec![f64::NAN; n]);
            r::layernorm_forward(&mut out, &mut mean, &mut rstd, &ins[0], &ins[1], &ins[2], n, c);
            if let (Some(dout), [dx, dw, db]) = (dout, grads) {
                r::layernorm_backward(dx, dw, db, dout, &ins[0], &ins[1], &mean, &rstd, n, c);
            }
            vec![out, mean, rstd]
        }),
        fused: run32(move |ins, dout, grads, mode| {
            let (mut out, mut mean, mut rstd) = (vec![f32::NAN; n * c], vec![f32::NAN; n], vec![f32::NAN; n]);
            layernorm_forward(&mut out, &mut mean, &mut rstd, &ins[0], &ins[1], &ins[2], n, c);
            if let (Some(dout), [dx, dw, db]) = (dout, grads) {
                nan_if_overwritten(mode, [&mut *dw, &mut *db]);
                layernorm_backward(dx, dw, db, mode, dout, &ins[0], &ins[1], &mean, &rstd, n, c);
            }
            vec![out, mean, rstd]
        }),
    }
}

/// Inputs `[inp, weight]` or `[inp, weight, bias]`.
fn linear_case(rng: &mut Rng, n: usize, c: usize, oc: usize, layout: WeightLayout, bias: bool) -> Case {
    let mut inputs = vec![randn(rng, n * c, 1.0), randn(rng, c * oc, 1.0 / (c as f64).sqrt())];
    if bias {
        inputs.push(randn(rng, oc, 1.0));
    }
    Case {
        name: format!("linear N={n} C={c} OC={oc} {layout:?} bias={bias}"),
        inputs,
        input_names: if bias { &["inp", "weight", "bias"] } else { &["inp", "weight"] },
        output_names: &["out"],
        reference: run64(move |ins, dout, grads| {
            let mut out = vec![f64::NAN; n * oc];
            r::linear_forward(&mut out, &ins[0], &ins[1], ins.get(2).map(|b| &b[..]), layout, n, c, oc);
            if let (Some(dout), [dx, dw, db @ ..]) = (dout, grads) {
                let db = db.first_mut().map(|b| &mut b[..]);
                r::linear_backward(Some(dx), dw, db, dout, &ins[0], &ins[1], layout, n, c, oc);
            }
            vec![out]
        }),
        fused: run32(move |ins, dout, grads, mode| {
            let mut out = vec![f32::NAN; n * oc];
            linear_forward(&mut out, &ins[0], &ins[1], ins.get(2).map(|b| &b[..]), layout, n, c, oc);
            if let (Some(dout), [dx, dw, db @ ..]) = (dout, grads) {
                nan_if_overwritten(mode, std::iter::once(&mut *dw).chain(db.iter_mut()));
                let db = db.first_mut().map(|b| &mut b[..]);
                linear_backward(Some(dx), dw, db, mode, dout, &ins[0], &ins[1], layout, n, c, oc);
            }
            vec![out]
        }),
    }
}

fn attention_case(rng: &mut Rng, b: usize, t: usize, c: usize, nh: usize) -> Case {
    let shape = AttentionShape { b, t, c, nh };
    Case {
        name: format!("attention B={b} T={t} C={c} NH={nh}"),
        inputs: vec![randn(rng, b * t * 3 * c, 1.0)],
        input_names: &["qkv"],
        output_names: &["out", "att"],
        reference: run64(move |ins, dout, grads| {
            let (mut out, mut att) = (vec![f64::NAN; b * t * c], vec![f64::NAN; shape.att_len()]);
            r::attention_forward(&mut out, &mut att, &ins[0], shape);
            if let Some(dout) = dout {
                r::attention_backward(&mut grads[0], dout, &ins[0], &att, shape);
            }
            vec![out, att]
        }),
        fused: run32(move |ins, dout, grads, _mode| {
            let (mut out, mut att) = (vec![f32::NAN; b * t * c], vec![f32::NAN; shape.att_len()]);
            attention_forward(&mut out, &mut att, &ins[0], shape);
            if let Some(dout) = dout {
                let mut scratch = vec![f32::NAN; shape.att_len()];
                attention_backward(&mut grads[0], &mut scratch, dout, &ins[0], &att, shape);
            }
            vec![out, att]
        }),
    }
}

fn gelu_case(rng: &mut Rng, len: usize) -> Case {
    Case {
        name: format!("gelu len={len}"),
        inputs: vec![randn(rng, len, 3.0)],
        input_names: &["inp"],
        output_names: &["out"],
        reference: run64(move |ins, dout, grads| {
            let mut out = vec![f64::NAN; len];
            r::gelu_forward(&mut out, &ins[0]);
            if let Some(dout) = dout {
                r::gelu_backward(&mut grads[0], &ins[0], dout);
            }
            vec![out]
        }),
        fused: run32(move |ins, dout, grads, _mode| {
            let mut out = vec![f32::NAN; len];
            gelu_forward(&mut out, &ins[0]);
            if let Some(dout) = dout {
                gelu_backward(&mut grads[0], &ins[0], dout);
            }
            vec![out]
        }),
    }
}

fn residual_case(rng: &mut Rng, len: usize) -> Case {
    Case {
        name: format!("residual len={len}"),
        inputs: vec![randn(rng, len, 1.0), randn(rng, len, 1.0)],
        input_names: &["a", "b"],
        output_names: &["out"],
        reference: run64(move |ins, dout, grads| {
            let mut out = vec![f64::NAN; len];
            r::residual_forward(&mut out, &ins[0], &ins[1]);
            if let (Some(dout), [da, db]) = (dout, grads) {
                r::residual_backward(da, db, dout);
            }
            vec![out]
        }),
        fused: run32(move |ins, dout, grads, _mode| {
            let mut out = vec![f32::NAN; len];
            residual_forward(&mut out, &ins[0], &ins[1]);
            if let (Some(dout), [da, db]) = (dout, grads) {
                residual_backward(da, db, dout);
            }
            vec![out]
        }),
    }
}

fn lstm_case(rng: &mut Rng, b: usize, t: usize, c: usize, h: usize) -> Case {
    let shape = LstmShape { b, t, c, h };
    let k = 1.0 / (h as f64).sqrt();
    let (g4, nan) = (4 * h, f32::NAN);
    Case {
        name: format!("lstm B={b} T={t} C={c} H={h}"),
        inputs: vec![
            randn(rng, b * t * c, 1.0),
            randn(rng, g4 * c, k),
            randn(rng, g4 * h, k),
            randn(rng, g4, k),
            randn(rng, g4, k),
        ],
        input_names: &["x", "w_ih", "w_hh", "b_ih", "b_hh"],
        output_names: &["out", "gates", "cell"],
        reference: run64(move |ins, dout, grads| {
            let (mut out, mut gates, mut cell) =
                (vec![f64::NAN; b * t * h], vec![f64::NAN; b * t * g4], vec![f64::NAN; b * t * h]);
            let [x, w_ih, w_hh, b_ih, b_hh] = ins else { unreachable!() };
            r::lstm_forward(&mut out, &mut gates, &mut cell, x, w_ih, w_hh, b_ih, b_hh, shape);
            if let (Some(dout), [dx, dw_ih, dw_hh, db_ih, db_hh]) = (dout, grads) {
                r::lstm_backward(dx, dw_ih, dw_hh, db_ih, db_hh, dout, x, w_ih, w_hh, &out, &gates, &cell, shape);
            }
            vec![out, gates, cell]
        }),
        fused: run32(move |ins, dout, grads, mode| {
            let (mut out, mut gates, mut cell) = (vec![nan; b * t * h], vec![nan; b * t * g4], vec![nan; b * t * h]);
            let [x, w_ih, w_hh, b_ih, b_hh] = ins else { unreachable!() };
            lstm_forward(&mut out, &mut gates, &mut cell, x, w_ih, w_hh, b_ih, b_hh, shape);
            if let (Some(dout), [dx, dw_ih, dw_hh, db_ih, db_hh]) = (dout, grads) {
                // Stale scratch contents must not matter.
                let mut scratch = LstmScratch {
                    dgates: vec![nan; b * t * g4],
                    dh_next: vec![nan; b * h],
                    dc_next: vec![nan; b * h],
                    h_prev: vec![nan; b * t * h],
                    partials: vec![nan; 2 * h.div_ceil(128) * b * h],
                };
                nan_if_overwritten(mode, [&mut *dw_ih, &mut *dw_hh, &mut *db_ih, &mut *db_hh]);
                lstm_backward(
                    dx,
                    dw_ih,
                    dw_hh,
                    db_ih,
                    db_hh,
                    mode,
                    &mut scratch,
                    dout,
                    x,
                    w_ih,
                    w_hh,
                    &out,
                    &gates,
                    &cell,
                    shape,
                );
            }
            vec![out, gates, cell]
        }),
    }
}

/// With `ignore = Some((index, every))`, every `every`-th row (from row 0) gets the target `index`.
fn xent_case(rng: &mut Rng, n: usize, v: usize, ignore: Option<(u32, usize)>) -> Case {
    let mut targets = random_tokens(rng, n, v);
    if let Some((index, every)) = ignore {
        targets.iter_mut().step_by(every).for_each(|t| *t = index);
    }
    let ignore_index = ignore.map(|(index, _)| index);
    let targets32 = targets.clone();
    Case {
        name: format!("softmax xent N={n} V={v} ignore={ignore:?}"),
        inputs: vec![randn(rng, n * v, 2.0)],
        input_names: &["logits"],
        output_names: &["mean loss", "probs", "losses", "count"],
        reference: run64(move |ins, dout, grads| {
            let (mut probs, mut losses) = (vec![f64::NAN; n * v], vec![f64::NAN; n]);
            let (mean, count) = r::softmax_xent_forward(&mut probs, &mut losses, &ins[0], &targets, ignore_index, n, v);
            if let Some(dout) = dout {
                r::softmax_xent_backward(&mut grads[0], &probs, &targets, ignore_index, dout[0], count, n, v);
            }
            vec![vec![mean], probs, losses, vec![count as f64]]
        }),
        fused: run32(move |ins, dout, grads, _mode| {
            let (mut probs, mut losses) = (ins[0].clone(), vec![f32::NAN; n]);
            let loss = softmax_xent_forward(&mut probs, &mut losses, &targets32, ignore_index, n, v);
            if let Some(dout) = dout {
                softmax_xent_backward(&mut grads[0], &probs, &targets32, ignore_index, dout[0], loss.count, n, v);
            }
            vec![vec![loss.mean], probs, losses, vec![loss.count as f32]]
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn embeddings() {
    let mut rng = Rng::new(1);
    for (n, c, v) in [(5, 3, 4), (13, 12, 11), (300, 40, 50)] {
        check(&token_case(&mut rng, n, c, v), &mut rng);
    }
    for (b, t, max_t, c) in [(2, 3, 4, 3), (3, 7, 9, 12), (4, 64, 70, 48)] {
        check(&position_case(&mut rng, b, t, max_t, c), &mut rng);
    }
}

#[test]
fn layernorm() {
    let mut rng = Rng::new(2);
    // 37 rows and 130 columns split unevenly into the kernel's row and column tasks.
    for (n, c) in [(3, 5), (13, 12), (37, 130)] {
        check(&layernorm_case(&mut rng, n, c), &mut rng);
    }
}

#[test]
fn linear() {
    let mut rng = Rng::new(3);
    for (n, c, oc) in [(3, 4, 5), (13, 12, 11), (37, 29, 41), (128, 96, 160)] {
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            for bias in [true, false] {
                check(&linear_case(&mut rng, n, c, oc, layout, bias), &mut rng);
            }
        }
    }
}

/// `dinp = None` skips only the input gradient: the parameter gradients are those of a full backward.
#[test]
fn linear_backward_without_input_gradient() {
    let mut rng = Rng::new(4);
    let (n, c, oc) = (37, 29, 41);
    let [inp, weight, dout] = [n * c, c * oc, n * oc].map(|len| narrow(&randn(&mut rng, len, 1.0)));
    for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
        let (mut dw_full, mut db_full, mut dx) = (vec![0.0f32; c * oc], vec![0.0f32; oc], vec![0.0f32; n * c]);
        let add = Contents::Accumulate;
        let db_full_view = Some(&mut db_full[..]);
        linear_backward(Some(&mut dx), &mut dw_full, db_full_view, add, &dout, &inp, &weight, layout, n, c, oc);
        let (mut dw, mut db) = (vec![0.0f32; c * oc], vec![0.0f32; oc]);
        linear_backward(None, &mut dw, Some(&mut db), add, &dout, &inp, &weight, layout, n, c, oc);
        expect_close("linear without dinp", "dweight", &to_f64(&dw), &to_f64(&dw_full), 0.0, 0.0);
        expect_close("linear without dinp", "dbias", &to_f64(&db), &to_f64(&db_full), 0.0, 0.0);
    }
}

/// `gemm` on transposed and strided views, overwriting and accumulating, against the reference product.
#[test]
fn gemm_strided_views() {
    let mut rng = Rng::new(5);
    let (m, k, n, pad) = (19, 23, 17, 3);
    let lhs = randn(&mut rng, m * k, 1.0); // [m, k]
    let rhs = randn(&mut rng, k * n, 1.0); // [k, n]
    let lhs_t: Vec<f32> = (0..k * m).map(|idx| lhs[(idx % m) * k + idx / m] as f32).collect(); // [k, m]
    let rhs_padded: Vec<f32> = (0..k * (n + pad))
        .map(|idx| if idx % (n + pad) < n { rhs[idx / (n + pad) * n + idx % (n + pad)] as f32 } else { f32::NAN })
        .collect();
    let mut product = vec![0.0; m * n];
    r::linear_forward(&mut product, &lhs, &rhs, None, WeightLayout::InOut, m, k, n);
    let init = randn(&mut rng, m * (n + pad), 1.0);
    for (mode, threads) in [(Dst::Overwrite, Threads::Single), (Dst::Accumulate, Threads::Pool)] {
        let mut dst = narrow(&init);
        let lhs_view = MatRef::row_major(&lhs_t, k, m).t();
        let rhs_view = MatRef::strided(&rhs_padded, k, n, n + pad, 1);
        gemm(MatMut::strided(&mut dst, m, n, n + pad, 1), lhs_view, rhs_view, 0.5, mode, threads);
        let expected: Vec<f64> = (0..m * (n + pad))
            .map(|idx| {
                let (i, j) = (idx / (n + pad), idx % (n + pad));
                let kept = if mode == Dst::Accumulate || j >= n { init[idx] } else { 0.0 };
                kept + if j < n { 0.5 * product[i * n + j] } else { 0.0 }
            })
            .collect();
        expect_close(&format!("gemm {mode:?}"), "dst", &to_f64(&dst), &expected, FP32_ATOL, FP32_RTOL);
    }
}

// T = 33 and 70 span one and two boundaries of the causal products' 32-row blocks.
const ATTENTION_SHAPES: [(usize, usize, usize, usize); 5] =
    [(1, 1, 4, 2), (2, 3, 4, 2), (2, 7, 12, 3), (2, 33, 48, 4), (1, 70, 16, 2)];

#[test]
fn gemm_with_few_rows_and_a_row_major_weight() {
    // x[M, K] · W[N, K]ᵀ with M ≤ 512, K ≥ 256 and M·N·K ≥ 2^20 takes the transposed-product path: check it with
    // a row-major and a transposed (strided) x, a plain and a padded destination, scales 1 and 0.5, both modes
    // and both thread settings.
    let mut rng = Rng::new(6);
    let (m, k, n) = (40, 300, 121);
    let x = randn(&mut rng, m * k, 1.0); // [m, k]
    let w = randn(&mut rng, n * k, 1.0); // [n, k]
    let (x32, w32) = (narrow(&x), narrow(&w));
    let x_t: Vec<f32> = (0..k * m).map(|idx| x[(idx % m) * k + idx / m] as f32).collect(); // [k, m]
    let mut product = vec![0.0; m * n];
    r::linear_forward(&mut product, &x, &w, None, WeightLayout::OutIn, m, k, n);
    for (transposed_x, pad, scale) in [(false, 0, 1.0f32), (true, 5, 0.5), (false, 3, 1.0), (true, 0, 1.0)] {
        let init = randn(&mut rng, m * (n + pad), 1.0);
        for (mode, threads) in [(Dst::Overwrite, Threads::Single), (Dst::Accumulate, Threads::Pool)] {
            let mut dst = narrow(&init);
            let x_view = match transposed_x {
                true => MatRef::row_major(&x_t, k, m).t(),
                false => MatRef::row_major(&x32, m, k),
            };
            let w_view = MatRef::row_major(&w32, n, k).t();
            gemm(MatMut::strided(&mut dst, m, n, n + pad, 1), x_view, w_view, scale, mode, threads);
            let expected: Vec<f64> = (0..m * (n + pad))
                .map(|idx| {
                    let (i, j) = (idx / (n + pad), idx % (n + pad));
                    let kept = if mode == Dst::Accumulate || j >= n { init[idx] } else { 0.0 };
                    kept + if j < n { scale as f64 * product[i * n + j] } else { 0.0 }
                })
                .collect();
            let case = format!("few-row gemm {mode:?} transposed x {transposed_x} pad {pad} scale {scale}");
            expect_close(&case, "dst", &to_f64(&dst), &expected, FP32_ATOL, FP32_RTOL);
        }
    }
}

#[test]
fn attention() {
    let mut rng = Rng::new(6);
    for (b, t, c, nh) in ATTENTION_SHAPES {
        check(&attention_case(&mut rng, b, t, c, nh), &mut rng);
    }
}

/// Each row of `att` is a distribution over the visible positions `j <= i`, and exactly zero beyond.
#[test]
fn attention_probabilities_are_causal() {
    let mut rng = Rng::new(7);
    for (b, t, c, nh) in ATTENTION_SHAPES {
        let case = attention_case(&mut rng, b, t, c, nh);
        let reference = (case.reference)(&case.inputs, None, &mut []);
        let fused = (case.fused)(&case.inputs, None, &mut [], Contents::Accumulate);
        for (outs, which) in [(reference, "reference"), (fused, "fp32")] {
            let att = &outs[1];
            for (row_index, row) in att.chunks_exact(t).enumerate() {
                let i = row_index % t;
                let what = format!("{which} att row {row_index}");
                expect_close(&case.name, &format!("{what} sum"), &[row[..=i].iter().sum()], &[1.0], FP32_ATOL, 0.0);
                assert!(row[..=i].iter().all(|&p| p > 0.0), "{}: {what} has a non-positive visible entry", case.name);
                assert!(row[i + 1..].iter().all(|&p| p == 0.0), "{}: {what} has a nonzero masked entry", case.name);
            }
        }
    }
}

#[test]
fn gelu() {
    let mut rng = Rng::new(8);
    for len in [20, 13 * 12, 10_000] {
        check(&gelu_case(&mut rng, len), &mut rng);
    }
}

#[test]
fn residual() {
    let mut rng = Rng::new(9);
    for len in [6, 13, 5000] {
        check(&residual_case(&mut rng, len), &mut rng);
    }
}

#[test]
fn lstm() {
    let mut rng = Rng::new(10);
    // The last three span several blocks of hidden units (with a partial last block) and do enough work per step to
    // run as parallel tasks; (9, 4, 6, 70) has more rows than one pass of dot products takes (B > 8).
    for (b, t, c, h) in
        [(1, 1, 3, 2), (2, 3, 3, 4), (2, 7, 5, 5), (3, 9, 10, 16), (6, 5, 7, 70), (9, 4, 6, 70), (5, 4, 3, 300)]
    {
        check(&lstm_case(&mut rng, b, t, c, h), &mut rng);
    }
}

#[test]
fn softmax_xent() {
    let mut rng = Rng::new(11);
    let cases = [
        (5, 4, None),
        (13, 11, None),
        (13, 11, Some((u32::MAX, 3))), // ignore index outside the vocabulary
        (13, 11, Some((2, 4))),        // ignore index inside the vocabulary: random targets 2 are ignored too
        (4, 5, Some((7, 1))),          // every row ignored: count 0, loss 0, no gradient
        (37, 300, Some((u32::MAX, 5))),
    ];
    for (n, v, ignore) in cases {
        check(&xent_case(&mut rng, n, v, ignore), &mut rng);
    }
}
