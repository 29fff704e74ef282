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
