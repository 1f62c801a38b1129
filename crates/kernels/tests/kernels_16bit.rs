//! Every kernel with fp16 and bf16 storage. A 16-bit kernel widens its inputs to fp32 (exactly), runs the fp32
//! kernel, and rounds each stored value to the storage type once. For both types and for every kernel's forward
//! and backward, this file proves:
//!
//! 1. Accuracy against the float64 reference: on random inputs rounded to the storage type first (so the kernel
//!    and the reference read exactly the same values), each output and gradient is within one final rounding of
//!    the exact result, `|actual - expected| <= atol + rtol · |expected|` with the tolerances below. Backward
//!    references read the 16-bit forward's saved outputs (attention probabilities, LSTM gates, cells and hidden
//!    states, softmax probabilities, LayerNorm's mean and rstd), so each kernel is measured on its own.
//! 2. fp32 accumulation, rounded once: each stored value equals, bit for bit, the fp32 kernel's result on the
//!    widened inputs rounded to the storage type. For buffers a kernel adds into (every backward's gradients, the
//!    position embedding's output, softmax cross-entropy's in-place buffers), both start from the same non-zero
//!    16-bit contents, so the sum is formed in fp32 and rounded once. Values kept in fp32 in every precision
//!    (LayerNorm's mean and rstd, cross-entropy losses) equal the fp32 kernel's bit for bit.
//! 3. The checks can fail: the tolerances reject a product accumulated in the storage type and a reference that
//!    read the inputs before rounding, and the bit-for-bit check rejects a gradient rounded before it is added.

use rustspeed_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use rustspeed_kernels::cast::{bf16, f16, Contents, Element};
use rustspeed_kernels::embedding::{position_backward, position_forward, token_backward, token_forward};
use rustspeed_kernels::gelu::{gelu_backward, gelu_forward};
use rustspeed_kernels::layernorm::{layernorm_backward, layernorm_forward};
use rustspeed_kernels::lstm::{lstm_backward, lstm_forward, LstmScratch, LstmShape};
use rustspeed_kernels::matmul::{linear_backward, linear_forward, WeightLayout};
use rustspeed_kernels::reference as r;
use rustspeed_kernels::residual::{residual_backward, residual_forward};
use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::xent::{softmax_xent_backward, softmax_xent_backward_in_place, softmax_xent_forward};

#[path = "common/storage.rs"]
mod storage;

use storage::*;

// ---------------------------------------------------------------------------------------------------------------
// Kernels

fn check_token_embedding<E: Element>(rng: &mut Rng) {
    for (n, c, v) in [(5, 3, 4), (13, 12, 11), (77, 24, 19)] {
        let kernel = format!("{} token embedding N={n} C={c} V={v}", E::NAME);
        let tokens = random_tokens(rng, n, v);
        let weight = Tensor::<E>::randn(rng, v * c, 1.0);
        let dout = Tensor::<E>::randn(rng, n * c, 1.0);

        let mut out = nans::<E>(n * c);
        token_forward(&mut out, &tokens, &weight.e, c);
        let mut expected = vec![f64::NAN; n * c];
        r::token_forward(&mut expected, &tokens, &weight.f64, c);
        expect_close(&kernel, "out", &out, &expected);
        let mut out32 = nans::<f32>(n * c);
        token_forward(&mut out32, &tokens, &weight.f32, c);
        expect_rounded_once(&kernel, "out", &out, &out32);

        // Overwriting a buffer of NaNs: rows of tokens not in the batch come out zero.
        let mut dweight = nans::<E>(v * c);
        token_backward(&mut dweight, Contents::Overwrite, &dout.e, &tokens, c);
        let mut expected = vec![0.0; v * c];
        r::token_backward(&mut expected, &dout.f64, &tokens, c);
        expect_close(&kernel, "dweight", &dweight, &expected);

        let prefill = Tensor::<E>::randn(rng, v * c, 1.0);
        let (mut dweight, mut dweight32) = (prefill.e, prefill.f32);
        token_backward(&mut dweight, Contents::Accumulate, &dout.e, &tokens, c);
        token_backward(&mut dweight32, Contents::Accumulate, &dout.f32, &tokens, c);
        expect_rounded_once(&kernel, "dweight added into a pre-filled buffer", &dweight, &dweight32);
    }
}

/// The position table has `max_t > T` rows; the forward adds into an existing `[B, T, C]` buffer.
fn check_position_embedding<E: Element>(rng: &mut Rng) {
    for (b, t, max_t, c) in [(2, 3, 4, 3), (3, 7, 9, 12), (4, 21, 25, 40)] {
        let kernel = format!("{} position embedding B={b} T={t} maxT={max_t} C={c}", E::NAME);
        let pos = Tensor::<E>::randn(rng, max_t * c, 1.0);
        let base = Tensor::<E>::randn(rng, b * t * c, 1.0);
        let dout = Tensor::<E>::randn(rng, b * t * c, 1.0);

        let mut out = base.e.clone();
        position_forward(&mut out, &pos.e, b, t, c);
        let mut expected = base.f64.clone();
        r::position_forward(&mut expected, &pos.f64, b, t, c);
        expect_close(&kernel, "out", &out, &expected);
        let mut out32 = base.f32.clone();
        position_forward(&mut out32, &pos.f32, b, t, c);
        expect_rounded_once(&kernel, "out added into a pre-filled buffer", &out, &out32);

        // Overwriting a buffer of NaNs: the rows from T on come out zero.
        let mut dpos = nans::<E>(max_t * c);
        position_backward(&mut dpos, Contents::Overwrite, &dout.e, b, t, c);
        let mut expected = vec![0.0; max_t * c];
        r::position_backward(&mut expected, &dout.f64, b, t, c);
        expect_close(&kernel, "dpos", &dpos, &expected);

        let prefill = Tensor::<E>::randn(rng, max_t * c, 1.0);
        let (mut dpos, mut dpos32) = (prefill.e, prefill.f32);
        position_backward(&mut dpos, Contents::Accumulate, &dout.e, b, t, c);
        position_backward(&mut dpos32, Contents::Accumulate, &dout.f32, b, t, c);
        expect_rounded_once(&kernel, "dpos added into a pre-filled buffer", &dpos, &dpos32);
    }
}

/// Runs the LayerNorm backward, adding into `grads = [dinp, dweight, dbias]`.
#[allow(clippy::too_many_arguments)]
fn layernorm_backward_into<T: Element>(
    grads: &mut [Vec<T>; 3],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let [dinp, dweight, dbias] = grads;
    layernorm_backward(dinp, dweight, dbias, Contents::Accumulate, dout, inp, weight, mean, rstd, n, c);
}

fn check_layernorm<E: Element>(rng: &mut Rng) {
    // 37 rows and 130 columns split unevenly into the kernel's row and column tasks.
    for (n, c) in [(3, 5), (13, 12), (37, 130)] {
        let kernel = format!("{} layernorm N={n} C={c}", E::NAME);
        let inp = Tensor::<E>::randn(rng, n * c, 2.0);
        let weight = Tensor::<E>::randn(rng, c, 1.0);
        let bias = Tensor::<E>::randn(rng, c, 1.0);
        let dout = Tensor::<E>::randn(rng, n * c, 1.0);

        let (mut out, mut mean, mut rstd) = (nans::<E>(n * c), nans::<f32>(n), nans::<f32>(n));
        layernorm_forward(&mut out, &mut mean, &mut rstd, &inp.e, &weight.e, &bias.e, n, c);
        let (mut ref_out, mut ref_mean, mut ref_rstd) = (vec![f64::NAN; n * c], vec![f64::NAN; n], vec![f64::NAN; n]);
        r::layernorm_forward(&mut ref_out, &mut ref_mean, &mut ref_rstd, &inp.f64, &weight.f64, &bias.f64, n, c);
        expect_close(&kernel, "out", &out, &ref_out);
        expect_close(&kernel, "mean", &mean, &ref_mean);
        expect_close(&kernel, "rstd", &rstd, &ref_rstd);
        let (mut out32, mut mean32, mut rstd32) = (nans::<f32>(n * c), nans::<f32>(n), nans::<f32>(n));
        layernorm_forward(&mut out32, &mut mean32, &mut rstd32, &inp.f32, &weight.f32, &bias.f32, n, c);
        expect_rounded_once(&kernel, "out", &out, &out32);
        expect_rounded_once(&kernel, "mean", &mean, &mean32);
        expect_rounded_once(&kernel, "rstd", &rstd, &rstd32);

        let mut grads = [zeros::<E>(n * c), zeros(c), zeros(c)];
        layernorm_backward_into(&mut grads, &dout.e, &inp.e, &weight.e, &mean, &rstd, n, c);
        let mut expected = [vec![0.0; n * c], vec![0.0; c], vec![0.0; c]];
        let [dinp, dweight, dbias] = &mut expected;
        r::layernorm_backward(
            dinp,
            dweight,
            dbias,
            &dout.f64,
            &inp.f64,
            &weight.f64,
            &widen(&mean),
            &widen(&rstd),
            n,
            c,
        );
        for ((grad, expected), name) in grads.iter().zip(&expected).zip(["dinp", "dweight", "dbias"]) {
            expect_close(&kernel, name, grad, expected);
        }

        let prefill = [n * c, c, c].map(|len| Tensor::<E>::randn(rng, len, 1.0));
        let mut grads = prefill.clone().map(|g| g.e);
        let mut grads32 = prefill.map(|g| g.f32);
        layernorm_backward_into(&mut grads, &dout.e, &inp.e, &weight.e, &mean, &rstd, n, c);
        layernorm_backward_into(&mut grads32, &dout.f32, &inp.f32, &weight.f32, &mean, &rstd, n, c);
        for ((grad, grad32), name) in grads.iter().zip(&grads32).zip(["dinp", "dweight", "dbias"]) {
            expect_rounded_once(&kernel, &format!("{name} added into a pre-filled buffer"), grad, grad32);
        }
    }
}

/// Runs the linear backward, adding into `grads = [dinp, dweight]` or `[dinp, dweight, dbias]`.
#[allow(clippy::too_many_arguments)]
fn linear_backward_into<T: Element>(
    grads: &mut [Vec<T>],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let [dinp, dweight, dbias @ ..] = grads else { panic!("linear has an input and a weight gradient") };
    let dbias = dbias.first_mut().map(|d| &mut d[..]);
    linear_backward(Some(dinp), dweight, dbias, Contents::Accumulate, dout, inp, weight, layout, n, c, oc);
}

fn check_linear<E: Element>(rng: &mut Rng) {
    for (n, c, oc) in [(3, 4, 5), (13, 12, 11), (37, 29, 41), (64, 96, 80)] {
        for layout in [WeightLayout::OutIn, WeightLayout::InOut] {
            for with_bias in [true, false] {
                let kernel = format!("{} linear N={n} C={c} OC={oc} {layout:?} bias={with_bias}", E::NAME);
                let inp = Tensor::<E>::randn(rng, n * c, 1.0);
                let weight = Tensor::<E>::randn(rng, c * oc, 1.0 / (c as f64).sqrt());
                let bias = with_bias.then(|| Tensor::<E>::randn(rng, oc, 1.0));
                let dout = Tensor::<E>::randn(rng, n * oc, 1.0);

                let mut out = nans::<E>(n * oc);
                let bias_e = bias.as_ref().map(|b| &b.e[..]);
                linear_forward(&mut out, &inp.e, &weight.e, bias_e, layout, n, c, oc);
                let mut expected = vec![f64::NAN; n * oc];
                let bias64 = bias.as_ref().map(|b| &b.f64[..]);
                r::linear_forward(&mut expected, &inp.f64, &weight.f64, bias64, layout, n, c, oc);
                expect_close(&kernel, "out", &out, &expected);
                let mut out32 = nans::<f32>(n * oc);
                let bias32 = bias.as_ref().map(|b| &b.f32[..]);
                linear_forward(&mut out32, &inp.f32, &weight.f32, bias32, layout, n, c, oc);
                expect_rounded_once(&kernel, "out", &out, &out32);

                let names: &[&str] = if with_bias { &["dinp", "dweight", "dbias"] } else { &["dinp", "dweight"] };
                let lens = &[n * c, c * oc, oc][..names.len()];
                let mut grads: Vec<Vec<E>> = lens.iter().map(|&len| zeros(len)).collect();
                linear_backward_into(&mut grads, &dout.e, &inp.e, &weight.e, layout, n, c, oc);
                let mut expected: Vec<Vec<f64>> = lens.iter().map(|&len| vec![0.0; len]).collect();
                let [dinp, dweight, dbias @ ..] = &mut expected[..] else { unreachable!() };
                let dbias = dbias.first_mut().map(|d| &mut d[..]);
                r::linear_backward(Some(dinp), dweight, dbias, &dout.f64, &inp.f64, &weight.f64, layout, n, c, oc);
                for ((grad, expected), name) in grads.iter().zip(&expected).zip(names) {
                    expect_close(&kernel, name, grad, expected);
                }

                let prefill: Vec<Tensor<E>> = lens.iter().map(|&len| Tensor::randn(rng, len, 1.0)).collect();
                let mut grads: Vec<Vec<E>> = prefill.iter().map(|g| g.e.clone()).collect();
                let mut grads32: Vec<Vec<f32>> = prefill.iter().map(|g| g.f32.clone()).collect();
                linear_backward_into(&mut grads, &dout.e, &inp.e, &weight.e, layout, n, c, oc);
                linear_backward_into(&mut grads32, &dout.f32, &inp.f32, &weight.f32, layout, n, c, oc);
                for ((grad, grad32), name) in grads.iter().zip(&grads32).zip(names) {
                    expect_rounded_once(&kernel, &format!("{name} added into a pre-filled buffer"), grad, grad32);
                }
            }
        }
    }
}

fn check_attention<E: Element>(rng: &mut Rng) {
    // T = 33 spans a boundary of the causal products' 32-row blocks; the last two are grouped-query attention
    // (groups of 3 and 2 query heads per key/value head).
    let shapes = [
        AttentionShape::mha(1, 1, 4, 2),
        AttentionShape::mha(2, 7, 12, 3),
        AttentionShape::mha(2, 33, 48, 4),
        AttentionShape::gqa(2, 7, 6, 2, 5),
        AttentionShape::gqa(1, 35, 4, 2, 6),
    ];
    for shape in shapes {
        let AttentionShape { b, t, nh, nkv, hs } = shape;
        let kernel = format!("{} attention B={b} T={t} NH={nh} NKV={nkv} HS={hs}", E::NAME);
        let (qw, w) = (shape.q_width(), shape.qkv_width());
        let qkv = Tensor::<E>::randn(rng, b * t * w, 1.0);
        let dout = Tensor::<E>::randn(rng, b * t * qw, 1.0);

        let (mut out, mut att) = (nans::<E>(b * t * qw), nans::<E>(shape.att_len()));
        attention_forward(&mut out, &mut att, &qkv.e, shape);
        let (mut ref_out, mut ref_att) = (vec![f64::NAN; b * t * qw], vec![f64::NAN; shape.att_len()]);
        r::attention_forward(&mut ref_out, &mut ref_att, &qkv.f64, shape);
        expect_close(&kernel, "out", &out, &ref_out);
        expect_close(&kernel, "att", &att, &ref_att);
        let (mut out32, mut att32) = (nans::<f32>(b * t * qw), nans::<f32>(shape.att_len()));
        attention_forward(&mut out32, &mut att32, &qkv.f32, shape);
        expect_rounded_once(&kernel, "out", &out, &out32);
        expect_rounded_once(&kernel, "att", &att, &att32);

        // The backward reads the 16-bit probabilities, and so does the reference.
        let att = Tensor::new(att);
        let scratch = || nans::<f32>(shape.scratch_len());
        let mut dqkv = zeros::<E>(b * t * w);
        attention_backward(&mut dqkv, &mut scratch(), &dout.e, &qkv.e, &att.e, shape);
        let mut expected = vec![0.0; b * t * w];
        r::attention_backward(&mut expected, &dout.f64, &qkv.f64, &att.f64, shape);
        expect_close(&kernel, "dqkv", &dqkv, &expected);

        let prefill = Tensor::<E>::randn(rng, b * t * w, 1.0);
        let (mut dqkv, mut dqkv32) = (prefill.e, prefill.f32);
        attention_backward(&mut dqkv, &mut scratch(), &dout.e, &qkv.e, &att.e, shape);
        attention_backward(&mut dqkv32, &mut scratch(), &dout.f32, &qkv.f32, &att.f32, shape);
        expect_rounded_once(&kernel, "dqkv added into a pre-filled buffer", &dqkv, &dqkv32);
    }
}

fn check_gelu<E: Element>(rng: &mut Rng) {
    for len in [20, 13 * 12, 4099] {
        let kernel = format!("{} gelu len={len}", E::NAME);
        let inp = Tensor::<E>::randn(rng, len, 3.0);
        let dout = Tensor::<E>::randn(rng, len, 1.0);

        let mut out = nans::<E>(len);
        gelu_forward(&mut out, &inp.e);
        let mut expected = vec![f64::NAN; len];
        r::gelu_forward(&mut expected, &inp.f64);
        expect_close(&kernel, "out", &out, &expected);
        let mut out32 = nans::<f32>(len);
        gelu_forward(&mut out32, &inp.f32);
        expect_rounded_once(&kernel, "out", &out, &out32);

        let mut dinp = zeros::<E>(len);
        gelu_backward(&mut dinp, &inp.e, &dout.e);
        let mut expected = vec![0.0; len];
        r::gelu_backward(&mut expected, &inp.f64, &dout.f64);
        expect_close(&kernel, "dinp", &dinp, &expected);

        let prefill = Tensor::<E>::randn(rng, len, 1.0);
        let (mut dinp, mut dinp32) = (prefill.e, prefill.f32);
        gelu_backward(&mut dinp, &inp.e, &dout.e);
        gelu_backward(&mut dinp32, &inp.f32, &dout.f32);
        expect_rounded_once(&kernel, "dinp added into a pre-filled buffer", &dinp, &dinp32);
    }
}

fn check_residual<E: Element>(rng: &mut Rng) {
    for len in [6, 13, 1001] {
        let kernel = format!("{} residual len={len}", E::NAME);
        let a = Tensor::<E>::randn(rng, len, 1.0);
        let b = Tensor::<E>::randn(rng, len, 1.0);
        let dout = Tensor::<E>::randn(rng, len, 1.0);

        let mut out = nans::<E>(len);
        residual_forward(&mut out, &a.e, &b.e);
        let mut expected = vec![f64::NAN; len];
        r::residual_forward(&mut expected, &a.f64, &b.f64);
        expect_close(&kernel, "out", &out, &expected);
        let mut out32 = nans::<f32>(len);
        residual_forward(&mut out32, &a.f32, &b.f32);
        expect_rounded_once(&kernel, "out", &out, &out32);

        let (mut da, mut db) = (zeros::<E>(len), zeros::<E>(len));
        residual_backward(&mut da, &mut db, &dout.e);
        let (mut ref_da, mut ref_db) = (vec![0.0; len], vec![0.0; len]);
        r::residual_backward(&mut ref_da, &mut ref_db, &dout.f64);
        expect_close(&kernel, "da", &da, &ref_da);
        expect_close(&kernel, "db", &db, &ref_db);

        let [prefill_a, prefill_b] = [0; 2].map(|_| Tensor::<E>::randn(rng, len, 1.0));
        let (mut da, mut db) = (prefill_a.e, prefill_b.e);
        let (mut da32, mut db32) = (prefill_a.f32, prefill_b.f32);
        residual_backward(&mut da, &mut db, &dout.e);
        residual_backward(&mut da32, &mut db32, &dout.f32);
        expect_rounded_once(&kernel, "da added into a pre-filled buffer", &da, &da32);
        expect_rounded_once(&kernel, "db added into a pre-filled buffer", &db, &db32);
    }
}

/// An LSTM layer's differentiable inputs, `[x, w_ih, w_hh, b_ih, b_hh]`.
const LSTM_INPUTS: [&str; 5] = ["x", "w_ih", "w_hh", "b_ih", "b_hh"];

/// Runs the LSTM forward; returns `[out, gates, cell]`.
fn lstm_forward_run<T: Element>(ins: [&[T]; 5], shape: LstmShape) -> [Vec<T>; 3] {
    let LstmShape { b, t, h, .. } = shape;
    let [x, w_ih, w_hh, b_ih, b_hh] = ins;
    let (mut out, mut gates, mut cell) = (nans(b * t * h), nans(b * t * 4 * h), nans(b * t * h));
    lstm_forward(&mut out, &mut gates, &mut cell, x, w_ih, w_hh, b_ih, b_hh, shape);
    [out, gates, cell]
}

/// Runs the LSTM backward from the forward's saved `[out, gates, cell]`, adding into the gradients of
/// [`LSTM_INPUTS`].
fn lstm_backward_into<T: Element>(
    grads: &mut [Vec<T>; 5],
    dout: &[T],
    ins: [&[T]; 5],
    saved: [&[T]; 3],
    shape: LstmShape,
) {
    let [dx, dw_ih, dw_hh, db_ih, db_hh] = grads;
    let [x, w_ih, w_hh, ..] = ins;
    let [out, gates, cell] = saved;
    let mut scratch = LstmScratch::default();
    let add = Contents::Accumulate;
    lstm_backward(dx, dw_ih, dw_hh, db_ih, db_hh, add, &mut scratch, dout, x, w_ih, w_hh, out, gates, cell, shape);
}

fn check_lstm<E: Element>(rng: &mut Rng) {
    for (b, t, c, h) in [(1, 1, 3, 2), (2, 7, 5, 5), (3, 9, 10, 16)] {
        let kernel = format!("{} lstm B={b} T={t} C={c} H={h}", E::NAME);
        let shape = LstmShape { b, t, c, h };
        let (g4, k) = (4 * h, 1.0 / (h as f64).sqrt());
        let lens = [b * t * c, g4 * c, g4 * h, g4, g4];
        let scales = [1.0, k, k, k, k];
        let ins: [Tensor<E>; 5] = std::array::from_fn(|i| Tensor::randn(rng, lens[i], scales[i]));
        let dout = Tensor::<E>::randn(rng, b * t * h, 1.0);
        let ins_e = ins.each_ref().map(|x| &x.e[..]);
        let ins32 = ins.each_ref().map(|x| &x.f32[..]);

        let saved = lstm_forward_run(ins_e, shape);
        let mut expected = [b * t * h, b * t * g4, b * t * h].map(|len| vec![f64::NAN; len]);
        let [ref_out, ref_gates, ref_cell] = &mut expected;
        let [x, w_ih, w_hh, b_ih, b_hh] = ins.each_ref().map(|x| &x.f64[..]);
        r::lstm_forward(ref_out, ref_gates, ref_cell, x, w_ih, w_hh, b_ih, b_hh, shape);
        let saved32 = lstm_forward_run(ins32, shape);
        for (((stored, expected), stored32), name) in
            saved.iter().zip(&expected).zip(&saved32).zip(["out", "gates", "cell"])
        {
            expect_close(&kernel, name, stored, expected);
            expect_rounded_once(&kernel, name, stored, stored32);
        }

        // The backward reads the 16-bit hidden states, gates and cells, and so does the reference.
        let saved = saved.map(Tensor::new);
        let mut grads = lens.map(zeros::<E>);
        lstm_backward_into(&mut grads, &dout.e, ins_e, saved.each_ref().map(|s| &s.e[..]), shape);
        let mut expected = lens.map(|len| vec![0.0; len]);
        let [dx, dw_ih, dw_hh, db_ih, db_hh] = &mut expected;
        let [out, gates, cell] = saved.each_ref().map(|s| &s.f64[..]);
        r::lstm_backward(dx, dw_ih, dw_hh, db_ih, db_hh, &dout.f64, x, w_ih, w_hh, out, gates, cell, shape);
        for ((grad, expected), name) in grads.iter().zip(&expected).zip(LSTM_INPUTS) {
            expect_close(&kernel, &format!("d{name}"), grad, expected);
        }

        let prefill = lens.map(|len| Tensor::<E>::randn(rng, len, 1.0));
        let mut grads = prefill.clone().map(|g| g.e);
        let mut grads32 = prefill.map(|g| g.f32);
        lstm_backward_into(&mut grads, &dout.e, ins_e, saved.each_ref().map(|s| &s.e[..]), shape);
        lstm_backward_into(&mut grads32, &dout.f32, ins32, saved.each_ref().map(|s| &s.f32[..]), shape);
        for ((grad, grad32), name) in grads.iter().zip(&grads32).zip(LSTM_INPUTS) {
            expect_rounded_once(&kernel, &format!("d{name} added into a pre-filled buffer"), grad, grad32);
        }
    }
}

fn check_softmax_xent<E: Element>(rng: &mut Rng) {
    // With `ignore = Some((index, every))`, every `every`-th row (from row 0) gets the target `index`.
    let cases = [
        (5, 4, None),
        (13, 11, Some((u32::MAX, 3))), // ignore index outside the vocabulary
        (13, 11, Some((2, 4))),        // ignore index inside the vocabulary: random targets 2 are ignored too
        (4, 5, Some((7, 1))),          // every row ignored: count 0, loss 0, no gradient
        (37, 300, None),
    ];
    let dloss = 0.75;
    for (n, v, ignore) in cases {
        let kernel = format!("{} softmax xent N={n} V={v} ignore={ignore:?}", E::NAME);
        let mut targets = random_tokens(rng, n, v);
        if let Some((index, every)) = ignore {
            targets.iter_mut().step_by(every).for_each(|t| *t = index);
        }
        let ignore_index = ignore.map(|(index, _)| index);
        let logits = Tensor::<E>::randn(rng, n * v, 2.0);

        let (mut probs, mut losses) = (logits.e.clone(), nans::<f32>(n));
        let loss = softmax_xent_forward(&mut probs, &mut losses, &targets, ignore_index, n, v);
        let (mut ref_probs, mut ref_losses) = (vec![f64::NAN; n * v], vec![f64::NAN; n]);
        let (ref_mean, ref_count) =
            r::softmax_xent_forward(&mut ref_probs, &mut ref_losses, &logits.f64, &targets, ignore_index, n, v);
        expect_close(&kernel, "probs", &probs, &ref_probs);
        expect_close(&kernel, "losses", &losses, &ref_losses);
        expect_close(&kernel, "mean loss", &[loss.mean], &[ref_mean]);
        assert_eq!(loss.count, ref_count, "{kernel}: counted rows");
        let (mut probs32, mut losses32) = (logits.f32.clone(), nans::<f32>(n));
        let loss32 = softmax_xent_forward(&mut probs32, &mut losses32, &targets, ignore_index, n, v);
        expect_rounded_once(&kernel, "probs", &probs, &probs32);
        expect_rounded_once(&kernel, "losses", &losses, &losses32);
        assert_eq!(loss, loss32, "{kernel}: the loss differs from the fp32 kernel's");

        // Both backwards read the 16-bit probabilities, and so does the reference.
        let probs = Tensor::new(probs);
        let mut expected = vec![0.0; n * v];
        r::softmax_xent_backward(&mut expected, &probs.f64, &targets, ignore_index, dloss as f64, loss.count, n, v);
        let mut dlogits = zeros::<E>(n * v);
        softmax_xent_backward(&mut dlogits, &probs.e, &targets, ignore_index, dloss, loss.count, n, v);
        expect_close(&kernel, "dlogits", &dlogits, &expected);
        let mut in_place = probs.e.clone();
        softmax_xent_backward_in_place(&mut in_place, &targets, ignore_index, dloss, loss.count, n, v);
        expect_close(&kernel, "dlogits in place", &in_place, &expected);

        let prefill = Tensor::<E>::randn(rng, n * v, 1.0);
        let (mut dlogits, mut dlogits32) = (prefill.e, prefill.f32);
        softmax_xent_backward(&mut dlogits, &probs.e, &targets, ignore_index, dloss, loss.count, n, v);
        softmax_xent_backward(&mut dlogits32, &probs.f32, &targets, ignore_index, dloss, loss.count, n, v);
        expect_rounded_once(&kernel, "dlogits added into a pre-filled buffer", &dlogits, &dlogits32);
        let mut in_place32 = probs.f32.clone();
        softmax_xent_backward_in_place(&mut in_place32, &targets, ignore_index, dloss, loss.count, n, v);
        expect_rounded_once(&kernel, "dlogits in place", &in_place, &in_place32);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The checks can fail

/// A linear forward that accumulates in the storage type (each partial sum rounded), and the 16-bit kernel's
/// output against a reference that read the inputs before they were rounded, both fail the tolerances.
fn check_tolerances_reject_16_bit_errors<E: Element>(rng: &mut Rng) {
    let (n, c, oc) = (13, 29, 11);
    let kernel = format!("{} linear N={n} C={c} OC={oc}", E::NAME);
    let (inp_unrounded, weight_unrounded) = (normals(rng, n * c, 1.0), normals(rng, c * oc, 1.0 / (c as f64).sqrt()));
    let inp = Tensor::<E>::new(round(&inp_unrounded));
    let weight = Tensor::<E>::new(round(&weight_unrounded));
    let layout = WeightLayout::InOut;
    let mut expected = vec![0.0; n * oc];
    r::linear_forward(&mut expected, &inp.f64, &weight.f64, None, layout, n, c, oc);

    let mut out = nans::<E>(n * oc);
    linear_forward(&mut out, &inp.e, &weight.e, None, layout, n, c, oc);
    expect_close(&kernel, "out", &out, &expected);

    let accumulated_in_e: Vec<E> = (0..n * oc)
        .map(|k| {
            let (row, o) = (k / oc, k % oc);
            (0..c).fold(E::from_f32(0.0), |acc, i| {
                E::from_f32(acc.to_f32() + inp.f32[row * c + i] * weight.f32[i * oc + o])
            })
        })
        .collect();
    assert!(close(&accumulated_in_e, &expected).is_err(), "{kernel}: accumulating in {} passed", E::NAME);

    let mut unrounded = vec![0.0; n * oc];
    r::linear_forward(&mut unrounded, &inp_unrounded, &weight_unrounded, None, layout, n, c, oc);
    assert!(close(&out, &unrounded).is_err(), "{kernel}: a reference on unrounded inputs passed");
}

/// A GELU backward that rounds its gradient to the storage type before adding it to the pre-filled buffer
/// (two roundings) fails the bit-for-bit check that the kernel itself passes.
fn check_rounding_twice_is_detected<E: Element>(rng: &mut Rng) {
    let len = 1000;
    let kernel = format!("{} gelu len={len}", E::NAME);
    let inp = Tensor::<E>::randn(rng, len, 3.0);
    let dout = Tensor::<E>::randn(rng, len, 1.0);
    let prefill = Tensor::<E>::randn(rng, len, 1.0);
    let mut once32 = prefill.f32.clone();
    gelu_backward(&mut once32, &inp.f32, &dout.f32);
    let mut once = prefill.e.clone();
    gelu_backward(&mut once, &inp.e, &dout.e);
    expect_rounded_once(&kernel, "dinp added into a pre-filled buffer", &once, &once32);

    let mut grad32 = zeros::<f32>(len);
    gelu_backward(&mut grad32, &inp.f32, &dout.f32);
    let twice: Vec<E> =
        prefill.f32.iter().zip(&grad32).map(|(&p, &g)| E::from_f32(p + E::from_f32(g).to_f32())).collect();
    assert!(first_not_rounded_once(&twice, &once32).is_some(), "{kernel}: rounding the gradient twice passed");
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn embeddings() {
    let mut rng = Rng::new(1);
    check_token_embedding::<f16>(&mut rng);
    check_token_embedding::<bf16>(&mut rng);
    check_position_embedding::<f16>(&mut rng);
    check_position_embedding::<bf16>(&mut rng);
}

#[test]
fn layernorm() {
    let mut rng = Rng::new(2);
    check_layernorm::<f16>(&mut rng);
    check_layernorm::<bf16>(&mut rng);
}

#[test]
fn linear() {
    let mut rng = Rng::new(3);
    check_linear::<f16>(&mut rng);
    check_linear::<bf16>(&mut rng);
}

#[test]
fn attention() {
    let mut rng = Rng::new(4);
    check_attention::<f16>(&mut rng);
    check_attention::<bf16>(&mut rng);
}

#[test]
fn gelu() {
    let mut rng = Rng::new(5);
    check_gelu::<f16>(&mut rng);
    check_gelu::<bf16>(&mut rng);
}

#[test]
fn residual() {
    let mut rng = Rng::new(6);
    check_residual::<f16>(&mut rng);
    check_residual::<bf16>(&mut rng);
}

#[test]
fn lstm() {
    let mut rng = Rng::new(7);
    check_lstm::<f16>(&mut rng);
    check_lstm::<bf16>(&mut rng);
}

#[test]
fn softmax_xent() {
    let mut rng = Rng::new(8);
    check_softmax_xent::<f16>(&mut rng);
    check_softmax_xent::<bf16>(&mut rng);
}

#[test]
fn tolerances_reject_16_bit_errors() {
    let mut rng = Rng::new(9);
    check_tolerances_reject_16_bit_errors::<f16>(&mut rng);
    check_tolerances_reject_16_bit_errors::<bf16>(&mut rng);
}

#[test]
fn rounding_twice_is_detected() {
    let mut rng = Rng::new(10);
    check_rounding_twice_is_detected::<f16>(&mut rng);
    check_rounding_twice_is_detected::<bf16>(&mut rng);
}
