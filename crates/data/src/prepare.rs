//! `prepare`: inputs → documents → tokenizer → token shards, streamed → `meta.json`, installed atomically.
//!
//! The passes: (1) for `char`, or an exact `val_docs` count, a survey of the inputs; for `bpe:V`, training on a
//! bounded sample; (2) the tokenizing pass: chunks of records are tokenized on all cores, in order, and each
//! document's ids, followed by the end-of-text token, are appended to the train or validation stream, which are
//! cut into shards of `shard_tokens`. Memory is a few chunks, the shard write buffers and the tokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustspeed_kernels::rng::Rng;

use crate::documents::{FieldPath, ReadOptions, RecordBody};
use crate::eot::{EOT_SPELLINGS, EOT_TOKEN};
use crate::error::{io_error, DataError};
use crate::input::{discover, ByteCounter, InputFile, InputFormat};
use crate::install::{check_input_outside_output, check_output, create_staging_dir, install, sync_dir};
use crate::meta::{DatasetMeta, EotMeta, SourceMeta, SplitBy, SplitFiles, SplitMeta, DATA_FORMAT_VERSION, META_FILE};
use crate::progress::{Progress, StreamProgress};
use crate::shard::token_width;
use crate::shard_writer::{move_tail, shard_file_name, SplitWriter};
use crate::spec::TokenizerSpec;
use crate::stream::{for_each_chunk, tokenize_chunk, Budget, Chunk, Outcome};
use crate::survey::{survey, train_bpe_on_sample, DocumentCounter, Step};
use crate::tokenizer::{CutRule, Tokenizer};

/// Tokens per shard file by default: nanoGPT's FineWeb shards' size (100M tokens, 200 MB as u16), large enough
/// that a corpus of billions of tokens is tens of files, small enough to copy and check one at a time.
pub const DEFAULT_SHARD_TOKENS: u64 = 100_000_000;
/// Bytes of text byte-level BPE is trained on by default: enough for the merges of a 32K-50K vocabulary to settle
/// (GPT-2's were learned from a sample of its corpus too), bounded so that training takes about a minute per
/// 100 MB on two cores and its word counts a few hundred MB at most.
pub const DEFAULT_BPE_SAMPLE_BYTES: u64 = 100_000_000;
/// The seed of the document split when none is given (the same default as `train --seed`).
pub const DEFAULT_SPLIT_SEED: u64 = 1337;

/// Which documents become the validation split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValSplit {
    /// Each document independently with this probability, by a seeded hash of its index; in `[0, 1)`.
    Fraction(f64),
    /// Exactly this many documents, a seeded uniform sample (needs a first pass to count the documents).
    Documents(u64),
}

/// Options of [`prepare`].
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareOptions {
    /// The validation split. Default `Fraction(0.1)`. When documents are too few for a split by documents to
    /// give both splits tokens (one text file is one document), a fraction splits the token stream instead:
    /// the last `floor(tokens · fraction)` tokens are validation, as version 1 did.
    pub val: ValSplit,
    /// Seed of the document split. Default [`DEFAULT_SPLIT_SEED`].
    pub seed: u64,
    /// Format of every input file; default `None`: by each file's name (see [`InputFormat::from_file_name`]).
    pub format: Option<InputFormat>,
    /// Field of JSON Lines objects (dots for nested fields) or column of Parquet files holding the text.
    /// Default "text" (the Hugging Face data sets' convention).
    pub text_field: String,
    /// Text files: one document per block of lines between blank lines, instead of one per file. Default false.
    pub split_blank_lines: bool,
    /// Skip (and count) records without a document — a JSON line that does not parse or lacks the field, a null
    /// Parquet value — instead of stopping with an error naming the file and line. Default false.
    pub skip_bad_lines: bool,
    /// The end-of-text token of a loaded `tokenizer.json`; default `None`: the first of [`EOT_SPELLINGS`] among
    /// its special tokens. Char and BPE vocabularies built here always use [`EOT_TOKEN`].
    pub eot: Option<String>,
    /// Tokens per shard file. Default [`DEFAULT_SHARD_TOKENS`].
    pub shard_tokens: u64,
    /// Bytes of text byte-level BPE training reads (a share of every file). Default [`DEFAULT_BPE_SAMPLE_BYTES`].
    pub bpe_sample_bytes: u64,
    /// Replace an existing prepared directory. Default false: an existing non-empty directory is an error.
    pub overwrite: bool,
    /// Progress on stderr, redrawn in place; meant for a terminal. Default false.
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            val: ValSplit::Fraction(0.1),
            seed: DEFAULT_SPLIT_SEED,
            format: None,
            text_field: "text".to_string(),
            split_blank_lines: false,
            skip_bad_lines: false,
            eot: None,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            bpe_sample_bytes: DEFAULT_BPE_SAMPLE_BYTES,
            overwrite: false,
            progress: false,
        }
    }
}

/// What [`prepare`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    pub vocab_size: usize,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// Documents per split (whole documents; a split by tokens cuts one, counted in train).
    pub train_documents: u64,
    pub val_documents: u64,
    pub train_shards: usize,
    pub val_shards: usize,
    pub split_by: SplitBy,
    /// Input files read, their bytes on disk, and the bytes of their records (decompressed: text, JSON lines,
    /// Parquet values).
    pub files: usize,
    pub bytes: u64,
    pub text_bytes: u64,
    pub empty_documents: u64,
    pub skipped_records: u64,
    /// "char", "bpe" or "hf".
    pub tokenizer_kind: String,
    /// Bytes per stored token (2 or 4).
    pub token_width: u32,
    pub out_dir: PathBuf,
}

/// Reads the documents of `inputs` (files, directories, glob patterns; see [`crate::InputFormat`] for the
/// formats), tokenizes them with the tokenizer `spec` builds, and writes a data directory at `out_dir`: the
/// tokenizer files, the shards of both splits and `meta.json` (format version 2, see [`crate::meta`]). Every
/// document is followed by the tokenizer's end-of-text token.
///
/// Everything is written into a hidden sibling directory that is renamed to `out_dir` once complete, with
/// `meta.json` written last inside it: an interrupted run leaves no `out_dir` that [`crate::Dataset::open`]
/// accepts (at most a `.NAME.tmp-*` directory to delete). An existing non-empty `out_dir` is replaced only with
/// `overwrite`, and only if it is a prepared data set. An input file inside `out_dir` is refused before anything
/// is read or written, since replacing `out_dir` would delete it.
pub fn prepare(
    inputs: &[PathBuf],
    spec: &TokenizerSpec,
    out_dir: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareReport, DataError> {
    check_options(spec, opts)?;
    let text_field = FieldPath::parse(&opts.text_field)?;
    let files = discover(inputs, opts.format)?;
    for file in &files {
        check_input_outside_output(&file.path, out_dir)?;
    }
    let existing = check_output(out_dir, opts.overwrite)?;
    // Where long documents may be cut depends on the tokenizer; before it exists, the survey only looks at
    // characters, which any cut keeps.
    let mut read = ReadOptions { split_blank_lines: opts.split_blank_lines, text_field, cut_rule: CutRule::AnyChar };
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();

    let needs_count = matches!(opts.val, ValSplit::Documents(n) if n > 0);
    let surveyed = match spec {
        TokenizerSpec::Char => Some(run_survey(&files, &read, opts, true, total_bytes)?),
        _ if needs_count => Some(run_survey(&files, &read, opts, false, total_bytes)?),
        _ => None,
    };
    let tokenizer = build_tokenizer(spec, &files, &read, opts, surveyed.as_ref(), total_bytes)?;
    read.cut_rule = tokenizer.cut_rule();
    let eot = tokenizer.eot_id().expect("build_tokenizer ensures an end-of-text token");
    let val = match opts.val {
        ValSplit::Fraction(f) => ValChoice::Fraction { key: Rng::new(opts.seed).next_u64(), fraction: f },
        ValSplit::Documents(0) => ValChoice::Fraction { key: 0, fraction: 0.0 },
        ValSplit::Documents(n) => {
            let documents = surveyed.as_ref().expect("surveyed when val_docs > 0").documents.documents;
            if n >= documents {
                return Err(DataError::InvalidOption {
                    name: "val_docs",
                    value: format!("{n} (of {documents} documents)"),
                    rule: "must be below the number of documents: the training split cannot be empty",
                });
            }
            ValChoice::Set(sample_indices(documents, n, opts.seed))
        }
    };

    let staging = create_staging_dir(out_dir)?;
    let written =
        write_data_set(&files, &read, &tokenizer, eot, &val, &staging, opts, total_bytes).and_then(|mut w| {
            let meta = meta_of(spec, &tokenizer, inputs, &files, opts, &mut w)?;
            tokenizer.save(&staging)?;
            let meta_path = staging.join(META_FILE);
            let meta_text = serde_json::to_string_pretty(&meta.to_json()).expect("a JSON value always serializes");
            std::fs::write(&meta_path, meta_text).map_err(io_error("write", &meta_path))?;
            sync_dir(&staging);
            install(&staging, out_dir, existing)?;
            Ok((meta, w))
        });
    let (meta, w) = match written {
        Ok(done) => done,
        Err(e) => {
            // Best effort: the staging directory is incomplete and no use to anyone.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    Ok(PrepareReport {
        vocab_size: meta.vocab_size,
        train_tokens: meta.train.tokens,
        val_tokens: meta.val.tokens,
        train_documents: w.train_documents,
        val_documents: w.val_documents,
        train_shards: meta.train.shards.len(),
        val_shards: meta.val.shards.len(),
        split_by: meta.split.by,
        files: files.len(),
        bytes: total_bytes,
        text_bytes: w.text_bytes,
        empty_documents: w.documents.empty,
        skipped_records: w.documents.skipped,
        tokenizer_kind: meta.tokenizer_kind,
        token_width: meta.token_width,
        out_dir: out_dir.to_path_buf(),
    })
}

fn check_options(spec: &TokenizerSpec, opts: &PrepareOptions) -> Result<(), DataError> {
    let built_here = matches!(spec, TokenizerSpec::Char | TokenizerSpec::Bpe { .. });
    if let Some(token) = opts.eot.as_deref().filter(|&token| built_here && token != EOT_TOKEN) {
        return Err(DataError::InvalidOption {
            name: "eot",
            value: token.to_string(),
            rule:
                "names the end-of-text token of a loaded tokenizer.json; char and bpe vocabularies have <|endoftext|>",
        });
    }
    if let ValSplit::Fraction(f) = opts.val {
        if !(f.is_finite() && (0.0..1.0).contains(&f)) {
            return Err(DataError::InvalidOption {
                name: "val_fraction",
                value: f.to_string(),
                rule: "must be in [0, 1): the training split cannot be empty",
            });
        }
    }
    let positive = |name, value: u64| match value {
        0 => Err(DataError::InvalidOption { name, value: "0".to_string(), rule: "must be at least 1" }),
        _ => Ok(()),
    };
    positive("shard_tokens", opts.shard_tokens)?;
    positive("bpe_sample", opts.bpe_sample_bytes)
}

fn run_survey(
    files: &[InputFile],
    read: &ReadOptions,
    opts: &PrepareOptions,
    want_chars: bool,
    total_bytes: u64,
) -> Result<crate::survey::Survey, DataError> {
    let what = if want_chars { "reading the characters" } else { "counting the documents" };
    let progress = StreamProgress::new(opts.progress, what, total_bytes);
    survey(files, read, opts.skip_bad_lines, want_chars, &progress)
}

/// The tokenizer `spec` asks for, with its end-of-text token.
fn build_tokenizer(
    spec: &TokenizerSpec,
    files: &[InputFile],
    read: &ReadOptions,
    opts: &PrepareOptions,
    surveyed: Option<&crate::survey::Survey>,
    total_bytes: u64,
) -> Result<Tokenizer, DataError> {
    match spec {
        TokenizerSpec::Char => {
            let survey = surveyed.expect("the char vocabulary comes from a survey");
            if survey.documents.documents == 0 {
                return Err(no_documents(files, &survey.documents));
            }
            Ok(Tokenizer::char_from_set(survey.chars.clone().unwrap_or_default()))
        }
        TokenizerSpec::Bpe { vocab_size } => {
            let sample = opts.bpe_sample_bytes.min(total_bytes);
            let what = format!(
                "training {spec} on a sample of {:.1} MB (reading it, then learning merges)",
                sample as f64 / 1e6
            );
            // The trainer reports nothing while it learns merges: one ticking line for the whole training.
            let silent = StreamProgress::new(false, &what, sample);
            // Pieces of a long document cut where byte-level BPE's words end: the trainer counts the same words.
            let read = ReadOptions { cut_rule: CutRule::AfterLoneNewline, ..read.clone() };
            Progress::new(opts.progress).phase(&what, || {
                train_bpe_on_sample(files, &read, opts.skip_bad_lines, *vocab_size, opts.bpe_sample_bytes, &silent)
            })
        }
        TokenizerSpec::HfJson(path) => {
            let tokenizer = Tokenizer::from_hf_json(path)?;
            match opts.eot.as_deref() {
                Some(token) => tokenizer.with_eot(token),
                None if tokenizer.eot_id().is_some() => Ok(tokenizer),
                None => Err(DataError::NoEndOfText { path: path.clone(), looked_for: EOT_SPELLINGS }),
            }
        }
    }
}

fn no_documents(files: &[InputFile], documents: &DocumentCounter) -> DataError {
    match files {
        // One empty file: the error of an empty corpus, naming it.
        [only] if documents.skipped == 0 => DataError::InputEmpty { path: only.path.clone() },
        _ => DataError::NoDocuments { files: files.len(), empty: documents.empty, skipped: documents.skipped },
    }
}

/// Which documents are validation.
enum ValChoice {
    /// Document i iff `hash(key, i) < fraction`.
    Fraction {
        key: u64,
        fraction: f64,
    },
    Set(std::collections::HashSet<u64>),
}

impl ValChoice {
    fn is_val(&self, index: u64) -> bool {
        match self {
            ValChoice::Fraction { key, fraction } => {
                // 53 bits of a SplitMix64 hash of (key, index): a uniform draw in [0, 1) per document, the same for
                // a document whatever else is in the corpus after it.
                let draw = Rng::new(key ^ index).next_u64() >> 11;
                (draw as f64) < fraction * (1u64 << 53) as f64
            }
            ValChoice::Set(set) => set.contains(&index),
        }
    }
}

/// `count` distinct indices below `n`, uniformly (Floyd's algorithm: `count` draws, no array of `n`).
fn sample_indices(n: u64, count: u64, seed: u64) -> std::collections::HashSet<u64> {
    let mut rng = Rng::new(seed);
    let mut chosen = std::collections::HashSet::with_capacity(count as usize);
    for j in n - count..n {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen
}

/// What the tokenizing pass wrote.
struct Written {
    train: SplitFiles,
    val: SplitFiles,
    split_by: SplitBy,
    train_documents: u64,
    val_documents: u64,
    text_bytes: u64,
    documents: DocumentCounter,
}

/// The tokenizing pass: every document's ids and the end-of-text token, appended to its split's shards in
/// `dir`; then, if the documents left a split empty, the split by tokens.
#[allow(clippy::too_many_arguments)]
fn write_data_set(
    files: &[InputFile],
    read: &ReadOptions,
    tokenizer: &Tokenizer,
    eot: u32,
    val: &ValChoice,
    dir: &Path,
    opts: &PrepareOptions,
    total_bytes: u64,
) -> Result<Written, DataError> {
    let width = token_width(tokenizer.vocab_size());
    let mut train = SplitWriter::new(dir, "train", width, opts.shard_tokens);
    let mut valid = SplitWriter::new(dir, "val", width, opts.shard_tokens);
    let mut documents = DocumentCounter::default();
    let mut current_is_val = false;
    let mut text_bytes = 0u64;
    let counter = Arc::new(ByteCounter::default());
    let progress = StreamProgress::new(opts.progress, &format!("tokenizing with {}", tokenizer.kind()), total_bytes);
    for_each_chunk(files, read, &Budget::All, &counter, |chunk: Chunk| {
        let outcomes = tokenize_chunk(&chunk.records, tokenizer, read).map_err(|(at, e)| {
            let record = &chunk.records[at];
            DataError::BadRecord {
                path: files[record.file].path.clone(),
                line: record.line,
                unit: "line",
                problem: e.to_string(),
            }
        })?;
        for (record, outcome) in chunk.records.iter().zip(outcomes) {
            let has_text = match &outcome {
                Outcome::Tokens(_) => Ok(true),
                Outcome::Empty => Ok(false),
                Outcome::Bad(why) => Err(why.as_str()),
            };
            match documents.step(record, has_text, files, opts.skip_bad_lines)? {
                Step::Starts(index) => current_is_val = val.is_val(index),
                Step::Continues => {}
                Step::Nothing => continue,
            }
            let Outcome::Tokens(ids) = outcome else { unreachable!("a document step has tokens") };
            if let RecordBody::Text(text) | RecordBody::Json(text) = &record.body {
                text_bytes += text.len() as u64;
            }
            let writer = if current_is_val { &mut valid } else { &mut train };
            writer.push(&ids)?;
            if record.ends_doc {
                writer.push(&[eot])?;
                writer.documents += 1;
            }
        }
        progress.update(chunk.read_bytes, documents.documents, Some(train.tokens() + valid.tokens()));
        Ok(true)
    })?;
    progress.finish(counter.get(), documents.documents, Some(train.tokens() + valid.tokens()));
    if documents.documents == 0 {
        return Err(no_documents(files, &documents));
    }
    let (mut train_documents, mut val_documents) = (train.documents, valid.documents);
    let mut train_files = train.finish(Some(train_documents))?;
    let mut val_files = valid.finish(Some(val_documents))?;
    let fraction = match opts.val {
        ValSplit::Fraction(f) => f,
        ValSplit::Documents(_) => 0.0,
    };
    let mut split_by = SplitBy::Documents;
    if fraction > 0.0 && (train_files.tokens == 0 || val_files.tokens == 0) {
        // Too few documents to split by: split the stream, which one split then holds whole, by tokens.
        split_by = SplitBy::Tokens;
        if train_files.tokens == 0 {
            train_files = rename_split(dir, val_files, "train")?;
        }
        let mut tail = SplitWriter::new(dir, "val", width, opts.shard_tokens);
        let count = (train_files.tokens as f64 * fraction).floor() as u64;
        move_tail(dir, &mut train_files, count, &mut tail)?;
        train_files.documents = None;
        val_files = tail.finish(None)?;
        (train_documents, val_documents) = (documents.documents, 0);
    }
    Ok(Written { train: train_files, val: val_files, split_by, train_documents, val_documents, text_bytes, documents })
}

/// The shards of `files` renamed to `split`'s names (the stream and its order unchanged).
fn rename_split(dir: &Path, mut files: SplitFiles, split: &str) -> Result<SplitFiles, DataError> {
    for (index, shard) in files.shards.iter_mut().enumerate() {
        let name = shard_file_name(split, index);
        let (from, to) = (dir.join(&shard.file), dir.join(&name));
        std::fs::rename(&from, &to).map_err(io_error("rename", &from))?;
        shard.file = name;
    }
    Ok(files)
}

fn meta_of(
    spec: &TokenizerSpec,
    tokenizer: &Tokenizer,
    inputs: &[PathBuf],
    files: &[InputFile],
    opts: &PrepareOptions,
    w: &mut Written,
) -> Result<DatasetMeta, DataError> {
    let eot = tokenizer.eot_token().zip(tokenizer.eot_id()).map(|(token, id)| EotMeta { token: token.to_string(), id });
    let (val_fraction, val_docs) = match opts.val {
        ValSplit::Fraction(f) => (Some(f), None),
        ValSplit::Documents(n) => (None, Some(n)),
    };
    Ok(DatasetMeta {
        format_version: DATA_FORMAT_VERSION,
        tokenizer_kind: tokenizer.kind().to_string(),
        tokenizer_spec: spec.to_string(),
        vocab_size: tokenizer.vocab_size(),
        token_width: token_width(tokenizer.vocab_size()),
        eot,
        split: SplitMeta { by: w.split_by, val_fraction, val_docs, seed: Some(opts.seed) },
        train: std::mem::replace(&mut w.train, SplitFiles { tokens: 0, documents: None, shards: Vec::new() }),
        val: std::mem::replace(&mut w.val, SplitFiles { tokens: 0, documents: None, shards: Vec::new() }),
        source: SourceMeta {
            inputs: inputs.iter().map(|input| input.display().to_string()).collect(),
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.bytes).sum(),
            text_bytes: w.text_bytes,
            documents: Some(w.documents.documents),
            empty_documents: w.documents.empty,
            skipped_records: w.documents.skipped,
        },
    })
}
