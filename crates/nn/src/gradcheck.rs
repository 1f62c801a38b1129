//! Finite-difference gradient checks for layers and whole models: the proof a new layer's backward needs.
//!
//! The layer's fp32 forward is evaluated at `x ± ε` and the scalar objective is summed in float64; the quotient
//! uses the perturbation actually representable in fp32. [`check_layer`] checks a layer against the objective
//! `Σ output ⊙ w` for a fixed random `w` (so `dout = w`), over sampled coordinates of every parameter and of the
//! input; [`check_model`] checks the whole model's loss against sampled parameter coordinates (this covers the
//! fused head and tied weights).

use crate::layer::{Batch, GradWrites, Layer};
use crate::model::Model;
use crate::param::{ParamLayout, Window, WindowMut};
use rustspeed_kernels::cast::Contents;
use rustspeed_kernels::rng::Rng;

/// Settings of a check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Perturbation. Large enough that fp32 rounding of the objective (~1e-7 of its terms) stays small next to
    /// `ε · gradient`, small enough that the `O(ε²)` truncation is negligible.
    pub eps: f32,
    pub atol: f64,
    pub rtol: f64,
    /// Coordinates checked per parameter tensor (and for the input); all of them when the tensor is smaller.
    pub samples_per_tensor: usize,
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-2, atol: 1e-3, rtol: 1e-2, samples_per_tensor: 12, seed: 7 }
    }
}

/// One coordinate whose analytic and numeric gradients disagree.
#[derive(Clone, Debug, PartialEq)]
pub struct GradMismatch {
    /// Parameter name, or `input`.
    pub tensor: String,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

impl std::fmt::Display for GradMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}[{}]: backward gives {:.6e}, finite differences {:.6e}",
            self.tensor, self.index, self.analytic, self.numeric
        )
    }
}

impl GradCheck {
    fn sample(&self, rng: &mut Rng, len: usize) -> Vec<usize> {
        if len <= self.samples_per_tensor {
            (0..len).collect()
        } else {
            (0..self.samples_per_tensor).map(|_| rng.below(len as u64) as usize).collect()
        }
    }

    /// Central difference of `f` in coordinate `i` of `x` (restored afterwards).
    fn numeric(&self, x: &mut [f32], i: usize, mut f: impl FnMut(&[f32]) -> f64) -> f64 {
        let orig = x[i];
        x[i] = orig + self.eps;
        let (hi, plus) = (x[i], f(x));
        x[i] = orig - self.eps;
        let (lo, minus) = (x[i], f(x));
        x[i] = orig;
        (plus - minus) / (hi as f64 - lo as f64)
    }

    fn check(&self, tensor: &str, index: usize, analytic: f64, numeric: f64) -> Result<(), GradMismatch> {
        match (analytic - numeric).abs() <= self.atol + self.rtol * numeric.abs() {
            true => Ok(()),
            false => Err(GradMismatch { tensor: tensor.into(), index, analytic, numeric }),
        }
    }
}

/// Checks `layer.backward` against finite differences of `layer.forward` for the objective `Σ output ⊙ w`.
/// `input` is ignored by layers that read only the batch's tokens (pass `&[]`).
pub fn check_layer(
    layer: &mut dyn Layer,
    layout: &ParamLayout,
    params: &[f32],
    batch: &Batch,
    input: &[f32],
    cfg: &GradCheck,
) -> Result<(), GradMismatch> {
    let mut rng = Rng::new(cfg.seed);
    let out_len = batch.rows() * layer.output_width();
    let w: Vec<f32> = (0..out_len).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0.0; out_len];
    // The layer sees only its own parameters' span of the flat buffer, as under ZeRO stage 3 (a layer that read
    // outside its group would panic here).
    let span = crate::model::span(layout, layer.params()).unwrap_or(0..0);
    fn window<'p>(params: &'p [f32], span: &std::ops::Range<usize>) -> Window<'p, f32> {
        Window { base: span.start, data: &params[span.clone()] }
    }
    let mut objective = |layer: &mut dyn Layer, params: &[f32], input: &[f32]| {
        layer.forward(layout, &window(params, &span), batch, input, &mut out);
        out.iter().zip(&w).map(|(&o, &w)| o as f64 * w as f64).sum::<f64>()
    };

    let mut output = vec![0.0; out_len];
    layer.forward(layout, &window(params, &span), batch, input, &mut output);
    let mut grads = vec![0.0; params.len()];
    let mut dinput = vec![0.0; input.len()];
    layer.backward(
        layout,
        &window(params, &span),
        &mut WindowMut { base: span.start, data: &mut grads[span.clone()] },
        &GradWrites::all(Contents::Accumulate, layout.entries().len()),
        batch,
        input,
        &output,
        &w,
        &mut dinput,
        &mut crate::layer::Scratch::default(),
    );

    let mut p = params.to_vec();
    for &id in layer.params().to_vec().iter() {
        let entry = layout.entry(id).clone();
        for k in cfg.sample(&mut rng, entry.spec.numel()) {
            let i = entry.offset + k;
            let numeric = cfg.numeric(&mut p, i, |p| objective(layer, p, input));
            cfg.check(&entry.spec.name, k, grads[i] as f64, numeric)?;
        }
    }
    let mut x = input.to_vec();
    for k in cfg.sample(&mut rng, input.len()) {
        let numeric = cfg.numeric(&mut x, k, |x| objective(layer, params, x));
        cfg.check("input", k, dinput[k] as f64, numeric)?;
    }
    Ok(())
}

/// Checks `model.backward` against finite differences of the model's mean loss, over sampled coordinates of
/// every parameter tensor.
pub fn check_model(
    model: &mut Model,
    params: &[f32],
    tokens: &[u32],
    targets: &[u32],
    (b, t): (usize, usize),
    cfg: &GradCheck,
) -> Result<(), GradMismatch> {
    let loss = |model: &mut Model, p: &[f32]| {
        let loss = model.forward(p, tokens, Some(targets), b, t).expect("gradcheck batch is valid");
        loss.expect("targets give a loss").mean as f64
    };
    loss(model, params);
    let mut grads = vec![0.0; params.len()];
    model.backward(params, &mut grads, 1.0).expect("backward after forward");
    let mut rng = Rng::new(cfg.seed);
    let mut p = params.to_vec();
    let entries = model.layout().entries().to_vec();
    for entry in entries {
        for k in cfg.sample(&mut rng, entry.spec.numel()) {
            let i = entry.offset + k;
            let numeric = cfg.numeric(&mut p, i, |p| loss(model, p));
            cfg.check(&entry.spec.name, k, grads[i] as f64, numeric)?;
        }
    }
    Ok(())
}
