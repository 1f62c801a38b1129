//! The OpenAI completions API's wire format: a request body parsed and checked field by field (each error names
//! the field, as OpenAI's `param`), and the JSON of responses, stream chunks and errors. No HTTP here.

use crate::generate::{MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY};
use rustspeed_engine::generate::{FinishReason, SamplingParams};
use serde_json::{json, Map, Value};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// OpenAI's default `max_tokens` for completions.
pub const DEFAULT_MAX_TOKENS: usize = 16;
/// OpenAI's limits: temperature in [0, 2], at most 4 stop strings.
const MAX_TEMPERATURE: f64 = 2.0;
const MAX_STOP_STRINGS: usize = 4;

/// An error as OpenAI returns it: an HTTP status and `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: Some(code) }
    }

    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError { code: Some(code), ..self }
    }

    pub fn to_json(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// What the server allows, for checking a request.
pub struct Limits {
    /// The served model's name; a request's `model` must be it.
    pub model_name: String,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Token rows of the model: a prompt given as token ids must stay below.
    pub vocab_size: usize,
}

/// A prompt as text, or as token ids (OpenAI accepts both).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// A checked completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt: Prompt,
    /// Everything but `stop_tokens`, which come from the tokenizer.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
}

/// Parses and checks a `/v1/completions` body.
pub fn parse_completion(body: &[u8], limits: &Limits) -> Result<Completion, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(400, "invalid_request_error", "invalid_json", format!("the request body is not valid JSON: {e}"))
    })?;
    let Value::Object(body) = value else {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "invalid_json",
            format!("the request body must be a JSON object, not {}", describe(&value)),
        ));
    };
    let fields = Fields(&body);
    if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        let hint = rustspeed_config::closest(unknown, KNOWN_FIELDS.iter().copied())
            .map_or(String::new(), |c| format!(" (did you mean {c}?)"));
        return Err(ApiError::invalid(unknown, format!("unrecognized request argument: {unknown}{hint}")));
    }
    if let Some(model) = fields.string("model")? {
        if model != limits.model_name {
            return Err(ApiError {
                status: 404,
                message: format!("the model `{model}` does not exist; this server serves `{}`", limits.model_name),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
            });
        }
    }
    let prompt = prompt(fields.get("prompt"), limits.vocab_size)?;
    fields.unsupported("n", |v| v.as_u64() == Some(1), "one completion per request; send several requests")?;
    fields.unsupported("best_of", |v| v.as_u64() == Some(1), "one candidate per request")?;
    fields.unsupported("echo", |v| v == &Value::Bool(false), "the prompt is not repeated in the text")?;
    fields.unsupported("logprobs", |v| v.as_u64() == Some(0), "log probabilities are not returned")?;
    fields.unsupported("suffix", |v| v.as_str() == Some(""), "insertion is not implemented")?;
    fields.unsupported(
        "logit_bias",
        |v| v.as_object().is_some_and(Map::is_empty),
        "logit biases are not implemented",
    )?;
    for penalty in ["presence_penalty", "frequency_penalty"] {
        fields.unsupported(penalty, |v| v.as_f64() == Some(0.0), "only 0; repetition_penalty is the penalty here")?;
    }

    let max_tokens =
        fields.integer("max_tokens", 1..=limits.max_tokens as u64)?.map_or(DEFAULT_MAX_TOKENS, |n| n as usize);
    let temperature = fields.number("temperature", 0.0..=MAX_TEMPERATURE)?.unwrap_or(1.0);
    let top_p = fields.number("top_p", 0.0..=1.0)?.unwrap_or(1.0);
    // vLLM's spelling of "all" (-1) is accepted beside 0.
    let top_k = match fields.get("top_k") {
        Some(v) if v.as_i64() == Some(-1) => 0,
        _ => fields.integer("top_k", 0..=u32::MAX as u64)?.unwrap_or(0) as usize,
    };
    let penalty_range = MIN_REPETITION_PENALTY as f64..=MAX_REPETITION_PENALTY as f64;
    let repetition_penalty = fields.number("repetition_penalty", penalty_range)?.unwrap_or(1.0);
    let seed = match fields.integer("seed", 0..=u64::MAX)? {
        Some(seed) => seed,
        None => random_u64(),
    };
    let stop = stop(fields.get("stop"))?;
    let stream = fields.boolean("stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None => false,
        Some(Value::Object(options)) => {
            let options = Fields(options);
            if let Some(key) = options.0.keys().find(|k| *k != "include_usage") {
                return Err(ApiError::invalid(&format!("stream_options.{key}"), "unrecognized stream option"));
            }
            options
                .boolean("include_usage")
                .map_err(|e| ApiError { param: Some("stream_options.include_usage".into()), ..e })?
                .unwrap_or(false)
        }
        Some(other) => {
            return Err(ApiError::invalid("stream_options", format!("expected an object, got {}", describe(other))))
        }
    };
    let sampling = SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_k,
        top_p: top_p as f32,
        repetition_penalty: repetition_penalty as f32,
        seed,
        stop_tokens: Vec::new(),
    };
    Ok(Completion { prompt, sampling, stop, stream, include_usage })
}

/// Every field a request may have.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "echo",
    "n",
    "best_of",
    "logprobs",
    "suffix",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    // Accepted and ignored: an end-user id for OpenAI's abuse monitoring.
    "user",
];

/// A request's fields; a `null` is an absent field (clients send `null` for "the default").
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::invalid(name, format!("{name}: expected a string, got {}", describe(other)))),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(ApiError::invalid(name, format!("{name}: expected true or false, got {}", describe(other))))
            }
        }
    }

    /// A whole number in `range` (a negative one is out of every range here).
    fn integer(&self, name: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let Value::Number(n) = v else {
            return Err(ApiError::invalid(name, format!("{name}: expected an integer, got {}", describe(v))));
        };
        let out_of_range = || {
            ApiError::invalid(
                name,
                format!("{name}: {n} is out of range; it must be between {} and {}", range.start(), range.end()),
            )
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(x), _) if range.contains(&x) => Ok(Some(x)),
            (Some(_), _) | (None, Some(_)) => Err(out_of_range()),
            (None, None) => Err(ApiError::invalid(name, format!("{name}: expected an integer, got {n}"))),
        }
    }

    /// A number in `range`.
    fn number(&self, name: &str, range: RangeInclusive<f64>) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let Some(x) = v.as_f64() else {
            return Err(ApiError::invalid(name, format!("{name}: expected a number, got {}", describe(v))));
        };
        match range.contains(&x) {
            true => Ok(Some(x)),
            false => Err(ApiError::invalid(
                name,
                format!("{name}: {v} is out of range; it must be between {} and {}", range.start(), range.end()),
            )),
        }
    }

    /// An OpenAI field this server does not implement: absent, null, or the value that means "off" is fine.
    fn unsupported(&self, name: &str, off: impl Fn(&Value) -> bool, why: &str) -> Result<(), ApiError> {
        match self.get(name) {
            Some(v) if !off(v) => Err(ApiError::invalid(name, format!("{name}: {v} is not supported ({why})"))),
            _ => Ok(()),
        }
    }
}

/// `prompt`: a string, or token ids, or an array holding one of either.
fn prompt(value: Option<&Value>, vocab_size: usize) -> Result<Prompt, ApiError> {
    let bad = |message: String| ApiError::invalid("prompt", format!("prompt: {message}"));
    let several = || bad("several prompts in one request are not supported; send one request per prompt".to_string());
    let prompt = match value {
        None => return Err(bad("missing; give the text to continue".to_string())),
        Some(Value::String(text)) => Prompt::Text(text.clone()),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => return Err(bad("an empty array; give the text to continue".to_string())),
            [Value::String(text)] => Prompt::Text(text.clone()),
            [Value::Array(ids)] => Prompt::Tokens(token_ids(ids, vocab_size).map_err(bad)?),
            [Value::Number(_), ..] => Prompt::Tokens(token_ids(items, vocab_size).map_err(bad)?),
            [Value::String(_) | Value::Array(_), _, ..] => return Err(several()),
            [other, ..] => return Err(bad(format!("expected strings or token ids, got {}", describe(other)))),
        },
        Some(other) => return Err(bad(format!("expected a string, got {}", describe(other)))),
    };
    match &prompt {
        Prompt::Text(t) if t.is_empty() => Err(bad("empty; give at least one token of text".to_string())),
        _ => Ok(prompt),
    }
}

fn token_ids(items: &[Value], vocab_size: usize) -> Result<Vec<u32>, String> {
    if items.is_empty() {
        return Err("no token ids; give at least one".to_string());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(id) if id < vocab_size as u64 => Ok(id as u32),
            _ => Err(format!("token [{i}] is {v}; token ids are integers from 0 to {}", vocab_size - 1)),
        })
        .collect()
}

/// `stop`: a string or up to four strings, none empty.
fn stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = |message: String| ApiError::invalid("stop", format!("stop: {message}"));
    let stops = match value {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP_STRINGS {
                return Err(bad(format!("{} strings; at most {MAX_STOP_STRINGS}", items.len())));
            }
            let strings = items.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| describe(v)));
            strings.collect::<Result<Vec<_>, _>>().map_err(|got| bad(format!("expected strings, got {got}")))?
        }
        Some(other) => return Err(bad(format!("expected a string or an array of strings, got {}", describe(other)))),
    };
    match stops.iter().any(String::is_empty) {
        true => Err(bad("an empty stop string would end the text before it begins".to_string())),
        false => Ok(stops),
    }
}

/// A JSON value as an error message shows it: its type, and the value when short.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let text = v.to_string();
    match text.chars().count() <= 40 {
        true => format!("{kind} ({text})"),
        false => kind.to_string(),
    }
}

/// 64 random bits: std's per-process random hash keys, mixed with a counter and the clock. For seeds and ids,
/// which need to differ, not to be secret.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A new completion id (`cmpl-` and 24 hex digits, as OpenAI's are unique strings of that form).
pub fn completion_id() -> String {
    format!("cmpl-{:016x}{:08x}", random_u64(), random_u64() as u32)
}

/// The fields every completion object and stream chunk carries.
pub struct Header<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// The response to a request without `stream`.
pub fn completion_json(h: &Header, text: &str, finish: FinishReason, usage: Usage) -> Value {
    json!({
        "id": h.id,
        "object": "text_completion",
        "created": h.created,
        "model": h.model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish.openai_name()}],
        "usage": usage.to_json(),
    })
}

/// One chunk of a streamed response: new text, and the finish reason on the last.
pub fn chunk_json(h: &Header, text: &str, finish: Option<FinishReason>) -> Value {
    json!({
        "id": h.id,
        "object": "text_completion",
        "created": h.created,
        "model": h.model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish.map(FinishReason::openai_name)}],
    })
}

/// `stream_options.include_usage`'s last chunk: no choices, the token counts.
pub fn usage_chunk_json(h: &Header, usage: Usage) -> Value {
    json!({
        "id": h.id,
        "object": "text_completion",
        "created": h.created,
        "model": h.model,
        "choices": [],
        "usage": usage.to_json(),
    })
}

/// `GET /v1/models`.
pub fn models_json(name: &str, created: u64) -> Value {
    json!({"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "rustspeed"}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { model_name: "m".into(), max_tokens: 100, vocab_size: 50 }
    }

    fn parse(body: &str) -> Result<Completion, ApiError> {
        parse_completion(body.as_bytes(), &limits())
    }

    fn error(body: &str) -> ApiError {
        parse(body).expect_err(body)
    }

    #[test]
    fn defaults_are_openai_s() {
        let c = parse(r#"{"model": "m", "prompt": "hi", "seed": 3, "stop": null, "user": "u"}"#).unwrap();
        assert_eq!(c.prompt, Prompt::Text("hi".into()));
        let s = c.sampling;
        assert_eq!((s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed), (16, 1.0, 1.0, 0, 3));
        assert!(!c.stream && c.stop.is_empty());
        let c = parse(r#"{"prompt": [[1, 2]], "stop": ["a", "b"], "stream": true, "top_k": -1}"#).unwrap();
        assert_eq!((c.prompt, c.stop.len(), c.stream), (Prompt::Tokens(vec![1, 2]), 2, true));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: &[(&str, u16, &str, &str)] = &[
            (r#"{"prompt": "a""#, 400, "", "not valid JSON"),
            ("[1]", 400, "", "must be a JSON object"),
            (r#"{"prompt": "a", "max_tokens": "5"}"#, 400, "max_tokens", "expected an integer, got a string (\"5\")"),
            (r#"{"prompt": "a", "max_tokens": 0}"#, 400, "max_tokens", "between 1 and 100"),
            (r#"{"prompt": "a", "max_tokens": 101}"#, 400, "max_tokens", "between 1 and 100"),
            (r#"{"prompt": "a", "temperature": 2.5}"#, 400, "temperature", "between 0 and 2"),
            (r#"{"prompt": "a", "n": 2}"#, 400, "n", "n: 2 is not supported (one completion per request"),
            (r#"{"prompt": "a", "echo": true}"#, 400, "echo", "echo"),
            (r#"{"prompt": ["a", "b"]}"#, 400, "prompt", "several prompts"),
            (r#"{"prompt": [1, 99]}"#, 400, "prompt", "token [1] is 99"),
            (r#"{"prompt": ""}"#, 400, "prompt", "empty"),
            (r#"{"max_tokens": 3}"#, 400, "prompt", "missing"),
            (r#"{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}"#, 400, "stop", "at most 4"),
            (r#"{"prompt": "a", "stop": ""}"#, 400, "stop", "empty stop string"),
            (r#"{"prompt": "a", "temprature": 1}"#, 400, "temprature", "did you mean temperature?"),
            (r#"{"prompt": "a", "model": "gpt-4"}"#, 404, "model", "`gpt-4` does not exist"),
            (r#"{"prompt": "a", "stream_options": {"x": 1}}"#, 400, "stream_options.x", "unrecognized"),
        ];
        for &(body, status, param, needle) in cases {
            let e = error(body);
            assert_eq!(e.status, status, "{body}: {e:?}");
            assert_eq!(e.param.as_deref().unwrap_or(""), param, "{body}: {e:?}");
            assert!(e.message.contains(needle), "{body}: {e:?}");
        }
    }
}
