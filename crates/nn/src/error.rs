//! Errors a model reports for bad input or misuse; never a panic for anything a user can cause.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum ModelError {
    /// `tokens.len()` (or `targets.len()`) is not `B * T`.
    BatchShape {
        what: &'static str,
        len: usize,
        b: usize,
        t: usize,
    },
    /// A token id or target is outside the vocabulary.
    TokenOutOfRange {
        what: &'static str,
        position: usize,
        token: u32,
        vocab_size: usize,
    },
    /// The sequence is longer than the model's context.
    SequenceTooLong {
        t: usize,
        block_size: usize,
    },
    /// A buffer does not match the layout's size.
    BufferSize {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    /// `backward` without a preceding `forward` with targets, or twice.
    Phase {
        called: &'static str,
        state: &'static str,
    },
    UnknownPreset {
        name: String,
        known: Vec<&'static str>,
    },
    /// The preset fixes a vocabulary size that differs from the one asked for.
    VocabMismatch {
        preset: String,
        preset_vocab: usize,
        requested: usize,
    },
    InvalidConfig(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::BatchShape { what, len, b, t } => {
                write!(f, "{what} has {len} entries, but the batch is B={b} x T={t} = {}", b * t)
            }
            ModelError::TokenOutOfRange { what, position, token, vocab_size } => write!(
                f,
                "{what}[{position}] = {token} is outside the vocabulary (size {vocab_size}); the data was prepared with a different tokenizer than the model's vocabulary"
            ),
            ModelError::SequenceTooLong { t, block_size } => {
                write!(f, "sequence length {t} exceeds the model's context length {block_size}")
            }
            ModelError::BufferSize { what, len, expected } => {
                write!(f, "{what} buffer has {len} elements, the model's layout needs {expected}")
            }
            ModelError::Phase { called, state } => write!(f, "{called} called while the model is {state}"),
            ModelError::UnknownPreset { name, known } => {
                write!(f, "unknown model preset '{name}'; known presets: {}", known.join(", "))
            }
            ModelError::VocabMismatch { preset, preset_vocab, requested } => write!(
                f,
                "preset '{preset}' has a fixed vocabulary of {preset_vocab}, but the data's vocabulary is {requested}; prepare the data with a matching tokenizer or pick a preset without a fixed vocabulary"
            ),
            ModelError::InvalidConfig(msg) => write!(f, "invalid model configuration: {msg}"),
        }
    }
}

impl std::error::Error for ModelError {}
