//! Golden tests of the GPT against HF GPT-2 (PyTorch, CPU): `golden/gpt2_tiny.*`,
//! through the shared harness (`golden.rs`).

use std::path::Path;

use mp_autograd::{Autocast, ParamLayout};
use mp_dtype::DType;
use mp_kernels::Backend;
use mp_kernels::cpu::CpuBackend;
use mp_train::model::{Batch, Gpt, GptConfig};
use serde_json::Value;

use crate::golden::{self, GoldenModel};

impl<B: Backend> GoldenModel<B> for Gpt<B> {
    const STEM: &'static str = "gpt2_tiny";
    fn load(be: &B, dir: &Path, json: &Value) -> Self {
        let config: GptConfig = serde_json::from_value(json["config"].clone()).unwrap();
        Gpt::from_safetensors(be, config, &dir.join("gpt2_tiny.safetensors")).unwrap()
    }
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn batch(&self, be: &B, ids: &[u32], targets: &[u32], b: usize, t: usize) -> Batch<B> {
        Gpt::batch(self, be, ids, Some(targets), b, t).unwrap()
    }
    fn evaluate(&self, be: &B, batch: &Batch<B>, ac: Autocast) -> (Vec<f32>, Option<f32>) {
        let (logits, loss) = Gpt::evaluate(self, be, batch, ac).unwrap();
        let v = GoldenModel::<B>::vocab(self);
        (
            golden::unpadded(logits, v, mp_train::model::common::padded_vocab(v)),
            loss,
        )
    }
    fn forward_backward(&mut self, be: &B, batch: &Batch<B>, ac: Autocast) -> f32 {
        Gpt::forward_backward(self, be, batch, ac, 1.0).unwrap()
    }
    fn zero_grads(&mut self, be: &B) {
        Gpt::zero_grads(self, be).unwrap()
    }
    fn named_grads(&self, be: &B) -> Vec<(String, Vec<f32>)> {
        Gpt::named_grads(self, be).unwrap()
    }
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn enable_model_copy(&mut self, be: &B, dtype: DType) {
        Gpt::enable_model_copy(self, be, dtype).unwrap()
    }
    fn arenas(&mut self) -> (&mut B::Buffer, &B::Buffer) {
        (&mut self.params, &self.grads)
    }
}

#[test]
fn golden_gpt_fp32_logits_loss_and_every_gradient() {
    golden::fp32_logits_loss_and_every_gradient::<_, Gpt<CpuBackend>>(&CpuBackend::new());
}

#[test]
fn golden_gpt_bf16_and_fp16_autocast_logits() {
    golden::bf16_and_fp16_autocast_logits::<_, Gpt<CpuBackend>>(&CpuBackend::new());
}

#[test]
fn golden_gpt_fp32_adamw_training_losses() {
    golden::fp32_adamw_training_losses::<_, Gpt<CpuBackend>>(&CpuBackend::new());
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_gpt_fp32_logits_loss_and_every_gradient_wgpu() {
    let test = "golden_gpt_fp32_logits_loss_and_every_gradient_wgpu";
    if let Some(be) = crate::common::wgpu_backend(test) {
        golden::fp32_logits_loss_and_every_gradient::<_, Gpt<_>>(be);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_gpt_bf16_and_fp16_autocast_logits_wgpu() {
    if let Some(be) = crate::common::wgpu_backend("golden_gpt_bf16_and_fp16_autocast_logits_wgpu") {
        golden::bf16_and_fp16_autocast_logits::<_, Gpt<_>>(be);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn golden_gpt_fp32_adamw_training_losses_wgpu() {
    if let Some(be) = crate::common::wgpu_backend("golden_gpt_fp32_adamw_training_losses_wgpu") {
        golden::fp32_adamw_training_losses::<_, Gpt<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_gpt_fp32_logits_loss_and_every_gradient_cuda() {
    let test = "golden_gpt_fp32_logits_loss_and_every_gradient_cuda";
    if let Some(be) = crate::common::cuda_backend(test) {
        golden::fp32_logits_loss_and_every_gradient::<_, Gpt<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_gpt_bf16_and_fp16_autocast_logits_cuda() {
    if let Some(be) = crate::common::cuda_backend("golden_gpt_bf16_and_fp16_autocast_logits_cuda") {
        golden::bf16_and_fp16_autocast_logits::<_, Gpt<_>>(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn golden_gpt_fp32_adamw_training_losses_cuda() {
    if let Some(be) = crate::common::cuda_backend("golden_gpt_fp32_adamw_training_losses_cuda") {
        golden::fp32_adamw_training_losses::<_, Gpt<_>>(be);
    }
}
