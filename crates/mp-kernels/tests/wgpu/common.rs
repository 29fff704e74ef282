//! Shared fixtures: one wgpu backend per process (or a loud skip), and from
//! `tests/conformance/common.rs` the CPU oracle and the helpers that run the same closure on
//! both and compare.

use std::sync::OnceLock;

use mp_kernels::wgpu::WgpuBackend;

#[path = "../conformance/common.rs"]
mod shared;
pub use shared::*;

/// The backend under test, for messages.
pub const BACKEND: &str = "wgpu";

/// The process-wide wgpu backend, or `None` (after printing why) when there is no device.
pub fn gpu(test: &str) -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    match GPU.get_or_init(|| WgpuBackend::new().map_err(|e| e.to_string())) {
        Ok(be) => Some(be),
        Err(reason) => {
            skip_or_fail(test, reason);
            None
        }
    }
}

/// Prints the loud skip line, or panics when `MP_REQUIRE_WGPU=1` (set where lavapipe is
/// installed, as in CI, so a missing adapter there fails instead of skipping).
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("MP_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        panic!("MP_REQUIRE_WGPU=1 but no wgpu adapter: {reason}");
    }
    eprintln!(
        "SKIPPED (no wgpu adapter; install mesa-vulkan-drivers, set WGPU_BACKEND=vulkan): \
         {test}: {reason}"
    );
}
