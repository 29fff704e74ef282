//! The error type of mp-dtype.

/// What can go wrong converting between formats.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DTypeError {
    /// A format name that is not one of [`crate::DType::ALL`].
    #[error(
        "unknown dtype name {0:?} (expected one of f32/fp32/float32, f16/fp16/float16, \
         bf16/bfloat16, f8e4m3/float8_e4m3fn, f8e5m2/float8_e5m2)"
    )]
    UnknownName(String),
    /// Source and destination slices hold different numbers of elements.
    #[error("{op}: length mismatch: source has {src} elements, destination has {dst}")]
    LengthMismatch {
        /// The conversion that was asked for.
        op: &'static str,
        /// Elements in the source.
        src: usize,
        /// Elements in the destination.
        dst: usize,
    },
    /// A byte buffer whose length is not a multiple of the element size.
    #[error("{op}: {bytes} bytes is not a whole number of {dtype} elements")]
    RaggedBytes {
        /// The conversion that was asked for.
        op: &'static str,
        /// The byte length.
        bytes: usize,
        /// The format.
        dtype: crate::DType,
    },
    /// A conversion path was forced that this CPU cannot run.
    #[error("{op}: instruction-set path {isa} is not available on this CPU")]
    IsaUnavailable {
        /// The conversion that was asked for.
        op: &'static str,
        /// The path's name.
        isa: &'static str,
    },
}
