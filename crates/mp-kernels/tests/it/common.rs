//! Shared helpers of the integration tests: uploads, downloads and quantised inputs.

use mp_kernels::prelude::*;
use mp_kernels::testing::{quantize, random_vec};
use mp_kernels::{CpuBackend, CpuBuffer, DType};

/// The backend under test.
pub fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// `data` uploaded as `dtype` (rounded to nearest even).
pub fn up(data: &[f32], dtype: DType) -> CpuBuffer {
    cpu().upload_f32(data, dtype).unwrap()
}

/// Every element of `buf` as f32.
pub fn down(buf: &CpuBuffer) -> Vec<f32> {
    cpu().download_f32(buf.view()).unwrap()
}

/// Random values in [-1, 1) already representable in `dtype`, as the f32 the kernel sees and
/// the f64 the reference uses.
pub fn input(len: usize, seed: u64, dtype: DType) -> (Vec<f32>, Vec<f64>) {
    let x = quantize(&random_vec(len, seed), dtype);
    let r = x.iter().map(|&v| f64::from(v)).collect();
    (x, r)
}

/// f32 values widened to f64.
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}
