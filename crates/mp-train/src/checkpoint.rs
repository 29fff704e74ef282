//! Checkpoint folders (`checkpoint-{step}`, as HF names them) and their integrity.
//!
//! A checkpoint holds:
//! - `model.safetensors`: the weights, FP32, HF GPT-2 names and layout, and `config.json`, an
//!   HF `GPT2Config`, so `transformers.GPT2LMHeadModel.from_pretrained(folder)` loads it;
//! - `optimizer.safetensors` and `optimizer.json` (AdamW moments; step count and groups), `scaler.json` (the loss scaler's
//!   `state_dict` with PyTorch's field names), `run_config.toml` (the whole run config);
//! - `trainer_state.json`: step, tokens, data position and RNG seed, and a manifest with the
//!   size and FNV-1a hash of every other file. It is written last.
//!
//! The folder is written as `.checkpoint-{step}.tmp-<pid>`, every file fsynced, then renamed
//! into place: a crash leaves either the whole checkpoint or none. Loading checks every file
//! against the manifest, so a truncated or corrupt checkpoint is an error naming the file, and
//! [`resolve`] falls back from a run folder to its newest intact checkpoint.

use crate::config::{Arch, ModelConfig, TrainConfig};
use crate::error::{Result, TrainError};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights (HF GPT-2 safetensors, FP32).
pub const MODEL_FILE: &str = "model.safetensors";
/// The HF model config.
pub const HF_CONFIG_FILE: &str = "config.json";
/// The optimizer state's tensors (AdamW moments).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The optimizer state's scalars (step count, hyper-parameters, groups).
pub const OPTIMIZER_META_FILE: &str = "optimizer.json";
/// The loss scaler state.
pub const SCALER_FILE: &str = "scaler.json";
/// The run config.
pub const RUN_CONFIG_FILE: &str = "run_config.toml";
/// Step, data position, manifest (written last).
pub const STATE_FILE: &str = "trainer_state.json";
/// Version of the checkpoint layout (2: the parameter arena holds the matrices first, so the
/// flat optimizer state of version 1 does not line up).
pub const FORMAT_VERSION: u32 = 2;

/// HF's defaults for the `config.json` fields older files leave out (the hub's `gpt2`).
mod hf_default {
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn yes() -> bool {
        true
    }
    pub fn float32() -> String {
        "float32".into()
    }
    pub fn gpt2_eot() -> u32 {
        50256
    }
}

/// An HF `GPT2Config` (`config.json`); unknown fields are ignored when reading, since HF
/// writes many, and the fields HF has defaults for may be missing (as in the hub's `gpt2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfGpt2Config {
    /// `["GPT2LMHeadModel"]`.
    pub architectures: Vec<String>,
    /// `"gpt2"`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Positions.
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Heads.
    pub n_head: usize,
    /// MLP width (`null`: 4 n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// `"gelu_new"` (tanh GELU).
    pub activation_function: String,
    /// Layer-norm epsilon.
    pub layer_norm_epsilon: f32,
    /// Initialiser standard deviation.
    #[serde(default = "hf_default::initializer_range")]
    pub initializer_range: f64,
    /// Dropout probabilities (this trainer uses none).
    #[serde(default)]
    pub resid_pdrop: f32,
    /// Embedding dropout.
    #[serde(default)]
    pub embd_pdrop: f32,
    /// Attention dropout.
    #[serde(default)]
    pub attn_pdrop: f32,
    /// Scores scaled by `1/sqrt(head size)`.
    #[serde(default = "hf_default::yes")]
    pub scale_attn_weights: bool,
    /// The output head is the token embedding.
    #[serde(default = "hf_default::yes")]
    pub tie_word_embeddings: bool,
    /// dtype of the stored weights.
    #[serde(default = "hf_default::float32")]
    pub torch_dtype: String,
    /// Beginning-of-text token (bytes: newline).
    #[serde(default = "hf_default::gpt2_eot")]
    pub bos_token_id: u32,
    /// End-of-text token (bytes: newline).
    #[serde(default = "hf_default::gpt2_eot")]
    pub eos_token_id: u32,
}

impl HfGpt2Config {
    /// The HF config of a model.
    pub fn from_model(m: &ModelConfig) -> Self {
        HfGpt2Config {
            architectures: vec!["GPT2LMHeadModel".into()],
            model_type: "gpt2".into(),
            vocab_size: m.vocab_size,
            n_positions: m.n_positions,
            n_embd: m.n_embd,
            n_layer: m.n_layer,
            n_head: m.n_head,
            n_inner: None,
            activation_function: "gelu_new".into(),
            layer_norm_epsilon: 1e-5,
            initializer_range: m.initializer_range,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            scale_attn_weights: true,
            tie_word_embeddings: true,
            torch_dtype: "float32".into(),
            bos_token_id: u32::from(b'\n'),
            eos_token_id: u32::from(b'\n'),
        }
    }

    /// The model config it describes.
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            n_layer: self.n_layer,
            n_embd: self.n_embd,
            n_head: self.n_head,
            n_positions: self.n_positions,
            vocab_size: self.vocab_size,
            initializer_range: self.initializer_range,
            ..ModelConfig::default()
        }
    }
}

/// An HF `LlamaConfig` (`config.json` of a `LlamaForCausalLM`), as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    /// `["LlamaForCausalLM"]`.
    pub architectures: Vec<String>,
    /// `"llama"`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Positions.
    pub max_position_embeddings: usize,
    /// Width.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// `"silu"`.
    pub hidden_act: String,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// No biases.
    pub attention_bias: bool,
    /// No biases.
    pub mlp_bias: bool,
    /// The output head is the token embedding.
    pub tie_word_embeddings: bool,
    /// Initialiser standard deviation.
    pub initializer_range: f64,
    /// dtype of the stored weights.
    pub torch_dtype: String,
    /// Beginning-of-text token (bytes: newline).
    pub bos_token_id: u32,
    /// End-of-text token (bytes: newline).
    pub eos_token_id: u32,
}

impl HfLlamaConfig {
    /// The HF config of a Llama model config.
    pub fn from_model(m: &ModelConfig) -> Self {
        let l = m.llama();
        HfLlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            vocab_size: l.vocab_size,
            max_position_embeddings: l.max_position_embeddings,
            hidden_size: l.hidden_size,
            intermediate_size: l.intermediate_size,
            num_hidden_layers: l.num_hidden_layers,
            num_attention_heads: l.num_attention_heads,
            num_key_value_heads: l.num_key_value_heads,
            head_dim: l.head_dim,
            hidden_act: "silu".into(),
            rms_norm_eps: l.rms_norm_eps,
            rope_theta: l.rope_theta,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: l.tie_word_embeddings,
            initializer_range: l.initializer_range,
            torch_dtype: "float32".into(),
            bos_token_id: u32::from(b'\n'),
            eos_token_id: u32::from(b'\n'),
        }
    }
}

/// The HF `config.json` text of a model config, in its architecture's format, with `eot` as
/// the beginning- and end-of-text token (the tokenizer's; `None`: bytes, whose is a newline).
pub fn hf_config_json(
    m: &ModelConfig,
    eot: Option<u32>,
) -> std::result::Result<String, serde_json::Error> {
    let eot = eot.unwrap_or(u32::from(b'\n'));
    match m.arch {
        Arch::Gpt2 => serde_json::to_string_pretty(&HfGpt2Config {
            bos_token_id: eot,
            eos_token_id: eot,
            ..HfGpt2Config::from_model(m)
        }),
        Arch::Llama => serde_json::to_string_pretty(&HfLlamaConfig {
            bos_token_id: eot,
            eos_token_id: eot,
            ..HfLlamaConfig::from_model(m)
        }),
    }
}

/// Size and hash of one file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Length in bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the content, hex.
    pub fnv1a64: String,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Optimizer steps taken (HF `global_step`).
    pub global_step: u64,
    /// Training tokens seen.
    pub tokens_seen: u64,
    /// Steps skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// The run seed: with `global_step` it fixes the data position (batches are a pure
    /// function of seed, micro-batch index and row) and the stochastic-rounding streams.
    pub seed: u64,
    /// Micro-batches consumed (`global_step * grad_accum_steps`): the data position.
    pub micro_batches: u64,
    /// The run's precision.
    pub precision: String,
    /// The last evaluation, if any: `(validation loss, accuracy)`.
    pub last_eval: Option<(f32, Option<f64>)>,
    /// mp-train version that wrote it.
    pub writer: String,
    /// Every other file of the checkpoint.
    pub files: BTreeMap<String, FileEntry>,
}

/// The folder name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("checkpoint-{step}")
}

/// The step of a folder named `checkpoint-{step}`.
pub fn step_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Every `checkpoint-{step}` folder of a run folder, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TrainError::io("listing", run_dir)(e)),
    };
    for e in entries.flatten() {
        let p = e.path();
        if let Some(step) = step_of(&p).filter(|_| p.is_dir()) {
            out.push((step, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a checkpoint atomically: `write_files` fills a temporary folder, then the manifest
/// is written, everything is fsynced, and the folder is renamed to `checkpoint-{step}` (an
/// existing folder of that name, from a run this one resumed before its end, is replaced).
/// `config.json` names `eot` (the tokenizer's end-of-text token) as BOS/EOS. Returns the final
/// path.
pub fn save(
    run_dir: &Path,
    mut state: TrainerState,
    config: &TrainConfig,
    eot: Option<u32>,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let final_dir = run_dir.join(dir_name(state.global_step));
    let tmp = fsutil::tmp_sibling(&final_dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io("removing stale", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io("creating", &tmp))?;
    let result = (|| {
        write_files(&tmp)?;
        let hf = hf_config_json(&config.model, eot).map_err(|source| TrainError::Json {
            path: tmp.join(HF_CONFIG_FILE),
            source,
        })?;
        fsutil::write_synced(&tmp.join(HF_CONFIG_FILE), hf.as_bytes())?;
        fsutil::write_synced(&tmp.join(RUN_CONFIG_FILE), config.to_toml().as_bytes())?;
        state.files.clear();
        let mut names: Vec<String> = std::fs::read_dir(&tmp)
            .map_err(TrainError::io("listing", &tmp))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != STATE_FILE)
            .collect();
        names.sort();
        for name in names {
            let bytes = std::fs::read(tmp.join(&name))
                .map_err(TrainError::io("reading", tmp.join(&name)))?;
            state.files.insert(
                name,
                FileEntry {
                    bytes: bytes.len() as u64,
                    fnv1a64: format!("{:016x}", fsutil::fnv1a64(&bytes)),
                },
            );
        }
        let json = serde_json::to_string_pretty(&state).map_err(|source| TrainError::Json {
            path: tmp.join(STATE_FILE),
            source,
        })?;
        fsutil::write_synced(&tmp.join(STATE_FILE), json.as_bytes())?;
        fsutil::sync_dir(&tmp)?;
        if final_dir.exists() {
            let old = run_dir.join(format!(
                ".{}.old-{}",
                dir_name(state.global_step),
                std::process::id()
            ));
            std::fs::rename(&final_dir, &old).map_err(TrainError::io("renaming", &final_dir))?;
            std::fs::rename(&tmp, &final_dir)
                .map_err(TrainError::io("renaming into place", &final_dir))?;
            std::fs::remove_dir_all(&old).map_err(TrainError::io("removing", &old))?;
        } else {
            std::fs::rename(&tmp, &final_dir)
                .map_err(TrainError::io("renaming into place", &final_dir))?;
        }
        fsutil::sync_dir(run_dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| final_dir)
}

/// Deletes the oldest checkpoints beyond `keep` (0 keeps all); never the one just written.
pub fn rotate(run_dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let all = list(run_dir)?;
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (step, path) in all.into_iter().take(excess) {
        // out of sight first (one rename), then deleted: a kill in between leaves a stale
        // `.old-<pid>` folder that the next start removes, never a checkpoint-N without its
        // model that resume would trip over
        let gone = run_dir.join(format!(".{}.old-{}", dir_name(step), std::process::id()));
        std::fs::rename(&path, &gone).map_err(TrainError::io("renaming old checkpoint", &path))?;
        std::fs::remove_dir_all(&gone).map_err(TrainError::io("removing old checkpoint", &gone))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Reads `trainer_state.json` and checks every file of the manifest (size, then hash).
pub fn verify(dir: &Path) -> Result<TrainerState> {
    if !dir.is_dir() {
        return Err(TrainError::checkpoint(dir, "no such checkpoint folder"));
    }
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TrainError::checkpoint(
                dir,
                format!("{STATE_FILE} is missing: not a checkpoint, or an interrupted write"),
            )
        } else {
            TrainError::io("reading", &state_path)(e)
        }
    })?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&state_path, format!("corrupt: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(TrainError::checkpoint(
            &state_path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        ));
    }
    for (name, entry) in &state.files {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TrainError::checkpoint(&path, "missing")
            } else {
                TrainError::io("reading", &path)(e)
            }
        })?;
        if bytes.len() as u64 != entry.bytes {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "truncated or altered: {} bytes, the manifest says {}",
                    bytes.len(),
                    entry.bytes
                ),
            ));
        }
        let hash = format!("{:016x}", fsutil::fnv1a64(&bytes));
        if hash != entry.fnv1a64 {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "corrupt: checksum {hash}, the manifest says {}",
                    entry.fnv1a64
                ),
            ));
        }
    }
    for required in [MODEL_FILE, HF_CONFIG_FILE, RUN_CONFIG_FILE] {
        if !state.files.contains_key(required) {
            return Err(TrainError::checkpoint(
                dir,
                format!("{required} is not in the manifest"),
            ));
        }
    }
    Ok(state)
}

/// The model config of a checkpoint (its `config.json`).
pub fn hf_config(dir: &Path) -> Result<HfGpt2Config> {
    let path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io("reading", &path))?;
    let cfg: HfGpt2Config = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("not an HF GPT-2 config: {e}")))?;
    if cfg.model_type != "gpt2" {
        return Err(TrainError::checkpoint(
            &path,
            format!("model_type {:?}, expected \"gpt2\"", cfg.model_type),
        ));
    }
    Ok(cfg)
}

/// The run config stored in a checkpoint.
pub fn run_config(dir: &Path) -> Result<TrainConfig> {
    let path = dir.join(RUN_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io("reading", &path))?;
    TrainConfig::from_toml_str(&text, &path.display().to_string(), &[])
}

/// Whether `dir` is a model folder written by HF transformers (`save_pretrained`): a
/// `config.json` and a `model.safetensors`, and no trainer state of ours.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.join(HF_CONFIG_FILE).is_file()
        && dir.join(MODEL_FILE).is_file()
        && !dir.join(STATE_FILE).exists()
}

/// The model config a checkpoint's `config.json` describes (HF GPT-2 or Llama); a Llama
/// whose head size is not `hidden_size / num_attention_heads` is an error (the run config has
/// no field for it).
pub fn hf_model(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(TrainError::io("reading", &path))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("not JSON: {e}")))?;
    match v["model_type"].as_str() {
        Some("llama") => {
            let l = crate::model::LlamaConfig::from_hf_json(&path)?;
            if l.head_dim * l.num_attention_heads != l.hidden_size {
                return Err(TrainError::checkpoint(
                    &path,
                    format!(
                        "head_dim {} x {} heads != hidden_size {}: not expressible as a run \
                         config",
                        l.head_dim, l.num_attention_heads, l.hidden_size
                    ),
                ));
            }
            Ok(ModelConfig {
                arch: Arch::Llama,
                n_layer: l.num_hidden_layers,
                n_embd: l.hidden_size,
                n_head: l.num_attention_heads,
                n_positions: l.max_position_embeddings,
                vocab_size: l.vocab_size,
                n_kv_head: l.num_key_value_heads,
                intermediate_size: l.intermediate_size,
                rope_theta: l.rope_theta,
                rms_norm_eps: l.rms_norm_eps,
                tie_word_embeddings: l.tie_word_embeddings,
                initializer_range: l.initializer_range,
            })
        }
        _ => Ok(hf_config(dir)?.model()),
    }
}

/// Errors unless the checkpoint's model is `model` (field by field, naming the first that
/// differs; Llama sizes compared as they are in effect, e.g. `n_kv_head = 0` as `n_head`).
pub fn check_model(dir: &Path, model: &ModelConfig) -> Result<()> {
    let theirs = hf_model(dir)?;
    let fields = |m: &ModelConfig| -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("model.arch", m.arch.name().to_string()),
            ("model.n_layer", m.n_layer.to_string()),
            ("model.n_embd", m.n_embd.to_string()),
            ("model.n_head", m.n_head.to_string()),
            ("model.n_positions", m.n_positions.to_string()),
            ("model.vocab_size", m.vocab_size.to_string()),
        ];
        if m.arch == Arch::Llama {
            f.extend([
                ("model.n_kv_head", m.kv_heads().to_string()),
                (
                    "model.intermediate_size",
                    m.llama_intermediate().to_string(),
                ),
                ("model.rope_theta", m.rope_theta.to_string()),
                ("model.rms_norm_eps", m.rms_norm_eps.to_string()),
                (
                    "model.tie_word_embeddings",
                    m.tie_word_embeddings.to_string(),
                ),
            ]);
        }
        f
    };
    for ((field, a), (_, b)) in fields(&theirs).into_iter().zip(fields(model)) {
        if a != b {
            return Err(TrainError::ModelMismatch {
                path: dir.to_path_buf(),
                field,
                checkpoint: a,
                config: b,
            });
        }
    }
    Ok(())
}

/// Resolves `--resume PATH`: a checkpoint folder is verified; a run folder yields its newest
/// intact checkpoint (the names of broken newer ones come back as warnings).
pub fn resolve(path: &Path) -> Result<(PathBuf, TrainerState, Vec<String>)> {
    if step_of(path).is_some() || path.join(STATE_FILE).exists() {
        let state = verify(path)?;
        return Ok((path.to_path_buf(), state, Vec::new()));
    }
    let all = list(path)?;
    if all.is_empty() {
        return Err(TrainError::checkpoint(
            path,
            "neither a checkpoint nor a run folder holding checkpoint-* folders",
        ));
    }
    let mut warnings = Vec::new();
    for (_, dir) in all.into_iter().rev() {
        match verify(&dir) {
            Ok(state) => return Ok((dir, state, warnings)),
            Err(e) => warnings.push(format!("skipping {e}")),
        }
    }
    Err(TrainError::checkpoint(
        path,
        format!("no intact checkpoint: {}", warnings.join("; ")),
    ))
}
