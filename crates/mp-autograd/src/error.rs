//! The error type of mp-autograd.

use mp_dtype::DType;
use mp_kernels::KernelError;

/// A `Result` whose error is an [`AutogradError`].
pub type Result<T, E = AutogradError> = std::result::Result<T, E>;

/// What can go wrong recording ops on a tape or running the backward pass.
#[derive(Debug, thiserror::Error)]
pub enum AutogradError {
    /// A backend kernel failed (the message names the op, dtype and device).
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The shapes given to an op do not fit together.
    #[error("{op} on {device}: shape error: {msg}")]
    Shape {
        /// The tape op.
        op: &'static str,
        /// The backend's device name.
        device: String,
        /// What does not fit.
        msg: String,
    },
    /// An op was given a tensor of a dtype it cannot take.
    #[error("{op} on {device}: unsupported dtype {dtype}: {msg}")]
    DType {
        /// The tape op.
        op: &'static str,
        /// The backend's device name.
        device: String,
        /// The offending dtype.
        dtype: DType,
        /// Why it is not accepted.
        msg: String,
    },
    /// A parameter was asked for but the tape was given no parameter arena, or the range lies
    /// outside it.
    #[error("param on {device}: {msg}")]
    Param {
        /// The backend's device name.
        device: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor handle that is not a tensor of this tape (another tape's, or one that does
    /// not exist).
    #[error("{op} on {device}: bad tensor handle: {msg}")]
    Handle {
        /// The tape op.
        op: &'static str,
        /// The backend's device name.
        device: String,
        /// What is wrong.
        msg: String,
    },
    /// A [`crate::GradHook`] given to [`crate::Tape::backward_with`] failed (a collective
    /// over the finished gradients, say).
    #[error("backward on {device}: gradient hook: {source}")]
    Hook {
        /// The backend's device name.
        device: String,
        /// The hook's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backward pass was started from a tensor that is not a loss, or a loss was used as
    /// the input of another op.
    #[error("backward on {device}: {msg}")]
    Backward {
        /// The backend's device name.
        device: String,
        /// What is wrong.
        msg: String,
    },
}
