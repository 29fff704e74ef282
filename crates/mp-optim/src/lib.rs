//! # mp-optim: optimizers with FP32 master weights
//!
//! [`AdamW`] (with `torch.optim.AdamW`'s update order exactly) and [`Sgd`] with momentum, over
//! flat parameter arenas: every step is one fused backend pass per [`ParamGroup`]
//! ([`mp_kernels::OptimOps::adamw`], [`mp_kernels::OptimOps::sgd`]) that reads the gradients of
//! any dtype, multiplies them by `clip / scale` (so unscaling never needs a pass of its own),
//! updates the FP32 moments and the FP32 master weights, and writes the BF16/F16 model copy
//! (round-to-nearest-even or stochastic) in the same pass.
//!
//! Also: parameter groups (no weight decay on 1-D parameters, learning-rate multipliers),
//! learning-rate changes between steps, a pure-BF16 mode with stochastic rounding and no
//! master copy, and state save/load (tensors as safetensors, scalars as JSON,
//! [`OptimizerState`]).
//!
//! Invariants: moments and master weights are FP32; the step count (used by the bias
//! corrections) advances only in `step`, so a step the loss scaler skips leaves master
//! weights, moments, model copy and step count exactly as they were. The crate is generic over
//! [`mp_kernels::Backend`] and names no device type.

mod adamw;
mod common;
mod error;
mod group;
mod sgd;
mod state;

pub use adamw::{AdamW, AdamWConfig};
pub use error::{OptimError, Result};
pub use group::ParamGroup;
pub use mp_dtype::Rounding;
pub use sgd::{Sgd, SgdConfig};
pub use state::{OptimizerState, StateMeta};
