//! Helpers shared by the integration tests: a tiny config and scratch folders.

use mp_train::config::{ModelConfig, TrainConfig};
use std::path::PathBuf;

/// A config small enough to train a few steps in well under a second.
pub fn tiny(steps: u64) -> TrainConfig {
    let mut c = TrainConfig {
        max_steps: steps,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 2,
        logging_steps: 1,
        eval_steps: 0,
        eval_batches: 2,
        eval_problems: 8,
        save_steps: 0,
        save_total_limit: 0,
        threads: 2,
        model: ModelConfig {
            n_layer: 1,
            n_embd: 32,
            n_head: 2,
            n_positions: 32,
            vocab_size: 256,
        },
        ..TrainConfig::default()
    };
    c.data.problems = 2000;
    c
}

/// The `--set` arguments of [`tiny`] for the binary.
pub fn tiny_args(steps: u64) -> Vec<String> {
    [
        format!("max_steps={steps}"),
        "batch_size=4".into(),
        "learning_rate=1e-2".into(),
        "warmup_steps=2".into(),
        "logging_steps=1".into(),
        "eval_steps=0".into(),
        "eval_batches=2".into(),
        "eval_problems=8".into(),
        "save_steps=0".into(),
        "threads=2".into(),
        "model.n_layer=1".into(),
        "model.n_embd=32".into(),
        "model.n_head=2".into(),
        "model.n_positions=32".into(),
        "data.problems=2000".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// A fresh, empty scratch folder unique to `name` and this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-train-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}
