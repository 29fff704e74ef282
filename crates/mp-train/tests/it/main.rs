//! Integration tests of mp-train.
mod golden;
mod gpt;
mod llama;
mod llama_runs;

mod bad_input;
mod checkpoint;
mod common;
#[cfg(feature = "mpi")]
mod distributed;
mod fault;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu_training;
mod health;
mod precisions;
mod resume;
mod study;
mod tape_ops;
mod text;
