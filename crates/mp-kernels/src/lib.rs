//! # mp-kernels: devices and the kernels of a mixed-precision training step
//!
//! One small trait, [`Backend`], names every operation a transformer training step needs
//! (GEMM, pointwise, reductions, softmax, layer norm, cross-entropy, embeddings, attention,
//! casts, and the fused scaler/optimizer passes). Buffers are flat arrays of a runtime
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
pub mod testing;
#[cfg(feature = "wgpu")]
pub mod wgpu;
/// The wgpu backend's stand-in without the `wgpu` feature (constructors return
/// [`KernelError::NotCompiled`]).
#[cfg(not(feature = "wgpu"))]
#[path = "wgpu/stub.rs"]
pub mod wgpu;

pub use backend::*;
pub use cpu::{CpuBackend, CpuBuffer};
pub use error::{KernelError, Result};
pub use mp_dtype::DType;
