//! The dense-algebra family: (batched) matrix products with FP32 accumulation.

use super::{MemoryOps, View, ViewMut};
use crate::Result;

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
pub trait GemmOps: MemoryOps {
    /// `C = alpha * op(A) op(B) + beta * C`, FP32 accumulation (see [`Gemm`]).
    fn gemm(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        c: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()>;
}
