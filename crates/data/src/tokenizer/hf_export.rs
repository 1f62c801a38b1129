//! A tokenizer in the form a Hugging Face model directory holds it (`tokenizer.json` and
//! `tokenizer_config.json`), so that `transformers.AutoTokenizer.from_pretrained(dir)` encodes text to exactly
//! the ids rustspeed's tokenizer gives and decodes them back to the same text; and the tokenizer of such a
//! directory.
//!
//! rustspeed encodes a corpus without special tokens (no BOS/EOS) and decodes without cleaning up spaces, so the
//! exported files make `transformers` do the same; see [`Tokenizer::export_hf`]. One difference no file can
//! express: rustspeed encodes a special token's spelling inside a text as text (`prepare` alone puts the
//! end-of-text token between documents), as `transformers` does with `split_special_tokens=True`.

use std::path::Path;

use serde_json::{json, Map, Value};
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, PostProcessor, SplitDelimiterBehavior};

use super::{Inner, Tokenizer, HF_TOKENIZER_FILE};
use crate::char_vocab::CharVocab;
use crate::error::{io_error, DataError};

/// Name of the file with the `transformers` settings of the tokenizer (class, special tokens, maximum length).
pub const HF_TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Matches any one character, newlines included. A character class rather than `.` with a dot-all flag, whose
/// spelling differs between the regex engines that run a `tokenizer.json` (fancy-regex here, Oniguruma in Python).
const ANY_CHAR_REGEX: &str = r"[\s\S]";

/// The `unk_token` the char tokenizer's WordLevel model names. Every vocabulary entry is one character, so this
/// longer string is never in it, and the model fails on an unknown character (`Missing [UNK] token`) as
/// rustspeed's char tokenizer does, instead of mapping it to some id.
const CHAR_UNK_TOKEN: &str = "<unk>";

/// Conventional spellings of the special-token roles `transformers` knows, most common first. A special token of
/// a `tokenizer.json` has no declared role (except the model's `unk_token`), so a role is given only to a token
/// spelled one of these ways; other special tokens become `additional_special_tokens`.
const ROLE_SPELLINGS: &[(&str, &[&str])] = &[
    ("bos_token", &["<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]"]),
    ("eos_token", &["</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[EOS]"]),
    ("unk_token", &["<unk>", "[UNK]", "<|unk|>"]),
    ("pad_token", &["<pad>", "[PAD]", "<|pad|>", "<|padding|>"]),
    ("sep_token", &["[SEP]", "<sep>"]),
    ("cls_token", &["[CLS]", "<cls>"]),
    ("mask_token", &["[MASK]", "<mask>"]),
];

impl Tokenizer {
    /// Writes `tokenizer.json` and `tokenizer_config.json` into the existing directory `dir`, the tokenizer part
    /// of a Hugging Face model directory; `model_max_length` is the model's context length.
    ///
    /// - `bpe`/`hf`: the tokenizer's own `tokenizer.json` byte for byte, unless it declares something that would
    ///   make `tok(text)` in `transformers` differ from rustspeed's ids; then the `tokenizers` crate re-serializes
    ///   it with that removed and nothing else changed:
    ///   - truncation and padding: rustspeed encodes text whole and unpadded, `transformers` would cut every text
    ///     at the declared length;
    ///   - a post-processor step that adds special tokens to a single text (e.g. a template putting BOS first):
    ///     rustspeed encodes without special tokens, so the model never saw them, and `transformers` ignores
    ///     `add_bos_token`/`add_eos_token` in `tokenizer_config.json` when a `tokenizer.json` is present, so the
    ///     config cannot turn it off. Steps that add no token (e.g. `ByteLevel` offset trimming) are kept.
    /// - `char`: an equivalent tokenizer built with the `tokenizers` crate: a `WordLevel` model whose vocabulary
    ///   is the char list (id = position) followed by the special tokens (the end-of-text token, declared a special
    ///   added token), a `Split` pre-tokenizer that isolates every character (newlines
    ///   included), no normalizer, no post-processor, and a `Fuse` decoder that joins tokens without spaces. A
    ///   character outside the vocabulary is an error there as here (the model's `unk_token` is not in the
    ///   vocabulary), not a silent id. Before writing, the built tokenizer is checked to give every character its
    ///   rustspeed id and to decode the ids back; a mismatch is an error naming the character.
    ///
    /// `tokenizer_config.json`: `PreTrainedTokenizerFast`, `model_max_length`, `clean_up_tokenization_spaces:
    /// false` (the cleanup deletes spaces before punctuation, which rustspeed's decode keeps) and the inputs a
    /// causal model takes (`input_ids`, `attention_mask`; transformers 4 adds `token_type_ids` otherwise).
    /// Special tokens: only those the `tokenizer.json` declares (`added_tokens` with `special: true`); a token
    /// gets a role when it is the model's `unk_token` or is spelled conventionally for the role
    /// (`ROLE_SPELLINGS`), the others are listed as `additional_special_tokens`. No special token is invented:
    /// `transformers` would add a declared token missing from the vocabulary as a new id past the model's
    /// embedding.
    ///
    /// Checked with transformers 5: `AutoTokenizer` loads these files as `PreTrainedTokenizerFast` for a
    /// `config.json` of model type `gpt2`, `llama` or one it does not know. For a few model types (e.g. `qwen2`,
    /// `phi3`) it ignores `tokenizer_class` and rebuilds the tokenizer its own way, which changes the char export.
    pub fn export_hf(&self, dir: &Path, model_max_length: usize) -> Result<(), DataError> {
        let json_path = dir.join(HF_TOKENIZER_FILE);
        let tokenizer_json = match &self.inner {
            Inner::Char(vocab) => char_tokenizer_json(vocab, &json_path)?,
            Inner::Hf { tokenizer, .. } => exact_tokenizer_json(tokenizer.json(), &json_path)?,
        };
        let parsed: Value = serde_json::from_str(&tokenizer_json).map_err(|e| DataError::Tokenizer {
            action: "export the tokenizer",
            path: Some(json_path.clone()),
            message: format!("the tokenizer's own tokenizer.json does not parse: {e}"),
        })?;
        let special_tokens = special_token_config(&parsed);
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": false,
            "model_input_names": ["input_ids", "attention_mask"],
        });
        config.as_object_mut().expect("a JSON object literal").extend(special_tokens);
        std::fs::write(&json_path, tokenizer_json).map_err(io_error("write", &json_path))?;
        let config_path = dir.join(HF_TOKENIZER_CONFIG_FILE);
        let config_text = serde_json::to_string_pretty(&config).expect("a JSON value always serializes");
        std::fs::write(&config_path, config_text).map_err(io_error("write", &config_path))
    }

    /// The tokenizer of a Hugging Face model directory (its `tokenizer.json`), of kind `hf`. Like every
    /// rustspeed tokenizer it encodes without special tokens, whatever the directory's `tokenizer_config.json`
    /// says.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, DataError> {
        let path = dir.join(HF_TOKENIZER_FILE);
        if !dir.is_dir() {
            return Err(DataError::BadFile {
                path: dir.to_path_buf(),
                problem: "not a directory: expected a Hugging Face model directory holding tokenizer.json".to_string(),
            });
        }
        if !path.is_file() {
            return Err(DataError::BadFile {
                path,
                problem: "missing: the Hugging Face model directory has no tokenizer.json (a directory with only \
                          a slow tokenizer's files can be converted with transformers: \
                          AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
                    .to_string(),
            });
        }
        Tokenizer::from_hf_json(&path)
    }
}

/// The `tokenizer.json` of the Hugging Face tokenizer equivalent to `vocab` (see [`Tokenizer::export_hf`]),
/// checked against `vocab` on every character.
fn char_tokenizer_json(vocab: &CharVocab, path: &Path) -> Result<String, DataError> {
    let error = |message: String| DataError::Tokenizer {
        action: "export the char tokenizer as",
        path: Some(path.to_path_buf()),
        message,
    };
    let characters = vocab.chars().iter().map(char::to_string);
    let model = WordLevel::builder()
        .vocab(characters.chain(vocab.specials().iter().cloned()).enumerate().map(|(id, t)| (t, id as u32)).collect())
        .unk_token(CHAR_UNK_TOKEN.to_string())
        .build()
        .map_err(|e| error(e.to_string()))?;
    let split = Split::new(SplitPattern::Regex(ANY_CHAR_REGEX.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| error(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(Fuse::new()));
    // The special tokens (the end-of-text token) are in the model's vocabulary at their ids; declared special,
    // `transformers` knows them (as `eos_token`) and never splits them into characters.
    let specials: Vec<AddedToken> =
        vocab.specials().iter().map(|token| AddedToken::from(token.clone(), true)).collect();
    tokenizer.add_special_tokens(&specials);
    let json = tokenizer.to_string(true).map_err(|e| error(e.to_string()))?;

    // Check the file as any reader will see it: reloaded, every character has its id and the ids decode back.
    let reloaded = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| error(e.to_string()))?;
    let all_chars: String = vocab.chars().iter().collect();
    let ids = reloaded.encode(all_chars.as_str(), false).map_err(|e| error(e.to_string()))?.get_ids().to_vec();
    let expected: Vec<u32> = (0..vocab.chars().len() as u32).collect();
    if ids != expected {
        let (id, ch) = vocab
            .chars()
            .iter()
            .enumerate()
            .find(|&(id, _)| ids.get(id) != Some(&(id as u32)))
            .map_or((ids.len(), '?'), |(id, &ch)| (id, ch));
        return Err(error(format!(
            "character {ch:?} (id {id}) does not encode to its own id in the Hugging Face form, so its ids would \
             not match rustspeed's"
        )));
    }
    let decoded = reloaded.decode(&ids, false).map_err(|e| error(e.to_string()))?;
    if decoded != all_chars {
        return Err(error("the Hugging Face form does not decode the vocabulary back to its characters".to_string()));
    }
    Ok(json)
}

/// `original` unchanged when `transformers` encodes with it as rustspeed does; otherwise the `tokenizers`
/// crate's serialization of it (the crate writes what it reads) without truncation, padding and the
/// post-processor steps that add special tokens (see [`Tokenizer::export_hf`]).
fn exact_tokenizer_json(original: &str, path: &Path) -> Result<String, DataError> {
    let error = |message: String| DataError::Tokenizer {
        action: "prepare the exported",
        path: Some(path.to_path_buf()),
        message: format!("the tokenizer's own tokenizer.json: {message}"),
    };
    let mut tokenizer = tokenizers::Tokenizer::from_bytes(original.as_bytes()).map_err(|e| error(e.to_string()))?;
    let adds_tokens = tokenizer.get_post_processor().is_some_and(|post| post.added_tokens(false) > 0);
    if tokenizer.get_truncation().is_none() && tokenizer.get_padding().is_none() && !adds_tokens {
        return Ok(original.to_string());
    }
    tokenizer.with_truncation(None).map_err(|e| error(e.to_string()))?;
    tokenizer.with_padding(None);
    if adds_tokens {
        let kept = tokenizer.get_post_processor().and_then(without_added_tokens);
        tokenizer.with_post_processor(kept);
    }
    tokenizer.to_string(true).map_err(|e| error(e.to_string()))
}

/// `post` without the steps that add tokens to a single sequence; `None` when nothing else is left.
fn without_added_tokens(post: &PostProcessorWrapper) -> Option<PostProcessorWrapper> {
    if post.added_tokens(false) == 0 {
        return Some(post.clone());
    }
    let PostProcessorWrapper::Sequence(steps) = post else { return None };
    let mut kept: Vec<PostProcessorWrapper> = steps.as_ref().iter().filter_map(without_added_tokens).collect();
    match kept.len() {
        0 => None,
        1 => kept.pop(),
        _ => Some(PostProcessorWrapper::Sequence(PostSequence::new(kept))),
    }
}

/// The special-token entries of `tokenizer_config.json` for a `tokenizer.json` (see [`Tokenizer::export_hf`]):
/// role keys (`eos_token`, ...) and `additional_special_tokens`, each a token's content.
fn special_token_config(tokenizer_json: &Value) -> Map<String, Value> {
    let mut specials: Vec<(u64, &str)> = tokenizer_json
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|token| token.get("special").and_then(Value::as_bool) == Some(true))
        .filter_map(|token| Some((token.get("id")?.as_u64()?, token.get("content")?.as_str()?)))
        .collect();
    specials.sort_unstable();
    let mut config = Map::new();
    let mut has_role = vec![false; specials.len()];
    let mut assign = |role: &str, content: &str, config: &mut Map<String, Value>| {
        if config.contains_key(role) {
            return;
        }
        if let Some(index) = specials.iter().position(|&(_, special)| special == content) {
            if !has_role[index] {
                has_role[index] = true;
                config.insert(role.to_string(), Value::String(content.to_string()));
            }
        }
    };
    if let Some(unk) = model_unk_token(tokenizer_json) {
        assign("unk_token", unk, &mut config);
    }
    for (role, spellings) in ROLE_SPELLINGS {
        for spelling in *spellings {
            assign(role, spelling, &mut config);
        }
    }
    let additional: Vec<Value> = specials
        .iter()
        .zip(&has_role)
        .filter(|(_, &taken)| !taken)
        .map(|(&(_, content), _)| Value::String(content.to_string()))
        .collect();
    if !additional.is_empty() {
        config.insert("additional_special_tokens".to_string(), Value::Array(additional));
    }
    config
}

/// The unknown token the model names: `unk_token` (BPE, WordPiece, WordLevel) or the piece at `unk_id` (Unigram).
fn model_unk_token(tokenizer_json: &Value) -> Option<&str> {
    let model = tokenizer_json.get("model")?;
    if let Some(unk) = model.get("unk_token").and_then(Value::as_str) {
        return Some(unk);
    }
    let unk_id = usize::try_from(model.get("unk_id")?.as_u64()?).ok()?;
    model.get("vocab")?.get(unk_id)?.get(0)?.as_str()
}
