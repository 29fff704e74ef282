//! Models built on the `mp-autograd` tape.
//!
//! - [`gpt`]: a GPT with the HF GPT-2 architecture and parameter names, its parameters in one
//!   flat FP32 arena, safetensors load/save, GPT-2 initialisation.
//! - [`llama`]: HF `LlamaForCausalLM` (RMSNorm, rotary position embeddings, SwiGLU,
//!   grouped-query attention, tied or untied head) over the same kind of arenas.
//! - [`common`]: what they share: the device [`Batch`], HF safetensors in and out of a layout,
//!   the tape over the arenas.

pub mod common;
pub mod gpt;
pub mod llama;

pub use common::Batch;
pub use gpt::{Gpt, GptConfig};
pub use llama::{Llama, LlamaConfig};
