//! The error type of mp-scaler.

use mp_kernels::KernelError;

/// What can go wrong configuring or driving a [`GradScaler`](crate::GradScaler).
///
/// The state-machine variants carry PyTorch's wording so that a user porting a training loop
/// recognises them.
#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    /// A configuration value is out of its domain.
    #[error("GradScaler config: {field} = {value}: {msg}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What the field requires.
        msg: &'static str,
    },
    /// `unscale_` was called twice for one optimizer without an `update` in between.
    #[error(
        "unscale_ on optimizer {optimizer}: unscale_() has already been called on this optimizer since the last update()"
    )]
    UnscaleTwice {
        /// The optimizer.
        optimizer: usize,
    },
    /// `unscale_` was called after `step` for one optimizer without an `update` in between.
    #[error("unscale_ on optimizer {optimizer}: unscale_() is being called after step()")]
    UnscaleAfterStep {
        /// The optimizer.
        optimizer: usize,
    },
    /// `step` was called twice for one optimizer without an `update` in between.
    #[error(
        "step on optimizer {optimizer}: step() has already been called since the last update()"
    )]
    StepTwice {
        /// The optimizer.
        optimizer: usize,
    },
    /// `update` without an explicit scale found no gradient check recorded since the last one.
    #[error("update: no inf checks were recorded prior to update()")]
    NoInfChecks,
    /// `update` was given an explicit scale that is not a positive finite number.
    #[error("update: new scale {0} is not a positive finite number")]
    InvalidScale(f64),
    /// `load_state_dict` got the empty state a disabled scaler saves.
    #[error(
        "load_state_dict: the source state dict is empty, possibly because it was saved from a disabled GradScaler"
    )]
    EmptyState,
    /// `load_state_dict` got a state that does not parse or holds invalid values.
    #[error("load_state_dict: {0}")]
    BadState(String),
    /// The backend failed running the gradient check.
    #[error("gradient check: {0}")]
    Kernel(#[from] KernelError),
}

/// A `Result` whose error is a [`ScalerError`].
pub type Result<T, E = ScalerError> = std::result::Result<T, E>;
