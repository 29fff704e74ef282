//! `mp-train`: train a GPT in mixed precision, evaluate, sample, inspect checkpoints, and run
//! the precision study.
//!
//! `mp-train train` with no arguments trains the default small GPT on the embedded arithmetic
//! corpus in bf16 on the CPU and writes `runs/run-<UTC time>/`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mp_dist::World;
use mp_train::config::{TrainConfig, documented_default_toml};
use mp_train::error::TrainError;
use mp_train::run::{self, Progress, RunOptions};
use mp_train::{checkpoint, compare, tools};
use std::path::{Path, PathBuf};

/// mimalloc keeps freed pages for reuse: a training step allocates and frees the same large
/// activation buffers every step, which the system allocator returns to the kernel and faults
/// back in (zero-filled) each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "mp-train",
    version,
    about = "Mixed-precision GPT training (FP16/BF16 compute, FP32 master weights, loss scaling)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (the defaults: a small GPT on the embedded arithmetic corpus, bf16, CPU).
    Train(TrainArgs),
    /// Validation loss and exact-match accuracy of a checkpoint.
    Eval {
        /// A checkpoint folder (`.../checkpoint-N`).
        checkpoint: PathBuf,
        /// `key=value` overrides of the checkpoint's run config (e.g. `eval_problems=500`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Generate text from a checkpoint.
    Sample {
        /// A checkpoint folder.
        checkpoint: PathBuf,
        /// The text to continue (default: the end-of-text token; a newline for bytes).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Softmax temperature (0: greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// What a checkpoint holds (verifies every file against its manifest).
    Inspect {
        /// A checkpoint folder.
        checkpoint: PathBuf,
    },
    /// The precision study: fp32, bf16, fp16 with and without loss scaling, bf16-sr.
    Compare(CompareArgs),
    /// Text files (or folders of them; one document per file) to llm.c token shards for
    /// `--data`: `{name}_val_000000.bin`, `{name}_train_000000.bin`, ...
    Tokenize {
        /// The tokenizer: a `tokenizer.json`, a folder with one or with GPT-2's `vocab.json` +
        /// `merges.txt`, or `bytes`.
        #[arg(long, value_name = "PATH")]
        tokenizer: String,
        /// The folder the shards go into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Shard name prefix.
        #[arg(long, default_value = "data")]
        name: String,
        /// Fraction of the tokens (the first ones) written as validation shards.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Tokens per shard at most (llm.c: 100M).
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
        /// No progress bar.
        #[arg(long)]
        plain: bool,
        /// Text files or folders.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// A TOML run config (see `mp-train train --print-config`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config field: `--set model.n_layer=2 --set precision=fp16`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Optimizer steps (`max_steps`).
    #[arg(long)]
    max_steps: Option<u64>,
    /// A text file, or llm.c token shards (a file, a folder or a glob), to train on
    /// (`data.path`); default: the embedded arithmetic corpus.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// The tokenizer (`tokenizer`): a `tokenizer.json`, a folder with one or with GPT-2's
    /// `vocab.json` + `merges.txt`, or `bytes` (the default).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<String>,
    /// `cpu`, `cuda` or `wgpu` (`backend`).
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,
    /// Run folder (`output_dir`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the contents of a non-empty run folder.
    #[arg(long)]
    overwrite: bool,
    /// Plain progress lines instead of a progress bar.
    #[arg(long)]
    plain: bool,
    /// Accept a software wgpu adapter (llvmpipe/lavapipe, WARP), otherwise refused
    /// (`allow_software_adapter`).
    #[arg(long)]
    allow_software_adapter: bool,
}

#[derive(Args, Debug)]
struct TrainArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// `fp32`, `bf16`, `fp16` or `bf16-sr` (`precision`).
    #[arg(long, value_name = "P")]
    precision: Option<String>,
    /// Checkpoint every N steps (`save_steps`).
    #[arg(long)]
    save_steps: Option<u64>,
    /// Resume from a checkpoint folder, or from the newest intact checkpoint of a run folder.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Start from the weights of a model folder (a checkpoint, or `config.json` +
    /// `model.safetensors` written by HF transformers) with a fresh optimizer: fine-tuning.
    /// The model's shape comes from its `config.json`.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Print the default config, every field documented, and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Also write the report to this file, with the plots copied into a folder beside it
    /// (e.g. `docs/precision-study.md`).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Seeds per arm (the config's seed, then + 1, + 2, ...): the report gives each arm's
    /// mean and range over them and how many reached the target accuracy.
    #[arg(long, default_value_t = 3, value_name = "N")]
    seeds: u64,
    /// Do not train: re-render the report and plots of a finished study folder.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "set", "max_steps", "data", "tokenizer", "backend", "overwrite", "seeds"])]
    from: Option<PathBuf>,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `--set` overrides from the convenience flags, after the explicit ones (flags win).
fn overrides(c: &ConfigArgs, extra: &[(&str, Option<String>)]) -> Vec<String> {
    let mut v = c.set.clone();
    if let Some(n) = c.max_steps {
        v.push(format!("max_steps={n}"));
    }
    if let Some(p) = &c.data {
        v.push(format!("data.path={}", quote(&p.to_string_lossy())));
    }
    if let Some(b) = &c.backend {
        v.push(format!("backend={}", quote(b)));
    }
    if let Some(t) = &c.tokenizer {
        v.push(format!("tokenizer={}", quote(t)));
    }
    if c.allow_software_adapter {
        v.push("allow_software_adapter=true".into());
    }
    for (k, val) in extra {
        if let Some(val) = val {
            v.push(format!("{k}={val}"));
        }
    }
    v
}

fn default_out(cfg: &TrainConfig, prefix: &str) -> PathBuf {
    cfg.output_dir.clone().unwrap_or_else(|| {
        Path::new("runs").join(format!("{prefix}-{}", mp_train::fsutil::utc_stamp()))
    })
}

fn progress(plain: bool) -> Progress {
    if plain {
        Progress::Plain
    } else {
        Progress::Auto
    }
}

fn cmd_train(a: TrainArgs, world: World) -> Result<()> {
    if a.print_config {
        print!("{}", documented_default_toml());
        return Ok(());
    }
    let sets = overrides(
        &a.common,
        &[
            ("precision", a.precision.as_deref().map(quote)),
            ("save_steps", a.save_steps.map(|n| n.to_string())),
        ],
    );
    let (cfg, resume_dir) = match &a.resume {
        Some(path) => {
            let (dir, _, warnings) = checkpoint::resolve(path)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            let cfg = match &a.common.config {
                Some(file) => TrainConfig::load(Some(file), &sets)?,
                None => TrainConfig::load(Some(&dir.join(checkpoint::RUN_CONFIG_FILE)), &sets)?,
            };
            (cfg, Some(dir))
        }
        None => (TrainConfig::load(a.common.config.as_deref(), &sets)?, None),
    };
    let out = match (&a.common.out, &resume_dir) {
        (Some(o), _) => o.clone(),
        (None, Some(dir)) => dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        // the ranks of a data-parallel run share rank 0's folder name
        (None, None) => PathBuf::from(mp_train::dist::broadcast_string(
            &world,
            &default_out(&cfg, "run").to_string_lossy(),
        )?),
    };
    let mut cfg = cfg;
    cfg.output_dir = Some(out.clone());
    let opts = RunOptions {
        overwrite: a.common.overwrite,
        resume: resume_dir,
        init_from: a.init_from.clone(),
        progress: progress(a.common.plain),
        world: world.clone(),
        ..RunOptions::new(&out)
    };
    let s = run::train(cfg, opts)?;
    if !world.is_lead() {
        return Ok(());
    }
    println!("\n== summary ({})", s.out_dir.display());
    println!(
        "steps            {} (this process: {} -> {})",
        s.steps, s.resumed_from, s.steps
    );
    println!(
        "precision        {} (loss scaling {}, final scale {})",
        s.precision, s.loss_scaling, s.final_scale
    );
    println!("device           {}", s.device);
    if s.world_size > 1 {
        println!(
            "data-parallel    {} ranks, {}, global batch {} sequences, {} sent per rank and step",
            s.world_size,
            if s.zero_stage == 1 { "ZeRO-1" } else { "DDP" },
            s.global_batch,
            mp_train::memory::human(s.comm_bytes_per_step)
        );
    }
    println!("train loss       {:.4}", s.final_train_loss);
    println!("val loss         {:.4}", s.final_val_loss);
    if let Some(acc) = s.final_accuracy {
        println!(
            "accuracy         {:.1}% exact match on held-out problems",
            100.0 * acc
        );
    }
    println!(
        "throughput       {:.0} tokens/s ({:.1} s of steps, {:.1} s wall)",
        s.tokens_per_s, s.train_seconds, s.wall_seconds
    );
    println!("skipped steps    {}", s.skipped_steps);
    println!(
        "memory           {} total ({} master, {} model copy, {} grads, {} optimizer, {} activations)",
        mp_train::memory::human(s.memory.total()),
        mp_train::memory::human(s.memory.master),
        mp_train::memory::human(s.memory.model_copy),
        mp_train::memory::human(s.memory.grads),
        mp_train::memory::human(s.memory.optimizer),
        mp_train::memory::human(s.memory.activations)
    );
    if let Some(c) = &s.last_checkpoint {
        println!("checkpoint       {}", c.display());
    }
    if !mp_train::plot::font_available() {
        eprintln!(
            "note: no TrueType font found (set MP_TRAIN_FONT=/path/font.ttf): plots were drawn without text"
        );
    }
    Ok(())
}

fn cmd_compare(a: CompareArgs) -> Result<()> {
    let (cfg, out, results) = match &a.from {
        // a finished study: re-render its report and plots, train nothing
        Some(dir) => {
            let (cfg, results) = compare::rerender(dir)?;
            (cfg, dir.clone(), results)
        }
        None => {
            let sets = overrides(&a.common, &[]);
            let cfg = TrainConfig::load(a.common.config.as_deref(), &sets)?;
            let out = a.common.out.clone().unwrap_or_else(|| {
                default_out(
                    &TrainConfig {
                        output_dir: None,
                        ..cfg.clone()
                    },
                    "compare",
                )
            });
            let progress = progress(a.common.plain);
            let (_, results) = compare::compare(&cfg, &out, a.common.overwrite, progress, a.seeds)?;
            (cfg, out, results)
        }
    };
    println!("\nreport: {}", out.join("report.md").display());
    if let Some(dest) = &a.report {
        let stem = dest
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "precision-study".into());
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let plots = parent.join(&stem);
        std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
        for (f, _) in compare::PLOTS.iter().chain(&compare::SEED_PLOTS) {
            let src = out.join(f);
            if src.exists() {
                copy_plot(&src, &plots.join(f))?;
            }
        }
        for r in &results {
            for file in ["grad_exponents.png", "precision_health.png"] {
                let src = r.dir.join(file);
                if src.exists() {
                    let d = plots.join(r.variant.name);
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    copy_plot(&src, &d.join(file))?;
                }
            }
        }
        let text = compare::report_markdown(&cfg, &results, &format!("{stem}/"));
        mp_train::fsutil::write_atomic(dest, text.as_bytes())?;
        println!(
            "report copied to {} (plots in {})",
            dest.display(),
            plots.display()
        );
    }
    Ok(())
}

fn run_cli(cli: Cli, world: World) -> Result<()> {
    if world.size() > 1 && !matches!(cli.command, Command::Train(_)) {
        anyhow::bail!(
            "started as {} ranks by an MPI launcher: only `train` runs data-parallel",
            world.size()
        );
    }
    match cli.command {
        Command::Train(a) => cmd_train(a, world),
        Command::Compare(a) => cmd_compare(a),
        Command::Eval { checkpoint, set } => {
            let e = tools::evaluate(&checkpoint, &set)?;
            println!("{}", serde_json::to_string(&e)?);
            Ok(())
        }
        Command::Sample {
            checkpoint,
            prompt,
            tokens,
            temperature,
            seed,
        } => {
            let out = tools::sample(
                &checkpoint,
                tools::SampleOptions {
                    prompt: prompt.clone(),
                    tokens,
                    temperature,
                    seed,
                },
            )?;
            println!("{prompt}{}", out.text);
            Ok(())
        }
        Command::Inspect { checkpoint } => {
            print!("{}", tools::inspect(&checkpoint)?);
            Ok(())
        }
        Command::Tokenize {
            tokenizer,
            out,
            name,
            val_fraction,
            shard_tokens,
            plain,
            inputs,
        } => {
            let s = tools::tokenize(&tools::TokenizeOptions {
                tokenizer,
                out,
                inputs,
                name,
                val_fraction,
                shard_tokens,
                progress: !plain,
            })?;
            println!(
                "{} documents, {} tokens: {} validation and {} training shard(s)",
                s.documents,
                s.tokens,
                s.val_shards.len(),
                s.train_shards.len()
            );
            for p in s.val_shards.iter().chain(&s.train_shards) {
                println!("  {}", p.display());
            }
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let world = match World::from_environment() {
        Ok(w) => w,
        Err(msg) => {
            eprintln!("error: {msg}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let lead = world.is_lead();
    let rank = world.rank();
    let result = run_cli(cli, world);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e)
            if !lead
                && matches!(
                    e.downcast_ref::<TrainError>(),
                    Some(TrainError::RankFailed { .. })
                ) =>
        {
            // the ranks agreed on a failure: rank 0 reports it
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            // The chain of causes, leaving out a cause the message before it already quotes.
            let mut msg = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !msg.contains(&cause) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&cause);
                }
            }
            if lead {
                eprintln!("error: {msg}");
            } else {
                eprintln!("error: rank {rank}: {msg}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Copies a plot of the study into the report's plot folder; nothing to do when that folder
/// is the study folder itself (copying a file onto itself would empty it).
fn copy_plot(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let same = match (src.canonicalize(), dst.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}
