//! `meta.json`: what a prepared data directory holds. `prepare` writes it last, so its presence marks the
//! directory complete.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::DataError;

pub const META_FILE: &str = "meta.json";
pub const TRAIN_FILE: &str = "train.bin";
pub const VAL_FILE: &str = "val.bin";
const DATA_FORMAT: &str = "rustspeed-data";
pub const DATA_FORMAT_VERSION: u64 = 1;

/// How the token stream is split, recorded in `meta.json` for whoever reads it.
pub const SPLIT_RULE: &str = "contiguous: val = the last floor(tokens * val_fraction) tokens, train = the rest";

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetMeta {
    /// Layout version of the directory; this build reads [`DATA_FORMAT_VERSION`].
    pub format_version: u64,
    /// "char", "bpe" or "hf".
    pub tokenizer_kind: String,
    /// The tokenizer spec `prepare` was given, in CLI syntax.
    pub tokenizer_spec: String,
    pub vocab_size: usize,
    /// Bytes per stored token (2 or 4).
    pub token_width: u32,
    pub val_fraction: f64,
    pub train: ShardMeta,
    pub val: ShardMeta,
    /// File name (without directories) of the corpus.
    pub source_file_name: String,
    pub source_bytes: u64,
    pub source_chars: u64,
}

/// One shard's entry in `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    pub tokens: u64,
    /// `mix64-words:` and 16 hex digits, see [`crate::shard::checksum`].
    pub checksum: String,
}

impl DatasetMeta {
    pub fn to_json(&self) -> Value {
        json!({
            "format": DATA_FORMAT,
            "format_version": self.format_version,
            "tokenizer": {
                "kind": self.tokenizer_kind,
                "spec": self.tokenizer_spec,
                "vocab_size": self.vocab_size,
            },
            "token_width": self.token_width,
            "split": { "rule": SPLIT_RULE, "val_fraction": self.val_fraction },
            "train": { "file": TRAIN_FILE, "tokens": self.train.tokens, "checksum": self.train.checksum },
            "val": { "file": VAL_FILE, "tokens": self.val.tokens, "checksum": self.val.checksum },
            "source": {
                "file_name": self.source_file_name,
                "bytes": self.source_bytes,
                "chars": self.source_chars,
            },
        })
    }

    /// Reads `meta.json` from a data directory.
    pub fn read(dir: &Path) -> Result<DatasetMeta, DataError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::BadFile {
                path: dir.to_path_buf(),
                problem: format!(
                    "not a prepared data set: {META_FILE} is missing (run prepare; an interrupted prepare leaves \
                     no {META_FILE})"
                ),
            },
            _ => DataError::Io { action: "read", path: path.clone(), source },
        })?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| DataError::BadFile { path: path.clone(), problem: format!("not valid JSON: {e}") })?;
        DatasetMeta::from_json(&value).map_err(|problem| DataError::BadFile { path, problem })
    }

    fn from_json(value: &Value) -> Result<DatasetMeta, String> {
        if value.get("format").and_then(Value::as_str) != Some(DATA_FORMAT) {
            return Err(format!("\"format\" is not \"{DATA_FORMAT}\""));
        }
        let format_version = get_u64(value, &["format_version"])?;
        if format_version != DATA_FORMAT_VERSION {
            return Err(format!(
                "\"format_version\" is {format_version}, this build reads {DATA_FORMAT_VERSION}; prepare the data again"
            ));
        }
        let token_width = get_u64(value, &["token_width"])?;
        Ok(DatasetMeta {
            format_version,
            tokenizer_kind: get_str(value, &["tokenizer", "kind"])?,
            tokenizer_spec: get_str(value, &["tokenizer", "spec"])?,
            vocab_size: get_u64(value, &["tokenizer", "vocab_size"])? as usize,
            token_width: u32::try_from(token_width).map_err(|_| format!("\"token_width\" is {token_width}"))?,
            val_fraction: lookup(value, &["split", "val_fraction"])?
                .as_f64()
                .ok_or("\"split.val_fraction\" is not a number")?,
            train: read_shard_meta(value, "train")?,
            val: read_shard_meta(value, "val")?,
            source_file_name: get_str(value, &["source", "file_name"])?,
            source_bytes: get_u64(value, &["source", "bytes"])?,
            source_chars: get_u64(value, &["source", "chars"])?,
        })
    }
}

fn read_shard_meta(value: &Value, split: &str) -> Result<ShardMeta, String> {
    Ok(ShardMeta { tokens: get_u64(value, &[split, "tokens"])?, checksum: get_str(value, &[split, "checksum"])? })
}

fn lookup<'a>(value: &'a Value, key_path: &[&str]) -> Result<&'a Value, String> {
    let mut current = value;
    for key in key_path {
        current = current.get(key).ok_or_else(|| format!("\"{}\" is missing", key_path.join(".")))?;
    }
    Ok(current)
}

fn get_u64(value: &Value, key_path: &[&str]) -> Result<u64, String> {
    lookup(value, key_path)?.as_u64().ok_or_else(|| format!("\"{}\" is not a whole number", key_path.join(".")))
}

fn get_str(value: &Value, key_path: &[&str]) -> Result<String, String> {
    lookup(value, key_path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("\"{}\" is not a string", key_path.join(".")))
}
