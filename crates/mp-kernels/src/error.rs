//! The error type of mp-kernels.

use mp_dtype::DType;

/// A `Result` whose error is a [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// What can go wrong asking a backend for memory or work.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The backend was not compiled into this build.
    #[error("the {backend} backend is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// Backend name (`"cuda"`, `"wgpu"`).
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend is compiled in but no usable device or driver was found.
    #[error("{backend}: no device: {reason}")]
    NoDevice {
        /// Backend name.
        backend: &'static str,
        /// What is missing (driver library, adapter, feature).
        reason: String,
    },
    /// An op was given a dtype it does not support.
    #[error("{op} on {device}: unsupported dtype {dtype}{detail}")]
    UnsupportedDType {
        /// The op.
        op: &'static str,
        /// The device.
        device: String,
        /// The offending dtype.
        dtype: DType,
        /// Extra context (may be empty, else starts with ": ").
        detail: String,
    },
    /// Shapes, lengths or offsets do not fit together.
    #[error("{op} on {device}: shape error: {msg}")]
    Shape {
        /// The op.
        op: &'static str,
        /// The device.
        device: String,
        /// What does not fit.
        msg: String,
    },
    /// The device or its driver reported an error.
    #[error("{op} on {device}: device error: {msg}")]
    Device {
        /// The op.
        op: &'static str,
        /// The device.
        device: String,
        /// The driver's message.
        msg: String,
    },
    /// A dtype conversion failed.
    #[error(transparent)]
    DType(#[from] mp_dtype::DTypeError),
}
