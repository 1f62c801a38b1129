//! A standalone LayerNorm layer (GPT-2's final `ln_f`).

use crate::layer::{sized, ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::cast::Element;
use rustspeed_kernels::layernorm::{layernorm_backward, layernorm_forward};

pub struct LayerNorm {
    name: String,
    params: [ParamId; 2],
    width: usize,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl LayerNorm {
    /// Gain `{prefix}.weight` (ones) and bias `{prefix}.bias` (zeros), both `[C]`.
    pub fn new(layout: &mut ParamLayout, prefix: &str, width: usize) -> Self {
        let weight = layout.push(ParamSpec::new(format!("{prefix}.weight"), &[width], Init::Ones));
        let bias = layout.push(ParamSpec::new(format!("{prefix}.bias"), &[width], Init::Zeros));
        let name = prefix.rsplit('.').next().unwrap_or(prefix).to_string();
        LayerNorm { name, params: [weight, bias], width, mean: Vec::new(), rstd: Vec::new() }
    }
}

impl<E: Element> Layer<E> for LayerNorm {
    fn name(&self) -> &str {
        &self.name
    }

    fn params(&self) -> &[ParamId] {
        &self.params
    }

    fn output_width(&self) -> usize {
        self.width
    }

    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(self.mean.as_slice()) + std::mem::size_of_val(self.rstd.as_slice())
    }

    /// No product; nanoGPT's `6·N` counts its `2·C` parameters all the same (6 each).
    fn flops_per_token(&self, _t: usize) -> f64 {
        6.0 * (2 * self.width) as f64
    }

    /// Saved: each row's mean and rstd (`2·N`; fp32 in every precision); output `N·C`.
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        let n = b * t;
        ActivationFloats { saved: 2 * n, output: n * self.width }
    }

    fn release_saved(&mut self) {
        (self.mean, self.rstd) = (Vec::new(), Vec::new());
    }

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, input: &[E], output: &mut [E]) {
        let n = batch.rows();
        let [w, b] = self.params;
        layernorm_forward(
            output,
            sized(&mut self.mean, n),
            sized(&mut self.rstd, n),
            input,
            layout.view(params, w),
            layout.view(params, b),
            n,
            self.width,
        );
    }

    /// Row-wise: the forward over the rows.
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        input: &[E],
        output: &mut [E],
        _cache: &mut LayerCache<E>,
    ) {
        let batch = Batch { tokens: rows.tokens, b: 1, t: rows.len() };
        self.forward(layout, params, &batch, input, output);
    }

    fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        batch: &Batch,
        input: &[E],
        _output: &[E],
        dout: &[E],
        dinput: &mut [E],
        _scratch: &mut Scratch<E>,
    ) {
        let [dw, db] = layout.views_mut(grads, self.params);
        let w = layout.view(params, self.params[0]);
        let (mean, rstd, mode) = (&self.mean, &self.rstd, writes.of(self.params[0]));
        layernorm_backward(dinput, dw, db, mode, dout, input, w, mean, rstd, batch.rows(), self.width);
    }
}
