//! # mp-kernels: devices and the kernels of a mixed-precision training step
//!
//! [`Backend`] is the sum of the op families a transformer training step needs (memory and
//! casts, GEMM, pointwise, rows, norms, embeddings, layout and attention, losses, and the fused
//! scaler/optimizer passes; see [`backend`]), each op's checks written once in [`contract`]. Buffers are flat arrays of a runtime
//! [`DType`]; ops address them through [`View`]/[`ViewMut`] (a buffer, an element offset and
//! a length), so one flat arena can hold every parameter and a single launch can update all
//! of them.
//!
//! Rules every backend follows:
//! - every dot product and reduction accumulates in FP32, whatever the storage dtype;
//! - inputs of any dtype are widened to FP32 on load; outputs are rounded to their buffer's
//!   dtype with round-to-nearest-even (or stochastically where an op takes a [`Rounding`]);
//! - backward kernels *add* into their gradient outputs (`+=`), so gradients accumulate
//!   across uses and micro-batches; the caller zeroes them;
//! - a backend that is not compiled in, or finds no device, returns a typed [`KernelError`];
//!   nothing falls back to another backend silently.
//!
//! The CPU backend ([`cpu::CpuBackend`]) is always compiled and is the oracle that every other
//! backend is tested against.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
/// The CUDA backend's stand-in without the `cuda` feature (constructors return
/// [`KernelError::NotCompiled`]).
#[cfg(not(feature = "cuda"))]
#[path = "cuda/stub.rs"]
pub mod cuda;
pub mod error;
pub mod gemm_attention;
#[cfg(any(not(feature = "cuda"), not(feature = "wgpu")))]
mod stub;
pub mod testing;
#[cfg(feature = "wgpu")]
pub mod wgpu;
/// The wgpu backend's stand-in without the `wgpu` feature (constructors return
/// [`KernelError::NotCompiled`]).
#[cfg(not(feature = "wgpu"))]
#[path = "wgpu/stub.rs"]
pub mod wgpu;

pub use backend::*;

/// The traits a caller of a concrete backend imports: `use mp_kernels::prelude::*;` makes
/// every op of every family callable (generic code bounded by [`Backend`] needs no import).
pub mod prelude {
    pub use crate::backend::{
        AttentionOps, Backend, BufferExt, DeviceBuffer, EmbeddingOps, GemmOps, LayoutOps, LossOps,
        MemoryOps, NormOps, OptimOps, PointwiseOps, RowOps,
    };
}
pub use cpu::{CpuBackend, CpuBuffer};
pub use error::{KernelError, Result};
pub use mp_dtype::DType;
