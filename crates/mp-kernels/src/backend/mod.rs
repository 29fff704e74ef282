//! The backend: buffers and the views ops take, and the op families a device implements.
//!
//! A device implements one trait per op family; [`Backend`] is their sum, implemented for
//! every type that implements them all:
//!
//! | family | what | file |
//! | --- | --- | --- |
//! | [`MemoryOps`] | buffers, transfers, casts, fills; the device's own collectives ([`DeviceComm`]) | `memory.rs` |
//! | [`GemmOps`] | (batched) matrix products | `gemm.rs` |
//! | [`PointwiseOps`] | element-wise unary and binary ops, broadcasts, dropout | `pointwise.rs` |
//! | [`RowOps`] | row and column reductions, softmax | `rows.rs` |
//! | [`NormOps`] | layer norm, RMSNorm | `norm.rs` |
//! | [`EmbeddingOps`] | gathers and scatter-adds | `embedding.rs` |
//! | [`LayoutOps`], [`AttentionOps`] | head-layout copies, transposes, the rotary embedding; attention | `attention.rs` |
//! | [`LossOps`] | cross-entropy | `loss.rs` |
//! | [`OptimOps`] | the fused gradient check and optimizer passes; precision-health counts | `optim.rs` |
//!
//! A fused op that a backend has no kernel for keeps its trait's **default body, composed from
//! that backend's own primitives** (never a round trip through the host): `rms_norm` from
//! reductions and broadcasts, `transpose` from the head-layout copy, `attention` from batched
//! GEMMs and the row softmax. A backend overrides the default with a kernel when it has one.
//!
//! Each op's **contract** (the checks of lengths, dtypes and shapes, the derived scalars, the
//! error messages) is a function of [`contract`] next to nothing else: every backend calls it
//! before it launches anything, so all of them refuse a bad call with the same message.
//!
//! Shapes are row-major and given in elements. A `View` names `len` elements of a buffer
//! starting at element `offset`.
//!
//! Callers name ops through the traits; generic code bounded by [`Backend`] sees every method,
//! and code using a concrete backend imports [`crate::prelude`].

pub mod attention;
pub mod contract;
pub mod embedding;
pub mod gemm;
pub mod loss;
pub mod memory;
pub mod norm;
pub mod optim;
pub mod pointwise;
pub mod rows;

pub use attention::{Attention, AttentionOps, Heads, LayoutOps, Rope};
pub use embedding::EmbeddingOps;
pub use gemm::{
    BiasGradOf, Gemm, GemmOps, compose_gemm_bias, compose_gemm_bias_gelu, compose_gemm_bias_grad,
    compose_gemm_dgelu,
};
pub use loss::LossOps;
pub use memory::{DeviceComm, MemoryOps};
pub use mp_dtype::Rounding;
pub use norm::NormOps;
pub use optim::{
    AdamW, GradStats, OptimOps, RangeCounts, RangeQuery, Sgd, UpdateCounts, range_counts_of,
};
pub use pointwise::{BinaryOp, PointwiseOps, UnaryOp};
pub use rows::{ReduceOp, RowOps};

use mp_dtype::DType;

/// A flat device buffer of one dtype.
pub trait DeviceBuffer: Send + Sync {
    /// The storage format of every element.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read-only window of `len` elements of a buffer, starting at element `offset`.
#[derive(Debug)]
pub struct View<'a, T: ?Sized> {
    /// The buffer.
    pub buf: &'a T,
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl<T: ?Sized> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for View<'_, T> {}

/// A writable window of `len` elements of a buffer, starting at element `offset`.
#[derive(Debug)]
pub struct ViewMut<'a, T: ?Sized> {
    /// The buffer.
    pub buf: &'a mut T,
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl<'a, T: DeviceBuffer + ?Sized> View<'a, T> {
    /// The dtype of the underlying buffer.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
}

impl<'a, T: DeviceBuffer + ?Sized> ViewMut<'a, T> {
    /// The dtype of the underlying buffer.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    /// Reborrows as a shorter-lived mutable view of the same window.
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut {
            buf: self.buf,
            offset: self.offset,
            len: self.len,
        }
    }
    /// Reborrows as a read-only view of the same window.
    pub fn as_view(&self) -> View<'_, T> {
        View {
            buf: self.buf,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Views of whole buffers and of element ranges; implemented for every [`DeviceBuffer`].
pub trait BufferExt: DeviceBuffer {
    /// The whole buffer, read-only.
    fn view(&self) -> View<'_, Self> {
        View {
            buf: self,
            offset: 0,
            len: self.len(),
        }
    }
    /// The whole buffer, writable.
    fn view_mut(&mut self) -> ViewMut<'_, Self> {
        let len = self.len();
        ViewMut {
            buf: self,
            offset: 0,
            len,
        }
    }
    /// `len` elements from `offset`, read-only. Panics if the range is out of bounds (a bug in
    /// the caller, never user input: callers derive ranges from validated shapes).
    fn slice(&self, offset: usize, len: usize) -> View<'_, Self> {
        assert!(
            offset + len <= self.len(),
            "view {offset}+{len} out of {} elements",
            self.len()
        );
        View {
            buf: self,
            offset,
            len,
        }
    }
    /// `len` elements from `offset`, writable. Panics if the range is out of bounds.
    fn slice_mut(&mut self, offset: usize, len: usize) -> ViewMut<'_, Self> {
        assert!(
            offset + len <= self.len(),
            "view {offset}+{len} out of {} elements",
            self.len()
        );
        ViewMut {
            buf: self,
            offset,
            len,
        }
    }
}
impl<T: DeviceBuffer + ?Sized> BufferExt for T {}

/// A compute device: the sum of every op family (see the module docs). Implemented for every
/// type that implements all of them; a device implements the families, never this trait.
///
/// All ops are asynchronous on devices that can be: only the `download_*` methods,
/// [`OptimOps::grad_stats`] and [`MemoryOps::synchronize`] wait for the device.
pub trait Backend:
    MemoryOps
    + GemmOps
    + PointwiseOps
    + RowOps
    + NormOps
    + EmbeddingOps
    + LayoutOps
    + AttentionOps
    + LossOps
    + OptimOps
{
}

impl<T> Backend for T where
    T: MemoryOps
        + GemmOps
        + PointwiseOps
        + RowOps
        + NormOps
        + EmbeddingOps
        + LayoutOps
        + AttentionOps
        + LossOps
        + OptimOps
{
}
