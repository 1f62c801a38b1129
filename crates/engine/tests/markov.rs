//! Training reaches the entropy floor of a source whose entropy is known: a random first-order Markov chain.
//!
//! The oracle is the chain itself: its entropy rate `H = Σ_i π_i H(P_i·)` and, on the held-out tokens, the true
//! model's cross-entropy `-mean log P(x_{t+1} | x_t)`. A model cannot beat the latter on average; a trained one
//! should come within a few percent of it.

use rustspeed_config::DeepSpeedConfig;
use rustspeed_engine::Engine;
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, LstmConfig, ModelConfig};

/// The issue's bar: within 3% of the entropy floor.
const FLOOR_RTOL: f64 = 0.03;
/// Symbols of the chain.
const V: usize = 8;

struct Chain {
    /// Row-stochastic transition matrix `P[i][j] = P(next = j | current = i)`.
    p: Vec<[f64; V]>,
}

impl Chain {
    /// Rows `softmax(2 · z)` with `z ~ N(0, 1)`: peaked enough that the entropy is well below `ln V`.
    fn random(rng: &mut Rng) -> Chain {
        let p = (0..V)
            .map(|_| {
                let w: Vec<f64> = (0..V).map(|_| (2.0 * rng.normal()).exp()).collect();
                let sum: f64 = w.iter().sum();
                std::array::from_fn(|j| w[j] / sum)
            })
            .collect();
        Chain { p }
    }

    /// Entropy rate in nats: the stationary distribution (power iteration) weighting each row's entropy.
    fn entropy_rate(&self) -> f64 {
        let mut pi = [1.0 / V as f64; V];
        for _ in 0..1000 {
            pi = std::array::from_fn(|j| (0..V).map(|i| pi[i] * self.p[i][j]).sum());
        }
        (0..V).map(|i| pi[i] * -self.p[i].iter().map(|&q| q * q.ln()).sum::<f64>()).sum()
    }

    fn sample(&self, rng: &mut Rng, len: usize) -> Vec<u32> {
        let mut x = vec![0u32; len];
        for t in 1..len {
            let (row, mut u) = (&self.p[x[t - 1] as usize], rng.uniform());
            x[t] = (0..V)
                .find(|&j| {
                    u -= row[j];
                    u < 0.0
                })
                .unwrap_or(V - 1) as u32;
        }
        x
    }
}

/// Trains `model` on the chain's tokens and returns (validation loss, true model's loss on the same windows,
/// entropy rate).
fn train_on_chain(model: ModelConfig, json: &str, steps: usize) -> (f64, f64, f64) {
    let mut rng = Rng::new(2024);
    let chain = Chain::random(&mut rng);
    let tokens = chain.sample(&mut rng, 120_000);
    let (train, val) = tokens.split_at(100_000);
    let m = model.build().unwrap();
    let params = m.layout().init_params(1);
    let mut engine = Engine::new(m, params, DeepSpeedConfig::from_json_str(json).unwrap()).unwrap();
    let (b, t) = (engine.batch_sizes().micro_batch_size, 32);
    for _ in 0..steps {
        engine
            .train_batch(t, |x, y| {
                x.clear();
                y.clear();
                for _ in 0..b {
                    let start = rng.below((train.len() - t - 1) as u64) as usize;
                    x.extend_from_slice(&train[start..start + t]);
                    y.extend_from_slice(&train[start + 1..start + t + 1]);
                }
            })
            .unwrap();
    }
    let windows: Vec<(Vec<u32>, Vec<u32>)> = (0..(val.len() - 1) / t)
        .map(|w| (val[w * t..(w + 1) * t].to_vec(), val[w * t + 1..(w + 1) * t + 1].to_vec()))
        .collect();
    let val_loss = engine.evaluate(t, windows.iter().map(|(x, y)| (x.as_slice(), y.as_slice()))).unwrap() as f64;
    let pairs = windows.iter().flat_map(|(x, y)| x.iter().zip(y));
    let n = (windows.len() * t) as f64;
    let true_loss = pairs.map(|(&a, &b)| -chain.p[a as usize][b as usize].ln()).sum::<f64>() / n;
    (val_loss, true_loss, chain.entropy_rate())
}

fn assert_near_floor(name: &str, (val_loss, true_loss, entropy): (f64, f64, f64)) {
    assert!((true_loss - entropy).abs() < 0.02 * entropy, "sampling check: {true_loss} vs entropy rate {entropy}");
    assert!(entropy < 0.8 * (V as f64).ln(), "the chain should be far from uniform: {entropy}");
    assert!(
        val_loss <= (1.0 + FLOOR_RTOL) * true_loss,
        "{name}: validation loss {val_loss:.4} is not within 3% of the floor {true_loss:.4} (entropy rate {entropy:.4})"
    );
}

#[test]
fn lstm_reaches_the_entropy_rate_of_a_markov_chain() {
    let model = ModelConfig::Lstm(LstmConfig { vocab_size: V, embedding_dim: 16, hidden_size: 32, num_layers: 1 });
    let json = r#"{"train_batch_size": 16, "optimizer": {"type": "Adam", "params": {"lr": 0.01}}}"#;
    assert_near_floor("lstm", train_on_chain(model, json, 300));
}

#[test]
fn gpt_reaches_the_entropy_rate_of_a_markov_chain() {
    let model = ModelConfig::Gpt(GptConfig { vocab_size: V, block_size: 32, n_layer: 1, n_head: 2, n_embd: 32 });
    let json = r#"{"train_batch_size": 16, "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}"#;
    assert_near_floor("gpt", train_on_chain(model, json, 300));
}
