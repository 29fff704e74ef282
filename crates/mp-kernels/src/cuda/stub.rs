//! The CUDA backend's stand-in when the `cuda` feature is off (see [`crate::stub`]).

/// Options of the CUDA backend (accepted and ignored without the `cuda` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Let FP32 GEMMs use TF32 tensor cores.
    pub allow_tf32: bool,
}

crate::stub::not_compiled_backend!(
    CudaBackend,
    CudaBuffer,
    CudaIndex,
    CudaOptions,
    "cuda",
    "cuda"
);
