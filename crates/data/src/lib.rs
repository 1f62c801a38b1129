//! rustspeed-data: text → tokenizer → token shards on disk → a loader of (input, target) batches.
//!
//! - [`Tokenizer`]: character-level, byte-level BPE trained on the corpus, or a Hugging Face `tokenizer.json`
//!   (both of the latter through the `tokenizers` crate), chosen by a [`TokenizerSpec`] (`char`, `bpe:VOCAB`,
//!   `path/to/tokenizer.json`).
//! - [`prepare`]: streams the documents of any number of inputs (text, JSON Lines, Parquet; gzip or zstd
//!   compressed; files, directories, glob patterns) through the tokenizer on all cores, each document followed
//!   by the end-of-text token, into a data directory — tokenizer files, numbered shards of both splits (see
//!   [`shard`] for the file format) and `meta.json` listing them (see [`meta`]) — installed atomically.
//! - [`Dataset::open`]: reads such a directory back (or one of the previous format) and checks it.
//! - [`Loader`]: cuts a split — its shards read as one token sequence, a [`TokenSplit`] — into windows of
//!   `T + 1` tokens and hands each rank its disjoint share of every seeded global batch, resumable exactly from a
//!   [`LoaderState`].
//!
//! Modules of `prepare`: `input` (which files, formats, decompression), `documents` (records of a file),
//! `stream` (chunks read ahead, tokenized in parallel), `survey` (the char set, the document count, the BPE
//! sample), `shard_writer` (numbered shards), `install` (staging directory and rename).

mod char_vocab;
mod dataset;
mod documents;
mod eot;
mod error;
mod hf;
mod input;
mod install;
mod loader;
pub mod meta;
mod prepare;
mod progress;
pub mod shard;
mod shard_writer;
mod spec;
mod split;
mod stream;
mod survey;
mod tokenizer;

pub use dataset::Dataset;
pub use eot::{EOT_SPELLINGS, EOT_TOKEN};
pub use error::{DataError, ShardProblem};
pub use hf::MAX_BPE_TRAINING_PIECE_BYTES;
pub use input::InputFormat;
pub use loader::{Loader, LoaderState};
pub use meta::{DatasetMeta, ShardMeta, SplitBy};
pub use prepare::{
    prepare, PrepareOptions, PrepareReport, ValSplit, DEFAULT_BPE_SAMPLE_BYTES, DEFAULT_SHARD_TOKENS,
    DEFAULT_SPLIT_SEED,
};
pub use shard::TokenShard;
pub use spec::TokenizerSpec;
pub use split::TokenSplit;
pub use tokenizer::{Tokenizer, HF_TOKENIZER_CONFIG_FILE, HF_TOKENIZER_FILE, TOKENIZER_META_FILE};
