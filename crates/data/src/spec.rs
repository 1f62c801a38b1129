//! Which tokenizer `prepare` builds, as written on the command line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::DataError;

/// The byte-level BPE alphabet is the 256 byte values, so a smaller vocabulary cannot represent every text; one
/// more id is the end-of-text token.
pub const MIN_BPE_VOCAB: usize = 257;

/// Token ids are `u32`, and the vocabulary is held in memory: four million entries is far above any real model.
pub const MAX_VOCAB: usize = 1 << 22;

/// A tokenizer to build from (or, for `HfJson`, load for) a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// One token per Unicode scalar value of the corpus; the vocabulary is the corpus's sorted set of characters.
    Char,
    /// Byte-level BPE trained on the corpus with the Hugging Face `tokenizers` crate, up to `vocab_size` tokens
    /// (the 256 byte tokens and the end-of-text token included).
    Bpe { vocab_size: usize },
    /// A Hugging Face `tokenizer.json`, used as it is and copied into the data directory.
    HfJson(PathBuf),
}

impl FromStr for TokenizerSpec {
    type Err = DataError;

    /// `char` | `bpe:VOCAB` | a path to a `tokenizer.json` (a path ends in `.json` or contains a `/`).
    fn from_str(text: &str) -> Result<Self, DataError> {
        let invalid = |reason: String| DataError::InvalidSpec { spec: text.to_string(), reason };
        let trimmed = text.trim();
        if trimmed == "char" {
            return Ok(TokenizerSpec::Char);
        }
        if trimmed == "bpe" {
            return Err(invalid("bpe needs a vocabulary size, e.g. bpe:2048".to_string()));
        }
        if let Some(size) = trimmed.strip_prefix("bpe:") {
            let vocab_size: usize = size
                .trim()
                .parse()
                .map_err(|_| invalid(format!("'{size}' is not a vocabulary size (a whole number, e.g. bpe:2048)")))?;
            if !(MIN_BPE_VOCAB..=MAX_VOCAB).contains(&vocab_size) {
                return Err(invalid(format!(
                    "vocabulary size {vocab_size} is outside [{MIN_BPE_VOCAB}, {MAX_VOCAB}]: byte-level BPE needs \
                     the 256 byte tokens and the end-of-text token"
                )));
            }
            return Ok(TokenizerSpec::Bpe { vocab_size });
        }
        if trimmed.ends_with(".json") || trimmed.contains(std::path::MAIN_SEPARATOR) || trimmed.contains('/') {
            return Ok(TokenizerSpec::HfJson(PathBuf::from(trimmed)));
        }
        Err(invalid("expected 'char', 'bpe:VOCAB' (e.g. bpe:2048) or a path to a tokenizer.json".to_string()))
    }
}

impl fmt::Display for TokenizerSpec {
    /// The CLI syntax that parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerSpec::Char => write!(f, "char"),
            TokenizerSpec::Bpe { vocab_size } => write!(f, "bpe:{vocab_size}"),
            TokenizerSpec::HfJson(path) => write!(f, "{}", path.display()),
        }
    }
}
