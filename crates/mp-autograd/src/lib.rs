//! # mp-autograd: a tape and autocast
//!
//! A minimal reverse-mode autodiff for mixed-precision training, generic over any
//! [`mp_kernels::Backend`] and never naming a device type.
//!
//! - [`Tape`]: records coarse ops (linear, layer norm, GELU, attention, add, embedding,
//!   cross-entropy), each one fused kernel of the backend, and runs them backward. Parameter
//!   gradients land in one flat gradient arena (any dtype; FP32 by default in the models) at
//!   each parameter's offset ([`ParamLayout`]), so an optimizer or scaler makes one pass over
//!   all of them. Activations are freed as the backward pass goes.
//! - Autocast ([`policy`]): a scope on the tape that sets the low-precision dtype; which ops
//!   run low, in FP32, or promoted is one table, [`policy::POLICY`], following PyTorch's CUDA
//!   autocast lists. Weight casts are cached for the tape's life, or skipped entirely when the
//!   tape is given the optimizer's low-precision model copy ([`Tape::with_model_copy`]).
//!
//! ```text
//! let mut tape = Tape::new(&backend).with_params(&master).with_autocast(Autocast::to(DType::BF16));
//! let loss = model.forward(&mut tape, ...)?;    // records ops
//! tape.backward(loss, loss_scale, &mut grads)?; // grads[offset..] += d(loss * scale)/d(param)
//! ```

pub mod error;
pub mod params;
pub mod policy;
pub mod tape;

#[cfg(test)]
mod gradcheck;

pub use error::{AutogradError, Result};
pub use params::{ParamEntry, ParamLayout};
pub use policy::{Autocast, OpKind, POLICY, Precision};
pub use tape::{Tape, Tensor, WeightLayout};
