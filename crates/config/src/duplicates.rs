//! Duplicate-key detection. `serde_json` keeps the last of two equal keys silently; DeepSpeed refuses them
//! ("Duplicate keys in DeepSpeed config"), and so does rustspeed, because the first value is usually the one the
//! user meant to change. The scan runs only on text `serde_json` has already accepted, so it may assume valid JSON.

use std::collections::HashSet;

use crate::reader::join;

/// The key path of the first key that appears twice in one object, if any.
pub(crate) fn first_duplicate_key(text: &str) -> Option<String> {
    let mut scanner = Scanner { bytes: text.as_bytes(), text, pos: 0 };
    scanner.value("").err()
}

struct Scanner<'t> {
    bytes: &'t [u8],
    text: &'t str,
    pos: usize,
}

/// `Err` carries the path of a duplicate key and stops the scan.
type Scan = Result<(), String>;

impl Scanner<'_> {
    fn skip_whitespace(&mut self) {
        while self.bytes.get(self.pos).is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn value(&mut self, path: &str) -> Scan {
        self.skip_whitespace();
        match self.bytes.get(self.pos) {
            Some(b'{') => self.object(path),
            Some(b'[') => self.array(path),
            Some(b'"') => {
                self.string();
                Ok(())
            }
            _ => {
                while self.bytes.get(self.pos).is_some_and(|b| !matches!(b, b',' | b']' | b'}')) {
                    self.pos += 1;
                }
                Ok(())
            }
        }
    }

    /// Skips a string literal and returns its decoded text.
    fn string(&mut self) -> String {
        let start = self.pos;
        self.pos += 1;
        while let Some(&b) = self.bytes.get(self.pos) {
            self.pos += if b == b'\\' { 2 } else { 1 };
            if b == b'"' {
                break;
            }
        }
        let literal = self.text.get(start..self.pos).unwrap_or_default();
        serde_json::from_str(literal).unwrap_or_else(|_| literal.to_string())
    }

    fn object(&mut self, path: &str) -> Scan {
        self.pos += 1;
        let mut seen = HashSet::new();
        loop {
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b'"') => {}
                Some(b',') => {
                    self.pos += 1;
                    continue;
                }
                _ => {
                    self.pos += 1;
                    return Ok(());
                }
            }
            let key = self.string();
            let key_path = join(path, &key);
            if !seen.insert(key) {
                return Err(key_path);
            }
            self.skip_whitespace();
            self.pos += 1;
            self.value(&key_path)?;
        }
    }

    fn array(&mut self, path: &str) -> Scan {
        self.pos += 1;
        let mut index = 0;
        loop {
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b']') | None => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b',') => {
                    self.pos += 1;
                    index += 1;
                }
                _ => self.value(&format!("{path}[{index}]"))?,
            }
        }
    }
}
