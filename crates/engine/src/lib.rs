//! rustspeed's training engine.
//!
//! [`Engine`] is built once from a model and a DeepSpeed config; [`setup::Setup::choose`] is the one place where
//! the config's optimizer, schedule, batch sizes, precision and ZeRO stage become the engine's choices. The
//! engine follows DeepSpeed's `forward` / `backward` / `step` contract and returns a [`StepReport`] per optimizer
//! step. [`checkpoint`] writes and verifies checkpoint directories; [`persist`] maps the engine's state onto
//! them; [`generate`] samples text.

mod backward;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod generate;
mod grads;
pub mod memory;
pub mod model_spec;
pub mod optimizer;
pub mod persist;
pub mod precision;
mod reduce;
pub mod setup;
pub mod sharded;
pub mod zero;

pub use engine::{Counters, Engine, EnginePhase, StepReport, StepTimings};
pub use error::EngineError;
pub use precision::{Precision, StorageType};
