//! Byte-level BPE on text without whitespace or punctuation, where the GPT-2 pre-tokenizer yields one huge word:
//! training completes (it cuts words into pieces of at most `MAX_BPE_TRAINING_PIECE_BYTES`; uncut, these
//! corpora take the library's trainer minutes), the text round-trips, and encoding is that of the saved
//! `tokenizer.json`.

mod common;

use common::TempDir;
use rustspeed_data::{Tokenizer, MAX_BPE_TRAINING_PIECE_BYTES};
use rustspeed_kernels::rng::Rng;
use serde_json::Value;

/// Large enough that training on the corpus as one word would take minutes, small enough for a debug test.
const CORPUS_BYTES: usize = 200 * 1024;
/// A vocabulary that needs a few dozen merges.
const VOCAB: usize = 300;

/// `unit` repeated up to `CORPUS_BYTES` bytes, whole repetitions only.
fn repeated(unit: &str) -> String {
    unit.repeat(CORPUS_BYTES / unit.len())
}

fn random_letters(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    (0..CORPUS_BYTES).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

/// The learned vocabulary of a saved byte-level tokenizer: token strings of byte-level characters, one per byte.
fn saved_vocab(tokenizer: &Tokenizer, dir: &TempDir) -> Vec<String> {
    tokenizer.save(dir.path()).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    json["model"]["vocab"].as_object().expect("a BPE vocabulary").keys().cloned().collect()
}

#[test]
fn bpe_trains_on_text_without_word_boundaries_and_round_trips() {
    let corpora = [
        ("random letters", random_letters(31)),
        ("abc repeated", repeated("abc")),
        ("one letter", repeated("a")),
        // Multi-byte characters: the cuts must fall between characters, and the round trip shows they did.
        ("multi-byte", repeated("é日本z")),
        ("spaces only", repeated(" ")),
    ];
    for (name, text) in corpora {
        let tokenizer = Tokenizer::train_bpe(&text, VOCAB).unwrap();
        assert!(tokenizer.vocab_size() <= VOCAB, "{name}: vocabulary {}", tokenizer.vocab_size());
        let ids = tokenizer.encode(&text).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text, "{name}: decode(encode(text)) == text");

        // Merges were learned on pieces of at most the bound, so no token is longer. Repeated text merges
        // until whole pieces are single tokens, so there the bound is reached and tokens are long.
        let dir = TempDir::new("bpe-long");
        let vocab = saved_vocab(&tokenizer, &dir);
        let longest = vocab.iter().map(|token| token.chars().count()).max().unwrap();
        assert!(longest <= MAX_BPE_TRAINING_PIECE_BYTES, "{name}: a {longest}-byte token");
        if name != "random letters" {
            assert!(ids.len() <= text.len() / 16, "{name}: {} tokens for {} bytes", ids.len(), text.len());
        }

        // Encoding is the saved tokenizer.json's, not cut: loading the file gives the same ids.
        let reloaded = Tokenizer::from_hf_json(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(reloaded.encode(&text).unwrap(), ids, "{name}: the exported tokenizer encodes the same");
    }
}

#[test]
fn random_letters_fill_the_vocabulary_and_compress() {
    let text = random_letters(32);
    let tokenizer = Tokenizer::train_bpe(&text, VOCAB).unwrap();
    // 26 letters give 676 distinct pairs, each frequent: the trainer never runs out of merges.
    assert_eq!(tokenizer.vocab_size(), VOCAB);
    let ids = tokenizer.encode(&text).unwrap();
    assert!(ids.len() < text.len(), "merges shorten the stream: {} tokens for {} bytes", ids.len(), text.len());
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}
