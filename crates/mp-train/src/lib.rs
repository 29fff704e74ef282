//! # mp-train: the training loop
//!
//! Will hold: the GPT (HF GPT-2 names and layout) and MLP models, data (byte-level tokens and
//! an embedded generated corpus), the training loop configured like HF `TrainingArguments`,
//! checkpoints, metrics, plots, the `mp-train` CLI and the precision study.
