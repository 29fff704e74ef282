//! What the CLI does besides training: evaluate, sample from and inspect a checkpoint, and
//! tokenize text into shards.

use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::{Dataset, mix64};
use crate::device::{self, BackendJob};
use crate::error::{Result, TrainError};
use crate::metrics::EvalRecord;
use crate::tokenizer::Tokenizer;
use crate::train::{self, Trainer};
use mp_kernels::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The run config of a checkpoint with `overrides` applied (`--set`), after verifying the
/// checkpoint's files. A folder written by HF transformers (`config.json` and
/// `model.safetensors`, no trainer state) gets the default run config in FP32 with the model
/// its `config.json` describes.
pub fn checkpoint_config(dir: &Path, overrides: &[String]) -> Result<TrainConfig> {
    if checkpoint::is_hf_folder(dir) {
        let mut sets = vec![
            "precision=\"fp32\"".to_string(),
            format!("model.arch=\"{}\"", checkpoint::hf_model(dir)?.arch.name()),
        ];
        sets.extend(overrides.iter().cloned());
        let mut cfg = TrainConfig::load(None, &sets)?;
        cfg.model = checkpoint::hf_model(dir)?;
        cfg.validate()?;
        return Ok(cfg);
    }
    checkpoint::verify(dir)?;
    let path = dir.join(checkpoint::RUN_CONFIG_FILE);
    TrainConfig::load(Some(&path), overrides)
}

struct EvalJob {
    cfg: TrainConfig,
    dir: PathBuf,
    data: Dataset,
}

impl BackendJob for EvalJob {
    type Output = EvalRecord;
    fn run<B: Backend>(self, be: B) -> Result<EvalRecord> {
        let mut tr = Trainer::new(be, self.cfg, self.data)?;
        tr.load_weights(&self.dir)?;
        if !checkpoint::is_hf_folder(&self.dir) {
            tr.step = checkpoint::verify(&self.dir)?.global_step;
        }
        tr.evaluate()
    }
}

/// Validation loss and accuracy of a checkpoint, on its own data unless `overrides` change it.
pub fn evaluate(dir: &Path, overrides: &[String]) -> Result<EvalRecord> {
    let cfg = checkpoint_config(dir, overrides)?;
    let tokenizer = checkpoint_tokenizer(dir, &cfg)?;
    let data = Dataset::for_run(&cfg, tokenizer)?;
    device::dispatch(
        &cfg,
        EvalJob {
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            data,
        },
    )
}

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// The text to continue.
    pub prompt: String,
    /// Tokens to generate.
    pub tokens: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Sampling seed.
    pub seed: u64,
}

struct SampleJob {
    cfg: TrainConfig,
    dir: PathBuf,
    opts: SampleOptions,
}

/// What `sample` generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    /// The generated token ids (after the prompt).
    pub tokens: Vec<u32>,
    /// Their text, decoded by the checkpoint's tokenizer.
    pub text: String,
}

impl BackendJob for SampleJob {
    type Output = Sampled;
    fn run<B: Backend>(self, be: B) -> Result<Sampled> {
        let tokenizer = checkpoint_tokenizer(&self.dir, &self.cfg)?;
        // ids the tokenizer cannot decode (a vocabulary padded beyond it) are never sampled
        let limit = tokenizer.vocab_size().min(self.cfg.model.vocab_size);
        let data = Dataset::empty(tokenizer.clone());
        let mut tr = Trainer::new(be, self.cfg, data)?;
        tr.load_weights(&self.dir)?;
        let prompt: Vec<u32> = if self.opts.prompt.is_empty() {
            match tokenizer.eot() {
                Some(eot) => vec![eot],
                None => vec![u32::from(b'\n')],
            }
        } else {
            tokenizer.encode(&self.opts.prompt)?
        };
        let ctx = tr.cfg.model.n_positions;
        let prompt = prompt[prompt.len().saturating_sub(ctx)..].to_vec();
        let (temp, seed) = (self.opts.temperature, self.opts.seed);
        let mut counter = 0u64;
        let out = train::generate(
            &tr.be,
            &tr.model,
            tr.autocast(),
            &[prompt],
            self.opts.tokens,
            |logits| {
                let logits = &logits[..limit];
                counter += 1;
                if temp <= 0.0 {
                    return train::argmax(logits);
                }
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f64> = logits
                    .iter()
                    .map(|&l| f64::from((l - max) / temp).exp())
                    .collect();
                let total: f64 = weights.iter().sum();
                let u = (mix64(seed ^ mix64(counter)) >> 11) as f64 / (1u64 << 53) as f64 * total;
                let mut acc = 0.0;
                for (i, w) in weights.iter().enumerate() {
                    acc += w;
                    if u < acc {
                        return i as u32;
                    }
                }
                (weights.len() - 1) as u32
            },
        )?;
        let tokens = out.into_iter().next().unwrap_or_default();
        let text = tokenizer.decode(&tokens)?;
        Ok(Sampled { tokens, text })
    }
}

/// The tokenizer of a checkpoint or HF folder: its own (`tokenizer.json`, or GPT-2's
/// `vocab.json` + `merges.txt`), else the one its config names.
pub fn checkpoint_tokenizer(dir: &Path, cfg: &TrainConfig) -> Result<Tokenizer> {
    match Tokenizer::in_folder(dir)? {
        Some(t) => Ok(t),
        None => Tokenizer::from_spec(&cfg.tokenizer),
    }
}

/// Continues `opts.prompt` (encoded by the checkpoint's tokenizer) with the checkpoint's
/// model.
pub fn sample(dir: &Path, opts: SampleOptions) -> Result<Sampled> {
    if !opts.temperature.is_finite() || opts.temperature < 0.0 {
        return Err(TrainError::invalid(
            "--temperature",
            opts.temperature,
            "must be a finite number >= 0",
        ));
    }
    let cfg = checkpoint_config(dir, &[])?;
    device::dispatch(
        &cfg,
        SampleJob {
            cfg: cfg.clone(),
            dir: dir.to_path_buf(),
            opts,
        },
    )
}

/// A human-readable description of what a checkpoint holds (files, state, tensors).
pub fn inspect(dir: &Path) -> Result<String> {
    let state = checkpoint::verify(dir)?;
    let hf = checkpoint::hf_model(dir)?;
    let cfg = checkpoint::run_config(dir)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "checkpoint {} (all files match the manifest)",
        dir.display()
    );
    let _ = writeln!(
        s,
        "step {}, tokens {}, skipped steps {}, micro-batches {}, seed {}, precision {}, written by {}",
        state.global_step,
        state.tokens_seen,
        state.skipped_steps,
        state.micro_batches,
        state.seed,
        state.precision,
        state.writer
    );
    if let Some((loss, acc)) = state.last_eval {
        let _ = writeln!(
            s,
            "last evaluation: val_loss {loss:.4}{}",
            acc.map(|a| format!(", accuracy {:.1}%", 100.0 * a))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "model: {} {} layers, n_embd {}, n_head {}, n_positions {}, vocab {} ({} parameters)",
        hf.arch.name(),
        hf.n_layer,
        hf.n_embd,
        hf.n_head,
        hf.n_positions,
        hf.vocab_size,
        crate::memory::num_params(&cfg)
    );
    let _ = writeln!(
        s,
        "tokenizer: {}",
        Tokenizer::of_checkpoint(dir)?.describe()
    );
    let _ = writeln!(s, "files:");
    for (name, e) in &state.files {
        let _ = writeln!(
            s,
            "  {name:<24} {:>12} bytes  fnv1a64 {}",
            e.bytes, e.fnv1a64
        );
    }
    let scaler = std::fs::read_to_string(dir.join(checkpoint::SCALER_FILE)).unwrap_or_default();
    let _ = writeln!(s, "scaler: {}", scaler.trim());
    let model_path = dir.join(checkpoint::MODEL_FILE);
    let bytes = std::fs::read(&model_path).map_err(TrainError::io("reading", &model_path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::checkpoint(&model_path, e.to_string()))?;
    let mut names: Vec<(String, Vec<usize>, String)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), format!("{:?}", v.dtype())))
        .collect();
    names.sort_by_key(|a| natural_key(&a.0));
    let _ = writeln!(s, "tensors ({}):", names.len());
    for (n, shape, dt) in names {
        let _ = writeln!(s, "  {n:<40} {dt:<5} {shape:?}");
    }
    Ok(s)
}

/// Sorts `h.10` after `h.9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}

/// What `mp-train tokenize` is asked to do.
#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    /// The tokenizer (a config `tokenizer` value: `bytes`, a `tokenizer.json` or a folder).
    pub tokenizer: String,
    /// The folder the shards go into (created if missing).
    pub out: PathBuf,
    /// Text files, or folders of them (read recursively, in name order); one document each.
    pub inputs: Vec<PathBuf>,
    /// Shard names: `{name}_val_000000.bin`, `{name}_train_000000.bin`, ...
    pub name: String,
    /// The fraction of the tokens (the first ones) that go into the validation shards.
    pub val_fraction: f64,
    /// Tokens per shard at most.
    pub shard_tokens: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What `mp-train tokenize` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizeSummary {
    /// Documents read.
    pub documents: usize,
    /// Tokens written (end-of-text separators included).
    pub tokens: usize,
    /// The validation shards.
    pub val_shards: Vec<PathBuf>,
    /// The training shards.
    pub train_shards: Vec<PathBuf>,
}

/// The files `inputs` name: files as given, folders walked recursively (hidden entries
/// skipped), each folder's files in name order.
fn text_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(TrainError::io("listing", dir))?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files)?;
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(TrainError::Data {
                path: input.clone(),
                reason: "no such file or folder".into(),
            });
        }
    }
    Ok(files)
}

/// Tokenizes text files into llm.c token shards (`mp-train tokenize`): every file is one
/// document, each preceded by the tokenizer's end-of-text token (as llm.c's scripts do); the
/// first `val_fraction` of the tokens go into `{name}_val_*.bin`, the rest into
/// `{name}_train_*.bin`, at most `shard_tokens` per shard. The tokens are held in memory
/// until written (4 bytes each); existing shards of the same name are never overwritten.
pub fn tokenize(opts: &TokenizeOptions) -> Result<TokenizeSummary> {
    use rayon::prelude::*;
    let bad = |field: &str, value: String, reason: &str| TrainError::invalid(field, value, reason);
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(bad(
            "--val-fraction",
            opts.val_fraction.to_string(),
            "must be in [0, 1)",
        ));
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as usize {
        return Err(bad(
            "--shard-tokens",
            opts.shard_tokens.to_string(),
            "must be in 1..=2^31-1 (a shard header counts tokens in an i32)",
        ));
    }
    let tokenizer = Tokenizer::from_spec(&opts.tokenizer)?;
    let files = text_files(&opts.inputs)?;
    if files.is_empty() {
        return Err(bad("INPUT", format!("{:?}", opts.inputs), "names no file"));
    }
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = if opts.progress {
        indicatif::ProgressBar::new(bytes)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "tokenizing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let eot = tokenizer.eot();
    let documents: Vec<Vec<u32>> = files
        .par_iter()
        .map(|f| {
            let text = std::fs::read(f).map_err(TrainError::io("reading", f))?;
            bar.inc(text.len() as u64);
            let text = String::from_utf8(text).map_err(|e| TrainError::Data {
                path: f.clone(),
                reason: format!(
                    "not UTF-8 text (byte {}): a document must be text",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            let mut ids: Vec<u32> = eot.into_iter().collect();
            ids.extend(tokenizer.encode(&text)?);
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let all: Vec<u32> = documents.concat();
    let n_val = (all.len() as f64 * opts.val_fraction).round() as usize;
    let (val, train) = all.split_at(n_val);
    std::fs::create_dir_all(&opts.out).map_err(TrainError::io("creating", &opts.out))?;
    let write_split = |split: &str, tokens: &[u32]| -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (i, chunk) in tokens.chunks(opts.shard_tokens).enumerate() {
            let path = opts.out.join(format!("{}_{split}_{i:06}.bin", opts.name));
            if path.exists() {
                return Err(TrainError::Data {
                    path,
                    reason: "already exists: tokenize never overwrites a shard (remove it, or \
                             choose another --out or --name)"
                        .into(),
                });
            }
            crate::shards::write(&path, chunk)?;
            paths.push(path);
        }
        Ok(paths)
    };
    let val_shards = write_split("val", val)?;
    let train_shards = write_split("train", train)?;
    Ok(TokenizeSummary {
        documents: documents.len(),
        tokens: all.len(),
        val_shards,
        train_shards,
    })
}
