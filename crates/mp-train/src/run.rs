//! A whole run: the run folder, the loop with logging, evaluation and checkpoints, the plots
//! and the summary.
//!
//! Run folder:
//! ```text
//! <out>/config.toml        the resolved run config
//! <out>/metrics.jsonl      one record per logged step (step, loss, lr, scale, grad_norm, ...)
//! <out>/eval.jsonl         one record per evaluation (val_loss, accuracy)
//! <out>/summary.json       the end-of-run summary
//! <out>/loss.png, loss_scale.png, grad_exponents.png
//! <out>/checkpoint-{step}/ the last `save_total_limit` checkpoints
//! ```

use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::device::{self, BackendJob};
use crate::error::{Result, TrainError};
use crate::fsutil;
use crate::memory::MemoryBreakdown;
use crate::metrics::{self, EvalRecord, JsonlWriter, StepRecord};
use crate::plot::{self, ExponentHistogram, Marker, Series};
use crate::tensorboard::EventWriter;
use crate::tokenizer::Tokenizer;
use crate::train::{self, Trainer};
use mp_dtype::{DType, RangeStats};
use mp_kernels::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stdout.
    Plain,
    /// Nothing (tests, the precision study's inner runs print their own).
    Quiet,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run folder.
    pub out_dir: PathBuf,
    /// Replace the contents of a non-empty run folder (only one that looks like a run folder).
    pub overwrite: bool,
    /// A checkpoint folder (or a run folder: its newest intact checkpoint) to resume from.
    pub resume: Option<PathBuf>,
    /// A model folder (`config.json` + `model.safetensors`: one of our checkpoints or one
    /// written by HF transformers) whose weights start the run (fine-tuning): the model's
    /// architecture and shape come from its `config.json`; the optimizer, scaler and counters
    /// start fresh.
    pub init_from: Option<PathBuf>,
    /// Write checkpoints.
    pub checkpoints: bool,
    /// Draw the plots at the end.
    pub plots: bool,
    /// Progress display.
    pub progress: Progress,
    /// The world this process is a rank of (one process by default; `mpirun` makes more, see
    /// [`crate::dist`]). Rank 0 alone writes the run folder.
    pub world: mp_dist::World,
}

impl RunOptions {
    /// Defaults for `out_dir`: checkpoints, plots, automatic progress.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            out_dir: out_dir.into(),
            overwrite: false,
            resume: None,
            init_from: None,
            checkpoints: true,
            plots: true,
            progress: Progress::Auto,
            world: mp_dist::World::single(),
        }
    }
}

/// The end-of-run summary (`summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run folder.
    pub out_dir: PathBuf,
    /// Precision.
    pub precision: String,
    /// Loss-scaling mode in effect.
    pub loss_scaling: String,
    /// The device.
    pub device: String,
    /// Parameters of the model.
    pub num_params: u64,
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// The step this process started from (0, or the resumed checkpoint's).
    pub resumed_from: u64,
    /// Training tokens seen in total.
    pub tokens: u64,
    /// Seconds this process spent in training steps.
    pub train_seconds: f64,
    /// Seconds this process ran (steps, evaluation, checkpoints, plots).
    pub wall_seconds: f64,
    /// Training tokens per second of step time in this process.
    pub tokens_per_s: f64,
    /// Mean training loss over the last logging window.
    pub final_train_loss: f32,
    /// Validation loss of the final evaluation.
    pub final_val_loss: f32,
    /// Exact-match accuracy of the final evaluation (arithmetic corpus only).
    pub final_accuracy: Option<f64>,
    /// Steps skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// The loss scale at the end.
    pub final_scale: f32,
    /// Mean over logged steps of the fraction of non-zero gradients that underflow in FP16
    /// at scale 1.
    pub fp16_underflow_at_1: f64,
    /// The same at the run's loss scale.
    pub fp16_underflow_at_scale: f64,
    /// Mean fraction of exactly-zero gradient values.
    pub zero_grad_fraction: f64,
    /// Device memory by category.
    pub memory: MemoryBreakdown,
    /// The last checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
    /// Ranks of the run (1: one process).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Sequences per optimizer step: `batch_size x grad_accum_steps x world_size`.
    #[serde(default)]
    pub global_batch: usize,
    /// The ZeRO stage (0: DDP; see [`crate::dist`]).
    #[serde(default)]
    pub zero_stage: u8,
    /// Bytes each rank sent in collectives per step, as a ring algorithm sends them
    /// ([`mp_dist::ring_bytes`]; 0 for one process).
    #[serde(default)]
    pub comm_bytes_per_step: u64,
    /// DDP: gradient buckets all-reduced per step (each started as soon as the backward pass
    /// has finished its gradients); 0 otherwise.
    #[serde(default)]
    pub buckets_per_step: f64,
    /// DDP: the fraction of the buckets whose all-reduce had finished before the backward
    /// pass ended (communication hidden behind computation; depends on timing).
    #[serde(default)]
    pub buckets_overlapped: f64,
}

fn one() -> usize {
    1
}

/// Files a run folder may hold; `--overwrite` only clears folders made of these.
const RUN_FILES: &[&str] = &[
    "config.toml",
    "metrics.jsonl",
    "eval.jsonl",
    "summary.json",
    "loss.png",
    "loss_scale.png",
    "grad_exponents.png",
    HEALTH_FILE,
    "precision_health.png",
];

/// What an interrupted write leaves in a run folder: `.name.tmp-<pid>` (an atomic file write or
/// a checkpoint folder being written) and `.checkpoint-N.old-<pid>` (a replaced checkpoint).
fn is_stale_temp(name: &str) -> bool {
    name.starts_with('.')
        && [".tmp-", ".old-"].iter().any(|m| {
            name.rsplit_once(m)
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The first entry of `dir` that a run does not write (`--overwrite` clears only folders
/// without one), or `None`.
fn foreign_entry(dir: &Path) -> Result<Option<String>> {
    let entries = std::fs::read_dir(dir).map_err(TrainError::io("listing", dir))?;
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let known = RUN_FILES.contains(&name.as_str())
            || crate::tensorboard::is_event_file(&name)
            || name == fsutil::LOCK_FILE
            || is_stale_temp(&name)
            || checkpoint::step_of(&p).is_some()
            || (p.is_dir() && p.join("summary.json").exists());
        if !known {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Removes every entry of `dir` whose name `pick` selects (a folder with its contents),
/// naming each removal with `why` when given.
fn remove_entries(dir: &Path, pick: impl Fn(&str) -> bool, why: Option<&str>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(TrainError::io("listing", dir))? {
        let e = e.map_err(TrainError::io("listing", dir))?;
        if !pick(&e.file_name().to_string_lossy()) {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(TrainError::io("removing", &p))?;
        if let Some(why) = why {
            eprintln!("removed {} ({why})", p.display());
        }
    }
    Ok(())
}

/// Prepares the run folder and locks it for the caller's life ([`fsutil::lock_dir`]): creates
/// it, or refuses a non-empty one unless resuming into it or `overwrite` (which clears only a
/// folder that looks like a run folder, and only once it holds the lock, so it never clears a
/// folder another run is writing).
pub fn prepare_out_dir(opts: &RunOptions, resuming_here: bool) -> Result<fsutil::DirLock> {
    let dir = &opts.out_dir;
    let clear = !resuming_here && !fsutil::is_empty_or_missing(dir)?;
    if clear {
        if !opts.overwrite {
            return Err(TrainError::OutDirNotEmpty { path: dir.clone() });
        }
        if let Some(name) = foreign_entry(dir)? {
            return Err(TrainError::Io {
                op: "refusing to --overwrite (it holds files that are not from a run)",
                path: dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{name} is not a file a run writes"),
                ),
            });
        }
    }
    let lock = fsutil::lock_dir(dir)?;
    // with the lock held no other writer can be using what an interrupted write left
    remove_entries(dir, is_stale_temp, Some("left by an interrupted write"))?;
    if clear {
        remove_entries(dir, |name| name != fsutil::LOCK_FILE, None)?;
    }
    Ok(lock)
}

/// Trains `cfg` (resuming if `opts.resume` says so) and returns the summary.
pub fn train(mut cfg: TrainConfig, opts: RunOptions) -> Result<RunSummary> {
    if let Some(dir) = &opts.init_from {
        if opts.resume.is_some() {
            return Err(TrainError::invalid(
                "--init-from",
                dir.display(),
                "starts a new run from weights; --resume continues one: give one of them",
            ));
        }
        cfg.model = checkpoint::hf_model(dir)?;
        eprintln!(
            "initialising from {} ({} model of {}; fresh optimizer)",
            dir.display(),
            cfg.model.arch.name(),
            dir.join(checkpoint::HF_CONFIG_FILE).display()
        );
    }
    let tokenizer = run_tokenizer(&mut cfg, opts.init_from.as_deref())?;
    cfg.validate()?;
    if !cfg.poison_grad_steps.trim().is_empty() {
        eprintln!(
            "fault injection: the gradients are poisoned (+inf) at steps {} (poison_grad_steps)",
            cfg.poison_grad_steps.trim()
        );
    }
    let resume = match &opts.resume {
        Some(path) => {
            let (dir, state, warnings) = checkpoint::resolve(path)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            checkpoint::check_model(&dir, &cfg.model)?;
            if state.global_step >= cfg.max_steps {
                return Err(TrainError::invalid(
                    "max_steps",
                    cfg.max_steps,
                    format!(
                        "{} is at step {}: nothing is left to train (raise max_steps above it)",
                        dir.display(),
                        state.global_step
                    ),
                ));
            }
            Some((dir, state))
        }
        None => None,
    };
    let resuming_here = resume.as_ref().is_some_and(|(dir, _)| {
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        same_path(&parent, &opts.out_dir)
    });
    if cfg.backend == crate::config::BackendKind::Cpu
        && let Some(available) = crate::memory::available_host_bytes()
    {
        // before anything is allocated: a config that cannot fit is refused, not aborted
        crate::memory::check_fits(&cfg, available)?;
    }
    let data = Dataset::for_run(&cfg, tokenizer)?;
    // rank 0 alone looks at and writes the run folder
    if opts.world.is_lead()
        && !resuming_here
        && !opts.overwrite
        && !fsutil::is_empty_or_missing(&opts.out_dir)?
    {
        // Refuse before opening the device, so the message does not wait for it.
        return Err(TrainError::OutDirNotEmpty {
            path: opts.out_dir.clone(),
        });
    }
    device::dispatch(
        &cfg,
        TrainJob {
            cfg: cfg.clone(),
            opts,
            data,
            resume,
        },
    )
}

/// The run's tokenizer: the config's, or, fine-tuning (`--init-from DIR`) with the byte
/// default, the folder's own (`tokenizer.json` or `vocab.json` + `merges.txt`). A vocabulary
/// left at the byte default follows the tokenizer; one set smaller than it is an error.
fn run_tokenizer(cfg: &mut TrainConfig, init_from: Option<&Path>) -> Result<Tokenizer> {
    let own = match init_from {
        Some(dir) if cfg.tokenizer == crate::tokenizer::BYTES => {
            Tokenizer::in_folder(dir)?.map(|t| (t, dir))
        }
        _ => None,
    };
    let tokenizer = match own {
        Some((t, dir)) => {
            cfg.tokenizer = dir.display().to_string();
            eprintln!("tokenizer: {}'s own", dir.display());
            t
        }
        None => Tokenizer::from_spec(&cfg.tokenizer)?,
    };
    let need = tokenizer.vocab_size();
    let default = crate::config::ModelConfig::default().vocab_size;
    if cfg.model.vocab_size < need {
        if cfg.model.vocab_size != default || init_from.is_some() {
            return Err(TrainError::invalid(
                "model.vocab_size",
                cfg.model.vocab_size,
                format!(
                    "smaller than the vocabulary of the tokenizer {} ({need})",
                    tokenizer.describe()
                ),
            ));
        }
        cfg.model.vocab_size = need;
    }
    Ok(tokenizer)
}

/// The run folder's precision-health records (`precision_health = true`).
pub const HEALTH_FILE: &str = "precision_health.jsonl";

/// A logged step's TensorBoard scalars (HF `Trainer`'s tag names where it has them).
fn tensorboard_scalars(r: &StepRecord) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        ("train/loss", f64::from(r.loss)),
        ("train/learning_rate", r.lr),
        ("train/loss_scale", f64::from(r.scale)),
        ("train/tokens_per_s", r.tokens_per_s),
        ("train/skipped_steps", r.skipped_total as f64),
    ];
    if let Some(g) = r.grad_norm {
        v.push(("train/grad_norm", g));
    }
    v
}

/// An evaluation's TensorBoard scalars.
fn eval_scalars(e: &EvalRecord) -> Vec<(&'static str, f64)> {
    let mut v = vec![("eval/loss", f64::from(e.val_loss))];
    if let Some(a) = e.accuracy {
        v.push(("eval/accuracy", a));
    }
    v
}

/// What may help a diverged run of `cfg`'s precision.
fn divergence_hint(cfg: &TrainConfig) -> String {
    use crate::config::{Precision, ScalingMode};
    match (cfg.precision, cfg.scaling_mode()) {
        (Precision::Fp16, ScalingMode::None) => {
            "FP16 overflowed without loss scaling: set loss_scaling.mode = \"dynamic\"".into()
        }
        (Precision::Fp16, _) => {
            "FP16 overflowed at every scale tried: lower the learning rate, clip harder \
             (max_grad_norm), or train in bf16"
                .into()
        }
        _ => format!(
            "{} has FP32's exponent range, so no loss scale can fix it: lower the learning rate \
             or clip harder (max_grad_norm)",
            cfg.precision
        ),
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

struct TrainJob {
    cfg: TrainConfig,
    opts: RunOptions,
    data: Dataset,
    resume: Option<(PathBuf, TrainerState)>,
}

impl BackendJob for TrainJob {
    type Output = RunSummary;
    fn run<B: Backend>(self, be: B) -> Result<RunSummary> {
        // The backend is open: only now is the run folder created or changed, so a run that
        // cannot start (no device, bad checkpoint) leaves nothing behind.
        let device = be.name();
        if let Some(free) = be.free_memory() {
            // a device that can say how much it has: a config that cannot fit is refused
            // before the model is allocated (the CPU was checked before the backend opened)
            crate::memory::check_fits(&self.cfg, free)?;
        }
        let world = self.opts.world.clone();
        let mut tr = Trainer::with_world(be, self.cfg, self.data, world)?;
        let resuming_here = self.resume.as_ref().is_some_and(|(dir, _)| {
            let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            same_path(&parent, &self.opts.out_dir)
        });
        if let Some((dir, state)) = &self.resume {
            tr.restore(dir, state)?;
        }
        if let Some(dir) = &self.opts.init_from {
            tr.load_weights(dir)?;
        }
        // rank 0 prepares the folder; every rank learns whether it could
        let prepared = if tr.dp.is_lead() {
            prepare_run_dir(&self.opts, self.resume.as_ref(), &tr, resuming_here).map(Some)
        } else {
            Ok(None)
        };
        // held until the run ends: a second writer into this folder is refused
        let (_lock, _) = tr.dp.agree(prepared, false)?;
        let device = match (tr.dp.size(), tr.dp.active()) {
            (1, false) => device,
            (n, _) => format!(
                "{device}, {n} rank{} ({}, {})",
                if n == 1 { "" } else { "s" },
                tr.dp.engine(),
                if tr.dp.zero_stage() == 1 {
                    "ZeRO-1"
                } else {
                    "DDP"
                }
            ),
        };
        run_loop(&mut tr, &self.opts, device)
    }
}

/// The run folder made ready (rank 0): locked, cleared or truncated to the resumed step, the
/// config written. The lock is held until the value is dropped.
fn prepare_run_dir<B: Backend>(
    opts: &RunOptions,
    resume: Option<&(PathBuf, TrainerState)>,
    tr: &Trainer<B>,
    resuming_here: bool,
) -> Result<fsutil::DirLock> {
    let lock = prepare_out_dir(opts, resuming_here)?;
    if let Some((_, state)) = resume
        && resuming_here
    {
        let out = &opts.out_dir;
        metrics::truncate_after(&out.join("metrics.jsonl"), state.global_step)?;
        metrics::truncate_after(&out.join("eval.jsonl"), state.global_step)?;
        metrics::truncate_after(&out.join(HEALTH_FILE), state.global_step)?;
    }
    let config = tr.cfg.to_toml();
    fsutil::write_atomic(&opts.out_dir.join("config.toml"), config.as_bytes())?;
    Ok(lock)
}

/// SIGINT, SIGTERM and SIGHUP while a run is in progress: the first asks the loop to stop
/// after the current step (which it checkpoints), a second one exits at once (status 130).
/// The handlers are removed when the value is dropped.
struct StopSignal {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl StopSignal {
    fn install() -> Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ids = Vec::new();
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let err = |e| TrainError::io("installing a signal handler", Path::new("-"))(e);
            // order matters: the exit action sees the flag before this signal sets it
            ids.push(
                signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
                    .map_err(err)?,
            );
            ids.push(signal_hook::flag::register(sig, flag.clone()).map_err(err)?);
        }
        Ok(StopSignal { flag, ids })
    }

    fn requested(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Shows progress as a bar (terminal) or plain lines.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
}

impl Reporter {
    fn new(mode: Progress, start: u64, max: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        match mode {
            Progress::Auto if tty => {
                let bar = indicatif::ProgressBar::new(max);
                let style = indicatif::ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_position(start);
                Reporter {
                    bar: Some(bar),
                    plain: false,
                }
            }
            Progress::Auto | Progress::Plain => Reporter {
                bar: None,
                plain: true,
            },
            Progress::Quiet => Reporter {
                bar: None,
                plain: false,
            },
        }
    }
    fn step(&self, rec: &StepRecord, max: u64, eta_s: f64) {
        let msg = format!(
            "loss {:.4} | {:.0} tok/s | scale {} | lr {:.2e}{}",
            rec.loss,
            rec.tokens_per_s,
            rec.scale,
            rec.lr,
            if rec.skipped { " | skipped" } else { "" }
        );
        if let Some(bar) = &self.bar {
            bar.set_position(rec.step);
            bar.set_message(msg);
        } else if self.plain {
            println!("step {:>6}/{max} | {msg} | eta {:.0}s", rec.step, eta_s);
        }
    }
    fn line(&self, s: &str) {
        if let Some(bar) = &self.bar {
            bar.println(s);
        } else if self.plain {
            println!("{s}");
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn eval_line(e: &EvalRecord) -> String {
    match e.accuracy {
        Some(a) => format!(
            "eval step {}: val_loss {:.4}, exact-match accuracy {:.1}% ({} problems)",
            e.step,
            e.val_loss,
            100.0 * a,
            e.problems
        ),
        None => format!("eval step {}: val_loss {:.4}", e.step, e.val_loss),
    }
}

/// The files rank 0 writes while a run goes on.
struct RunFiles {
    log: JsonlWriter,
    evals: JsonlWriter,
    tb: EventWriter,
    health: Option<JsonlWriter>,
}

impl RunFiles {
    fn open(out: &Path, start_step: u64, health: bool) -> Result<Self> {
        Ok(RunFiles {
            log: JsonlWriter::append(&out.join("metrics.jsonl"))?,
            evals: JsonlWriter::append(&out.join("eval.jsonl"))?,
            tb: EventWriter::create(out, start_step)?,
            health: if health {
                Some(JsonlWriter::append(&out.join(HEALTH_FILE))?)
            } else {
                None
            },
        })
    }

    fn eval(&mut self, e: &EvalRecord) -> Result<()> {
        self.evals.write(e)?;
        self.tb.scalars(e.step, &eval_scalars(e))
    }
}

/// The loop: steps, logging, evaluation, checkpoints; then plots and the summary. In a
/// data-parallel run every rank runs it; rank 0 alone logs, evaluates and writes files, and
/// the ranks agree after each phase, so that a failure anywhere ends every rank.
pub fn run_loop<B: Backend>(
    tr: &mut Trainer<B>,
    opts: &RunOptions,
    device: String,
) -> Result<RunSummary> {
    let cfg = tr.cfg.clone();
    let out = &opts.out_dir;
    let lead = tr.dp.is_lead();
    let world = tr.dp.size();
    let started = Instant::now();
    let start_step = tr.step;
    let tokens_per_step = cfg.tokens_per_step() * world;
    let opened = if lead {
        RunFiles::open(out, start_step, cfg.precision_health).map(Some)
    } else {
        Ok(None)
    };
    let (mut files, _) = tr.dp.agree(opened, false)?;
    let rep = Reporter::new(
        if lead { opts.progress } else { Progress::Quiet },
        start_step,
        cfg.max_steps,
    );
    let global_batch = cfg.batch_size * cfg.grad_accum_steps * world;
    rep.line(&format!(
        "training {} params, {} on {device}, {} steps of {} tokens{}; data: {}; out: {}",
        crate::memory::num_params(&cfg),
        cfg.precision,
        cfg.max_steps,
        tokens_per_step,
        if world > 1 {
            format!(
                " (global batch {global_batch} = {} x {} x {world} ranks)",
                cfg.batch_size, cfg.grad_accum_steps
            )
        } else {
            String::new()
        },
        tr.data.describe(),
        out.display()
    ));
    let (mut train_s, mut window_s, mut window_tokens) = (0.0f64, 0.0f64, 0u64);
    let mut window_losses: Vec<f32> = Vec::new();
    let mut last_window_loss = f32::NAN;
    let mut hist = vec![0u64; RangeStats::HISTOGRAM_BINS];
    let (mut probes, mut under_1, mut under_s, mut zeros) = (0u32, 0.0, 0.0, 0.0);
    let mut last_eval: Option<EvalRecord> = None;
    let mut last_ckpt = None;
    let mut consecutive_skips = 0u64;
    let sent_at_start = tr.dp.bytes_sent();
    let buckets_at_start = tr.dp.buckets();
    let stop = StopSignal::install()?;
    while tr.step < cfg.max_steps {
        let next = tr.step + 1;
        let logs_next = next.is_multiple_of(cfg.logging_steps) || next == cfg.max_steps;
        // the FP32 master weights before a logged step, for the update 16-bit weights would
        // lose (a run without master weights, pure bf16-sr, has no such what-if)
        let health_on = files.as_ref().is_some_and(|f| f.health.is_some());
        let before = match health_on {
            true if logs_next && cfg.precision.has_master() => Some(tr.weights_snapshot()?),
            _ => None,
        };
        // and the activations the step saves, at the same steps
        tr.activation_health = (health_on && logs_next).then(Vec::new);
        let t0 = Instant::now();
        // every rank stops at the same step when any of them was asked to
        let (s, stop_now) = tr.step_agreed(stop.requested())?;
        let dt = t0.elapsed().as_secs_f64();
        train_s += dt;
        window_s += dt;
        window_tokens += tokens_per_step as u64;
        window_losses.push(s.loss);
        consecutive_skips = if s.skipped { consecutive_skips + 1 } else { 0 };
        let step = tr.step;
        let last = step == cfg.max_steps;
        let logged = step.is_multiple_of(cfg.logging_steps) || last;
        // the weights are checked where the loss is logged (one pass over them); every rank
        // holds the same weights and losses, so every rank decides alike
        let weights_bad = logged && !s.skipped && tr.weights_non_finite()?;
        let what = if weights_bad {
            Some("the weights are no longer finite".to_string())
        } else if !s.loss.is_finite() && !s.skipped {
            Some(format!("loss is {}", s.loss))
        } else if consecutive_skips >= 100 {
            Some("the last 100 steps all had non-finite gradients".to_string())
        } else {
            None
        };
        if let Some(what) = what {
            rep.finish();
            return Err(TrainError::Diverged {
                step,
                what,
                precision: format!("{}, loss scaling {:?}", cfg.precision, cfg.scaling_mode()),
                hint: divergence_hint(&cfg),
            });
        }
        // one download of the gradients serves rank 0's probe and health record (under
        // ZeRO-1 a gather that every rank joins)
        let grads = if logged && (lead || tr.dp.sharded()) {
            Some(tr.grads_host()?)
        } else {
            None
        };
        let mut activations = tr.activation_health.take();
        let evaluating = last || (cfg.eval_steps > 0 && step.is_multiple_of(cfg.eval_steps));
        let mut lead_work = || -> Result<()> {
            let Some(f) = files.as_mut() else {
                return Ok(());
            };
            if let Some(grads) = &grads {
                let probe = train::probe_grads(grads, s.scale);
                probes += 1;
                under_1 += probe.underflow_at_1;
                under_s += probe.underflow_at_scale;
                zeros += probe.zero_fraction;
                hist.iter_mut()
                    .zip(&probe.histogram)
                    .for_each(|(a, b)| *a += b);
                let rec = StepRecord {
                    step,
                    loss: s.loss,
                    lr: s.lr,
                    scale: s.scale,
                    grad_norm: s.grad_norm,
                    skipped: s.skipped,
                    skipped_total: tr.skipped,
                    tokens_per_s: window_tokens as f64 / window_s.max(1e-9),
                    tokens: tr.tokens,
                    elapsed_s: started.elapsed().as_secs_f64(),
                    fp16_underflow_at_1: Some(probe.underflow_at_1),
                    fp16_underflow_at_scale: Some(probe.underflow_at_scale),
                };
                f.log.write(&rec)?;
                f.tb.scalars(step, &tensorboard_scalars(&rec))?;
                if let Some(h) = f.health.as_mut() {
                    let update = before.as_ref().filter(|_| !s.skipped);
                    let mut record = tr.health(grads, s.scale, update)?;
                    record.activations = activations.take().unwrap_or_default();
                    h.write(&record)?;
                }
                let eta = (cfg.max_steps - step) as f64 * train_s / (step - start_step) as f64;
                rep.step(&rec, cfg.max_steps, eta);
            }
            if evaluating {
                let e = tr.evaluate()?;
                f.eval(&e)?;
                rep.line(&eval_line(&e));
                last_eval = Some(e);
            }
            Ok(())
        };
        let done = lead_work();
        tr.dp.agree(done, false)?;
        if logged {
            last_window_loss = window_losses.iter().sum::<f32>() / window_losses.len() as f32;
            (window_s, window_tokens) = (0.0, 0);
            window_losses.clear();
        }
        if opts.checkpoints && (last || (cfg.save_steps > 0 && step.is_multiple_of(cfg.save_steps)))
        {
            let path = tr.save_checkpoint(out, last_eval.as_ref())?;
            rep.line(&format!("saved {}", path.display()));
            last_ckpt = Some(path);
        }
        if stop_now {
            // the step is finished: keep it, then stop (a second signal exits at once)
            let saved = match &last_ckpt {
                Some(p) if checkpoint::step_of(p) == Some(step) => Some(p.clone()),
                _ if opts.checkpoints => Some(tr.save_checkpoint(out, last_eval.as_ref())?),
                _ => None,
            };
            rep.finish();
            return Err(TrainError::Interrupted {
                step,
                checkpoint: saved,
            });
        }
    }
    rep.finish();
    let steps_run = (tr.step - start_step).max(1);
    let comm_bytes_per_step = (tr.dp.bytes_sent() - sent_at_start) / steps_run;
    let (buckets, overlapped) = {
        let (b, o) = (tr.dp.buckets(), buckets_at_start);
        ((b.0 - o.0) as f64, (b.1 - o.1) as f64)
    };
    let finished = match files.as_mut() {
        Some(f) => finish_run(tr, f, out, &cfg, opts, &hist, last_eval).map(Some),
        None => Ok(None),
    };
    let (final_eval, _) = tr.dp.agree(finished, false)?;
    let n = f64::from(probes.max(1));
    let summary = RunSummary {
        out_dir: out.clone(),
        precision: cfg.precision.name().into(),
        loss_scaling: format!("{:?}", cfg.scaling_mode()).to_lowercase(),
        device,
        num_params: crate::memory::num_params(&cfg),
        steps: tr.step,
        resumed_from: start_step,
        tokens: tr.tokens,
        train_seconds: train_s,
        wall_seconds: started.elapsed().as_secs_f64(),
        tokens_per_s: ((tr.step - start_step) as usize * tokens_per_step) as f64
            / train_s.max(1e-9),
        final_train_loss: last_window_loss,
        final_val_loss: final_eval.as_ref().map_or(f32::NAN, |e| e.val_loss),
        final_accuracy: final_eval.as_ref().and_then(|e| e.accuracy),
        skipped_steps: tr.skipped,
        final_scale: tr.scaler.get_scale(),
        fp16_underflow_at_1: under_1 / n,
        fp16_underflow_at_scale: under_s / n,
        zero_grad_fraction: zeros / n,
        memory: tr.memory(),
        last_checkpoint: last_ckpt,
        world_size: world,
        global_batch,
        zero_stage: tr.dp.zero_stage(),
        comm_bytes_per_step,
        buckets_per_step: buckets / steps_run as f64,
        buckets_overlapped: overlapped / buckets.max(1.0),
    };
    if lead {
        let json = serde_json::to_string_pretty(&summary).map_err(|source| TrainError::Json {
            path: out.join("summary.json"),
            source,
        })?;
        fsutil::write_atomic(&out.join("summary.json"), json.as_bytes())?;
    }
    Ok(summary)
}

/// Rank 0 at the end of a run: the final evaluation (unless the last step had one), the
/// plots and the health heat map.
fn finish_run<B: Backend>(
    tr: &Trainer<B>,
    files: &mut RunFiles,
    out: &Path,
    cfg: &TrainConfig,
    opts: &RunOptions,
    hist: &[u64],
    last_eval: Option<EvalRecord>,
) -> Result<EvalRecord> {
    let final_eval = match last_eval {
        Some(e) if e.step == tr.step => e,
        _ => {
            let e = tr.evaluate()?;
            files.eval(&e)?;
            e
        }
    };
    if opts.plots {
        draw_run_plots(out, cfg, hist, tr.scaler.get_scale())?;
    }
    if cfg.precision_health {
        let records: Vec<crate::health::HealthRecord> =
            metrics::read_jsonl(&out.join(HEALTH_FILE))?;
        crate::health::heat_map(
            &out.join("precision_health.png"),
            &records,
            crate::health::DEFAULT_STATISTIC,
            &format!(
                "FP16 underflow of the gradients at the loss scale, {}",
                cfg.precision
            ),
        )?;
    }
    Ok(final_eval)
}

/// The exponent range of a format as chart markers.
pub fn format_markers(dtype: DType) -> Vec<Marker> {
    vec![
        Marker {
            name: format!("{dtype} smallest subnormal"),
            exponent: f64::from(dtype.min_subnormal()).log2(),
        },
        Marker {
            name: format!("{dtype} smallest normal"),
            exponent: f64::from(dtype.min_normal()).log2(),
        },
        Marker {
            name: format!("{dtype} max"),
            exponent: f64::from(dtype.max()).log2(),
        },
    ]
}

/// `loss.png`, `loss_scale.png` and `grad_exponents.png` from the run folder's records and the
/// accumulated gradient-exponent histogram.
pub fn draw_run_plots(out: &Path, cfg: &TrainConfig, hist: &[u64], scale: f32) -> Result<()> {
    let steps: Vec<StepRecord> = metrics::read_jsonl(&out.join("metrics.jsonl"))?;
    let evals: Vec<EvalRecord> = metrics::read_jsonl(&out.join("eval.jsonl"))?;
    let title = format!("{} ({})", cfg.precision, cfg.model_summary());
    plot::line_chart(
        &out.join("loss.png"),
        &format!("loss, {title}"),
        "step",
        "cross-entropy",
        &[
            Series {
                name: "train".into(),
                points: steps
                    .iter()
                    .map(|r| (r.step as f64, f64::from(r.loss)))
                    .collect(),
                markers: false,
                band: Vec::new(),
            },
            Series {
                name: "validation".into(),
                points: evals
                    .iter()
                    .map(|r| (r.step as f64, f64::from(r.val_loss)))
                    .collect(),
                markers: true,
                band: Vec::new(),
            },
        ],
        false,
    )?;
    plot::line_chart(
        &out.join("loss_scale.png"),
        &format!("loss scale, {title}"),
        "step",
        "scale (log2 axis)",
        &[
            Series {
                name: "loss scale".into(),
                points: steps
                    .iter()
                    .map(|r| (r.step as f64, f64::from(r.scale)))
                    .collect(),
                markers: false,
                band: Vec::new(),
            },
            Series {
                name: "skipped step".into(),
                points: steps
                    .iter()
                    .filter(|r| r.skipped)
                    .map(|r| (r.step as f64, f64::from(r.scale)))
                    .collect(),
                markers: true,
                band: Vec::new(),
            },
        ],
        true,
    )?;
    let dtype = cfg.precision.compute_dtype();
    let (lo, counts) = train::trim_histogram(hist);
    let mut hists = vec![ExponentHistogram {
        name: "gradients (unscaled)".into(),
        lo,
        counts: counts.clone(),
    }];
    if scale != 1.0 {
        hists.push(ExponentHistogram {
            name: format!("gradients x final loss scale {scale}"),
            lo: lo + scale.log2().round() as i32,
            counts,
        });
    }
    // Against FP16's range too when the run's format is wider: what loss scaling is for.
    let mut markers = format_markers(dtype);
    if dtype != DType::F16 {
        markers.extend(format_markers(DType::F16));
    }
    plot::exponent_chart(
        &out.join("grad_exponents.png"),
        &format!("gradient exponents vs {dtype} range, {title}"),
        &hists,
        &markers,
    )
}

impl TrainConfig {
    /// `"GPT 4x128, 4 heads, ctx 64"` (a Llama adds its key/value heads): the model in a few
    /// characters.
    pub fn model_summary(&self) -> String {
        let m = &self.model;
        let name = match m.arch {
            crate::config::Arch::Gpt2 => "GPT",
            crate::config::Arch::Llama => "Llama",
        };
        let kv = match m.arch {
            crate::config::Arch::Llama if m.kv_heads() != m.n_head => {
                format!(" ({} key/value)", m.kv_heads())
            }
            _ => String::new(),
        };
        format!(
            "{name} {}x{}, {} heads{kv}, ctx {}",
            m.n_layer, m.n_embd, m.n_head, m.n_positions
        )
    }
}
