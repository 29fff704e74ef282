//! [`not_compiled_backend!`]: the stand-in of a GPU backend whose feature is off, generated
//! once for both (`cuda/stub.rs`, `wgpu/stub.rs`).
//!
//! The stand-in has the real backend's names, so callers compile without `cfg`, and
//! constructors that return [`crate::KernelError::NotCompiled`]. Its types are uninhabited: no
//! value of them can exist, so every op is unreachable by construction (`match *self {}`), not
//! a runtime stub. A new op is added to the macro once, not to each stand-in.

/// Defines the uninhabited backend `$be`, buffer `$buf` and index `$idx`, constructors
/// `new()` and `with_options($opts)` that fail with `NotCompiled { backend, feature }`, and
/// every op family for them.
macro_rules! not_compiled_backend {
    ($be:ident, $buf:ident, $idx:ident, $opts:ty, $backend:literal, $feature:literal) => {
        use $crate::backend::*;
        use $crate::{DType, KernelError, Result};

        #[doc = concat!("The ", $backend, " backend, not compiled into this build.")]
        #[derive(Debug)]
        pub enum $be {}

        #[doc = concat!("A ", $backend, " buffer, not compiled into this build.")]
        #[derive(Debug)]
        pub enum $buf {}

        #[doc = concat!("A ", $backend, " index buffer, not compiled into this build.")]
        #[derive(Debug)]
        pub enum $idx {}

        fn not_compiled() -> KernelError {
            KernelError::NotCompiled {
                backend: $backend,
                feature: $feature,
            }
        }

        impl $be {
            #[doc = concat!("Always [`KernelError::NotCompiled`]: rebuild with `--features ", $feature, "`.")]
            pub fn new() -> Result<Self> {
                Err(not_compiled())
            }
            #[doc = concat!("Always [`KernelError::NotCompiled`]: rebuild with `--features ", $feature, "`.")]
            pub fn with_options(_opts: $opts) -> Result<Self> {
                Err(not_compiled())
            }
        }

        impl DeviceBuffer for $buf {
            fn dtype(&self) -> DType {
                match *self {}
            }
            fn len(&self) -> usize {
                match *self {}
            }
        }

        type V<'a> = View<'a, $buf>;
        type M<'a> = ViewMut<'a, $buf>;

        impl MemoryOps for $be {
            type Buffer = $buf;
            type Index = $idx;
            fn name(&self) -> String {
                match *self {}
            }
            fn zeros(&self, _: DType, _: usize) -> Result<$buf> {
                match *self {}
            }
            fn upload_f32(&self, _: &[f32], _: DType) -> Result<$buf> {
                match *self {}
            }
            fn upload_bytes(&self, _: &[u8], _: DType) -> Result<$buf> {
                match *self {}
            }
            fn download_f32(&self, _: V<'_>) -> Result<Vec<f32>> {
                match *self {}
            }
            fn download_bytes(&self, _: V<'_>) -> Result<Vec<u8>> {
                match *self {}
            }
            fn upload_index(&self, _: &[u32]) -> Result<$idx> {
                match *self {}
            }
            fn index_values<'i>(&self, _: &'i $idx) -> &'i [u32] {
                match *self {}
            }
            fn synchronize(&self) -> Result<()> {
                match *self {}
            }
            fn cast(&self, _: V<'_>, _: M<'_>, _: Rounding) -> Result<()> {
                match *self {}
            }
            fn fill(&self, _: M<'_>, _: f32) -> Result<()> {
                match *self {}
            }
        }

        impl GemmOps for $be {
            fn gemm(&self, _: V<'_>, _: V<'_>, _: M<'_>, _: &Gemm) -> Result<()> {
                match *self {}
            }
        }

        impl PointwiseOps for $be {
            fn binary(&self, _: BinaryOp, _: V<'_>, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn unary(&self, _: UnaryOp, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn unary_backward(&self, _: UnaryOp, _: V<'_>, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn scale(&self, _: V<'_>, _: f32, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn axpy(&self, _: f32, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn bias_add(&self, _: V<'_>, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn mul_broadcast(
                &self,
                _: V<'_>,
                _: Option<V<'_>>,
                _: Option<V<'_>>,
                _: M<'_>,
            ) -> Result<()> {
                match *self {}
            }
            fn dropout(&self, _: V<'_>, _: f32, _: u64, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn swiglu(&self, _: V<'_>, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn swiglu_backward(&self, _: V<'_>, _: V<'_>, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
        }

        impl RowOps for $be {
            fn reduce_rows(&self, _: ReduceOp, _: V<'_>, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn sum_cols_acc(&self, _: V<'_>, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn softmax(&self, _: V<'_>, _: usize, _: bool, _: bool, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn softmax_backward(
                &self,
                _: V<'_>,
                _: V<'_>,
                _: usize,
                _: bool,
                _: M<'_>,
            ) -> Result<()> {
                match *self {}
            }
        }

        impl NormOps for $be {
            fn layer_norm(
                &self,
                _: V<'_>,
                _: V<'_>,
                _: V<'_>,
                _: f32,
                _: M<'_>,
                _: M<'_>,
                _: M<'_>,
            ) -> Result<()> {
                match *self {}
            }
            fn layer_norm_backward(
                &self,
                _: V<'_>,
                _: V<'_>,
                _: V<'_>,
                _: V<'_>,
                _: V<'_>,
                _: M<'_>,
                _: M<'_>,
                _: M<'_>,
            ) -> Result<()> {
                match *self {}
            }
        }

        impl LossOps for $be {
            fn cross_entropy(&self, _: V<'_>, _: &$idx, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn cross_entropy_backward(
                &self,
                _: V<'_>,
                _: &$idx,
                _: usize,
                _: f32,
                _: M<'_>,
            ) -> Result<()> {
                match *self {}
            }
        }

        impl EmbeddingOps for $be {
            fn embedding(&self, _: V<'_>, _: &$idx, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn embedding_backward(&self, _: V<'_>, _: &$idx, _: usize, _: M<'_>) -> Result<()> {
                match *self {}
            }
        }

        impl LayoutOps for $be {
            fn rope(&self, _: V<'_>, _: V<'_>, _: V<'_>, _: &Rope, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn split_heads(&self, _: V<'_>, _: &Heads, _: M<'_>) -> Result<()> {
                match *self {}
            }
            fn merge_heads(&self, _: V<'_>, _: &Heads, _: M<'_>, _: bool) -> Result<()> {
                match *self {}
            }
        }

        impl AttentionOps for $be {}

        impl OptimOps for $be {
            fn grad_stats(&self, _: V<'_>, _: f32) -> Result<GradStats> {
                match *self {}
            }
            fn adamw(
                &self,
                _: M<'_>,
                _: V<'_>,
                _: M<'_>,
                _: M<'_>,
                _: Option<M<'_>>,
                _: &AdamW,
            ) -> Result<()> {
                match *self {}
            }
            fn sgd(&self, _: M<'_>, _: V<'_>, _: M<'_>, _: Option<M<'_>>, _: &Sgd) -> Result<()> {
                match *self {}
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn constructors_say_the_feature_is_missing() {
                for r in [$be::new(), $be::with_options(<$opts>::default())] {
                    let e = r.expect_err("no backend without the feature");
                    assert!(
                        matches!(
                            e,
                            KernelError::NotCompiled {
                                backend: $backend,
                                feature: $feature
                            }
                        ),
                        "{e}"
                    );
                    assert!(e.to_string().contains(concat!("--features ", $feature)), "{e}");
                }
            }
        }
    };
}
pub(crate) use not_compiled_backend;
