//! # mp-scaler: loss scaling
//!
//! FP16 gradients underflow: most of them are far below FP16's smallest subnormal (2^-24).
//! Multiplying the loss by a scale `S` before backward shifts them into range; the optimizer
//! then divides by `S`. A too-large `S` overflows some gradient to inf, which the scaler
//! detects: the step is skipped and `S` backs off. [`GradScaler`] does this with
//! `torch.amp.GradScaler`'s semantics exactly (defaults, growth and backoff rule, the
//! per-optimizer `unscale_`/`step`/`update` state machine and its errors, `state_dict` field
//! names), plus options from other frameworks ([`ScalerConfig`]): a static scale,
//! DeepSpeed-style hysteresis, min and max scale.
//!
//! Device work is one fused read pass over the flat gradient buffer
//! ([`mp_kernels::OptimOps::grad_stats`]): the non-finite check and the global norm of the
//! unscaled gradients together. Unscaling is folded into the optimizer pass: the scaler hands
//! out the factor `clip / S` ([`GradCheck::grad_mult`]) and no pass writes the gradients just to
//! unscale them. The crate names no device type: it works with any [`mp_kernels::Backend`].

mod config;
mod error;
mod scaler;
mod state;

pub use config::ScalerConfig;
pub use error::{Result, ScalerError};
pub use scaler::{GradCheck, GradScaler, OptStage, OptimizerId};
pub use state::ScalerState;
