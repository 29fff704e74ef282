//! The normalisation family: layer norm and RMSNorm, forward and backward, FP32 statistics.

use super::{BinaryOp, BufferExt, PointwiseOps, ReduceOp, RowOps, UnaryOp, View, ViewMut};
use crate::{Result, contract};
use mp_dtype::DType;

/// Normalisation over the last axis. Statistics are FP32 whatever the storage dtype.
pub trait NormOps: PointwiseOps + RowOps {
    /// Layer norm over rows of `c = weight.len` elements:
    /// `out = (x - mean) * rstd * weight + bias`; saves FP32 `mean` and `rstd` per row.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        eps: f32,
        out: ViewMut<'_, Self::Buffer>,
        mean: ViewMut<'_, Self::Buffer>,
        rstd: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Layer-norm backward: `dx += ..`, `dweight += ..`, `dbias += ..`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        dy: View<'_, Self::Buffer>,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        mean: View<'_, Self::Buffer>,
        rstd: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
        dweight: ViewMut<'_, Self::Buffer>,
        dbias: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;

    /// RMSNorm (HF `LlamaRMSNorm`) over rows of `c = weight.len` elements:
    /// `rstd = 1 / sqrt(mean(x^2) + eps)` (FP32, saved per row) and
    /// `out = x * rstd * weight` (FP32 products, one rounding).
    ///
    /// The default composes it from this backend's sum of squares, `fill`, `axpy`, `rsqrt`
    /// and [`PointwiseOps::mul_broadcast`] (five launches, two FP32 scratch values per row).
    fn rms_norm(
        &self,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        eps: f32,
        out: ViewMut<'_, Self::Buffer>,
        rstd: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        let (rows, c) = contract::rms_norm(self, &x, &weight, eps, &out, &rstd)?;
        if rows == 0 {
            return Ok(());
        }
        let mut rstd = rstd;
        let (mut ss, mut t) = (
            self.uninit(DType::F32, rows)?,
            self.uninit(DType::F32, rows)?,
        );
        self.reduce_rows(ReduceOp::SumSq, x, c, ss.view_mut())?;
        self.fill(t.view_mut(), eps)?;
        self.axpy(1.0 / c as f32, ss.view(), t.view_mut())?;
        self.unary(UnaryOp::Rsqrt, t.view(), rstd.reborrow())?;
        self.mul_broadcast(x, Some(rstd.as_view()), Some(weight), out)
    }

    /// RMSNorm backward from the saved `rstd`: with `xhat = x * rstd` and `g = dy * weight`,
    /// `dx += rstd * (g - xhat * mean(g * xhat))` and `dweight += sum_rows(dy * xhat)`.
    ///
    /// The default composes it from this backend's broadcasts, products, row and column
    /// reductions and `axpy`, with four FP32 scratch buffers the size of `x`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        dy: View<'_, Self::Buffer>,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        rstd: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
        dweight: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        let (rows, c) = contract::rms_norm_backward(self, &dy, &x, &weight, &rstd, &dx, &dweight)?;
        if rows == 0 {
            return Ok(());
        }
        let n = rows * c;
        let f32s = || self.uninit(DType::F32, n);
        let (mut xhat, mut g, mut t, mut u) = (f32s()?, f32s()?, f32s()?, f32s()?);
        self.mul_broadcast(x, Some(rstd), None, xhat.view_mut())?;
        self.mul_broadcast(dy, None, Some(weight), g.view_mut())?;
        self.binary(BinaryOp::Mul, g.view(), xhat.view(), t.view_mut())?;
        let mut d = self.uninit(DType::F32, rows)?;
        self.reduce_rows(ReduceOp::Mean, t.view(), c, d.view_mut())?;
        self.mul_broadcast(xhat.view(), Some(d.view()), None, t.view_mut())?;
        self.binary(BinaryOp::Sub, g.view(), t.view(), u.view_mut())?;
        self.mul_broadcast(u.view(), Some(rstd), None, t.view_mut())?;
        self.axpy(1.0, t.view(), dx)?;
        self.binary(BinaryOp::Mul, dy, xhat.view(), u.view_mut())?;
        self.sum_cols_acc(u.view(), dweight)
    }
}
