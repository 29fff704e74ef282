//! Memory by category, computed from buffer sizes: what the precision study reports.

use crate::config::{Arch, Precision, TrainConfig};
use serde::{Deserialize, Serialize};

/// Peak device bytes of one training step, by category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// FP32 master weights (none in pure BF16).
    pub master: u64,
    /// The low-precision weights the forward pass reads (the model copy, or the BF16
    /// parameters themselves in pure BF16).
    pub model_copy: u64,
    /// The gradient arena (two with gradient accumulation: the sum and the micro-batch's).
    pub grads: u64,
    /// Optimizer state (AdamW moments, FP32): this rank's shard under ZeRO-1.
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

/// Parameters of the model a config describes (HF GPT-2 layout with its tied head, or HF
/// Llama); saturates at `u64::MAX` for configs no machine holds.
pub fn num_params(cfg: &TrainConfig) -> u64 {
    sat(params_wide(cfg, cfg.model.vocab_size))
}

fn sat(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Parameters with a vocabulary of `vocab` rows (HF's count with the real one, the arena's with
/// the padded one).
fn params_wide(cfg: &TrainConfig, vocab: usize) -> u128 {
    let m = &cfg.model;
    if m.arch == Arch::Llama {
        let (c, v, l) = (m.n_embd as u128, vocab as u128, m.n_layer as u128);
        let hd = (m.n_embd / m.n_head.max(1)) as u128;
        let (q, kv, f) = (
            m.n_head as u128 * hd,
            m.kv_heads() as u128 * hd,
            m.llama_intermediate() as u128,
        );
        let block = c * q + 2 * c * kv + q * c + 3 * c * f + 2 * c;
        let head = if m.tie_word_embeddings { 0 } else { v * c };
        return v * c + l * block + c + head;
    }
    let (c, v, p, l) = (
        m.n_embd as u128,
        vocab as u128,
        m.n_positions as u128,
        m.n_layer as u128,
    );
    let block =
        2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c);
    v * c + p * c + l * block + 2 * c
}

/// The breakdown for a config (each figure saturates at `u64::MAX`).
pub fn estimate(cfg: &TrainConfig) -> MemoryBreakdown {
    let n = params_wide(
        cfg,
        crate::model::common::padded_vocab(cfg.model.vocab_size),
    );
    let p = cfg.precision;
    let low = p.compute_dtype().size_in_bytes() as u128;
    let m = &cfg.model;
    let (b, t, c, h, v) = (
        cfg.batch_size as u128,
        m.n_positions as u128,
        m.n_embd as u128,
        m.n_head as u128,
        crate::model::common::padded_vocab(m.vocab_size) as u128,
    );
    let tokens = b * t;
    if m.arch == Arch::Llama {
        return llama_estimate(cfg, n, tokens);
    }
    // Per token and layer: FP32 layer-norm outputs (2c) and the residual sums (2c, in the
    // residual dtype), low-precision
    // GEMM inputs/outputs and the GELU (16c, of which the two layer-norm casts vanish in
    // FP32), attention's FP32 log-sum-exp (h floats: the tiled attention saves nothing of
    // size t), layer-norm mean and rstd (4 floats).
    let casts = if p == Precision::Fp32 { 0 } else { 2 * c };
    let res = cfg.residual_dtype.dtype().size_in_bytes() as u128;
    let gelu = if cfg.recompute_gelu { 4 * c } else { 0 };
    let per_layer = 2 * c * 4 + 2 * c * res + (14 * c - gelu + casts) * low + h * 4 + 4 * 4;
    // Embeddings (token, position, sum: FP32), the final layer norm (+ cast), the logits
    // (low) and the fused classifier's gradient in the same dtype (computed in the forward,
    // alive until the backward takes it), the per-token losses.
    let head = 3 * c * 4 + c * 4 + casts / 2 * low + 2 * v * low + 4;
    let activations = tokens * (m.n_layer as u128 * per_layer + head);
    breakdown(cfg, n, activations)
}

/// [`estimate`] for a Llama of `n` parameters at `tokens` tokens a micro-batch. Per token
/// and layer: the two RMSNorm outputs and the residual sums (FP32) with their low casts, the
/// packed query/key/value projection (low), the rotary embedding's packed FP32 output (the
/// attention input) and its low cast, the log-sum-exp, the
/// attention output and `o_proj` (low), the packed gate/up projection and the SwiGLU output
/// (low, `2f` and `f` wide), the norms' `rstd`.
fn llama_estimate(cfg: &TrainConfig, n: u128, tokens: u128) -> MemoryBreakdown {
    let m = &cfg.model;
    let p = cfg.precision;
    let low = p.compute_dtype().size_in_bytes() as u128;
    let c = m.n_embd as u128;
    let hd = (m.n_embd / m.n_head.max(1)) as u128;
    let (h, q, kv, f) = (
        m.n_head as u128,
        m.n_head as u128 * hd,
        m.kv_heads() as u128 * hd,
        m.llama_intermediate() as u128,
    );
    let casts = if p == Precision::Fp32 { 0 } else { 2 * c };
    let packed = q + 2 * kv;
    let per_layer = 4 * c * 4
        + casts * low
        + packed * low
        + packed * (4 + low)
        + h * 4
        + (q + c) * low
        + 3 * f * low
        + 2 * 4;
    let v = crate::model::common::padded_vocab(m.vocab_size) as u128;
    let head = 2 * c * 4 + casts / 2 * low + 2 * v * low + 4;
    let activations = tokens * (m.n_layer as u128 * per_layer + head);
    breakdown(cfg, n, activations)
}

/// The breakdown of `n` parameters under `cfg`'s precision (FP32 master unless pure BF16, a
/// 16-bit model copy unless FP32, the gradient arena's dtype, two FP32 AdamW moments) beside
/// `activations` bytes.
fn breakdown(cfg: &TrainConfig, n: u128, activations: u128) -> MemoryBreakdown {
    let p = cfg.precision;
    MemoryBreakdown {
        master: sat(if p.has_master() { 4 * n } else { 0 }),
        model_copy: sat(match p {
            Precision::Fp32 => 0,
            _ => 2 * n,
        }),
        // accumulation adds each later micro-batch's gradients from a second arena
        grads: sat(cfg.grad_dtype.dtype().size_in_bytes() as u128
            * n
            * if cfg.grad_accum_steps > 1 { 2 } else { 1 }),
        optimizer: sat(8 * n),
        activations: sat(activations),
    }
}

/// The memory this machine can give a new allocation (Linux: `MemAvailable` of
/// `/proc/meminfo`), or `None` where it cannot be read.
pub fn available_host_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a config whose estimated peak memory of one step ([`estimate`]) exceeds
/// `available` bytes, before anything is allocated, with the estimate in the message.
pub fn check_fits(cfg: &TrainConfig, available: u64) -> crate::error::Result<()> {
    let e = estimate(cfg);
    let total = [e.master, e.model_copy, e.grads, e.optimizer, e.activations]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b));
    if total <= available {
        return Ok(());
    }
    let weights = total.saturating_sub(e.activations);
    Err(crate::error::TrainError::invalid(
        "model",
        format!(
            "{} layers x {} wide, vocabulary {}, batch_size {} x context {}",
            cfg.model.n_layer,
            cfg.model.n_embd,
            cfg.model.vocab_size,
            cfg.batch_size,
            cfg.model.n_positions
        ),
        format!(
            "a training step needs about {} ({} of weights, gradients and optimizer state for \
             {} parameters, {} of activations), more than the {} available; lower batch_size, \
             model.n_positions or the model's size",
            human(total),
            human(weights),
            num_params(cfg),
            human(e.activations),
            human(available)
        ),
    ))
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
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        assert_eq!(num_params(&cfg), 124_439_808);
    }

    #[test]
    fn llama_parameters_follow_hf() {
        // the golden llama_tiny shape: 2 layers, 64 wide, 4 heads of 16, 2 key/value heads,
        // SwiGLU 176, vocabulary 256, untied head
        let cfg = TrainConfig {
            model: crate::config::ModelConfig {
                arch: Arch::Llama,
                n_layer: 2,
                n_embd: 64,
                n_head: 4,
                n_kv_head: 2,
                intermediate_size: 176,
                n_positions: 64,
                vocab_size: 256,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        let per_layer = 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 176 + 2 * 64;
        assert_eq!(num_params(&cfg), 2 * 256 * 64 + 2 * per_layer + 64);
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
