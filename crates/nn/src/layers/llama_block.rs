//! One Llama decoder layer (Hugging Face `LlamaDecoderLayer`), pre-RMSNorm:
//! `r = x + o_proj(attn(rope(q_proj(n₁)), rope(k_proj(n₁)), v_proj(n₁)))` with `n₁ = input_layernorm(x)`, and
//! `out = r + down_proj(silu(gate_proj(n₂)) ⊙ up_proj(n₂))` with `n₂ = post_attention_layernorm(r)`.
//! Attention is causal and grouped-query: `NKV` key/value heads each serve `NH/NKV` query heads.
//!
//! Weights in `nn.Linear` orientation (`[out, in]`) under Hugging Face's names. q, k and v are declared one after
//! another, so their weights form one `[(NH + 2·NKV)·HS, C]` matrix in the flat buffer and one product computes
//! the packed `[q | k | v]` rows the attention kernel reads; gate and up likewise form one `[2·I, C]` product
//! whose `[gate | up]` rows the SwiGLU kernel reads.

use crate::layer::{sized, zeroed, ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use rustspeed_kernels::attention_decode::{attention_decode, DecodeShape};
use rustspeed_kernels::cast::{add_into, Element};
use rustspeed_kernels::matmul::{linear_backward, linear_forward, WeightLayout};
use rustspeed_kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use rustspeed_kernels::rope::{rope_backward, rope_forward, rope_rows, RopeTable};
use rustspeed_kernels::swiglu::{swiglu_backward, swiglu_forward};
use std::sync::Arc;

/// The sizes of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaDims {
    /// Width `C` (`hidden_size`).
    pub c: usize,
    /// Query heads `NH` (`num_attention_heads`).
    pub nh: usize,
    /// Key/value heads `NKV` (`num_key_value_heads`), dividing `NH`.
    pub nkv: usize,
    /// Head size `HS` (`head_dim`).
    pub hs: usize,
    /// MLP width `I` (`intermediate_size`).
    pub inter: usize,
    /// RMSNorm's `eps` (`rms_norm_eps`).
    pub eps: f32,
    /// Biases on q, k, v and o (`attention_bias`).
    pub attention_bias: bool,
    /// Biases on gate, up and down (`mlp_bias`).
    pub mlp_bias: bool,
}

impl LlamaDims {
    /// Width of the attention's output, `NH·HS`.
    fn q_width(&self) -> usize {
        self.nh * self.hs
    }

    /// Width of the packed `[q | k | v]` rows, `(NH + 2·NKV)·HS`.
    fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hs
    }

    fn attention(&self, b: usize, t: usize) -> AttentionShape {
        AttentionShape::gqa(b, t, self.nh, self.nkv, self.hs)
    }
}

/// A span of consecutive parameters used as one tensor.
type Span = (ParamId, ParamId);

#[derive(Clone, Copy)]
struct LlamaParams {
    ln1: ParamId,
    qkv: Span,
    qkv_bias: Option<Span>,
    o: ParamId,
    o_bias: Option<ParamId>,
    ln2: ParamId,
    gate_up: Span,
    gate_up_bias: Option<Span>,
    down: ParamId,
    down_bias: Option<ParamId>,
}

impl LlamaParams {
    /// Every span the layer reads, in layout order (how [`ParamLayout::spans_mut`] wants them).
    fn spans(&self) -> Vec<Span> {
        let one = |id: ParamId| (id, id);
        [
            Some(one(self.ln1)),
            Some(self.qkv),
            self.qkv_bias,
            Some(one(self.o)),
            self.o_bias.map(one),
            Some(one(self.ln2)),
            Some(self.gate_up),
            self.gate_up_bias,
            Some(one(self.down)),
            self.down_bias.map(one),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Activations the backward needs, reused across steps: stored as `E`, the RMSNorm statistics as fp32.
#[derive(Default)]
struct Saved<E> {
    ln1: Vec<E>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<E>,
    att: Vec<E>,
    att_out: Vec<E>,
    resid: Vec<E>,
    ln2: Vec<E>,
    ln2_rstd: Vec<f32>,
    gate_up: Vec<E>,
    hidden: Vec<E>,
}

pub struct LlamaBlock<E: Element = f32> {
    name: String,
    ids: Vec<ParamId>,
    p: LlamaParams,
    d: LlamaDims,
    rope: Arc<RopeTable>,
    saved: Saved<E>,
}

impl<E: Element> LlamaBlock<E> {
    /// Layer `index` with sizes `d`, rotating q and k with `rope`. Init as `LlamaPreTrainedModel`: weights
    /// `N(0, init_std)` (`initializer_range`), biases 0, RMSNorm gains 1.
    pub fn new(layout: &mut ParamLayout, index: usize, d: LlamaDims, rope: Arc<RopeTable>, init_std: f32) -> Self {
        let prefix = format!("model.layers.{index}");
        let w = Init::Normal { std: init_std };
        let mut push = |suffix: &str, shape: &[usize], init| {
            layout.push(ParamSpec::new(format!("{prefix}.{suffix}"), shape, init))
        };
        let (c, q, kv, i) = (d.c, d.q_width(), d.nkv * d.hs, d.inter);
        let ln1 = push("input_layernorm.weight", &[c], Init::Ones);
        let qkv = (push("self_attn.q_proj.weight", &[q, c], w), {
            push("self_attn.k_proj.weight", &[kv, c], w);
            push("self_attn.v_proj.weight", &[kv, c], w)
        });
        let qkv_bias = d.attention_bias.then(|| {
            let first = push("self_attn.q_proj.bias", &[q], Init::Zeros);
            push("self_attn.k_proj.bias", &[kv], Init::Zeros);
            (first, push("self_attn.v_proj.bias", &[kv], Init::Zeros))
        });
        let o = push("self_attn.o_proj.weight", &[c, q], w);
        let o_bias = d.attention_bias.then(|| push("self_attn.o_proj.bias", &[c], Init::Zeros));
        let ln2 = push("post_attention_layernorm.weight", &[c], Init::Ones);
        let gate_up = (push("mlp.gate_proj.weight", &[i, c], w), push("mlp.up_proj.weight", &[i, c], w));
        let gate_up_bias = d
            .mlp_bias
            .then(|| (push("mlp.gate_proj.bias", &[i], Init::Zeros), push("mlp.up_proj.bias", &[i], Init::Zeros)));
        let down = push("mlp.down_proj.weight", &[c, i], w);
        let down_bias = d.mlp_bias.then(|| push("mlp.down_proj.bias", &[c], Init::Zeros));
        let last = down_bias.unwrap_or(down);
        let ids = (ln1.0..=last.0).map(ParamId).collect();
        let p = LlamaParams { ln1, qkv, qkv_bias, o, o_bias, ln2, gate_up, gate_up_bias, down, down_bias };
        LlamaBlock { name: format!("layers.{index}"), ids, p, d, rope, saved: Saved::default() }
    }

    /// `input_layernorm` and the packed `[q | k | v]` (not yet rotated) of `n` rows, into the saved activations.
    fn project_qkv(&mut self, layout: &ParamLayout, params: &Window<'_, E>, n: usize, x: &[E]) {
        let (d, p, s) = (self.d, self.p, &mut self.saved);
        let span = |(first, last): Span| layout.span_view(params, first, last);
        let ln1 = sized(&mut s.ln1, n * d.c);
        rmsnorm_forward(ln1, sized(&mut s.ln1_rstd, n), x, layout.view(params, p.ln1), n, d.c, d.eps);
        let qkv = sized(&mut s.qkv, n * d.qkv_width());
        linear_forward(qkv, ln1, span(p.qkv), p.qkv_bias.map(span), WeightLayout::OutIn, n, d.c, d.qkv_width());
    }

    /// From the attention's output on: o_proj and the residual, then the MLP branch (`n₂ = rmsnorm(r)`, packed
    /// gate|up, silu(gate) ⊙ up, down_proj) and its residual.
    fn finish(&mut self, layout: &ParamLayout, params: &Window<'_, E>, n: usize, x: &[E], out: &mut [E]) {
        let (d, p, s) = (self.d, self.p, &mut self.saved);
        let (c, i) = (d.c, d.inter);
        let v = |id| layout.view(params, id);
        let span = |(first, last): Span| layout.span_view(params, first, last);
        let resid = sized(&mut s.resid, n * c);
        linear_forward(resid, &s.att_out, v(p.o), p.o_bias.map(v), WeightLayout::OutIn, n, d.q_width(), c);
        add_into(resid, &x[..n * c]);
        let ln2 = sized(&mut s.ln2, n * c);
        rmsnorm_forward(ln2, sized(&mut s.ln2_rstd, n), resid, v(p.ln2), n, c, d.eps);
        let gate_up = sized(&mut s.gate_up, n * 2 * i);
        linear_forward(gate_up, ln2, span(p.gate_up), p.gate_up_bias.map(span), WeightLayout::OutIn, n, c, 2 * i);
        let hidden = sized(&mut s.hidden, n * i);
        swiglu_forward(hidden, gate_up, n, i);
        linear_forward(out, hidden, v(p.down), p.down_bias.map(v), WeightLayout::OutIn, n, i, c);
        add_into(&mut out[..n * c], resid);
    }
}

impl<E: Element> Layer<E> for LlamaBlock<E> {
    fn name(&self) -> &str {
        &self.name
    }

    fn params(&self) -> &[ParamId] {
        &self.ids
    }

    fn output_width(&self) -> usize {
        self.d.c
    }

    fn saved_bytes(&self) -> usize {
        let s = &self.saved;
        let stored = [&s.ln1, &s.qkv, &s.att, &s.att_out, &s.resid, &s.ln2, &s.gate_up, &s.hidden];
        stored.iter().map(|v| std::mem::size_of_val(v.as_slice())).sum::<usize>()
            + std::mem::size_of_val(s.ln1_rstd.as_slice())
            + std::mem::size_of_val(s.ln2_rstd.as_slice())
    }

    /// As GPT's blocks count (nanoGPT's convention): 6 per parameter, plus attention's scores and weighted values,
    /// `2·T·NH·HS` multiply-adds per token over the query heads (the full `T x T`): `12·T·NH·HS` for training.
    fn flops_per_token(&self, t: usize) -> f64 {
        let d = &self.d;
        let (c, q, qkv, i) = (d.c, d.q_width(), d.qkv_width(), d.inter);
        let weights = c * qkv + q * c + 3 * i * c;
        let biases = if d.attention_bias { qkv + c } else { 0 } + if d.mlp_bias { 2 * i + c } else { 0 };
        6.0 * (weights + biases + 2 * c) as f64 + 12.0 * (t * q) as f64
    }

    /// Saved: the two norms' outputs and the residual (`3·N·C`), their rstd (`2·N`), the packed q/k/v
    /// (`N·(NH + 2·NKV)·HS`), the probabilities, the attention output (`N·NH·HS`), gate/up (`2·N·I`) and the
    /// SwiGLU output (`N·I`); output `N·C`.
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        let (n, d) = (b * t, &self.d);
        let att = d.attention(b, t).att_len();
        let saved = 3 * n * d.c + 2 * n + n * d.qkv_width() + att + n * d.q_width() + 3 * n * d.inter;
        ActivationFloats { saved, output: n * d.c }
    }

    fn release_saved(&mut self) {
        self.saved = Saved::default();
    }

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, x: &[E], out: &mut [E]) {
        let (n, d, (b, t)) = (batch.rows(), self.d, (batch.b, batch.t));
        let shape = d.attention(b, t);
        // Attention: n₁ = rmsnorm(x), packed q|k|v, q and k rotated, causal GQA, then the rest.
        self.project_qkv(layout, params, n, x);
        let s = &mut self.saved;
        rope_forward(&mut s.qkv, &self.rope, b, t, d.nh, d.qkv_width(), 0);
        rope_forward(&mut s.qkv, &self.rope, b, t, d.nkv, d.qkv_width(), d.q_width());
        attention_forward(sized(&mut s.att_out, n * d.q_width()), sized(&mut s.att, shape.att_len()), &s.qkv, shape);
        self.finish(layout, params, n, x, out);
    }

    fn decode_cache(&self, slots: usize) -> LayerCache<E> {
        LayerCache::kv(slots, self.d.nkv * self.d.hs)
    }

    /// A prompt runs the training kernels (the same numbers as a forward over it); a step rotates each new row by
    /// its own position and attends it to its sequence's cached (rotated) keys and values.
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        x: &[E],
        out: &mut [E],
        cache: &mut LayerCache<E>,
    ) {
        let (n, d) = (rows.len(), self.d);
        let (qw, qkvw) = (d.q_width(), d.qkv_width());
        self.project_qkv(layout, params, n, x);
        let s = &mut self.saved;
        let att_out = sized(&mut s.att_out, n * qw);
        if rows.is_prompt() {
            rope_forward(&mut s.qkv, &self.rope, 1, n, d.nh, qkvw, 0);
            rope_forward(&mut s.qkv, &self.rope, 1, n, d.nkv, qkvw, qw);
            cache.append_kv(rows, &s.qkv, qkvw, qw, qw + d.nkv * d.hs);
            let shape = d.attention(1, n);
            attention_forward(att_out, sized(&mut s.att, shape.att_len()), &s.qkv, shape);
        } else {
            rope_rows(&mut s.qkv, &self.rope, rows.positions, d.nh, qkvw, 0);
            rope_rows(&mut s.qkv, &self.rope, rows.positions, d.nkv, qkvw, qw);
            cache.append_kv(rows, &s.qkv, qkvw, qw, qw + d.nkv * d.hs);
            let shape = DecodeShape { nh: d.nh, nkv: d.nkv, hs: d.hs };
            attention_decode(att_out, &s.qkv, qkvw, &cache.sequences(rows), shape);
        }
        self.finish(layout, params, n, x, out);
    }

    fn backward(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        grads: &mut WindowMut<'_, E>,
        writes: &GradWrites,
        batch: &Batch,
        x: &[E],
        _output: &[E],
        dout: &[E],
        dx: &mut [E],
        scratch: &mut Scratch<E>,
    ) {
        let (n, d, (b, t)) = (batch.rows(), self.d, (batch.b, batch.t));
        let (c, qw, qkvw, i) = (d.c, d.q_width(), d.qkv_width(), d.inter);
        let shape = d.attention(b, t);
        let (p, s) = (self.p, &self.saved);
        let v = |id| layout.view(params, id);
        let span = |(first, last): Span| layout.span_view(params, first, last);
        // Every parameter of the layer is first written here, so one mode (the first's) holds for each span.
        let mode = writes.of(p.ln1);
        let mut g = layout.spans_mut(grads, &p.spans()).into_iter();
        let mut next = || g.next().expect("one gradient view per span");
        let dln1 = next();
        let dqkv_w = next();
        let dqkv_b = p.qkv_bias.map(|_| next());
        let do_w = next();
        let do_b = p.o_bias.map(|_| next());
        let dln2 = next();
        let dgate_up_w = next();
        let dgate_up_b = p.gate_up_bias.map(|_| next());
        let ddown_w = next();
        let ddown_b = p.down_bias.map(|_| next());
        // Temporaries (zeroed, since kernels accumulate): d(hidden) [N, I], d(gate|up) [N, 2I], d(n₂) and
        // d(resid) [N, C], d(att_out) [N, NH·HS], d(q|k|v) [N, (NH + 2·NKV)·HS], d(n₁) [N, C].
        let sizes = [n * i, 2 * n * i, n * c, n * c, n * qw, n * qkvw, n * c];
        let buf = zeroed(&mut scratch.stored, sizes.iter().sum());
        let (dhidden, buf) = buf.split_at_mut(sizes[0]);
        let (dgate_up, buf) = buf.split_at_mut(sizes[1]);
        let (dn2, buf) = buf.split_at_mut(sizes[2]);
        let (dresid, buf) = buf.split_at_mut(sizes[3]);
        let (datt_out, buf) = buf.split_at_mut(sizes[4]);
        let (dqkv, dn1) = buf.split_at_mut(sizes[5]);
        let att_scratch = sized(&mut scratch.wide, shape.scratch_len());

        // MLP branch: out = r + down(silu(gate(n₂)) ⊙ up(n₂)).
        let lin = WeightLayout::OutIn;
        linear_backward(Some(dhidden), ddown_w, ddown_b, mode, dout, &s.hidden, v(p.down), lin, n, i, c);
        swiglu_backward(dgate_up, dhidden, &s.gate_up, n, i);
        let gu = span(p.gate_up);
        linear_backward(Some(dn2), dgate_up_w, dgate_up_b, mode, dgate_up, &s.ln2, gu, lin, n, c, 2 * i);
        dresid.copy_from_slice(&dout[..n * c]);
        rmsnorm_backward(dresid, dln2, mode, dn2, &s.resid, v(p.ln2), &s.ln2_rstd, n, c);
        // Attention branch: r = x + o(attn(rope(q), rope(k), v)).
        linear_backward(Some(datt_out), do_w, do_b, mode, dresid, &s.att_out, v(p.o), lin, n, qw, c);
        attention_backward(dqkv, att_scratch, datt_out, &s.qkv, &s.att, shape);
        rope_backward(dqkv, &self.rope, b, t, d.nh, qkvw, 0);
        rope_backward(dqkv, &self.rope, b, t, d.nkv, qkvw, qw);
        linear_backward(Some(dn1), dqkv_w, dqkv_b, mode, dqkv, &s.ln1, span(p.qkv), lin, n, c, qkvw);
        rmsnorm_backward(dx, dln1, mode, dn1, x, v(p.ln1), &s.ln1_rstd, n, c);
        // The residual path.
        add_into(&mut dx[..n * c], dresid);
    }
}
