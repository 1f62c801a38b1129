//! Typed reading of one JSON object of the config, with key paths in every error and a check, at the end, that
//! every key present was one the block knows.
//!
//! Conventions shared by all blocks: a key set to `null` is the same as a key left out; inside sub-blocks
//! (`auto_means_default`) the string `"auto"` is also the same as a key left out, as DeepSpeed's pydantic models
//! do for Hugging Face compatibility; integers must be written as JSON integers (`8`, not `8.0` or `8e0`).

use std::cell::RefCell;

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// Longest rendering of a value inside an error message; longer values are cut with an ellipsis.
const MAX_SHOWN_VALUE_CHARS: usize = 80;

/// Renders a value as JSON text for an error message (`"1.0"` for a string, `8.0` for a float).
pub(crate) fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_SHOWN_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(MAX_SHOWN_VALUE_CHARS).collect();
    format!("{cut}…")
}

/// Joins a block path and a key into a dotted key path.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The range a floating-point value must lie in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bound {
    Any,
    AtLeast(f64),
    Above(f64),
    /// Closed interval `[lo, hi]`.
    Within(f64, f64),
    /// Half-open interval `[lo, hi)`.
    WithinOpen(f64, f64),
}

impl Bound {
    fn holds(self, x: f64) -> bool {
        match self {
            Bound::Any => x.is_finite(),
            Bound::AtLeast(lo) => x >= lo,
            Bound::Above(lo) => x > lo,
            Bound::Within(lo, hi) => (lo..=hi).contains(&x),
            Bound::WithinOpen(lo, hi) => (lo..hi).contains(&x),
        }
    }

    fn rule(self) -> String {
        match self {
            Bound::Any => "must be a number".to_string(),
            Bound::AtLeast(lo) => format!("must be a number ≥ {lo}"),
            Bound::Above(lo) => format!("must be a number > {lo}"),
            Bound::Within(lo, hi) => format!("must be a number between {lo} and {hi}"),
            Bound::WithinOpen(lo, hi) => format!("must be a number in [{lo}, {hi})"),
        }
    }
}

fn int_rule(min: i64, max: i64) -> String {
    match (min, max) {
        (min, i64::MAX) => format!("must be an integer ≥ {min}"),
        (min, max) => format!("must be an integer between {min} and {max}"),
    }
}

/// Checks that `value` is a JSON integer in `[min, max]`; `path` names it in the error.
pub(crate) fn int_value(path: &str, value: &Value, min: i64, max: i64) -> Result<i64, ConfigError> {
    let invalid = |rule: String| ConfigError::InvalidValue { path: path.to_string(), value: show(value), rule };
    let Value::Number(number) = value else { return Err(invalid(int_rule(min, max))) };
    if let Some(x) = number.as_i64() {
        return if (min..=max).contains(&x) { Ok(x) } else { Err(invalid(int_rule(min, max))) };
    }
    if number.as_u64().is_some() {
        return Err(invalid(int_rule(min, max)));
    }
    // Whole numbers written as floats (`5e8`, `8.0`) are integers: DeepSpeed's own documentation writes bucket
    // sizes that way. Only values that f64 holds exactly (|x| <= 2^53) qualify.
    let x = number.as_f64().unwrap_or(f64::NAN);
    if x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0 && (min as f64..=max as f64).contains(&x) {
        return Ok(x as i64);
    }
    Err(invalid(int_rule(min, max)))
}

/// Checks that `value` is a JSON number within `bound`.
pub(crate) fn f64_value(path: &str, value: &Value, bound: Bound) -> Result<f64, ConfigError> {
    match value.as_f64() {
        Some(x) if bound.holds(x) => Ok(x),
        _ => Err(ConfigError::InvalidValue { path: path.to_string(), value: show(value), rule: bound.rule() }),
    }
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions) between two lowercased keys.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best =
                (d[(i - 1) * width + j] + 1).min(d[i * width + j - 1] + 1).min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate closest to `unknown`, if it is within a third of `unknown`'s length (a typo, not another word).
pub fn closest<'c>(unknown: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = unknown.chars().count() / 3;
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(unknown, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// One JSON object of the config being read. Every typed getter records the key as known; [`Block::finish`]
/// then reports the first key present that no getter asked for.
pub(crate) struct Block<'a> {
    path: String,
    map: &'a Map<String, Value>,
    auto_means_default: bool,
    known: RefCell<Vec<&'static str>>,
}

impl<'a> Block<'a> {
    /// The top-level object: `"auto"` is not accepted here (Hugging Face Transformers resolves it before
    /// DeepSpeed sees the config; DeepSpeed itself would fail on it).
    pub(crate) fn top(map: &'a Map<String, Value>) -> Self {
        Block { path: String::new(), map, auto_means_default: false, known: RefCell::new(Vec::new()) }
    }

    /// A sub-block at `path`; `example` shows the expected shape in the error when `value` is not an object.
    pub(crate) fn nested(path: String, value: &'a Value, example: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Block { path, map, auto_means_default: true, known: RefCell::new(Vec::new()) }),
            other => Err(ConfigError::InvalidValue {
                path,
                value: show(other),
                rule: format!("must be an object such as `{example}`"),
            }),
        }
    }

    pub(crate) fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The keys present, in the order of the text.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &'a String> {
        self.map.keys()
    }

    /// The value of `key` exactly as written (records the key as known; no `null`/`"auto"` treatment).
    pub(crate) fn raw(&self, key: &'static str) -> Option<&'a Value> {
        self.known.borrow_mut().push(key);
        self.map.get(key)
    }

    /// The value of any key, without recording it as known (for blocks that are checked key by key).
    pub(crate) fn raw_any(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// The value of `key`, or `None` when it is absent, `null`, or `"auto"` inside a sub-block. `expected`
    /// describes the value for the error given for `"auto"` at the top level.
    pub(crate) fn value(&self, key: &'static str, expected: &str) -> Result<Option<&'a Value>, ConfigError> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text == "auto" => {
                if self.auto_means_default {
                    Ok(None)
                } else {
                    Err(ConfigError::InvalidValue {
                        path: self.path_of(key),
                        value: "\"auto\"".to_string(),
                        rule: format!(
                            "must be {expected}: \"auto\" means \"the default\" only inside sub-blocks; at the top level \
                             Hugging Face Transformers fills it in, so give the value or leave the key out"
                        ),
                    })
                }
            }
            Some(value) => Ok(Some(value)),
        }
    }

    pub(crate) fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.value(key, "true or false")? {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(ConfigError::InvalidValue {
                path: self.path_of(key),
                value: show(other),
                rule: "must be true or false".to_string(),
            }),
        }
    }

    pub(crate) fn bool_or(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.opt_bool(key)?.unwrap_or(default))
    }

    pub(crate) fn opt_f64(&self, key: &'static str, bound: Bound) -> Result<Option<f64>, ConfigError> {
        match self.value(key, "a number")? {
            None => Ok(None),
            Some(value) => f64_value(&self.path_of(key), value, bound).map(Some),
        }
    }

    pub(crate) fn f64_or(&self, key: &'static str, default: f64, bound: Bound) -> Result<f64, ConfigError> {
        Ok(self.opt_f64(key, bound)?.unwrap_or(default))
    }

    pub(crate) fn opt_i64(&self, key: &'static str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.value(key, "an integer")? {
            None => Ok(None),
            Some(value) => int_value(&self.path_of(key), value, min, max).map(Some),
        }
    }

    pub(crate) fn i64_or(&self, key: &'static str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        Ok(self.opt_i64(key, min, max)?.unwrap_or(default))
    }

    /// A non-negative integer at least `min`. JSON integers above `i64::MAX` are rejected as out of range.
    pub(crate) fn opt_u64(&self, key: &'static str, min: u64) -> Result<Option<u64>, ConfigError> {
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        Ok(self.opt_i64(key, min, i64::MAX)?.map(|x| x.unsigned_abs()))
    }

    pub(crate) fn u64_or(&self, key: &'static str, default: u64, min: u64) -> Result<u64, ConfigError> {
        Ok(self.opt_u64(key, min)?.unwrap_or(default))
    }

    pub(crate) fn opt_usize(&self, key: &'static str, min: usize) -> Result<Option<usize>, ConfigError> {
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        Ok(self.opt_i64(key, min, max)?.map(|x| usize::try_from(x).unwrap_or(usize::MAX)))
    }

    pub(crate) fn opt_string(&self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.value(key, "a string")? {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(ConfigError::InvalidValue {
                path: self.path_of(key),
                value: show(other),
                rule: "must be a string".to_string(),
            }),
        }
    }

    /// A string that must be one of `allowed` (compared ignoring case when `ignore_case`); returns the allowed
    /// spelling.
    pub(crate) fn opt_choice(
        &self,
        key: &'static str,
        allowed: &[&'static str],
        ignore_case: bool,
    ) -> Result<Option<&'static str>, ConfigError> {
        let Some(text) = self.opt_string(key).map_err(|_| self.choice_error(key, allowed))? else { return Ok(None) };
        let matches = |name: &&&'static str| if ignore_case { name.eq_ignore_ascii_case(text) } else { **name == text };
        allowed.iter().find(matches).map(|name| Some(*name)).ok_or_else(|| self.choice_error(key, allowed))
    }

    fn choice_error(&self, key: &'static str, allowed: &[&'static str]) -> ConfigError {
        let listed: Vec<String> = allowed.iter().map(|name| format!("\"{name}\"")).collect();
        ConfigError::InvalidValue {
            path: self.path_of(key),
            value: self.map.get(key).map(show).unwrap_or_default(),
            rule: format!("must be one of {}", listed.join(", ")),
        }
    }

    /// The sub-block under `key` (absent or `null` → `None`).
    pub(crate) fn block(&self, key: &'static str, example: &str) -> Result<Option<Block<'a>>, ConfigError> {
        match self.value(key, "an object")? {
            None => Ok(None),
            Some(value) => Block::nested(self.path_of(key), value, example).map(Some),
        }
    }

    /// Fails on the first key present that no getter asked for, suggesting the closest known key of this block
    /// and, from `hint`, where a misplaced key belongs.
    pub(crate) fn finish_with(self, hint: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let known = self.known.borrow();
        match self.map.keys().find(|key| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) => Err(ConfigError::UnknownKey {
                path: self.path_of(key),
                suggestion: closest(key, known.iter().copied()).map(str::to_string),
                hint: hint(key),
            }),
        }
    }

    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        self.finish_with(|_| None)
    }
}
