//! The loss family: cross-entropy fused with log-softmax.

use super::{MemoryOps, View, ViewMut};
use crate::Result;

/// Losses (FP32 internally).
pub trait LossOps: MemoryOps {
    /// Cross-entropy fused with log-softmax: `losses[r] = logsumexp(logits[r]) -
    /// logits[r, targets[r]]` for `logits` of `rows x vocab`; `losses` is FP32 of `rows`.
    fn cross_entropy(
        &self,
        logits: View<'_, Self::Buffer>,
        targets: &Self::Index,
        vocab: usize,
        losses: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dlogits = (softmax(logits) - onehot(targets)) * dloss` (overwrites; `dloss` is the
    /// gradient of the objective with respect to each row's loss, e.g. `loss_scale / rows`).
    fn cross_entropy_backward(
        &self,
        logits: View<'_, Self::Buffer>,
        targets: &Self::Index,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
}
