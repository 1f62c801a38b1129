//! Tokenizers run by the Hugging Face `tokenizers` crate: byte-level BPE trained here, or any `tokenizer.json`.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, Trainer,
};

use crate::eot::EOT_TOKEN;
use crate::error::DataError;

/// Longest word, in bytes, that byte-level BPE training counts whole; longer ones are cut into pieces of at most
/// this many bytes, which bounds the trainer's time (quadratic in a word's length) on text without whitespace or
/// punctuation, and so also the length of a learned token. Ordinary words are far shorter and never cut; encoding
/// never cuts.
pub const MAX_BPE_TRAINING_PIECE_BYTES: usize = 256;

#[derive(Clone, Debug)]
pub(crate) struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// The serialized `tokenizer.json`, kept as read (or as trained) so that saving copies it byte for byte.
    json: String,
    vocab_size: usize,
    /// Whether encoding the text in line-aligned chunks gives the same ids as encoding it whole (see
    /// [`chunking_is_exact`]).
    chunkable: bool,
}

/// Target size of the pieces a long text is encoded in: small enough to spread over threads and to keep the
/// library's per-token bookkeeping (offsets, token strings: tens of bytes per token) small, large enough that
/// per-call overhead does not matter.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks encoded per parallel call; bounds the memory of the encodings alive at once.
const CHUNKS_PER_BATCH: usize = 32;

impl HfTokenizer {
    /// Trains byte-level BPE as GPT-2 does it: the GPT-2 pre-tokenizer regex splits text into words, each word's
    /// UTF-8 bytes are mapped to 256 printable characters (all of them in the initial alphabet, so every text
    /// encodes and nothing is unknown), and merges are learned up to `vocab_size - 1` tokens; the end-of-text
    /// token is added last, as a special token, with the last id (GPT-2's layout). No prefix space is added, so
    /// `decode(encode(text)) == text` exactly.
    ///
    /// Training sees every word longer than [`MAX_BPE_TRAINING_PIECE_BYTES`] cut into pieces of at most that
    /// many bytes (see [`bounded_pretokens`]); encoding is not cut, it is exactly what the saved `tokenizer.json`
    /// does, here and in any other program that loads it.
    ///
    /// The trainer is deterministic: the alphabet is sorted, ties between equally frequent pairs go to the
    /// smaller pair of ids, and word counts do not depend on the order the threads count them in. A corpus with
    /// fewer distinct pairs than needed yields a vocabulary smaller than `vocab_size`.
    pub(crate) fn train_byte_level_bpe(corpus: &str, vocab_size: usize) -> Result<HfTokenizer, DataError> {
        // The chunks end where the whole text's words end too (see `chunking_is_exact`), so the word counts of
        // the chunks are those of the whole text.
        let chunks = line_aligned_chunks(corpus, CHUNK_BYTES);
        HfTokenizer::train_byte_level_bpe_on(chunks.into_iter(), vocab_size)
    }

    /// [`HfTokenizer::train_byte_level_bpe`] on the words of `texts`, counted as they stream by (on all cores):
    /// this is what `tokenizers::Tokenizer::train` does (there is no normalizer and no added token to skip),
    /// with long words cut.
    pub(crate) fn train_byte_level_bpe_on<I, S>(texts: I, vocab_size: usize) -> Result<HfTokenizer, DataError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let training_error = |message: String| DataError::Tokenizer {
            action: "train the byte-level BPE tokenizer",
            path: None,
            message,
        };
        // The library's own progress bar is compiled out (its `progressbar` feature is off) and would print to
        // stdout; `prepare` reports progress on stderr itself. One id is left for the end-of-text token.
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size.saturating_sub(1))
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let pre_tokenizer = ByteLevel::new(false, true, true);
        trainer
            .feed(texts, |text| bounded_pretokens(&pre_tokenizer, text, MAX_BPE_TRAINING_PIECE_BYTES))
            .map_err(|e| training_error(e.to_string()))?;
        let mut model = BPE::default();
        // No special tokens were configured, so the trainer returns none to add.
        trainer.train(&mut model).map_err(|e| training_error(e.to_string()))?;
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        // Added after training so that it takes the id after the merges instead of id 0, where the trainer puts
        // its special tokens.
        tokenizer.add_special_tokens(&[AddedToken::from(EOT_TOKEN, true)]);
        let json = tokenizer.to_string(false).map_err(|e| training_error(e.to_string()))?;
        HfTokenizer::from_json(json, None)
    }

    /// Reads a Hugging Face `tokenizer.json`.
    pub(crate) fn from_file(path: &Path) -> Result<HfTokenizer, DataError> {
        let json = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::BadFile {
                path: path.to_path_buf(),
                problem: "the tokenizer.json does not exist".to_string(),
            },
            _ => DataError::Io { action: "read", path: path.to_path_buf(), source },
        })?;
        HfTokenizer::from_json(json, Some(path))
    }

    fn from_json(json: String, path: Option<&Path>) -> Result<HfTokenizer, DataError> {
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| DataError::Tokenizer {
            action: "load the Hugging Face tokenizer",
            path: path.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        // A tokenizer.json made for a model's inputs may truncate or pad; a corpus must be encoded whole.
        tokenizer.with_truncation(None).map_err(|e| DataError::Tokenizer {
            action: "disable truncation of the Hugging Face tokenizer",
            path: path.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        tokenizer.with_padding(None);
        // A corpus is text: a special token's spelling inside a document is encoded as the text it is, so that
        // only `prepare` puts the end-of-text token into the stream (tiktoken's `encode_ordinary`).
        tokenizer.set_encode_special_tokens(true);
        let chunkable = chunking_is_exact(&tokenizer);
        // Ids of added tokens may lie above the model's vocabulary: the embedding must cover the largest id.
        let vocab_size = tokenizer.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if vocab_size == 0 {
            return Err(DataError::Tokenizer {
                action: "load the Hugging Face tokenizer",
                path: path.map(Path::to_path_buf),
                message: "its vocabulary is empty".to_string(),
            });
        }
        Ok(HfTokenizer { tokenizer, json, vocab_size, chunkable })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub(crate) fn json(&self) -> &str {
        &self.json
    }

    /// Whether a text may be encoded in pieces cut after lone newlines (see [`chunking_is_exact`]).
    pub(crate) fn chunkable(&self) -> bool {
        self.chunkable
    }

    /// The id of `token` in the vocabulary (the model's or an added token).
    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The id of `token` if it is one of the special added tokens.
    pub(crate) fn special_token_id(&self, token: &str) -> Option<u32> {
        let decoder = self.tokenizer.get_added_tokens_decoder();
        decoder.iter().find(|(_, added)| added.special && added.content == token).map(|(&id, _)| id)
    }

    /// Encodes without special tokens (no BOS/EOS): the token stream is the text and nothing else. Where that
    /// is exact, in chunks on several threads.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        if self.chunkable && text.len() > CHUNK_BYTES {
            self.encode_in_chunks(text, CHUNK_BYTES)
        } else {
            self.encode_whole(text)
        }
    }

    fn encode_whole(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let encoding = self.tokenizer.encode_fast(text, false).map_err(encode_error)?;
        Ok(encoding.get_ids().to_vec())
    }

    fn encode_in_chunks(&self, text: &str, chunk_bytes: usize) -> Result<Vec<u32>, DataError> {
        let chunks = line_aligned_chunks(text, chunk_bytes);
        let mut ids = Vec::with_capacity(text.len() / 3);
        for batch in chunks.chunks(CHUNKS_PER_BATCH) {
            let encodings = self.tokenizer.encode_batch_fast(batch.to_vec(), false).map_err(encode_error)?;
            for encoding in &encodings {
                ids.extend_from_slice(encoding.get_ids());
            }
        }
        Ok(ids)
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        // The library skips ids it does not know; an id outside the vocabulary is a caller's error, so say so.
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= self.vocab_size) {
            return Err(DataError::TokenOutOfVocab {
                context: "decode".to_string(),
                position,
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.tokenizer.decode(ids, false).map_err(|e| DataError::Tokenizer {
            action: "decode token ids",
            path: None,
            message: e.to_string(),
        })
    }
}

fn encode_error(e: tokenizers::Error) -> DataError {
    DataError::Tokenizer { action: "encode text", path: None, message: e.to_string() }
}

/// Chunking is exact for the GPT-2 byte-level setup: no normalizer, the ByteLevel pre-tokenizer with its regex
/// and no prefix space, and no added token that contains a newline or strips whitespace to its left.
///
/// Why: the regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` matches a
/// newline only inside all-whitespace pieces, so at a lone newline (non-whitespace on both sides) the piece
/// holding it is exactly "\n", whole text or chunk end alike (at a chunk end `\s+(?!\S)` takes it, inside the
/// text `\s+`), and the next piece starts after it. BPE merges never cross pieces. An added token could span
/// or absorb the boundary only by containing the newline or by stripping it from its left.
fn chunking_is_exact(tokenizer: &tokenizers::Tokenizer) -> bool {
    let byte_level_regex = matches!(
        tokenizer.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::ByteLevel(level)) if level.use_regex && !level.add_prefix_space
    );
    let added_tokens_keep_lines =
        tokenizer.get_added_tokens_decoder().values().all(|token| !token.lstrip && !token.content.contains('\n'));
    tokenizer.get_normalizer().is_none() && byte_level_regex && added_tokens_keep_lines
}

/// The byte-level words of `text` that BPE training counts: the pre-tokenizer's words, except that a word of more
/// than `max_bytes` bytes of `text` is cut into pieces of at most `max_bytes` bytes, at character boundaries, each
/// mapped to byte-level characters on its own.
///
/// Why: the library's trainer rewrites a word's whole symbol vector for every occurrence of a merged pair in it,
/// so its time grows with the square of a word's length. A corpus without whitespace or punctuation is a single
/// word (1 MB of letters took about five minutes for 256 merges); cut, the cost per word is bounded. Cutting only
/// drops the pairs that straddle a cut, one per `max_bytes` bytes; the words of ordinary text are much shorter
/// and are not cut at all.
fn bounded_pretokens(pre_tokenizer: &ByteLevel, text: &str, max_bytes: usize) -> tokenizers::Result<Vec<String>> {
    let mut pre_tokenized = PreTokenizedString::from(text);
    pre_tokenizer.pre_tokenize(&mut pre_tokenized)?;
    let mut words = Vec::new();
    for (mapped, (start, end), _) in pre_tokenized.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        if end - start <= max_bytes {
            words.push(mapped.to_owned());
            continue;
        }
        let original = text.get(start..end).ok_or_else(|| {
            format!("the pre-tokenizer reported the word at bytes {start}..{end}, not a piece of the text")
        })?;
        // The same byte-to-character mapping, without the regex: the piece stays one word.
        let byte_mapper = ByteLevel::new(false, true, false);
        for piece in char_bounded_pieces(original, max_bytes) {
            let mut piece_words = PreTokenizedString::from(piece);
            byte_mapper.pre_tokenize(&mut piece_words)?;
            let splits = piece_words.get_splits(OffsetReferential::Original, OffsetType::Byte);
            words.extend(splits.into_iter().map(|(mapped_piece, _, _)| mapped_piece.to_owned()));
        }
    }
    Ok(words)
}

/// `text` cut into consecutive pieces of at most `max_bytes` bytes (at least 4, the longest UTF-8 character),
/// each as long as possible without splitting a character.
fn char_bounded_pieces(text: &str, max_bytes: usize) -> impl Iterator<Item = &str> {
    let max_bytes = max_bytes.max(4);
    let mut start = 0;
    std::iter::from_fn(move || {
        if start == text.len() {
            return None;
        }
        let mut end = (start + max_bytes).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let piece = &text[start..end];
        start = end;
        Some(piece)
    })
}

/// Splits `text` into pieces of about `chunk_bytes` (or more, up to the next boundary), each ending right after a
/// lone newline: a '\n' whose neighbours are both non-whitespace characters (Unicode White_Space, as the
/// regex's `\s`). Concatenated, the pieces are `text`.
fn line_aligned_chunks(text: &str, chunk_bytes: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut search_from = chunk_bytes.max(1);
    while search_from < text.len() {
        let Some(offset) = text.as_bytes()[search_from..].iter().position(|&b| b == b'\n') else { break };
        let newline = search_from + offset;
        let before = text[start..newline].chars().next_back();
        let after = text[newline + 1..].chars().next();
        let lone = matches!((before, after), (Some(b), Some(a)) if !b.is_whitespace() && !a.is_whitespace());
        if lone {
            chunks.push(&text[start..newline + 1]);
            start = newline + 1;
            search_from = start + chunk_bytes.max(1);
        } else {
            search_from = newline + 1;
        }
    }
    chunks.push(&text[start..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines with blank-line runs, leading and trailing spaces, tabs, a no-break space (Unicode whitespace)
    /// after a newline, contractions, digits and non-ASCII letters: every way a piece could touch a boundary.
    const TRICKY: &str = "First line.\nsecond line\n\nthird after blank\n \nspace line\nend \n\ttab\n\u{a0}nbsp\n\
        don't\n'tis\n42 apples\n\u{e9}t\u{e9}\n\n\n!!\nlast";

    #[test]
    fn chunks_concatenate_to_the_text_and_end_at_lone_newlines() {
        let text = TRICKY.repeat(5);
        for chunk_bytes in [1, 3, 10, 50] {
            let chunks = line_aligned_chunks(&text, chunk_bytes);
            assert_eq!(chunks.concat(), text);
            for chunk in &chunks[..chunks.len() - 1] {
                let body = chunk.strip_suffix('\n').expect("a chunk ends with a newline");
                assert!(!body.ends_with(char::is_whitespace), "{chunk:?}");
            }
            assert!(chunks.len() > 1);
        }
    }

    #[test]
    fn char_bounded_pieces_are_short_whole_characters_that_concatenate_to_the_text() {
        let text = "é日本z".repeat(40) + "abc";
        for max_bytes in [4, 5, 9, 10, 100, 1000] {
            let pieces: Vec<&str> = char_bounded_pieces(&text, max_bytes).collect();
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|piece| !piece.is_empty() && piece.len() <= max_bytes), "{max_bytes}");
            // As long as possible: the next character would not have fitted.
            for pair in pieces.windows(2) {
                let next = pair[1].chars().next().unwrap();
                assert!(pair[0].len() + next.len_utf8() > max_bytes, "{max_bytes}: {pair:?}");
            }
        }
        assert_eq!(char_bounded_pieces("", 8).count(), 0);
    }

    /// The library's own split of `text` into byte-level words.
    fn library_words(text: &str) -> Vec<String> {
        let mut pre_tokenized = PreTokenizedString::from(text);
        ByteLevel::new(false, true, true).pre_tokenize(&mut pre_tokenized).unwrap();
        let splits = pre_tokenized.get_splits(OffsetReferential::Original, OffsetType::Byte);
        splits.into_iter().map(|(word, _, _)| word.to_owned()).collect()
    }

    #[test]
    fn only_words_longer_than_the_bound_are_cut() {
        let pre_tokenizer = ByteLevel::new(false, true, true);
        let long_word = "é日本z".repeat(30);
        let text = format!("{TRICKY} {long_word}, and {}\n{TRICKY}", " ".repeat(100));
        let words = library_words(&text);
        assert_eq!(bounded_pretokens(&pre_tokenizer, &text, usize::MAX).unwrap(), words);
        let longest = text.split_whitespace().map(str::len).max().unwrap();
        assert_eq!(bounded_pretokens(&pre_tokenizer, &text, longest).unwrap(), words, "no word is longer");

        let max_bytes = 16;
        let bounded = bounded_pretokens(&pre_tokenizer, &text, max_bytes).unwrap();
        assert_eq!(bounded.concat(), words.concat(), "cutting loses and changes nothing");
        // One byte-level character per byte of the text.
        assert!(bounded.iter().all(|piece| piece.chars().count() <= max_bytes), "{bounded:?}");
        assert!(bounded.len() > words.len());
        let short: Vec<&String> = words.iter().filter(|word| word.chars().count() <= max_bytes).collect();
        assert!(short.iter().all(|word| bounded.contains(word)), "short words stay whole");
    }

    #[test]
    fn training_without_long_words_equals_the_library_training() {
        let text = TRICKY.repeat(20);
        let ours = HfTokenizer::train_byte_level_bpe(&text, 300).unwrap();
        let mut trainer = tokenizers::models::TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(299)
                .show_progress(false)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        );
        let mut library = tokenizers::Tokenizer::new(BPE::default());
        library.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        library.with_decoder(Some(ByteLevelDecoder::default()));
        library.train(&mut trainer, [text.as_str()].into_iter()).unwrap();
        library.add_special_tokens(&[AddedToken::from(EOT_TOKEN, true)]);
        assert_eq!(ours.json(), library.to_string(false).unwrap());
        assert_eq!(ours.vocab_size(), 300);
        assert_eq!(ours.special_token_id(EOT_TOKEN), Some(299), "the end-of-text token has the last id");
    }

    #[test]
    fn chunked_encoding_equals_whole_encoding() {
        let text = TRICKY.repeat(20);
        let tokenizer = HfTokenizer::train_byte_level_bpe(&text, 300).unwrap();
        assert!(tokenizer.chunkable);
        let whole = tokenizer.encode_whole(&text).unwrap();
        for chunk_bytes in [1, 7, 64, 500] {
            assert_eq!(tokenizer.encode_in_chunks(&text, chunk_bytes).unwrap(), whole, "chunks of {chunk_bytes}");
        }
    }
}
