//! The dense-algebra family: (batched) matrix products with FP32 accumulation.

use super::{BufferExt, PointwiseOps, View, ViewMut, contract};
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

/// Dense algebra.
pub trait GemmOps: PointwiseOps {
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
