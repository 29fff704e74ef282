//! The GEMM check only the wgpu backend needs: its tiled WGSL kernel over many tiles, with
//! ragged edges in every direction.

use mp_kernels::testing::random_vec;
use mp_kernels::{DType, Gemm};

use crate::common::{close, cpu, gpu};
use crate::wgpu_dense::{broadcast_batches, gemm_run};

#[test]
fn gemm_broadcast_batches_and_many_tiles() {
    let Some(g) = gpu("gemm_broadcast_batches_and_many_tiles") else {
        return;
    };
    broadcast_batches(g, "gemm broadcast B", 1e-4, 64.0);
    // edges in every direction: m, n, k not multiples of the 64 x 64 x 16 tiles
    let c = cpu();
    let s = Gemm::new(131, 67, 33);
    let a = random_vec(131 * 33, 6);
    let b = random_vec(33 * 67, 7);
    let want = gemm_run(&c, &a, &b, &[], DType::F32, DType::F32, &s);
    let got = gemm_run(g, &a, &b, &[], DType::F32, DType::F32, &s);
    close("gemm ragged tiles", &got, &want, DType::F32, 1e-4, 64.0);
}
