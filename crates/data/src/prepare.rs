//! `prepare`: corpus → tokenizer → `train.bin` / `val.bin` → `meta.json`, installed atomically.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_error, DataError};
use crate::meta::{DatasetMeta, ShardMeta, DATA_FORMAT_VERSION, META_FILE, TRAIN_FILE, VAL_FILE};
use crate::progress::Progress;
use crate::shard::{checksum, checksum_text, encode_tokens, token_width, write_shard};
use crate::spec::TokenizerSpec;
use crate::tokenizer::Tokenizer;

/// Options of [`prepare`].
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareOptions {
    /// Fraction of the token stream, taken from its end, that becomes the validation split; in `[0, 1)`.
    /// Default 0.1.
    pub val_fraction: f64,
    /// Replace an existing prepared directory. Default false: an existing non-empty directory is an error.
    pub overwrite: bool,
    /// Report each phase (reading, tokenizer training, encoding, writing) and its elapsed time on stderr; meant
    /// for a terminal. Default false.
    pub progress: bool,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions { val_fraction: 0.1, overwrite: false, progress: false }
    }
}

/// What [`prepare`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareReport {
    pub vocab_size: usize,
    pub train_tokens: u64,
    pub val_tokens: u64,
    /// Characters (Unicode scalar values) of the corpus.
    pub chars: u64,
    /// Bytes of the corpus.
    pub bytes: u64,
    /// "char", "bpe" or "hf".
    pub tokenizer_kind: String,
    /// Bytes per stored token (2 or 4).
    pub token_width: u32,
    pub out_dir: PathBuf,
}

/// Tokenizes `input` with the tokenizer `spec` builds and writes a data directory at `out_dir`: the tokenizer
/// files, `train.bin`, `val.bin` and `meta.json`.
///
/// The split is contiguous: of `n` tokens, the last `floor(n * val_fraction)` are validation and the first
/// ones are training, so no window of either split sees text of the other (apart from the one boundary).
///
/// Everything is written into a hidden sibling directory that is renamed to `out_dir` once complete, with
/// `meta.json` written last inside it: an interrupted run leaves no `out_dir` that [`crate::Dataset::open`]
/// accepts (at most a `.NAME.tmp-*` directory to delete). An existing non-empty `out_dir` is replaced only with
/// `overwrite`, and only if it is a prepared data set. An `input` inside `out_dir` (or that is `out_dir`) is refused
/// before anything is read or written, since replacing `out_dir` would delete it.
pub fn prepare(
    input: &Path,
    spec: &TokenizerSpec,
    out_dir: &Path,
    opts: &PrepareOptions,
) -> Result<PrepareReport, DataError> {
    if !(opts.val_fraction.is_finite() && (0.0..1.0).contains(&opts.val_fraction)) {
        return Err(DataError::InvalidOption {
            name: "val_fraction",
            value: opts.val_fraction.to_string(),
            rule: "must be in [0, 1): the training split cannot be empty",
        });
    }
    check_input_outside_output(input, out_dir)?;
    let existing = check_output(out_dir, opts.overwrite)?;
    let progress = Progress::new(opts.progress);
    let text = progress.phase(&format!("reading {}", input.display()), || read_corpus(input))?;

    let tokenizer = progress.phase(&format!("building the {spec} tokenizer"), || Tokenizer::build(spec, &text))?;
    let tokens = progress.phase(&format!("encoding {} bytes", text.len()), || tokenizer.encode(&text))?;
    if tokens.is_empty() {
        return Err(DataError::Tokenizer {
            action: "tokenize",
            path: Some(input.to_path_buf()),
            message: "the tokenizer produced no tokens".to_string(),
        });
    }
    let vocab_size = tokenizer.vocab_size();
    if let Some((position, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab_size) {
        return Err(DataError::TokenOutOfVocab {
            context: "the tokenizer's output".to_string(),
            position,
            id,
            vocab_size,
        });
    }
    // floor(n * f) < n for f < 1, so training keeps at least one token.
    let val_tokens = (tokens.len() as f64 * opts.val_fraction).floor() as usize;
    let (train, val) = tokens.split_at(tokens.len() - val_tokens);
    let width = token_width(vocab_size);
    let train_bytes = encode_tokens(train, width);
    let val_bytes = encode_tokens(val, width);
    let meta = DatasetMeta {
        format_version: DATA_FORMAT_VERSION,
        tokenizer_kind: tokenizer.kind().to_string(),
        tokenizer_spec: spec.to_string(),
        vocab_size,
        token_width: width,
        val_fraction: opts.val_fraction,
        train: ShardMeta { tokens: train.len() as u64, checksum: checksum_text(checksum(&train_bytes)) },
        val: ShardMeta { tokens: val.len() as u64, checksum: checksum_text(checksum(&val_bytes)) },
        source_file_name: input.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
        source_bytes: text.len() as u64,
        source_chars: text.chars().count() as u64,
    };

    let staging = create_staging_dir(out_dir)?;
    let written = progress.phase(&format!("writing {}", out_dir.display()), || {
        tokenizer.save(&staging)?;
        write_shard(&staging.join(TRAIN_FILE), &train_bytes, width)?;
        write_shard(&staging.join(VAL_FILE), &val_bytes, width)?;
        let meta_path = staging.join(META_FILE);
        let meta_text = serde_json::to_string_pretty(&meta.to_json()).expect("a JSON value always serializes");
        fs::write(&meta_path, meta_text).map_err(io_error("write", &meta_path))?;
        sync_dir(&staging);
        install(&staging, out_dir, existing)
    });
    if written.is_err() {
        // Best effort: the staging directory is incomplete and no use to anyone.
        let _ = fs::remove_dir_all(&staging);
    }
    written?;

    Ok(PrepareReport {
        vocab_size,
        train_tokens: meta.train.tokens,
        val_tokens: meta.val.tokens,
        chars: meta.source_chars,
        bytes: meta.source_bytes,
        tokenizer_kind: meta.tokenizer_kind,
        token_width: width,
        out_dir: out_dir.to_path_buf(),
    })
}

/// Refuses a directory as `input` (the corpus is one file), and an `input` that replacing `out_dir` would delete:
/// the file, or the symbolic link naming it, inside `out_dir` (or being `out_dir`). Paths are compared
/// canonicalized (absolute, `..` and links resolved), so relative spellings and links are seen through.
fn check_input_outside_output(input: &Path, out_dir: &Path) -> Result<(), DataError> {
    let metadata = fs::metadata(input).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::InputMissing { path: input.to_path_buf() },
        _ => DataError::Io { action: "inspect", path: input.to_path_buf(), source },
    })?;
    if metadata.is_dir() {
        return Err(DataError::InputIsDirectory { path: input.to_path_buf() });
    }
    let Ok(out_canonical) = fs::canonicalize(out_dir) else {
        // No `out_dir` yet (or not reachable, which `check_output` reports): nothing of the input's is in it.
        return Ok(());
    };
    let target = fs::canonicalize(input).map_err(io_error("resolve the path of", input))?;
    // Where the name itself lives: a link inside `out_dir` would be deleted even if its target survives.
    let name_location = match (input.parent().filter(|p| !p.as_os_str().is_empty()), input.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent).ok().map(|parent| parent.join(name)),
        (None, Some(name)) => fs::canonicalize(".").ok().map(|cwd| cwd.join(name)),
        _ => None,
    };
    let inside = |path: &Path| path.starts_with(&out_canonical);
    if inside(&target) || name_location.as_deref().is_some_and(inside) {
        return Err(DataError::InputInsideOutput {
            input: input.to_path_buf(),
            resolved: (target != input).then_some(target),
            out_dir: out_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// The corpus as text; missing, empty and non-UTF-8 inputs are errors naming the path.
fn read_corpus(input: &Path) -> Result<String, DataError> {
    let bytes = fs::read(input).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::InputMissing { path: input.to_path_buf() },
        _ => DataError::Io { action: "read", path: input.to_path_buf(), source },
    })?;
    if bytes.is_empty() {
        return Err(DataError::InputEmpty { path: input.to_path_buf() });
    }
    String::from_utf8(bytes)
        .map_err(|e| DataError::InputNotUtf8 { path: input.to_path_buf(), byte_offset: e.utf8_error().valid_up_to() })
}

/// What is at the output path before `prepare` installs its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    EmptyDir,
    /// A prepared data set that `overwrite` allows replacing.
    Dataset,
}

fn check_output(out_dir: &Path, overwrite: bool) -> Result<Existing, DataError> {
    let metadata = match fs::symlink_metadata(out_dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(source) => return Err(DataError::Io { action: "inspect", path: out_dir.to_path_buf(), source }),
    };
    if !metadata.is_dir() {
        return Err(DataError::BadFile {
            path: out_dir.to_path_buf(),
            problem: "exists and is not a directory; choose another output directory".to_string(),
        });
    }
    let mut entries = fs::read_dir(out_dir).map_err(io_error("list", out_dir))?;
    if entries.next().is_none() {
        return Ok(Existing::EmptyDir);
    }
    if !overwrite {
        return Err(DataError::OutputExists { path: out_dir.to_path_buf() });
    }
    if !out_dir.join(META_FILE).is_file() {
        return Err(DataError::OutputNotDataset { path: out_dir.to_path_buf() });
    }
    Ok(Existing::Dataset)
}

/// Distinguishes staging directories of one process; the process id distinguishes processes.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A sibling path of `out_dir` named `.NAME.TAG-PID-N` that does not exist yet.
fn sibling_path(out_dir: &Path, tag: &str) -> PathBuf {
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".to_string());
    loop {
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let candidate = parent.join(format!(".{name}.{tag}-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
    }
}

/// The staging directory sits beside `out_dir` so the final rename stays on one file system.
fn create_staging_dir(out_dir: &Path) -> Result<PathBuf, DataError> {
    if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    let staging = sibling_path(out_dir, "tmp");
    fs::create_dir(&staging).map_err(io_error("create directory", &staging))?;
    Ok(staging)
}

/// Moves the complete staging directory to `out_dir`; a replaced data set is moved aside first and deleted
/// only once the new one is in place, so a failure leaves the old one (or nothing) rather than a mix.
fn install(staging: &Path, out_dir: &Path, existing: Existing) -> Result<(), DataError> {
    let rename = |from: &Path, to: &Path| fs::rename(from, to).map_err(io_error("rename into place", to));
    match existing {
        Existing::Nothing => rename(staging, out_dir),
        Existing::EmptyDir => {
            fs::remove_dir(out_dir).map_err(io_error("remove the empty directory", out_dir))?;
            rename(staging, out_dir)
        }
        Existing::Dataset => {
            let aside = sibling_path(out_dir, "old");
            rename(out_dir, &aside)?;
            if let Err(e) = rename(staging, out_dir) {
                let _ = fs::rename(&aside, out_dir);
                return Err(e);
            }
            fs::remove_dir_all(&aside).map_err(io_error("remove the replaced data set", &aside))
        }
    }
}

/// Flushes the directory entries (Unix); where directories cannot be opened this is skipped, the files
/// themselves were already flushed.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}
