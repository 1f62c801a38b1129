//! Helpers shared by the data crate's tests: a self-deleting temporary directory, a generated corpus, and an
//! independent writer of the shard format (from the header table in `shard.rs`, not from the crate's writer).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustspeed_kernels::rng::Rng;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed with everything in it when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rustspeed-data-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const WORDS: &[&str] = &[
    "the", "king", "queen", "shall", "speak", "and", "thou", "art", "my", "lord", "café", "naïve", "what", "news",
    "from", "rome", "good", "night", "sweet", "prince", "—", "to", "be", "or", "not", "that", "is", "question",
];

/// About `words` words of seeded pseudo-English in lines of 3 to 12 words, with punctuation, blank lines and a
/// few non-ASCII characters (é, ï, —) so that UTF-8 handling is exercised.
pub fn corpus(words: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    let mut in_line = 0;
    let mut line_len = 3 + rng.below(10) as usize;
    for _ in 0..words {
        if in_line > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        in_line += 1;
        if in_line == line_len {
            text.push_str([".", ",", "!", "?", ";"][rng.below(5) as usize]);
            text.push('\n');
            if rng.below(4) == 0 {
                text.push('\n');
            }
            in_line = 0;
            line_len = 3 + rng.below(10) as usize;
        }
    }
    text.push('\n');
    text
}

/// Writes a shard file by the documented layout: `RSTOKENS`, version 1 (u32 LE), width (u32 LE), count (u64 LE),
/// 8 zero bytes, then the tokens little-endian at `width` bytes.
pub fn write_shard_by_spec(path: &Path, tokens: &[u32], width: u32) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RSTOKENS");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&width.to_le_bytes());
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&[0u8; 8]);
    for &t in tokens {
        match width {
            2 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
            _ => bytes.extend_from_slice(&t.to_le_bytes()),
        }
    }
    std::fs::write(path, bytes).expect("write shard");
}

/// Parses a shard file by the documented layout: (version, width, tokens).
pub fn read_shard_by_spec(path: &Path) -> (u32, u32, Vec<u32>) {
    let bytes = std::fs::read(path).expect("read shard");
    assert_eq!(&bytes[0..8], b"RSTOKENS", "magic");
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let width = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let count = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    assert_eq!(&bytes[24..32], &[0u8; 8], "reserved bytes");
    let data = &bytes[32..];
    assert_eq!(data.len(), count * width as usize, "data length matches the header count");
    let tokens = data
        .chunks_exact(width as usize)
        .map(|c| {
            if width == 2 {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                u32::from_le_bytes(c.try_into().unwrap())
            }
        })
        .collect();
    (version, width, tokens)
}
