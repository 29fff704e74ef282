//! Memory by category, computed from buffer sizes: what the precision study reports.

use crate::config::{Precision, TrainConfig};
use serde::{Deserialize, Serialize};

/// Peak device bytes of one training step, by category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// FP32 master weights (none in pure BF16).
    pub master: u64,
    /// The low-precision weights the forward pass reads (the model copy, or the BF16
    /// parameters themselves in pure BF16).
    pub model_copy: u64,
    /// The gradient arena.
    pub grads: u64,
    /// Optimizer state (AdamW moments, FP32).
    pub optimizer: u64,
    /// Activations saved for backward by one micro-batch (from the tape's tensor shapes and
    /// dtypes under the autocast policy).
    pub activations: u64,
}

impl MemoryBreakdown {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.master + self.model_copy + self.grads + self.optimizer + self.activations
    }
}

/// Parameters of the GPT a config describes (HF GPT-2 layout, tied head).
pub fn num_params(cfg: &TrainConfig) -> u64 {
    let m = &cfg.model;
    let (c, v, p, l) = (
        m.n_embd as u64,
        m.vocab_size as u64,
        m.n_positions as u64,
        m.n_layer as u64,
    );
    let block =
        2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c);
    v * c + p * c + l * block + 2 * c
}

/// The breakdown for a config.
pub fn estimate(cfg: &TrainConfig) -> MemoryBreakdown {
    let n = num_params(cfg);
    let p = cfg.precision;
    let low = p.compute_dtype().size_in_bytes() as u64;
    let m = &cfg.model;
    let (b, t, c, h, v) = (
        cfg.batch_size as u64,
        m.n_positions as u64,
        m.n_embd as u64,
        m.n_head as u64,
        m.vocab_size as u64,
    );
    let tokens = b * t;
    // Per token and layer: FP32 layer-norm outputs and residual sums (4c), low-precision
    // GEMM inputs/outputs and the GELU (16c, of which the two layer-norm casts vanish in
    // FP32), attention probabilities (h t), layer-norm mean and rstd (4 floats).
    let casts = if p == Precision::Fp32 { 0 } else { 2 * c };
    let per_layer = 4 * c * 4 + (14 * c + casts) * low + h * t * low + 4 * 4;
    // Embeddings (token, position, sum: FP32), the final layer norm (+ cast), the logits
    // (low) and their FP32 upcast for the loss, the per-token losses.
    let head = 3 * c * 4 + c * 4 + casts / 2 * low + v * low + v * 4 + 4;
    let activations = tokens * (m.n_layer as u64 * per_layer + head);
    MemoryBreakdown {
        master: if p.has_master() { 4 * n } else { 0 },
        model_copy: match p {
            Precision::Fp32 => 0,
            _ => 2 * n,
        },
        grads: 4 * n,
        optimizer: 8 * n,
        activations,
    }
}

/// `bytes` as a short human string (KiB/MiB/GiB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters() {
        let cfg = TrainConfig {
            model: crate::config::ModelConfig {
                n_layer: 12,
                n_embd: 768,
                n_head: 12,
                n_positions: 1024,
                vocab_size: 50257,
            },
            ..TrainConfig::default()
        };
        assert_eq!(num_params(&cfg), 124_439_808);
    }

    #[test]
    fn low_precision_saves_activations_and_pure_bf16_drops_the_master() {
        let mut cfg = TrainConfig {
            precision: Precision::Fp32,
            ..TrainConfig::default()
        };
        let fp32 = estimate(&cfg);
        cfg.precision = Precision::Bf16;
        let bf16 = estimate(&cfg);
        cfg.precision = Precision::Bf16Sr;
        let sr = estimate(&cfg);
        assert!(bf16.activations < fp32.activations);
        assert_eq!(sr.master, 0);
        assert_eq!(bf16.model_copy * 2, bf16.master);
        assert!(sr.total() < bf16.total());
    }
}
