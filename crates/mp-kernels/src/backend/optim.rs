//! The optimizer family: the fused gradient check and the fused optimizer passes.

use super::{MemoryOps, Rounding, View, ViewMut};
use crate::Result;

/// Hyper-parameters of one fused AdamW step (`torch.optim.AdamW` order: decoupled decay
/// `p *= 1 - lr * wd` first, then moments, bias corrections, `denom = sqrt(v)/sqrt(bc2) + eps`,
/// `p -= lr / bc1 * m / denom`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step number used for the bias corrections.
    pub step: u64,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy (and of the parameters themselves when they are
    /// stored low-precision, the pure-BF16 mode).
    pub rounding: Rounding,
}

/// Hyper-parameters of one fused SGD-with-momentum step (`torch.optim.SGD` semantics:
/// `g += wd * p; buf = momentum * buf + (1 - dampening) * g` (the first step sets `buf = g`);
/// `g = nesterov ? g + momentum * buf : buf; p -= lr * g`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f32,
    /// Dampening of the momentum.
    pub dampening: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// True on the first step (the momentum buffer is initialised to the gradient).
    pub first_step: bool,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy.
    pub rounding: Rounding,
}

/// Result of the fused gradient check: one read pass over a gradient buffer.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct GradStats {
    /// True when any element is +-inf or NaN.
    pub non_finite: bool,
    /// Sum of squares of `grad * grad_mult` (FP32 accumulation per block, summed in f64);
    /// meaningless when `non_finite`.
    pub sum_sq: f64,
}

/// The fused scaler and optimizer passes over flat arenas.
pub trait OptimOps: MemoryOps {
    /// One read pass over `grads`: whether any is non-finite, and the sum of squares of
    /// `grad * grad_mult` (the global norm of unscaled gradients, squared). Waits for the
    /// device: this is the one host read of a step.
    fn grad_stats(&self, grads: View<'_, Self::Buffer>, grad_mult: f32) -> Result<GradStats>;

    /// [`OptimOps::grad_stats`] of each consecutive `part`-element piece of `grads` (the last
    /// one may be shorter), in order: partial sums that a caller adds in a fixed order, so
    /// that the total does not depend on how the buffer is split between processes. The
    /// default makes one `grad_stats` call per part.
    fn grad_stats_parts(
        &self,
        grads: View<'_, Self::Buffer>,
        grad_mult: f32,
        part: usize,
    ) -> Result<Vec<GradStats>> {
        let part = part.max(1);
        (0..grads.len.div_ceil(part))
            .map(|i| {
                let len = part.min(grads.len - i * part);
                let v = View {
                    buf: grads.buf,
                    offset: grads.offset + i * part,
                    len,
                };
                self.grad_stats(v, grad_mult)
            })
            .collect()
    }

    /// One fused AdamW pass over a flat parameter range: reads `grads` (any dtype) times
    /// `hp.grad_mult`, updates the FP32 moments `m`, `v` and `params`, and writes `model`
    /// (when given) as `params` rounded to its dtype with `hp.rounding`. `params` is FP32
    /// master weights, or BF16/F16 for the pure low-precision mode (then rounded with
    /// `hp.rounding`). The per-step scalars are [`crate::contract::adam_coef`]'s.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        m: ViewMut<'_, Self::Buffer>,
        v: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &AdamW,
    ) -> Result<()>;

    /// One fused SGD-with-momentum pass (see [`Sgd`]); `momentum_buf` is FP32.
    fn sgd(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        momentum_buf: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &Sgd,
    ) -> Result<()>;
}
