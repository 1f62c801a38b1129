//! The in-place softmax cross-entropy backward equals the accumulating one (itself checked against the float64
//! reference in `kernels.rs`) applied to a zeroed buffer, bit for bit, with and without ignored rows.

use rustspeed_kernels::rng::Rng;
use rustspeed_kernels::xent::{softmax_xent_backward, softmax_xent_backward_in_place, softmax_xent_forward};

#[test]
fn in_place_backward_equals_accumulating_into_zeros() {
    let (n, v) = (37, 301);
    let mut rng = Rng::new(5);
    for ignore in [None, Some(7u32)] {
        let mut probs: Vec<f32> = (0..n * v).map(|_| rng.normal() as f32 * 3.0).collect();
        let targets: Vec<u32> = (0..n).map(|i| if i % 5 == 0 { 7 } else { rng.below(v as u64) as u32 }).collect();
        let mut losses = vec![0.0; n];
        let loss = softmax_xent_forward(&mut probs, &mut losses, &targets, ignore, n, v);
        let mut expected = vec![0.0f32; n * v];
        softmax_xent_backward(&mut expected, &probs, &targets, ignore, 0.5, loss.count, n, v);
        softmax_xent_backward_in_place(&mut probs, &targets, ignore, 0.5, loss.count, n, v);
        assert_eq!(probs, expected, "ignore index {ignore:?}");
    }
}
