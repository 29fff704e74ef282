//! The CUDA backend's stand-in when the `cuda` feature is off: the same names, so callers
//! compile without `cfg`, and a constructor that returns [`KernelError::NotCompiled`].
//!
//! The types are uninhabited: no value of them can exist, so every trait method is
//! unreachable by construction (`match *self {}`), not a runtime stub.

use crate::backend::*;
use crate::{DType, KernelError, Result};

/// Options of the CUDA backend (accepted and ignored without the `cuda` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Let FP32 GEMMs use TF32 tensor cores.
    pub allow_tf32: bool,
}

/// The CUDA backend, not compiled into this build.
#[derive(Debug)]
pub enum CudaBackend {}

/// A CUDA buffer, not compiled into this build.
#[derive(Debug)]
pub enum CudaBuffer {}

/// A CUDA index buffer, not compiled into this build.
#[derive(Debug)]
pub enum CudaIndex {}

fn not_compiled() -> KernelError {
    KernelError::NotCompiled {
        backend: "cuda",
        feature: "cuda",
    }
}

impl CudaBackend {
    /// Always [`KernelError::NotCompiled`]: rebuild with `--features cuda`.
    pub fn new() -> Result<Self> {
        Err(not_compiled())
    }
    /// Always [`KernelError::NotCompiled`]: rebuild with `--features cuda`.
    pub fn with_options(_opts: CudaOptions) -> Result<Self> {
        Err(not_compiled())
    }
}

impl DeviceBuffer for CudaBuffer {
    fn dtype(&self) -> DType {
        match *self {}
    }
    fn len(&self) -> usize {
        match *self {}
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Index = CudaIndex;
    fn name(&self) -> String {
        match *self {}
    }
    fn zeros(&self, _: DType, _: usize) -> Result<CudaBuffer> {
        match *self {}
    }
    fn upload_f32(&self, _: &[f32], _: DType) -> Result<CudaBuffer> {
        match *self {}
    }
    fn upload_bytes(&self, _: &[u8], _: DType) -> Result<CudaBuffer> {
        match *self {}
    }
    fn download_f32(&self, _: View<'_, CudaBuffer>) -> Result<Vec<f32>> {
        match *self {}
    }
    fn download_bytes(&self, _: View<'_, CudaBuffer>) -> Result<Vec<u8>> {
        match *self {}
    }
    fn upload_index(&self, _: &[u32]) -> Result<CudaIndex> {
        match *self {}
    }
    fn synchronize(&self) -> Result<()> {
        match *self {}
    }
    fn cast(&self, _: View<'_, CudaBuffer>, _: ViewMut<'_, CudaBuffer>, _: Rounding) -> Result<()> {
        match *self {}
    }
    fn fill(&self, _: ViewMut<'_, CudaBuffer>, _: f32) -> Result<()> {
        match *self {}
    }
    fn gemm(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: &Gemm,
    ) -> Result<()> {
        match *self {}
    }
    fn binary(
        &self,
        _: BinaryOp,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn scale(&self, _: View<'_, CudaBuffer>, _: f32, _: ViewMut<'_, CudaBuffer>) -> Result<()> {
        match *self {}
    }
    fn axpy(&self, _: f32, _: View<'_, CudaBuffer>, _: ViewMut<'_, CudaBuffer>) -> Result<()> {
        match *self {}
    }
    fn bias_add(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn gelu(&self, _: View<'_, CudaBuffer>, _: ViewMut<'_, CudaBuffer>) -> Result<()> {
        match *self {}
    }
    fn gelu_backward(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn reduce_rows(
        &self,
        _: ReduceOp,
        _: View<'_, CudaBuffer>,
        _: usize,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn sum_cols_acc(&self, _: View<'_, CudaBuffer>, _: ViewMut<'_, CudaBuffer>) -> Result<()> {
        match *self {}
    }
    fn softmax(
        &self,
        _: View<'_, CudaBuffer>,
        _: usize,
        _: bool,
        _: bool,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn softmax_backward(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: usize,
        _: bool,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn layer_norm(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: f32,
        _: ViewMut<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn layer_norm_backward(
        &self,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn cross_entropy(
        &self,
        _: View<'_, CudaBuffer>,
        _: &CudaIndex,
        _: usize,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn cross_entropy_backward(
        &self,
        _: View<'_, CudaBuffer>,
        _: &CudaIndex,
        _: usize,
        _: f32,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn embedding(
        &self,
        _: View<'_, CudaBuffer>,
        _: &CudaIndex,
        _: usize,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn embedding_backward(
        &self,
        _: View<'_, CudaBuffer>,
        _: &CudaIndex,
        _: usize,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn split_heads(
        &self,
        _: View<'_, CudaBuffer>,
        _: &Heads,
        _: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        match *self {}
    }
    fn merge_heads(
        &self,
        _: View<'_, CudaBuffer>,
        _: &Heads,
        _: ViewMut<'_, CudaBuffer>,
        _: bool,
    ) -> Result<()> {
        match *self {}
    }
    fn grad_stats(&self, _: View<'_, CudaBuffer>, _: f32) -> Result<GradStats> {
        match *self {}
    }
    fn adamw(
        &self,
        _: ViewMut<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: Option<ViewMut<'_, CudaBuffer>>,
        _: &AdamW,
    ) -> Result<()> {
        match *self {}
    }
    fn sgd(
        &self,
        _: ViewMut<'_, CudaBuffer>,
        _: View<'_, CudaBuffer>,
        _: ViewMut<'_, CudaBuffer>,
        _: Option<ViewMut<'_, CudaBuffer>>,
        _: &Sgd,
    ) -> Result<()> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_say_the_feature_is_missing() {
        for r in [
            CudaBackend::new(),
            CudaBackend::with_options(CudaOptions::default()),
        ] {
            let e = r.expect_err("no CUDA backend without the feature");
            assert!(
                matches!(
                    e,
                    KernelError::NotCompiled {
                        backend: "cuda",
                        feature: "cuda"
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
}
