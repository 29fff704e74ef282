//! Models built on the `mp-autograd` tape.
//!
//! - [`gpt`]: a GPT with the HF GPT-2 architecture and parameter names, its parameters in one
//!   flat FP32 arena, safetensors load/save, GPT-2 initialisation.
//! - [`llama`]: HF `LlamaForCausalLM` (RMSNorm, rotary position embeddings, SwiGLU,
//!   grouped-query attention, tied or untied head) over the same kind of arenas.
//! - [`common`]: what they share: the device [`Batch`], HF safetensors in and out of a layout,
//!   the tape over the arenas.

use std::path::Path;

use mp_autograd::{Autocast, ParamLayout};
use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, Rounding};

use crate::Result;
use crate::config::{Arch, ModelConfig};

pub mod common;
pub mod gpt;
pub mod llama;

pub use common::{Backprop, Batch};
pub use gpt::{Gpt, GptConfig};
pub use llama::{Llama, LlamaConfig};

/// The model a run trains: one of the architectures, behind one interface (what the trainer,
/// checkpoints, evaluation and sampling use). Each variant keeps its flat FP32 master arena,
/// its gradient arena and its optional low-precision copy in one layout.
pub enum Model<B: Backend> {
    /// HF GPT-2.
    Gpt(Gpt<B>),
    /// HF Llama.
    Llama(Llama<B>),
}

/// `$body` with `$m` bound to the model of whichever variant `$self` holds.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Model::Gpt($m) => $body,
            Model::Llama($m) => $body,
        }
    };
}

impl<B: Backend> Model<B> {
    /// A model of `cfg`'s architecture and shape, initialised from `seed` as HF initialises
    /// it.
    pub fn new(be: &B, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        Ok(match cfg.arch {
            Arch::Gpt2 => Model::Gpt(Gpt::new(be, cfg.gpt(), seed)?),
            Arch::Llama => Model::Llama(Llama::new(be, cfg.llama(), seed)?),
        })
    }

    /// The model of a checkpoint folder, its architecture and shape read from its
    /// `config.json`: one of ours, every file of which is first checked against the manifest
    /// (a truncated or corrupt file is an error naming it), or a folder HF transformers wrote
    /// (`save_pretrained`: `config.json` + `model.safetensors`, no manifest to check).
    pub fn from_checkpoint(be: &B, dir: &Path) -> Result<Self> {
        if !crate::checkpoint::is_hf_folder(dir) {
            crate::checkpoint::verify(dir)?;
        }
        let cfg = crate::checkpoint::hf_model(dir)?;
        let mut model = Model::new(be, &cfg, 0)?;
        model.load_safetensors(be, &dir.join(crate::checkpoint::MODEL_FILE))?;
        Ok(model)
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            Model::Gpt(_) => Arch::Gpt2,
            Model::Llama(_) => Arch::Llama,
        }
    }

    /// The GPT, when it is one.
    pub fn as_gpt_mut(&mut self) -> Option<&mut Gpt<B>> {
        match self {
            Model::Gpt(g) => Some(g),
            Model::Llama(_) => None,
        }
    }

    /// Name -> (offset, shape) of every parameter.
    pub fn layout(&self) -> &ParamLayout {
        each!(self, m => &m.layout)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout().numel()
    }

    /// The master weights (FP32, or BF16 in pure-BF16 mode).
    pub fn params(&self) -> &B::Buffer {
        each!(self, m => &m.params)
    }

    /// The gradient arena.
    pub fn grads(&self) -> &B::Buffer {
        each!(self, m => &m.grads)
    }

    /// The gradient arena, to write.
    pub fn grads_mut(&mut self) -> &mut B::Buffer {
        each!(self, m => &mut m.grads)
    }

    /// Swaps the gradient arena with `other` (same dtype and length): the trainer computes a
    /// micro-batch's gradients into a zeroed buffer this way before adding them to the sum.
    pub fn swap_grads(&mut self, other: &mut B::Buffer) {
        each!(self, m => std::mem::swap(&mut m.grads, other))
    }

    /// The master weights, the gradients and the model copy, for the optimizer.
    pub fn arenas_mut(&mut self) -> (&mut B::Buffer, &B::Buffer, Option<&mut B::Buffer>) {
        each!(self, m => (&mut m.params, &m.grads, m.model_copy.as_mut()))
    }

    /// Replaces the gradient arena by a zeroed one of `dtype`.
    pub fn set_grad_dtype(&mut self, be: &B, dtype: DType) -> Result<()> {
        let n = self.num_params();
        each!(self, m => m.grads = be.zeros(dtype, n)?);
        Ok(())
    }

    /// Allocates the low-precision model copy in `dtype` from the master weights.
    pub fn enable_model_copy(&mut self, be: &B, dtype: DType) -> Result<()> {
        each!(self, m => m.enable_model_copy(be, dtype))
    }

    /// Replaces the FP32 master arena by BF16 parameters (pure-BF16 mode), rounded to nearest;
    /// there is no model copy then.
    pub fn to_pure_bf16(&mut self, be: &B) -> Result<()> {
        each!(self, m => {
            if m.params.dtype() != DType::BF16 {
                let mut p = be.zeros(DType::BF16, m.params.len())?;
                be.cast(m.params.view(), p.view_mut(), Rounding::NearestEven)?;
                m.params = p;
                m.model_copy = None;
            }
            Ok(())
        })
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        each!(self, m => m.zero_grads(be))
    }

    /// The context length.
    pub fn context(&self) -> usize {
        match self {
            Model::Gpt(m) => m.config.n_positions,
            Model::Llama(m) => m.config.max_position_embeddings,
        }
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        match self {
            Model::Gpt(m) => m.config.vocab_size,
            Model::Llama(m) => m.config.vocab_size,
        }
    }

    /// The width of a logits row: the vocabulary padded to a multiple of
    /// [`common::VOCAB_MULTIPLE`] (the padding's logits are -inf).
    pub fn logits_width(&self) -> usize {
        common::padded_vocab(self.vocab())
    }

    /// Uploads a batch checked against the model's vocabulary and context.
    pub fn batch(
        &self,
        be: &B,
        ids: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Batch<B>> {
        each!(self, m => m.batch(be, ids, targets, b, t))
    }

    /// Forward, loss and backward of one micro-batch as `bp` says: the seed, the loss added
    /// (times its weight) into a device scalar, the gradient hook (see
    /// [`Gpt::forward_backward_on_device`]).
    pub fn forward_backward_on_device(
        &mut self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
        bp: Backprop<'_, B>,
    ) -> Result<()> {
        each!(self, m => m.forward_backward_on_device(be, batch, autocast, bp))
    }

    /// Forward, loss and backward of one batch into the gradient arena (not zeroed here);
    /// returns the unscaled loss (one read of the device).
    pub fn forward_backward(
        &mut self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
        scale: f32,
    ) -> Result<f32> {
        each!(self, m => m.forward_backward(be, batch, autocast, scale))
    }

    /// Logits (f32) and the loss when the batch has targets, without gradients.
    pub fn evaluate(
        &self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
    ) -> Result<(Vec<f32>, Option<f32>)> {
        each!(self, m => m.evaluate(be, batch, autocast))
    }

    /// Overwrites the weights with an HF safetensors file of this architecture.
    pub fn load_safetensors(&mut self, be: &B, path: &Path) -> Result<()> {
        each!(self, m => m.load_safetensors(be, path))
    }

    /// Writes the master weights as an HF safetensors file of this architecture.
    pub fn save_safetensors(&self, be: &B, path: &Path) -> Result<()> {
        each!(self, m => m.save_safetensors(be, path))
    }

    /// The (name, f32 values) of every gradient.
    pub fn named_grads(&self, be: &B) -> Result<Vec<(String, Vec<f32>)>> {
        each!(self, m => m.named_grads(be))
    }
}
