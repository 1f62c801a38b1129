//! A prepared data directory, opened and checked.

use std::path::{Path, PathBuf};

use crate::error::{DataError, ShardProblem};
use crate::meta::{DatasetMeta, ShardMeta, SplitFiles};
use crate::shard::{checksum_text, token_width, TokenShard};
use crate::split::TokenSplit;
use crate::tokenizer::Tokenizer;

/// The tokenizer and the two splits of a directory written by [`crate::prepare`] (any format version it reads).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub tokenizer: Tokenizer,
    pub train: TokenSplit,
    pub val: TokenSplit,
    pub meta: DatasetMeta,
    dir: PathBuf,
}

impl Dataset {
    /// Opens `dir` and checks it whole: `meta.json` (present, a format version this build reads), the tokenizer's
    /// vocabulary and end-of-text token against `meta.json`, and for every shard its header (magic, version,
    /// token width), its size against its token count and `meta.json`, its checksum, and that every token id is
    /// below the vocabulary size. The last two read each shard once, sequentially (about a second per few GB),
    /// which is cheap next to training on it and turns a damaged file into an error here instead of a wrong
    /// embedding lookup later.
    pub fn open(dir: &Path) -> Result<Dataset, DataError> {
        let meta = DatasetMeta::read(dir)?;
        let tokenizer = Tokenizer::load(dir)?;
        if tokenizer.vocab_size() != meta.vocab_size {
            return Err(DataError::VocabMismatch {
                dir: dir.to_path_buf(),
                meta_vocab: meta.vocab_size,
                tokenizer_vocab: tokenizer.vocab_size(),
            });
        }
        if let Some(eot) = &meta.eot {
            if tokenizer.eot_id() != Some(eot.id) {
                return Err(DataError::BadFile {
                    path: dir.join(crate::meta::META_FILE),
                    problem: format!(
                        "the end-of-text token is {:?} (id {}), but the tokenizer's is {:?} (id {:?})",
                        eot.token,
                        eot.id,
                        tokenizer.eot_token(),
                        tokenizer.eot_id()
                    ),
                });
            }
        }
        let train = open_split(dir, "train", &meta.train, meta.vocab_size)?;
        let val = open_split(dir, "validation", &meta.val, meta.vocab_size)?;
        Ok(Dataset { tokenizer, train, val, meta, dir: dir.to_path_buf() })
    }

    pub fn vocab_size(&self) -> usize {
        self.meta.vocab_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn open_split(dir: &Path, name: &str, files: &SplitFiles, vocab_size: usize) -> Result<TokenSplit, DataError> {
    let shards = files
        .shards
        .iter()
        .map(|shard| open_checked(&dir.join(&shard.file), name, shard, vocab_size))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TokenSplit::new(name, shards))
}

fn open_checked(path: &Path, split: &str, expected: &ShardMeta, vocab_size: usize) -> Result<TokenShard, DataError> {
    let bad = |problem| DataError::BadShard { path: path.to_path_buf(), problem };
    let shard = TokenShard::open(path, split)?;
    if shard.len() as u64 != expected.tokens {
        return Err(bad(ShardProblem::CountMismatch {
            header_tokens: shard.len() as u64,
            meta_tokens: expected.tokens,
        }));
    }
    let width = token_width(vocab_size);
    if shard.token_width() != width {
        return Err(bad(ShardProblem::WidthMismatch { width: shard.token_width(), expected: width, vocab_size }));
    }
    let actual = checksum_text(shard.checksum());
    if actual != expected.checksum {
        return Err(bad(ShardProblem::ChecksumMismatch { expected: expected.checksum.clone(), actual }));
    }
    if let Some((position, id)) = shard.first_out_of_vocab(vocab_size) {
        return Err(DataError::TokenOutOfVocab {
            context: format!("token shard {}", path.display()),
            position,
            id,
            vocab_size,
        });
    }
    Ok(shard)
}
