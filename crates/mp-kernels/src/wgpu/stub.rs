//! The wgpu backend's stand-in when the `wgpu` feature is off: the same names, so callers
//! compile without `cfg`, and a constructor that returns [`KernelError::NotCompiled`].
//!
//! The types are uninhabited: no value of them can exist, so every trait method is
//! unreachable by construction (`match *self {}`), not a runtime stub.

use crate::backend::*;
use crate::{DType, KernelError, Result};

/// Options of the wgpu backend (accepted and ignored without the `wgpu` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Caps the bytes of one storage binding below the adapter's limit.
    pub max_binding_bytes: Option<u64>,
}

/// The wgpu backend, not compiled into this build.
#[derive(Debug)]
pub enum WgpuBackend {}

/// A wgpu buffer, not compiled into this build.
#[derive(Debug)]
pub enum WgpuBuffer {}

/// A wgpu index buffer, not compiled into this build.
#[derive(Debug)]
pub enum WgpuIndex {}

fn not_compiled() -> KernelError {
    KernelError::NotCompiled {
        backend: "wgpu",
        feature: "wgpu",
    }
}

impl WgpuBackend {
    /// Always [`KernelError::NotCompiled`]: rebuild with `--features wgpu`.
    pub fn new() -> Result<Self> {
        Err(not_compiled())
    }
    /// Always [`KernelError::NotCompiled`]: rebuild with `--features wgpu`.
    pub fn with_options(_opts: WgpuOptions) -> Result<Self> {
        Err(not_compiled())
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn dtype(&self) -> DType {
        match *self {}
    }
    fn len(&self) -> usize {
        match *self {}
    }
}

impl Backend for WgpuBackend {
    type Buffer = WgpuBuffer;
    type Index = WgpuIndex;
    fn name(&self) -> String {
        match *self {}
    }
    fn zeros(&self, _: DType, _: usize) -> Result<WgpuBuffer> {
        match *self {}
    }
    fn upload_f32(&self, _: &[f32], _: DType) -> Result<WgpuBuffer> {
        match *self {}
    }
    fn upload_bytes(&self, _: &[u8], _: DType) -> Result<WgpuBuffer> {
        match *self {}
    }
    fn download_f32(&self, _: View<'_, WgpuBuffer>) -> Result<Vec<f32>> {
        match *self {}
    }
    fn download_bytes(&self, _: View<'_, WgpuBuffer>) -> Result<Vec<u8>> {
        match *self {}
    }
    fn upload_index(&self, _: &[u32]) -> Result<WgpuIndex> {
        match *self {}
    }
    fn synchronize(&self) -> Result<()> {
        match *self {}
    }
    fn cast(&self, _: View<'_, WgpuBuffer>, _: ViewMut<'_, WgpuBuffer>, _: Rounding) -> Result<()> {
        match *self {}
    }
    fn fill(&self, _: ViewMut<'_, WgpuBuffer>, _: f32) -> Result<()> {
        match *self {}
    }
    fn gemm(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: &Gemm,
    ) -> Result<()> {
        match *self {}
    }
    fn binary(
        &self,
        _: BinaryOp,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn scale(&self, _: View<'_, WgpuBuffer>, _: f32, _: ViewMut<'_, WgpuBuffer>) -> Result<()> {
        match *self {}
    }
    fn axpy(&self, _: f32, _: View<'_, WgpuBuffer>, _: ViewMut<'_, WgpuBuffer>) -> Result<()> {
        match *self {}
    }
    fn bias_add(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn gelu(&self, _: View<'_, WgpuBuffer>, _: ViewMut<'_, WgpuBuffer>) -> Result<()> {
        match *self {}
    }
    fn gelu_backward(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn reduce_rows(
        &self,
        _: ReduceOp,
        _: View<'_, WgpuBuffer>,
        _: usize,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn sum_cols_acc(&self, _: View<'_, WgpuBuffer>, _: ViewMut<'_, WgpuBuffer>) -> Result<()> {
        match *self {}
    }
    fn softmax(
        &self,
        _: View<'_, WgpuBuffer>,
        _: usize,
        _: bool,
        _: bool,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn softmax_backward(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: usize,
        _: bool,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn layer_norm(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: f32,
        _: ViewMut<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn layer_norm_backward(
        &self,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn cross_entropy(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &WgpuIndex,
        _: usize,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn cross_entropy_backward(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &WgpuIndex,
        _: usize,
        _: f32,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn embedding(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &WgpuIndex,
        _: usize,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn embedding_backward(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &WgpuIndex,
        _: usize,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn split_heads(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &Heads,
        _: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn merge_heads(
        &self,
        _: View<'_, WgpuBuffer>,
        _: &Heads,
        _: ViewMut<'_, WgpuBuffer>,
        _: bool,
    ) -> Result<()> {
        match *self {}
    }
    fn grad_stats(&self, _: View<'_, WgpuBuffer>, _: f32) -> Result<GradStats> {
        match *self {}
    }
    fn adamw(
        &self,
        _: ViewMut<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: Option<ViewMut<'_, WgpuBuffer>>,
        _: &AdamW,
    ) -> Result<()> {
        match *self {}
    }
    fn sgd(
        &self,
        _: ViewMut<'_, WgpuBuffer>,
        _: View<'_, WgpuBuffer>,
        _: ViewMut<'_, WgpuBuffer>,
        _: Option<ViewMut<'_, WgpuBuffer>>,
        _: &Sgd,
    ) -> Result<()> {
        match *self {}
    }
}
