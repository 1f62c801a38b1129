//! Token embedding, optionally plus a learned position embedding (GPT-2's `wte` + `wpe`).

use crate::layer::{ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::cast::Element;
use rustspeed_kernels::embedding::{position_backward, position_forward, token_backward, token_forward};

pub struct Embedding {
    name: String,
    params: Vec<ParamId>,
    token: ParamId,
    position: Option<ParamId>,
    width: usize,
}

impl Embedding {
    /// A `[V, C]` token table named `token_name`, and, when `position` is `Some((name, max_t))`, a `[max_t, C]`
    /// position table; both initialized `N(0, std)`.
    pub fn new(
        layout: &mut ParamLayout,
        token_name: &str,
        position: Option<(&str, usize)>,
        vocab_size: usize,
        width: usize,
        std: f32,
    ) -> Self {
        let token = layout.push(ParamSpec::new(token_name, &[vocab_size, width], Init::Normal { std }));
        let position =
            position.map(|(name, max_t)| layout.push(ParamSpec::new(name, &[max_t, width], Init::Normal { std })));
        let params = std::iter::once(token).chain(position).collect();
        Embedding { name: "embedding".into(), params, token, position, width }
    }

    /// The token table, for a head that ties its weight to it.
    pub fn token_param(&self) -> ParamId {
        self.token
    }
}

impl<E: Element> Layer<E> for Embedding {
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
        0
    }

    /// None: a lookup, no product. A head tied to the token table counts the table's product (nanoGPT's `6·N`
    /// counts `wte` once, for the head); the position table is added, not multiplied (nanoGPT leaves `wpe` out).
    fn flops_per_token(&self, _t: usize) -> f64 {
        0.0
    }

    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        ActivationFloats { saved: 0, output: b * t * self.width }
    }

    fn release_saved(&mut self) {}

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, _input: &[E], output: &mut [E]) {
        token_forward(output, batch.tokens, layout.view(params, self.token), self.width);
        if let Some(pos) = self.position {
            position_forward(output, layout.view(params, pos), batch.b, batch.t, self.width);
        }
    }

    /// Each row's token, plus its own position's embedding (the same adds as the forward's, row by row).
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        _input: &[E],
        output: &mut [E],
        _cache: &mut LayerCache<E>,
    ) {
        let c = self.width;
        token_forward(output, rows.tokens, layout.view(params, self.token), c);
        if let Some(pos) = self.position {
            let table = layout.view(params, pos);
            for (row, &p) in output.chunks_exact_mut(c).zip(rows.positions) {
                position_forward(row, &table[p * c..(p + 1) * c], 1, 1, c);
            }
        }
    }

    fn backward(
        &mut self,
        layout: &ParamLayout,
        _params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        batch: &Batch,
        _input: &[E],
        _output: &[E],
        dout: &[E],
        _dinput: &mut [E],
        _scratch: &mut Scratch<E>,
    ) {
        let token_grad = layout.view_mut(&mut *grads, self.token);
        token_backward(token_grad, writes.of(self.token), dout, batch.tokens, self.width);
        if let Some(pos) = self.position {
            position_backward(layout.view_mut(grads, pos), writes.of(pos), dout, batch.b, batch.t, self.width);
        }
    }
}
