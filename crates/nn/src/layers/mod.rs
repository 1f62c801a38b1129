//! The layers rustspeed's models are made of.

mod embedding;
mod gpt_block;
mod head;
mod layernorm;
mod llama_block;
mod lstm;
mod rmsnorm;

pub use embedding::Embedding;
pub use gpt_block::GptBlock;
pub use head::{HeadOutput, LmHead};
pub use layernorm::LayerNorm;
pub use llama_block::{LlamaBlock, LlamaDims};
pub use lstm::Lstm;
pub use rmsnorm::RmsNorm;
