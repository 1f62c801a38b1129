//! `prepare` and `Dataset::open` on one text file (one document): what is written (read back by an independent
//! parser of the documented layout), the split by tokens a single document falls back to, input and output
//! errors, atomic installation, and damaged directories. Many documents and other formats: `inputs.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{corpus, read_shard_by_spec, TempDir};
use rustspeed_data::{
    prepare as prepare_inputs, DataError, Dataset, PrepareOptions, PrepareReport, ShardProblem, SplitBy, Tokenizer,
    TokenizerSpec, ValSplit, EOT_TOKEN,
};
use serde_json::Value;

fn write_corpus(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.join("input.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// `prepare` of one input.
fn prepare(input: &Path, spec: &TokenizerSpec, out: &Path, opts: &PrepareOptions) -> Result<PrepareReport, DataError> {
    prepare_inputs(&[input.to_path_buf()], spec, out, opts)
}

fn prepare_default(input: &Path, spec: &TokenizerSpec, out: &Path) -> Result<PrepareReport, DataError> {
    prepare(input, spec, out, &PrepareOptions::default())
}

fn fraction(f: f64) -> PrepareOptions {
    PrepareOptions { val: ValSplit::Fraction(f), ..PrepareOptions::default() }
}

/// Names in `dir` starting with '.', i.e. staging or moved-aside directories that should not survive.
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect()
}

#[test]
fn char_prepare_writes_the_documented_files_and_splits_one_document_by_tokens() {
    let tmp = TempDir::new("prep-char");
    let text = corpus(2000, 10);
    let input = write_corpus(&tmp, &text);
    let out = tmp.join("data");
    let report = prepare_default(&input, &TokenizerSpec::Char, &out).unwrap();

    // One document: its characters, then the end-of-text token (the last id, after the sorted characters).
    let chars: Vec<char> = text.chars().collect();
    let distinct: Vec<char> = chars.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let eot = distinct.len() as u32;
    let mut stream: Vec<u32> = chars.iter().map(|c| distinct.binary_search(c).unwrap() as u32).collect();
    stream.push(eot);
    let n = stream.len();
    let expected_val = (n as f64 * 0.1).floor() as usize;
    assert_eq!(report.vocab_size, distinct.len() + 1);
    assert_eq!(report.bytes, text.len() as u64);
    assert_eq!((report.train_tokens, report.val_tokens), ((n - expected_val) as u64, expected_val as u64));
    assert_eq!((report.token_width, report.split_by), (2, SplitBy::Tokens));

    for name in ["tokenizer_meta.json", "train-000000.bin", "val-000000.bin", "meta.json"] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    // The shards, parsed by the test's own reader, are the stream's first and last parts.
    let (version, width, train) = read_shard_by_spec(&out.join("train-000000.bin"));
    let (_, _, val) = read_shard_by_spec(&out.join("val-000000.bin"));
    assert_eq!((version, width), (1, 2));
    assert_eq!(train, stream[..n - expected_val]);
    assert_eq!(val, stream[n - expected_val..]);

    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 2);
    assert_eq!(meta["tokenizer"]["kind"], "char");
    assert_eq!(meta["tokenizer"]["vocab_size"], report.vocab_size);
    assert_eq!(meta["tokenizer"]["eot"]["token"], EOT_TOKEN);
    assert_eq!(meta["tokenizer"]["eot"]["id"], eot);
    assert_eq!(meta["split"]["by"], "tokens");
    assert_eq!(meta["train"]["tokens"], report.train_tokens);
    assert_eq!(meta["train"]["shards"][0]["file"], "train-000000.bin");
    assert_eq!(meta["val"]["tokens"], report.val_tokens);
    assert_eq!(meta["source"]["inputs"][0], input.display().to_string());
    assert_eq!(meta["source"]["bytes"], text.len());
    assert_eq!(meta["source"]["documents"], 1);

    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.vocab_size(), report.vocab_size);
    assert_eq!(dataset.tokenizer.eot_id(), Some(eot));
    let mut all = dataset.train.tokens(0..dataset.train.len());
    all.extend(dataset.val.tokens(0..dataset.val.len()));
    assert_eq!(dataset.tokenizer.decode(&all).unwrap(), format!("{text}{EOT_TOKEN}"));
    assert!(hidden_entries(tmp.path()).is_empty(), "no staging directory left: {:?}", hidden_entries(tmp.path()));
}

#[test]
fn bpe_prepare_splits_the_token_stream_and_decodes_back_to_the_text() {
    let tmp = TempDir::new("prep-bpe");
    let text = corpus(3000, 11);
    let input = write_corpus(&tmp, &text);
    let out = tmp.join("data");
    let report = prepare(&input, &TokenizerSpec::Bpe { vocab_size: 300 }, &out, &fraction(0.25)).unwrap();
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.tokenizer.kind(), "bpe");
    assert_eq!(dataset.vocab_size(), 300);
    assert_eq!(dataset.tokenizer.eot_id(), Some(299), "the end-of-text token has the last id");
    let total = report.train_tokens + report.val_tokens;
    assert_eq!(report.val_tokens, (total as f64 * 0.25).floor() as u64);
    let mut all = dataset.train.tokens(0..dataset.train.len());
    all.extend(dataset.val.tokens(0..dataset.val.len()));
    let mut expected = dataset.tokenizer.encode(&text).unwrap();
    expected.push(299);
    assert_eq!(all, expected, "train ++ val is the document's tokens and the end-of-text token, in order");
    assert_eq!(dataset.tokenizer.decode(&all).unwrap(), format!("{text}{EOT_TOKEN}"));
}

#[test]
fn hf_json_prepare_copies_the_tokenizer_file() {
    let tmp = TempDir::new("prep-hf");
    let text = corpus(1500, 12);
    let trained_dir = tmp.join("trained");
    std::fs::create_dir(&trained_dir).unwrap();
    Tokenizer::train_bpe(&text, 300).unwrap().save(&trained_dir).unwrap();
    let source_json = trained_dir.join("tokenizer.json");
    let input = write_corpus(&tmp, &text);
    let out = tmp.join("data");
    prepare_default(&input, &TokenizerSpec::HfJson(source_json.clone()), &out).unwrap();
    assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), std::fs::read(&source_json).unwrap());
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.tokenizer.kind(), "hf");
    assert_eq!(dataset.vocab_size(), 300);
    assert_eq!(dataset.tokenizer.eot_token(), Some(EOT_TOKEN), "its own end-of-text token is found");
}

#[test]
fn zero_val_fraction_gives_an_empty_validation_split() {
    let tmp = TempDir::new("prep-noval");
    let input = write_corpus(&tmp, "abcabc");
    let out = tmp.join("data");
    let report = prepare(&input, &TokenizerSpec::Char, &out, &fraction(0.0)).unwrap();
    assert_eq!((report.val_tokens, report.val_shards, report.split_by), (0, 0, SplitBy::Documents));
    assert!(Dataset::open(&out).unwrap().val.is_empty());
}

#[test]
fn input_errors_name_the_path() {
    let tmp = TempDir::new("prep-input");
    let out = tmp.join("data");
    let missing = tmp.join("missing.txt");
    let err = prepare_default(&missing, &TokenizerSpec::Char, &out).unwrap_err();
    assert!(matches!(err, DataError::InputMissing { .. }) && err.to_string().contains("missing.txt"), "{err}");

    let empty = tmp.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = prepare_default(&empty, &TokenizerSpec::Char, &out).unwrap_err();
    assert!(matches!(err, DataError::InputEmpty { .. }) && err.to_string().contains("empty.txt"), "{err}");

    // "héllo" is 6 valid bytes (é is two), then 0xFF, which never occurs in UTF-8.
    let binary = tmp.join("binary.txt");
    std::fs::write(&binary, b"h\xc3\xa9llo\xffrest").unwrap();
    let err = prepare_default(&binary, &TokenizerSpec::Char, &out).unwrap_err();
    assert!(matches!(err, DataError::InputNotUtf8 { byte_offset: 6, .. }), "{err:?}");
    assert!(err.to_string().contains("binary.txt") && err.to_string().contains("byte offset 6"), "{err}");
    assert!(!out.exists(), "nothing is written for a bad input");
}

#[test]
fn invalid_val_fraction_is_rejected() {
    let tmp = TempDir::new("prep-frac");
    let input = write_corpus(&tmp, "some text");
    for bad in [1.0, -0.1, f64::NAN, 2.0] {
        let err = prepare(&input, &TokenizerSpec::Char, &tmp.join("data"), &fraction(bad)).unwrap_err();
        assert!(err.to_string().contains("val_fraction"), "{err}");
    }
}

#[test]
fn existing_output_is_replaced_only_with_overwrite_and_only_if_it_is_a_data_set() {
    let tmp = TempDir::new("prep-exists");
    let out = tmp.join("data");
    let first = write_corpus(&tmp, "aaaa bbbb");
    prepare_default(&first, &TokenizerSpec::Char, &out).unwrap();

    let second = tmp.join("second.txt");
    std::fs::write(&second, "xyz xyz xyz!").unwrap();
    let err = prepare_default(&second, &TokenizerSpec::Char, &out).unwrap_err();
    assert!(matches!(err, DataError::OutputExists { .. }), "{err:?}");
    assert!(err.to_string().contains("overwrite"), "{err}");
    assert_eq!(Dataset::open(&out).unwrap().vocab_size(), 4, "the old data set is untouched");

    let opts = PrepareOptions { overwrite: true, ..PrepareOptions::default() };
    prepare(&second, &TokenizerSpec::Char, &out, &opts).unwrap();
    assert_eq!(Dataset::open(&out).unwrap().vocab_size(), 6, "replaced: ' ', '!', 'x', 'y', 'z', <|endoftext|>");
    assert!(hidden_entries(tmp.path()).is_empty(), "no aside directory left: {:?}", hidden_entries(tmp.path()));

    // A non-empty directory that is not a data set is never deleted, overwrite or not.
    let precious = tmp.join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let err = prepare(&second, &TokenizerSpec::Char, &precious, &opts).unwrap_err();
    assert!(matches!(err, DataError::OutputNotDataset { .. }), "{err:?}");
    assert!(precious.join("notes.txt").is_file());

    // An existing empty directory is simply filled.
    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    prepare_default(&second, &TokenizerSpec::Char, &empty).unwrap();
    assert!(Dataset::open(&empty).is_ok());
}

/// Every file under `dir` with its bytes, sorted by path: a snapshot to compare before and after.
fn tree_snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() {
                files.push((path.clone(), std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()));
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// `path` (absolute) spelled relative to the current directory, with as many ".." as the current directory is
/// deep: a relative path without changing the process's current directory, which other tests share.
fn relative_to_cwd(path: &Path) -> std::path::PathBuf {
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    let mut relative = std::path::PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.join(path.canonicalize().unwrap().strip_prefix("/").unwrap())
}

#[test]
fn an_input_inside_the_output_directory_is_refused_and_survives() {
    let tmp = TempDir::new("prep-inside");
    let out = tmp.join("data");
    let first = write_corpus(&tmp, "aaaa bbbb");
    prepare_default(&first, &TokenizerSpec::Char, &out).unwrap();
    // The reported setup: the corpus kept in the prepared directory, prepared again into it with overwrite.
    let input = out.join("corpus.txt");
    let corpus_bytes = "the corpus, kept beside its data set\n".as_bytes();
    std::fs::write(&input, corpus_bytes).unwrap();
    let opts = PrepareOptions { overwrite: true, ..PrepareOptions::default() };
    let outside = tmp.join("outside.txt");
    std::fs::write(&outside, "a corpus elsewhere").unwrap();

    let mut attempts = vec![
        ("as given", input.clone(), out.clone()),
        ("with '..' in both paths", out.join("../data/corpus.txt"), tmp.join("data/../data")),
        ("relative", relative_to_cwd(&input), relative_to_cwd(&out)),
    ];
    #[cfg(unix)]
    {
        // A link outside the directory to the corpus inside it; a link inside it to a corpus outside (the link
        // itself would be deleted).
        let link_to_inside = tmp.join("link-to-corpus.txt");
        std::os::unix::fs::symlink(&input, &link_to_inside).unwrap();
        let link_inside = out.join("link-to-outside.txt");
        std::os::unix::fs::symlink(&outside, &link_inside).unwrap();
        attempts.push(("a link to it", link_to_inside, out.clone()));
        attempts.push(("a link inside", link_inside, out.clone()));
    }
    let before = tree_snapshot(tmp.path());
    for (how, input, out_arg) in attempts {
        let err = prepare(&input, &TokenizerSpec::Char, &out_arg, &opts).unwrap_err();
        assert!(matches!(err, DataError::InputInsideOutput { .. }), "{how}: {err:?}");
        let message = err.to_string();
        let named = |path: &Path| message.contains(&path.display().to_string());
        assert!(named(&input) && named(&out_arg), "{how}: the message names both paths: {message}");
        assert!(message.contains("move the input out") && message.contains("--out"), "{how}: {message}");
        assert_eq!(tree_snapshot(tmp.path()), before, "{how}: nothing is written, moved or deleted");
    }
    assert_eq!(std::fs::read(&input).unwrap(), corpus_bytes, "the input survives byte for byte");
    assert_eq!(Dataset::open(&out).unwrap().vocab_size(), 4, "the old data set is untouched");

    // The same corpus outside, and a sibling directory whose name merely starts with the output's, are fine.
    std::fs::create_dir(tmp.join("data2")).unwrap();
    std::fs::write(tmp.join("data2/corpus.txt"), corpus_bytes).unwrap();
    prepare(&tmp.join("data2/corpus.txt"), &TokenizerSpec::Char, &out, &opts).unwrap();
    assert_eq!(std::fs::read(tmp.join("data2/corpus.txt")).unwrap(), corpus_bytes);
}

#[test]
fn the_output_path_being_the_input_or_holding_the_inputs_is_refused() {
    let tmp = TempDir::new("prep-same");
    let input = write_corpus(&tmp, "some text");
    let err = prepare_default(&input, &TokenizerSpec::Char, &input).unwrap_err();
    assert!(matches!(err, DataError::InputInsideOutput { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "some text");

    // A directory of inputs as the output: its files would be deleted.
    let dir = tmp.join("texts");
    std::fs::create_dir(&dir).unwrap();
    let err = prepare_default(&dir, &TokenizerSpec::Char, &tmp.join("data")).unwrap_err();
    assert!(matches!(err, DataError::NoInputFiles { .. }) && err.to_string().contains("texts"), "{err}");
    std::fs::write(dir.join("a.txt"), "a text").unwrap();
    let err = prepare(&dir, &TokenizerSpec::Char, &dir, &PrepareOptions { overwrite: true, ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, DataError::InputInsideOutput { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "a text");
    // An output inside the input directory is fine once; preparing again would read the shards as inputs.
    prepare_default(&dir, &TokenizerSpec::Char, &dir.join("data")).unwrap();
    let again = PrepareOptions { overwrite: true, ..PrepareOptions::default() };
    let err = prepare(&dir, &TokenizerSpec::Char, &dir.join("data"), &again).unwrap_err();
    assert!(matches!(err, DataError::InputInsideOutput { .. }), "{err:?}");
}

/// Prepares a small char data set in `tmp/data` and returns its directory.
fn small_dataset(tmp: &TempDir) -> std::path::PathBuf {
    let input = write_corpus(tmp, &corpus(500, 13));
    let out = tmp.join("data");
    prepare_default(&input, &TokenizerSpec::Char, &out).unwrap();
    out
}

#[test]
fn a_directory_without_meta_json_is_not_accepted() {
    // An interrupted prepare never installs a directory; a copy missing its last-written file stands for one.
    let tmp = TempDir::new("open-nometa");
    let out = small_dataset(&tmp);
    std::fs::remove_file(out.join("meta.json")).unwrap();
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("not a prepared data set") && err.contains("meta.json"), "{err}");
}

fn patch_file(path: &Path, offset: usize, bytes: &[u8]) {
    let mut content = std::fs::read(path).unwrap();
    content[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, content).unwrap();
}

fn shard_problem(dir: &Path) -> ShardProblem {
    match Dataset::open(dir).unwrap_err() {
        DataError::BadShard { problem, .. } => problem,
        other => panic!("expected a shard problem, got {other}"),
    }
}

#[test]
fn damaged_shards_are_reported_with_what_is_wrong() {
    let tmp = TempDir::new("open-damaged");
    let out = small_dataset(&tmp);
    let train = out.join("train-000000.bin");
    let pristine = std::fs::read(&train).unwrap();
    let restore = || std::fs::write(&train, &pristine).unwrap();

    std::fs::write(&train, &pristine[..pristine.len() - 3]).unwrap();
    let problem = shard_problem(&out);
    assert!(matches!(problem, ShardProblem::SizeMismatch { .. }), "{problem:?}");
    assert!(problem.to_string().contains("truncated"), "{problem}");
    let message = Dataset::open(&out).unwrap_err().to_string();
    assert!(message.contains("train-000000.bin"), "{message}");

    std::fs::write(&train, &pristine[..10]).unwrap();
    assert!(matches!(shard_problem(&out), ShardProblem::ShorterThanHeader { bytes: 10, .. }));

    restore();
    patch_file(&train, 0, b"XX");
    assert_eq!(shard_problem(&out), ShardProblem::BadMagic);

    restore();
    patch_file(&train, 8, &7u32.to_le_bytes());
    assert_eq!(shard_problem(&out), ShardProblem::UnsupportedVersion { found: 7, supported: 1 });

    restore();
    patch_file(&train, 12, &3u32.to_le_bytes());
    assert_eq!(shard_problem(&out), ShardProblem::BadTokenWidth { width: 3 });

    // One token changed to another valid id: only the checksum can tell.
    restore();
    let id = u16::from_le_bytes([pristine[40], pristine[41]]);
    patch_file(&train, 40, &(id ^ 1).to_le_bytes());
    assert!(matches!(shard_problem(&out), ShardProblem::ChecksumMismatch { .. }));
    restore();
    assert!(Dataset::open(&out).is_ok());
}

#[test]
fn a_token_outside_the_vocabulary_is_found_even_with_a_matching_checksum() {
    let tmp = TempDir::new("open-oov");
    let out = small_dataset(&tmp);
    let train = out.join("train-000000.bin");
    // Token 5 becomes 0xFFFF; meta.json gets the new checksum so that only the vocabulary check can object.
    patch_file(&train, 32 + 2 * 5, &0xFFFFu16.to_le_bytes());
    let data = std::fs::read(&train).unwrap();
    let checksum = format!("mix64-words:{:016x}", rustspeed_data::shard::checksum(&data[32..]));
    let meta_path = out.join("meta.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["train"]["shards"][0]["checksum"] = Value::String(checksum);
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(matches!(err, DataError::TokenOutOfVocab { position: 5, id: 0xFFFF, .. }), "{err:?}");
}

#[test]
fn meta_json_disagreements_are_reported() {
    let tmp = TempDir::new("open-meta");
    let out = small_dataset(&tmp);
    let meta_path = out.join("meta.json");
    let pristine: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let write = |meta: &Value| std::fs::write(&meta_path, meta.to_string()).unwrap();

    let mut meta = pristine.clone();
    meta["tokenizer"]["vocab_size"] = Value::from(9999);
    write(&meta);
    let err = Dataset::open(&out).unwrap_err();
    assert!(matches!(err, DataError::VocabMismatch { meta_vocab: 9999, .. }), "{err:?}");

    let mut meta = pristine.clone();
    meta["train"]["tokens"] = Value::from(3);
    meta["train"]["shards"][0]["tokens"] = Value::from(3);
    write(&meta);
    assert!(matches!(shard_problem(&out), ShardProblem::CountMismatch { meta_tokens: 3, .. }));

    let mut meta = pristine.clone();
    meta["train"]["tokens"] = Value::from(3);
    write(&meta);
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("\"train.tokens\" is 3, but its shards hold"), "{err}");

    let mut meta = pristine.clone();
    meta["format_version"] = Value::from(3);
    write(&meta);
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("format_version") && err.contains('3') && err.contains("prepare the data again"), "{err}");

    let mut meta = pristine.clone();
    meta["val"]["shards"][0].as_object_mut().unwrap().remove("checksum");
    write(&meta);
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("val.shards[0].checksum") && err.contains("missing"), "{err}");

    // A shard named by a path could read a file outside the data directory.
    let mut meta = pristine.clone();
    meta["train"]["shards"][0]["file"] = Value::from("../outside.bin");
    write(&meta);
    let err = Dataset::open(&out).unwrap_err().to_string();
    assert!(err.contains("not a file name inside the data directory"), "{err}");
}

#[test]
fn checksum_changes_with_every_bit_and_with_length() {
    let data: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(73)).collect();
    let base = rustspeed_data::shard::checksum(&data);
    for byte in 0..data.len() {
        for bit in 0..8 {
            let mut flipped = data.clone();
            flipped[byte] ^= 1 << bit;
            assert_ne!(rustspeed_data::shard::checksum(&flipped), base, "byte {byte} bit {bit}");
        }
    }
    let mut longer = data.clone();
    longer.push(0);
    assert_ne!(rustspeed_data::shard::checksum(&longer), base, "a trailing zero byte is noticed");
}

/// One document cannot be split by documents: its stream is split by tokens, whichever split the document fell
/// into (seeds vary that), and the tail moved into the validation split may span several shards of either.
#[test]
fn a_single_document_is_split_by_tokens_across_small_shards() {
    let tmp = TempDir::new("prep-tail");
    let text = corpus(400, 14);
    let input = write_corpus(&tmp, &text);
    let tokenizer = Tokenizer::char_from_corpus(&text);
    let mut stream = tokenizer.encode(&text).unwrap();
    stream.push(tokenizer.eot_id().unwrap());
    for seed in 0..8 {
        for shard_tokens in [97, 1000, 1 << 20] {
            let out = tmp.join(&format!("data-{seed}-{shard_tokens}"));
            let opts = PrepareOptions { val: ValSplit::Fraction(0.5), seed, shard_tokens, ..PrepareOptions::default() };
            let report = prepare(&input, &TokenizerSpec::Char, &out, &opts).unwrap();
            let cut = stream.len() - stream.len() / 2;
            assert_eq!(report.split_by, SplitBy::Tokens);
            assert_eq!((report.train_tokens, report.val_tokens), (cut as u64, (stream.len() - cut) as u64));
            assert_eq!(report.train_shards, cut.div_ceil(shard_tokens as usize));
            let dataset = Dataset::open(&out).unwrap();
            assert_eq!(dataset.train.tokens(0..dataset.train.len()), stream[..cut], "seed {seed}, {shard_tokens}");
            assert_eq!(dataset.val.tokens(0..dataset.val.len()), stream[cut..], "seed {seed}, {shard_tokens}");
            let names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let shards = names.iter().filter(|n| n.ends_with(".bin")).count();
            assert_eq!(shards, report.train_shards + report.val_shards, "no shard file left over: {names:?}");
        }
    }
}
