//! The error type of mp-optim.

use mp_dtype::DType;
use mp_kernels::KernelError;

/// What can go wrong configuring, stepping, saving or loading an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyper-parameter is out of its domain.
    #[error("{optimizer}: invalid {field} = {value}: {msg}")]
    InvalidConfig {
        /// `"adamw"` or `"sgd"`.
        optimizer: &'static str,
        /// The offending field.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What the field requires.
        msg: &'static str,
    },
    /// Parameter groups that overlap or leave the arena.
    #[error("{optimizer}: invalid parameter groups: {msg}")]
    InvalidGroups {
        /// The optimizer.
        optimizer: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A buffer handed to `step` does not have the arena's length.
    #[error("{optimizer} step: {what} has {got} elements, the optimizer was built for {want}")]
    Length {
        /// The optimizer.
        optimizer: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The arena length.
        want: usize,
    },
    /// A buffer handed to `step` has a dtype the optimizer cannot use there.
    #[error("{optimizer} step: {what} has dtype {dtype}: {msg}")]
    DType {
        /// The optimizer.
        optimizer: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Its dtype.
        dtype: DType,
        /// What is allowed.
        msg: &'static str,
    },
    /// A saved state that does not fit this optimizer.
    #[error("{optimizer} load_state: {msg}")]
    StateMismatch {
        /// The optimizer.
        optimizer: &'static str,
        /// What does not fit.
        msg: String,
    },
    /// A state file could not be read or written.
    #[error("optimizer state {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file does not parse (safetensors or JSON).
    #[error("optimizer state: {0}")]
    Format(String),
    /// The backend failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A `Result` whose error is an [`OptimError`].
pub type Result<T, E = OptimError> = std::result::Result<T, E>;
