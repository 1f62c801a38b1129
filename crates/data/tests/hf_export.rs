//! Exporting each tokenizer kind as a Hugging Face model directory's tokenizer, checked by reloading the exported
//! `tokenizer.json` with the `tokenizers` crate directly (not through rustspeed's wrapper): the same ids and the
//! same decoded text as rustspeed's tokenizer; and reading a model directory's tokenizer back.

mod common;

use std::path::Path;

use common::{corpus, TempDir};
use rustspeed_data::{Tokenizer, EOT_TOKEN, HF_TOKENIZER_CONFIG_FILE, HF_TOKENIZER_FILE};
use serde_json::Value;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, TruncationParams};

/// Spaces (leading, trailing, runs), tabs, blank lines, a CRLF, punctuation, non-ASCII letters, an arrow, a
/// 4-byte emoji, and the characters of "<unk>" (which the char export must not treat as one token).
const CHAR_TEXT: &str = "Hello, world!  Two  spaces.\n\n\tTabbed line; café → naïve?\r\nend <unk> 🦀 \n ";

/// Pieces of [`CHAR_TEXT`]'s alphabet in new orders, plus the empty string.
const CHAR_SAMPLES: &[&str] =
    &["", " ", "\n", "  \n\n  ", "é→é", "→", "🦀🦀", "<unk>", "world, café!\r\n", "\t; naïve → end?  ", CHAR_TEXT];

/// The exported `tokenizer.json`, loaded by the `tokenizers` crate alone.
fn reload_exported(dir: &Path) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(dir.join(HF_TOKENIZER_FILE)).expect("the exported tokenizer.json loads")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("valid JSON")
}

/// Asserts that the Hugging Face tokenizer gives rustspeed's ids for every sample, with special tokens (as
/// `tok(text)` in transformers encodes) and without (as rustspeed does), and decodes them to the sample, as
/// rustspeed does.
fn assert_same_ids_and_text(ours: &Tokenizer, theirs: &tokenizers::Tokenizer, samples: &[&str]) {
    for &text in samples {
        let ids = ours.encode(text).unwrap();
        let hf_ids = theirs.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(hf_ids, ids, "ids of {text:?}");
        let with_specials = theirs.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(with_specials, ids, "ids of {text:?} with special tokens, as `tok(text)` encodes");
        assert_eq!(theirs.decode(&ids, false).unwrap(), text, "Hugging Face decode of {text:?}");
        assert_eq!(ours.decode(&ids).unwrap(), text, "rustspeed decode of {text:?}");
    }
}

/// A BPE trained here with special tokens added, a post-processor that keeps the byte-level offsets and puts a
/// BOS first (as a model's own `tokenizer.json` often does), and truncation at 8 tokens, loaded as an `hf`
/// tokenizer from `dir/model-tokenizer.json`.
fn hf_tokenizer_with_specials(text: &str, dir: &TempDir) -> Tokenizer {
    Tokenizer::train_bpe(text, 300).unwrap().save(dir.path()).unwrap();
    let mut base = tokenizers::Tokenizer::from_file(dir.join(HF_TOKENIZER_FILE)).unwrap();
    // The trained tokenizer has <|endoftext|> already.
    let specials = ["<s>", "<pad>", "<|im_start|>"].map(|content| AddedToken::from(content, true));
    assert_eq!(base.add_special_tokens(&specials), 3);
    let bos = base.token_to_id("<s>").unwrap();
    let template = TemplateProcessing::builder()
        .try_single("<s> $A")
        .unwrap()
        .try_pair("<s> $A <s> $B")
        .unwrap()
        .special_tokens(vec![("<s>", bos)])
        .build()
        .unwrap();
    let offsets = ByteLevel::default().trim_offsets(true);
    base.with_post_processor(Some(PostSequence::new(vec![offsets.into(), template.into()])));
    base.with_truncation(Some(TruncationParams { max_length: 8, ..Default::default() })).unwrap();
    let path = dir.join("model-tokenizer.json");
    base.save(&path, false).unwrap();
    let tokenizer = Tokenizer::from_hf_json(&path).unwrap();
    assert_eq!(tokenizer.kind(), "hf");
    tokenizer
}

#[test]
fn char_export_gives_one_id_per_character_and_decodes_exactly() {
    let tokenizer = Tokenizer::char_from_corpus(CHAR_TEXT);
    let dir = TempDir::new("export-char");
    tokenizer.export_hf(dir.path(), 256).unwrap();
    let theirs = reload_exported(dir.path());
    assert_eq!(theirs.get_vocab_size(true), tokenizer.vocab_size(), "no token beyond the characters and the eot");
    let eot = tokenizer.eot_id().unwrap();
    assert_eq!(eot as usize, tokenizer.vocab_size() - 1, "the end-of-text token comes after the characters");
    let added: Vec<(u32, String, bool)> = theirs
        .get_added_tokens_decoder()
        .iter()
        .map(|(&id, token)| (id, token.content.clone(), token.special))
        .collect();
    assert_eq!(added, [(eot, EOT_TOKEN.to_string(), true)], "the one special token");
    assert_eq!(theirs.decode(&[eot], false).unwrap(), tokenizer.decode(&[eot]).unwrap());
    assert_same_ids_and_text(&tokenizer, &theirs, CHAR_SAMPLES);
    for text in CHAR_SAMPLES {
        assert_eq!(theirs.encode(*text, false).unwrap().len(), text.chars().count(), "{text:?}");
    }
    // Longer generated text, through rustspeed's own reader of the exported file as well.
    let long = corpus(400, 11);
    let tokenizer = Tokenizer::char_from_corpus(&long);
    tokenizer.export_hf(dir.path(), 256).unwrap();
    assert_same_ids_and_text(&tokenizer, &reload_exported(dir.path()), &[&long]);
}

#[test]
fn char_export_fails_on_an_unknown_character_as_rustspeed_does() {
    let tokenizer = Tokenizer::char_from_corpus("abc é");
    let dir = TempDir::new("export-char-unknown");
    tokenizer.export_hf(dir.path(), 64).unwrap();
    let theirs = reload_exported(dir.path());
    for text in ["abz", "é→", "a\nb"] {
        assert!(tokenizer.encode(text).is_err(), "rustspeed rejects {text:?}");
        assert!(theirs.encode(text, false).is_err(), "Hugging Face rejects {text:?} instead of inventing an id");
    }
}

#[test]
fn bpe_export_is_the_trained_tokenizer_json_and_encodes_alike() {
    let text = corpus(1500, 21);
    let tokenizer = Tokenizer::train_bpe(&text, 300).unwrap();
    let saved = TempDir::new("export-bpe-saved");
    tokenizer.save(saved.path()).unwrap();
    let dir = TempDir::new("export-bpe");
    tokenizer.export_hf(dir.path(), 1024).unwrap();
    let exported = std::fs::read(dir.join(HF_TOKENIZER_FILE)).unwrap();
    assert_eq!(exported, std::fs::read(saved.join(HF_TOKENIZER_FILE)).unwrap(), "the tokenizer.json, byte for byte");
    let theirs = reload_exported(dir.path());
    let samples = [text.as_str(), "the king shall speak.\n\n", "  café — naïve  ", "unseen words: zebra 42 →", ""];
    assert_same_ids_and_text(&tokenizer, &theirs, &samples);
}

#[test]
fn hf_export_keeps_special_tokens_and_drops_truncation_and_added_bos() {
    let text = corpus(1500, 22);
    let work = TempDir::new("export-hf-source");
    let tokenizer = hf_tokenizer_with_specials(&text, &work);
    let source = tokenizers::Tokenizer::from_file(work.join("model-tokenizer.json")).unwrap();
    assert_eq!(source.encode("the king", true).unwrap().get_ids()[0], source.token_to_id("<s>").unwrap());
    let dir = TempDir::new("export-hf");
    tokenizer.export_hf(dir.path(), 2048).unwrap();

    let exported = read_json(&dir.join(HF_TOKENIZER_FILE));
    let mut expected = read_json(&work.join("model-tokenizer.json"));
    assert!(!expected["truncation"].is_null() && expected["post_processor"]["type"] == "Sequence");
    expected["truncation"] = Value::Null;
    expected["post_processor"] = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
    });
    assert_eq!(exported, expected, "only truncation and the BOS step are gone");

    let theirs = reload_exported(dir.path());
    assert_eq!(theirs.get_vocab_size(true), tokenizer.vocab_size());
    let samples = [text.as_str(), "short"];
    assert_same_ids_and_text(&tokenizer, &theirs, &samples);
    // A special token's spelling inside a text is text to rustspeed (only `prepare` puts special tokens into a
    // stream); `transformers` does the same with `split_special_tokens=True`.
    let mut splitting = reload_exported(dir.path());
    splitting.set_encode_special_tokens(true);
    for text in ["the king<|endoftext|>the queen", "<s><pad><|im_start|> shall speak"] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(splitting.encode(text, false).unwrap().get_ids(), ids, "{text:?}");
        assert!(!ids.iter().any(|&id| theirs.id_to_token(id).is_some_and(|t| t.starts_with('<') && t.len() > 2)));
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
    assert!(tokenizer.encode(&text).unwrap().len() > 8, "the long sample is longer than the dropped truncation");

    let config = read_json(&dir.join(HF_TOKENIZER_CONFIG_FILE));
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(config["model_max_length"], 2048);
    assert_eq!(config["bos_token"], "<s>");
    assert_eq!(config["eos_token"], "<|endoftext|>");
    assert_eq!(config["pad_token"], "<pad>");
    assert_eq!(config["additional_special_tokens"], serde_json::json!(["<|im_start|>"]));
    assert!(config.get("unk_token").is_none(), "no invented token: the model names no unk_token");
}

#[test]
fn hf_export_keeps_a_post_processor_that_adds_no_token_byte_for_byte() {
    let text = corpus(800, 25);
    let work = TempDir::new("export-hf-bytelevel-source");
    Tokenizer::train_bpe(&text, 280).unwrap().save(work.path()).unwrap();
    let mut base = tokenizers::Tokenizer::from_file(work.join(HF_TOKENIZER_FILE)).unwrap();
    base.with_post_processor(Some(ByteLevel::default().trim_offsets(true)));
    let path = work.join("model-tokenizer.json");
    base.save(&path, true).unwrap();
    let tokenizer = Tokenizer::from_hf_json(&path).unwrap();
    let dir = TempDir::new("export-hf-bytelevel");
    tokenizer.export_hf(dir.path(), 64).unwrap();
    assert_eq!(std::fs::read(dir.join(HF_TOKENIZER_FILE)).unwrap(), std::fs::read(&path).unwrap());
}

#[test]
fn tokenizer_config_names_the_class_and_length_and_keeps_spaces() {
    let text = corpus(800, 23);
    for tokenizer in [Tokenizer::char_from_corpus(&text), Tokenizer::train_bpe(&text, 280).unwrap()] {
        let dir = TempDir::new("export-config");
        tokenizer.export_hf(dir.path(), 512).unwrap();
        let config = read_json(&dir.join(HF_TOKENIZER_CONFIG_FILE));
        let kind = tokenizer.kind();
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast", "{kind}");
        assert_eq!(config["model_max_length"], 512, "{kind}");
        assert_eq!(config["clean_up_tokenization_spaces"], false, "{kind}");
        let specials: Vec<&String> =
            config.as_object().unwrap().keys().filter(|key| key.ends_with("_tokens")).collect();
        let named: Vec<&String> = config.as_object().unwrap().keys().filter(|key| key.ends_with("_token")).collect();
        assert!(specials.is_empty(), "{kind}: no other special tokens, got {specials:?}");
        assert_eq!(named, ["eos_token"], "{kind}: the end-of-text token is the one special token");
        assert_eq!(config["eos_token"], EOT_TOKEN, "{kind}");
    }
}

#[test]
fn from_hf_dir_reads_back_every_export() {
    let text = corpus(1000, 24);
    let work = TempDir::new("from-dir-source");
    for tokenizer in [
        Tokenizer::char_from_corpus(&text),
        Tokenizer::train_bpe(&text, 300).unwrap(),
        hf_tokenizer_with_specials(&text, &work),
    ] {
        let dir = TempDir::new("from-dir");
        tokenizer.export_hf(dir.path(), 128).unwrap();
        let loaded = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(loaded.kind(), "hf");
        assert_eq!(loaded.vocab_size(), tokenizer.vocab_size(), "{}", tokenizer.kind());
        let ids = tokenizer.encode(&text).unwrap();
        assert_eq!(loaded.encode(&text).unwrap(), ids, "{}", tokenizer.kind());
        assert_eq!(loaded.decode(&ids).unwrap(), text, "{}", tokenizer.kind());
    }
}

#[test]
fn from_hf_dir_names_what_is_missing() {
    let dir = TempDir::new("from-dir-missing");
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.join(HF_TOKENIZER_FILE).display().to_string()) && err.contains("missing"), "{err}");
    let not_dir = dir.join("nope");
    let err = Tokenizer::from_hf_dir(&not_dir).unwrap_err().to_string();
    assert!(err.contains(&not_dir.display().to_string()) && err.contains("not a directory"), "{err}");
    std::fs::write(dir.join(HF_TOKENIZER_FILE), "{not json").unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.join(HF_TOKENIZER_FILE).display().to_string()), "{err}");
}

#[test]
fn export_into_a_missing_directory_names_the_file() {
    let dir = TempDir::new("export-missing");
    let target = dir.join("absent");
    let err = Tokenizer::char_from_corpus("ab").export_hf(&target, 8).unwrap_err().to_string();
    assert!(err.contains(&target.join(HF_TOKENIZER_FILE).display().to_string()), "{err}");
}
