//! The row family: reductions over rows and columns, the row softmax and its backward.

use super::{MemoryOps, View, ViewMut};
use crate::Result;

/// Reductions over the last axis (FP32 accumulation, FP32 result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum (NaN propagates).
    Max,
    /// Sum of squares.
    SumSq,
}

/// Row-wise ops (FP32 internally).
pub trait RowOps: MemoryOps {
    /// `out[r] = reduce(x[r, ..])` over rows of `cols` elements; `out` has `x.len / cols`
    /// elements of any dtype. A whole-tensor reduction is `cols = x.len`.
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, Self::Buffer>,
        cols: usize,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out[j] += sum_r x[r, j]` for `x` of `rows x out.len` (bias gradients).
    fn sum_cols_acc(&self, x: View<'_, Self::Buffer>, out: ViewMut<'_, Self::Buffer>)
    -> Result<()>;
    /// Row softmax (or log-softmax when `log`) over rows of `cols`. With `causal`, row `r` sees
    /// only columns `j <= r % cols` (rows are stacked `cols x cols` score blocks) and the rest
    /// are written as 0 (softmax) or -inf (log-softmax).
    fn softmax(
        &self,
        x: View<'_, Self::Buffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Backward of [`RowOps::softmax`] from its output `y` (same `cols` and `log`):
    /// `dx += y * (dy - sum_j dy_j y_j)` for softmax, `dx += dy - exp(y) * sum_j dy_j` for
    /// log-softmax; causally masked entries (`y` = 0, resp. -inf) receive and pass no gradient.
    fn softmax_backward(
        &self,
        y: View<'_, Self::Buffer>,
        dy: View<'_, Self::Buffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
}
