//! The passes over the inputs that come before tokenizing: the survey (the character set of the corpus, for the
//! char vocabulary, and the number of documents, for an exact `val_docs` sample) and the tokenizer-training
//! sample (a bounded share of every file, for byte-level BPE). Each reads through [`for_each_chunk`], so memory
//! stays a few chunks whatever the corpus size.

use std::collections::BTreeSet;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use rayon::prelude::*;

use crate::documents::{ReadOptions, Record, RecordBody};
use crate::error::DataError;
use crate::input::{ByteCounter, InputFile};
use crate::progress::StreamProgress;
use crate::stream::{for_each_chunk, record_text, Budget, Chunk};
use crate::tokenizer::Tokenizer;

/// Chunks of sample texts waiting for the BPE trainer: the reader stays one step ahead.
const SAMPLE_CHUNKS_AHEAD: usize = 2;

/// Tracks document boundaries across records, the same way in every pass, so that "document i" means the same
/// document in the survey and in the tokenizing pass: a document is counted at its first record with text; an
/// empty document is counted apart; a bad record holds no document.
#[derive(Debug, Default)]
pub(crate) struct DocumentCounter {
    /// Whether the previous record ended its document (true before the first record).
    in_document: bool,
    pub documents: u64,
    pub empty: u64,
    pub skipped: u64,
}

/// What a record is to the document count.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The first record of a new document: its index.
    Starts(u64),
    /// A later piece of the current document.
    Continues,
    /// An empty document, or a bad record skipped.
    Nothing,
}

impl DocumentCounter {
    /// Accounts for `record`, whose text is `Ok(true)` non-empty, `Ok(false)` empty, or `Err(why)` missing.
    /// A bad record is an error naming its file and line, unless `skip_bad` (then it is counted).
    pub(crate) fn step(
        &mut self,
        record: &Record,
        has_text: Result<bool, &str>,
        files: &[InputFile],
        skip_bad: bool,
    ) -> Result<Step, DataError> {
        let step = match has_text {
            Err(_) if skip_bad => {
                self.skipped += 1;
                Step::Nothing
            }
            Err(problem) => {
                let file = &files[record.file];
                let unit = if file.format == crate::input::InputFormat::Parquet { "row" } else { "line" };
                return Err(DataError::BadRecord {
                    path: file.path.clone(),
                    line: record.line,
                    unit,
                    problem: problem.to_string(),
                });
            }
            Ok(_) if self.in_document => Step::Continues,
            Ok(false) => {
                self.empty += 1;
                Step::Nothing
            }
            Ok(true) => {
                self.documents += 1;
                Step::Starts(self.documents - 1)
            }
        };
        self.in_document = matches!(step, Step::Starts(_) | Step::Continues) && !record.ends_doc;
        Ok(step)
    }
}

/// What the survey found.
#[derive(Debug)]
pub(crate) struct Survey {
    /// The corpus's characters, when asked for.
    pub chars: Option<BTreeSet<char>>,
    pub documents: DocumentCounter,
}

/// Unicode scalar values as bits: a set of the corpus's characters whose update costs a shift and an or.
struct CharBits(Vec<u64>);

impl CharBits {
    const WORDS: usize = (char::MAX as usize + 1).div_ceil(64);

    fn new() -> CharBits {
        CharBits(vec![0; CharBits::WORDS])
    }

    fn add(&mut self, text: &str) {
        for ch in text.chars() {
            let code = ch as usize;
            self.0[code / 64] |= 1 << (code % 64);
        }
    }

    fn union(mut self, other: CharBits) -> CharBits {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a |= b);
        self
    }

    fn chars(&self) -> BTreeSet<char> {
        let bits = self.0.iter().enumerate().flat_map(|(word, &bits)| {
            (0..64).filter(move |bit| bits & (1 << bit) != 0).map(move |bit| word * 64 + bit)
        });
        bits.filter_map(|code| char::from_u32(code as u32)).collect()
    }
}

/// One pass over all records: the documents are counted, and with `want_chars` their characters collected.
pub(crate) fn survey(
    files: &[InputFile],
    opts: &ReadOptions,
    skip_bad: bool,
    want_chars: bool,
    progress: &StreamProgress,
) -> Result<Survey, DataError> {
    let counter = Arc::new(ByteCounter::default());
    let mut documents = DocumentCounter::default();
    let mut chars = CharBits::new();
    for_each_chunk(files, opts, &Budget::All, &counter, |chunk: Chunk| {
        // Extracting texts (JSON parsing) and collecting characters run on all cores; counting is in order.
        let texts: Vec<Result<Option<std::borrow::Cow<str>>, String>> =
            chunk.records.par_iter().map(|record| record_text(&record.body, opts)).collect();
        if want_chars {
            let found = texts
                .par_iter()
                .fold(CharBits::new, |mut bits, text| {
                    if let Ok(Some(text)) = text {
                        bits.add(text);
                    }
                    bits
                })
                .reduce(CharBits::new, CharBits::union);
            chars = std::mem::replace(&mut chars, CharBits(Vec::new())).union(found);
        }
        for (record, text) in chunk.records.iter().zip(&texts) {
            let has_text = text.as_ref().map(Option::is_some).map_err(String::as_str);
            documents.step(record, has_text, files, skip_bad)?;
        }
        progress.update(chunk.read_bytes, documents.documents, None);
        Ok(true)
    })?;
    progress.finish(counter.get(), documents.documents, None);
    Ok(Survey { chars: want_chars.then(|| chars.chars()), documents })
}

/// Bytes of text each file contributes to a sample of `sample_bytes`: its share by size on disk, so that every
/// file is represented (a sample of the first bytes would see only the first files), or everything when the
/// corpus is no larger than the sample.
pub(crate) fn sample_budget(files: &[InputFile], sample_bytes: u64) -> Budget {
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    if total <= sample_bytes {
        return Budget::All;
    }
    let share = |bytes: u64| (sample_bytes as u128 * bytes as u128).div_ceil(total as u128) as u64;
    Budget::PerFile(files.iter().map(|f| share(f.bytes)).collect())
}

/// Trains byte-level BPE on the sample [`sample_budget`] chooses, streaming the texts into the trainer (which
/// counts words on all cores as they come) rather than holding the sample.
pub(crate) fn train_bpe_on_sample(
    files: &[InputFile],
    opts: &ReadOptions,
    skip_bad: bool,
    vocab_size: usize,
    sample_bytes: u64,
    progress: &StreamProgress,
) -> Result<Tokenizer, DataError> {
    let budget = sample_budget(files, sample_bytes);
    let counter = Arc::new(ByteCounter::default());
    let (sender, receiver) = sync_channel::<Vec<String>>(SAMPLE_CHUNKS_AHEAD);
    std::thread::scope(|scope| {
        // The reader side extracts texts on its own thread, without the thread pool: the trainer's workers wait
        // on this channel, and a reader that needed them could wait for them in turn.
        let reader = scope.spawn(|| {
            let sender = sender;
            let mut documents = DocumentCounter::default();
            let read = for_each_chunk(files, opts, &budget, &counter, |chunk: Chunk| {
                let mut texts = Vec::with_capacity(chunk.records.len());
                for mut record in chunk.records {
                    let body = std::mem::replace(&mut record.body, RecordBody::Text(String::new()));
                    let text = sample_text(body, opts);
                    documents.step(
                        &record,
                        text.as_ref().map(Option::is_some).map_err(String::as_str),
                        files,
                        skip_bad,
                    )?;
                    texts.extend(text.ok().flatten());
                }
                progress.update(chunk.read_bytes, documents.documents, None);
                // A closed channel means the trainer stopped (failed): no use reading on.
                Ok(sender.send(texts).is_ok())
            });
            progress.finish(counter.get(), documents.documents, None);
            read
        });
        let trained = Tokenizer::train_bpe_on_texts(receiver.into_iter().flatten(), vocab_size);
        let read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A reading error explains a failed (or truncated) training, so it comes first.
        read.and(trained)
    })
}

/// A record's text as an owned string, `Ok(None)` when empty.
fn sample_text(body: RecordBody, opts: &ReadOptions) -> Result<Option<String>, String> {
    match body {
        RecordBody::Text(text) => Ok((!text.is_empty()).then_some(text)),
        other => record_text(&other, opts).map(|text| text.map(|t| t.into_owned())),
    }
}
