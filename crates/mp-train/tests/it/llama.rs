//! Golden tests of the Llama against HF `LlamaForCausalLM` (PyTorch, CPU):
//! `golden/llama_tiny.*` (the config read from its HF `config.json`), through the
//! shared harness (`golden.rs`).

use std::path::Path;

use mp_autograd::{Autocast, ParamLayout};
use mp_dtype::DType;
use mp_kernels::Backend;
use mp_kernels::cpu::CpuBackend;
use mp_train::model::{Batch, Llama, LlamaConfig};
use serde_json::Value;

use crate::golden::{self, GoldenModel};

impl<B: Backend> GoldenModel<B> for Llama<B> {
    const STEM: &'static str = "llama_tiny";
    fn load(be: &B, dir: &Path, json: &Value) -> Self {
        let hf = json["hf_config_file"]
            .as_str()
            .unwrap_or("llama_tiny.config.json");
        let config = LlamaConfig::from_hf_json(&dir.join(hf)).unwrap();
        Llama::from_safetensors(be, config, &dir.join("llama_tiny.safetensors")).unwrap()
    }
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn batch(&self, be: &B, ids: &[u32], targets: &[u32], b: usize, t: usize) -> Batch<B> {
        Llama::batch(self, be, ids, Some(targets), b, t).unwrap()
    }
    fn evaluate(&self, be: &B, batch: &Batch<B>, ac: Autocast) -> (Vec<f32>, Option<f32>) {
        let (logits, loss) = Llama::evaluate(self, be, batch, ac).unwrap();
        let v = GoldenModel::<B>::vocab(self);
        (
            golden::unpadded(logits, v, mp_train::model::common::padded_vocab(v)),
            loss,
        )
    }
    fn forward_backward(&mut self, be: &B, batch: &Batch<B>, ac: Autocast) -> f32 {
        Llama::forward_backward(self, be, batch, ac, 1.0).unwrap()
    }
    fn zero_grads(&mut self, be: &B) {
        Llama::zero_grads(self, be).unwrap()
    }
    fn named_grads(&self, be: &B) -> Vec<(String, Vec<f32>)> {
        Llama::named_grads(self, be).unwrap()
    }
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn enable_model_copy(&mut self, be: &B, dtype: DType) {
        Llama::enable_model_copy(self, be, dtype).unwrap()
    }
    fn arenas(&mut self) -> (&mut B::Buffer, &B::Buffer) {
        (&mut self.params, &self.grads)
    }
}

#[test]
fn golden_llama_fp32_logits_loss_and_every_gradient() {
    golden::fp32_logits_loss_and_every_gradient::<_, Llama<CpuBackend>>(&CpuBackend::new());
}

#[test]
fn golden_llama_bf16_and_fp16_autocast_logits() {
    golden::bf16_and_fp16_autocast_logits::<_, Llama<CpuBackend>>(&CpuBackend::new());
}

#[test]
fn golden_llama_fp32_adamw_training_losses() {
    golden::fp32_adamw_training_losses::<_, Llama<CpuBackend>>(&CpuBackend::new());
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_llama_fp32_logits_loss_and_every_gradient_wgpu() {
    let test = "golden_llama_fp32_logits_loss_and_every_gradient_wgpu";
    if let Some(be) = crate::common::wgpu_backend(test) {
        golden::fp32_logits_loss_and_every_gradient::<_, Llama<_>>(be);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_llama_bf16_and_fp16_autocast_logits_wgpu() {
    if let Some(be) = crate::common::wgpu_backend("golden_llama_bf16_and_fp16_autocast_logits_wgpu")
    {
        golden::bf16_and_fp16_autocast_logits::<_, Llama<_>>(be);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_llama_fp32_adamw_training_losses_wgpu() {
    if let Some(be) = crate::common::wgpu_backend("golden_llama_fp32_adamw_training_losses_wgpu") {
        golden::fp32_adamw_training_losses::<_, Llama<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_llama_fp32_logits_loss_and_every_gradient_cuda() {
    let test = "golden_llama_fp32_logits_loss_and_every_gradient_cuda";
    if let Some(be) = crate::common::cuda_backend(test) {
        golden::fp32_logits_loss_and_every_gradient::<_, Llama<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_llama_bf16_and_fp16_autocast_logits_cuda() {
    if let Some(be) = crate::common::cuda_backend("golden_llama_bf16_and_fp16_autocast_logits_cuda")
    {
        golden::bf16_and_fp16_autocast_logits::<_, Llama<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_llama_fp32_adamw_training_losses_cuda() {
    if let Some(be) = crate::common::cuda_backend("golden_llama_fp32_adamw_training_losses_cuda") {
        golden::fp32_adamw_training_losses::<_, Llama<_>>(be);
    }
}

/// The Llama sees token order (through the rotary embedding only: it has no position
/// embedding): swapping the first two tokens changes the logits at every later position; and
/// it is causal with positions from 0: the first 16 positions of a 64-token sequence have the
/// logits of the 16-token prefix alone.
#[test]
fn llama_logits_see_order_and_are_causal_at_the_training_context() {
    let be = CpuBackend::new();
    let config = LlamaConfig {
        vocab_size: 256,
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 64,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
        initializer_range: 0.02,
    };
    let m = Llama::new(&be, config, 7).unwrap();
    let ids: Vec<u32> = (0..64).map(|i| (i * 37 + 11) % 256).collect();
    let logits = |ids: &[u32]| {
        let batch = Llama::batch(&m, &be, ids, None, 1, ids.len()).unwrap();
        Llama::evaluate(&m, &be, &batch, Autocast::OFF).unwrap().0
    };
    let v = mp_train::model::common::padded_vocab(256);
    let full = logits(&ids);
    let mut swapped = ids.clone();
    swapped.swap(0, 1);
    let other = logits(&swapped);
    for p in 1..64 {
        let (a, b) = (&full[p * v..p * v + 256], &other[p * v..p * v + 256]);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff > 1e-6,
            "position {p}: swapping tokens 0 and 1 changed nothing ({diff})"
        );
    }
    let prefix = logits(&ids[..16]);
    for (i, (a, b)) in full[..16 * v].iter().zip(&prefix).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
            "logit {i}: {a} vs {b}"
        );
    }
}
