//! A standalone RMSNorm layer (Llama's final `model.norm`).

use crate::layer::{sized, ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::cast::Element;
use rustspeed_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};

pub struct RmsNorm {
    name: String,
    params: [ParamId; 1],
    width: usize,
    eps: f32,
    rstd: Vec<f32>,
}

impl RmsNorm {
    /// Gain `{prefix}.weight` `[C]` (ones, as `LlamaRMSNorm`), `eps` inside the square root.
    pub fn new(layout: &mut ParamLayout, prefix: &str, width: usize, eps: f32) -> Self {
        let weight = layout.push(ParamSpec::new(format!("{prefix}.weight"), &[width], Init::Ones));
        let name = prefix.rsplit('.').next().unwrap_or(prefix).to_string();
        RmsNorm { name, params: [weight], width, eps, rstd: Vec::new() }
    }
}

impl<E: Element> Layer<E> for RmsNorm {
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
        std::mem::size_of_val(self.rstd.as_slice())
    }

    /// No product; counted as nanoGPT's `6·N` counts a norm's gains (6 per parameter).
    fn flops_per_token(&self, _t: usize) -> f64 {
        6.0 * self.width as f64
    }

    /// Saved: each row's rstd (`N`, fp32 in every precision); output `N·C`.
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        let n = b * t;
        ActivationFloats { saved: n, output: n * self.width }
    }

    fn release_saved(&mut self) {
        self.rstd = Vec::new();
    }

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, input: &[E], output: &mut [E]) {
        let n = batch.rows();
        let w = layout.view(params, self.params[0]);
        rmsnorm_forward(output, sized(&mut self.rstd, n), input, w, n, self.width, self.eps);
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
        let [dw] = layout.views_mut(grads, self.params);
        let w = layout.view(params, self.params[0]);
        let mode = writes.of(self.params[0]);
        rmsnorm_backward(dinput, dw, mode, dout, input, w, &self.rstd, batch.rows(), self.width);
    }
}
