//! The loss family: cross-entropy fused with log-softmax, and the fused classifier (loss and
//! gradient in one pass over the logits).

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
    /// The fused classifier: [`LossOps::cross_entropy`] and [`LossOps::cross_entropy_backward`]
    /// in one pass over each logits row (read once, the gradient written once, in `dlogits`'s
    /// dtype, normally the logits' own low-precision dtype).
    ///
    /// The default runs the two ops one after the other (two passes over the logits).
    fn cross_entropy_fused(
        &self,
        logits: View<'_, Self::Buffer>,
        targets: &Self::Index,
        vocab: usize,
        dloss: f32,
        losses: ViewMut<'_, Self::Buffer>,
        dlogits: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        self.cross_entropy(logits, targets, vocab, losses)?;
        self.cross_entropy_backward(logits, targets, vocab, dloss, dlogits)
    }
}
