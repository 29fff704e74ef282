//! Autocast: the cast categories ops declare ([`CastPolicy`]) and the autocast setting.
//!
//! Each op declares its category ([`crate::TapeOp::cast_policy`]); the tape applies it to the
//! op's inputs. The built-in ops follow PyTorch's CUDA autocast lists by category (see
//! `design.md`):
//!
//! | op | category | inputs | output |
//! | --- | --- | --- | --- |
//! | `linear`, `matmul` (GEMMs) | [`CastPolicy::Lower`] | cast to the autocast dtype (weights: cached cast or the model copy) | autocast dtype (FP32 accumulation) |
//! | `attention` (QK^T, softmax, PV) | [`CastPolicy::Lower`] | cast to the autocast dtype | autocast dtype; softmax in FP32 inside, probabilities saved low |
//! | `layer_norm`, `rms_norm` | [`CastPolicy::Fp32LowOut`] | read as stored, widened to FP32 | autocast dtype (see below) |
//! | `softmax`, `log_softmax`, `exp` | [`CastPolicy::Fp32`] | read as stored, widened to FP32 | FP32 |
//! | `cross_entropy`, `mse_loss`, `sum`, `mean` (losses, reductions) | [`CastPolicy::Fp32`] | read as stored, widened to FP32 | FP32 |
//! | `embedding` | [`CastPolicy::Fp32`] | read as stored (a gather is exact) | FP32, so the residual stream is FP32 |
//! | `add`, `sub`, `mul`, `concat` | [`CastPolicy::Promote`] | read as stored, widened to FP32 | the widest input dtype |
//! | `gelu`, `relu`, `silu`, `sigmoid`, `tanh`, `neg`, `scale`, `dropout`, `transpose`, `split` (not on PyTorch's lists: run in their input's dtype) | [`CastPolicy::Promote`] | as stored | its input's dtype |
//!
//! Kernels widen every input to FP32 on load, so "upcast the inputs" of an FP32 op never
//! materialises an FP32 copy. `layer_norm` and `rms_norm` compute in FP32 like PyTorch, but
//! under autocast store their result directly in the autocast dtype: in a transformer their
//! only consumers are lowered GEMMs, which PyTorch would feed the same value (FP32 result
//! rounded once to nearest even), so the numbers are identical and the FP32 copy is never kept.
//!
//! Without an autocast dtype every op computes in FP32 (inputs widened) and `Lower` ops bring
//! their inputs to the widest input dtype (a GEMM needs both operands in one format).

use mp_dtype::DType;

/// An autocast category: how an op's inputs are brought to a dtype and which dtype its output
/// has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastPolicy {
    /// Inputs cast to the autocast dtype, output in it (FP32 accumulation inside).
    Lower,
    /// Inputs read as stored and widened; FP32 compute; FP32 output.
    Fp32,
    /// FP32 compute like [`CastPolicy::Fp32`], output rounded once to the autocast dtype.
    Fp32LowOut,
    /// Inputs read as stored; output in the widest input dtype.
    Promote,
}

/// An autocast setting: `Some(dtype)` lowers [`CastPolicy::Lower`] ops to `dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Autocast {
    /// The low-precision dtype (F16 or BF16), or `None` for full precision.
    pub dtype: Option<DType>,
}

impl Autocast {
    /// No autocast: everything in FP32.
    pub const OFF: Autocast = Autocast { dtype: None };

    /// Autocast to `dtype`.
    pub const fn to(dtype: DType) -> Self {
        Autocast { dtype: Some(dtype) }
    }
}

/// The wider of two dtypes in PyTorch's promotion order: F32 beats everything; F16 with BF16
/// promotes to F32 (neither holds the other); otherwise the one with more bytes.
pub fn widest(a: DType, b: DType) -> DType {
    if a == b {
        a
    } else if a.size_in_bytes() != b.size_in_bytes() {
        if a.size_in_bytes() > b.size_in_bytes() {
            a
        } else {
            b
        }
    } else {
        DType::F32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_follows_pytorch() {
        assert_eq!(widest(DType::BF16, DType::F32), DType::F32);
        assert_eq!(widest(DType::F16, DType::BF16), DType::F32);
        assert_eq!(widest(DType::BF16, DType::BF16), DType::BF16);
        assert_eq!(widest(DType::F8E4M3, DType::F16), DType::F16);
    }
}
