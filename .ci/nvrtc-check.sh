#!/usr/bin/env bash
# CI check without a GPU: builds mp-kernels with the `cuda` feature and compiles every CUDA
# kernel with NVRTC for sm_90 (NVRTC also runs ptxas for a real arch, so it catches register
# and resource errors too). NVRTC and the CUDA headers come from NVIDIA's pip wheels, pinned
# to the CUDA 13.0 the lent H200 runs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MP_NVRTC_VENV:-.venv-nvrtc}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
# absolute: the test binary runs from the crate folder, not from here
SP=$(cd "$(echo "$VENV"/lib/python3.*/site-packages/nvidia/cu13)" && pwd)
if [ ! -f "$SP/lib/libnvrtc.so.13" ] || [ ! -f "$SP/include/cuda_bf16.h" ]; then
    echo "nvrtc-check: the wheels did not provide libnvrtc.so.13 and cuda_bf16.h under $SP" >&2
    exit 1
fi

export LD_LIBRARY_PATH="$SP/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MP_CUDA_INCLUDE="$SP/include"
export MP_NVRTC_CHECK=1
cargo clippy -p mp-kernels --features nccl --all-targets -- -D warnings
cargo test -p mp-kernels --features cuda --release --test cuda -- nvrtc_compiles_every_kernel_for_sm_90 --nocapture
