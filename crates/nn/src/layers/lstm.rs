//! One layer of a stacked `nn.LSTM(batch_first=True)`, names `lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}`.

use crate::layer::{sized, ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::cast::Element;
use rustspeed_kernels::lstm::{lstm_backward, lstm_forward, LstmScratch, LstmShape};
use rustspeed_kernels::matmul::{linear_forward, WeightLayout};

pub struct Lstm<E: Element = f32> {
    name: String,
    params: [ParamId; 4],
    input: usize,
    hidden: usize,
    gates: Vec<E>,
    cell: Vec<E>,
    scratch: LstmScratch,
}

impl<E: Element> Lstm<E> {
    /// Layer `index` mapping `C = input` to `H = hidden`; PyTorch's init: every tensor `U(-1/√H, 1/√H)`.
    pub fn new(layout: &mut ParamLayout, prefix: &str, index: usize, input: usize, hidden: usize) -> Self {
        let init = Init::Uniform { bound: 1.0 / (hidden as f32).sqrt() };
        let mut push =
            |kind: &str, shape: &[usize]| layout.push(ParamSpec::new(format!("{prefix}.{kind}_l{index}"), shape, init));
        let params = [
            push("weight_ih", &[4 * hidden, input]),
            push("weight_hh", &[4 * hidden, hidden]),
            push("bias_ih", &[4 * hidden]),
            push("bias_hh", &[4 * hidden]),
        ];
        Lstm {
            name: format!("lstm.l{index}"),
            params,
            input,
            hidden,
            gates: Vec::new(),
            cell: Vec::new(),
            scratch: LstmScratch::default(),
        }
    }

    fn shape(&self, batch: &Batch) -> LstmShape {
        LstmShape { b: batch.b, t: batch.t, c: self.input, h: self.hidden }
    }
}

impl<E: Element> Layer<E> for Lstm<E> {
    fn name(&self) -> &str {
        &self.name
    }

    fn params(&self) -> &[ParamId] {
        &self.params
    }

    fn output_width(&self) -> usize {
        self.hidden
    }

    fn saved_bytes(&self) -> usize {
        std::mem::size_of_val(self.gates.as_slice()) + std::mem::size_of_val(self.cell.as_slice())
    }

    /// The four gates' products, `4H·(C + H)` multiply-adds per token forward: `24·H·(C + H)` for training (the
    /// biases' adds and the gates' elementwise work are left out).
    fn flops_per_token(&self, _t: usize) -> f64 {
        let (c, h) = (self.input as f64, self.hidden as f64);
        3.0 * 2.0 * 4.0 * h * (c + h)
    }

    /// Saved: the gates (`4·N·H`) and cell states (`N·H`); output: the hidden states, `N·H`.
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        let n = b * t;
        ActivationFloats { saved: 5 * n * self.hidden, output: n * self.hidden }
    }

    fn release_saved(&mut self) {
        (self.gates, self.cell) = (Vec::new(), Vec::new());
    }

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, input: &[E], output: &mut [E]) {
        let shape = self.shape(batch);
        let n = batch.rows();
        let [w_ih, w_hh, b_ih, b_hh] = self.params.map(|id| layout.view(params, id));
        let gates = sized(&mut self.gates, n * 4 * self.hidden);
        lstm_forward(output, gates, sized(&mut self.cell, n * self.hidden), input, w_ih, w_hh, b_ih, b_hh, shape);
    }

    fn decode_cache(&self, slots: usize) -> LayerCache<E> {
        LayerCache::recurrent(slots, self.hidden)
    }

    /// Each row is one time step of its slot's recurrence, from the cached `(h, c)` and in row order (a prompt's
    /// rows follow each other): `gates = W_ih x + b_ih + W_hh h + b_hh` in PyTorch's order i, f, g, o;
    /// `c' = σ(f) c + σ(i) tanh(g)`, `h' = σ(o) tanh(c')`. The input products of all rows run as one.
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        input: &[E],
        output: &mut [E],
        cache: &mut LayerCache<E>,
    ) {
        let (n, hd) = (rows.len(), self.hidden);
        let [w_ih, w_hh, b_ih, b_hh] = self.params.map(|id| layout.view(params, id));
        let input_gates = sized(&mut self.gates, n * 4 * hd);
        linear_forward(input_gates, input, w_ih, Some(b_ih), WeightLayout::OutIn, n, self.input, 4 * hd);
        let LayerCache::Recurrent { h, c } = cache else { unreachable!("an LSTM's cache is its state") };
        let mut recurrent = vec![E::default(); 4 * hd];
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        for (r, &slot) in rows.slots.iter().enumerate() {
            linear_forward(&mut recurrent, &h[slot], w_hh, Some(b_hh), WeightLayout::OutIn, 1, hd, 4 * hd);
            let gate =
                |k: usize, j: usize| input_gates[r * 4 * hd + k * hd + j].to_f32() + recurrent[k * hd + j].to_f32();
            for j in 0..hd {
                let cell = sigmoid(gate(1, j)) * c[slot][j].to_f32() + sigmoid(gate(0, j)) * gate(2, j).tanh();
                let hidden = sigmoid(gate(3, j)) * cell.tanh();
                c[slot][j] = E::from_f32(cell);
                h[slot][j] = E::from_f32(hidden);
            }
            output[r * hd..(r + 1) * hd].copy_from_slice(&h[slot]);
        }
    }

    fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        batch: &Batch,
        input: &[E],
        output: &[E],
        dout: &[E],
        dinput: &mut [E],
        _scratch: &mut Scratch<E>,
    ) {
        let shape = self.shape(batch);
        let [w_ih, w_hh, _, _] = self.params.map(|id| layout.view(params, id));
        let [dw_ih, dw_hh, db_ih, db_hh] = layout.views_mut(grads, self.params);
        lstm_backward(
            dinput,
            dw_ih,
            dw_hh,
            db_ih,
            db_hh,
            writes.of(self.params[0]),
            &mut self.scratch,
            dout,
            input,
            w_ih,
            w_hh,
            output,
            &self.gates,
            &self.cell,
            shape,
        );
    }
}
