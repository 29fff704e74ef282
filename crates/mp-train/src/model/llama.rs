//! A Llama as HF `LlamaForCausalLM` computes it: a token embedding, pre-norm blocks of
//! RMSNorm, grouped-query causal self-attention with rotary position embeddings (the default
//! rope type, rotate-half convention) and a SwiGLU MLP (`down(silu(gate(x)) * up(x))`), a
//! final RMSNorm and an output head, tied to the embedding or not. No biases.
//!
//! Parameters carry HF's names and `nn.Linear` layout (`[out, in]`) and live in one FP32
//! master arena with the gradient arena and the optional low-precision copy beside it, as in
//! [`super::Gpt`]. The config is HF's `config.json` ([`LlamaConfig::from_hf_json`]).
//!
//! Under autocast the projections run in the low dtype, RMSNorm keeps FP32 statistics, and the
//! rotary embedding is computed in FP32 (`cos`/`sin` tables in FP32, the rotated queries and
//! keys in FP32 before attention casts them), as HF's model does under `torch.autocast`. The
//! rotation is one fused op (`Tape::rope`, the backend's `LayoutOps::rope`: `x cos +
//! rotate_half(x) sin` per head from `[t, head_dim / 2]` tables, its gradient the inverse
//! rotation).

use std::path::Path;

use mp_autograd::{Autocast, ParamEntry, ParamLayout, Tape, Tensor, WeightLayout};
use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, Rounding};
use serde::{Deserialize, Serialize};

use super::Batch;
use super::common::{
    Backprop, SplitMix, StoredRows, evaluate_with, load_into, loss_and_backward, named,
    padded_vocab, read_safetensors, tape_for, vocab_head, write_safetensors, zero_vocab_padding,
};
use crate::{Result, TrainError};

/// The shape of a Llama (HF `LlamaConfig` field names).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the MLP's gate and up projections.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads per block.
    pub num_attention_heads: usize,
    /// Key/value heads per block (divides `num_attention_heads`: grouped-query attention).
    pub num_key_value_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// The output head is the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    pub initializer_range: f64,
}

impl LlamaConfig {
    /// Reads an HF `config.json` of a `LlamaForCausalLM`. `head_dim` defaults to
    /// `hidden_size / num_attention_heads` and `num_key_value_heads` to the head count, as in
    /// HF; `rope_theta` is read at the top level or from `rope_parameters`. What this model
    /// does not compute (another rope type or activation, biases) is an error naming the field.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io("reading", path))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(path, format!("not JSON: {e}")))?;
        let bad =
            |field: &str, why: String| TrainError::checkpoint(path, format!("{field}: {why}"));
        let int = |field: &str| -> Result<usize> {
            v[field]
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(field, "missing or not a non-negative integer".into()))
        };
        let opt_int = |field: &str| v[field].as_u64().map(|x| x as usize);
        let heads = int("num_attention_heads")?;
        let hidden = int("hidden_size")?;
        let rope = &v["rope_parameters"];
        let rope_type = rope["rope_type"]
            .as_str()
            .or(v["rope_scaling"]["rope_type"].as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(bad(
                "rope_type",
                format!("{rope_type:?} (only \"default\" is built)"),
            ));
        }
        let act = v["hidden_act"].as_str().unwrap_or("silu");
        if act != "silu" {
            return Err(bad(
                "hidden_act",
                format!("{act:?} (the model computes silu)"),
            ));
        }
        for field in ["attention_bias", "mlp_bias"] {
            if v[field].as_bool() == Some(true) {
                return Err(bad(field, "true (the model has no biases)".into()));
            }
        }
        let rope_theta = rope["rope_theta"]
            .as_f64()
            .or(v["rope_theta"].as_f64())
            .unwrap_or(10000.0) as f32;
        let cfg = LlamaConfig {
            vocab_size: int("vocab_size")?,
            max_position_embeddings: int("max_position_embeddings")?,
            hidden_size: hidden,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: opt_int("num_key_value_heads").unwrap_or(heads),
            head_dim: opt_int("head_dim").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            rope_theta,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            initializer_range: v["initializer_range"].as_f64().unwrap_or(0.02),
        };
        cfg.validate()
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Checks that every size is positive, the key/value heads divide the query heads, the
    /// head size is even (the rotation pairs its halves) and the epsilon and base are positive.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (field, v) in fields {
            if v == 0 {
                return Err(TrainError::invalid(field, v, "must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(TrainError::invalid(
                "num_key_value_heads",
                self.num_key_value_heads,
                format!(
                    "must divide the number of query heads ({})",
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(TrainError::invalid(
                "head_dim",
                self.head_dim,
                "must be even (the rotary embedding rotates pairs of halves)",
            ));
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(TrainError::invalid(field, v, "must be positive and finite"));
            }
        }
        let init = self.initializer_range;
        if !init.is_finite() || init <= 0.0 {
            return Err(TrainError::invalid(
                "initializer_range",
                init,
                "must be positive and finite",
            ));
        }
        Ok(())
    }

    /// The parameter layout: HF names and shapes, the matrices first (embedding, each block's
    /// seven projections, the head) and the norm weights after them, so that the decay and
    /// no-decay groups are one contiguous range each.
    pub fn layout(&self) -> ParamLayout {
        let (c, hd, f) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut l = ParamLayout::new();
        let v = padded_vocab(self.vocab_size);
        l.push("model.embed_tokens.weight", &[v, c]);
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            l.push(format!("{p}.self_attn.q_proj.weight"), &[q, c]);
            l.push(format!("{p}.self_attn.k_proj.weight"), &[kv, c]);
            l.push(format!("{p}.self_attn.v_proj.weight"), &[kv, c]);
            l.push(format!("{p}.self_attn.o_proj.weight"), &[c, q]);
            l.push(format!("{p}.mlp.gate_proj.weight"), &[f, c]);
            l.push(format!("{p}.mlp.up_proj.weight"), &[f, c]);
            l.push(format!("{p}.mlp.down_proj.weight"), &[c, f]);
        }
        if !self.tie_word_embeddings {
            l.push("lm_head.weight", &[v, c]);
        }
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            l.push(format!("{p}.input_layernorm.weight"), &[c]);
            l.push(format!("{p}.post_attention_layernorm.weight"), &[c]);
        }
        l.push("model.norm.weight", &[c]);
        l
    }
}

/// The parameters of one block, resolved once from the layout.
#[derive(Clone, Debug)]
struct Layer {
    input_norm: ParamEntry,
    /// `q_proj`, `k_proj` and `v_proj` as one `[q + 2 kv, c]` weight: they lie one after the
    /// other in the arena, so one GEMM gives each token's packed `q | k | v` row.
    qkv: ParamEntry,
    o: ParamEntry,
    post_norm: ParamEntry,
    /// `gate_proj` and `up_proj` as one `[2f, c]` weight (adjacent too): one GEMM gives each
    /// token's packed `gate | up` row for [`Tape::swiglu`].
    gate_up: ParamEntry,
    down: ParamEntry,
}

/// A Llama: its configuration, the parameter layout and the three flat arenas.
pub struct Llama<B: Backend> {
    /// The shape.
    pub config: LlamaConfig,
    /// Name -> (offset, shape) of every parameter in the arenas.
    pub layout: ParamLayout,
    /// The FP32 master weights.
    pub params: B::Buffer,
    /// The FP32 gradient arena; backward passes add into it.
    pub grads: B::Buffer,
    /// The low-precision model copy the optimizer writes (read by the forward pass when it
    /// holds the autocast dtype).
    pub model_copy: Option<B::Buffer>,
    embed: ParamEntry,
    layers: Vec<Layer>,
    norm: ParamEntry,
    lm_head: Option<ParamEntry>,
}

impl<B: Backend> std::fmt::Debug for Llama<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("num_params", &self.layout.numel())
            .field("model_copy", &self.model_copy.as_ref().map(|c| c.dtype()))
            .finish()
    }
}

/// Adjacent `[rows_i, cols]` matrices of the arena as one `[sum rows_i, cols]` weight (the
/// name of the first).
///
/// # Panics
/// If they are not adjacent or differ in columns (the layout puts them so: a bug otherwise).
fn packed(parts: &[ParamEntry]) -> ParamEntry {
    let mut whole = parts[0].clone();
    for p in &parts[1..] {
        assert!(
            p.offset == whole.offset + whole.numel() && p.shape[1..] == whole.shape[1..],
            "{} does not follow {} in the arena",
            p.name,
            whole.name
        );
        whole.shape[0] += p.shape[0];
    }
    whole
}

/// The vocabulary-sized tensors (padded in the arena, not in files).
const VOCAB_TENSORS: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// How files store the vocabulary-sized tensors: the vocabulary's rows only.
fn stored_rows(config: &LlamaConfig) -> StoredRows<'static> {
    StoredRows {
        names: &VOCAB_TENSORS,
        rows: config.vocab_size,
    }
}

impl<B: Backend> Llama<B> {
    /// A Llama initialised like HF: every projection and the embedding normal with std
    /// `initializer_range` (HF's default 0.02), norm weights 1. Same seed, same weights, on
    /// every backend.
    pub fn new(be: &B, config: LlamaConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let layout = config.layout();
        let mut host = vec![0.0f32; layout.numel()];
        let mut rng = SplitMix(seed ^ 0x4c6c_616d_6121_2121);
        for e in layout.entries() {
            let dst = &mut host[e.offset..e.offset + e.numel()];
            if e.name.ends_with("norm.weight") {
                dst.fill(1.0);
            } else {
                let std = config.initializer_range;
                dst.iter_mut()
                    .for_each(|x| *x = (rng.normal() * std) as f32);
            }
        }
        // the vocabulary's padding rows are zero (and stay so: their gradient is zero)
        zero_vocab_padding(&mut host, &layout, stored_rows(&config));
        let params = be.upload_f32(&host, DType::F32)?;
        Self::with_params(be, config, layout, params)
    }

    /// A Llama whose weights are read from an HF safetensors file (see
    /// [`Llama::load_safetensors`]).
    pub fn from_safetensors(be: &B, config: LlamaConfig, path: &Path) -> Result<Self> {
        let layout = config.layout();
        config.validate()?;
        let host = read_safetensors(&layout, path, stored_rows(&config))?;
        let params = be.upload_f32(&host, DType::F32)?;
        Self::with_params(be, config, layout, params)
    }

    fn with_params(
        be: &B,
        config: LlamaConfig,
        layout: ParamLayout,
        params: B::Buffer,
    ) -> Result<Self> {
        let get = |name: String| {
            layout
                .get(&name)
                .cloned()
                .expect("the layout holds every Llama parameter")
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let w = |s: &str| get(format!("{p}.{s}.weight"));
                Layer {
                    input_norm: w("input_layernorm"),
                    qkv: packed(&[
                        w("self_attn.q_proj"),
                        w("self_attn.k_proj"),
                        w("self_attn.v_proj"),
                    ]),
                    o: w("self_attn.o_proj"),
                    post_norm: w("post_attention_layernorm"),
                    gate_up: packed(&[w("mlp.gate_proj"), w("mlp.up_proj")]),
                    down: w("mlp.down_proj"),
                }
            })
            .collect();
        let grads = be.zeros(DType::F32, layout.numel())?;
        Ok(Llama {
            config,
            embed: get("model.embed_tokens.weight".into()),
            norm: get("model.norm.weight".into()),
            lm_head: (!config.tie_word_embeddings).then(|| get("lm_head.weight".into())),
            layers,
            layout,
            params,
            grads,
            model_copy: None,
        })
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel()
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

    /// Uploads a batch (see [`Batch::upload`]) checked against this model's vocabulary and
    /// context.
    pub fn batch(
        &self,
        be: &B,
        ids: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Batch<B>> {
        let c = &self.config;
        Batch::upload(
            be,
            ids,
            targets,
            b,
            t,
            c.vocab_size,
            c.max_position_embeddings,
        )
    }

    /// Records the forward pass on `tape` (which must read this model's [`Llama::params`]) and
    /// returns the logits `[b, t, vocab]`.
    pub fn forward<'a>(&self, tape: &mut Tape<'a, B>, batch: &'a Batch<B>) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, n) = (batch.b, batch.t, batch.b * batch.t);
        let (heads, kv_heads, eps) = (c.num_attention_heads, c.num_key_value_heads, c.rms_norm_eps);
        let (cos, sin) = tape.rope_inputs(t, c.head_dim, c.rope_theta)?;
        let embed = tape.param(&self.embed)?;
        tape.set_scope("model.embed_tokens");
        let mut x = tape.embedding(embed, &batch.ids, n)?;
        let lin = |tape: &mut Tape<'a, B>, x: Tensor, w: &ParamEntry| -> Result<Tensor> {
            let w = tape.param(w)?;
            Ok(tape.linear(x, w, None, WeightLayout::OutIn)?)
        };
        let norm = |tape: &mut Tape<'a, B>, x: Tensor, w: &ParamEntry| -> Result<Tensor> {
            let w = tape.param(w)?;
            Ok(tape.rms_norm(x, w, eps)?)
        };
        for (i, l) in self.layers.iter().enumerate() {
            tape.set_scope(&format!("model.layers.{i}"));
            let h = norm(tape, x, &l.input_norm)?;
            let qkv = lin(tape, h, &l.qkv)?;
            let all_heads = heads + 2 * kv_heads;
            let qkv = tape.rope_leading(qkv, cos, sin, (all_heads, heads + kv_heads), t)?;
            let width = tape.shape(qkv)?[1];
            let qkv = tape.reshape(qkv, &[b, t, width])?;
            let a = tape.grouped_attention(qkv, heads, kv_heads)?;
            let a = tape.reshape(a, &[n, heads * c.head_dim])?;
            let o = lin(tape, a, &l.o)?;
            x = tape.add(x, o)?;
            let h = norm(tape, x, &l.post_norm)?;
            let gate_up = lin(tape, h, &l.gate_up)?;
            let m = tape.swiglu(gate_up)?;
            let m = lin(tape, m, &l.down)?;
            x = tape.add(x, m)?;
        }
        tape.set_scope("lm_head");
        let h = norm(tape, x, &self.norm)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let w = tape.param(head)?;
        let logits = vocab_head(tape, h, w, c.vocab_size)?;
        Ok(tape.reshape(logits, &[b, t, padded_vocab(c.vocab_size)])?)
    }

    /// A tape over this model's weights under `autocast`, reading the model copy when it
    /// holds the autocast dtype.
    pub fn tape<'a>(&'a self, be: &'a B, autocast: Autocast) -> Result<Tape<'a, B>> {
        tape_for(be, &self.params, self.model_copy.as_ref(), autocast)
    }

    /// Forward, loss and backward of one (micro-)batch: adds `d(loss * scale)/d(param)` into
    /// [`Llama::grads`] (not zeroed here) and returns the unscaled mean cross-entropy.
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

    /// [`Llama::forward_backward`] without reading anything back: adds `weight * loss` into
    /// the one-element FP32 `loss_sum` on the device.
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
    /// Llama safetensors file (F32, F16 or BF16; every parameter present with its exact shape,
    /// the error names the tensor; `lm_head.weight` is ignored when the head is tied).
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

    /// Writes the master weights as an HF Llama safetensors file (F32, HF names; a tied head
    /// is not duplicated).
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

    fn tiny(tied: bool) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 32,
            max_position_embeddings: 16,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: tied,
            initializer_range: 0.02,
        }
    }

    #[test]
    fn layout_has_hf_names_and_the_tied_head_is_not_stored() {
        let l = tiny(false).layout();
        assert_eq!(
            l.get("model.layers.1.self_attn.k_proj.weight")
                .unwrap()
                .shape,
            [8, 16]
        );
        assert_eq!(
            l.get("model.layers.0.mlp.down_proj.weight").unwrap().shape,
            [16, 24]
        );
        // the vocabulary of 32 is padded to 128 rows in the arena
        assert_eq!(l.get("lm_head.weight").unwrap().shape, [128, 16]);
        assert!(tiny(true).layout().get("lm_head.weight").is_none());
        assert_eq!(l.numel() - tiny(true).layout().numel(), 128 * 16);
    }

    /// The projections and the embedding start with std `initializer_range`, the norms at 1;
    /// a zero, negative or non-finite one is refused by name.
    #[test]
    fn initializer_range_sets_the_initial_std() {
        let be = CpuBackend::new();
        for init in [0.02f64, 0.1] {
            let c = LlamaConfig {
                initializer_range: init,
                ..tiny(false)
            };
            let m = Llama::new(&be, c, 3).unwrap();
            let host = be.download_f32(m.params.view()).unwrap();
            let e = m.layout.get("model.layers.0.mlp.gate_proj.weight").unwrap();
            let w = &host[e.offset..e.offset + e.numel()];
            let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
            assert!(
                (f64::from(std) / init - 1.0).abs() < 0.15,
                "std {std} for {init}"
            );
            let n = m.layout.get("model.norm.weight").unwrap();
            assert!(
                host[n.offset..n.offset + n.numel()]
                    .iter()
                    .all(|&x| x == 1.0)
            );
        }
        for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let c = LlamaConfig {
                initializer_range: bad,
                ..tiny(false)
            };
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("initializer_range"), "{err}");
        }
    }

    #[test]
    fn the_rope_tables_follow_hf() {
        let (cos, sin) = mp_autograd::ops::layout::rope_tables(4, 4, 10000.0);
        assert_eq!((cos.len(), sin.len()), (4 * 2, 4 * 2));
        assert!(cos[..2].iter().all(|&c| c == 1.0) && sin[..2].iter().all(|&s| s == 0.0));
        // position 3, frequencies 1 and 1 / 100
        assert_eq!(cos[6], 3.0f32.cos());
        assert_eq!(sin[7], (3.0f32 * 0.01).sin());
    }

    #[test]
    fn bad_shapes_are_named() {
        let c = LlamaConfig {
            num_key_value_heads: 3,
            ..tiny(false)
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("num_key_value_heads")
        );
        let c = LlamaConfig {
            head_dim: 5,
            ..tiny(false)
        };
        assert!(c.validate().unwrap_err().to_string().contains("head_dim"));
    }

    #[test]
    fn training_steps_lower_the_loss_tied_and_untied() {
        let be = CpuBackend::new();
        for tied in [false, true] {
            let mut m = Llama::new(&be, tiny(tied), 7).unwrap();
            let ids: Vec<u32> = (0..2 * 8).map(|i| (i * 5 % 32) as u32).collect();
            let targets: Vec<u32> = (0..2 * 8).map(|i| ((i * 5 + 3) % 32) as u32).collect();
            let batch = m.batch(&be, &ids, Some(&targets), 2, 8).unwrap();
            let cfg = mp_optim::AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            };
            let mut opt = mp_optim::AdamW::new(&be, m.num_params(), cfg).unwrap();
            let mut losses = Vec::new();
            for _ in 0..20 {
                m.zero_grads(&be).unwrap();
                losses.push(m.forward_backward(&be, &batch, Autocast::OFF, 1.0).unwrap());
                opt.step(&be, m.params.view_mut(), m.grads.view(), None, 1.0)
                    .unwrap();
            }
            assert!(losses[19] < 0.5 * losses[0], "tied {tied}: {losses:?}");
        }
    }
}
