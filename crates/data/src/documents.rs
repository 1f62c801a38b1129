//! The documents of one input file, as records: text (a whole document or a piece of one), JSON Lines lines (their
//! text field is extracted later, on the tokenizing threads), or records that hold no document (with why).
//!
//! Documents:
//! - text, one per file: the file's whole text, byte for byte;
//! - text with blank-line splitting: each maximal run of non-blank lines (a blank line has only whitespace), from
//!   the start of its first line to the end of its last line, without that last line's line break (`\n` or
//!   `\r\n`);
//! - JSON Lines: the string at the text field of each non-blank line's object;
//! - Parquet: the string in the text column of each row.
//!
//! A document longer than [`PIECE_BYTES`] is handed on in pieces, cut where the tokenizer's [`CutRule`] allows,
//! so a multi-gigabyte text file streams through bounded memory; the pieces encode to the ids of the whole.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::Value;

use crate::error::DataError;
use crate::input::{open_text, read_error, ByteCounter, InputFile, InputFormat};
use crate::tokenizer::CutRule;

/// Size at which a document is cut into pieces (where the cut rule allows): big enough that per-piece costs
/// vanish, small enough that pieces of one long document spread over the threads of a chunk.
pub(crate) const PIECE_BYTES: usize = 1 << 20;
/// The largest record held whole: a JSON line, a Parquet value, or a document the tokenizer cannot be cut in.
/// Bounds memory (the tokenizer's working data is tens of bytes per token, so 64 MiB of text can take a GB); a
/// larger record is an error naming its place, or skipped with `skip_bad_lines`.
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 20;
/// Rows per Parquet batch: text columns hold documents of kilobytes, so a batch is a few MB.
const PARQUET_BATCH_ROWS: usize = 256;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RecordBody {
    /// Document text: a whole document, or a piece of one.
    Text(String),
    /// One JSON Lines line; its text field is the document.
    Json(String),
    /// A record that should have held a document and does not: why (a null Parquet value, a record too large).
    Invalid(String),
}

/// One record of an input file, in file order.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    /// Index of the file in the input list.
    pub file: usize,
    /// 1-based line (text, JSON Lines) or row (Parquet) where the record starts.
    pub line: u64,
    pub body: RecordBody,
    /// Whether this record ends its document (always, except for a piece of a long text document).
    pub ends_doc: bool,
}

impl Record {
    /// Bytes of the record's text, for chunk and sample sizes.
    pub fn bytes(&self) -> usize {
        match &self.body {
            RecordBody::Text(text) | RecordBody::Json(text) | RecordBody::Invalid(text) => text.len(),
        }
    }
}

/// How records are cut from a file.
#[derive(Clone, Debug)]
pub(crate) struct ReadOptions {
    /// Text files: one document per blank-line-separated block instead of one per file.
    pub split_blank_lines: bool,
    /// The field of a JSON object or column of a Parquet file that holds the text, split at dots.
    pub text_field: FieldPath,
    /// Where the tokenizer allows cutting a long document.
    pub cut_rule: CutRule,
}

/// A dotted path to a nested field: `meta.text` is the field `text` of the object in the field `meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldPath {
    dotted: String,
    parts: Vec<String>,
}

impl FieldPath {
    pub fn parse(dotted: &str) -> Result<FieldPath, DataError> {
        let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(DataError::InvalidOption {
                name: "text_field",
                value: format!("'{dotted}'"),
                rule: "must be a field name, or names joined by dots for nested fields (e.g. text, meta.body)",
            });
        }
        Ok(FieldPath { dotted: dotted.to_string(), parts })
    }

    pub fn dotted(&self) -> &str {
        &self.dotted
    }

    /// The document text of a JSON Lines line; `Ok(None)` never happens, a missing field is an error (the
    /// message, without the file and line, which the caller adds).
    pub fn extract(&self, line: &str) -> Result<String, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
        let mut current = &value;
        for (depth, part) in self.parts.iter().enumerate() {
            current = match current {
                Value::Object(map) => map.get(part).ok_or_else(|| {
                    let at = self.parts[..=depth].join(".");
                    format!("no field \"{at}\" (text_field is \"{}\")", self.dotted)
                })?,
                other => {
                    let at = self.parts[..depth].join(".");
                    return Err(format!("field \"{at}\" is {}, not an object", json_kind(other)));
                }
            };
        }
        match current {
            Value::String(text) => Ok(text.clone()),
            other => Err(format!("field \"{}\" is {}, not a string", self.dotted, json_kind(other))),
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the records of `file` (number `index` in the input list) in order, handing each to `emit`, which
/// returns false to stop reading this file early. Bytes read from disk are added to `counter`.
pub(crate) fn read_records(
    index: usize,
    file: &InputFile,
    opts: &ReadOptions,
    counter: &Arc<ByteCounter>,
    emit: &mut dyn FnMut(Record) -> bool,
) -> Result<(), DataError> {
    match file.format {
        InputFormat::Text if opts.split_blank_lines => read_blocks(index, file, opts, counter, emit),
        InputFormat::Text => read_whole(index, file, opts, counter, emit),
        InputFormat::Jsonl => read_json_lines(index, file, counter, emit),
        InputFormat::Parquet => read_parquet(index, file, opts, counter, emit),
    }
}

/// Builds one document's text, handing it on in pieces once it outgrows [`PIECE_BYTES`].
struct Assembler<'a> {
    index: usize,
    path: &'a Path,
    rule: CutRule,
    text: String,
    /// Line of the start of `text`, and of the next line to be pushed.
    first_line: u64,
    next_line: u64,
}

impl<'a> Assembler<'a> {
    /// An empty document of input `index`, starting on line 1 of `path`.
    fn new(index: usize, path: &'a Path, rule: CutRule) -> Self {
        Assembler { index, path, rule, text: String::new(), first_line: 1, next_line: 1 }
    }

    /// Appends `text` (which starts on line `self.next_line`, and `lines` line breaks long); emits a piece when
    /// there is enough text and a place to cut. Returns false when `emit` asks to stop.
    fn push(&mut self, text: &str, lines: u64, emit: &mut dyn FnMut(Record) -> bool) -> Result<bool, DataError> {
        if self.text.is_empty() {
            self.first_line = self.next_line;
        }
        self.text.push_str(text);
        self.next_line += lines;
        if self.text.len() < PIECE_BYTES {
            return Ok(true);
        }
        match last_cut(&self.text, self.rule) {
            Some(cut) => {
                let rest = self.text.split_off(cut);
                let piece = std::mem::replace(&mut self.text, rest);
                let line = self.first_line;
                self.first_line += count_lines(&piece);
                Ok(emit(Record { file: self.index, line, body: RecordBody::Text(piece), ends_doc: false }))
            }
            None if self.text.len() > MAX_RECORD_BYTES => Err(DataError::RecordTooLarge {
                path: self.path.to_path_buf(),
                line: self.first_line,
                limit: MAX_RECORD_BYTES,
                why: match self.rule {
                    CutRule::Never => "this tokenizer cannot encode a text in pieces",
                    _ => "it has no line break between non-space characters where it could be cut",
                },
            }),
            None => Ok(true),
        }
    }

    /// Emits the rest of the document (even if empty: an empty document is counted, then skipped).
    fn finish(&mut self, emit: &mut dyn FnMut(Record) -> bool) -> bool {
        let line = if self.text.is_empty() { self.next_line } else { self.first_line };
        let text = std::mem::take(&mut self.text);
        emit(Record { file: self.index, line, body: RecordBody::Text(text), ends_doc: true })
    }
}

fn count_lines(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
}

/// The last place in `text` where `rule` allows a cut that leaves both sides non-empty.
pub(crate) fn last_cut(text: &str, rule: CutRule) -> Option<usize> {
    match rule {
        CutRule::Never => None,
        CutRule::AnyChar => text.char_indices().next_back().map(|(at, _)| at).filter(|&at| at > 0),
        CutRule::AfterLoneNewline => {
            let bytes = text.as_bytes();
            let mut end = bytes.len();
            while let Some(newline) = bytes[..end].iter().rposition(|&b| b == b'\n') {
                let before = text[..newline].chars().next_back();
                let after = text[newline + 1..].chars().next();
                if matches!((before, after), (Some(b), Some(a)) if !b.is_whitespace() && !a.is_whitespace()) {
                    return Some(newline + 1);
                }
                end = newline;
            }
            None
        }
    }
}

/// Text, one document per file, read in blocks of [`PIECE_BYTES`].
fn read_whole(
    index: usize,
    file: &InputFile,
    opts: &ReadOptions,
    counter: &Arc<ByteCounter>,
    emit: &mut dyn FnMut(Record) -> bool,
) -> Result<(), DataError> {
    let mut reader = open_text(file, counter.clone())?;
    let mut doc = Assembler::new(index, &file.path, opts.cut_rule);
    let mut pending: Vec<u8> = Vec::with_capacity(PIECE_BYTES + 4);
    // Offset in the (decompressed) file of `pending`'s first byte, for the position of a UTF-8 error.
    let mut offset = 0u64;
    loop {
        let start = pending.len();
        pending.resize(start + PIECE_BYTES, 0);
        let n = read_full(&mut reader, &mut pending[start..]).map_err(|e| read_error(file, e))?;
        pending.truncate(start + n);
        let at_end = n == 0;
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            // An incomplete character at the end of a block is completed by the next one; anything else is bad.
            Err(e) if e.error_len().is_none() && !at_end => e.valid_up_to(),
            Err(e) => {
                return Err(DataError::InputNotUtf8 {
                    path: file.path.clone(),
                    byte_offset: (offset + e.valid_up_to() as u64) as usize,
                })
            }
        };
        let text = std::str::from_utf8(&pending[..valid]).expect("validated above");
        if !doc.push(text, count_lines(text), emit)? {
            return Ok(());
        }
        offset += valid as u64;
        pending.drain(..valid);
        if at_end {
            doc.finish(emit);
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or the input ends; the byte count.
fn read_full(reader: &mut dyn BufRead, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One line, its line break included; `None` at the end of the file. Not UTF-8 is an error at the line's offset.
fn next_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    file: &InputFile,
    offset: &mut u64,
) -> Result<Option<String>, DataError> {
    buf.clear();
    let n = reader.read_until(b'\n', buf).map_err(|e| read_error(file, e))?;
    if n == 0 {
        return Ok(None);
    }
    let line = String::from_utf8(std::mem::take(buf)).map_err(|e| DataError::InputNotUtf8 {
        path: file.path.clone(),
        byte_offset: (*offset + e.utf8_error().valid_up_to() as u64) as usize,
    })?;
    *offset += n as u64;
    Ok(Some(line))
}

/// Text, one document per block of non-blank lines.
fn read_blocks(
    index: usize,
    file: &InputFile,
    opts: &ReadOptions,
    counter: &Arc<ByteCounter>,
    emit: &mut dyn FnMut(Record) -> bool,
) -> Result<(), DataError> {
    let mut reader = open_text(file, counter.clone())?;
    let mut doc = Assembler::new(index, &file.path, opts.cut_rule);
    let (mut buf, mut offset, mut line_number) = (Vec::new(), 0u64, 0u64);
    let mut in_block = false;
    // The line break after the block's last line so far: part of the document only if another line follows.
    let mut held_break = String::new();
    while let Some(line) = next_line(&mut *reader, &mut buf, file, &mut offset)? {
        line_number += 1;
        if line.trim().is_empty() {
            if in_block && !doc.finish(emit) {
                return Ok(());
            }
            in_block = false;
            continue;
        }
        if !in_block {
            doc.next_line = line_number;
            held_break.clear();
            in_block = true;
        }
        let body_len = line.strip_suffix('\n').map_or(line.len(), |l| l.strip_suffix('\r').map_or(l.len(), str::len));
        let text = format!("{held_break}{}", &line[..body_len]);
        let lines = !held_break.is_empty() as u64;
        held_break = line[body_len..].to_string();
        if !doc.push(&text, lines, emit)? {
            return Ok(());
        }
    }
    if in_block {
        doc.finish(emit);
    }
    Ok(())
}

/// JSON Lines: every non-blank line is a record, parsed later.
fn read_json_lines(
    index: usize,
    file: &InputFile,
    counter: &Arc<ByteCounter>,
    emit: &mut dyn FnMut(Record) -> bool,
) -> Result<(), DataError> {
    let mut reader = open_text(file, counter.clone())?;
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        // Read at most one byte past the limit, so a huge line is refused without being held whole.
        let limit = MAX_RECORD_BYTES as u64 + 1;
        let mut limited = <&mut dyn BufRead as std::io::Read>::take(&mut *reader, limit);
        let n = limited.read_until(b'\n', &mut buf).map_err(|e| read_error(file, e))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let body = if buf.len() > MAX_RECORD_BYTES {
            skip_rest_of_line(&mut *reader).map_err(|e| read_error(file, e))?;
            RecordBody::Invalid(format!("the line is longer than {MAX_RECORD_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&buf) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => RecordBody::Json(text.to_string()),
                Err(e) => RecordBody::Invalid(format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1)),
            }
        };
        if !emit(Record { file: index, line, body, ends_doc: true }) {
            return Ok(());
        }
    }
}

fn skip_rest_of_line(reader: &mut dyn BufRead) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}

fn parquet_error(file: &InputFile, e: impl std::fmt::Display) -> DataError {
    DataError::BadFile { path: file.path.clone(), problem: format!("cannot be read as Parquet: {e}") }
}

/// Parquet: the text column of every row, read a batch of rows at a time (only that column is decoded).
fn read_parquet(
    index: usize,
    file: &InputFile,
    opts: &ReadOptions,
    counter: &Arc<ByteCounter>,
    emit: &mut dyn FnMut(Record) -> bool,
) -> Result<(), DataError> {
    let handle = std::fs::File::open(&file.path).map_err(crate::error::io_error("open", &file.path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle).map_err(|e| parquet_error(file, e))?;
    let field = &opts.text_field;
    let columns: Vec<String> = builder.parquet_schema().columns().iter().map(|c| c.path().string()).collect();
    if !columns.iter().any(|column| column == field.dotted()) {
        return Err(DataError::BadFile {
            path: file.path.clone(),
            problem: format!(
                "has no column \"{}\" (text_field); its columns are {}",
                field.dotted(),
                columns.join(", ")
            ),
        });
    }
    let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [field.dotted()]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(file, e))?;
    let (mut row, mut counted) = (0u64, 0u64);
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(file, e))?;
        let texts =
            text_column(&batch, field).map_err(|problem| DataError::BadFile { path: file.path.clone(), problem })?;
        for text in texts {
            row += 1;
            let body = match text {
                Ok(text) if text.len() > MAX_RECORD_BYTES => {
                    RecordBody::Invalid(format!("the text is longer than {MAX_RECORD_BYTES} bytes"))
                }
                Ok(text) => RecordBody::Text(text),
                Err(why) => RecordBody::Invalid(why),
            };
            if !emit(Record { file: index, line: row, body, ends_doc: true }) {
                return Ok(());
            }
        }
        // The reader gives no byte position: progress counts the file's bytes in proportion to its rows.
        let done = file.bytes * row.min(total_rows) / total_rows;
        counter.add(done - counted);
        counted = done;
    }
    counter.add(file.bytes - counted);
    Ok(())
}

/// The texts of the column at `field` (nested through struct columns), each or why it is none (null, not UTF-8).
fn text_column(batch: &RecordBatch, field: &FieldPath) -> Result<Vec<Result<String, String>>, String> {
    let mut array: ArrayRef =
        batch.column_by_name(&field.parts[0]).ok_or_else(|| format!("has no column \"{}\"", field.parts[0]))?.clone();
    // Arrays whose nulls also null the text: a null struct makes its fields null.
    let mut parents: Vec<ArrayRef> = Vec::new();
    for part in &field.parts[1..] {
        let child = array
            .as_struct_opt()
            .and_then(|s| s.column_by_name(part))
            .ok_or_else(|| format!("column \"{}\" has no field \"{part}\"", field.dotted))?
            .clone();
        parents.push(std::mem::replace(&mut array, child));
    }
    let null = |row: usize| array.is_null(row) || parents.iter().any(|parent| parent.is_null(row));
    let from_bytes = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("the text is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
    };
    let rows = 0..array.len();
    let texts = match array.data_type() {
        DataType::Utf8 => rows.map(|r| Ok(array.as_string::<i32>().value(r).to_string())).collect::<Vec<_>>(),
        DataType::LargeUtf8 => rows.map(|r| Ok(array.as_string::<i64>().value(r).to_string())).collect(),
        DataType::Utf8View => rows.map(|r| Ok(array.as_string_view().value(r).to_string())).collect(),
        DataType::Binary => rows.map(|r| from_bytes(array.as_binary::<i32>().value(r))).collect(),
        DataType::LargeBinary => rows.map(|r| from_bytes(array.as_binary::<i64>().value(r))).collect(),
        DataType::BinaryView => rows.map(|r| from_bytes(array.as_binary_view().value(r))).collect(),
        other => return Err(format!("column \"{}\" holds {other}, not strings", field.dotted)),
    };
    Ok(texts
        .into_iter()
        .enumerate()
        .map(|(row, text)| if null(row) { Err("the text is null".to_string()) } else { text })
        .collect())
}
