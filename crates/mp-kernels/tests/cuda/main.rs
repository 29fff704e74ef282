//! The CUDA backend against the CPU oracle: every op x dtype on random data (never zeros),
//! outputs poisoned with NaN before each run, tolerance `abs + |ref| * k * eps(dtype)`;
//! casts, fills and stochastic rounding bit for bit.
//!
//! Built only with `--features cuda`. Without a device every test prints a loud
//! `SKIPPED (no CUDA device)` line and returns, unless `MP_REQUIRE_CUDA=1` (set by
//! `cargo xtask test-gpu`'s runner), which turns a missing device into a failure.
//!
//! The op-by-op comparisons are the conformance suite in `tests/conformance/`, shared with the
//! wgpu target; `gemm.rs` holds the check only CUDA has (TF32). Every module is `cuda_*`, so
//! every test path names the backend.

mod common;
#[path = "../conformance/cast.rs"]
mod cuda_cast;
#[path = "../conformance/dense.rs"]
mod cuda_dense;
#[path = "../conformance/fused.rs"]
mod cuda_fused;
#[path = "gemm.rs"]
mod cuda_gemm;
#[path = "../conformance/ops.rs"]
mod cuda_ops;
#[path = "../conformance/rows.rs"]
mod cuda_rows;

#[test]
fn cuda_backend_reports_its_device_or_a_typed_error() {
    match mp_kernels::cuda::CudaBackend::new() {
        Ok(be) => {
            use mp_kernels::prelude::*;
            let name = be.name();
            assert!(name.starts_with("cuda:"), "{name}");
            eprintln!("CUDA device: {name}, NVRTC arch {}", be.arch());
        }
        Err(e) => {
            assert!(
                matches!(e, mp_kernels::KernelError::NoDevice { .. }),
                "expected NoDevice, got {e}"
            );
            common::skip_or_fail(
                "cuda_backend_reports_its_device_or_a_typed_error",
                &e.to_string(),
            );
        }
    }
}

/// Every kernel module compiles with NVRTC for `sm_90` (needs only libnvrtc and the CUDA
/// headers, no GPU). With `MP_NVRTC_CHECK=1` (the CI check, `.ci/nvrtc-check.sh`) a missing
/// NVRTC is a failure; otherwise it is a loud skip.
#[test]
fn cuda_nvrtc_compiles_every_kernel_for_sm_90() {
    use mp_kernels::cuda::kernels;
    let required = std::env::var("MP_NVRTC_CHECK").is_ok_and(|v| v == "1");
    // SAFETY: only probes whether the dynamic library loads.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present || kernels::cuda_include_dir().is_none() {
        let why = if present {
            "no CUDA include folder (set MP_CUDA_INCLUDE or CUDA_HOME)"
        } else {
            "libnvrtc.so.13 not found on LD_LIBRARY_PATH"
        };
        assert!(!required, "MP_NVRTC_CHECK=1 but {why}");
        eprintln!("SKIPPED (no NVRTC): cuda_nvrtc_compiles_every_kernel_for_sm_90: {why}");
        return;
    }
    match kernels::compile_all("sm_90") {
        Ok(sizes) => {
            for (m, bytes) in sizes {
                eprintln!("nvrtc sm_90: {} -> {bytes} bytes of CUBIN", m.file_name());
            }
        }
        Err(e) => panic!("{e}"),
    }
}
