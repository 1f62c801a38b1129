//! `prepare`'s inputs: which files (paths, directories walked recursively, glob patterns), in which order, of
//! which format, and opening them through their compression.
//!
//! Order: the inputs in the order given; within a directory or a pattern, files sorted by path (byte order of the
//! names, directories walked depth first in that order). A file reached twice (two inputs naming it, a link) is
//! read once, where it is first reached. Hidden entries (names starting with '.') met while walking a directory are
//! skipped: editor, VCS and OS files (`.git`, `.DS_Store`) are not corpus; a hidden file named directly is read.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{io_error, DataError};

/// How an input file holds its documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// UTF-8 text: the whole file is one document, or with `split_blank_lines` each block of lines between blank
    /// lines is one.
    Text,
    /// JSON Lines: each non-blank line is a JSON object whose text field (`text_field`) is one document.
    Jsonl,
    /// Apache Parquet: each row's string column (`text_field`) is one document.
    Parquet,
}

impl InputFormat {
    /// The format a file's name implies, compression suffix (`.gz`, `.zst`, `.zstd`) removed: `.jsonl`, `.ndjson`
    /// and `.json` are JSON Lines (`datasets`' `to_json` writes JSON Lines under any name), `.parquet` is Parquet,
    /// anything else is text.
    pub fn from_file_name(path: &Path) -> InputFormat {
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let base = COMPRESSED_SUFFIXES.iter().find_map(|(suffix, _)| name.strip_suffix(suffix)).unwrap_or(&name);
        match base.rsplit_once('.').map(|(_, extension)| extension) {
            Some("jsonl" | "ndjson" | "json") => InputFormat::Jsonl,
            Some("parquet") => InputFormat::Parquet,
            _ => InputFormat::Text,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Text => "text",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Parquet => "parquet",
        }
    }
}

impl FromStr for InputFormat {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, DataError> {
        match text {
            "text" => Ok(InputFormat::Text),
            "jsonl" => Ok(InputFormat::Jsonl),
            "parquet" => Ok(InputFormat::Parquet),
            other => Err(DataError::InvalidOption {
                name: "format",
                value: other.to_string(),
                rule: "must be text, jsonl or parquet (or left out: by each file's extension)",
            }),
        }
    }
}

/// How a file's bytes are compressed, told by their first bytes (the name may lie or say nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// gzip members start with 1f 8b (RFC 1952); zstd frames with the magic number 0xFD2FB528, little-endian (RFC 8878).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Name suffixes that promise a compression; a file so named whose bytes say otherwise is an error, not read raw.
const COMPRESSED_SUFFIXES: &[(&str, Compression)] =
    &[(".gz", Compression::Gzip), (".zst", Compression::Zstd), (".zstd", Compression::Zstd)];

/// Buffer of the reader over a file: large enough that a read call costs nothing next to decoding its bytes.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// One file to read.
#[derive(Clone, Debug)]
pub(crate) struct InputFile {
    pub path: PathBuf,
    pub format: InputFormat,
    pub compression: Compression,
    /// Size on disk (compressed, if it is).
    pub bytes: u64,
}

/// The files `inputs` name, in order (see the module docs), each with its format (`forced`, or by its name) and
/// compression. A missing path, a pattern that matches nothing, an unreadable directory or file, and no file at
/// all are errors naming the input.
pub(crate) fn discover(inputs: &[PathBuf], forced: Option<InputFormat>) -> Result<Vec<InputFile>, DataError> {
    if inputs.is_empty() {
        return Err(DataError::InvalidOption {
            name: "input",
            value: "none".to_string(),
            rule: "give at least one input",
        });
    }
    let mut paths = Vec::new();
    for input in inputs {
        let before = paths.len();
        match std::fs::metadata(input) {
            Ok(metadata) if metadata.is_dir() => walk(input, &mut paths)?,
            Ok(_) => paths.push(input.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_pattern(input) => expand(input, &mut paths)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::InputMissing { path: input.clone() })
            }
            Err(source) => return Err(DataError::Io { action: "inspect", path: input.clone(), source }),
        }
        if paths.len() == before {
            return Err(DataError::NoInputFiles { input: input.clone() });
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let canonical = std::fs::canonicalize(&path).map_err(io_error("resolve the path of", &path))?;
        if seen.insert(canonical) {
            files.push(inspect(path, forced)?);
        }
    }
    Ok(files)
}

fn is_pattern(input: &Path) -> bool {
    input.to_string_lossy().contains(['*', '?', '['])
}

/// Regular files under `dir`, recursively, sorted by name at every level, hidden entries skipped.
fn walk(dir: &Path, paths: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let walker = walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name().into_iter();
    let hidden = |entry: &walkdir::DirEntry| entry.depth() > 0 && entry.file_name().to_string_lossy().starts_with('.');
    for entry in walker.filter_entry(|entry| !hidden(entry)) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            match e.into_io_error() {
                Some(source) => DataError::Io { action: "list", path, source },
                // walkdir's other error is a link loop.
                None => DataError::BadFile { path, problem: "is a symbolic link loop".to_string() },
            }
        })?;
        if entry.file_type().is_file() {
            paths.push(entry.into_path());
        }
    }
    Ok(())
}

/// The paths `pattern` matches, sorted; a matched directory is walked.
fn expand(pattern: &Path, paths: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let text = pattern.to_string_lossy();
    let matches = glob::glob(&text).map_err(|e| DataError::InvalidOption {
        name: "input",
        value: format!("{text} ({e})"),
        rule: "a glob pattern must be well formed (*, ?, [abc], **)",
    })?;
    let mut matched = Vec::new();
    for entry in matches {
        matched.push(entry.map_err(|e| DataError::Io {
            action: "read",
            path: e.path().to_path_buf(),
            source: std::io::Error::new(e.error().kind(), e.error().to_string()),
        })?);
    }
    matched.sort();
    for path in matched {
        if path.is_dir() {
            walk(&path, paths)?;
        } else {
            paths.push(path);
        }
    }
    Ok(())
}

fn inspect(path: PathBuf, forced: Option<InputFormat>) -> Result<InputFile, DataError> {
    let mut file = File::open(&path).map_err(io_error("open", &path))?;
    let bytes = file.metadata().map_err(io_error("read the size of", &path))?.len();
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(io_error("read", &path))? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    let compression = if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if let Some((suffix, promised)) = COMPRESSED_SUFFIXES.iter().find(|(suffix, _)| name.ends_with(suffix)) {
        if compression != *promised {
            return Err(DataError::BadFile {
                path,
                problem: format!(
                    "is named {suffix} but its first bytes are not {} data (corrupt or misnamed)",
                    match promised {
                        Compression::Gzip => "gzip",
                        _ => "zstd",
                    }
                ),
            });
        }
    }
    let format = forced.unwrap_or_else(|| InputFormat::from_file_name(&path));
    if format == InputFormat::Parquet && compression != Compression::None {
        return Err(DataError::BadFile {
            path,
            problem: "is a compressed Parquet file: Parquet compresses its pages itself and needs random access; \
                      decompress the file first"
                .to_string(),
        });
    }
    Ok(InputFile { path, format, compression, bytes })
}

/// Counts the bytes read from the files on disk (before decompression), for progress.
#[derive(Debug, Default)]
pub(crate) struct ByteCounter(AtomicU64);

impl ByteCounter {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct CountingReader {
    inner: File,
    counter: Arc<ByteCounter>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.add(n as u64);
        Ok(n)
    }
}

/// The decompressed bytes of a text or JSON Lines file, buffered; the bytes read from disk are added to
/// `counter`. A gzip file may hold several members (as `cat a.gz b.gz` makes), all are read.
pub(crate) fn open_text(file: &InputFile, counter: Arc<ByteCounter>) -> Result<Box<dyn BufRead + Send>, DataError> {
    let raw = File::open(&file.path).map_err(io_error("open", &file.path))?;
    let counted = BufReader::with_capacity(READ_BUFFER_BYTES, CountingReader { inner: raw, counter });
    Ok(match file.compression {
        Compression::None => Box::new(counted),
        Compression::Gzip => {
            Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, flate2::bufread::MultiGzDecoder::new(counted)))
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(counted).map_err(|source| DataError::Io {
                action: "start decompressing (zstd)",
                path: file.path.clone(),
                source,
            })?;
            Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
        }
    })
}

/// The error for a failed read of `file`: with compression, most likely corrupt or truncated compressed data.
pub(crate) fn read_error(file: &InputFile, source: std::io::Error) -> DataError {
    let action = match file.compression {
        Compression::None => "read",
        Compression::Gzip => "decompress (gzip; corrupt or truncated?)",
        Compression::Zstd => "decompress (zstd; corrupt or truncated?)",
    };
    DataError::Io { action, path: file.path.clone(), source }
}
