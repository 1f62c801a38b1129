//! Generation: cached decoding (key/value caches, the LSTM's carried state) against the plain path that runs the
//! whole sequence again for every token, for each family; batched decoding against one sequence at a time; the
//! sampling rules against hand-computed cases.

use rustspeed_engine::generate::{sample_token, Batcher, FinishReason, SamplingParams, Strategy};
use rustspeed_kernels::rng::Rng;
use rustspeed_nn::{GptConfig, LlamaConfig, LstmConfig, Model, ModelConfig};

/// Cached and recomputed logits differ by the order of fp32 sums (the decode attention's dot products against
/// the blocked training kernel's, products of one row against many): within 2e-5 seen; 10x margin.
const LOGITS_ATOL: f32 = 2e-4;
/// Tokens generated in the exactness checks (the 200).
const TOKENS: usize = 200;

fn gpt() -> ModelConfig {
    ModelConfig::Gpt(GptConfig { vocab_size: 37, block_size: 256, n_layer: 2, n_head: 4, n_embd: 32 })
}

fn llama() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 37,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        attention_bias: true,
        mlp_bias: false,
        initializer_range: 0.02,
    })
}

fn lstm() -> ModelConfig {
    ModelConfig::Lstm(LstmConfig { vocab_size: 37, embedding_dim: 16, hidden_size: 32, num_layers: 2 })
}

/// A model whose logits are far from ties: its initial weights scaled up, so that greedy choices are decided by
/// margins much wider than fp32 reordering.
fn model(config: &ModelConfig) -> (Model, Vec<f32>) {
    let model = config.build().unwrap();
    let params = model.layout().init_params(7).iter().map(|p| p * 6.0).collect();
    (model, params)
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens, temperature: 0.0, ..SamplingParams::default() }
}

/// Greedy tokens and the logits each was drawn from, one prompt, with `strategy`.
fn run(config: &ModelConfig, strategy: Strategy, prompt: &[u32]) -> (Vec<u32>, FinishReason) {
    let (model, params) = model(config);
    let mut batcher = Batcher::new(model, params, 1, strategy).unwrap();
    batcher.add(prompt, greedy(TOKENS)).unwrap();
    let mut out = Vec::new();
    loop {
        for e in batcher.step().unwrap() {
            out.extend(e.token);
            if let Some(finish) = e.finish {
                return (out, finish);
            }
        }
    }
}

#[test]
fn cached_greedy_decoding_gives_the_recomputed_tokens_for_every_family() {
    let prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    for (name, config) in [("gpt", gpt()), ("llama", llama()), ("lstm", lstm())] {
        let (cached, finish) = run(&config, Strategy::Cached, &prompt);
        let (recomputed, _) = run(&config, Strategy::Recompute, &prompt);
        assert_eq!(finish, FinishReason::Length, "{name}");
        assert_eq!(cached.len(), TOKENS, "{name}");
        assert_eq!(cached, recomputed, "{name}: cached decoding chose other tokens");
        let distinct = cached.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 3, "{name}: a degenerate sequence tests little ({distinct} distinct tokens)");
    }
}

/// The cached logits of every step against a forward over the whole sequence so far.
#[test]
fn cached_logits_match_a_forward_over_the_sequence() {
    for (name, config) in [("gpt", gpt()), ("llama", llama()), ("lstm", lstm())] {
        let (mut model, params) = model(&config);
        let mut cache = model.decode_cache(2);
        let mut seq: Vec<u32> = vec![5, 8, 13, 21, 34];
        let mut logits = model.prefill(&params, &mut cache, 1, &seq).unwrap();
        for step in 0..40 {
            model.forward(&params, &seq, None, 1, seq.len()).unwrap();
            let v = model.vocab_size();
            let full = &model.logits().unwrap()[(seq.len() - 1) * v..];
            let worst = logits.iter().zip(full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= LOGITS_ATOL, "{name} step {step}: cached logits differ by {worst}");
            let next = (step * 7 % 37) as u32;
            seq.push(next);
            logits = model.decode_step(&params, &mut cache, &[(1, next)]).unwrap();
        }
    }
}

/// Prompts of different lengths decoded together give each the tokens it gets alone; sequences join and leave
/// between steps.
#[test]
fn batched_decoding_equals_one_at_a_time() {
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[7, 7, 7, 7, 7, 7, 7, 7, 7], &[30]];
    for (name, config) in [("gpt", gpt()), ("llama", llama()), ("lstm", lstm())] {
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let (model, params) = model(&config);
                rustspeed_engine::generate::generate(model, params, p, greedy(30)).unwrap().0
            })
            .collect();
        let (m, params) = model(&config);
        let mut batcher = Batcher::new(m, params, 3, Strategy::Cached).unwrap();
        let mut out = vec![Vec::new(); 3];
        let mut ids = vec![batcher.add(prompts[0], greedy(30)).unwrap()];
        for step in 0.. {
            // The others join later, while the first is already decoding.
            if step == 5 {
                ids.push(batcher.add(prompts[1], greedy(30)).unwrap());
                ids.push(batcher.add(prompts[2], greedy(30)).unwrap());
            }
            if batcher.active() == 0 {
                break;
            }
            for e in batcher.step().unwrap() {
                let i = ids.iter().position(|&id| id == e.id).unwrap();
                out[i].extend(e.token);
            }
        }
        assert_eq!(out, alone, "{name}");
    }
}

#[test]
fn prompts_past_the_context_and_full_windows_are_handled() {
    let (model, params) = model(&gpt());
    let mut batcher = Batcher::new(model, params, 1, Strategy::Cached).unwrap();
    let err = batcher.add(&vec![1; 256], greedy(5)).unwrap_err().to_string();
    assert!(err.contains("256") && err.contains("context"), "{err}");
    assert!(batcher.add(&[], greedy(5)).is_err());
    batcher.add(&vec![1; 250], greedy(100)).unwrap();
    let mut emitted = 0;
    let finish = loop {
        let e = batcher.step().unwrap()[0];
        emitted += e.token.is_some() as usize;
        if let Some(f) = e.finish {
            break f;
        }
    };
    assert_eq!((finish, emitted), (FinishReason::Window, 6), "250 + 6 fills the 256 positions");
}

#[test]
fn sampling_rules() {
    let mut rng = Rng::new(1);
    let logits = [1.0, 3.0, 2.0, -1.0];
    let p = |f: fn(&mut SamplingParams)| {
        let mut p = SamplingParams { temperature: 1.0, ..SamplingParams::default() };
        f(&mut p);
        p
    };
    // Greedy, top-k 1 and a tiny top-p all pick the most likely token.
    for params in [p(|p| p.temperature = 0.0), p(|p| p.top_k = 1), p(|p| p.top_p = 0.01)] {
        assert_eq!(sample_token(&mut logits.clone(), &[], &params, &mut rng), 1);
    }
    // Top-k 2 never draws outside {1, 2}; top-p 0.85 keeps 1 and 2 (softmax 0.657, 0.242, 0.089, 0.012: the
    // first two reach 0.899), and 0.9 needs the third.
    for params in [p(|p| p.top_k = 2), p(|p| p.top_p = 0.85)] {
        for _ in 0..200 {
            let t = sample_token(&mut logits.clone(), &[], &params, &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
    }
    let drawn: std::collections::BTreeSet<u32> =
        (0..400).map(|_| sample_token(&mut logits.clone(), &[], &p(|p| p.top_p = 0.9), &mut rng)).collect();
    assert_eq!(drawn, [0, 1, 2].into());
    // The penalty divides a seen positive logit and multiplies a seen negative one, once per token.
    let mut penalized = logits;
    sample_token(&mut penalized, &[1, 1, 3], &p(|p| p.repetition_penalty = 2.0), &mut rng);
    assert_eq!(penalized, [1.0, 1.5, 2.0, -2.0]);
    // A seed fixes the draws.
    let draws = |seed| {
        let mut rng = Rng::new(seed);
        (0..50).map(|_| sample_token(&mut logits.clone(), &[], &p(|_| {}), &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draws(9), draws(9));
    assert_ne!(draws(9), draws(10));
}
