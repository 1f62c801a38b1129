//! Errors of the data pipeline. Every message names the file (or option) and the rule that was broken, and says
//! what to do where there is something to do; nothing a user can cause panics.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum DataError {
    /// An operating-system error while doing `action` on `path`.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The corpus given to `prepare` does not exist.
    InputMissing { path: PathBuf },
    /// The corpus given to `prepare` has no bytes.
    InputEmpty { path: PathBuf },
    /// An input of `prepare` (a directory, or a glob pattern) that holds no file.
    NoInputFiles { input: PathBuf },
    /// A record that holds no document: a JSON line without a string at the text field, a null Parquet value.
    /// `line` is 1-based; `unit` says what it counts ("line", "row").
    BadRecord { path: PathBuf, line: u64, unit: &'static str, problem: String },
    /// A record (or a document that cannot be cut) larger than `limit` bytes.
    RecordTooLarge { path: PathBuf, line: u64, limit: usize, why: &'static str },
    /// The inputs hold no document with text.
    NoDocuments { files: usize, empty: u64, skipped: u64 },
    /// A loaded tokenizer has no end-of-text token to put between documents.
    NoEndOfText { path: PathBuf, looked_for: &'static [&'static str] },
    /// The corpus lies inside the output directory (or is it), which `prepare` replaces; `resolved` is the
    /// canonical path of the corpus where it differs from `input` (a relative path or a symbolic link).
    InputInsideOutput { input: PathBuf, resolved: Option<PathBuf>, out_dir: PathBuf },
    /// The corpus is not valid UTF-8; `byte_offset` is where the first invalid sequence starts.
    InputNotUtf8 { path: PathBuf, byte_offset: usize },
    /// `prepare` would replace a directory that already holds something.
    OutputExists { path: PathBuf },
    /// `prepare --overwrite` refuses to delete a directory that is not a prepared data set.
    OutputNotDataset { path: PathBuf },
    /// A tokenizer spec string (CLI syntax) that does not parse.
    InvalidSpec { spec: String, reason: String },
    /// An option value outside its domain, e.g. `val_fraction` = 1.5.
    InvalidOption { name: &'static str, value: String, rule: &'static str },
    /// The character tokenizer met a character that is not in its vocabulary.
    UnknownChar { ch: char, char_index: usize, line: usize, column: usize },
    /// A token id at or above the vocabulary size (given to `decode`, or found in a shard).
    TokenOutOfVocab { context: String, position: usize, id: u32, vocab_size: usize },
    /// The Hugging Face `tokenizers` library reported an error.
    Tokenizer { action: &'static str, path: Option<PathBuf>, message: String },
    /// A tokenizer or data-set file that is present but does not say what it must.
    BadFile { path: PathBuf, problem: String },
    /// A shard file that is damaged or of another format.
    BadShard { path: PathBuf, problem: ShardProblem },
    /// The data directory's `meta.json` and its tokenizer disagree on the vocabulary size.
    VocabMismatch { dir: PathBuf, meta_vocab: usize, tokenizer_vocab: usize },
    /// The shard has fewer windows than one global batch takes.
    NotEnoughWindows { split: String, windows: usize, window_tokens: usize, needed: usize },
    /// A loader state that does not fit this loader's shard.
    BadLoaderState { problem: String },
}

/// What is wrong with a token shard file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardProblem {
    /// Shorter than the fixed header.
    ShorterThanHeader { bytes: u64, header_bytes: u64 },
    /// The first bytes are not the shard magic.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion { found: u32, supported: u32 },
    /// A token width other than 2 (u16) or 4 (u32) bytes.
    BadTokenWidth { width: u32 },
    /// The file size does not match the token count in the header.
    SizeMismatch { header_tokens: u64, expected_bytes: u64, actual_bytes: u64 },
    /// The header's token count differs from the one `meta.json` records.
    CountMismatch { header_tokens: u64, meta_tokens: u64 },
    /// The token width differs from the one the vocabulary size implies.
    WidthMismatch { width: u32, expected: u32, vocab_size: usize },
    /// The content checksum differs from the one `meta.json` records.
    ChecksumMismatch { expected: String, actual: String },
}

impl fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardProblem::ShorterThanHeader { bytes, header_bytes } => {
                write!(f, "the file has {bytes} bytes, fewer than the {header_bytes}-byte header (truncated)")
            }
            ShardProblem::BadMagic => write!(f, "it does not start with the rustspeed token-shard magic bytes"),
            ShardProblem::UnsupportedVersion { found, supported } => {
                write!(f, "format version {found}, but this build reads version {supported}; prepare the data again")
            }
            ShardProblem::BadTokenWidth { width } => {
                write!(f, "token width {width} bytes in the header; only 2 (u16) and 4 (u32) exist")
            }
            ShardProblem::SizeMismatch { header_tokens, expected_bytes, actual_bytes } => write!(
                f,
                "the header says {header_tokens} tokens ({expected_bytes} bytes with the header), but the file has \
                 {actual_bytes} bytes ({})",
                if actual_bytes < expected_bytes { "truncated" } else { "trailing bytes" }
            ),
            ShardProblem::CountMismatch { header_tokens, meta_tokens } => {
                write!(f, "the header says {header_tokens} tokens, meta.json says {meta_tokens}")
            }
            ShardProblem::WidthMismatch { width, expected, vocab_size } => write!(
                f,
                "tokens are {width} bytes wide, but a vocabulary of {vocab_size} is stored in {expected}-byte tokens"
            ),
            ShardProblem::ChecksumMismatch { expected, actual } => {
                write!(f, "content checksum {actual} differs from {expected} recorded in meta.json (corrupted)")
            }
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
            DataError::InputMissing { path } => write!(f, "input text {} does not exist", path.display()),
            DataError::InputEmpty { path } => write!(f, "input text {} is empty", path.display()),
            DataError::NoInputFiles { input } => write!(
                f,
                "input {} holds no file (an empty directory, or a pattern that matches nothing)",
                input.display()
            ),
            DataError::BadRecord { path, line, unit, problem } => {
                write!(f, "{}: {unit} {line}: {problem} (skip such records with --skip-bad-lines)", path.display())
            }
            DataError::RecordTooLarge { path, line, limit, why } => write!(
                f,
                "{}: the document at line {line} is larger than {limit} bytes and cannot be read in pieces: {why}",
                path.display()
            ),
            DataError::NoDocuments { files, empty, skipped } => write!(
                f,
                "the input ({files} file(s)) holds no document with text ({empty} empty, {skipped} bad records \
                 skipped)"
            ),
            DataError::NoEndOfText { path, looked_for } => write!(
                f,
                "{}: no end-of-text token among its special tokens (looked for {}); name the token that ends a \
                 document with --eot TOKEN",
                path.display(),
                looked_for.join(", ")
            ),
            DataError::InputInsideOutput { input, resolved, out_dir } => write!(
                f,
                "input text {}{} is inside the output directory {}, which prepare writes and replaces: move the \
                 input out of {} or choose another output directory (--out)",
                input.display(),
                resolved.as_ref().map(|path| format!(" ({})", path.display())).unwrap_or_default(),
                out_dir.display(),
                out_dir.display()
            ),
            DataError::InputNotUtf8 { path, byte_offset } => write!(
                f,
                "input text {} is not valid UTF-8: the first invalid byte sequence is at byte offset {byte_offset}",
                path.display()
            ),
            DataError::OutputExists { path } => write!(
                f,
                "output directory {} already exists and is not empty; pass overwrite (--overwrite) to replace it",
                path.display()
            ),
            DataError::OutputNotDataset { path } => write!(
                f,
                "refusing to overwrite {}: it is not a prepared data set (no meta.json); remove it by hand or \
                 choose another output directory",
                path.display()
            ),
            DataError::InvalidSpec { spec, reason } => write!(f, "invalid tokenizer spec '{spec}': {reason}"),
            DataError::InvalidOption { name, value, rule } => write!(f, "{name} = {value} is invalid: {rule}"),
            DataError::UnknownChar { ch, char_index, line, column } => write!(
                f,
                "character {ch:?} (U+{:04X}) at character {char_index} (line {line}, column {column}) is not in the \
                 character tokenizer's vocabulary",
                *ch as u32
            ),
            DataError::TokenOutOfVocab { context, position, id, vocab_size } => {
                write!(
                    f,
                    "{context}: token id {id} at position {position} is not below the vocabulary size {vocab_size}"
                )
            }
            DataError::Tokenizer { action, path, message } => match path {
                Some(path) => write!(f, "cannot {action} {}: {message}", path.display()),
                None => write!(f, "cannot {action}: {message}"),
            },
            DataError::BadFile { path, problem } => write!(f, "{}: {problem}", path.display()),
            DataError::BadShard { path, problem } => write!(f, "token shard {}: {problem}", path.display()),
            DataError::VocabMismatch { dir, meta_vocab, tokenizer_vocab } => write!(
                f,
                "data set {}: meta.json says vocabulary size {meta_vocab}, the tokenizer has {tokenizer_vocab}",
                dir.display()
            ),
            DataError::NotEnoughWindows { split, windows, window_tokens, needed } => write!(
                f,
                "{split} split has {windows} windows of {window_tokens} tokens, a batch needs {needed}: lower the \
                 batch size or the sequence length{}",
                if split.starts_with("validation") { ", or prepare with a larger val_fraction" } else { "" }
            ),
            DataError::BadLoaderState { problem } => write!(f, "cannot restore the data loader: {problem}"),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Wraps an `io::Error` with what was being done and to which path.
pub(crate) fn io_error(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { action, path, source }
}
