//! Models built on the `mp-autograd` tape.
//!
//! - [`gpt`]: a GPT with the HF GPT-2 architecture and parameter names, its parameters in one
//!   flat FP32 arena, safetensors load/save, GPT-2 initialisation.

pub mod gpt;

pub use gpt::{Batch, Gpt, GptConfig};
