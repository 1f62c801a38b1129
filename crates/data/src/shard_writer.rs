//! Writing a split's token stream as numbered shards of a fixed number of tokens (the last one shorter), each
//! checksummed as it is written; and moving a stream's tail into the other split (the fallback split by tokens).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_error, DataError};
use crate::meta::{ShardMeta, SplitFiles};
use crate::shard::{checksum_text, encode_tokens_into, shard_header, Checksum, SHARD_HEADER_BYTES};

/// Buffer between the encoder and the shard file: a few large writes instead of many small ones.
const WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Tokens moved at a time when the tail of a split is moved to the other split.
const MOVE_BLOCK_TOKENS: usize = 1 << 20;

/// The file name of shard `index` of `split` ("train", "val"): zero-padded so that names sort in stream order.
pub(crate) fn shard_file_name(split: &str, index: usize) -> String {
    format!("{split}-{index:06}.bin")
}

struct OpenShard {
    path: PathBuf,
    file: BufWriter<File>,
    tokens: u64,
    checksum: Checksum,
}

/// Writes one split's stream into `dir` as `NAME-000000.bin`, `NAME-000001.bin`, ... of `shard_tokens` tokens.
pub(crate) struct SplitWriter {
    dir: PathBuf,
    name: &'static str,
    width: u32,
    shard_tokens: u64,
    current: Option<OpenShard>,
    shards: Vec<ShardMeta>,
    tokens: u64,
    /// Whole documents written (counted by the caller).
    pub documents: u64,
    encoded: Vec<u8>,
}

impl SplitWriter {
    pub(crate) fn new(dir: &Path, name: &'static str, width: u32, shard_tokens: u64) -> SplitWriter {
        SplitWriter {
            dir: dir.to_path_buf(),
            name,
            width,
            shard_tokens: shard_tokens.max(1),
            current: None,
            shards: Vec::new(),
            tokens: 0,
            documents: 0,
            encoded: Vec::new(),
        }
    }

    /// Tokens written so far.
    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Appends `tokens` to the stream, starting a new shard whenever one is full.
    pub(crate) fn push(&mut self, mut tokens: &[u32]) -> Result<(), DataError> {
        while !tokens.is_empty() {
            if self.current.is_none() {
                self.open_next()?;
            }
            let shard = self.current.as_mut().expect("opened above");
            let room = (self.shard_tokens - shard.tokens).min(tokens.len() as u64) as usize;
            self.encoded.clear();
            encode_tokens_into(&tokens[..room], self.width, &mut self.encoded);
            shard.file.write_all(&self.encoded).map_err(io_error("write", &shard.path))?;
            shard.checksum.update(&self.encoded);
            shard.tokens += room as u64;
            self.tokens += room as u64;
            tokens = &tokens[room..];
            if shard.tokens == self.shard_tokens {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn open_next(&mut self) -> Result<(), DataError> {
        let path = self.dir.join(shard_file_name(self.name, self.shards.len()));
        let file = File::create(&path).map_err(io_error("create", &path))?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        // The count is written when the shard is closed; until then the header says 0 tokens and the file size
        // disagrees, so a shard cut short by a crash never reads as whole.
        file.write_all(&shard_header(self.width, 0)).map_err(io_error("write", &path))?;
        self.current = Some(OpenShard { path, file, tokens: 0, checksum: Checksum::new() });
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), DataError> {
        let Some(shard) = self.current.take() else { return Ok(()) };
        let path = shard.path;
        let mut file = shard.file.into_inner().map_err(|e| DataError::Io {
            action: "write",
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.seek(SeekFrom::Start(0)).map_err(io_error("write", &path))?;
        file.write_all(&shard_header(self.width, shard.tokens)).map_err(io_error("write", &path))?;
        file.sync_all().map_err(io_error("flush to disk", &path))?;
        let file_name = path.file_name().expect("a shard path has a file name").to_string_lossy().into_owned();
        self.shards.push(ShardMeta {
            file: file_name,
            tokens: shard.tokens,
            checksum: checksum_text(shard.checksum.finish()),
        });
        Ok(())
    }

    /// Closes the last shard and returns the split's entry for `meta.json`. A split without tokens has no shard.
    pub(crate) fn finish(mut self, documents: Option<u64>) -> Result<SplitFiles, DataError> {
        self.close_current()?;
        Ok(SplitFiles { tokens: self.tokens, documents, shards: self.shards })
    }
}

/// Moves the last `count` tokens of the finished split `from` (shards in `dir`) to the end of `to`, shortening
/// `from`'s shards: its shard holding the cut is truncated and re-checksummed, later ones are deleted.
pub(crate) fn move_tail(dir: &Path, from: &mut SplitFiles, count: u64, to: &mut SplitWriter) -> Result<(), DataError> {
    let cut = from.tokens - count.min(from.tokens);
    let width = to.width as usize;
    let mut start = 0u64;
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; MOVE_BLOCK_TOKENS * width];
    let mut tokens = Vec::with_capacity(MOVE_BLOCK_TOKENS);
    for shard in std::mem::take(&mut from.shards) {
        let end = start + shard.tokens;
        let path = dir.join(&shard.file);
        if end <= cut {
            kept.push(shard);
            start = end;
            continue;
        }
        let keep = cut.saturating_sub(start);
        let mut file = File::options().read(true).write(true).open(&path).map_err(io_error("open", &path))?;
        file.seek(SeekFrom::Start(SHARD_HEADER_BYTES as u64 + keep * width as u64)).map_err(io_error("read", &path))?;
        let mut left = shard.tokens - keep;
        while left > 0 {
            let n = left.min(MOVE_BLOCK_TOKENS as u64) as usize;
            file.read_exact(&mut buffer[..n * width]).map_err(io_error("read", &path))?;
            tokens.clear();
            tokens.extend(buffer[..n * width].chunks_exact(width).map(|b| match *b {
                [a, b] => u16::from_le_bytes([a, b]) as u32,
                [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
                _ => unreachable!("the width is 2 or 4"),
            }));
            to.push(&tokens)?;
            left -= n as u64;
        }
        if keep == 0 {
            drop(file);
            std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
        } else {
            kept.push(truncate_shard(&mut file, &path, &shard, keep, width)?);
        }
        start = end;
    }
    from.shards = kept;
    from.tokens = cut;
    Ok(())
}

/// Shortens an open shard file to its first `keep` tokens: size, header count and checksum.
fn truncate_shard(
    file: &mut File,
    path: &Path,
    shard: &ShardMeta,
    keep: u64,
    width: usize,
) -> Result<ShardMeta, DataError> {
    file.set_len(SHARD_HEADER_BYTES as u64 + keep * width as u64).map_err(io_error("truncate", path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_error("write", path))?;
    file.write_all(&shard_header(width as u32, keep)).map_err(io_error("write", path))?;
    let mut checksum = Checksum::new();
    let mut buffer = vec![0u8; MOVE_BLOCK_TOKENS * width];
    let mut left = keep as usize * width;
    while left > 0 {
        let n = left.min(buffer.len());
        file.read_exact(&mut buffer[..n]).map_err(io_error("read", path))?;
        checksum.update(&buffer[..n]);
        left -= n;
    }
    file.sync_all().map_err(io_error("flush to disk", path))?;
    Ok(ShardMeta { file: shard.file.clone(), tokens: keep, checksum: checksum_text(checksum.finish()) })
}
