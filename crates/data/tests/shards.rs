//! Many shards as one token sequence: a split reads as its shards concatenated (checked against the test's own
//! reader of each file), the loader's batches do not depend on how the stream was sharded, resuming across a
//! shard boundary is exact, and a data directory of the previous format (version 1) still loads.

mod common;

use std::path::Path;

use common::{read_shard_by_spec, write_shard_by_spec, TempDir};
use rustspeed_data::{prepare, Dataset, Loader, PrepareOptions, TokenShard, TokenSplit, TokenizerSpec, ValSplit};

/// Shards of the given lengths holding 0, 1, 2, ... across them (u32 wide), as one split.
fn counting_split(dir: &TempDir, lengths: &[usize]) -> TokenSplit {
    let mut next = 0u32;
    let shards = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let path = dir.join(&format!("s-{i}.bin"));
            let tokens: Vec<u32> = (next..next + len as u32).collect();
            next += len as u32;
            write_shard_by_spec(&path, &tokens, 4);
            TokenShard::open(&path, "train").unwrap()
        })
        .collect();
    TokenSplit::new("train", shards)
}

#[test]
fn a_split_reads_any_range_across_its_shards() {
    let tmp = TempDir::new("split-ranges");
    // Empty shards first, between, and last.
    let split = counting_split(&tmp, &[0, 5, 0, 3, 10, 1, 0]);
    assert_eq!(split.len(), 19);
    for start in 0..=19 {
        for len in 0..=19 - start {
            let expected: Vec<u32> = (start as u32..(start + len) as u32).collect();
            assert_eq!(split.tokens(start..start + len), expected, "{start}..+{len}");
        }
    }
    assert_eq!(split.get(18), 18);
    assert!(std::panic::catch_unwind(|| split.tokens(10..20)).is_err(), "past the end panics like a slice");
    assert!(TokenSplit::new("val", Vec::new()).is_empty());
}

/// A corpus of many short JSON documents, prepared with the char tokenizer (fast, and every shard size is
/// possible) into `tmp/NAME` with shards of `shard_tokens`.
fn prepared(tmp: &TempDir, name: &str, shard_tokens: u64) -> Dataset {
    let input = tmp.join("docs.jsonl");
    if !input.exists() {
        let lines: Vec<String> = (0..400)
            .map(|i| {
                serde_json::json!({ "text": format!("document {i}: {}", "to be or not to be. ".repeat(i % 7 + 1)) })
                    .to_string()
            })
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
    }
    let out = tmp.join(name);
    let opts = PrepareOptions { val: ValSplit::Fraction(0.1), shard_tokens, ..PrepareOptions::default() };
    prepare(&[input], &TokenizerSpec::Char, &out, &opts).unwrap();
    Dataset::open(&out).unwrap()
}

fn batches(loader: &mut Loader, count: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..count)
        .map(|_| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            loader.next_batch(&mut x, &mut y);
            (x, y)
        })
        .collect()
}

#[test]
fn shard_boundaries_are_invisible_to_the_loader() {
    let tmp = TempDir::new("shards-invisible");
    let one = prepared(&tmp, "one", u64::MAX);
    let many = prepared(&tmp, "many", 997);
    assert_eq!((one.train.shards().len(), one.val.shards().len()), (1, 1));
    assert!(many.train.shards().len() > 10, "{} shards", many.train.shards().len());
    let stream: Vec<u32> = many.train.shards().iter().flat_map(|s| read_shard_by_spec(s.path()).2).collect();
    assert_eq!(stream, one.train.tokens(0..one.train.len()), "the same stream, cut into files");
    for (b, t, world) in [(4, 64, 1), (3, 50, 2), (2, 997, 1)] {
        for rank in 0..world {
            let mut from_one = Loader::new(&one.train, b, t, 7, rank, world).unwrap();
            let mut from_many = Loader::new(&many.train, b, t, 7, rank, world).unwrap();
            assert_eq!(from_one.windows_per_epoch(), from_many.windows_per_epoch());
            // Two and a half epochs: every window, and so every shard boundary, is read more than once.
            let calls = from_one.windows_per_epoch() * 5 / (2 * b * world);
            assert_eq!(batches(&mut from_one, calls), batches(&mut from_many, calls), "B {b}, T {t}, rank {rank}");
            assert_eq!(from_one.state(), from_many.state());
        }
    }
    let mut val_one = Loader::new(&one.val, 2, 32, 3, 0, 1).unwrap();
    let mut val_many = Loader::new(&many.val, 2, 32, 3, 0, 1).unwrap();
    assert_eq!(batches(&mut val_one, 5), batches(&mut val_many, 5));
}

#[test]
fn resume_across_a_shard_boundary_is_exact() {
    let tmp = TempDir::new("shards-resume");
    let data = prepared(&tmp, "many", 101);
    let (b, t, world) = (2, 64, 2);
    // T = 64 over shards of 101 tokens: most windows cross a boundary.
    for stop in [1, 7, 40] {
        for rank in 0..world {
            let mut straight = Loader::new(&data.train, b, t, 11, rank, world).unwrap();
            let before = batches(&mut straight, stop);
            let state = straight.state();
            let expected = batches(&mut straight, 60);

            let mut resumed = Loader::new(&data.train, b, t, 99, rank, world).unwrap();
            resumed.restore(&state).unwrap();
            assert_eq!(batches(&mut resumed, 60), expected, "stopped after {stop}, rank {rank}");
            assert_eq!(resumed.state(), straight.state());
            // The position is still the count of windows read (the trainer checks it against its samples).
            assert_eq!(before.len(), stop);
            assert_eq!(state.epoch * straight.windows_per_epoch() as u64 + state.cursor, (stop * b * world) as u64);
        }
    }
}

/// Writes a data directory exactly as version 1 did: `train.bin`, `val.bin`, the char tokenizer without an
/// end-of-text token, and `meta.json` of format version 1 (from the layout documented in that version).
fn write_version_1(dir: &Path, chars: &[char], train: &[u32], val: &[u32]) {
    std::fs::create_dir_all(dir).unwrap();
    let chars_json: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let tokenizer = serde_json::json!({
        "format": "rustspeed-tokenizer", "format_version": 1, "kind": "char",
        "vocab_size": chars.len(), "chars": chars_json,
    });
    std::fs::write(dir.join("tokenizer_meta.json"), tokenizer.to_string()).unwrap();
    write_shard_by_spec(&dir.join("train.bin"), train, 2);
    write_shard_by_spec(&dir.join("val.bin"), val, 2);
    let checksum = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        format!("mix64-words:{:016x}", rustspeed_data::shard::checksum(&bytes[32..]))
    };
    let meta = serde_json::json!({
        "format": "rustspeed-data",
        "format_version": 1,
        "tokenizer": { "kind": "char", "spec": "char", "vocab_size": chars.len() },
        "token_width": 2,
        "split": { "rule": "contiguous: val = the last floor(tokens * val_fraction) tokens, train = the rest", "val_fraction": 0.1 },
        "train": { "file": "train.bin", "tokens": train.len(), "checksum": checksum("train.bin") },
        "val": { "file": "val.bin", "tokens": val.len(), "checksum": checksum("val.bin") },
        "source": { "file_name": "input.txt", "bytes": train.len() + val.len(), "chars": train.len() + val.len() },
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}

#[test]
fn a_version_1_directory_still_loads_and_trains_the_same() {
    let tmp = TempDir::new("shards-v1");
    let text = "to be or not to be, that is the question. ".repeat(40);
    let chars: Vec<char> = text.chars().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let ids: Vec<u32> = text.chars().map(|c| chars.binary_search(&c).unwrap() as u32).collect();
    let cut = ids.len() - ids.len() / 10;
    let dir = tmp.join("v1");
    write_version_1(&dir, &chars, &ids[..cut], &ids[cut..]);

    let dataset = Dataset::open(&dir).unwrap();
    assert_eq!(dataset.meta.format_version, 1);
    assert_eq!((dataset.vocab_size(), dataset.tokenizer.eot_id()), (chars.len(), None));
    assert_eq!(dataset.train.tokens(0..dataset.train.len()), ids[..cut]);
    assert_eq!(dataset.tokenizer.decode(&dataset.val.tokens(0..dataset.val.len())).unwrap(), text[cut..]);
    // The loader reads it as it did: windows of the one shard, in the seeded order.
    let shard = TokenShard::open(&dir.join("train.bin"), "train").unwrap();
    let mut from_shard = Loader::new(&shard, 4, 16, 5, 0, 1).unwrap();
    let mut from_dataset = Loader::new(&dataset.train, 4, 16, 5, 0, 1).unwrap();
    assert_eq!(batches(&mut from_shard, 30), batches(&mut from_dataset, 30));
    // Its tokenizer, saved into a run, stays a version-1 char tokenizer (no end-of-text id).
    let run = tmp.join("run-tokenizer");
    std::fs::create_dir(&run).unwrap();
    dataset.tokenizer.save(&run).unwrap();
    let reloaded = rustspeed_data::Tokenizer::load(&run).unwrap();
    assert_eq!((reloaded.vocab_size(), reloaded.eot_id()), (chars.len(), None));
}
