//! The character-level tokenizer: one token per Unicode scalar value, ids in code-point order.

use std::collections::{BTreeSet, HashMap};

use crate::error::DataError;

#[derive(Clone, Debug)]
pub(crate) struct CharVocab {
    /// `chars[id]` is the character of token `id`; sorted by code point, no repeats.
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

impl CharVocab {
    /// The sorted set of the corpus's characters, so the same corpus always gives the same ids.
    pub(crate) fn from_corpus(text: &str) -> CharVocab {
        let set: BTreeSet<char> = text.chars().collect();
        CharVocab::from_sorted_unique(set.into_iter().collect())
    }

    /// A vocabulary read back from disk: any order is accepted (ids are positions), repeats are not.
    pub(crate) fn from_chars(chars: Vec<char>) -> Result<CharVocab, String> {
        let mut seen = HashMap::with_capacity(chars.len());
        for (id, &ch) in chars.iter().enumerate() {
            if let Some(first) = seen.insert(ch, id) {
                return Err(format!("character {ch:?} appears twice in the vocabulary (ids {first} and {id})"));
            }
        }
        Ok(CharVocab::from_sorted_unique(chars))
    }

    fn from_sorted_unique(chars: Vec<char>) -> CharVocab {
        let ids = chars.iter().enumerate().map(|(id, &ch)| (ch, id as u32)).collect();
        CharVocab { chars, ids }
    }

    pub(crate) fn len(&self) -> usize {
        self.chars.len()
    }

    pub(crate) fn chars(&self) -> &[char] {
        &self.chars
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
            match self.chars.get(id as usize) {
                Some(&ch) => text.push(ch),
                None => {
                    return Err(DataError::TokenOutOfVocab {
                        context: "decode (char tokenizer)".to_string(),
                        position,
                        id,
                        vocab_size: self.chars.len(),
                    })
                }
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
