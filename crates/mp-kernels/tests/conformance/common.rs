//! Fixtures shared by the CUDA and wgpu suites: the CPU oracle, uploads and downloads, NaN
//! poisoning and the comparisons. Each target's `common.rs` includes this file with `#[path]`,
//! re-exports it and adds the backend under test (`gpu`, `skip_or_fail`, `BACKEND`).

use mp_kernels::prelude::*;
use mp_kernels::testing::check_close;
use mp_kernels::{CpuBackend, DType};

use super::BACKEND;

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

/// Asserts `got` (the backend under test) is within `abs + |want| * k * eps(dtype)` of `want` (CPU).
#[track_caller]
pub fn close(what: &str, got: &[f32], want: &[f32], dtype: DType, abs: f64, k: f64) {
    if let Err(msg) = check_close(what, got, want, dtype, abs, k) {
        panic!("{BACKEND} vs CPU: {msg}");
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
            "{what}: {n} element(s) differ; first at element {e}: {BACKEND} {:02x?}, CPU {:02x?}",
            &got[e * elem..(e + 1) * elem],
            &want[e * elem..(e + 1) * elem]
        );
    }
}
