//! rustspeed-data: text → tokenizer → token shards on disk → a loader of (input, target) batches.
//!
//! - [`Tokenizer`]: character-level, byte-level BPE trained on the corpus, or a Hugging Face `tokenizer.json`
//!   (both of the latter through the `tokenizers` crate), chosen by a [`TokenizerSpec`] (`char`, `bpe:VOCAB`,
//!   `path/to/tokenizer.json`).
//! - [`prepare`]: tokenizes a UTF-8 corpus and writes a data directory — tokenizer files, `train.bin`,
//!   `val.bin` (see [`shard`] for the format) and `meta.json` — installed atomically.
//! - [`Dataset::open`]: reads such a directory back and checks it.
//! - [`Loader`]: cuts a split into windows of `T + 1` tokens and hands each rank its disjoint share of every
//!   seeded global batch, resumable exactly from a [`LoaderState`].

mod char_vocab;
mod dataset;
mod error;
mod hf;
mod loader;
pub mod meta;
mod prepare;
mod progress;
pub mod shard;
mod spec;
mod tokenizer;

pub use dataset::Dataset;
pub use error::{DataError, ShardProblem};
pub use loader::{Loader, LoaderState};
pub use meta::{DatasetMeta, ShardMeta};
pub use prepare::{prepare, PrepareOptions, PrepareReport};
pub use shard::TokenShard;
pub use spec::TokenizerSpec;
pub use tokenizer::{
    Tokenizer, HF_TOKENIZER_CONFIG_FILE, HF_TOKENIZER_FILE, MAX_BPE_TRAINING_PIECE_BYTES, TOKENIZER_META_FILE,
};
