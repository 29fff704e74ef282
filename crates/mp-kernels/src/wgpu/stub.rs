//! The wgpu backend's stand-in when the `wgpu` feature is off (see [`crate::stub`]).

/// Options of the wgpu backend (accepted and ignored without the `wgpu` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Caps the bytes of one storage binding below the adapter's limit.
    pub max_binding_bytes: Option<u64>,
}

crate::stub::not_compiled_backend!(
    WgpuBackend,
    WgpuBuffer,
    WgpuIndex,
    WgpuOptions,
    "wgpu",
    "wgpu"
);
