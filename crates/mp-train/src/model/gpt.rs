//! A GPT with the HF GPT-2 architecture (`GPT2LMHeadModel`): learned token and position
//! embeddings, pre-LN blocks of causal self-attention and a GELU (tanh) MLP, a final layer
//! norm and an output head tied to the token embedding.
//!
//! Parameters carry HF's names and layouts (`transformer.h.{i}.attn.c_attn.weight` is
//! `[in, out]` like HF's `Conv1D`) and live back to back in one FP32 master arena
//! ([`Gpt::params`]); the gradient arena ([`Gpt::grads`]) and the optional low-precision
//! model copy ([`Gpt::model_copy`]) share its layout ([`Gpt::layout`]), so the optimizer and the
//! loss scaler each make one pass over everything.
//!
//! One training step:
//!
//! ```text
//! let batch = gpt.batch(&be, &ids, Some(&targets), b, t)?;
//! gpt.zero_grads(&be)?;
//! let loss = gpt.forward_backward(&be, &batch, Autocast::to(DType::BF16), loss_scale)?;
//! optimizer.step(&mut gpt.params, &gpt.grads, gpt.model_copy.as_mut())?;
//! ```

use std::path::Path;

use mp_autograd::{Autocast, ParamEntry, ParamLayout, Tape, Tensor, WeightLayout};
use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, Rounding};
use serde::{Deserialize, Serialize};

use super::Batch;
use super::common::{
    Backprop, SplitMix, StoredRows, evaluate_with, load_into, loss_and_backward, named,
    padded_vocab, tape_for, vocab_head, write_safetensors, zero_vocab_padding,
};
use crate::{Result, TrainError};

/// The shape of a GPT (HF `GPT2Config` field names).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size (`wte` has as many rows, padded to a multiple of
    /// [`super::common::VOCAB_MULTIPLE`] in the arena).
    pub vocab_size: usize,
    /// Longest sequence (rows of `wpe`).
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    /// Standard deviation of the initial weights (HF `initializer_range`).
    #[serde(default = "default_init")]
    pub initializer_range: f64,
}

fn default_eps() -> f32 {
    1e-5
}

fn default_init() -> f64 {
    0.02
}

impl GptConfig {
    /// The CPU benchmark configuration `gpt-cpu`: 4 layers, 128 wide, 4 heads, context 64,
    /// vocabulary 256.
    pub const GPT_CPU: GptConfig = GptConfig {
        vocab_size: 256,
        n_positions: 64,
        n_embd: 128,
        n_layer: 4,
        n_head: 4,
        layer_norm_epsilon: 1e-5,
        initializer_range: 0.02,
    };

    /// Checks that every size is positive, the width splits into heads and the initial
    /// weights' standard deviation is positive and finite.
    pub fn validate(&self) -> Result<()> {
        let init = self.initializer_range;
        if !init.is_finite() || init <= 0.0 {
            return Err(TrainError::invalid(
                "model.initializer_range",
                init,
                "must be positive and finite",
            ));
        }
        let fields = [
            ("model.vocab_size", self.vocab_size),
            ("model.n_positions", self.n_positions),
            ("model.n_embd", self.n_embd),
            ("model.n_layer", self.n_layer),
            ("model.n_head", self.n_head),
        ];
        for (field, v) in fields {
            if v == 0 {
                return Err(TrainError::invalid(field, v, "must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(TrainError::invalid(
                "model.n_head",
                self.n_head,
                format!("must divide n_embd = {}", self.n_embd),
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(TrainError::invalid(
                "model.layer_norm_epsilon",
                self.layer_norm_epsilon,
                "must be positive",
            ));
        }
        Ok(())
    }

    /// The parameter layout: HF names, shapes and arena offsets. The matrices (embeddings,
    /// then each block's four projections) come first and the vectors (layer norms, biases)
    /// after them, so the decay and no-decay parameter groups are one contiguous range each
    /// and every fused optimizer pass is two launches whatever the depth.
    pub fn layout(&self) -> ParamLayout {
        let (c, v) = (self.n_embd, padded_vocab(self.vocab_size));
        let mut l = ParamLayout::new();
        l.push("transformer.wte.weight", &[v, c]);
        l.push("transformer.wpe.weight", &[self.n_positions, c]);
        for i in 0..self.n_layer {
            let p = format!("transformer.h.{i}");
            l.push(format!("{p}.attn.c_attn.weight"), &[c, 3 * c]);
            l.push(format!("{p}.attn.c_proj.weight"), &[c, c]);
            l.push(format!("{p}.mlp.c_fc.weight"), &[c, 4 * c]);
            l.push(format!("{p}.mlp.c_proj.weight"), &[4 * c, c]);
        }
        for i in 0..self.n_layer {
            let p = format!("transformer.h.{i}");
            l.push(format!("{p}.ln_1.weight"), &[c]);
            l.push(format!("{p}.ln_1.bias"), &[c]);
            l.push(format!("{p}.attn.c_attn.bias"), &[3 * c]);
            l.push(format!("{p}.attn.c_proj.bias"), &[c]);
            l.push(format!("{p}.ln_2.weight"), &[c]);
            l.push(format!("{p}.ln_2.bias"), &[c]);
            l.push(format!("{p}.mlp.c_fc.bias"), &[4 * c]);
            l.push(format!("{p}.mlp.c_proj.bias"), &[c]);
        }
        l.push("transformer.ln_f.weight", &[c]);
        l.push("transformer.ln_f.bias", &[c]);
        l
    }
}

/// The parameters of one block, resolved once from the layout.
#[derive(Clone, Debug)]
struct Block {
    ln_1: [ParamEntry; 2],
    c_attn: [ParamEntry; 2],
    attn_proj: [ParamEntry; 2],
    ln_2: [ParamEntry; 2],
    c_fc: [ParamEntry; 2],
    mlp_proj: [ParamEntry; 2],
}

/// A GPT: its configuration, the parameter layout and the three flat arenas.
pub struct Gpt<B: Backend> {
    /// The shape.
    pub config: GptConfig,
    /// Name -> (offset, shape) of every parameter in the arenas.
    pub layout: ParamLayout,
    /// The FP32 master weights.
    pub params: B::Buffer,
    /// The gradient arena (FP32 unless [`Gpt::set_grad_dtype`] says otherwise); backward
    /// passes add into it.
    pub grads: B::Buffer,
    /// The low-precision model copy the optimizer writes; when present and of the autocast
    /// dtype, the forward pass reads lowered weights from it instead of casting.
    pub model_copy: Option<B::Buffer>,
    /// The residual stream's dtype between blocks (FP32 unless set; BF16 halves it, as llm.c).
    pub residual_dtype: DType,
    /// Recompute each MLP's GELU in the backward pass instead of saving it
    /// ([`Tape::gelu_linear`]; the same gradients, `4c` fewer saved values per token and layer).
    pub recompute_gelu: bool,
    wte: ParamEntry,
    wpe: ParamEntry,
    blocks: Vec<Block>,
    ln_f: [ParamEntry; 2],
}

impl<B: Backend> std::fmt::Debug for Gpt<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt")
            .field("config", &self.config)
            .field("num_params", &self.layout.numel())
            .field("grad_dtype", &self.grads.dtype())
            .field("model_copy", &self.model_copy.as_ref().map(|c| c.dtype()))
            .finish()
    }
}

/// How files store the vocabulary-sized tensor (`wte`, also the tied head): the vocabulary's
/// rows only.
fn stored_rows(config: &GptConfig) -> StoredRows<'static> {
    StoredRows {
        names: &["transformer.wte.weight"],
        rows: config.vocab_size,
    }
}

impl<B: Backend> Gpt<B> {
    /// A GPT initialised like HF GPT-2 from `seed`: every weight matrix and embedding normal
    /// with std `initializer_range` (the residual projections `c_proj` that / sqrt(2
    /// n_layer)), biases 0, layer-norm weights 1. Same seed, same weights, on every backend.
    pub fn new(be: &B, config: GptConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let layout = config.layout();
        let mut host = vec![0.0f32; layout.numel()];
        let mut rng = SplitMix(seed ^ 0x6750_5432_4750_5432);
        let init = config.initializer_range;
        let proj_std = init / (2.0 * config.n_layer as f64).sqrt();
        for e in layout.entries() {
            let dst = &mut host[e.offset..e.offset + e.numel()];
            if e.name.contains(".ln_") {
                if e.name.ends_with(".weight") {
                    dst.fill(1.0);
                }
            } else if e.name.ends_with(".weight") {
                let std = if e.name.ends_with("c_proj.weight") {
                    proj_std
                } else {
                    init
                };
                dst.iter_mut()
                    .for_each(|x| *x = (rng.normal() * std) as f32);
            }
        }
        // the vocabulary's padding rows are zero (and stay so: their gradient is zero)
        zero_vocab_padding(&mut host, &layout, stored_rows(&config));
        let params = be.upload_f32(&host, DType::F32)?;
        Self::with_params(be, config, layout, params)
    }

    /// A GPT whose weights are read from an HF GPT-2 safetensors file (see
    /// [`Gpt::load_safetensors`]).
    pub fn from_safetensors(be: &B, config: GptConfig, path: &Path) -> Result<Self> {
        let mut gpt = Self::new(be, config, 0)?;
        gpt.load_safetensors(be, path)?;
        Ok(gpt)
    }

    fn with_params(
        be: &B,
        config: GptConfig,
        layout: ParamLayout,
        params: B::Buffer,
    ) -> Result<Self> {
        let get = |name: String| {
            layout
                .get(&name)
                .cloned()
                .expect("the layout holds every GPT parameter")
        };
        let pair = |p: &str| [get(format!("{p}.weight")), get(format!("{p}.bias"))];
        let blocks = (0..config.n_layer)
            .map(|i| {
                let p = format!("transformer.h.{i}");
                Block {
                    ln_1: pair(&format!("{p}.ln_1")),
                    c_attn: pair(&format!("{p}.attn.c_attn")),
                    attn_proj: pair(&format!("{p}.attn.c_proj")),
                    ln_2: pair(&format!("{p}.ln_2")),
                    c_fc: pair(&format!("{p}.mlp.c_fc")),
                    mlp_proj: pair(&format!("{p}.mlp.c_proj")),
                }
            })
            .collect();
        let grads = be.zeros(DType::F32, layout.numel())?;
        Ok(Gpt {
            config,
            wte: get("transformer.wte.weight".into()),
            wpe: get("transformer.wpe.weight".into()),
            ln_f: pair("transformer.ln_f"),
            blocks,
            layout,
            params,
            grads,
            model_copy: None,
            residual_dtype: DType::F32,
            recompute_gelu: false,
        })
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel()
    }

    /// Replaces the gradient arena by a zeroed one of `dtype`.
    pub fn set_grad_dtype(&mut self, be: &B, dtype: DType) -> Result<()> {
        self.grads = be.zeros(dtype, self.layout.numel())?;
        Ok(())
    }

    /// Allocates the low-precision model copy in `dtype` and fills it with the master weights
    /// rounded to nearest even (from then on the optimizer keeps it current).
    pub fn enable_model_copy(&mut self, be: &B, dtype: DType) -> Result<()> {
        let mut copy = be.zeros(dtype, self.layout.numel())?;
        be.cast(self.params.view(), copy.view_mut(), Rounding::NearestEven)?;
        self.model_copy = Some(copy);
        Ok(())
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        be.fill(self.grads.view_mut(), 0.0)?;
        Ok(())
    }

    /// Uploads a batch of `b` sequences of `t` tokens (`ids` and optional next-token `targets`
    /// row-major `[b, t]`), checking ids against the vocabulary and `t` against the context.
    pub fn batch(
        &self,
        be: &B,
        ids: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Batch<B>> {
        let cfg = &self.config;
        Batch::upload(be, ids, targets, b, t, cfg.vocab_size, cfg.n_positions)
    }

    /// Records the forward pass on `tape` (which must read this model's [`Gpt::params`]) and
    /// returns the logits `[b, t, vocab]`.
    pub fn forward<'a>(&self, tape: &mut Tape<'a, B>, batch: &'a Batch<B>) -> Result<Tensor> {
        let (b, t, c) = (batch.b, batch.t, self.config.n_embd);
        let eps = self.config.layer_norm_epsilon;
        let n = b * t;
        let wte = tape.param(&self.wte)?;
        let wpe = tape.param(&self.wpe)?;
        tape.set_scope("transformer.wte");
        let tok = tape.embedding(wte, &batch.ids, n)?;
        let pos = tape.embedding(wpe, &batch.positions, n)?;
        let x = tape.add(tok, pos)?;
        let mut x = tape.reshape(x, &[b, t, c])?;
        if self.residual_dtype != DType::F32 {
            x = tape.cast(x, self.residual_dtype)?;
        }
        // without gradients (evaluation, decoding) each activation goes at its last use
        let done = |tape: &mut Tape<'a, B>, ts: &[Tensor]| -> Result<()> {
            if !tape.grad_enabled() {
                for &t in ts {
                    tape.release(t)?;
                }
            }
            Ok(())
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            tape.set_scope(&format!("transformer.h.{i}"));
            let h = self.layer_norm(tape, x, &blk.ln_1, eps)?;
            let qkv = self.linear(tape, h, &blk.c_attn)?;
            let a = tape.attention(qkv, self.config.n_head)?;
            let o = self.linear(tape, a, &blk.attn_proj)?;
            let x1 = tape.add(x, o)?;
            done(tape, &[h, qkv, a, o, x])?;
            let h = self.layer_norm(tape, x1, &blk.ln_2, eps)?;
            // the MLP: c_fc's GELU in its GEMM's epilogue, or (recompute_gelu) in c_proj's
            // op, recomputed in its backward
            let m = if self.recompute_gelu {
                let f = self.linear(tape, h, &blk.c_fc)?;
                let p = &blk.mlp_proj;
                let (w, b) = (tape.param(&p[0])?, tape.param(&p[1])?);
                let m = tape.gelu_linear(f, w, Some(b), WeightLayout::InOut)?;
                done(tape, &[f])?;
                m
            } else {
                let p = &blk.c_fc;
                let (w, b) = (tape.param(&p[0])?, tape.param(&p[1])?);
                let g = tape.linear_gelu(h, w, Some(b), WeightLayout::InOut)?;
                let m = self.linear(tape, g, &blk.mlp_proj)?;
                done(tape, &[g])?;
                m
            };
            x = tape.add(x1, m)?;
            done(tape, &[h, m, x1])?;
        }
        tape.set_scope("lm_head");
        let h = self.layer_norm(tape, x, &self.ln_f, eps)?;
        let logits = vocab_head(tape, h, wte, self.config.vocab_size)?;
        done(tape, &[x, h])?;
        Ok(logits)
    }

    fn layer_norm(
        &self,
        tape: &mut Tape<'_, B>,
        x: Tensor,
        p: &[ParamEntry; 2],
        eps: f32,
    ) -> Result<Tensor> {
        let (w, b) = (tape.param(&p[0])?, tape.param(&p[1])?);
        Ok(tape.layer_norm(x, w, b, eps)?)
    }

    fn linear(&self, tape: &mut Tape<'_, B>, x: Tensor, p: &[ParamEntry; 2]) -> Result<Tensor> {
        let (w, b) = (tape.param(&p[0])?, tape.param(&p[1])?);
        Ok(tape.linear(x, w, Some(b), WeightLayout::InOut)?)
    }

    /// The mean next-token cross-entropy of `logits` against the batch's targets.
    pub fn loss<'a>(
        &self,
        tape: &mut Tape<'a, B>,
        logits: Tensor,
        batch: &'a Batch<B>,
    ) -> Result<Tensor> {
        Ok(tape.cross_entropy(logits, batch.targets()?)?)
    }

    /// A tape over this model's weights under `autocast`, reading the model copy when it
    /// holds the autocast dtype.
    pub fn tape<'a>(&'a self, be: &'a B, autocast: Autocast) -> Result<Tape<'a, B>> {
        tape_for(be, &self.params, self.model_copy.as_ref(), autocast)
    }

    /// Forward, loss and backward of one (micro-)batch: adds `d(loss * scale)/d(param)` into
    /// [`Gpt::grads`] (not zeroed here, so micro-batches accumulate; pass `scale = loss_scale /
    /// accumulation_steps`) and returns the unscaled loss.
    pub fn forward_backward(
        &mut self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
        scale: f32,
    ) -> Result<f32> {
        let mut loss = be.zeros(DType::F32, 1)?;
        let bp = Backprop::new(scale, loss.view_mut(), 1.0);
        self.forward_backward_on_device(be, batch, autocast, bp)?;
        Ok(be.download_f32(loss.view())?[0])
    }

    /// [`Gpt::forward_backward`] without reading anything back: adds `weight * loss` into the
    /// one-element FP32 `loss_sum` on the device, so that a step reads its loss once, after the
    /// optimizer. The loss and its gradient come from one pass over the logits (the tape
    /// announces `scale` to the fused classifier).
    pub fn forward_backward_on_device(
        &mut self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
        bp: Backprop<'_, B>,
    ) -> Result<()> {
        let tape = tape_for(be, &self.params, self.model_copy.as_ref(), autocast)?;
        let mut tape = tape.with_loss_seed(bp.scale);
        let logits = self.forward(&mut tape, batch)?;
        loss_and_backward(tape, logits, batch, bp, &mut self.grads)
    }

    /// The logits `[b, t, vocab]` (row-major, widened to f32) and, when the batch has
    /// targets, the mean loss, without recording anything for backward.
    pub fn evaluate(
        &self,
        be: &B,
        batch: &Batch<B>,
        autocast: Autocast,
    ) -> Result<(Vec<f32>, Option<f32>)> {
        evaluate_with(self.tape(be, autocast)?, batch, |tape, batch| {
            self.forward(tape, batch)
        })
    }

    /// Overwrites the master weights (and the model copy, if any) with the tensors of an HF
    /// GPT-2 safetensors file (F32, F16 or BF16). Every parameter must be present with its
    /// exact shape; the error names the tensor and both shapes. Tensors the model does not
    /// use (`lm_head.weight`, which is tied, and HF's attention-mask buffers) are ignored.
    pub fn load_safetensors(&mut self, be: &B, path: &Path) -> Result<()> {
        load_into(
            be,
            &self.layout,
            &mut self.params,
            self.model_copy.as_mut(),
            path,
            stored_rows(&self.config),
        )
    }

    /// Writes the master weights as an HF GPT-2 safetensors file (F32, HF names; the tied
    /// head is not duplicated, as HF saves it).
    pub fn save_safetensors(&self, be: &B, path: &Path) -> Result<()> {
        write_safetensors(
            be,
            &self.layout,
            &self.params,
            path,
            stored_rows(&self.config),
        )
    }

    /// The (name, f32 values) of every gradient, in layout order (waits for the device).
    pub fn named_grads(&self, be: &B) -> Result<Vec<(String, Vec<f32>)>> {
        named(be, &self.layout, &self.grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp_kernels::cpu::CpuBackend;
    use mp_kernels::prelude::*;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 11,
            n_positions: 8,
            n_embd: 8,
            n_layer: 2,
            n_head: 2,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
        }
    }

    #[test]
    fn init_is_seeded_and_gpt2_shaped() {
        let be = CpuBackend::new();
        let a = Gpt::new(&be, tiny(), 7).unwrap();
        let b = Gpt::new(&be, tiny(), 7).unwrap();
        let c = Gpt::new(&be, tiny(), 8).unwrap();
        let [pa, pb, pc] = [&a, &b, &c].map(|g| be.download_f32(g.params.view()).unwrap());
        assert_eq!(pa, pb);
        assert_ne!(pa, pc);
        let get = |name: &str| {
            let e = a.layout.get(name).unwrap();
            pa[e.offset..e.offset + e.numel()].to_vec()
        };
        assert!(get("transformer.h.0.ln_1.weight").iter().all(|&x| x == 1.0));
        assert!(
            get("transformer.h.1.mlp.c_fc.bias")
                .iter()
                .all(|&x| x == 0.0)
        );
        let std = |v: Vec<f32>| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let wte = get("transformer.wte.weight");
        let (real, pad) = wte.split_at(tiny().vocab_size * tiny().n_embd);
        let s = std(real.to_vec());
        assert!((0.015..0.025).contains(&s), "wte std {s}");
        // the rows padding the vocabulary to a multiple of 128 are zero
        assert_eq!(wte.len(), 128 * tiny().n_embd);
        assert!(pad.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn layout_matches_hf_names_and_counts() {
        let cfg = GptConfig::GPT_CPU;
        let l = cfg.layout();
        let (c, v, t) = (128, 256, 64);
        let per_block = 12 * c * c + 13 * c;
        assert_eq!(l.numel(), v * c + t * c + 4 * per_block + 2 * c);
        assert_eq!(
            l.get("transformer.h.3.attn.c_attn.weight").unwrap().shape,
            [c, 3 * c]
        );
        assert_eq!(
            l.get("transformer.h.0.mlp.c_proj.weight").unwrap().shape,
            [4 * c, c]
        );
        // matrices first, vectors after: two weight-decay groups, two optimizer launches
        let ndims: Vec<usize> = l.entries().iter().map(|e| e.shape.len()).collect();
        let first_vector = ndims.iter().position(|&d| d == 1).unwrap();
        assert!(ndims[..first_vector].iter().all(|&d| d == 2));
        assert!(ndims[first_vector..].iter().all(|&d| d == 1));
        let groups = mp_optim::ParamGroup::decay_by_ndim(
            l.entries()
                .iter()
                .map(|e| (e.offset..e.offset + e.numel(), e.shape.len())),
            0.1,
        );
        assert_eq!(groups.len(), 2);
    }

    #[test]
    fn bad_config_and_batches_are_errors() {
        let be = CpuBackend::new();
        let bad = GptConfig {
            n_head: 3,
            ..tiny()
        };
        assert!(
            Gpt::new(&be, bad, 0)
                .unwrap_err()
                .to_string()
                .contains("n_head")
        );
        let g = Gpt::new(&be, tiny(), 0).unwrap();
        assert!(
            g.batch(&be, &[0; 9], None, 1, 9).is_err(),
            "longer than n_positions"
        );
        assert!(
            g.batch(&be, &[11, 0], None, 1, 2).is_err(),
            "id out of vocab"
        );
        assert!(g.batch(&be, &[1, 0], None, 2, 2).is_err(), "wrong count");
    }

    #[test]
    fn safetensors_round_trip_and_clear_errors() {
        let be = CpuBackend::new();
        let dir = std::env::temp_dir().join(format!("mp-gpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let a = Gpt::new(&be, tiny(), 3).unwrap();
        a.save_safetensors(&be, &path).unwrap();
        let b = Gpt::from_safetensors(&be, tiny(), &path).unwrap();
        assert_eq!(
            be.download_f32(a.params.view()).unwrap(),
            be.download_f32(b.params.view()).unwrap()
        );
        let wide = GptConfig {
            n_embd: 12,
            ..tiny()
        };
        let err = Gpt::from_safetensors(&be, wide, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("transformer.wte.weight") && err.contains("[11, 12]"),
            "{err}"
        );
        let deep = GptConfig {
            n_layer: 3,
            ..tiny()
        };
        let err = Gpt::from_safetensors(&be, deep, &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing tensor transformer.h.2.attn.c_attn.weight"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn autocast_halves_the_activation_memory() {
        let be = CpuBackend::new();
        let mut g = Gpt::new(&be, GptConfig::GPT_CPU, 1).unwrap();
        // Weights from the BF16 model copy: the tape holds activations only.
        g.enable_model_copy(&be, DType::BF16).unwrap();
        let (b, t) = (8, 64);
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 256) as u32).collect();
        let batch = g.batch(&be, &ids, Some(&ids), b, t).unwrap();
        let bytes = |ac| {
            let mut tape = g.tape(&be, ac).unwrap();
            let logits = g.forward(&mut tape, &batch).unwrap();
            g.loss(&mut tape, logits, &batch).unwrap();
            tape.activation_bytes()
        };
        let (f32b, bf16b) = (bytes(Autocast::OFF), bytes(Autocast::to(DType::BF16)));
        // The FP32 residual stream and the FP32 loss inputs stay FP32.
        eprintln!("saved activations: fp32 {f32b} bytes, bf16 {bf16b} bytes");
        assert!(
            (bf16b as f64) < 0.6 * f32b as f64,
            "fp32 {f32b} bytes, bf16 {bf16b} bytes"
        );
    }

    #[test]
    fn training_steps_lower_the_loss() {
        let be = CpuBackend::new();
        let mut g = Gpt::new(&be, tiny(), 1).unwrap();
        let ids: Vec<u32> = (0..16).map(|i| (i * 3 % 11) as u32).collect();
        let tg: Vec<u32> = ids.iter().map(|&x| (x + 1) % 11).collect();
        let batch = g.batch(&be, &ids, Some(&tg), 2, 8).unwrap();
        let mut losses = vec![];
        for _ in 0..5 {
            g.zero_grads(&be).unwrap();
            losses.push(g.forward_backward(&be, &batch, Autocast::OFF, 1.0).unwrap());
            // Plain SGD on the flat arenas.
            be.axpy(-0.5, g.grads.view(), g.params.view_mut()).unwrap();
        }
        assert!(losses[4] < losses[0] - 0.1, "{losses:?}");
    }
}
