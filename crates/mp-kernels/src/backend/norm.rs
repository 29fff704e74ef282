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
        rms_norm_composed(self, x, weight, eps, out, rstd)
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
        rms_norm_backward_composed(self, dy, x, weight, rstd, dx, dweight)
    }
}

/// [`NormOps::rms_norm`]'s default body, composed from `be`'s primitives (public so that a
/// backend's kernel can be tested against it).
pub fn rms_norm_composed<B: PointwiseOps + RowOps + ?Sized>(
    be: &B,
    x: View<'_, B::Buffer>,
    weight: View<'_, B::Buffer>,
    eps: f32,
    out: ViewMut<'_, B::Buffer>,
    rstd: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let (rows, c) = contract::rms_norm(be, &x, &weight, eps, &out, &rstd)?;
    if rows == 0 {
        return Ok(());
    }
    let mut rstd = rstd;
    let (mut ss, mut t) = (be.uninit(DType::F32, rows)?, be.uninit(DType::F32, rows)?);
    be.reduce_rows(ReduceOp::SumSq, x, c, ss.view_mut())?;
    be.fill(t.view_mut(), eps)?;
    be.axpy(1.0 / c as f32, ss.view(), t.view_mut())?;
    be.unary(UnaryOp::Rsqrt, t.view(), rstd.reborrow())?;
    be.mul_broadcast(x, Some(rstd.as_view()), Some(weight), out)
}

/// [`NormOps::rms_norm_backward`]'s default body, composed from `be`'s primitives.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward_composed<B: PointwiseOps + RowOps + ?Sized>(
    be: &B,
    dy: View<'_, B::Buffer>,
    x: View<'_, B::Buffer>,
    weight: View<'_, B::Buffer>,
    rstd: View<'_, B::Buffer>,
    dx: ViewMut<'_, B::Buffer>,
    dweight: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let (rows, c) = contract::rms_norm_backward(be, &dy, &x, &weight, &rstd, &dx, &dweight)?;
    if rows == 0 {
        return Ok(());
    }
    let n = rows * c;
    let f32s = || be.uninit(DType::F32, n);
    let (mut xhat, mut g, mut t, mut u) = (f32s()?, f32s()?, f32s()?, f32s()?);
    be.mul_broadcast(x, Some(rstd), None, xhat.view_mut())?;
    be.mul_broadcast(dy, None, Some(weight), g.view_mut())?;
    be.binary(BinaryOp::Mul, g.view(), xhat.view(), t.view_mut())?;
    let mut d = be.uninit(DType::F32, rows)?;
    be.reduce_rows(ReduceOp::Mean, t.view(), c, d.view_mut())?;
    be.mul_broadcast(xhat.view(), Some(d.view()), None, t.view_mut())?;
    be.binary(BinaryOp::Sub, g.view(), t.view(), u.view_mut())?;
    be.mul_broadcast(u.view(), Some(rstd), None, t.view_mut())?;
    be.axpy(1.0, t.view(), dx)?;
    be.binary(BinaryOp::Mul, dy, xhat.view(), u.view_mut())?;
    be.sum_cols_acc(u.view(), dweight)
}
