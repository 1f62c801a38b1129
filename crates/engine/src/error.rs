//! Errors of the engine: configuration it cannot run, misuse of its phases, checkpoints.

use rustspeed_nn::ModelError;
use std::fmt;

#[derive(Debug)]
pub enum EngineError {
    /// A configuration the engine does not run (yet), or an inconsistent one.
    Unsupported(String),
    Config(String),
    Model(ModelError),
    /// A call out of order, e.g. `step` before `backward`.
    Phase {
        called: &'static str,
        expected: &'static str,
        state: &'static str,
    },
    /// Mixed precision cannot go on, e.g. fp16 overflows at the minimum loss scale.
    Precision(String),
    /// The loss went NaN or infinite.
    NonFinite {
        step: u64,
        what: String,
    },
    /// `--resume` without a checkpoint.
    NoCheckpoint(String),
    /// A checkpoint that is missing pieces, corrupted, or does not fit the model.
    Checkpoint(String),
    Manifest(String),
    Io(String),
    /// A collective failed: a peer died, stalled, or timed out.
    Comm(rustspeed_comm::CommError),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Unsupported(m) => write!(f, "not supported: {m}"),
            EngineError::Config(m) => write!(f, "configuration error: {m}"),
            EngineError::Model(e) => write!(f, "{e}"),
            EngineError::Phase { called, expected, state } => {
                write!(f, "engine.{called}() called {state}; it must follow {expected}")
            }
            EngineError::Precision(m) => write!(f, "{m}"),
            EngineError::NonFinite { step, what } => write!(f, "step {step}: {what} is not finite"),
            EngineError::NoCheckpoint(m) => write!(f, "{m}"),
            EngineError::Checkpoint(m) => write!(f, "{m}"),
            EngineError::Manifest(m) => write!(f, "checkpoint manifest: {m}"),
            EngineError::Io(m) => write!(f, "I/O error: {m}"),
            EngineError::Comm(e) => write!(f, "communication failed: {e}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<rustspeed_comm::CommError> for EngineError {
    fn from(e: rustspeed_comm::CommError) -> Self {
        EngineError::Comm(e)
    }
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        EngineError::Model(e)
    }
}
