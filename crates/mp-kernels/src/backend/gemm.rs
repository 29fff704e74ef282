//! The dense-algebra family: (batched) matrix products with FP32 accumulation, and the
//! products with a linear layer's epilogues: the bias, the bias and GELU (saving the GELU's
//! input), the GELU's gradient, and the bias gradient.

use super::{BufferExt, PointwiseOps, RowOps, UnaryOp, View, ViewMut, contract};
use crate::Result;
use mp_dtype::DType;

/// A (batched) matrix product `C = alpha * op(A) * op(B) + beta * C`, row-major.
///
/// `op(A)` is `m x k` (A stored `k x m` when `trans_a`), `op(B)` is `k x n` (B stored `n x k`
/// when `trans_b`), C is `m x n`. Batch `i` reads A at `i * stride_a`, B at `i * stride_b` and
/// writes C at `i * stride_c` (elements, relative to each view's offset); a stride of 0
/// broadcasts. A and B share a dtype (any); C may be any dtype; accumulation is FP32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of `op(A)` and C.
    pub m: usize,
    /// Columns of `op(B)` and C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// Number of independent products.
    pub batch: usize,
    /// A is stored transposed (`k x m`).
    pub trans_a: bool,
    /// B is stored transposed (`n x k`).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C (0 overwrites C, 1 accumulates into it).
    pub beta: f32,
    /// Elements between consecutive A matrices.
    pub stride_a: usize,
    /// Elements between consecutive B matrices.
    pub stride_b: usize,
    /// Elements between consecutive C matrices.
    pub stride_c: usize,
}

impl Gemm {
    /// A single, non-transposed, overwriting product `C = A B` of `m x k` by `k x n`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
}

/// Which operand of a weight-gradient product holds the output gradient whose sums over `k`
/// are the bias gradient ([`GemmOps::gemm_bias_grad`]). That operand is stored `k`-major (its
/// rows are the contracted tokens), so the sums are column sums of the stored matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BiasGradOf {
    /// A, stored `k x m` (`trans_a`): `dbias[i] += sum_k A[k, i]`, `m` elements. The weight
    /// gradient of an `[out, in]` (`nn.Linear`) weight, `dW = dyᵀ x`.
    A,
    /// B, stored `k x n` (not `trans_b`): `dbias[j] += sum_k B[k, j]`, `n` elements. The
    /// weight gradient of an `[in, out]` (`Conv1D`) weight, `dW = xᵀ dy`.
    B,
}

/// Dense algebra.
pub trait GemmOps: PointwiseOps + RowOps {
    /// `C = alpha * op(A) op(B) + beta * C`, FP32 accumulation (see [`Gemm`]).
    fn gemm(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        c: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()>;

    /// A linear layer's forward in one pass: `C[i, j] = alpha * (op(A) op(B))[i, j] +
    /// bias[j]`, the bias (any dtype, `n` elements) added to the FP32 product before the one
    /// rounding to C's dtype. One product (`batch` 1) that overwrites C (`beta` 0).
    ///
    /// The default composition ([`compose_gemm_bias`]) writes the product to an FP32 buffer
    /// and adds the bias in a second pass (the same values); backends fold the bias into the
    /// GEMM's write-back instead (the CPU kernels' epilogue, cuBLASLt's `BIAS` epilogue).
    fn gemm_bias(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        c: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()> {
        compose_gemm_bias(self, a, b, bias, c, spec)
    }

    /// A linear layer and its GELU in one pass: `pre = alpha op(A) op(B) + bias` (as
    /// [`GemmOps::gemm_bias`], rounded to `pre`'s dtype) and `out = gelu(pre)` (the tanh
    /// approximation, [`UnaryOp::GeluTanh`]), `pre` and `out` of one dtype, `pre` kept for the
    /// backward.
    ///
    /// The default composition ([`compose_gemm_bias_gelu`]) computes the GELU from the rounded
    /// `pre`; cuBLASLt's `GELU_AUX_BIAS` epilogue computes it from the FP32 value before that
    /// rounding (one rounding of `out` closer to the exact value).
    fn gemm_bias_gelu(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        pre: ViewMut<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()> {
        compose_gemm_bias_gelu(self, a, b, bias, pre, out, spec)
    }

    /// The input gradient through a GELU: `dx += gelu'(pre) * (alpha op(A) op(B))`, the
    /// product rounded to `pre`'s dtype first (a fresh gradient of the GELU's output, as the
    /// unfused graph holds it). One product that does not read `dx` as C (`beta` 0); `pre` and
    /// `dx` are `m x n`.
    ///
    /// The default composition ([`compose_gemm_dgelu`]) writes the product to a scratch
    /// buffer and applies [`PointwiseOps::unary_backward`]; cuBLASLt's `DGELU` epilogue
    /// applies `gelu'` in the GEMM's write-back.
    fn gemm_dgelu(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        pre: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()> {
        compose_gemm_dgelu(self, a, b, pre, dx, spec)
    }

    /// A weight gradient and its bias gradient in one pass: `C = alpha op(A) op(B) + beta C`
    /// (one product) and `dbias = ` the sums over `k` of the operand `of` names (see
    /// [`BiasGradOf`]; unscaled by `alpha`; `dbias` is overwritten, so a caller accumulating
    /// several contributions adds it where it belongs).
    ///
    /// The default composition ([`compose_gemm_bias_grad`]) is [`GemmOps::gemm`], then
    /// [`RowOps::sum_cols_acc`] into the zeroed `dbias`; cuBLASLt's `BGRADA`/`BGRADB`
    /// epilogues take the sums while the GEMM reads the operand.
    fn gemm_bias_grad(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        c: ViewMut<'_, Self::Buffer>,
        dbias: ViewMut<'_, Self::Buffer>,
        of: BiasGradOf,
        spec: &Gemm,
    ) -> Result<()> {
        compose_gemm_bias_grad(self, a, b, c, dbias, of, spec)
    }
}

/// [`GemmOps::gemm_bias`] composed from [`GemmOps::gemm`] into a scratch FP32 buffer and
/// [`PointwiseOps::bias_add`] from it into C.
pub fn compose_gemm_bias<B: GemmOps + ?Sized>(
    be: &B,
    a: View<'_, B::Buffer>,
    b: View<'_, B::Buffer>,
    bias: View<'_, B::Buffer>,
    c: ViewMut<'_, B::Buffer>,
    spec: &Gemm,
) -> Result<()> {
    if contract::gemm_bias(be, &a, &b, &bias, &c, spec)? == 0 {
        return Ok(());
    }
    let mut acc = be.uninit(DType::F32, spec.m * spec.n)?;
    be.gemm(a, b, acc.view_mut(), spec)?;
    be.bias_add(acc.view(), bias, c)
}

/// [`GemmOps::gemm_bias_gelu`] composed from [`GemmOps::gemm_bias`] into `pre` and
/// [`PointwiseOps::unary`] from it into `out` (the values of a `linear` then a `gelu`).
pub fn compose_gemm_bias_gelu<B: GemmOps + ?Sized>(
    be: &B,
    a: View<'_, B::Buffer>,
    b: View<'_, B::Buffer>,
    bias: View<'_, B::Buffer>,
    mut pre: ViewMut<'_, B::Buffer>,
    out: ViewMut<'_, B::Buffer>,
    spec: &Gemm,
) -> Result<()> {
    if contract::gemm_bias_gelu(be, &a, &b, &bias, &pre, &out, spec)? == 0 {
        return Ok(());
    }
    be.gemm_bias(a, b, bias, pre.reborrow(), spec)?;
    be.unary(UnaryOp::GeluTanh, pre.as_view(), out)
}

/// [`GemmOps::gemm_dgelu`] composed from [`GemmOps::gemm`] into a scratch buffer of `pre`'s
/// dtype and [`PointwiseOps::unary_backward`] from it into `dx` (the values of a `linear`'s
/// input gradient then a `gelu`'s).
pub fn compose_gemm_dgelu<B: GemmOps + ?Sized>(
    be: &B,
    a: View<'_, B::Buffer>,
    b: View<'_, B::Buffer>,
    pre: View<'_, B::Buffer>,
    dx: ViewMut<'_, B::Buffer>,
    spec: &Gemm,
) -> Result<()> {
    if contract::gemm_dgelu(be, &a, &b, &pre, &dx, spec)? == 0 {
        return Ok(());
    }
    let mut dh = be.uninit(pre.dtype(), spec.m * spec.n)?;
    be.gemm(a, b, dh.view_mut(), spec)?;
    be.unary_backward(UnaryOp::GeluTanh, pre, dh.view(), dx)
}

/// [`GemmOps::gemm_bias_grad`] composed from [`GemmOps::gemm`] and
/// [`RowOps::sum_cols_acc`] over the operand `of` names into the zeroed `dbias`.
pub fn compose_gemm_bias_grad<B: GemmOps + ?Sized>(
    be: &B,
    a: View<'_, B::Buffer>,
    b: View<'_, B::Buffer>,
    c: ViewMut<'_, B::Buffer>,
    mut dbias: ViewMut<'_, B::Buffer>,
    of: BiasGradOf,
    spec: &Gemm,
) -> Result<()> {
    contract::gemm_bias_grad(be, &a, &b, &c, &dbias, of, spec)?;
    let dy = match of {
        BiasGradOf::A => View {
            len: spec.k * spec.m,
            ..a
        },
        BiasGradOf::B => View {
            len: spec.k * spec.n,
            ..b
        },
    };
    be.gemm(a, b, c, spec)?;
    be.fill(dbias.reborrow(), 0.0)?;
    if dy.len > 0 {
        be.sum_cols_acc(dy, dbias)?;
    }
    Ok(())
}
