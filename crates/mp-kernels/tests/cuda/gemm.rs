//! The GEMM check only the CUDA backend has: cuBLASLt with TF32 allowed.

use mp_kernels::cuda::{CudaBackend, CudaOptions};

use crate::common::gpu;
use crate::cuda_dense::broadcast_batches;

#[test]
fn gemm_tf32_and_broadcast_batches() {
    let Some(g0) = gpu("gemm_tf32_and_broadcast_batches") else {
        return;
    };
    // a fresh backend with TF32 enabled
    let g = CudaBackend::with_options(CudaOptions {
        device: 0,
        allow_tf32: true,
    })
    .expect("second backend");
    assert!(g.options().allow_tf32 && !g0.options().allow_tf32);
    // TF32 keeps 10 mantissa bits of each input: errors ~ sqrt(k) * 2^-11 * |a||b|
    broadcast_batches(&g, "gemm tf32", 2e-2, 0.0);
    broadcast_batches(g0, "gemm f32 (no tf32)", 1e-4, 64.0);
}
