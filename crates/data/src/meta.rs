//! `meta.json`: what a prepared data directory holds. `prepare` writes it last, so its presence marks the
//! directory complete.
//!
//! Version 2 (written now): each split is a list of numbered shards (`train-000000.bin`, ...) with their token
//! counts and checksums, read as one token stream in list order; documents end with the end-of-text token named
//! under `tokenizer.eot`; the validation split is chosen by documents (see [`SplitMeta`]). Version 1 (one
//! `train.bin` and one `val.bin`, a contiguous split of the token stream, no end-of-text token) is still read.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::DataError;

pub const META_FILE: &str = "meta.json";
/// The training shard of a version-1 directory.
pub const TRAIN_FILE: &str = "train.bin";
/// The validation shard of a version-1 directory.
pub const VAL_FILE: &str = "val.bin";
const DATA_FORMAT: &str = "rustspeed-data";
/// The version this build writes; it reads this one and version 1.
pub const DATA_FORMAT_VERSION: u64 = 2;

/// Where the end-of-text token goes, recorded in `meta.json` for whoever reads it.
pub const EOT_RULE: &str = "after every document, as GPT-2 and nanoGPT do: the stream is doc, eot, doc, eot, ...";

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetMeta {
    /// Layout version of the directory: 1 or [`DATA_FORMAT_VERSION`].
    pub format_version: u64,
    /// "char", "bpe" or "hf".
    pub tokenizer_kind: String,
    /// The tokenizer spec `prepare` was given, in CLI syntax.
    pub tokenizer_spec: String,
    pub vocab_size: usize,
    /// Bytes per stored token (2 or 4).
    pub token_width: u32,
    /// The token after every document; `None` in version 1, whose stream has no document boundaries.
    pub eot: Option<EotMeta>,
    pub split: SplitMeta,
    pub train: SplitFiles,
    pub val: SplitFiles,
    pub source: SourceMeta,
}

/// The end-of-text token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EotMeta {
    pub token: String,
    pub id: u32,
}

/// How documents were divided between the splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBy {
    /// Each document wholly in one split, chosen by a seeded hash of its index (`val_fraction`) or as a seeded
    /// sample of `val_docs` indices.
    Documents,
    /// The last `floor(tokens · val_fraction)` tokens of the stream are validation: version 1's rule, and
    /// version 2's when a split by documents would leave a split empty (a corpus of one or a few documents).
    Tokens,
}

impl SplitBy {
    pub fn name(self) -> &'static str {
        match self {
            SplitBy::Documents => "documents",
            SplitBy::Tokens => "tokens",
        }
    }

    fn rule(self) -> &'static str {
        match self {
            SplitBy::Documents => {
                "by documents: val_fraction: document i is validation iff hash(seed, i) < val_fraction; \
                 val_docs: a seeded uniform sample of val_docs document indices"
            }
            SplitBy::Tokens => "contiguous: val = the last floor(tokens * val_fraction) tokens, train = the rest",
        }
    }
}

/// The split's rule and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitMeta {
    pub by: SplitBy,
    pub val_fraction: Option<f64>,
    pub val_docs: Option<u64>,
    /// The seed of the document choice (version 2).
    pub seed: Option<u64>,
}

/// One split: its shards in stream order, with totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitFiles {
    pub tokens: u64,
    /// Documents in the split (whole documents; `None` in version 1, and when the split is by tokens).
    pub documents: Option<u64>,
    pub shards: Vec<ShardMeta>,
}

/// One shard's entry in `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    /// File name inside the data directory (no directories).
    pub file: String,
    pub tokens: u64,
    /// `mix64-words:` and 16 hex digits, see [`crate::shard::checksum`].
    pub checksum: String,
}

/// What was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMeta {
    /// The inputs as given (paths, directories, patterns); version 1: the corpus file's name.
    pub inputs: Vec<String>,
    pub files: u64,
    /// Bytes of the input files on disk (compressed, where they are).
    pub bytes: u64,
    /// Bytes of the records read, decompressed: document text, whole JSON lines, Parquet values (version 1: the
    /// corpus file's bytes).
    pub text_bytes: u64,
    /// Documents written (empty ones excluded); `None` in version 1.
    pub documents: Option<u64>,
    /// Documents whose text was empty, skipped.
    pub empty_documents: u64,
    /// Records without a document (bad JSON lines, null values), skipped with `skip_bad_lines`.
    pub skipped_records: u64,
}

impl DatasetMeta {
    /// The version-2 `meta.json`.
    pub fn to_json(&self) -> Value {
        let split_files = |files: &SplitFiles| {
            let shards: Vec<Value> = files
                .shards
                .iter()
                .map(|s| json!({ "file": s.file, "tokens": s.tokens, "checksum": s.checksum }))
                .collect();
            json!({ "tokens": files.tokens, "documents": files.documents, "shards": shards })
        };
        json!({
            "format": DATA_FORMAT,
            "format_version": self.format_version,
            "tokenizer": {
                "kind": self.tokenizer_kind,
                "spec": self.tokenizer_spec,
                "vocab_size": self.vocab_size,
                "eot": self.eot.as_ref().map(|eot| json!({ "token": eot.token, "id": eot.id, "rule": EOT_RULE })),
            },
            "token_width": self.token_width,
            "split": {
                "by": self.split.by.name(),
                "rule": self.split.by.rule(),
                "val_fraction": self.split.val_fraction,
                "val_docs": self.split.val_docs,
                "seed": self.split.seed,
            },
            "train": split_files(&self.train),
            "val": split_files(&self.val),
            "source": {
                "inputs": self.source.inputs,
                "files": self.source.files,
                "bytes": self.source.bytes,
                "text_bytes": self.source.text_bytes,
                "documents": self.source.documents,
                "empty_documents": self.source.empty_documents,
                "skipped_records": self.source.skipped_records,
            },
        })
    }

    /// Reads `meta.json` from a data directory (version 1 or 2).
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
        let token_width = get_u64(value, &["token_width"])?;
        let common = |eot, split, train, val, source| -> Result<DatasetMeta, String> {
            Ok(DatasetMeta {
                format_version,
                tokenizer_kind: get_str(value, &["tokenizer", "kind"])?,
                tokenizer_spec: get_str(value, &["tokenizer", "spec"])?,
                vocab_size: get_u64(value, &["tokenizer", "vocab_size"])? as usize,
                token_width: u32::try_from(token_width).map_err(|_| format!("\"token_width\" is {token_width}"))?,
                eot,
                split,
                train,
                val,
                source,
            })
        };
        match format_version {
            1 => {
                let val_fraction = get_f64(value, &["split", "val_fraction"])?;
                let split =
                    SplitMeta { by: SplitBy::Tokens, val_fraction: Some(val_fraction), val_docs: None, seed: None };
                let bytes = get_u64(value, &["source", "bytes"])?;
                let source = SourceMeta {
                    inputs: vec![get_str(value, &["source", "file_name"])?],
                    files: 1,
                    bytes,
                    text_bytes: bytes,
                    documents: None,
                    empty_documents: 0,
                    skipped_records: 0,
                };
                common(
                    None,
                    split,
                    read_v1_split(value, "train", TRAIN_FILE)?,
                    read_v1_split(value, "val", VAL_FILE)?,
                    source,
                )
            }
            DATA_FORMAT_VERSION => {
                let eot = match lookup(value, &["tokenizer", "eot"])? {
                    Value::Null => None,
                    _ => Some(EotMeta {
                        token: get_str(value, &["tokenizer", "eot", "token"])?,
                        id: u32::try_from(get_u64(value, &["tokenizer", "eot", "id"])?)
                            .map_err(|_| "\"tokenizer.eot.id\" does not fit 32 bits".to_string())?,
                    }),
                };
                let by = match get_str(value, &["split", "by"])?.as_str() {
                    "documents" => SplitBy::Documents,
                    "tokens" => SplitBy::Tokens,
                    other => return Err(format!("\"split.by\" is \"{other}\"; expected \"documents\" or \"tokens\"")),
                };
                let split = SplitMeta {
                    by,
                    val_fraction: optional(value, &["split", "val_fraction"], Value::as_f64)?,
                    val_docs: optional(value, &["split", "val_docs"], Value::as_u64)?,
                    seed: optional(value, &["split", "seed"], Value::as_u64)?,
                };
                let inputs = lookup(value, &["source", "inputs"])?
                    .as_array()
                    .and_then(|inputs| inputs.iter().map(|i| i.as_str().map(str::to_string)).collect())
                    .ok_or("\"source.inputs\" is not an array of strings")?;
                let source = SourceMeta {
                    inputs,
                    files: get_u64(value, &["source", "files"])?,
                    bytes: get_u64(value, &["source", "bytes"])?,
                    text_bytes: get_u64(value, &["source", "text_bytes"])?,
                    documents: optional(value, &["source", "documents"], Value::as_u64)?,
                    empty_documents: get_u64(value, &["source", "empty_documents"])?,
                    skipped_records: get_u64(value, &["source", "skipped_records"])?,
                };
                common(eot, split, read_split(value, "train")?, read_split(value, "val")?, source)
            }
            other => Err(format!(
                "\"format_version\" is {other}, this build reads 1 and {DATA_FORMAT_VERSION}; prepare the data again"
            )),
        }
    }
}

fn read_v1_split(value: &Value, split: &str, file: &str) -> Result<SplitFiles, String> {
    let tokens = get_u64(value, &[split, "tokens"])?;
    let shard = ShardMeta { file: file.to_string(), tokens, checksum: get_str(value, &[split, "checksum"])? };
    Ok(SplitFiles { tokens, documents: None, shards: vec![shard] })
}

fn read_split(value: &Value, split: &str) -> Result<SplitFiles, String> {
    let entries =
        lookup(value, &[split, "shards"])?.as_array().ok_or_else(|| format!("\"{split}.shards\" is not an array"))?;
    let mut shards = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = |key: &str| format!("{split}.shards[{i}].{key}");
        let field = |key: &str| entry.get(key).ok_or_else(|| format!("\"{}\" is missing", at(key)));
        let file = field("file")?.as_str().ok_or_else(|| format!("\"{}\" is not a string", at("file")))?;
        // A name, not a path: the directory's files are the only ones a data set may name.
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(format!("\"{}\" is \"{file}\", not a file name inside the data directory", at("file")));
        }
        shards.push(ShardMeta {
            file: file.to_string(),
            tokens: field("tokens")?.as_u64().ok_or_else(|| format!("\"{}\" is not a whole number", at("tokens")))?,
            checksum: field("checksum")?
                .as_str()
                .ok_or_else(|| format!("\"{}\" is not a string", at("checksum")))?
                .to_string(),
        });
    }
    let tokens = get_u64(value, &[split, "tokens"])?;
    let sum: u64 = shards.iter().map(|s| s.tokens).sum();
    if sum != tokens {
        return Err(format!("\"{split}.tokens\" is {tokens}, but its shards hold {sum} tokens"));
    }
    Ok(SplitFiles { tokens, documents: optional(value, &[split, "documents"], Value::as_u64)?, shards })
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

fn get_f64(value: &Value, key_path: &[&str]) -> Result<f64, String> {
    lookup(value, key_path)?.as_f64().ok_or_else(|| format!("\"{}\" is not a number", key_path.join(".")))
}

fn get_str(value: &Value, key_path: &[&str]) -> Result<String, String> {
    lookup(value, key_path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("\"{}\" is not a string", key_path.join(".")))
}

/// A value that may be null (or absent); present, it must have the right type.
fn optional<T>(value: &Value, key_path: &[&str], read: impl Fn(&Value) -> Option<T>) -> Result<Option<T>, String> {
    match lookup(value, key_path) {
        Err(_) | Ok(Value::Null) => Ok(None),
        Ok(found) => {
            read(found).map(Some).ok_or_else(|| format!("\"{}\" has the wrong type: {found}", key_path.join(".")))
        }
    }
}
