//! The run configuration: one TOML file, every field documented, unknown fields rejected.
//!
//! A config is read from a file (or the defaults), then `--set key=value` overrides are
//! applied to the TOML tree with dotted keys (`model.n_layer=2`), then the tree is checked
//! against the schema (`deny_unknown_fields` everywhere, so a misspelt field is an error
//! naming it) and finally [`TrainConfig::validate`] checks ranges and consistency.
//!
//! The defaults train a small GPT on the embedded arithmetic corpus in bf16 on CPU in a few
//! minutes on two cores.

use crate::error::{Result, TrainError};
use mp_dtype::DType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The most CPU worker threads a config may ask for (more only starves the machine: each is
/// an OS thread of the global pool).
pub const MAX_THREADS: usize = 1024;

/// The storage dtype of a tensor the precision leaves open (the residual stream, the gradient
/// arena).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageDtype {
    /// FP32 (PyTorch autocast's choice).
    #[default]
    #[serde(rename = "fp32")]
    Fp32,
    /// BF16 (llm.c's choice).
    #[serde(rename = "bf16")]
    Bf16,
}

impl StorageDtype {
    /// The dtype.
    pub const fn dtype(self) -> DType {
        match self {
            StorageDtype::Fp32 => DType::F32,
            StorageDtype::Bf16 => DType::BF16,
        }
    }

    /// The name used in configs.
    pub const fn name(self) -> &'static str {
        match self {
            StorageDtype::Fp32 => "fp32",
            StorageDtype::Bf16 => "bf16",
        }
    }
}

/// The model architecture (`model.arch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// HF GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU MLP, biases, tied head.
    #[default]
    #[serde(rename = "gpt2")]
    Gpt2,
    /// HF Llama (`LlamaForCausalLM`): RoPE, RMSNorm, SwiGLU, grouped-query attention, no
    /// biases.
    #[serde(rename = "llama")]
    Llama,
}

impl Arch {
    /// The name used in configs.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
        }
    }
}

/// Numeric precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in FP32.
    #[serde(rename = "fp32")]
    Fp32,
    /// BF16 autocast with FP32 master weights.
    #[serde(rename = "bf16")]
    Bf16,
    /// FP16 autocast with FP32 master weights (loss scaling on by default).
    #[serde(rename = "fp16")]
    Fp16,
    /// Pure BF16: BF16 parameters updated with stochastic rounding, no FP32 master copy.
    #[serde(rename = "bf16-sr")]
    Bf16Sr,
}

impl Precision {
    /// Every precision, in the order the precision study reports them.
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Bf16,
        Precision::Fp16,
        Precision::Bf16Sr,
    ];

    /// The name used in configs and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Bf16Sr => "bf16-sr",
        }
    }

    /// The compute (autocast) dtype: GEMM inputs and saved activations.
    pub const fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 | Precision::Bf16Sr => DType::BF16,
            Precision::Fp16 => DType::F16,
        }
    }

    /// True when the parameters keep an FP32 master copy beside the low-precision model copy.
    pub const fn has_master(self) -> bool {
        !matches!(self, Precision::Bf16Sr)
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The compute device family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CPU reference backend (always compiled).
    Cpu,
    /// NVIDIA GPUs through CUDA (`cuda` feature of mp-kernels).
    Cuda,
    /// Any GPU through wgpu (`wgpu` feature of mp-kernels).
    Wgpu,
}

impl BackendKind {
    /// The name used in configs and messages.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Learning-rate schedule after the linear warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay from the peak to `min_lr_ratio * learning_rate` at `max_steps`.
    Cosine,
    /// Linear decay from the peak to `min_lr_ratio * learning_rate` at `max_steps`.
    Linear,
    /// The peak learning rate throughout.
    Constant,
}

/// How the loss is scaled before backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingMode {
    /// Dynamic for fp16, none for the other precisions.
    Auto,
    /// `torch.amp.GradScaler`: start at `init_scale`, back off on overflow, grow after
    /// `growth_interval` clean steps.
    Dynamic,
    /// A constant scale `init_scale` (overflowing steps are still skipped).
    Static,
    /// No scaling (scale 1); overflowing steps are still skipped.
    None,
}

/// Loss-scaling options (`[loss_scaling]`). PyTorch `GradScaler` defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossScaling {
    /// `auto` (dynamic for fp16, none otherwise), `dynamic`, `static` or `none`.
    pub mode: ScalingMode,
    /// The first scale (dynamic) or the constant scale (static).
    pub init_scale: f32,
    /// Multiplier applied after `growth_interval` consecutive clean steps.
    pub growth_factor: f32,
    /// Multiplier applied on an overflowing step.
    pub backoff_factor: f32,
    /// Consecutive clean steps before the scale grows.
    pub growth_interval: u32,
    /// Overflowing steps tolerated before backing off (DeepSpeed hysteresis; 1 = PyTorch).
    pub hysteresis: u32,
    /// The scale never backs off below this.
    pub min_scale: f32,
    /// The scale never grows above this (apex used 2^24).
    pub max_scale: f32,
}

impl Default for LossScaling {
    fn default() -> Self {
        LossScaling {
            mode: ScalingMode::Auto,
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            hysteresis: 1,
            min_scale: 1.0,
            max_scale: 16_777_216.0,
        }
    }
}

impl LossScaling {
    /// The mode in effect for `precision` (`auto` resolved).
    pub fn effective_mode(&self, precision: Precision) -> ScalingMode {
        match (self.mode, precision) {
            (ScalingMode::Auto, Precision::Fp16) => ScalingMode::Dynamic,
            (ScalingMode::Auto, _) => ScalingMode::None,
            (mode, _) => mode,
        }
    }
}

/// Data-parallel training (`[distributed]`): how a run launched by `mpirun -np N` shares its
/// work (see [`crate::dist`]). A one-process run ignores it but for `zero_stage`, which
/// changes nothing there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Distributed {
    /// 0: DDP (every rank keeps the whole optimizer state; gradients all-reduced); 1: ZeRO
    /// stage 1 (each rank keeps the AdamW moments of its shard of the arena only; gradients
    /// reduce-scattered, the updated weights all-gathered).
    pub zero_stage: u8,
    /// Size of a gradient all-reduce bucket in MiB (PyTorch DDP's `bucket_cap_mb`); the first
    /// bucket is 1 MiB, as DDP's.
    pub bucket_mb: f64,
    /// Seconds a rank waits in a collective for the others before it ends the job (a rank
    /// died or hangs); 0: forever. It must exceed the longest step, evaluation or checkpoint.
    pub timeout_s: u64,
    /// Testing hook: `"RANK:STEP"` makes that rank fail at that optimizer step (from 0), as a
    /// bad batch would; the run must end with rank 0 naming it. Empty: never.
    pub fail_rank_at: String,
    /// Which engine reduces the arenas: `auto` (the host engine, MPI, for host memory; the
    /// device's own, NCCL, for GPU memory; nothing in a world of one) or `nccl` (NCCL even in
    /// a world of one, to check it on one GPU).
    pub engine: DistEngine,
}

/// The engine of [`Distributed::engine`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistEngine {
    /// MPI for host arenas, the device's own collectives for device arenas.
    #[default]
    Auto,
    /// The device's own collectives (NCCL on CUDA), even with one rank.
    Nccl,
}

impl DistEngine {
    /// The name in configs.
    pub const fn name(self) -> &'static str {
        match self {
            DistEngine::Auto => "auto",
            DistEngine::Nccl => "nccl",
        }
    }
}

impl Default for Distributed {
    fn default() -> Self {
        Distributed {
            zero_stage: 0,
            bucket_mb: 25.0,
            timeout_s: 600,
            fail_rank_at: String::new(),
            engine: DistEngine::Auto,
        }
    }
}

impl Distributed {
    /// The `fail_rank_at` hook as `(rank, step)`, `None` when empty.
    pub fn fail_at(&self) -> Result<Option<(usize, u64)>> {
        let s = self.fail_rank_at.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = || {
            TrainError::invalid(
                "distributed.fail_rank_at",
                s,
                "must be RANK:STEP (two non-negative integers), e.g. \"1:5\"",
            )
        };
        let (r, st) = s.split_once(':').ok_or_else(bad)?;
        Ok(Some((
            r.trim().parse().map_err(|_| bad())?,
            st.trim().parse().map_err(|_| bad())?,
        )))
    }
}

/// The model (`[model]`): the architecture and its shape. The sizes every architecture has
/// use GPT-2's names; the Llama-only fields are ignored by (and must keep their defaults for)
/// GPT-2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The architecture: `gpt2` or `llama`.
    pub arch: Arch,
    /// Transformer blocks (`n_layer`).
    pub n_layer: usize,
    /// Model width (`n_embd`).
    pub n_embd: usize,
    /// Attention heads (`n_head`); must divide `n_embd`.
    pub n_head: usize,
    /// Context length: positions of the position embedding and the training sequence length.
    pub n_positions: usize,
    /// Vocabulary size; at least 256 (byte-level tokens).
    pub vocab_size: usize,
    /// Llama: key/value heads (0: `n_head`, no grouping); must divide `n_head`.
    pub n_kv_head: usize,
    /// Llama: the SwiGLU MLP's width (0: `8/3 n_embd` rounded up to a multiple of 16).
    pub intermediate_size: usize,
    /// Llama: the rotary embedding's base.
    pub rope_theta: f32,
    /// Llama: RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Llama: the output head is the token embedding (GPT-2's always is).
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights (HF `initializer_range`; GPT-2's residual
    /// projections take it over `sqrt(2 n_layer)`).
    pub initializer_range: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::Gpt2,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_positions: 64,
            vocab_size: 256,
            n_kv_head: 0,
            intermediate_size: 0,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
            initializer_range: 0.02,
        }
    }
}

impl ModelConfig {
    /// Key/value heads in effect (`n_kv_head`, or `n_head` when 0).
    pub fn kv_heads(&self) -> usize {
        if self.n_kv_head == 0 {
            self.n_head
        } else {
            self.n_kv_head
        }
    }

    /// The Llama MLP width in effect (`intermediate_size`, or 8/3 of the width rounded up
    /// to a multiple of 16 when 0).
    pub fn llama_intermediate(&self) -> usize {
        if self.intermediate_size == 0 {
            (8 * self.n_embd).div_ceil(3).div_ceil(16) * 16
        } else {
            self.intermediate_size
        }
    }

    /// The GPT this config describes (GPT-2 architecture).
    pub fn gpt(&self) -> crate::model::GptConfig {
        crate::model::GptConfig {
            vocab_size: self.vocab_size,
            n_positions: self.n_positions,
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            layer_norm_epsilon: 1e-5,
            initializer_range: self.initializer_range,
        }
    }

    /// The Llama this config describes (Llama architecture).
    pub fn llama(&self) -> crate::model::LlamaConfig {
        crate::model::LlamaConfig {
            vocab_size: self.vocab_size,
            max_position_embeddings: self.n_positions,
            hidden_size: self.n_embd,
            intermediate_size: self.llama_intermediate(),
            num_hidden_layers: self.n_layer,
            num_attention_heads: self.n_head,
            num_key_value_heads: self.kv_heads(),
            head_dim: self.n_embd / self.n_head.max(1),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            initializer_range: self.initializer_range,
        }
    }
}

/// Training data (`[data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A text file to train on (tokenized whole by the `tokenizer`), or llm.c token shards: a
    /// shard file, a folder of `*.bin` shards or a glob; `*_val_*` shards validate (without
    /// them the training shards' last `val_fraction` does). Absent: the embedded arithmetic
    /// corpus.
    pub path: Option<PathBuf>,
    /// Fraction of the data (or of the arithmetic problems) held out for validation.
    pub val_fraction: f64,
    /// Digits of each operand of the embedded arithmetic corpus (1 to 4).
    pub digits: u32,
    /// Problems in the embedded corpus's training text.
    pub problems: usize,
    /// Write answers least-significant digit first (`07+45=250`): the carry order, which small
    /// transformers learn much faster.
    pub reverse_answer: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: None,
            val_fraction: 0.1,
            digits: 2,
            problems: 50_000,
            reverse_answer: true,
        }
    }
}

/// A whole run: the trainer's arguments, the model and the data (HF `TrainingArguments`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// `fp32`, `bf16`, `fp16` or `bf16-sr` (pure BF16 with stochastic rounding).
    pub precision: Precision,
    /// `cpu`, `cuda` or `wgpu`. A GPU backend that is not compiled in or finds no device is
    /// an error, never a silent CPU run.
    pub backend: BackendKind,
    /// CPU worker threads (0: one per core; at most [`MAX_THREADS`]).
    pub threads: usize,
    /// Seed of the initial weights, the batch order and stochastic rounding.
    pub seed: u64,
    /// Where the run folder goes (absent: `runs/run-<UTC time>`).
    pub output_dir: Option<PathBuf>,
    /// Optimizer steps to train for.
    pub max_steps: u64,
    /// Sequences per micro-batch (per device).
    pub batch_size: usize,
    /// Micro-batches whose gradients are accumulated into one optimizer step.
    pub grad_accum_steps: usize,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// `cosine`, `linear` or `constant` after warmup.
    pub lr_schedule: Schedule,
    /// Steps of linear warmup from 0 to the peak.
    pub warmup_steps: u64,
    /// The decayed schedules end at `min_lr_ratio * learning_rate`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay (AdamW), applied to matrices only (not biases, norms).
    pub weight_decay: f64,
    /// AdamW first-moment decay.
    pub adam_beta1: f64,
    /// AdamW second-moment decay.
    pub adam_beta2: f64,
    /// AdamW denominator epsilon.
    pub adam_epsilon: f64,
    /// Clip the global norm of the unscaled gradients to this (0: no clipping).
    pub max_grad_norm: f64,
    /// Log (progress bar, `metrics.jsonl`) every this many steps.
    pub logging_steps: u64,
    /// Evaluate (validation loss, exact-match accuracy) every this many steps (0: only at
    /// the end).
    pub eval_steps: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Held-out arithmetic problems answered (greedy decoding) per evaluation.
    pub eval_problems: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub save_steps: u64,
    /// Keep at most this many checkpoints (oldest deleted first; 0: keep all).
    pub save_total_limit: usize,
    /// The residual stream's dtype between blocks: `fp32` (as PyTorch autocast) or `bf16` (as
    /// llm.c: half the residual activations; needs a BF16 precision).
    pub residual_dtype: StorageDtype,
    /// The gradient arena's dtype: `fp32`, or `bf16` (half the gradient memory; every
    /// micro-batch's contribution is rounded once into it).
    pub grad_dtype: StorageDtype,
    /// Recompute each MLP's GELU in the backward pass instead of saving its output (the same
    /// gradients bit for bit; `4c` fewer saved values per token and layer).
    pub recompute_gelu: bool,
    /// Accept a software wgpu adapter (llvmpipe/lavapipe, WARP: a renderer on the CPU, far
    /// slower than the cpu backend), which is otherwise refused.
    pub allow_software_adapter: bool,
    /// Testing hook: the optimizer steps (from 0) at which the gradient arena is poisoned with
    /// `+inf` before the non-finite check, e.g. `"3,10-12,0-999/10"` (see
    /// [`crate::fault::StepSet`]); empty (the default): never.
    pub poison_grad_steps: String,
    /// Write `precision_health.jsonl` and `precision_health.png`: at every logged step, per
    /// parameter tensor, what FP16, BF16 and FP8 would lose (see [`crate::health`]).
    pub precision_health: bool,
    /// `"bytes"` (each byte a token, vocabulary 256: the default, which the embedded corpus
    /// needs), or a BPE tokenizer: a `tokenizer.json`, or a folder holding one or GPT-2's
    /// `vocab.json` + `merges.txt`. The model's vocabulary follows it (see
    /// [`crate::tokenizer`]).
    pub tokenizer: String,
    /// Loss scaling.
    pub loss_scaling: LossScaling,
    /// Data-parallel training.
    pub distributed: Distributed,
    /// The model.
    pub model: ModelConfig,
    /// The data.
    pub data: DataConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            precision: Precision::Bf16,
            backend: BackendKind::Cpu,
            threads: 0,
            seed: 1337,
            output_dir: None,
            max_steps: 1500,
            batch_size: 16,
            grad_accum_steps: 1,
            learning_rate: 3e-3,
            lr_schedule: Schedule::Cosine,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 10,
            eval_steps: 250,
            eval_batches: 8,
            eval_problems: 100,
            save_steps: 500,
            save_total_limit: 2,
            residual_dtype: StorageDtype::Fp32,
            grad_dtype: StorageDtype::Fp32,
            recompute_gelu: false,
            allow_software_adapter: false,
            poison_grad_steps: String::new(),
            precision_health: false,
            tokenizer: crate::tokenizer::BYTES.into(),
            loss_scaling: LossScaling::default(),
            distributed: Distributed::default(),
            model: ModelConfig::default(),
            data: DataConfig::default(),
        }
    }
}

/// Applies `key=value` (dotted key, TOML value; a bare word is taken as a string) to a tree.
pub fn apply_override(table: &mut toml::Table, arg: &str) -> Result<()> {
    let bad = |reason: &str| TrainError::BadOverride {
        arg: arg.to_string(),
        reason: reason.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(bad("empty key"));
    }
    let value = parse_value(raw);
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().ok_or_else(|| bad("empty key"))?;
    let mut node = table;
    for part in parents {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{part}` is not a table")))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

/// A TOML value from its text form; a bare word (`bf16`, `runs/x`) becomes a string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl TrainConfig {
    /// The architecture-specific rules: Llama's key/value heads divide the heads, its head
    /// size is even, its epsilon and base are positive; GPT-2 leaves the Llama fields at their
    /// defaults; the GPT-only options (`residual_dtype`, `recompute_gelu`) need GPT-2.
    fn validate_arch(&self) -> Result<()> {
        let m = &self.model;
        let d = ModelConfig::default();
        match m.arch {
            Arch::Gpt2 => {
                let changed = |field, ours: String, default: String| {
                    (ours != default).then_some((field, ours))
                };
                let llama_only = [
                    changed(
                        "model.n_kv_head",
                        m.n_kv_head.to_string(),
                        d.n_kv_head.to_string(),
                    ),
                    changed(
                        "model.intermediate_size",
                        m.intermediate_size.to_string(),
                        d.intermediate_size.to_string(),
                    ),
                    changed(
                        "model.rope_theta",
                        m.rope_theta.to_string(),
                        d.rope_theta.to_string(),
                    ),
                    changed(
                        "model.rms_norm_eps",
                        m.rms_norm_eps.to_string(),
                        d.rms_norm_eps.to_string(),
                    ),
                    changed(
                        "model.tie_word_embeddings",
                        m.tie_word_embeddings.to_string(),
                        d.tie_word_embeddings.to_string(),
                    ),
                ];
                if let Some((field, v)) = llama_only.into_iter().flatten().next() {
                    return Err(TrainError::invalid(
                        field,
                        v,
                        "is a Llama field: set model.arch = \"llama\" (GPT-2 has none)",
                    ));
                }
            }
            Arch::Llama => {
                m.llama().validate().map_err(|e| match e {
                    TrainError::InvalidField {
                        field,
                        value,
                        reason,
                    } => TrainError::InvalidField {
                        field: llama_field(&field).to_string(),
                        value,
                        reason,
                    },
                    other => other,
                })?;
                for (field, on) in [
                    ("residual_dtype", self.residual_dtype != StorageDtype::Fp32),
                    ("recompute_gelu", self.recompute_gelu),
                ] {
                    if on {
                        return Err(TrainError::invalid(
                            field,
                            "set",
                            "is a GPT-2 option (model.arch = \"gpt2\")",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a config file (absent: defaults), applies `overrides`, and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let (text, source_name) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(TrainError::io("reading config", p))?,
                p.display().to_string(),
            ),
            None => (String::new(), "<defaults>".to_string()),
        };
        Self::from_toml_str(&text, &source_name, overrides)
    }

    /// Parses TOML text (named `source_name` in messages), applies `overrides`, validates.
    pub fn from_toml_str(text: &str, source_name: &str, overrides: &[String]) -> Result<Self> {
        let parse_err = |msg: String| TrainError::ConfigParse {
            source_name: source_name.to_string(),
            msg: msg.trim_end().to_string(),
        };
        let config: TrainConfig = if overrides.is_empty() {
            // Straight from the text: the parser's messages point at the line.
            toml::from_str(text).map_err(|e| parse_err(e.to_string()))?
        } else {
            let mut table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
            for arg in overrides {
                apply_override(&mut table, arg)?;
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| TrainError::ConfigParse {
                    source_name: format!("{source_name} with --set {}", overrides.join(" ")),
                    msg: e.to_string().trim_end().to_string(),
                })?
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text (what a checkpoint stores as `run_config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.grad_accum_steps * self.model.n_positions
    }

    /// The loss-scaling mode in effect.
    pub fn scaling_mode(&self) -> ScalingMode {
        self.loss_scaling.effective_mode(self.precision)
    }

    /// Checks ranges and consistency; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(TrainError::invalid(field, v, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        if self.residual_dtype == StorageDtype::Bf16
            && !matches!(self.precision, Precision::Bf16 | Precision::Bf16Sr)
        {
            return Err(TrainError::invalid(
                "residual_dtype",
                "bf16",
                format!(
                    "a BF16 residual stream needs precision bf16 or bf16-sr, not {}",
                    self.precision.name()
                ),
            ));
        }
        let dist = &self.distributed;
        if dist.zero_stage > 1 {
            return Err(TrainError::invalid(
                "distributed.zero_stage",
                dist.zero_stage,
                "must be 0 (DDP) or 1 (ZeRO stage 1: sharded optimizer state)",
            ));
        }
        if !(dist.bucket_mb.is_finite() && dist.bucket_mb > 0.0) {
            return Err(TrainError::invalid(
                "distributed.bucket_mb",
                dist.bucket_mb,
                "must be a positive number of MiB",
            ));
        }
        dist.fail_at()?;
        crate::fault::StepSet::parse(&self.poison_grad_steps)
            .map_err(|e| TrainError::invalid("poison_grad_steps", &self.poison_grad_steps, e))?;
        positive("model.n_layer", m.n_layer)?;
        positive("model.n_embd", m.n_embd)?;
        positive("model.n_head", m.n_head)?;
        positive("model.n_positions", m.n_positions)?;
        if m.n_positions < 2 {
            return Err(TrainError::invalid(
                "model.n_positions",
                m.n_positions,
                "must be at least 2 (one input and one target token)",
            ));
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            return Err(TrainError::invalid(
                "model.n_head",
                m.n_head,
                format!("must divide model.n_embd ({})", m.n_embd),
            ));
        }
        if m.vocab_size < 256 {
            return Err(TrainError::invalid(
                "model.vocab_size",
                m.vocab_size,
                "must be at least 256 (tokens are bytes)",
            ));
        }
        self.validate_arch()?;
        if self.threads > MAX_THREADS {
            return Err(TrainError::invalid(
                "threads",
                self.threads,
                format!("must be at most {MAX_THREADS} (0: one per core)"),
            ));
        }
        positive("batch_size", self.batch_size)?;
        positive("grad_accum_steps", self.grad_accum_steps)?;
        positive("eval_batches", self.eval_batches)?;
        if self.logging_steps == 0 {
            return Err(TrainError::invalid(
                "logging_steps",
                0,
                "must be at least 1",
            ));
        }
        let finite_pos = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrainError::invalid(field, v, "must be a finite number > 0"))
            }
        };
        let unit = |field: &str, v: f64, closed_low: bool| {
            let ok = v.is_finite() && v < 1.0 && (v > 0.0 || (closed_low && v == 0.0));
            if ok {
                Ok(())
            } else {
                let range = if closed_low { "[0, 1)" } else { "(0, 1)" };
                Err(TrainError::invalid(field, v, format!("must be in {range}")))
            }
        };
        finite_pos("learning_rate", self.learning_rate)?;
        finite_pos("adam_epsilon", self.adam_epsilon)?;
        unit("adam_beta1", self.adam_beta1, true)?;
        unit("adam_beta2", self.adam_beta2, true)?;
        if !(self.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return Err(TrainError::invalid(
                "min_lr_ratio",
                self.min_lr_ratio,
                "must be in [0, 1]",
            ));
        }
        for (field, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::invalid(
                    field,
                    v,
                    "must be a finite number >= 0",
                ));
            }
        }
        let d = &self.data;
        unit("data.val_fraction", d.val_fraction, false)?;
        if !(1..=4).contains(&d.digits) {
            return Err(TrainError::invalid(
                "data.digits",
                d.digits,
                "must be 1 to 4",
            ));
        }
        positive("data.problems", d.problems)?;
        if d.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(TrainError::invalid(
                "data.path",
                "\"\"",
                "must name a file (or be left out for the embedded corpus)",
            ));
        }
        let s = &self.loss_scaling;
        for (field, v) in [
            ("loss_scaling.init_scale", s.init_scale),
            ("loss_scaling.min_scale", s.min_scale),
            ("loss_scaling.max_scale", s.max_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(TrainError::invalid(field, v, "must be a finite number > 0"));
            }
        }
        if !(s.growth_factor.is_finite() && s.growth_factor > 1.0) {
            return Err(TrainError::invalid(
                "loss_scaling.growth_factor",
                s.growth_factor,
                "must be > 1",
            ));
        }
        if !(s.backoff_factor > 0.0 && s.backoff_factor < 1.0) {
            return Err(TrainError::invalid(
                "loss_scaling.backoff_factor",
                s.backoff_factor,
                "must be in (0, 1)",
            ));
        }
        if s.growth_interval == 0 {
            return Err(TrainError::invalid(
                "loss_scaling.growth_interval",
                0,
                "must be at least 1",
            ));
        }
        if s.hysteresis == 0 {
            return Err(TrainError::invalid(
                "loss_scaling.hysteresis",
                0,
                "must be at least 1",
            ));
        }
        if s.min_scale > s.max_scale {
            return Err(TrainError::invalid(
                "loss_scaling.min_scale",
                s.min_scale,
                format!("must not exceed loss_scaling.max_scale ({})", s.max_scale),
            ));
        }
        Ok(())
    }
}

/// The default config file, every field with its documentation (`mp-train train --print-config`).
pub fn documented_default_toml() -> String {
    let c = TrainConfig::default();
    let s = &c.loss_scaling;
    let m = &c.model;
    let d = &c.data;
    format!(
        r#"# mp-train run configuration. Every field is optional; unknown fields are errors.

# Numeric precision: "fp32", "bf16", "fp16" or "bf16-sr" (pure BF16, stochastic rounding).
precision = "{precision}"
# Compute device: "cpu", "cuda" or "wgpu" (a GPU backend without a device is an error).
backend = "{backend}"
# CPU worker threads (0: one per core).
threads = {threads}
# Seed of the initial weights, the batch order and stochastic rounding.
seed = {seed}
# Where the run folder goes (left out: runs/run-<UTC time>).
# output_dir = "runs/my-run"
# Optimizer steps.
max_steps = {max_steps}
# Sequences per micro-batch.
batch_size = {batch_size}
# Micro-batches accumulated into one optimizer step.
grad_accum_steps = {grad_accum_steps}
# Peak learning rate (AdamW).
learning_rate = {learning_rate:e}
# "cosine", "linear" or "constant" after warmup.
lr_schedule = "cosine"
# Linear warmup steps.
warmup_steps = {warmup_steps}
# Decayed schedules end at min_lr_ratio * learning_rate.
min_lr_ratio = {min_lr_ratio}
# AdamW decoupled weight decay (matrices only).
weight_decay = {weight_decay}
adam_beta1 = {adam_beta1}
adam_beta2 = {adam_beta2}
adam_epsilon = {adam_epsilon:e}
# Clip the global norm of the unscaled gradients (0: off).
max_grad_norm = {max_grad_norm}
# Log every N steps (progress bar and metrics.jsonl).
logging_steps = {logging_steps}
# Evaluate every N steps (0: only at the end).
eval_steps = {eval_steps}
# Validation batches per evaluation.
eval_batches = {eval_batches}
# Held-out arithmetic problems answered per evaluation (exact match, greedy decoding).
eval_problems = {eval_problems}
# Checkpoint every N steps (0: only at the end).
save_steps = {save_steps}
# Keep the last K checkpoints (0: all).
save_total_limit = {save_total_limit}
# The residual stream between blocks: "fp32" (PyTorch autocast) or "bf16" (llm.c; needs
# precision bf16 or bf16-sr).
residual_dtype = "{residual_dtype}"
# The gradient arena: "fp32" or "bf16".
grad_dtype = "{grad_dtype}"
# Recompute the MLP's GELU in the backward pass instead of saving it (same gradients).
recompute_gelu = {recompute_gelu}
# backend = "wgpu" on a software adapter (llvmpipe/lavapipe, WARP: the CPU, slowly) only if true.
allow_software_adapter = {allow_software_adapter}
# Testing hook: poison the gradients (+inf) at these steps, e.g. "3,10-12,0-999/10"; a correct
# run skips exactly them. Empty: never.
poison_grad_steps = "{poison_grad_steps}"
# At every logged step, per parameter tensor: the fractions that would underflow, be subnormal
# or overflow in fp16/bf16/fp8 and the update bf16/fp16 weights would lose
# (precision_health.jsonl, precision_health.png). On in compare.
precision_health = {precision_health}
# "bytes" (vocabulary 256; the embedded corpus needs it), or a BPE tokenizer: a tokenizer.json,
# or a folder with one or with GPT-2's vocab.json + merges.txt. model.vocab_size follows it.
tokenizer = "{tokenizer}"

[loss_scaling]
# "auto" (dynamic for fp16, none otherwise), "dynamic", "static" or "none".
mode = "auto"
# First scale (dynamic) or the constant scale (static).
init_scale = {init_scale:.1}
growth_factor = {growth_factor:.1}
backoff_factor = {backoff_factor}
# Clean steps before the scale grows.
growth_interval = {growth_interval}
# Overflows tolerated before backing off (1 = PyTorch).
hysteresis = {hysteresis}
min_scale = {min_scale:.1}
max_scale = {max_scale:.1}

[distributed]
# Used when launched by `mpirun -np N mp-train train ...` (a binary built with --features mpi);
# batch_size is per rank: the global batch is batch_size x grad_accum_steps x N.
# 0: DDP (gradients all-reduced); 1: ZeRO stage 1 (each rank keeps the AdamW moments of its
# shard only; gradients reduce-scattered, weights all-gathered).
zero_stage = {zero_stage}
# Gradient all-reduce bucket size in MiB (the first bucket is 1 MiB).
bucket_mb = {bucket_mb:.1}
# Seconds a rank waits for the others in a collective before it ends the job (0: forever).
timeout_s = {timeout_s}
# Testing hook: "RANK:STEP" makes that rank fail at that step. Empty: never.
fail_rank_at = "{fail_rank_at}"
# "auto": MPI reduces host (cpu) arenas, NCCL GPU (cuda) arenas (a binary built with
# --features nccl); "nccl": NCCL even with one rank, to check it on one GPU.
engine = "{dist_engine}"

[model]
# "gpt2" (HF GPT2LMHeadModel) or "llama" (HF LlamaForCausalLM).
arch = "{arch}"
n_layer = {n_layer}
n_embd = {n_embd}
n_head = {n_head}
# Context length (also the training sequence length).
n_positions = {n_positions}
# At least 256, and at least the tokenizer's vocabulary (left at 256, it follows the tokenizer).
vocab_size = {vocab_size}
# Llama only: key/value heads (0: n_head; must divide n_head), the SwiGLU width (0: 8/3
# n_embd rounded up to a multiple of 16), the RoPE base, the RMSNorm epsilon, a tied head.
n_kv_head = {n_kv_head}
intermediate_size = {intermediate_size}
rope_theta = {rope_theta:.1}
rms_norm_eps = {rms_norm_eps:e}
tie_word_embeddings = {tie_word_embeddings}
# Standard deviation of the initial weights (HF initializer_range; GPT-2's residual
# projections take it over sqrt(2 n_layer)).
initializer_range = {initializer_range}

[data]
# A text file to train on (tokenized whole), or llm.c token shards (a .bin file, a folder of
# them or a glob such as "data/fineweb_*.bin"; *_val_* shards validate, memory-mapped);
# left out: the embedded arithmetic corpus.
# path = "input.txt"
# Fraction held out for validation.
val_fraction = {val_fraction}
# Operand digits of the arithmetic corpus (1 to 4).
digits = {digits}
# Problems in the arithmetic corpus's training text.
problems = {problems}
# Answers least-significant digit first (07+45=250), the order small transformers learn fast.
reverse_answer = {reverse_answer}
"#,
        precision = c.precision,
        backend = c.backend,
        threads = c.threads,
        seed = c.seed,
        max_steps = c.max_steps,
        batch_size = c.batch_size,
        grad_accum_steps = c.grad_accum_steps,
        learning_rate = c.learning_rate,
        warmup_steps = c.warmup_steps,
        min_lr_ratio = c.min_lr_ratio,
        weight_decay = c.weight_decay,
        adam_beta1 = c.adam_beta1,
        adam_beta2 = c.adam_beta2,
        adam_epsilon = c.adam_epsilon,
        max_grad_norm = c.max_grad_norm,
        logging_steps = c.logging_steps,
        eval_steps = c.eval_steps,
        eval_batches = c.eval_batches,
        eval_problems = c.eval_problems,
        save_steps = c.save_steps,
        save_total_limit = c.save_total_limit,
        residual_dtype = c.residual_dtype.name(),
        grad_dtype = c.grad_dtype.name(),
        recompute_gelu = c.recompute_gelu,
        allow_software_adapter = c.allow_software_adapter,
        poison_grad_steps = c.poison_grad_steps,
        tokenizer = c.tokenizer,
        precision_health = c.precision_health,
        init_scale = s.init_scale,
        growth_factor = s.growth_factor,
        backoff_factor = s.backoff_factor,
        growth_interval = s.growth_interval,
        hysteresis = s.hysteresis,
        min_scale = s.min_scale,
        max_scale = s.max_scale,
        zero_stage = c.distributed.zero_stage,
        bucket_mb = c.distributed.bucket_mb,
        timeout_s = c.distributed.timeout_s,
        fail_rank_at = c.distributed.fail_rank_at,
        dist_engine = c.distributed.engine.name(),
        n_layer = m.n_layer,
        n_embd = m.n_embd,
        n_head = m.n_head,
        arch = m.arch.name(),
        n_kv_head = m.n_kv_head,
        intermediate_size = m.intermediate_size,
        rope_theta = m.rope_theta,
        rms_norm_eps = m.rms_norm_eps,
        tie_word_embeddings = m.tie_word_embeddings,
        initializer_range = m.initializer_range,
        n_positions = m.n_positions,
        vocab_size = m.vocab_size,
        val_fraction = d.val_fraction,
        digits = d.digits,
        problems = d.problems,
        reverse_answer = d.reverse_answer,
    )
}

/// The `[model]` field behind a field of [`crate::model::LlamaConfig`] (for its errors).
fn llama_field(hf: &str) -> &'static str {
    match hf {
        "num_key_value_heads" => "model.n_kv_head",
        "head_dim" | "num_attention_heads" => "model.n_head",
        "intermediate_size" => "model.intermediate_size",
        "rms_norm_eps" => "model.rms_norm_eps",
        "rope_theta" => "model.rope_theta",
        "initializer_range" => "model.initializer_range",
        "hidden_size" => "model.n_embd",
        "num_hidden_layers" => "model.n_layer",
        "vocab_size" => "model.vocab_size",
        "max_position_embeddings" => "model.n_positions",
        _ => "model",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_parses_to_the_defaults() {
        let c = TrainConfig::from_toml_str(&documented_default_toml(), "doc", &[]).unwrap();
        assert_eq!(c, TrainConfig::default());
    }

    #[test]
    fn round_trips_through_toml() {
        let c = TrainConfig {
            output_dir: Some("runs/x".into()),
            precision: Precision::Bf16Sr,
            ..TrainConfig::default()
        };
        let back = TrainConfig::from_toml_str(&c.to_toml(), "rt", &[]).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = TrainConfig::from_toml_str("learning_rat = 1.0\n", "f.toml", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("f.toml") && msg.contains("learning_rat"),
            "{msg}"
        );
        let e = TrainConfig::from_toml_str("[model]\nwidth = 3\n", "f.toml", &[]).unwrap_err();
        assert!(e.to_string().contains("width"), "{e}");
        let e = TrainConfig::from_toml_str("", "f.toml", &["model.widht=3".into()]).unwrap_err();
        assert!(e.to_string().contains("widht"), "{e}");
    }

    #[test]
    fn overrides_apply_dotted_keys_and_bare_words() {
        let c = TrainConfig::from_toml_str(
            "precision = \"fp32\"\n",
            "f",
            &[
                "model.n_layer=2".into(),
                "precision=fp16".into(),
                "learning_rate=1e-4".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.model.n_layer, 2);
        assert_eq!(c.precision, Precision::Fp16);
        assert_eq!(c.learning_rate, 1e-4);
        assert_eq!(c.scaling_mode(), ScalingMode::Dynamic);
    }

    #[test]
    fn invalid_values_name_field_and_value() {
        let cases: &[(&str, &str)] = &[
            ("model.n_head=3", "model.n_head"),
            ("model.vocab_size=100", "model.vocab_size"),
            ("learning_rate=-1.5", "learning_rate"),
            ("batch_size=0", "batch_size"),
            ("data.val_fraction=1.5", "data.val_fraction"),
            (
                "loss_scaling.backoff_factor=2.5",
                "loss_scaling.backoff_factor",
            ),
        ];
        for (arg, field) in cases {
            let e = TrainConfig::from_toml_str("", "f", &[arg.to_string()]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(field), "{arg}: {msg}");
            let value = arg.split_once('=').unwrap().1;
            assert!(msg.contains(value.trim_start_matches('-')), "{arg}: {msg}");
        }
        let e = TrainConfig::from_toml_str("", "f", &["precision=fp8".into()]).unwrap_err();
        assert!(e.to_string().contains("fp8"), "{e}");
        let bf16_res = ["precision=fp16".into(), "residual_dtype=bf16".into()];
        let e = TrainConfig::from_toml_str("", "f", &bf16_res).unwrap_err();
        assert!(e.to_string().contains("residual_dtype"), "{e}");
        let e = TrainConfig::from_toml_str("", "f", &["grad_dtype=fp8".into()]).unwrap_err();
        assert!(e.to_string().contains("fp8"), "{e}");
        let ok = ["residual_dtype=bf16".into(), "grad_dtype=bf16".into()];
        let c = TrainConfig::from_toml_str("", "f", &ok).unwrap();
        assert_eq!(
            (c.residual_dtype, c.grad_dtype),
            (StorageDtype::Bf16, StorageDtype::Bf16)
        );
        let e = TrainConfig::from_toml_str("", "f", &["novalue".into()]).unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
    }
}
