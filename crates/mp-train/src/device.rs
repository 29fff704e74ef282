//! Backend dispatch: the one place that names concrete backends. Everything below it is
//! generic over [`Backend`].
//!
//! A GPU backend that is not compiled in returns [`mp_kernels::KernelError::NotCompiled`]; one that is
//! compiled in but finds no device returns its `NoDevice` error. Nothing falls back to the CPU.

use crate::config::{BackendKind, TrainConfig};
use crate::error::Result;
use mp_kernels::prelude::*;

/// Work to run on whichever backend the config names (a generic closure).
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on `backend`.
    fn run<B: Backend>(self, backend: B) -> Result<Self::Output>;
}

/// Sizes the CPU worker pool (0: one thread per core). Only the first call in a process can
/// size it: a later call asking for another count prints a warning and leaves the pool as it
/// is. A pool that cannot start (the system refuses the threads) is an error.
pub fn set_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Ok(());
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("already been initialized") => {
            let have = rayon::current_num_threads();
            if have != threads {
                eprintln!(
                    "warning: threads = {threads} ignored: this process's worker pool already \
                     runs {have} threads"
                );
            }
            Ok(())
        }
        Err(e) => Err(crate::error::TrainError::invalid(
            "threads",
            threads,
            format!("the worker pool could not start: {e}"),
        )),
    }
}

/// Opens the backend `cfg.backend` names (a software wgpu adapter only with
/// `allow_software_adapter` or `MP_ALLOW_SOFTWARE_ADAPTER=1`), sizes the CPU pool to
/// `cfg.threads`, and runs `job` on it.
pub fn dispatch<J: BackendJob>(cfg: &TrainConfig, job: J) -> Result<J::Output> {
    set_threads(cfg.threads)?;
    match cfg.backend {
        BackendKind::Cpu => job.run(mp_kernels::CpuBackend::new()),
        // Without its feature, each GPU backend is mp-kernels' stand-in, whose constructor
        // returns `KernelError::NotCompiled`: no `cfg` here.
        // one GPU per rank: a data-parallel rank takes the device of its rank on its node
        BackendKind::Cuda => job.run(mp_kernels::cuda::CudaBackend::with_options(
            mp_kernels::cuda::CudaOptions {
                device: mp_dist::local_rank().unwrap_or(0),
                ..Default::default()
            },
        )?),
        BackendKind::Wgpu => {
            let mut opts = mp_kernels::wgpu::WgpuOptions::default();
            opts.allow_software |= cfg.allow_software_adapter;
            job.run(mp_kernels::wgpu::WgpuBackend::with_options(opts)?)
        }
    }
}
