//! Autocast: which precision each tape op runs in. The whole policy is the table [`POLICY`].
//!
//! It follows PyTorch's CUDA autocast lists by category (see `design.md`):
//!
//! | op | category | inputs | output |
//! | --- | --- | --- | --- |
//! | `linear` (GEMM + bias) | [`Precision::Lower`] | cast to the autocast dtype (weights: cached cast or the model copy) | autocast dtype (FP32 accumulation) |
//! | `attention` (QK^T, softmax, PV) | [`Precision::Lower`] | cast to the autocast dtype | autocast dtype; softmax in FP32 inside, probabilities saved low |
//! | `layer_norm` | [`Precision::Fp32LowOut`] | read as stored, widened to FP32 | autocast dtype (see below) |
//! | `cross_entropy`, `sum` (losses, reductions) | [`Precision::Fp32`] | read as stored, widened to FP32 | FP32 |
//! | `embedding` | [`Precision::Fp32`] | read as stored (a gather is exact) | FP32, so the residual stream is FP32 |
//! | `add`, `mul` | [`Precision::Promote`] | read as stored, widened to FP32 | the widest input dtype |
//! | `gelu` (not on PyTorch's lists: runs in its input's dtype) | [`Precision::Promote`] | as stored | its input's dtype |
//!
//! Kernels widen every input to FP32 on load, so "upcast the inputs" of an FP32 op never
//! materialises an FP32 copy. `layer_norm` computes in FP32 like PyTorch, but under autocast
//! stores its result directly in the autocast dtype: in a transformer its only consumers are
//! lowered GEMMs, which PyTorch would feed the same value (FP32 result rounded once to nearest
//! even), so the numbers are identical and the FP32 copy is never kept.
//!
//! Without an autocast dtype every op computes in FP32 (inputs widened) and `Lower` ops bring
//! their inputs to the widest input dtype (a GEMM needs both operands in one format).

use mp_dtype::DType;

/// The ops a tape records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `x @ W + b`.
    Linear,
    /// Causal multi-head self-attention.
    Attention,
    /// Layer normalisation.
    LayerNorm,
    /// Fused log-softmax + negative log-likelihood, mean over rows.
    CrossEntropy,
    /// Sum of all elements.
    Sum,
    /// Row gather from a table.
    Embedding,
    /// Element-wise sum.
    Add,
    /// Element-wise product.
    Mul,
    /// GELU, tanh approximation.
    Gelu,
}

impl OpKind {
    /// The op's name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Linear => "linear",
            OpKind::Attention => "attention",
            OpKind::LayerNorm => "layer_norm",
            OpKind::CrossEntropy => "cross_entropy",
            OpKind::Sum => "sum",
            OpKind::Embedding => "embedding",
            OpKind::Add => "add",
            OpKind::Mul => "mul",
            OpKind::Gelu => "gelu",
        }
    }
}

/// An autocast category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Inputs cast to the autocast dtype, output in it (FP32 accumulation inside).
    Lower,
    /// Inputs read as stored and widened; FP32 compute; FP32 output.
    Fp32,
    /// FP32 compute like [`Precision::Fp32`], output rounded once to the autocast dtype.
    Fp32LowOut,
    /// Inputs read as stored; output in the widest input dtype.
    Promote,
}

/// The autocast policy: one row per op. This table is the single source of truth.
pub const POLICY: [(OpKind, Precision); 9] = [
    (OpKind::Linear, Precision::Lower),
    (OpKind::Attention, Precision::Lower),
    (OpKind::LayerNorm, Precision::Fp32LowOut),
    (OpKind::CrossEntropy, Precision::Fp32),
    (OpKind::Sum, Precision::Fp32),
    (OpKind::Embedding, Precision::Fp32),
    (OpKind::Add, Precision::Promote),
    (OpKind::Mul, Precision::Promote),
    (OpKind::Gelu, Precision::Promote),
];

/// The category of `op` in [`POLICY`].
pub fn precision(op: OpKind) -> Precision {
    POLICY
        .iter()
        .find(|(k, _)| *k == op)
        .map(|&(_, p)| p)
        .expect("every OpKind has a row in POLICY")
}

/// An autocast setting: `Some(dtype)` lowers [`Precision::Lower`] ops to `dtype`.
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
    fn every_op_has_exactly_one_row() {
        for (k, _) in POLICY {
            assert_eq!(POLICY.iter().filter(|(j, _)| *j == k).count(), 1, "{k:?}");
        }
        assert_eq!(precision(OpKind::Linear), Precision::Lower);
        assert_eq!(precision(OpKind::CrossEntropy), Precision::Fp32);
    }

    #[test]
    fn promotion_follows_pytorch() {
        assert_eq!(widest(DType::BF16, DType::F32), DType::F32);
        assert_eq!(widest(DType::F16, DType::BF16), DType::F32);
        assert_eq!(widest(DType::BF16, DType::BF16), DType::BF16);
        assert_eq!(widest(DType::F8E4M3, DType::F16), DType::F16);
    }
}
