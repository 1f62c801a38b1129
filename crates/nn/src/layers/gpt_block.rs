//! One GPT-2 transformer block, pre-LayerNorm:
//! `r = x + c_proj(attn(c_attn(ln_1(x))))`, `out = r + mlp.c_proj(gelu(mlp.c_fc(ln_2(r))))`.
//! Weights in Hugging Face GPT-2's `Conv1D` orientation (`[in, out]`), names as its state dict.

use crate::layer::{sized, zeroed, ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
use crate::param::{Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
use rustspeed_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use rustspeed_kernels::attention_decode::{attention_decode, DecodeShape};
use rustspeed_kernels::cast::{add_into, Element};
use rustspeed_kernels::gelu::{gelu_backward, gelu_forward};
use rustspeed_kernels::layernorm::{layernorm_backward, layernorm_forward};
use rustspeed_kernels::matmul::{linear_backward, linear_forward, WeightLayout};

/// The block's parameters, in declaration (and layout) order.
#[derive(Clone, Copy)]
struct BlockParams {
    ln1_w: ParamId,
    ln1_b: ParamId,
    attn_w: ParamId,
    attn_b: ParamId,
    attn_proj_w: ParamId,
    attn_proj_b: ParamId,
    ln2_w: ParamId,
    ln2_b: ParamId,
    fc_w: ParamId,
    fc_b: ParamId,
    fc_proj_w: ParamId,
    fc_proj_b: ParamId,
}

/// Activations the backward needs, kept across the step and reused across steps: stored as `E`, except the
/// LayerNorm statistics (fp32 in every precision).
#[derive(Default)]
struct Saved<E> {
    ln1: Vec<E>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<E>,
    att: Vec<E>,
    att_out: Vec<E>,
    resid: Vec<E>,
    ln2: Vec<E>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fc: Vec<E>,
    fc_gelu: Vec<E>,
}

pub struct GptBlock<E: Element = f32> {
    name: String,
    ids: Vec<ParamId>,
    p: BlockParams,
    c: usize,
    nh: usize,
    saved: Saved<E>,
}

impl<E: Element> GptBlock<E> {
    /// Block `index` of `n_layer`, width `C`, `NH` heads. Init as GPT-2: weights `N(0, 0.02)`, the two residual
    /// projections `N(0, 0.02/√(2L))`, biases 0, LayerNorm gains 1.
    pub fn new(layout: &mut ParamLayout, index: usize, n_layer: usize, c: usize, nh: usize) -> Self {
        let prefix = format!("transformer.h.{index}");
        let w = Init::Normal { std: 0.02 };
        let w_proj = Init::Normal { std: 0.02 / (2.0 * n_layer as f32).sqrt() };
        let mut push = |suffix: &str, shape: &[usize], init| {
            layout.push(ParamSpec::new(format!("{prefix}.{suffix}"), shape, init))
        };
        let p = BlockParams {
            ln1_w: push("ln_1.weight", &[c], Init::Ones),
            ln1_b: push("ln_1.bias", &[c], Init::Zeros),
            attn_w: push("attn.c_attn.weight", &[c, 3 * c], w),
            attn_b: push("attn.c_attn.bias", &[3 * c], Init::Zeros),
            attn_proj_w: push("attn.c_proj.weight", &[c, c], w_proj),
            attn_proj_b: push("attn.c_proj.bias", &[c], Init::Zeros),
            ln2_w: push("ln_2.weight", &[c], Init::Ones),
            ln2_b: push("ln_2.bias", &[c], Init::Zeros),
            fc_w: push("mlp.c_fc.weight", &[c, 4 * c], w),
            fc_b: push("mlp.c_fc.bias", &[4 * c], Init::Zeros),
            fc_proj_w: push("mlp.c_proj.weight", &[4 * c, c], w_proj),
            fc_proj_b: push("mlp.c_proj.bias", &[c], Init::Zeros),
        };
        let ids = (p.ln1_w.0..=p.fc_proj_b.0).map(ParamId).collect();
        GptBlock { name: format!("h.{index}"), ids, p, c, nh, saved: Saved::default() }
    }

    /// `ln_1` and the packed `[q | k | v]` of `n` rows, into the saved activations.
    fn project_qkv(&mut self, layout: &ParamLayout, params: &Window<'_, E>, n: usize, x: &[E]) {
        let (c, p, s) = (self.c, self.p, &mut self.saved);
        let v = |id| layout.view(params, id);
        let ln1 = sized(&mut s.ln1, n * c);
        layernorm_forward(ln1, sized(&mut s.ln1_mean, n), sized(&mut s.ln1_rstd, n), x, v(p.ln1_w), v(p.ln1_b), n, c);
        let qkv = sized(&mut s.qkv, n * 3 * c);
        linear_forward(qkv, ln1, v(p.attn_w), Some(v(p.attn_b)), WeightLayout::InOut, n, c, 3 * c);
    }

    /// From the attention's output on: its projection and the residual, then the MLP branch and its residual.
    fn finish(&mut self, layout: &ParamLayout, params: &Window<'_, E>, n: usize, x: &[E], out: &mut [E]) {
        let (c, p, s) = (self.c, self.p, &mut self.saved);
        let v = |id| layout.view(params, id);
        let resid = sized(&mut s.resid, n * c);
        linear_forward(resid, &s.att_out, v(p.attn_proj_w), Some(v(p.attn_proj_b)), WeightLayout::InOut, n, c, c);
        add_into(resid, &x[..n * c]);
        let ln2 = sized(&mut s.ln2, n * c);
        layernorm_forward(
            ln2,
            sized(&mut s.ln2_mean, n),
            sized(&mut s.ln2_rstd, n),
            resid,
            v(p.ln2_w),
            v(p.ln2_b),
            n,
            c,
        );
        let fc = sized(&mut s.fc, n * 4 * c);
        linear_forward(fc, ln2, v(p.fc_w), Some(v(p.fc_b)), WeightLayout::InOut, n, c, 4 * c);
        let fc_gelu = sized(&mut s.fc_gelu, n * 4 * c);
        gelu_forward(fc_gelu, fc);
        linear_forward(out, fc_gelu, v(p.fc_proj_w), Some(v(p.fc_proj_b)), WeightLayout::InOut, n, 4 * c, c);
        add_into(&mut out[..n * c], resid);
    }
}

impl<E: Element> Layer<E> for GptBlock<E> {
    fn name(&self) -> &str {
        &self.name
    }

    fn params(&self) -> &[ParamId] {
        &self.ids
    }

    fn output_width(&self) -> usize {
        self.c
    }

    fn saved_bytes(&self) -> usize {
        let s = &self.saved;
        let stored = [&s.ln1, &s.qkv, &s.att, &s.att_out, &s.resid, &s.ln2, &s.fc, &s.fc_gelu];
        let stats = [&s.ln1_mean, &s.ln1_rstd, &s.ln2_mean, &s.ln2_rstd];
        stored.iter().map(|v| std::mem::size_of_val(v.as_slice())).sum::<usize>()
            + stats.iter().map(|v| std::mem::size_of_val(v.as_slice())).sum::<usize>()
    }

    /// nanoGPT's estimate for one block: 6 per parameter (`12·C² + 13·C`: the four products' weights, and, as
    /// its `6·N` does, the biases and LayerNorm gains), plus attention's scores and weighted values, `2·T·C`
    /// multiply-adds per token over all heads (the full `T x T`, causal mask or not): `12·T·C` for training.
    fn flops_per_token(&self, t: usize) -> f64 {
        let c = self.c as f64;
        6.0 * (12.0 * c * c + 13.0 * c) + 12.0 * (t as f64) * c
    }

    /// Saved: `ln_1` out, `qkv` (3), attention out, the residual, `ln_2` out (`7·N·C`), the MLP before and after
    /// the GELU (`8·N·C`), the two LayerNorms' mean and rstd (`4·N`), the attention probabilities
    /// (`B·NH·T²`); output `N·C`.
    fn activation_floats(&self, b: usize, t: usize) -> ActivationFloats {
        let (n, c) = (b * t, self.c);
        let att = AttentionShape::mha(b, t, c, self.nh).att_len();
        ActivationFloats { saved: 15 * n * c + 4 * n + att, output: n * c }
    }

    fn release_saved(&mut self) {
        self.saved = Saved::default();
    }

    fn forward(&mut self, layout: &ParamLayout, params: &Window<'_, E>, batch: &Batch, x: &[E], out: &mut [E]) {
        let shape = AttentionShape::mha(batch.b, batch.t, self.c, self.nh);
        self.project_qkv(layout, params, batch.rows(), x);
        let s = &mut self.saved;
        attention_forward(
            sized(&mut s.att_out, batch.rows() * self.c),
            sized(&mut s.att, shape.att_len()),
            &s.qkv,
            shape,
        );
        self.finish(layout, params, batch.rows(), x, out);
    }

    fn decode_cache(&self, slots: usize) -> LayerCache<E> {
        LayerCache::kv(slots, self.c)
    }

    /// A prompt runs the training kernels (the same numbers as a forward over it); a step attends each new row to
    /// its sequence's cached keys and values.
    fn decode(
        &mut self,
        layout: &ParamLayout,
        params: &Window<'_, E>,
        rows: &DecodeRows,
        x: &[E],
        out: &mut [E],
        cache: &mut LayerCache<E>,
    ) {
        let (n, c) = (rows.len(), self.c);
        self.project_qkv(layout, params, n, x);
        let s = &mut self.saved;
        cache.append_kv(rows, &s.qkv, 3 * c, c, 2 * c);
        let att_out = sized(&mut s.att_out, n * c);
        if rows.is_prompt() {
            let shape = AttentionShape::mha(1, n, c, self.nh);
            attention_forward(att_out, sized(&mut s.att, shape.att_len()), &s.qkv, shape);
        } else {
            let shape = DecodeShape { nh: self.nh, nkv: self.nh, hs: c / self.nh };
            attention_decode(att_out, &s.qkv, 3 * c, &cache.sequences(rows), shape);
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
        let (n, c) = (batch.rows(), self.c);
        let shape = AttentionShape::mha(batch.b, batch.t, c, self.nh);
        let (p, s) = (self.p, &self.saved);
        let v = |id| layout.view(params, id);
        let w = |id| writes.of(id);
        let [dln1_w, dln1_b, dattn_w, dattn_b, dattn_proj_w, dattn_proj_b, dln2_w, dln2_b, dfc_w, dfc_b, dfc_proj_w, dfc_proj_b] =
            layout.views_mut(
                grads,
                [
                    p.ln1_w,
                    p.ln1_b,
                    p.attn_w,
                    p.attn_b,
                    p.attn_proj_w,
                    p.attn_proj_b,
                    p.ln2_w,
                    p.ln2_b,
                    p.fc_w,
                    p.fc_b,
                    p.fc_proj_w,
                    p.fc_proj_b,
                ],
            );
        // Temporaries: d(fc_gelu) and d(fc) [N, 4C], d(ln2) and d(resid) [N, C], d(att_out) [N, C], d(qkv) [N, 3C],
        // d(ln1) [N, C] (stored as E); attention's dA scratch (fp32). Gradient temporaries start at zero since
        // kernels accumulate.
        let sizes = [4 * n * c, 4 * n * c, n * c, n * c, n * c, 3 * n * c, n * c];
        let buf = zeroed(&mut scratch.stored, sizes.iter().sum());
        let (dfc_gelu, buf) = buf.split_at_mut(sizes[0]);
        let (dfc, buf) = buf.split_at_mut(sizes[1]);
        let (dln2, buf) = buf.split_at_mut(sizes[2]);
        let (dresid, buf) = buf.split_at_mut(sizes[3]);
        let (datt_out, buf) = buf.split_at_mut(sizes[4]);
        let (dqkv, buf) = buf.split_at_mut(sizes[5]);
        let dln1 = buf;
        let att_scratch = sized(&mut scratch.wide, shape.att_len());

        // MLP branch: out = resid + c_proj(gelu(c_fc(ln_2(resid)))).
        linear_backward(
            Some(dfc_gelu),
            dfc_proj_w,
            Some(dfc_proj_b),
            w(p.fc_proj_w),
            dout,
            &s.fc_gelu,
            v(p.fc_proj_w),
            WeightLayout::InOut,
            n,
            4 * c,
            c,
        );
        gelu_backward(dfc, &s.fc, dfc_gelu);
        linear_backward(
            Some(dln2),
            dfc_w,
            Some(dfc_b),
            w(p.fc_w),
            dfc,
            &s.ln2,
            v(p.fc_w),
            WeightLayout::InOut,
            n,
            c,
            4 * c,
        );
        dresid.copy_from_slice(&dout[..n * c]);
        let (ln2_w, ln2_mean, ln2_rstd) = (v(p.ln2_w), &s.ln2_mean, &s.ln2_rstd);
        layernorm_backward(dresid, dln2_w, dln2_b, w(p.ln2_w), dln2, &s.resid, ln2_w, ln2_mean, ln2_rstd, n, c);
        // Attention branch: resid = x + c_proj(attn(c_attn(ln_1(x)))).
        linear_backward(
            Some(datt_out),
            dattn_proj_w,
            Some(dattn_proj_b),
            w(p.attn_proj_w),
            dresid,
            &s.att_out,
            v(p.attn_proj_w),
            WeightLayout::InOut,
            n,
            c,
            c,
        );
        attention_backward(dqkv, att_scratch, datt_out, &s.qkv, &s.att, shape);
        linear_backward(
            Some(dln1),
            dattn_w,
            Some(dattn_b),
            w(p.attn_w),
            dqkv,
            &s.ln1,
            v(p.attn_w),
            WeightLayout::InOut,
            n,
            c,
            3 * c,
        );
        let (ln1_w, ln1_mean, ln1_rstd) = (v(p.ln1_w), &s.ln1_mean, &s.ln1_rstd);
        layernorm_backward(dx, dln1_w, dln1_b, w(p.ln1_w), dln1, x, ln1_w, ln1_mean, ln1_rstd, n, c);
        // The residual path.
        add_into(&mut dx[..n * c], dresid);
    }
}
