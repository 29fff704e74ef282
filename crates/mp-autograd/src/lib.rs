//! # mp-autograd: an open tape and autocast
//!
//! A minimal reverse-mode autodiff for mixed-precision training, generic over any
//! [`mp_kernels::Backend`] and never naming a device type.
//!
//! - [`Tape`]: records ops and runs them backward. Every op is a [`TapeOp`]: its forward
//!   (through any backend op), its backward and its autocast category live together, and the
//!   trait is public, so a crate outside this one defines its own ops and records them with
//!   [`Tape::apply`] (`examples/custom_op.rs`). The built-in ops ([`ops`]) cover ordinary
//!   models: GEMMs, norms, activations, softmax, layout, attention, dropout and losses.
//!   Parameter gradients land in one flat gradient arena (any dtype; FP32 by default in the
//!   models) at each parameter's offset ([`ParamLayout`]), so an optimizer or scaler makes one
//!   pass over all of them. Activations are freed as the backward pass goes.
//! - Autocast ([`policy`]): a scope on the tape that sets the low-precision dtype; each op's
//!   [`CastPolicy`] (following PyTorch's CUDA autocast lists) says whether it runs low, in
//!   FP32, or promoted. Weight casts are cached for the tape's life, or skipped entirely when
//!   the tape is given the optimizer's low-precision model copy ([`Tape::with_model_copy`]).
//! - [`GradHook`]: told during the backward pass when a range of the gradient arena is
//!   final, so a data-parallel trainer can reduce it while the rest of the pass runs.
//! - [`gradcheck`]: finite-difference checks of any op, built in or not.
//!
//! ```text
//! let mut tape = Tape::new(&backend).with_params(&master).with_autocast(Autocast::to(DType::BF16));
//! let loss = model.forward(&mut tape, ...)?;    // records ops
//! tape.backward(loss, loss_scale, &mut grads)?; // grads[offset..] += d(loss * scale)/d(param)
//! ```
//!
//! Misuse is a typed error, never a panic: a tensor of another tape, a loss used as an op's
//! input, shapes that do not fit (the message names the op the user called).

pub mod error;
pub mod gradcheck;
pub mod op;
pub mod ops;
pub mod params;
pub mod policy;
pub mod tape;

pub use error::{AutogradError, Result};
pub use op::{Backward, Forward, Grads, Inputs, Output, TapeOp};
pub use ops::dense::WeightLayout;
pub use params::{ParamEntry, ParamLayout};
pub use policy::{Autocast, CastPolicy};
pub use tape::{GradHook, HookResult, SavedActivation, Tape, Tensor};
