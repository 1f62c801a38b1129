//! One tokenizer type for the three kinds (char, trained byte-level BPE, a Hugging Face `tokenizer.json`), its
//! end-of-text token, and its files in a data directory.
//!
//! Files: `tokenizer_meta.json` always (`format`, `format_version`, `kind`, `vocab_size`, `eot` (the end-of-text
//! token's spelling, or null), and for `char` the vocabulary as `chars`, one single-character string per id,
//! followed by `special_tokens`); for `bpe` and `hf` also `tokenizer.json` in the Hugging Face format, so other
//! tools can load it. Version 1 files (written before documents had an end-of-text token) have no `eot` and no
//! `special_tokens` and still load.

use std::path::Path;

use serde_json::{json, Value};

use crate::char_vocab::CharVocab;
use crate::eot::{EOT_SPELLINGS, EOT_TOKEN};
use crate::error::{io_error, DataError};
use crate::hf::HfTokenizer;
use crate::spec::TokenizerSpec;

mod hf_export;
pub use hf_export::HF_TOKENIZER_CONFIG_FILE;

/// Name of the file that says which kind of tokenizer a directory holds.
pub const TOKENIZER_META_FILE: &str = "tokenizer_meta.json";
/// Name of the Hugging Face tokenizer file (`bpe` and `hf` kinds).
pub const HF_TOKENIZER_FILE: &str = "tokenizer.json";
const TOKENIZER_FORMAT: &str = "rustspeed-tokenizer";
/// 2: `eot` and the char kind's `special_tokens`. Version 1 is still read.
const TOKENIZER_FORMAT_VERSION: u64 = 2;

#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: Inner,
    /// The end-of-text token and its id; `None` only for a tokenizer read from a version-1 directory or a
    /// `tokenizer.json` with none of the [`EOT_SPELLINGS`] (then [`Tokenizer::with_eot`] names one).
    eot: Option<(String, u32)>,
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

    /// The character tokenizer whose vocabulary is the sorted set of `corpus`'s characters, then [`EOT_TOKEN`].
    pub fn char_from_corpus(corpus: &str) -> Tokenizer {
        Tokenizer::from_char_vocab(CharVocab::from_corpus(corpus))
    }

    /// The character tokenizer of the characters in `chars` (in code-point order), then [`EOT_TOKEN`].
    pub fn char_from_set(chars: std::collections::BTreeSet<char>) -> Tokenizer {
        Tokenizer::from_char_vocab(CharVocab::from_char_set(chars))
    }

    fn from_char_vocab(vocab: CharVocab) -> Tokenizer {
        let eot = vocab.special_id(EOT_TOKEN).map(|id| (EOT_TOKEN.to_string(), id));
        Tokenizer { inner: Inner::Char(vocab), eot }
    }

    /// Byte-level BPE trained on `corpus` with at most `vocab_size` tokens: the 256 byte tokens, merges, and
    /// [`EOT_TOKEN`] as the last id. Words longer than [`crate::MAX_BPE_TRAINING_PIECE_BYTES`] are trained on in pieces.
    pub fn train_bpe(corpus: &str, vocab_size: usize) -> Result<Tokenizer, DataError> {
        check_bpe_vocab(vocab_size)?;
        Tokenizer::from_trained(HfTokenizer::train_byte_level_bpe(corpus, vocab_size)?)
    }

    /// [`Tokenizer::train_bpe`] on a stream of texts (documents, or pieces of them cut where a word cannot
    /// continue): words never run from one text into the next, and the texts need not be in memory together.
    pub fn train_bpe_on_texts<I>(texts: I, vocab_size: usize) -> Result<Tokenizer, DataError>
    where
        I: Iterator<Item = String> + Send,
    {
        check_bpe_vocab(vocab_size)?;
        Tokenizer::from_trained(HfTokenizer::train_byte_level_bpe_on(texts, vocab_size)?)
    }

    fn from_trained(tokenizer: HfTokenizer) -> Result<Tokenizer, DataError> {
        let id = tokenizer.token_to_id(EOT_TOKEN).ok_or_else(|| DataError::Tokenizer {
            action: "train the byte-level BPE tokenizer",
            path: None,
            message: format!("the trained tokenizer lacks its end-of-text token {EOT_TOKEN}"),
        })?;
        Ok(Tokenizer {
            inner: Inner::Hf { tokenizer: Box::new(tokenizer), trained: true },
            eot: Some((EOT_TOKEN.to_string(), id)),
        })
    }

    /// A Hugging Face `tokenizer.json`. Its end-of-text token is the first of [`EOT_SPELLINGS`] among its special
    /// tokens, if any (see [`Tokenizer::with_eot`] to name another).
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer, DataError> {
        let tokenizer = Box::new(HfTokenizer::from_file(path)?);
        let eot = EOT_SPELLINGS
            .iter()
            .find_map(|&spelling| tokenizer.special_token_id(spelling).map(|id| (spelling.to_string(), id)));
        Ok(Tokenizer { inner: Inner::Hf { tokenizer, trained: false }, eot })
    }

    /// This tokenizer with `token` as its end-of-text token. It must be a token of the vocabulary (for the char
    /// kind, one of its special tokens: a character's token would be confused with the character).
    pub fn with_eot(mut self, token: &str) -> Result<Tokenizer, DataError> {
        let id = match &self.inner {
            Inner::Char(vocab) => vocab.special_id(token),
            Inner::Hf { tokenizer, .. } => tokenizer.token_to_id(token),
        };
        let Some(id) = id else {
            return Err(DataError::InvalidOption {
                name: "eot",
                value: token.to_string(),
                rule: "must be a token of the tokenizer's vocabulary (for a tokenizer.json, usually one of its \
                       special added tokens)",
            });
        };
        self.eot = Some((token.to_string(), id));
        Ok(self)
    }

    /// The id of the end-of-text token that separates documents; `None` for a tokenizer of a version-1 data
    /// directory or a `tokenizer.json` without one.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot.as_ref().map(|(_, id)| *id)
    }

    /// The end-of-text token's spelling, see [`Tokenizer::eot_id`].
    pub fn eot_token(&self) -> Option<&str> {
        self.eot.as_ref().map(|(token, _)| token.as_str())
    }

    /// Where a text may be cut into pieces that encode, one by one, to the ids of the whole text: what lets
    /// `prepare` stream a document larger than its chunks.
    pub(crate) fn cut_rule(&self) -> CutRule {
        match &self.inner {
            Inner::Char(_) => CutRule::AnyChar,
            Inner::Hf { tokenizer, .. } if tokenizer.chunkable() => CutRule::AfterLoneNewline,
            Inner::Hf { .. } => CutRule::Never,
        }
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

    /// Token ids of `text`, without special tokens: a special token's spelling in the text is encoded as text,
    /// never as the special token. The char tokenizer fails on the first character outside its vocabulary,
    /// naming it and its position.
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
            "eot": self.eot_token(),
        });
        match &self.inner {
            Inner::Char(vocab) => {
                let chars: Vec<Value> = vocab.chars().iter().map(|ch| Value::String(ch.to_string())).collect();
                meta["chars"] = Value::Array(chars);
                meta["special_tokens"] = json!(vocab.specials());
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
        if !matches!(version, Some(1..=TOKENIZER_FORMAT_VERSION)) {
            return Err(bad(format!(
                "\"format_version\" is {}, this build reads 1 to {TOKENIZER_FORMAT_VERSION}",
                meta.get("format_version").map_or("missing".to_string(), Value::to_string)
            )));
        }
        let vocab_size = meta
            .get("vocab_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("\"vocab_size\" is missing or not a whole number".to_string()))?;
        let kind = meta.get("kind").and_then(Value::as_str).unwrap_or("");
        let inner = match kind {
            "char" => Inner::Char(read_char_vocab(&meta).map_err(bad)?),
            "bpe" | "hf" => {
                let tokenizer = Box::new(HfTokenizer::from_file(&dir.join(HF_TOKENIZER_FILE))?);
                Inner::Hf { tokenizer, trained: kind == "bpe" }
            }
            other => return Err(bad(format!("\"kind\" is \"{other}\"; expected \"char\", \"bpe\" or \"hf\""))),
        };
        let tokenizer = Tokenizer { inner, eot: None };
        // The saved choice, not a new guess: `prepare --eot` may have named a token that is not the first spelling.
        let tokenizer = match meta.get("eot") {
            None | Some(Value::Null) => tokenizer,
            Some(Value::String(token)) => tokenizer.with_eot(token).map_err(|e| bad(format!("\"eot\": {e}")))?,
            Some(other) => return Err(bad(format!("\"eot\" is {other}, not a string or null"))),
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

fn check_bpe_vocab(vocab_size: usize) -> Result<(), DataError> {
    if !(crate::spec::MIN_BPE_VOCAB..=crate::spec::MAX_VOCAB).contains(&vocab_size) {
        return Err(DataError::InvalidOption {
            name: "bpe vocab_size",
            value: vocab_size.to_string(),
            rule: "byte-level BPE needs the 256 byte tokens and the end-of-text token (257) and at most 4194304",
        });
    }
    Ok(())
}

/// Where a text may be cut so that encoding the pieces one by one gives the ids of the whole text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CutRule {
    /// Between any two characters (the char tokenizer).
    AnyChar,
    /// Right after a newline with non-whitespace on both sides (GPT-2-style byte-level BPE; see
    /// `hf::chunking_is_exact`).
    AfterLoneNewline,
    /// Nowhere: the tokenizer's normalizer or pre-tokenizer may look across any point.
    Never,
}

fn read_char_vocab(meta: &Value) -> Result<CharVocab, String> {
    let specials = match meta.get("special_tokens") {
        None => Vec::new(),
        Some(value) => value
            .as_array()
            .and_then(|entries| entries.iter().map(|entry| entry.as_str().map(str::to_string)).collect())
            .ok_or("\"special_tokens\" is not an array of strings")?,
    };
    let entries = meta.get("chars").and_then(Value::as_array).ok_or("\"chars\" is missing or not an array")?;
    let mut chars = Vec::with_capacity(entries.len());
    for (id, entry) in entries.iter().enumerate() {
        let mut it = entry.as_str().unwrap_or("").chars();
        match (it.next(), it.next()) {
            (Some(ch), None) => chars.push(ch),
            _ => return Err(format!("\"chars\"[{id}] is {entry}, not a string of exactly one character")),
        }
    }
    CharVocab::from_chars(chars, specials)
}
