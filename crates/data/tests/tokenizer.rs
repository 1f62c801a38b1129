//! Tokenizers: spec parsing, the char vocabulary against hand-computed ids, byte-level BPE against the GPT-2
//! byte alphabet, round trips, determinism, save/load, and loading a `tokenizer.json`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{corpus, TempDir};
use rustspeed_data::{DataError, Tokenizer, TokenizerSpec, EOT_TOKEN};

#[test]
fn spec_parses_cli_syntax_and_prints_it_back() {
    assert_eq!("char".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Char);
    assert_eq!("bpe:2048".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Bpe { vocab_size: 2048 });
    assert_eq!(
        "data/gpt2/tokenizer.json".parse::<TokenizerSpec>().unwrap(),
        TokenizerSpec::HfJson(PathBuf::from("data/gpt2/tokenizer.json"))
    );
    assert_eq!("tok.json".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::HfJson(PathBuf::from("tok.json")));
    for text in ["char", "bpe:300", "some/dir/tokenizer.json"] {
        assert_eq!(text.parse::<TokenizerSpec>().unwrap().to_string(), text);
    }
}

#[test]
fn spec_errors_say_what_is_expected() {
    let message = |text: &str| text.parse::<TokenizerSpec>().unwrap_err().to_string();
    assert!(message("bpe").contains("bpe:2048"), "{}", message("bpe"));
    assert!(message("bpe:lots").contains("'lots' is not a vocabulary size"), "{}", message("bpe:lots"));
    assert!(message("bpe:100").contains("outside [257"), "{}", message("bpe:100"));
    assert!(message("bpe:256").contains("end-of-text token"), "{}", message("bpe:256"));
    let unknown = message("wordpiece");
    assert!(unknown.contains("'wordpiece'") && unknown.contains("bpe:VOCAB"), "{unknown}");
}

#[test]
fn char_vocab_is_the_sorted_set_of_corpus_characters_then_the_end_of_text_token() {
    let tokenizer = Tokenizer::char_from_corpus("hello world");
    // Sorted distinct characters: ' ' d e h l o r w  ->  ids 0..8, then <|endoftext|> 8.
    assert_eq!(tokenizer.kind(), "char");
    assert_eq!(tokenizer.vocab_size(), 9);
    assert_eq!((tokenizer.eot_id(), tokenizer.eot_token()), (Some(8), Some(EOT_TOKEN)));
    assert_eq!(tokenizer.encode("hello").unwrap(), vec![3, 2, 4, 4, 5]);
    assert_eq!(tokenizer.encode("row").unwrap(), vec![6, 5, 7]);
    assert_eq!(tokenizer.decode(&[7, 5, 6, 4, 1, 0, 8]).unwrap(), "world <|endoftext|>");
}

#[test]
fn the_end_of_text_token_is_never_produced_by_encoding_text() {
    // A corpus that spells the token: its characters are in the vocabulary, and stay characters.
    let spelled = format!("a {EOT_TOKEN} b");
    let char_tokenizer = Tokenizer::char_from_corpus(&spelled);
    let ids = char_tokenizer.encode(&spelled).unwrap();
    assert_eq!(ids.len(), spelled.chars().count());
    assert!(!ids.contains(&char_tokenizer.eot_id().unwrap()));
    let text = format!("{}{spelled}", corpus(500, 7));
    let bpe = Tokenizer::train_bpe(&text, 300).unwrap();
    let ids = bpe.encode(&spelled).unwrap();
    assert!(!ids.contains(&bpe.eot_id().unwrap()), "{ids:?}");
    assert_eq!(bpe.decode(&ids).unwrap(), spelled);
}

#[test]
fn with_eot_names_a_token_of_the_vocabulary() {
    let text = corpus(800, 8);
    let bpe = Tokenizer::train_bpe(&text, 300).unwrap();
    let dir = TempDir::new("with-eot");
    bpe.save(dir.path()).unwrap();
    let loaded = Tokenizer::from_hf_json(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(loaded.eot_token(), Some(EOT_TOKEN), "found among the special tokens");
    // Any token of the vocabulary may be named, e.g. the byte token of 'a'.
    let a = loaded.clone().with_eot("a").unwrap();
    assert_eq!(a.eot_id(), loaded.encode("a").unwrap().first().copied());
    let err = loaded.with_eot("<|no such token|>").unwrap_err().to_string();
    assert!(err.contains("<|no such token|>") && err.contains("vocabulary"), "{err}");
    let err = Tokenizer::char_from_corpus("ab").with_eot("a").unwrap_err().to_string();
    assert!(err.contains("eot"), "{err}");
}

#[test]
fn version_1_tokenizer_files_load_without_an_end_of_text_token() {
    let dir = TempDir::new("tokenizer-v1");
    std::fs::write(
        dir.join("tokenizer_meta.json"),
        r#"{"format":"rustspeed-tokenizer","format_version":1,"kind":"char","vocab_size":3,"chars":["a","b","c"]}"#,
    )
    .unwrap();
    let tokenizer = Tokenizer::load(dir.path()).unwrap();
    assert_eq!((tokenizer.vocab_size(), tokenizer.eot_id()), (3, None));
    assert_eq!(tokenizer.encode("cab").unwrap(), [2, 0, 1]);
}

#[test]
fn char_round_trip_on_generated_text_with_non_ascii() {
    let text = corpus(2000, 1);
    let tokenizer = Tokenizer::char_from_corpus(&text);
    let distinct: BTreeSet<char> = text.chars().collect();
    assert_eq!(tokenizer.vocab_size(), distinct.len() + 1);
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count(), "one token per character");
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}

#[test]
fn char_unknown_character_names_it_and_its_position() {
    let tokenizer = Tokenizer::char_from_corpus("abc\nxyz é");
    // 'a','b','\n' are chars 0..3; line 2 starts at char 3: 'é' (known) at column 1, '?' at column 2.
    let err = tokenizer.encode("ab\né?").unwrap_err();
    match &err {
        DataError::UnknownChar { ch, char_index, line, column } => {
            assert_eq!((*ch, *char_index, *line, *column), ('?', 4, 2, 2));
        }
        other => panic!("expected UnknownChar, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("'?'") && message.contains("line 2, column 2"), "{message}");
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tokenizer = Tokenizer::char_from_corpus("ab");
    let err = tokenizer.decode(&[0, 1, 2, 3]).unwrap_err();
    assert!(matches!(err, DataError::TokenOutOfVocab { position: 3, id: 3, vocab_size: 3, .. }), "{err:?}");
    let bpe = Tokenizer::train_bpe("ab ab", 257).unwrap();
    let err = bpe.decode(&[5, 257]).unwrap_err();
    assert!(matches!(err, DataError::TokenOutOfVocab { position: 1, id: 257, vocab_size: 257, .. }), "{err:?}");
}

/// GPT-2's byte-to-unicode table maps printable ASCII '!'..='~' (33..=126) to itself and every other byte to a
/// code point above '~'; the initial vocabulary is those 256 characters sorted, so byte b in 33..=126 gets id
/// b - 33, the first merge gets id 256, and the end-of-text token the last id.
fn gpt2_byte_id(byte: u8) -> u32 {
    assert!((33..=126).contains(&byte), "only printable ASCII has the simple id b - 33");
    byte as u32 - 33
}

#[test]
fn bpe_first_merge_is_the_most_frequent_pair() {
    // In "abababab" the pair (a,b) occurs 4 times and (b,a) 3 times: one merge learns "ab".
    let tokenizer = Tokenizer::train_bpe("abababab", 258).unwrap();
    assert_eq!(tokenizer.kind(), "bpe");
    assert_eq!(tokenizer.vocab_size(), 258);
    assert_eq!(tokenizer.eot_id(), Some(257));
    assert_eq!(tokenizer.encode("abab").unwrap(), vec![256, 256]);
    assert_eq!(tokenizer.encode("ba").unwrap(), vec![gpt2_byte_id(b'b'), gpt2_byte_id(b'a')]);
    assert_eq!(tokenizer.encode("a").unwrap(), vec![gpt2_byte_id(b'a')]);
}

#[test]
fn bpe_round_trips_any_text_and_compresses_its_corpus() {
    let text = corpus(3000, 2);
    let tokenizer = Tokenizer::train_bpe(&text, 340).unwrap();
    assert_eq!(tokenizer.vocab_size(), 340, "the corpus has enough distinct pairs to fill the vocabulary");
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    assert!(ids.len() * 3 < text.len(), "{} tokens for {} bytes: BPE should compress", ids.len(), text.len());
    // Byte-level: text never seen in training (tabs, CJK, emoji, a leading space) still round-trips exactly.
    let unseen = " \tunseen 漢字 🦀 text\r\n  two spaces";
    assert_eq!(tokenizer.decode(&tokenizer.encode(unseen).unwrap()).unwrap(), unseen);
}

#[test]
fn bpe_training_is_deterministic() {
    let text = corpus(3000, 3);
    let first = Tokenizer::train_bpe(&text, 350).unwrap();
    let second = Tokenizer::train_bpe(&text, 350).unwrap();
    let (a, b) = (TempDir::new("bpe-det-a"), TempDir::new("bpe-det-b"));
    first.save(a.path()).unwrap();
    second.save(b.path()).unwrap();
    let read = |dir: &TempDir| std::fs::read(dir.join("tokenizer.json")).unwrap();
    assert_eq!(read(&a), read(&b), "two trainings on the same corpus give the same tokenizer.json");
}

#[test]
fn bpe_stops_early_when_the_corpus_runs_out_of_pairs() {
    // The generated corpus has 28 distinct words: once each word (with and without its leading space) is one
    // token, no pair is left to merge, far below 10000.
    let text = corpus(3000, 6);
    let tokenizer = Tokenizer::train_bpe(&text, 10_000).unwrap();
    assert!(tokenizer.vocab_size() < 600, "vocab {}", tokenizer.vocab_size());
    let words: BTreeSet<&str> = text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).collect();
    for word in words {
        let spaced = format!(" {word}");
        assert_eq!(tokenizer.encode(&spaced).unwrap().len(), 1, "{spaced:?} is one token");
    }
}

#[test]
fn bpe_vocab_size_out_of_range_is_an_error() {
    let err = Tokenizer::train_bpe("abc", 100).unwrap_err();
    assert!(err.to_string().contains("257"), "{err}");
}

#[test]
fn save_and_load_preserve_kind_vocabulary_and_ids() {
    let text = corpus(1500, 4);
    for tokenizer in [Tokenizer::char_from_corpus(&text), Tokenizer::train_bpe(&text, 300).unwrap()] {
        let dir = TempDir::new("save-load");
        tokenizer.save(dir.path()).unwrap();
        let loaded = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(loaded.kind(), tokenizer.kind());
        assert_eq!(loaded.vocab_size(), tokenizer.vocab_size());
        assert_eq!(loaded.eot_id(), tokenizer.eot_id());
        assert_eq!(loaded.encode(&text).unwrap(), tokenizer.encode(&text).unwrap());
    }
}

#[test]
fn hf_json_loads_a_tokenizer_json_with_the_same_ids() {
    let text = corpus(1500, 5);
    let trained = Tokenizer::train_bpe(&text, 320).unwrap();
    let dir = TempDir::new("hf-json");
    trained.save(dir.path()).unwrap();
    let path = dir.join("tokenizer.json");
    let spec: TokenizerSpec = path.to_str().unwrap().parse().unwrap();
    let loaded = Tokenizer::build(&spec, "corpus is not used for a tokenizer.json").unwrap();
    assert_eq!(loaded.kind(), "hf");
    assert_eq!(loaded.vocab_size(), 320);
    assert_eq!(loaded.encode(&text).unwrap(), trained.encode(&text).unwrap());
}

#[test]
fn loading_bad_tokenizer_files_names_the_problem() {
    let dir = TempDir::new("bad-tokenizer");
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_meta.json") && err.contains("missing"), "{err}");

    let meta = dir.join("tokenizer_meta.json");
    std::fs::write(
        &meta,
        r#"{"format":"rustspeed-tokenizer","format_version":1,"kind":"sentencepiece","vocab_size":3}"#,
    )
    .unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("\"sentencepiece\""), "{err}");

    std::fs::write(
        &meta,
        r#"{"format":"rustspeed-tokenizer","format_version":1,"kind":"char","vocab_size":3,"chars":["a","b","a"]}"#,
    )
    .unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");

    std::fs::write(&meta, r#"{"format":"rustspeed-tokenizer","format_version":1,"kind":"bpe","vocab_size":300}"#)
        .unwrap();
    let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("does not exist"), "{err}");

    let missing = Tokenizer::from_hf_json(&dir.join("nope.json")).unwrap_err().to_string();
    assert!(missing.contains("nope.json"), "{missing}");
    std::fs::write(dir.join("broken.json"), "{not json").unwrap();
    let broken = Tokenizer::from_hf_json(&dir.join("broken.json")).unwrap_err().to_string();
    assert!(broken.contains("broken.json"), "{broken}");
}
