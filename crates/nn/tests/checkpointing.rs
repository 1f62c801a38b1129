//! Activation checkpointing: the backward recomputes each layer's activations from its input, so losses and
//! gradients are bit-identical with and without it, while the activations held at once fall by a layer's saved
//! buffers for every layer past the first.

use rustspeed_kernels::cast::{bf16, Element};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, LstmConfig, ModelConfig};

const VOCAB: usize = 23;
const B: usize = 2;
const T: usize = 12;

fn batch(seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut ids = || (0..B * T).map(|_| rng.below(VOCAB as u64) as u32).collect::<Vec<u32>>();
    (ids(), ids())
}

/// Two micro-steps (the second adding into the first's gradients): the losses, the gradients and the most
/// activation bytes held at once.
fn run<E: Element>(config: &ModelConfig, checkpointing: bool) -> (Vec<f32>, Vec<E>, usize) {
    let mut model = config.build_as::<E>().unwrap();
    model.set_activation_checkpointing(checkpointing);
    let mut params = vec![E::default(); model.num_params()];
    let init = model.layout().init_params(3);
    params.iter_mut().zip(&init).for_each(|(p, &x)| *p = E::from_f32(x));
    let mut grads = vec![E::default(); params.len()];
    let mut losses = Vec::new();
    for seed in 0..2 {
        let (x, y) = batch(seed);
        losses.push(model.forward(&params, &x, Some(&y), B, T).unwrap().unwrap().mean);
        model.backward(&params, &mut grads, 0.5).unwrap();
    }
    (losses, grads, model.take_activation_peak())
}

fn gpt(n_layer: usize) -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: VOCAB, block_size: T, n_layer, n_head: 2, n_embd: 16 })
}

fn lstm(num_layers: usize) -> ModelConfig {
    ModelConfig::Lstm(LstmConfig { vocab_size: VOCAB, embedding_dim: 8, hidden_size: 16, num_layers })
}

fn check<E: Element>(family: &str, build: fn(usize) -> ModelConfig, depths: [usize; 3]) {
    let mut saved = Vec::new();
    for depth in depths {
        let config = build(depth);
        let (plain_losses, plain_grads, plain_peak) = run::<E>(&config, false);
        let (losses, grads, peak) = run::<E>(&config, true);
        let case = format!("{family} depth {depth} {}", E::NAME);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&losses), bits(&plain_losses), "{case}: losses");
        assert!(grads == plain_grads, "{case}: gradients differ");
        // One layer is recomputed while the others hold only their outputs: nothing to gain with one layer.
        let gains = if depth == 1 { peak <= plain_peak } else { peak < plain_peak };
        assert!(gains, "{case}: {peak} bytes with checkpointing, {plain_peak} without");
        saved.push(plain_peak - peak);
    }
    // Each added layer adds its saved activations to the plain run only.
    assert!(saved.windows(2).all(|w| w[1] > w[0]), "{family}: savings {saved:?} do not grow with depth");
}

#[test]
fn checkpointed_gpt_matches_bit_for_bit_and_holds_less() {
    check::<f32>("gpt", gpt, [1, 2, 4]);
    check::<bf16>("gpt", gpt, [1, 2, 4]);
}

#[test]
fn checkpointed_lstm_matches_bit_for_bit_and_holds_less() {
    check::<f32>("lstm", lstm, [1, 2, 4]);
    check::<bf16>("lstm", lstm, [1, 2, 4]);
}
