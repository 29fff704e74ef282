//! Backend dispatch: the one place that names concrete backends. Everything below it is
//! generic over [`Backend`].
//!
//! A GPU backend that is not compiled in returns [`mp_kernels::KernelError::NotCompiled`]; one that is
//! compiled in but finds no device returns its `NoDevice` error. Nothing falls back to the CPU.

use crate::config::BackendKind;
use crate::error::Result;
use mp_kernels::prelude::*;

/// Work to run on whichever backend the config names (a generic closure).
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on `backend`.
    fn run<B: Backend>(self, backend: B) -> Result<Self::Output>;
}

/// Sizes the CPU worker pool (0: one thread per core). Only the first call in a process takes
/// effect; later calls with another count are ignored.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

/// Opens the backend `kind` and runs `job` on it.
pub fn dispatch<J: BackendJob>(kind: BackendKind, threads: usize, job: J) -> Result<J::Output> {
    set_threads(threads);
    match kind {
        BackendKind::Cpu => job.run(mp_kernels::CpuBackend::new()),
        // Without its feature, each GPU backend is mp-kernels' stand-in, whose constructor
        // returns `KernelError::NotCompiled`: no `cfg` here.
        BackendKind::Cuda => job.run(mp_kernels::cuda::CudaBackend::new()?),
        BackendKind::Wgpu => job.run(mp_kernels::wgpu::WgpuBackend::new()?),
    }
}
