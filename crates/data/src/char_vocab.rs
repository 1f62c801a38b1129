//! The character-level tokenizer: one token per Unicode scalar value, ids in code-point order, then the special
//! tokens (the end-of-text token), which encoding never produces.

use std::collections::{BTreeSet, HashMap};

use crate::eot::EOT_TOKEN;
use crate::error::DataError;

#[derive(Clone, Debug)]
pub(crate) struct CharVocab {
    /// `chars[id]` is the character of token `id`; sorted by code point, no repeats.
    chars: Vec<char>,
    /// Token `chars.len() + i` is `specials[i]`; a vocabulary saved before special tokens existed has none.
    specials: Vec<String>,
    ids: HashMap<char, u32>,
}

impl CharVocab {
    /// The sorted set of the corpus's characters, so the same corpus always gives the same ids, and the
    /// end-of-text token after them.
    pub(crate) fn from_corpus(text: &str) -> CharVocab {
        let set: BTreeSet<char> = text.chars().collect();
        CharVocab::from_char_set(set)
    }

    /// The characters of `set` in code-point order, then the end-of-text token.
    pub(crate) fn from_char_set(set: BTreeSet<char>) -> CharVocab {
        CharVocab::from_unique(set.into_iter().collect(), vec![EOT_TOKEN.to_string()])
    }

    /// A vocabulary read back from disk: any order is accepted (ids are positions), repeats are not, and a
    /// special token must be longer than one character (or it could not be told from a character's token).
    pub(crate) fn from_chars(chars: Vec<char>, specials: Vec<String>) -> Result<CharVocab, String> {
        let mut seen = HashMap::with_capacity(chars.len());
        for (id, &ch) in chars.iter().enumerate() {
            if let Some(first) = seen.insert(ch, id) {
                return Err(format!("character {ch:?} appears twice in the vocabulary (ids {first} and {id})"));
            }
        }
        if let Some(bad) = specials.iter().find(|special| special.chars().count() < 2) {
            return Err(format!("special token {bad:?} is not longer than one character"));
        }
        Ok(CharVocab::from_unique(chars, specials))
    }

    fn from_unique(chars: Vec<char>, specials: Vec<String>) -> CharVocab {
        let ids = chars.iter().enumerate().map(|(id, &ch)| (ch, id as u32)).collect();
        CharVocab { chars, specials, ids }
    }

    /// Number of ids: characters and special tokens.
    pub(crate) fn len(&self) -> usize {
        self.chars.len() + self.specials.len()
    }

    pub(crate) fn chars(&self) -> &[char] {
        &self.chars
    }

    pub(crate) fn specials(&self) -> &[String] {
        &self.specials
    }

    /// The id of special token `token`, if the vocabulary has it.
    pub(crate) fn special_id(&self, token: &str) -> Option<u32> {
        self.specials.iter().position(|special| special == token).map(|i| (self.chars.len() + i) as u32)
    }

    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::with_capacity(text.len());
        for (char_index, ch) in text.chars().enumerate() {
            match self.ids.get(&ch) {
                Some(&id) => ids.push(id),
                None => return Err(unknown_char(text, char_index, ch)),
            }
        }
        Ok(ids)
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        let mut text = String::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            let id_index = id as usize;
            match self.chars.get(id_index) {
                Some(&ch) => text.push(ch),
                None => match self.specials.get(id_index.wrapping_sub(self.chars.len())) {
                    Some(special) => text.push_str(special),
                    None => {
                        return Err(DataError::TokenOutOfVocab {
                            context: "decode (char tokenizer)".to_string(),
                            position,
                            id,
                            vocab_size: self.len(),
                        })
                    }
                },
            }
        }
        Ok(text)
    }
}

/// Builds the error for the first unknown character, with its 1-based line and column (in characters).
fn unknown_char(text: &str, char_index: usize, ch: char) -> DataError {
    let mut line = 1;
    let mut column = 1;
    for previous in text.chars().take(char_index) {
        if previous == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    DataError::UnknownChar { ch, char_index, line, column }
}
