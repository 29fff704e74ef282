//! # mp-train: the training loop, the CLI, checkpoints and the precision study
//!
//! What a user runs: `mp-train train` trains a GPT (HF GPT-2 names and layout) on byte-level
//! text or on the embedded arithmetic corpus, in fp32, bf16, fp16 (with loss scaling) or pure
//! bf16 with stochastic rounding, on any backend of `mp-kernels`, and writes a run folder:
//! `metrics.jsonl`, `eval.jsonl`, plots, and HF-loadable checkpoints.
//!
//! Code map:
//! - [`config`]: the TOML run configuration (`TrainingArguments`);
//! - [`data`]: byte-level datasets, the arithmetic corpus, batches;
//! - [`schedule`]: the learning-rate schedule;
//! - [`metrics`]: JSON-lines records;
//! - [`plot`]: PNG charts;
//! - [`fsutil`]: atomic writes.

pub mod config;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod schedule;

pub use config::{BackendKind, Precision, TrainConfig};
pub use error::{Result, TrainError};
