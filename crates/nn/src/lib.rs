//! rustspeed's layers and models over flat parameter buffers.
//!
//! A model ([`Model`]) is an ordered list of [`Layer`]s plus a fused output head and loss ([`layers::LmHead`]).
//! Parameters are declared by the layers into a [`ParamLayout`] (one flat buffer, state-dict names); the caller
//! owns the parameter and gradient buffers. [`models`] holds the shipped families (`gpt`, `lstm`) and presets.
//! Shape letters (`B`, `T`, `C`, `H`, `V`, `NH`, `L`, `N`) are defined in `rustspeed_kernels`.

pub mod decode;
pub mod error;
pub mod gradcheck;
pub mod hf_config;
pub mod hf_weights;
pub mod io;
pub mod layer;
pub mod layers;
pub mod model;
pub mod models;
pub mod param;

pub use error::ModelError;
pub use layer::{ActivationFloats, Batch, DecodeRows, GradWrites, Layer, LayerCache, Scratch};
pub use model::{ActivationEstimate, Model, ParamSource, Pass, Phase};
pub use models::{preset, GptConfig, LlamaConfig, LstmConfig, ModelConfig, Preset, PRESETS};
pub use param::{Flat, FlatMut, Init, ParamId, ParamLayout, ParamSpec, Window, WindowMut};
