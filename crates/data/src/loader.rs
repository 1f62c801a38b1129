//! The batch loader: seeded, rank-aware, exactly resumable.
//!
//! A split of `n` tokens (its shards read as one sequence, see [`TokenSplit`]) is cut into `W = (n - 1) / T`
//! windows; window `w` is tokens `[w·T, w·T + T + 1)`, its first `T` tokens the input and its last `T` the
//! targets. Windows overlap by one token (stride `T`), so every token from position 1 to `W·T` is a target exactly
//! once per epoch; the at most `T - 1` tokens after the last window are never targets. Windows run across shard
//! boundaries and across documents (the end-of-text token between documents tells the model where one ends, as in
//! GPT-2's training), so the windows and batches depend on the token stream only, not on how it was sharded.
//!
//! The data order is one stream of windows: epoch 0's permutation of the `W` windows, then epoch 1's, and so on,
//! each permutation a Fisher–Yates shuffle drawn from SplitMix64 seeded by (seed, epoch). Call `k` (counting
//! from 0) of every rank reads the global batch at stream positions `[k·G, (k+1)·G)`, `G = world_size · B`, and
//! rank `r` takes positions `[k·G + r·B, k·G + (r+1)·B)` of it: ranks get disjoint windows and together exactly
//! what one rank with batch `G` would read. A global batch that runs past an epoch's end continues into the next
//! epoch's permutation, so no window is dropped and each epoch covers every window exactly once.

use serde_json::{json, Value};

use rustspeed_kernels::rng::Rng;

use crate::error::DataError;
use crate::split::TokenSplit;

/// Where a loader is in its stream: `epoch` and `cursor` (stream position within the epoch of the next global
/// batch's first window; `0 <= cursor < windows`), and the `seed` that fixes every epoch's order. The same state
/// on any rank, so a checkpoint needs only one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
    pub seed: u64,
}

impl LoaderState {
    /// `{"epoch": .., "cursor": .., "seed": ..}`, for checkpoint manifests.
    pub fn to_json(&self) -> Value {
        json!({ "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed })
    }

    /// Reads what [`LoaderState::to_json`] wrote.
    pub fn from_json(value: &Value) -> Result<LoaderState, DataError> {
        let field = |key: &str| {
            value.get(key).and_then(Value::as_u64).ok_or_else(|| DataError::BadLoaderState {
                problem: format!("\"{key}\" is missing or not a whole number in {value}"),
            })
        };
        Ok(LoaderState { epoch: field("epoch")?, cursor: field("cursor")?, seed: field("seed")? })
    }
}

#[derive(Clone, Debug)]
pub struct Loader {
    tokens: TokenSplit,
    micro_batch: usize,
    seq_len: usize,
    rank: usize,
    world_size: usize,
    windows: usize,
    seed: u64,
    epoch: u64,
    cursor: usize,
    /// The permutation of `order_epoch`, kept because consecutive calls read the same epoch.
    order: Vec<usize>,
    order_epoch: Option<u64>,
    window: Vec<u32>,
}

impl Loader {
    /// A loader of `micro_batch` (B) windows of `seq_len` (T) tokens per call for `rank` of `world_size`, over
    /// `tokens`: a [`TokenSplit`] or one [`crate::TokenShard`] (by reference; its memory maps are shared, not
    /// copied). Fails if B, T or the world size is zero, the rank is out of range, or the split has fewer
    /// windows than one global batch (`world_size · B`).
    pub fn new(
        tokens: impl Into<TokenSplit>,
        micro_batch: usize,
        seq_len: usize,
        seed: u64,
        rank: usize,
        world_size: usize,
    ) -> Result<Loader, DataError> {
        let positive = |name, value: usize| {
            if value == 0 {
                Err(DataError::InvalidOption { name, value: "0".to_string(), rule: "must be at least 1" })
            } else {
                Ok(())
            }
        };
        positive("micro_batch", micro_batch)?;
        positive("seq_len", seq_len)?;
        positive("world_size", world_size)?;
        if rank >= world_size {
            return Err(DataError::InvalidOption {
                name: "rank",
                value: rank.to_string(),
                rule: "must be below world_size",
            });
        }
        let tokens = tokens.into();
        let windows = tokens.len().saturating_sub(1) / seq_len;
        let needed = world_size.saturating_mul(micro_batch);
        if windows < needed {
            return Err(DataError::NotEnoughWindows {
                split: tokens.split().to_string(),
                windows,
                window_tokens: seq_len + 1,
                needed,
            });
        }
        Ok(Loader {
            tokens,
            micro_batch,
            seq_len,
            rank,
            world_size,
            windows,
            seed,
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
            order_epoch: None,
            window: vec![0; seq_len + 1],
        })
    }

    /// Fills `tokens` and `targets` with this rank's next B×T tokens each (row-major, one window per row);
    /// `targets[i]` is the token after `tokens[i]` in the split. Every rank must call this once per step.
    pub fn next_batch(&mut self, tokens: &mut Vec<u32>, targets: &mut Vec<u32>) {
        let t = self.seq_len;
        tokens.clear();
        targets.clear();
        tokens.reserve(self.micro_batch * t);
        targets.reserve(self.micro_batch * t);
        let mut epoch = self.epoch;
        let mut position = self.cursor + self.rank * self.micro_batch;
        for _ in 0..self.micro_batch {
            // cursor < W and the global batch is at most W windows, so this crosses at most one epoch end.
            if position >= self.windows {
                position -= self.windows;
                epoch += 1;
            }
            let window = self.window_at(epoch, position);
            self.tokens.copy_tokens(window * t, &mut self.window);
            tokens.extend_from_slice(&self.window[..t]);
            targets.extend_from_slice(&self.window[1..]);
            position += 1;
        }
        self.cursor += self.world_size * self.micro_batch;
        if self.cursor >= self.windows {
            self.cursor -= self.windows;
            self.epoch += 1;
        }
    }

    /// The position of the next global batch; identical on every rank.
    pub fn state(&self) -> LoaderState {
        LoaderState { epoch: self.epoch, cursor: self.cursor as u64, seed: self.seed }
    }

    /// Continues from `state`: the following batches are exactly those that followed when it was taken. The
    /// state's seed replaces the loader's, since it fixes the order the run was already reading.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        if state.cursor >= self.windows as u64 {
            return Err(DataError::BadLoaderState {
                problem: format!(
                    "cursor {} is not below the {} windows of the {} split (was the checkpoint made with another \
                     data set or sequence length?)",
                    state.cursor,
                    self.windows,
                    self.tokens.split()
                ),
            });
        }
        if state.seed != self.seed {
            self.order_epoch = None;
        }
        self.seed = state.seed;
        self.epoch = state.epoch;
        self.cursor = state.cursor as usize;
        Ok(())
    }

    /// The epoch of the next global batch's first window (0 until the first epoch is consumed).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of windows per epoch, `(tokens - 1) / T`.
    pub fn windows_per_epoch(&self) -> usize {
        self.windows
    }

    /// Windows read by all ranks together per call: `world_size · B`.
    pub fn global_batch(&self) -> usize {
        self.world_size * self.micro_batch
    }

    fn window_at(&mut self, epoch: u64, position: usize) -> usize {
        if self.order_epoch != Some(epoch) {
            shuffled_order(self.windows, epoch_seed(self.seed, epoch), &mut self.order);
            self.order_epoch = Some(epoch);
        }
        self.order[position]
    }
}

/// A seed per (seed, epoch): SplitMix64 outputs are a bijective hash of their state, so hashing the run's seed,
/// xoring in the epoch and hashing again gives unrelated streams for different epochs and seeds. (Seeding the
/// shuffle with `seed + epoch` directly would not: SplitMix64 from state `s + γ` is the stream from `s` shifted
/// by one draw.)
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    let run = Rng::new(seed).next_u64();
    Rng::new(run ^ epoch).next_u64()
}

/// Fisher–Yates (Durstenfeld) shuffle of `0..n` into `order`: for i = n-1 down to 1, swap i with a uniform
/// j in [0, i].
fn shuffled_order(n: usize, seed: u64, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..n);
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
}
