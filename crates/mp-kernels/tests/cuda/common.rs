//! Shared fixtures: one CUDA backend per process (or a loud skip), the CPU oracle, and helpers
//! that run the same closure on both and compare.

use std::sync::OnceLock;

/// The backend under test, for messages.
pub const BACKEND: &str = "CUDA";

use mp_kernels::cuda::CudaBackend;
use mp_kernels::testing::check_close;
use mp_kernels::{Backend, BufferExt, CpuBackend, DType};

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

/// The CPU oracle.
pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// A buffer of `len` NaNs (every dtype here has a NaN): a kernel that forgets an element
/// leaves a NaN the comparison catches.
pub fn poisoned<B: Backend>(be: &B, dtype: DType, len: usize) -> B::Buffer {
    be.upload_f32(&vec![f32::NAN; len], dtype)
        .expect("upload poison")
}

/// Uploads `data` rounded to `dtype`.
pub fn up<B: Backend>(be: &B, data: &[f32], dtype: DType) -> B::Buffer {
    be.upload_f32(data, dtype).expect("upload")
}

/// Downloads a whole buffer widened to f32.
pub fn down<B: Backend>(be: &B, buf: &B::Buffer) -> Vec<f32> {
    be.download_f32(buf.view()).expect("download")
}

/// Asserts `got` (CUDA) is within `abs + |want| * k * eps(dtype)` of `want` (CPU).
#[track_caller]
pub fn close(what: &str, got: &[f32], want: &[f32], dtype: DType, abs: f64, k: f64) {
    if let Err(msg) = check_close(what, got, want, dtype, abs, k) {
        panic!("CUDA vs CPU: {msg}");
    }
    assert!(
        want.iter().any(|&w| w != 0.0),
        "{what}: the reference is all zero, the comparison would prove nothing"
    );
}

/// Asserts two byte vectors are identical, naming the first difference.
#[track_caller]
pub fn same_bytes(what: &str, got: &[u8], want: &[u8], elem: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let e = i / elem;
        let n = got
            .chunks(elem)
            .zip(want.chunks(elem))
            .filter(|(a, b)| a != b)
            .count();
        panic!(
            "{what}: {n} element(s) differ; first at element {e}: CUDA {:02x?}, CPU {:02x?}",
            &got[e * elem..(e + 1) * elem],
            &want[e * elem..(e + 1) * elem]
        );
    }
}
