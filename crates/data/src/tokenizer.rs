//! One tokenizer type for the three kinds (char, trained byte-level BPE, a Hugging Face `tokenizer.json`), and
//! its files in a data directory.
//!
//! Files: `tokenizer_meta.json` always (`format`, `format_version`, `kind`, `vocab_size`, and for `char` the
//! vocabulary as `chars`, one single-character string per id); for `bpe` and `hf` also `tokenizer.json` in the
//! Hugging Face format, so other tools can load it.

use std::path::Path;

use serde_json::{json, Value};

use crate::char_vocab::CharVocab;
use crate::error::{io_error, DataError};
use crate::hf::HfTokenizer;
use crate::spec::TokenizerSpec;

mod hf_export;
pub use hf_export::HF_TOKENIZER_CONFIG_FILE;

/// Name of the file that says which kind of tokenizer a directory holds.
pub const TOKENIZER_META_FILE: &str = "tokenizer_meta.json";
/// Name of the Hugging Face tokenizer file (`bpe` and `hf` kinds).
pub const HF_TOKENIZER_FILE: &str = "tokenizer.json";
/// Longest word, in bytes, that byte-level BPE training counts whole; longer ones are cut into pieces of at most
/// this many bytes, which bounds the trainer's time (quadratic in a word's length) on text without whitespace or
/// punctuation, and so also the length of a learned token. Ordinary words are far shorter and never cut; encoding
/// never cuts.
pub const MAX_BPE_TRAINING_PIECE_BYTES: usize = 256;
const TOKENIZER_FORMAT: &str = "rustspeed-tokenizer";
const TOKENIZER_FORMAT_VERSION: u64 = 1;

#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    Char(CharVocab),
    /// `trained` is true for byte-level BPE trained by rustspeed (kind "bpe"), false for a loaded file ("hf").
    /// Boxed: the library's tokenizer is over a kilobyte, the char variant a few words.
    Hf {
        tokenizer: Box<HfTokenizer>,
        trained: bool,
    },
}

impl Tokenizer {
    /// Builds the tokenizer `spec` asks for: the char vocabulary or BPE merges come from `corpus`; a
    /// `tokenizer.json` is loaded as it is (and `corpus` is not used).
    pub fn build(spec: &TokenizerSpec, corpus: &str) -> Result<Tokenizer, DataError> {
        match spec {
            TokenizerSpec::Char => Ok(Tokenizer::char_from_corpus(corpus)),
            TokenizerSpec::Bpe { vocab_size } => Tokenizer::train_bpe(corpus, *vocab_size),
            TokenizerSpec::HfJson(path) => Tokenizer::from_hf_json(path),
        }
    }

    /// The character tokenizer whose vocabulary is the sorted set of `corpus`'s characters.
    pub fn char_from_corpus(corpus: &str) -> Tokenizer {
        Tokenizer { inner: Inner::Char(CharVocab::from_corpus(corpus)) }
    }

    /// Byte-level BPE trained on `corpus` with at most `vocab_size` tokens (at least the 256 byte tokens). Words
    /// longer than [`MAX_BPE_TRAINING_PIECE_BYTES`] are trained on in pieces.
    pub fn train_bpe(corpus: &str, vocab_size: usize) -> Result<Tokenizer, DataError> {
        if !(crate::spec::MIN_BPE_VOCAB..=crate::spec::MAX_VOCAB).contains(&vocab_size) {
            return Err(DataError::InvalidOption {
                name: "bpe vocab_size",
                value: vocab_size.to_string(),
                rule: "byte-level BPE needs at least the 256 byte tokens and at most 4194304",
            });
        }
        let tokenizer = Box::new(HfTokenizer::train_byte_level_bpe(corpus, vocab_size)?);
        Ok(Tokenizer { inner: Inner::Hf { tokenizer, trained: true } })
    }

    /// A Hugging Face `tokenizer.json`.
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer, DataError> {
        let tokenizer = Box::new(HfTokenizer::from_file(path)?);
        Ok(Tokenizer { inner: Inner::Hf { tokenizer, trained: false } })
    }

    /// Number of token ids (one more than the largest id), i.e. the model's embedding rows.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Char(vocab) => vocab.len(),
            Inner::Hf { tokenizer, .. } => tokenizer.vocab_size(),
        }
    }

    /// `"char"`, `"bpe"` (byte-level BPE trained by rustspeed) or `"hf"` (a loaded `tokenizer.json`).
    pub fn kind(&self) -> &str {
        match &self.inner {
            Inner::Char(_) => "char",
            Inner::Hf { trained: true, .. } => "bpe",
            Inner::Hf { trained: false, .. } => "hf",
        }
    }

    /// Token ids of `text`, without special tokens. The char tokenizer fails on the first character outside its
    /// vocabulary, naming it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match &self.inner {
            Inner::Char(vocab) => vocab.encode(text),
            Inner::Hf { tokenizer, .. } => tokenizer.encode(text),
        }
    }

    /// The text of `ids`; an id at or above the vocabulary size is an error naming its position.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match &self.inner {
            Inner::Char(vocab) => vocab.decode(ids),
            Inner::Hf { tokenizer, .. } => tokenizer.decode(ids),
        }
    }

    /// Writes the tokenizer's files into `dir` (which must exist).
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        let mut meta = json!({
            "format": TOKENIZER_FORMAT,
            "format_version": TOKENIZER_FORMAT_VERSION,
            "kind": self.kind(),
            "vocab_size": self.vocab_size(),
        });
        match &self.inner {
            Inner::Char(vocab) => {
                let chars: Vec<Value> = vocab.chars().iter().map(|ch| Value::String(ch.to_string())).collect();
                meta["chars"] = Value::Array(chars);
            }
            Inner::Hf { tokenizer, .. } => {
                let path = dir.join(HF_TOKENIZER_FILE);
                std::fs::write(&path, tokenizer.json()).map_err(io_error("write", &path))?;
            }
        }
        let path = dir.join(TOKENIZER_META_FILE);
        let text = serde_json::to_string_pretty(&meta).expect("a JSON value always serializes");
        std::fs::write(&path, text).map_err(io_error("write", &path))
    }

    /// Reads the tokenizer that [`Tokenizer::save`] wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Tokenizer, DataError> {
        let meta_path = dir.join(TOKENIZER_META_FILE);
        let bad = |problem: String| DataError::BadFile { path: meta_path.clone(), problem };
        let text = std::fs::read_to_string(&meta_path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => bad("missing: the directory holds no saved tokenizer".to_string()),
            _ => DataError::Io { action: "read", path: meta_path.clone(), source },
        })?;
        let meta: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if meta.get("format").and_then(Value::as_str) != Some(TOKENIZER_FORMAT) {
            return Err(bad(format!("\"format\" is not \"{TOKENIZER_FORMAT}\"")));
        }
        let version = meta.get("format_version").and_then(Value::as_u64);
        if version != Some(TOKENIZER_FORMAT_VERSION) {
            return Err(bad(format!(
                "\"format_version\" is {}, this build reads {TOKENIZER_FORMAT_VERSION}",
                meta.get("format_version").map_or("missing".to_string(), Value::to_string)
            )));
        }
        let vocab_size = meta
            .get("vocab_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("\"vocab_size\" is missing or not a whole number".to_string()))?;
        let kind = meta.get("kind").and_then(Value::as_str).unwrap_or("");
        let tokenizer = match kind {
            "char" => Tokenizer { inner: Inner::Char(read_char_vocab(&meta).map_err(bad)?) },
            "bpe" | "hf" => {
                let tokenizer = Box::new(HfTokenizer::from_file(&dir.join(HF_TOKENIZER_FILE))?);
                Tokenizer { inner: Inner::Hf { tokenizer, trained: kind == "bpe" } }
            }
            other => return Err(bad(format!("\"kind\" is \"{other}\"; expected \"char\", \"bpe\" or \"hf\""))),
        };
        if tokenizer.vocab_size() as u64 != vocab_size {
            return Err(bad(format!(
                "\"vocab_size\" is {vocab_size}, but the saved tokenizer has {} tokens",
                tokenizer.vocab_size()
            )));
        }
        Ok(tokenizer)
    }
}

fn read_char_vocab(meta: &Value) -> Result<CharVocab, String> {
    let entries = meta.get("chars").and_then(Value::as_array).ok_or("\"chars\" is missing or not an array")?;
    let mut chars = Vec::with_capacity(entries.len());
    for (id, entry) in entries.iter().enumerate() {
        let mut it = entry.as_str().unwrap_or("").chars();
        match (it.next(), it.next()) {
            (Some(ch), None) => chars.push(ch),
            _ => return Err(format!("\"chars\"[{id}] is {entry}, not a string of exactly one character")),
        }
    }
    CharVocab::from_chars(chars)
}
