//! Backend dispatch: the one place that names concrete backends. Everything below it is
//! generic over [`Backend`].
//!
//! A GPU backend that is not compiled in returns [`KernelError::NotCompiled`]; one that is
//! compiled in but finds no device returns its `NoDevice` error. Nothing falls back to the CPU.

use crate::config::BackendKind;
use crate::error::Result;
#[allow(unused_imports)]
use mp_kernels::KernelError;
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
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let be = mp_kernels::cuda::CudaBackend::new()?;
                job.run(be)
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(KernelError::NotCompiled {
                    backend: "cuda",
                    feature: "cuda",
                }
                .into())
            }
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let be = mp_kernels::wgpu::WgpuBackend::new()?;
                job.run(be)
            }
            #[cfg(not(feature = "wgpu"))]
            {
                Err(KernelError::NotCompiled {
                    backend: "wgpu",
                    feature: "wgpu",
                }
                .into())
            }
        }
    }
}
