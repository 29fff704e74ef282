//! # mp-train: the training loop, the CLI, checkpoints and the precision study
//!
//! What a user runs: `mp-train train` trains a GPT (HF GPT-2 names and layout) on byte-level
//! text or on the embedded arithmetic corpus, in fp32, bf16, fp16 (with loss scaling) or pure
//! bf16 with stochastic rounding, on any backend of `mp-kernels`, and writes a run folder:
//! `metrics.jsonl`, `eval.jsonl`, plots, and HF-loadable checkpoints.
//!
//! Code map:
//! - [`config`]: the TOML run configuration (HF `TrainingArguments`);
//! - [`data`]: datasets (text files, token shards, the arithmetic corpus), batches;
//! - [`tokenizer`]: bytes or a BPE tokenizer (`tokenizers`); [`shards`]: llm.c token shards;
//! - [`model`]: the GPT (HF GPT-2 names and layout) on the `mp-autograd` tape;
//! - [`train`]: [`train::Trainer`], one optimizer step, evaluation, generation;
//! - [`dist`]: data-parallel training over `mp-dist` (DDP and ZeRO-1, MPI);
//! - [`run`]: the run folder, the loop with logging, evaluation and checkpoints, the summary;
//! - [`checkpoint`]: atomic checkpoint folders, verification, resume;
//! - [`compare`]: the precision study; [`health`]: per-tensor precision health;
//! - [`device`]: the one place that names concrete backends;
//! - [`tools`]: eval, sample, inspect;
//! - [`schedule`], [`metrics`] (with [`tensorboard`] event files), [`memory`], [`plot`],
//!   [`fsutil`].

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod shards;
pub mod tensorboard;
pub mod tokenizer;
pub mod tools;
pub mod train;

pub use config::{BackendKind, Precision, TrainConfig};
pub use error::{Result, TrainError};
