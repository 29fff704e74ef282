//! The embedding family: row gathers and their scatter-add backward.

use super::{MemoryOps, View, ViewMut};
use crate::Result;

/// Embedding lookups.
pub trait EmbeddingOps: MemoryOps {
    /// `out[i, :] = table[ids[i], :]` for a `table` of rows of `c` elements.
    fn embedding(
        &self,
        table: View<'_, Self::Buffer>,
        ids: &Self::Index,
        c: usize,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]` (scatter-add, FP32 accumulation).
    fn embedding_backward(
        &self,
        dout: View<'_, Self::Buffer>,
        ids: &Self::Index,
        c: usize,
        dtable: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
}
