//! Shared fixtures: one CUDA backend per process (or a loud skip), and from
//! `tests/conformance/common.rs` the CPU oracle and the helpers that run the same closure on
//! both and compare.

use std::sync::OnceLock;

use mp_kernels::cuda::CudaBackend;

#[path = "../conformance/common.rs"]
mod shared;
pub use shared::*;

/// The backend under test, for messages.
pub const BACKEND: &str = "CUDA";

/// The process-wide CUDA backend, or `None` (after printing why) when there is no device.
pub fn gpu(test: &str) -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    match GPU.get_or_init(|| CudaBackend::new().map_err(|e| e.to_string())) {
        Ok(be) => Some(be),
        Err(reason) => {
            skip_or_fail(test, reason);
            None
        }
    }
}

/// Prints the loud skip line, or panics when `MP_REQUIRE_CUDA=1`.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("MP_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("MP_REQUIRE_CUDA=1 but no CUDA device: {reason}");
    }
    eprintln!("SKIPPED (no CUDA device): {test}: {reason}");
}
