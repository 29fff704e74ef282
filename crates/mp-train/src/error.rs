//! The error type of mp-train: every failure names the file, field or value at fault.

use std::path::PathBuf;

/// A `Result` whose error is a [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// What can go wrong configuring, running, saving or loading a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or folder could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"reading"`, `"writing"`, `"renaming"`, ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A config file that is not valid TOML or does not match the schema (unknown field,
    /// wrong type); the message is the parser's, which names the field.
    #[error("config {source_name}: {msg}")]
    ConfigParse {
        /// Where the config came from (a path, or `"--set"` overrides).
        source_name: String,
        /// The parser's message.
        msg: String,
    },
    /// A config field whose value is out of range or inconsistent with another.
    #[error("config field `{field}` = {value}: {reason}")]
    InvalidField {
        /// Dotted field name (`"model.n_head"`).
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--set key=value` override that cannot be applied.
    #[error("--set {arg:?}: {reason}")]
    BadOverride {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A training data file that cannot be used.
    #[error("data {path}: {reason}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The output folder already holds data and the run is neither a resume nor `--overwrite`.
    #[error(
        "output folder {path} is not empty; choose another --out, resume with --resume, or pass --overwrite"
    )]
    OutDirNotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// Another process holds the run folder's lock.
    #[error(
        "run folder {path} is in use by another mp-train (process {holder}); wait for it to \
         end, or choose another --out"
    )]
    Locked {
        /// The folder.
        path: PathBuf,
        /// The process id written in the lock file by its holder.
        holder: String,
    },
    /// A checkpoint folder that is missing files, truncated or corrupt.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint written for another model configuration than the one asked for.
    #[error(
        "checkpoint {path} was written for another model: {field} is {checkpoint} there but {config} in this run's config"
    )]
    ModelMismatch {
        /// The checkpoint folder.
        path: PathBuf,
        /// The differing model field.
        field: &'static str,
        /// Its value in the checkpoint.
        checkpoint: String,
        /// Its value in the config.
        config: String,
    },
    /// Recording or differentiating the model on the autograd tape failed.
    #[error("autograd: {0}")]
    Autograd(#[from] mp_autograd::AutogradError),
    /// The optimizer rejected its config or state.
    #[error("optimizer: {0}")]
    Optim(#[from] mp_optim::OptimError),
    /// The loss scaler rejected its config, state or call order.
    #[error("loss scaler: {0}")]
    Scaler(#[from] mp_scaler::ScalerError),
    /// The compute backend failed (including `NotCompiled` / `NoDevice` for cuda and wgpu).
    #[error("backend: {0}")]
    Kernel(#[from] mp_kernels::KernelError),
    /// A plot could not be drawn or written.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP) after finishing a step.
    #[error(
        "interrupted by a signal after step {step}{}",
        match checkpoint {
            Some(c) => format!(
                "; saved {}; resume with `mp-train train --resume {}`",
                c.display(),
                c.display()
            ),
            None => String::new(),
        }
    )]
    Interrupted {
        /// The last finished step.
        step: u64,
        /// The checkpoint written for it (none when the run writes no checkpoints).
        checkpoint: Option<PathBuf>,
    },
    /// Training diverged: the loss or the weights became non-finite, or every step of the last
    /// hundred overflowed.
    #[error("training diverged at step {step}: {what} ({precision}); {hint}")]
    Diverged {
        /// The step.
        step: u64,
        /// What went non-finite (`"loss is NaN"`, `"the weights are no longer finite"`, ...).
        what: String,
        /// The precision of the run.
        precision: String,
        /// What may help, for this precision.
        hint: String,
    },
    /// A line of a JSON-lines file that could not be parsed (not the torn last line of an
    /// interrupted write, which is dropped with a warning).
    #[error("{path}: line {line}: {source}")]
    JsonLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A collective of a data-parallel run failed (see [`crate::dist`]).
    #[error("distributed: {0}")]
    Dist(#[from] mp_dist::DistError),
    /// Another rank of a data-parallel run failed; its error, as it reported it.
    #[error("rank {rank} of {world} failed: {msg}")]
    RankFailed {
        /// The (lowest) failing rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// Its error message.
        msg: String,
    },
    /// A JSON file that could not be parsed or written.
    #[error("json {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl TrainError {
    /// An [`TrainError::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| TrainError::Io { op, path, source }
    }

    /// An [`TrainError::InvalidField`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        TrainError::InvalidField {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// A [`TrainError::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
