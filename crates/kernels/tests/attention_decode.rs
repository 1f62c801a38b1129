//! The generation attention: each query row against its own sequence's cached keys and values equals row `p` of
//! the float64 reference causal attention over that sequence (grouped-query and multi-head), for rows of
//! different sequences and positions in one call.

use rustspeed_kernels::attention::AttentionShape;
use rustspeed_kernels::attention_decode::{attention_decode, CachedSequence, DecodeShape};
use rustspeed_kernels::reference;
use rustspeed_kernels::rng::Rng;

/// fp32 dot products and softmax over at most 40 positions against float64: within 2e-6 seen; 25x margin.
const ATOL: f64 = 5e-5;

fn randn(rng: &mut Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.normal()).collect()
}

#[test]
fn each_row_equals_the_reference_row_of_its_sequence() {
    let mut rng = Rng::new(11);
    for (nh, nkv, hs) in [(4, 4, 8), (6, 2, 5), (4, 1, 3)] {
        let (q_width, kv_width) = (nh * hs, nkv * hs);
        let stride = q_width + 2 * kv_width;
        // Three sequences of different lengths; the query row of each is its last position.
        let lens = [1usize, 17, 40];
        let seqs: Vec<Vec<f64>> = lens.iter().map(|&t| randn(&mut rng, t * stride)).collect();
        let expected: Vec<Vec<f64>> = seqs
            .iter()
            .zip(lens)
            .map(|(qkv, t)| {
                let shape = AttentionShape::gqa(1, t, nh, nkv, hs);
                let (mut out, mut att) = (vec![0.0; t * q_width], vec![0.0; shape.att_len()]);
                reference::attention_forward(&mut out, &mut att, qkv, shape);
                out[(t - 1) * q_width..].to_vec()
            })
            .collect();
        let narrow = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        // The caches: each sequence's key and value columns; the queries: each sequence's last row.
        let column = |qkv: &[f64], t: usize, at: usize| {
            narrow(&(0..t).flat_map(|p| qkv[p * stride + at..p * stride + at + kv_width].to_vec()).collect::<Vec<_>>())
        };
        let ks: Vec<Vec<f32>> = seqs.iter().zip(lens).map(|(s, t)| column(s, t, q_width)).collect();
        let vs: Vec<Vec<f32>> = seqs.iter().zip(lens).map(|(s, t)| column(s, t, q_width + kv_width)).collect();
        let q: Vec<f32> = seqs.iter().zip(lens).flat_map(|(s, t)| narrow(&s[(t - 1) * stride..t * stride])).collect();
        let rows: Vec<CachedSequence<f32>> =
            (0..3).map(|i| CachedSequence { k: &ks[i], v: &vs[i], len: lens[i] }).collect();
        let mut out = vec![0.0f32; 3 * q_width];
        attention_decode(&mut out, &q, stride, &rows, DecodeShape { nh, nkv, hs });
        for (i, want) in expected.iter().enumerate() {
            for (j, (&a, &b)) in out[i * q_width..(i + 1) * q_width].iter().zip(want).enumerate() {
                assert!((a as f64 - b).abs() <= ATOL, "nh {nh} nkv {nkv} row {i} col {j}: {a} vs {b}");
            }
        }
    }
}
