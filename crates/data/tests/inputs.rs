//! `prepare` on every input form — text files (one document each, or blank-line blocks), JSON Lines with a nested
//! field, Parquet (flat and nested columns), gzip and zstd, a directory, a glob pattern, several inputs — against
//! an independent oracle: the documents the test generated, each encoded alone by the `tokenizers` library (or,
//! for the char tokenizer, by the test's own table), joined with the end-of-text token. Also the tokenizer-training
//! sample, the split by documents, and bad records.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields};
use common::{read_shard_by_spec, TempDir};
use rustspeed_data::{
    prepare, DataError, Dataset, InputFormat, PrepareOptions, PrepareReport, SplitBy, Tokenizer, TokenizerSpec,
    ValSplit, EOT_TOKEN,
};
use rustspeed_kernels::rng::Rng;

const WORDS: &[&str] = &[
    "the",
    "king",
    "queen",
    "shall",
    "speak",
    "and",
    "thou",
    "art",
    "my",
    "lord",
    "café",
    "naïve",
    "\"quoted\"",
    "back\\slash",
    "tab\there",
    "news",
    "from",
    "rome",
    "good",
    "night",
    "—",
    "42",
    "don't",
    "…",
];

/// `n` documents of 1 to 4 lines of 3 to 12 words, no blank line and no surrounding whitespace (so that blank-line
/// blocks give them back exactly).
fn documents(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let lines = 1 + rng.below(4);
            let line = |rng: &mut Rng| {
                let words = 3 + rng.below(10);
                (0..words).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
            };
            (0..lines).map(|_| line(&mut rng)).collect::<Vec<_>>().join("\n")
        })
        .collect()
}

/// A document larger than the pieces `prepare` cuts long documents into (1 MiB), so that it is cut twice.
fn long_document() -> String {
    let doc = documents(30_000, 99).join("\n");
    assert!(doc.len() > 2 << 20, "{} bytes", doc.len());
    doc
}

/// The documents joined as the issue defines the stream: each one's ids, then the end-of-text token.
fn oracle(docs: &[String], encode: impl Fn(&str) -> Vec<u32>, eot: u32) -> Vec<u32> {
    let mut stream = Vec::new();
    for doc in docs.iter().filter(|doc| !doc.is_empty()) {
        stream.extend(encode(doc));
        stream.push(eot);
    }
    stream
}

/// A byte-level BPE `tokenizer.json` trained on other text, and the `tokenizers` library's own encoder of it.
struct Bpe {
    path: PathBuf,
    library: tokenizers::Tokenizer,
    eot: u32,
}

fn bpe(dir: &TempDir) -> Bpe {
    let trained = Tokenizer::train_bpe(&documents(300, 1).join("\n"), 400).unwrap();
    let saved = dir.join("bpe");
    std::fs::create_dir(&saved).unwrap();
    trained.save(&saved).unwrap();
    let path = saved.join("tokenizer.json");
    let library = tokenizers::Tokenizer::from_file(&path).unwrap();
    Bpe { eot: library.token_to_id(EOT_TOKEN).unwrap(), path, library }
}

impl Bpe {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.library.encode_fast(text, false).unwrap().get_ids().to_vec()
    }

    fn oracle(&self, docs: &[String]) -> Vec<u32> {
        oracle(docs, |doc| self.encode(doc), self.eot)
    }

    fn spec(&self) -> TokenizerSpec {
        TokenizerSpec::HfJson(self.path.clone())
    }
}

/// Everything in one split: the oracle stream is then the training split.
fn no_val() -> PrepareOptions {
    PrepareOptions { val: ValSplit::Fraction(0.0), ..PrepareOptions::default() }
}

/// The training split's tokens, read shard by shard with the test's own reader in `meta.json`'s order.
fn train_stream(out: &Path) -> Vec<u32> {
    let dataset = Dataset::open(out).unwrap();
    let mut stream = Vec::new();
    for shard in dataset.train.shards() {
        stream.extend(read_shard_by_spec(shard.path()).2);
    }
    assert_eq!(stream, dataset.train.tokens(0..dataset.train.len()), "the split reads as its shards concatenated");
    stream
}

fn run(inputs: &[PathBuf], spec: &TokenizerSpec, out: &Path, opts: &PrepareOptions) -> PrepareReport {
    prepare(inputs, spec, out, opts).unwrap_or_else(|e| panic!("prepare {inputs:?}: {e}"))
}

fn write_jsonl(path: &Path, docs: &[String], field: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut value = serde_json::Value::String(doc.clone());
        for key in field.iter().rev() {
            value = serde_json::json!({ *key: value });
        }
        value.as_object_mut().unwrap().insert("id".to_string(), i.into());
        writeln!(bytes, "{value}").unwrap();
        if i % 17 == 0 {
            bytes.extend_from_slice(b"  \n"); // blank lines are no records
        }
    }
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(40))
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn text_files_one_document_each_from_a_directory_with_a_long_document_cut_in_pieces() {
    let tmp = TempDir::new("in-text-dir");
    let bpe = bpe(&tmp);
    let dir = tmp.join("texts");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut docs = documents(30, 2);
    docs[3] = format!("{}\n", docs[3]); // a trailing newline belongs to the document
    docs[7] = long_document();
    docs[9] = String::new(); // an empty file: an empty document, skipped
                             // Names sort in document order; one in a subdirectory (walked in name order: "doc-15" < "sub" < ...).
    let mut paths = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let name = if i == 16 { "sub/inner.txt".to_string() } else { format!("doc-{i:02}.txt") };
        paths.push((name, doc.clone()));
    }
    paths.sort();
    for (name, doc) in &paths {
        std::fs::write(dir.join(name), doc).unwrap();
    }
    std::fs::write(dir.join(".hidden.txt"), "never read").unwrap();
    let ordered: Vec<String> = paths.into_iter().map(|(_, doc)| doc).collect();

    let out = tmp.join("bpe-data");
    let report = run(std::slice::from_ref(&dir), &bpe.spec(), &out, &no_val());
    assert_eq!(train_stream(&out), bpe.oracle(&ordered));
    assert_eq!((report.files, report.empty_documents, report.train_documents), (30, 1, 29));

    // The char tokenizer: its vocabulary is every character of the corpus (a first pass), then the token.
    let out = tmp.join("char-data");
    let report = run(&[dir], &TokenizerSpec::Char, &out, &no_val());
    let chars: Vec<char> = ordered.iter().flat_map(|doc| doc.chars()).collect::<BTreeSet<_>>().into_iter().collect();
    let encode = |doc: &str| doc.chars().map(|c| chars.binary_search(&c).unwrap() as u32).collect();
    assert_eq!(train_stream(&out), oracle(&ordered, encode, chars.len() as u32));
    assert_eq!(report.vocab_size, chars.len() + 1);
}

#[test]
fn text_split_at_blank_lines_gives_one_document_per_block() {
    let tmp = TempDir::new("in-blocks");
    let bpe = bpe(&tmp);
    let docs = documents(60, 3);
    // Separators: one blank line, several, whitespace-only ones; CRLF line ends in one block.
    let mut text = String::from("\n \n");
    let mut expected = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let doc = if i == 5 { doc.replace('\n', "\r\n") } else { doc.clone() };
        text.push_str(&doc);
        text.push_str(["\n\n", "\n\n\n", "\n \t\n", "\r\n\r\n"][i % 4]);
        expected.push(doc);
    }
    let input = tmp.join("blocks.txt");
    std::fs::write(&input, &text).unwrap();
    let out = tmp.join("data");
    let opts = PrepareOptions { split_blank_lines: true, ..no_val() };
    let report = run(&[input], &bpe.spec(), &out, &opts);
    assert_eq!(report.train_documents, 60);
    assert_eq!(train_stream(&out), bpe.oracle(&expected));
}

#[test]
fn json_lines_with_a_nested_field_plain_gzip_and_zstd() {
    let tmp = TempDir::new("in-jsonl");
    let bpe = bpe(&tmp);
    let mut docs = documents(200, 4);
    docs[10] = String::new();
    let plain = tmp.join("docs.jsonl");
    let bytes = write_jsonl(&plain, &docs, &["meta", "body"]);
    let gz = tmp.join("docs.jsonl.gz");
    // Two gzip members, as `cat a.gz b.gz` makes: both are read.
    let half = bytes.iter().enumerate().filter(|&(_, &b)| b == b'\n').nth(50).unwrap().0 + 1;
    std::fs::write(&gz, [gzip(&bytes[..half]), gzip(&bytes[half..])].concat()).unwrap();
    let zst = tmp.join("docs.ndjson.zst");
    std::fs::write(&zst, zstd(&bytes)).unwrap();
    // A compressed file without a telling name: the magic bytes say what it is.
    let nameless = tmp.join("docs-zstd");
    std::fs::write(&nameless, zstd(&bytes)).unwrap();
    let expected = bpe.oracle(&docs);
    let opts = PrepareOptions { text_field: "meta.body".to_string(), ..no_val() };
    for (i, input) in [plain, gz, zst].into_iter().enumerate() {
        let out = tmp.join(&format!("data-{i}"));
        let report = run(std::slice::from_ref(&input), &bpe.spec(), &out, &opts);
        assert_eq!(train_stream(&out), expected, "{}", input.display());
        assert_eq!((report.train_documents, report.empty_documents), (199, 1));
    }
    let opts = PrepareOptions { format: Some(InputFormat::Jsonl), ..opts };
    let out = tmp.join("data-nameless");
    run(&[nameless], &bpe.spec(), &out, &opts);
    assert_eq!(train_stream(&out), expected);
}

#[test]
fn parquet_flat_and_nested_columns() {
    let tmp = TempDir::new("in-parquet");
    let bpe = bpe(&tmp);
    let docs = documents(150, 5);
    let flat = tmp.join("flat.parquet");
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..docs.len() as i64));
    write_parquet(&flat, vec![("id", ids.clone()), ("text", Arc::new(StringArray::from(docs.clone())) as ArrayRef)]);
    let out = tmp.join("flat-data");
    run(&[flat], &bpe.spec(), &out, &no_val());
    assert_eq!(train_stream(&out), bpe.oracle(&docs));

    // meta.body inside a struct column.
    let body = Arc::new(StringArray::from(docs.clone())) as ArrayRef;
    let fields = Fields::from(vec![Field::new("body", DataType::Utf8, true)]);
    let meta = Arc::new(StructArray::new(fields, vec![body], None)) as ArrayRef;
    let nested = tmp.join("nested.parquet");
    write_parquet(&nested, vec![("meta", meta), ("id", ids)]);
    let out = tmp.join("nested-data");
    run(&[nested], &bpe.spec(), &out, &PrepareOptions { text_field: "meta.body".to_string(), ..no_val() });
    assert_eq!(train_stream(&out), bpe.oracle(&docs));
}

#[test]
fn glob_patterns_and_several_inputs_keep_their_order() {
    let tmp = TempDir::new("in-glob");
    let bpe = bpe(&tmp);
    let docs = documents(90, 6);
    let parts = tmp.join("parts");
    std::fs::create_dir(&parts).unwrap();
    // Written out of order; the pattern's matches are read sorted.
    for part in [2, 0, 1] {
        write_jsonl(&parts.join(format!("part-{part}.jsonl")), &docs[part * 30..(part + 1) * 30], &["text"]);
    }
    std::fs::write(parts.join("notes.md"), "not matched").unwrap();
    let extra = tmp.join("extra.txt");
    std::fs::write(&extra, "an extra document").unwrap();
    let pattern = parts.join("part-*.jsonl");
    let out = tmp.join("data");
    // The text file first, then the pattern; the pattern again adds nothing (each file is read once).
    let report = run(&[extra, pattern.clone(), pattern], &bpe.spec(), &out, &no_val());
    let mut expected = vec!["an extra document".to_string()];
    expected.extend(docs);
    assert_eq!(train_stream(&out), bpe.oracle(&expected));
    assert_eq!(report.files, 4);
}

#[test]
fn bpe_is_trained_on_a_bounded_sample_of_each_file() {
    let tmp = TempDir::new("in-sample");
    let docs = documents(400, 7);
    let input = tmp.join("docs.jsonl");
    write_jsonl(&input, &docs, &["text"]);
    let trained_json = |out: &Path| std::fs::read_to_string(out.join("tokenizer.json")).unwrap();
    let reference = |texts: Vec<String>| {
        let dir = TempDir::new("in-sample-ref");
        Tokenizer::train_bpe_on_texts(texts.into_iter(), 500).unwrap().save(dir.path()).unwrap();
        std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()
    };
    let spec = TokenizerSpec::Bpe { vocab_size: 500 };

    // A sample as large as the corpus: every document.
    let out = tmp.join("all");
    run(std::slice::from_ref(&input), &spec, &out, &PrepareOptions { bpe_sample_bytes: 1 << 30, ..no_val() });
    assert_eq!(trained_json(&out), reference(docs.clone()));

    // A sample of 5000 bytes: the lines (blank ones are no records) up to the one that reaches it.
    let out = tmp.join("sample");
    run(std::slice::from_ref(&input), &spec, &out, &PrepareOptions { bpe_sample_bytes: 5000, ..no_val() });
    let mut taken = Vec::new();
    let mut bytes = 0;
    for line in std::fs::read_to_string(&input).unwrap().split_inclusive('\n').filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        taken.push(value["text"].as_str().unwrap().to_string());
        bytes += line.len();
        if bytes >= 5000 {
            break;
        }
    }
    assert!(taken.len() < docs.len() / 4, "{} documents", taken.len());
    assert_eq!(trained_json(&out), reference(taken));
    // Whatever the sample, the whole corpus is tokenized with what was learned.
    let dataset = Dataset::open(&out).unwrap();
    let tokenizer = &dataset.tokenizer;
    let eot = tokenizer.eot_id().unwrap();
    assert_eq!(train_stream(&out), oracle(&docs, |doc| tokenizer.encode(doc).unwrap(), eot));
}

/// The documents of a split, cut at the end-of-text token, decoded.
fn split_documents(tokenizer: &Tokenizer, tokens: &[u32]) -> Vec<String> {
    let eot = tokenizer.eot_id().unwrap();
    let mut docs: Vec<String> = tokens.split(|&t| t == eot).map(|ids| tokenizer.decode(ids).unwrap()).collect();
    assert_eq!(docs.pop().as_deref(), Some(""), "a split ends with the end-of-text token");
    docs
}

#[test]
fn the_validation_split_takes_whole_documents_by_seed() {
    let tmp = TempDir::new("in-val");
    let bpe = bpe(&tmp);
    let docs: Vec<String> = documents(1000, 8).into_iter().enumerate().map(|(i, d)| format!("{i}: {d}")).collect();
    let input = tmp.join("docs.jsonl");
    write_jsonl(&input, &docs, &["text"]);
    let split = |name: &str, opts: PrepareOptions| {
        let out = tmp.join(name);
        let report = run(std::slice::from_ref(&input), &bpe.spec(), &out, &opts);
        let dataset = Dataset::open(&out).unwrap();
        let train = split_documents(&dataset.tokenizer, &dataset.train.tokens(0..dataset.train.len()));
        let val = split_documents(&dataset.tokenizer, &dataset.val.tokens(0..dataset.val.len()));
        assert_eq!(report.split_by, SplitBy::Documents);
        assert_eq!((report.train_documents, report.val_documents), (train.len() as u64, val.len() as u64));
        // Whole documents, each in one split, in corpus order within each.
        let mut merged: Vec<&String> = train.iter().chain(&val).collect();
        merged.sort_by_key(|doc| doc.split(':').next().unwrap().parse::<usize>().unwrap());
        assert_eq!(merged, docs.iter().collect::<Vec<_>>());
        (train, val)
    };
    let (_, val) = split("f1", PrepareOptions { val: ValSplit::Fraction(0.2), seed: 1, ..PrepareOptions::default() });
    assert!((150..250).contains(&val.len()), "about a fifth: {}", val.len());
    let (_, again) = split("f2", PrepareOptions { val: ValSplit::Fraction(0.2), seed: 1, ..PrepareOptions::default() });
    assert_eq!(val, again, "the same seed, the same documents");
    let (_, other) = split("f3", PrepareOptions { val: ValSplit::Fraction(0.2), seed: 2, ..PrepareOptions::default() });
    assert_ne!(val, other, "another seed, other documents");
    let (_, exact) = split("n1", PrepareOptions { val: ValSplit::Documents(37), ..PrepareOptions::default() });
    assert_eq!(exact.len(), 37);

    let err = prepare(
        &[input],
        &bpe.spec(),
        &tmp.join("n2"),
        &PrepareOptions { val: ValSplit::Documents(1000), ..PrepareOptions::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("val_docs") && err.to_string().contains("1000 documents"), "{err}");
}

#[test]
fn bad_records_name_the_file_and_line_or_are_skipped_and_counted() {
    let tmp = TempDir::new("in-bad");
    let bpe = bpe(&tmp);
    let docs = documents(20, 9);
    let input = tmp.join("docs.jsonl");
    let mut bytes = write_jsonl(&input, &docs, &["text"]);
    // write_jsonl puts a blank line after line 1 (i = 0): the records below are on lines 23, 24, 25, 26.
    bytes.extend_from_slice(b"{\"title\": \"no text\"}\n{\"text\": 42}\n{broken json\n{\"text\": null}\n");
    std::fs::write(&input, &bytes).unwrap();
    let out = tmp.join("data");
    let err = prepare(std::slice::from_ref(&input), &bpe.spec(), &out, &no_val()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::BadRecord { line: 23, .. }), "{err:?}");
    assert!(
        message.contains("docs.jsonl") && message.contains("line 23") && message.contains("no field \"text\""),
        "{message}"
    );
    assert!(message.contains("--skip-bad-lines"), "{message}");
    assert!(!out.exists(), "nothing installed");

    let report = run(&[input], &bpe.spec(), &out, &PrepareOptions { skip_bad_lines: true, ..no_val() });
    assert_eq!((report.skipped_records, report.train_documents), (4, 20));
    assert_eq!(train_stream(&out), bpe.oracle(&docs));

    // Each kind of bad line, alone: the message says what is wrong.
    for (line, expected) in [
        ("{\"text\": 42}", "is a number, not a string"),
        ("{broken", "not valid JSON"),
        ("[1, 2]", "is an array, not an object"),
    ] {
        let input = tmp.join("one.jsonl");
        std::fs::write(&input, format!("{{\"text\": \"fine\"}}\n{line}\n")).unwrap();
        let err = prepare(&[input], &bpe.spec(), &tmp.join("x"), &no_val()).unwrap_err().to_string();
        assert!(err.contains("one.jsonl: line 2: ") && err.contains(expected), "{err}");
    }

    // A null Parquet value names its row.
    let path = tmp.join("nulls.parquet");
    write_parquet(&path, vec![("text", Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef)]);
    let err = prepare(&[path], &bpe.spec(), &tmp.join("y"), &no_val()).unwrap_err().to_string();
    assert!(err.contains("nulls.parquet: row 2: the text is null"), "{err}");
}

#[test]
fn unreadable_and_corrupt_inputs_name_the_file() {
    let tmp = TempDir::new("in-corrupt");
    let bpe = bpe(&tmp);
    let docs = documents(400, 10);
    let bytes = write_jsonl(&tmp.join("docs.jsonl"), &docs, &["text"]);
    let message =
        |input: PathBuf| prepare(&[input], &bpe.spec(), &tmp.join("data"), &no_val()).unwrap_err().to_string();

    let err = message(tmp.join("missing.jsonl"));
    assert!(err.contains("missing.jsonl") && err.contains("does not exist"), "{err}");
    let err = message(tmp.join("nothing-*.jsonl"));
    assert!(err.contains("nothing-*.jsonl") && err.contains("holds no file"), "{err}");

    let compressed = gzip(&bytes);
    let truncated = tmp.join("truncated.jsonl.gz");
    std::fs::write(&truncated, &compressed[..compressed.len() / 2]).unwrap();
    let err = message(truncated);
    assert!(err.contains("truncated.jsonl.gz") && err.contains("gzip"), "{err}");

    let mut damaged = zstd(&bytes);
    let middle = damaged.len() / 2;
    damaged[middle..middle + 8].copy_from_slice(b"garbage!");
    let path = tmp.join("damaged.jsonl.zst");
    std::fs::write(&path, damaged).unwrap();
    let err = message(path);
    assert!(err.contains("damaged.jsonl.zst") && err.contains("zstd"), "{err}");

    let misnamed = tmp.join("plain.jsonl.gz");
    std::fs::write(&misnamed, &bytes).unwrap();
    let err = message(misnamed);
    assert!(err.contains("plain.jsonl.gz") && err.contains("not gzip"), "{err}");

    let fake = tmp.join("fake.parquet");
    std::fs::write(&fake, b"PAR1 this is not a parquet file").unwrap();
    let err = message(fake);
    assert!(err.contains("fake.parquet") && err.contains("Parquet"), "{err}");
    let good = tmp.join("good.parquet");
    write_parquet(&good, vec![("body", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef)]);
    let err = message(good.clone());
    assert!(err.contains("good.parquet") && err.contains("no column \"text\"") && err.contains("body"), "{err}");
    let full = std::fs::read(&good).unwrap();
    let cut = tmp.join("cut.parquet");
    std::fs::write(&cut, &full[..full.len() - 20]).unwrap();
    let err = message(cut);
    assert!(err.contains("cut.parquet") && err.contains("Parquet"), "{err}");

    // Not UTF-8, inside a directory: the file and the offset.
    let dir = tmp.join("texts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "fine").unwrap();
    std::fs::write(dir.join("b.txt"), b"ok \xff bad").unwrap();
    let err = message(dir);
    assert!(err.contains("b.txt") && err.contains("UTF-8") && err.contains("byte offset 3"), "{err}");
}

/// A text bigger than the chunks and pieces, one file of many documents: documents, shards and the stream agree
/// for every tokenizer kind.
#[test]
fn a_large_corpus_streams_through_small_shards() {
    let tmp = TempDir::new("in-large");
    let bpe = bpe(&tmp);
    let docs = documents(75_000, 11);
    let input = tmp.join("big.jsonl.zst");
    let mut bytes = Vec::new();
    for doc in &docs {
        writeln!(bytes, "{}", serde_json::json!({ "text": doc })).unwrap();
    }
    assert!(bytes.len() > 8 << 20, "more than a chunk of records (8 MiB): {} bytes", bytes.len());
    std::fs::write(&input, zstd(&bytes)).unwrap();
    let out = tmp.join("data");
    let report = run(&[input], &bpe.spec(), &out, &PrepareOptions { shard_tokens: 250_000, ..no_val() });
    let expected = bpe.oracle(&docs);
    assert_eq!(report.train_shards, expected.len().div_ceil(250_000));
    assert_eq!(train_stream(&out), expected);
}
