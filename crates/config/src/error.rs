//! The one error type of this crate. Every variant names where the problem is (a file path or a dotted key path
//! such as `zero_optimization.stage3_prefetch_bucket_size`) and what rule was broken; parsing never panics on
//! user input.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file is missing, unreadable, or not UTF-8.
    Read { path: PathBuf, reason: String },
    /// The text is not JSON. `file` is set when the text came from [`crate::DeepSpeedConfig::from_file`].
    Syntax { file: Option<PathBuf>, line: usize, column: usize, message: String },
    /// One object holds the same key twice (DeepSpeed: "Duplicate keys in DeepSpeed config").
    DuplicateKey { path: String },
    /// A key rustspeed does not know, with the closest known key of the same object (when one is close) and a
    /// hint (when the key is a known DeepSpeed key that belongs elsewhere).
    UnknownKey { path: String, suggestion: Option<String>, hint: Option<String> },
    /// A value of the wrong type or out of range; `value` is the JSON text as written, `rule` what is expected.
    InvalidValue { path: String, value: String, rule: String },
    /// A required key is absent; `context` says why it is required.
    MissingKey { path: String, context: String },
    /// A DeepSpeed feature rustspeed does not implement.
    Unsupported { path: String, reason: String },
    /// A value or combination DeepSpeed itself rejects; `message` is DeepSpeed's own text where it has one.
    Rejected { path: String, message: String },
    /// Inconsistent batch sizes (semantics §1.2): DeepSpeed's message, then the arithmetic that failed.
    BatchSize { message: String, hint: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, reason } => {
                write!(f, "cannot read DeepSpeed config `{}`: {reason}", path.display())
            }
            ConfigError::Syntax { file, line, column, message } => {
                if let Some(file) = file {
                    write!(f, "`{}`: ", file.display())?;
                }
                write!(f, "invalid JSON at line {line}, column {column}: {message}")
            }
            ConfigError::DuplicateKey { path } => {
                write!(f, "Duplicate keys in DeepSpeed config: `{path}` appears more than once in its object")
            }
            ConfigError::UnknownKey { path, suggestion, hint } => {
                write!(f, "unknown key `{path}`")?;
                if let Some(suggestion) = suggestion {
                    write!(f, "; did you mean `{suggestion}`?")?;
                }
                if let Some(hint) = hint {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            ConfigError::InvalidValue { path, value, rule } => write!(f, "`{path}` {rule}, got {value}"),
            ConfigError::MissingKey { path, context } => write!(f, "`{path}` is required {context}"),
            ConfigError::Unsupported { path, reason } => write!(f, "`{path}` is not supported by rustspeed: {reason}"),
            ConfigError::Rejected { path, message } => write!(f, "`{path}`: {message}"),
            ConfigError::BatchSize { message, hint } => write!(f, "{message}\nhint: {hint}"),
        }
    }
}

impl std::error::Error for ConfigError {}
