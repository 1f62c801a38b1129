//! Streaming the inputs: one reader thread reads and decompresses the files in order and groups their records into
//! chunks of about [`CHUNK_BYTES`]; the caller handles the chunks in order on its own thread (tokenizing each on
//! all cores), while the reader prepares the next ones. At most [`CHUNKS_AHEAD`] chunks wait, so memory is a few
//! chunks whatever the corpus size.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rayon::prelude::*;

use crate::documents::{read_records, ReadOptions, Record, RecordBody};
use crate::error::DataError;
use crate::input::{ByteCounter, InputFile};
use crate::tokenizer::Tokenizer;

/// Text per chunk: enough records to keep every core busy (hundreds of JSON documents, or a few
/// [`crate::documents::PIECE_BYTES`] pieces of a long text) and to amortize the hand-over, while a few chunks in
/// flight stay tens of MB.
pub(crate) const CHUNK_BYTES: usize = 8 << 20;
/// Chunks the reader may have ready before the caller takes them: one being tokenized, one or two waiting, so
/// that reading never stalls the tokenizer.
const CHUNKS_AHEAD: usize = 2;

/// Records of the inputs, in order.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub records: Vec<Record>,
    /// Bytes read from the files (on disk) when the chunk was complete: progress counts what was handled, not
    /// what the reader has read ahead.
    pub read_bytes: u64,
}

/// How many bytes of each file a pass reads: all, or (for a tokenizer's training sample) a budget per file.
#[derive(Clone, Debug)]
pub(crate) enum Budget {
    All,
    /// Bytes of record text per file, by file index; reading a file stops once its budget is spent.
    PerFile(Vec<u64>),
}

/// Runs `consume` on every chunk of `files`' records, in order, while a reader thread reads ahead; `consume`
/// returns false to stop early. An error from reading (named by file) or from `consume` stops both and is
/// returned.
pub(crate) fn for_each_chunk(
    files: &[InputFile],
    opts: &ReadOptions,
    budget: &Budget,
    counter: &Arc<ByteCounter>,
    mut consume: impl FnMut(Chunk) -> Result<bool, DataError>,
) -> Result<(), DataError> {
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Chunk>(CHUNKS_AHEAD);
        let reader = scope.spawn(move || read_chunks(files, opts, budget, counter, |chunk| sender.send(chunk).is_ok()));
        let consumed = consume_all(receiver, &mut consume);
        // A stopped or failed `consume` dropped the receiver, so the reader's next send fails and it stops.
        let read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        consumed.and(read)
    })
}

fn consume_all(
    receiver: Receiver<Chunk>,
    consume: &mut impl FnMut(Chunk) -> Result<bool, DataError>,
) -> Result<(), DataError> {
    for chunk in receiver {
        if !consume(chunk)? {
            break;
        }
    }
    Ok(())
}

/// Reads every file's records into chunks, handing each full chunk to `send` (false: stop).
fn read_chunks(
    files: &[InputFile],
    opts: &ReadOptions,
    budget: &Budget,
    counter: &Arc<ByteCounter>,
    mut send: impl FnMut(Chunk) -> bool,
) -> Result<(), DataError> {
    let mut chunk = Chunk::default();
    let mut chunk_bytes = 0;
    let mut stopped = false;
    for (index, file) in files.iter().enumerate() {
        let limit = match budget {
            Budget::All => u64::MAX,
            Budget::PerFile(limits) => limits[index],
        };
        if limit == 0 {
            continue;
        }
        let mut taken = 0u64;
        read_records(index, file, opts, counter, &mut |record| {
            taken += record.bytes() as u64;
            chunk_bytes += record.bytes();
            // A sample may end inside a long document: its pieces are texts of their own to a tokenizer trainer.
            let file_done = taken >= limit;
            chunk.records.push(record);
            if chunk_bytes >= CHUNK_BYTES {
                chunk_bytes = 0;
                chunk.read_bytes = counter.get();
                if !send(std::mem::take(&mut chunk)) {
                    stopped = true;
                    return false;
                }
            }
            !file_done
        })?;
        if stopped {
            return Ok(());
        }
    }
    if !chunk.records.is_empty() {
        chunk.read_bytes = counter.get();
        send(chunk);
    }
    Ok(())
}

/// What a record became on a tokenizing thread.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The document's text (or a piece of it) had text, these are its ids.
    Tokens(Vec<u32>),
    /// The document's text is empty: it is counted and skipped.
    Empty,
    /// No document could be read from the record: why (without the file and line).
    Bad(String),
}

/// The text of a record's document: `Ok(None)` for an empty one, `Err(why)` for a record without one.
pub(crate) fn record_text<'a>(
    body: &'a RecordBody,
    opts: &ReadOptions,
) -> Result<Option<std::borrow::Cow<'a, str>>, String> {
    let text = match body {
        RecordBody::Text(text) => std::borrow::Cow::Borrowed(text.as_str()),
        RecordBody::Json(line) => std::borrow::Cow::Owned(opts.text_field.extract(line)?),
        RecordBody::Invalid(why) => return Err(why.clone()),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// Tokenizes a chunk's records on all cores; the outcomes are in the records' order. A tokenizer error (which a
/// text the vocabulary covers never causes) names the record's place.
pub(crate) fn tokenize_chunk(
    chunk: &[Record],
    tokenizer: &Tokenizer,
    opts: &ReadOptions,
) -> Result<Vec<Outcome>, (usize, DataError)> {
    chunk
        .par_iter()
        .enumerate()
        .map(|(at, record)| match record_text(&record.body, opts) {
            Err(why) => Ok(Outcome::Bad(why)),
            Ok(None) => Ok(Outcome::Empty),
            Ok(Some(text)) => tokenizer.encode(&text).map(Outcome::Tokens).map_err(|e| (at, e)),
        })
        .collect()
}
