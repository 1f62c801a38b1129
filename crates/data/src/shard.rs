//! Token shards: a 32-byte header and the tokens as little-endian u16 or u32, read through a memory map.
//!
//! Header (all little-endian):
//!
//! | bytes  | field                                                  |
//! |--------|--------------------------------------------------------|
//! | 0..8   | magic `RSTOKENS`                                       |
//! | 8..12  | format version (u32), [`SHARD_FORMAT_VERSION`]         |
//! | 12..16 | token width in bytes (u32): 2 (u16) or 4 (u32)         |
//! | 16..24 | token count (u64)                                      |
//! | 24..32 | reserved, zero                                         |
//!
//! 32 bytes keep the tokens aligned for either width. u16 is used when every id fits (vocabulary ≤ 65536),
//! halving the file and the memory traffic of the loader.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{io_error, DataError, ShardProblem};

pub const SHARD_MAGIC: [u8; 8] = *b"RSTOKENS";
pub const SHARD_FORMAT_VERSION: u32 = 1;
pub const SHARD_HEADER_BYTES: usize = 32;

/// Largest vocabulary whose ids all fit a u16 token.
pub const U16_VOCAB_LIMIT: usize = 1 << 16;

/// Bytes per token for a vocabulary: 2 when every id fits a u16, else 4.
pub fn token_width(vocab_size: usize) -> u32 {
    if vocab_size <= U16_VOCAB_LIMIT {
        2
    } else {
        4
    }
}

/// A read-only, memory-mapped token shard. Cloning shares the map.
///
/// The map assumes nobody writes the file while it is open; `prepare` never rewrites a shard in place (it
/// builds a new directory and renames it), so this holds for data sets made by rustspeed.
#[derive(Clone, Debug)]
pub struct TokenShard {
    path: PathBuf,
    split: String,
    map: Arc<Mmap>,
    width: u32,
    len: usize,
}

impl TokenShard {
    /// Opens `path` and checks magic, version, token width and that the file size matches the token count.
    /// `split` names the shard in messages ("train", "validation").
    pub fn open(path: &Path, split: &str) -> Result<TokenShard, DataError> {
        let bad = |problem| DataError::BadShard { path: path.to_path_buf(), problem };
        let file = File::open(path).map_err(io_error("open", path))?;
        let bytes = file.metadata().map_err(io_error("read the size of", path))?.len();
        if bytes < SHARD_HEADER_BYTES as u64 {
            return Err(bad(ShardProblem::ShorterThanHeader { bytes, header_bytes: SHARD_HEADER_BYTES as u64 }));
        }
        // SAFETY: the map is read-only and shards are never modified while open (see the type's docs).
        let map = unsafe { Mmap::map(&file) }.map_err(io_error("memory-map", path))?;
        let header = &map[..SHARD_HEADER_BYTES];
        if header[0..8] != SHARD_MAGIC {
            return Err(bad(ShardProblem::BadMagic));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != SHARD_FORMAT_VERSION {
            return Err(bad(ShardProblem::UnsupportedVersion { found: version, supported: SHARD_FORMAT_VERSION }));
        }
        let width = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        if width != 2 && width != 4 {
            return Err(bad(ShardProblem::BadTokenWidth { width }));
        }
        let header_tokens = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        let expected_bytes = header_tokens
            .checked_mul(width as u64)
            .and_then(|data| data.checked_add(SHARD_HEADER_BYTES as u64))
            .unwrap_or(u64::MAX);
        if expected_bytes != bytes {
            return Err(bad(ShardProblem::SizeMismatch { header_tokens, expected_bytes, actual_bytes: bytes }));
        }
        Ok(TokenShard {
            path: path.to_path_buf(),
            split: split.to_string(),
            map: Arc::new(map),
            width,
            len: header_tokens as usize,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per token: 2 or 4.
    pub fn token_width(&self) -> u32 {
        self.width
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The split's name for messages: "train", "validation".
    pub fn split(&self) -> &str {
        &self.split
    }

    /// Token `index`; panics past the end (like slice indexing).
    pub fn get(&self, index: usize) -> u32 {
        assert!(index < self.len, "token index {index} out of range for a shard of {} tokens", self.len);
        let w = self.width as usize;
        let at = SHARD_HEADER_BYTES + index * w;
        read_token(&self.map[at..at + w])
    }

    /// The tokens in `range`, widened to u32; panics if the range runs past the end (like slice indexing).
    pub fn tokens(&self, range: Range<usize>) -> Vec<u32> {
        let mut out = vec![0; range.len()];
        self.copy_tokens(range.start, &mut out);
        out
    }

    /// Fills `out` with the tokens starting at `start`; panics if they run past the end.
    pub fn copy_tokens(&self, start: usize, out: &mut [u32]) {
        let end = start.checked_add(out.len()).filter(|&end| end <= self.len);
        assert!(end.is_some(), "tokens {start}..+{} out of range for a shard of {} tokens", out.len(), self.len);
        let w = self.width as usize;
        let bytes = &self.data()[start * w..(start + out.len()) * w];
        for (slot, token) in out.iter_mut().zip(bytes.chunks_exact(w)) {
            *slot = read_token(token);
        }
    }

    /// The first token at or above `vocab_size`, as (position, id), reading the whole shard.
    pub fn first_out_of_vocab(&self, vocab_size: usize) -> Option<(usize, u32)> {
        let w = self.width as usize;
        self.data().chunks_exact(w).map(read_token).enumerate().find(|&(_, id)| id as usize >= vocab_size)
    }

    /// [`checksum`] of the stored token bytes (everything after the header).
    pub fn checksum(&self) -> u64 {
        checksum(self.data())
    }

    fn data(&self) -> &[u8] {
        &self.map[SHARD_HEADER_BYTES..]
    }
}

fn read_token(bytes: &[u8]) -> u32 {
    match *bytes {
        [a, b] => u16::from_le_bytes([a, b]) as u32,
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        _ => unreachable!("token width is checked to be 2 or 4 when the shard is opened"),
    }
}

/// Appends the shard's token bytes for `tokens` at `width` bytes each to `data`. Panics if a token does not
/// fit the width; callers pick the width from the vocabulary, which bounds every id.
pub(crate) fn encode_tokens_into(tokens: &[u32], width: u32, data: &mut Vec<u8>) {
    data.reserve(tokens.len() * width as usize);
    for &token in tokens {
        if width == 2 {
            let narrow = u16::try_from(token).expect("token id fits the u16 width chosen from the vocabulary");
            data.extend_from_slice(&narrow.to_le_bytes());
        } else {
            data.extend_from_slice(&token.to_le_bytes());
        }
    }
}

/// The shard header for `tokens` tokens of `width` bytes.
pub(crate) fn shard_header(width: u32, tokens: u64) -> [u8; SHARD_HEADER_BYTES] {
    let mut header = [0u8; SHARD_HEADER_BYTES];
    header[0..8].copy_from_slice(&SHARD_MAGIC);
    header[8..12].copy_from_slice(&SHARD_FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&width.to_le_bytes());
    header[16..24].copy_from_slice(&tokens.to_le_bytes());
    header
}

/// Starting value of [`checksum`]: the fractional bits of the golden ratio, any non-zero constant would do.
const CHECKSUM_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// Odd multiplier from SplitMix64's finalizer (Steele, Lea, Flood 2014), chosen there for good bit mixing.
const CHECKSUM_MULTIPLIER: u64 = 0xBF58_476D_1CE4_E5B9;

/// A 64-bit hash of `bytes` read as little-endian 8-byte words (the last one zero-padded): each word is xored in,
/// multiplied by an odd constant and folded (`h ^= h >> 31`) so high bits reach the low ones; the byte length
/// is mixed in last. One multiply per 8 bytes, so checking a shard costs about as much as reading it. Guards
/// against truncation and corruption, not against tampering.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut hasher = Checksum::new();
    hasher.update(bytes);
    hasher.finish()
}

/// [`checksum`] of bytes that arrive in pieces (a shard as it is written): the same value as of their
/// concatenation.
#[derive(Clone, Debug)]
pub(crate) struct Checksum {
    hash: u64,
    /// Bytes of the current, incomplete word.
    partial: [u8; 8],
    partial_len: usize,
    total: u64,
}

impl Checksum {
    pub(crate) fn new() -> Checksum {
        Checksum { hash: CHECKSUM_SEED, partial: [0; 8], partial_len: 0, total: 0 }
    }

    fn mix(hash: u64, word: u64) -> u64 {
        let product = (hash ^ word).wrapping_mul(CHECKSUM_MULTIPLIER);
        product ^ (product >> 31)
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.partial_len > 0 {
            let take = bytes.len().min(8 - self.partial_len);
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take;
            bytes = &bytes[take..];
            if self.partial_len < 8 {
                return;
            }
            self.hash = Checksum::mix(self.hash, u64::from_le_bytes(self.partial));
            self.partial_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.hash = Checksum::mix(self.hash, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let tail = words.remainder();
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut hash = self.hash;
        if self.partial_len > 0 {
            let mut padded = [0u8; 8];
            padded[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
            hash = Checksum::mix(hash, u64::from_le_bytes(padded));
        }
        Checksum::mix(hash, self.total)
    }
}

/// The checksum as written in `meta.json`.
pub(crate) fn checksum_text(hash: u64) -> String {
    format!("mix64-words:{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_checksum_equals_the_whole_one_for_any_pieces() {
        let data: Vec<u8> = (0..101u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let whole = checksum(&data);
        for piece in [1, 3, 7, 8, 9, 16, 50, 101] {
            let mut hasher = Checksum::new();
            data.chunks(piece).for_each(|chunk| hasher.update(chunk));
            assert_eq!(hasher.finish(), whole, "pieces of {piece}");
        }
        // Uneven pieces, including empty ones.
        let mut hasher = Checksum::new();
        for range in [0..0, 0..5, 5..5, 5..13, 13..14, 14..101] {
            hasher.update(&data[range]);
        }
        assert_eq!(hasher.finish(), whole);
        assert_eq!(Checksum::new().finish(), checksum(&[]));
    }
}
