//! Every fused fp32 kernel against its float64 reference, and every reference backward against central finite
//! differences of its forward, through the [`Case`] harness of `common/case.rs` (its module doc says what
//! [`check`] proves). The Llama kernels are in `llama.rs`.

#[path = "common/case.rs"]
mod case;

use case::*;
use rustspeed_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use rustspeed_kernels::cast::Contents;
use rustspeed_kernels::embedding::{position_backward, position_forward, token_backward, token_forward};
use rustspeed_kernels::gelu::{gelu_backward, gelu_forward};
use rustspeed_kernels::gradcheck::to_f64;
use rustspeed_kernels::layernorm::{layernorm_backward, layernorm_forward};
use rustspeed_kernels::lstm::{lstm_backward, lstm_forward, LstmScratch, LstmShape};
use rustspeed_kernels::matmul::{gemm, linear_backward, linear_forward, Dst, MatMut, MatRef, Threads, WeightLayout};
use rustspeed_kernels::reference as r;
use rustspeed_kernels::residual::{residual_backward, residual_forward};
use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::xent::{softmax_xent_backward, softmax_xent_forward};

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

fn attention_case(rng: &mut Rng, shape: AttentionShape) -> Case {
    let AttentionShape { b, t, nh, nkv, hs } = shape;
    let (qw, w) = (shape.q_width(), shape.qkv_width());
    Case {
        name: format!("attention B={b} T={t} NH={nh} NKV={nkv} HS={hs}"),
        inputs: vec![randn(rng, b * t * w, 1.0)],
        input_names: &["qkv"],
        output_names: &["out", "att"],
        reference: run64(move |ins, dout, grads| {
            let (mut out, mut att) = (vec![f64::NAN; b * t * qw], vec![f64::NAN; shape.att_len()]);
            r::attention_forward(&mut out, &mut att, &ins[0], shape);
            if let Some(dout) = dout {
                r::attention_backward(&mut grads[0], dout, &ins[0], &att, shape);
            }
            vec![out, att]
        }),
        fused: run32(move |ins, dout, grads, _mode| {
            let (mut out, mut att) = (vec![f32::NAN; b * t * qw], vec![f32::NAN; shape.att_len()]);
            attention_forward(&mut out, &mut att, &ins[0], shape);
            if let Some(dout) = dout {
                let mut scratch = vec![f32::NAN; shape.scratch_len()];
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

/// Multi-head (GPT-2, `AttentionShape::mha(b, t, c, nh)`) and grouped-query shapes `(B, T, NH, NKV, HS)`. T = 33
/// and 70 span one and two boundaries of the causal products' 32-row blocks; the grouped ones have groups of 3
/// and 2 query heads, odd T and head sizes that are not powers of two.
fn attention_shapes() -> [AttentionShape; 8] {
    let mha = |(b, t, c, nh)| AttentionShape::mha(b, t, c, nh);
    let gqa = |(b, t, nh, nkv, hs)| AttentionShape::gqa(b, t, nh, nkv, hs);
    [
        mha((1, 1, 4, 2)),
        mha((2, 3, 4, 2)),
        mha((2, 7, 12, 3)),
        mha((2, 33, 48, 4)),
        mha((1, 70, 16, 2)),
        gqa((2, 5, 6, 2, 3)),
        gqa((2, 35, 6, 2, 5)),
        gqa((1, 9, 4, 2, 6)),
    ]
}

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
    for shape in attention_shapes() {
        check(&attention_case(&mut rng, shape), &mut rng);
    }
}

/// Each row of `att` is a distribution over the visible positions `j <= i`, and exactly zero beyond.
#[test]
fn attention_probabilities_are_causal() {
    let mut rng = Rng::new(7);
    for shape in attention_shapes() {
        let (t, case) = (shape.t, attention_case(&mut rng, shape));
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
