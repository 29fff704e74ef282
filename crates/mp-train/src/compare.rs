//! The precision study: the same seed and config trained in fp32, bf16, fp16 with dynamic
//! loss scaling, fp16 without loss scaling and pure bf16 with stochastic rounding, compared in
//! a markdown report with plots.

use crate::config::{Precision, ScalingMode, TrainConfig};
use crate::error::{Result, TrainError};
use crate::fsutil;
use crate::health::{self, HealthRecord, TensorHealth};
use crate::memory::human;
use crate::metrics::{self, EvalRecord, StepRecord};
use crate::plot::{self, Series};
use crate::run::{self, Progress, RunOptions, RunSummary};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One arm of the study.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    /// Folder and row name.
    pub name: &'static str,
    /// Precision.
    pub precision: Precision,
    /// Loss scaling.
    pub scaling: ScalingMode,
}

/// The five arms, in report order.
pub const VARIANTS: [Variant; 5] = [
    Variant {
        name: "fp32",
        precision: Precision::Fp32,
        scaling: ScalingMode::None,
    },
    Variant {
        name: "bf16",
        precision: Precision::Bf16,
        scaling: ScalingMode::None,
    },
    Variant {
        name: "fp16-dynamic",
        precision: Precision::Fp16,
        scaling: ScalingMode::Dynamic,
    },
    Variant {
        name: "fp16-noscale",
        precision: Precision::Fp16,
        scaling: ScalingMode::None,
    },
    Variant {
        name: "bf16-sr",
        precision: Precision::Bf16Sr,
        scaling: ScalingMode::None,
    },
];

/// The outcome of one arm: its summary, or the error that stopped it (e.g. divergence).
#[derive(Debug)]
pub struct ArmResult {
    /// The arm.
    pub variant: Variant,
    /// Its run folder (the config's seed).
    pub dir: PathBuf,
    /// The summary, or what went wrong.
    pub outcome: std::result::Result<RunSummary, String>,
    /// The runs of the further seeds (`--seeds N`: the config's seed + 1, + 2, ...), each in
    /// `<arm>-seed<seed>/`.
    pub more_seeds: Vec<SeedRun>,
}

/// One further seed of an arm.
#[derive(Debug)]
pub struct SeedRun {
    /// The seed.
    pub seed: u64,
    /// Its run folder.
    pub dir: PathBuf,
    /// The summary, or what went wrong.
    pub outcome: std::result::Result<RunSummary, String>,
}

impl ArmResult {
    /// Every seed's outcome, the config's seed first.
    fn all_outcomes(&self) -> Vec<&std::result::Result<RunSummary, String>> {
        std::iter::once(&self.outcome)
            .chain(self.more_seeds.iter().map(|s| &s.outcome))
            .collect()
    }
}

/// The folder of seed `seed` of arm `name` (the config's own seed: `name/`).
fn seed_dir(out: &Path, name: &str, seed: u64, base_seed: u64) -> PathBuf {
    if seed == base_seed {
        out.join(name)
    } else {
        out.join(format!("{name}-seed{seed}"))
    }
}

/// Trains one run of the study, a divergence being an outcome rather than an error.
fn run_arm(
    cfg: TrainConfig,
    dir: &Path,
    progress: Progress,
) -> Result<std::result::Result<RunSummary, String>> {
    let opts = RunOptions {
        checkpoints: false,
        progress,
        ..RunOptions::new(dir)
    };
    match run::train(cfg, opts) {
        Ok(s) => Ok(Ok(s)),
        Err(e @ TrainError::Diverged { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Runs every arm into `out/<arm>/` (and each further seed of `seeds` into
/// `out/<arm>-seed<seed>/`) and writes `out/report.md` and the comparison plots (of the
/// config's seed). A diverging run is reported, not fatal; a bad config or I/O error stops the
/// study.
pub fn compare(
    base: &TrainConfig,
    out: &Path,
    overwrite: bool,
    progress: Progress,
    seeds: u64,
) -> Result<(PathBuf, Vec<ArmResult>)> {
    base.validate()?;
    if seeds == 0 {
        return Err(TrainError::invalid("--seeds", seeds, "must be at least 1"));
    }
    // the study folder stays locked for the whole study (each arm locks its own folder too)
    let _lock = run::prepare_out_dir(
        &RunOptions {
            overwrite,
            ..RunOptions::new(out)
        },
        false,
    )?;
    let mut results = Vec::new();
    for v in VARIANTS {
        let mut cfg = base.clone();
        cfg.precision = v.precision;
        cfg.loss_scaling.mode = v.scaling;
        cfg.precision_health = true;
        let dir = out.join(v.name);
        cfg.output_dir = Some(dir.clone());
        if progress != Progress::Quiet {
            println!(
                "== {} ({}, loss scaling {:?})",
                v.name, v.precision, v.scaling
            );
        }
        let outcome = run_arm(cfg.clone(), &dir, progress)?;
        let mut more_seeds = Vec::new();
        for seed in base.seed + 1..base.seed + seeds {
            let dir = seed_dir(out, v.name, seed, base.seed);
            if progress != Progress::Quiet {
                println!("== {} seed {seed}", v.name);
            }
            let cfg = TrainConfig {
                seed,
                output_dir: Some(dir.clone()),
                ..cfg.clone()
            };
            let outcome = run_arm(cfg, &dir, progress)?;
            more_seeds.push(SeedRun { seed, dir, outcome });
        }
        results.push(ArmResult {
            variant: v,
            dir,
            outcome,
            more_seeds,
        });
    }
    draw_compare_plots(out, &results)?;
    let report = report_markdown(base, &results, "");
    let path = out.join("report.md");
    fsutil::write_atomic(&path, report.as_bytes())?;
    Ok((path, results))
}

/// Reads a finished study back from its folder (each arm's `summary.json`; an arm without
/// one is reported as not finished), with the base config taken from the first arm's
/// `config.toml`.
pub fn load(out: &Path) -> Result<(TrainConfig, Vec<ArmResult>)> {
    let mut base = None;
    let mut results = Vec::new();
    for v in VARIANTS {
        let dir = out.join(v.name);
        if base.is_none() && dir.join("config.toml").exists() {
            base = Some(TrainConfig::load(Some(&dir.join("config.toml")), &[])?);
        }
        let outcome = read_outcome(&dir)?;
        // the further seeds: `<arm>-seed<seed>/`, in seed order
        let prefix = format!("{}-seed", v.name);
        let mut more_seeds = Vec::new();
        if let Ok(entries) = std::fs::read_dir(out) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(seed) = name
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let dir = e.path();
                    more_seeds.push(SeedRun {
                        seed,
                        outcome: read_outcome(&dir)?,
                        dir,
                    });
                }
            }
        }
        more_seeds.sort_by_key(|r| r.seed);
        results.push(ArmResult {
            variant: v,
            dir,
            outcome,
            more_seeds,
        });
    }
    let base = base.ok_or_else(|| TrainError::Data {
        path: out.to_path_buf(),
        reason: "not a precision-study folder (no <arm>/config.toml)".into(),
    })?;
    Ok((base, results))
}

/// A run folder's `summary.json`, or why there is none.
fn read_outcome(dir: &Path) -> Result<std::result::Result<RunSummary, String>> {
    let path = dir.join("summary.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Ok(serde_json::from_str(&text).map_err(|source| {
            TrainError::Json {
                path: path.clone(),
                source,
            }
        })?)),
        Err(_) => Ok(Err(format!(
            "no {} (the run did not finish)",
            path.display()
        ))),
    }
}

/// Redraws the comparison plots of a finished study folder and rewrites its `report.md`.
pub fn rerender(out: &Path) -> Result<(TrainConfig, Vec<ArmResult>)> {
    let (base, results) = load(out)?;
    draw_compare_plots(out, &results)?;
    fsutil::write_atomic(
        &out.join("report.md"),
        report_markdown(&base, &results, "").as_bytes(),
    )?;
    Ok((base, results))
}

/// The study's plots of the config's seed: (file, what it shows).
pub const PLOTS: [(&str, &str); 3] = [
    ("compare_train_loss.png", "training loss"),
    ("compare_val_loss.png", "validation loss"),
    ("compare_loss_scale.png", "loss scale"),
];

/// The plots over seeds (`--seeds` above 1).
pub const SEED_PLOTS: [(&str, &str); 2] = [
    ("compare_train_loss_seeds.png", "training loss over seeds"),
    ("compare_val_loss_seeds.png", "validation loss over seeds"),
];

/// The comparison plots of the config's seed, and with more seeds the bands over them.
fn draw_compare_plots(out: &Path, results: &[ArmResult]) -> Result<()> {
    if results.iter().any(|r| !r.more_seeds.is_empty()) {
        draw_seed_bands(out, results)?;
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    let mut scale = Vec::new();
    for r in results {
        let steps: Vec<StepRecord> = metrics::read_jsonl(&r.dir.join("metrics.jsonl"))?;
        let evals: Vec<EvalRecord> = metrics::read_jsonl(&r.dir.join("eval.jsonl"))?;
        let name = r.variant.name.to_string();
        train.push(Series {
            name: name.clone(),
            points: steps
                .iter()
                .map(|s| (s.step as f64, f64::from(s.loss)))
                .collect(),
            markers: false,
            band: Vec::new(),
        });
        val.push(Series {
            name: name.clone(),
            points: evals
                .iter()
                .map(|e| (e.step as f64, f64::from(e.val_loss)))
                .collect(),
            markers: false,
            band: Vec::new(),
        });
        scale.push(Series {
            name,
            points: steps
                .iter()
                .map(|s| (s.step as f64, f64::from(s.scale)))
                .collect(),
            markers: false,
            band: Vec::new(),
        });
    }
    loss_charts(out, "", "by precision", &train, &val)?;
    plot::line_chart(
        &out.join("compare_loss_scale.png"),
        "loss scale by precision",
        "step",
        "scale (log2 axis)",
        &scale,
        true,
    )
}

/// The exact-match accuracy a seed must reach to count as having learnt the task.
const TARGET_ACCURACY: f64 = 0.95;

/// The validation loss whose first crossing is a seed's "jump" on the arithmetic corpus: its
/// plateau (predicting digits without carrying) is about 1.40 nats and a solved task about
/// 1.0, so crossing 1.2 is learning to carry.
pub const JUMP_BELOW: f64 = 1.2;

/// The first evaluated step whose validation loss is below `below`.
pub fn jump_step(evals: &[EvalRecord], below: f64) -> Option<u64> {
    evals
        .iter()
        .find(|e| f64::from(e.val_loss) < below)
        .map(|e| e.step)
}

/// Every finished seed's run folder of an arm, the config's seed first.
fn seed_dirs(r: &ArmResult) -> Vec<&Path> {
    std::iter::once((&r.outcome, r.dir.as_path()))
        .chain(r.more_seeds.iter().map(|s| (&s.outcome, s.dir.as_path())))
        .filter(|(o, _)| o.is_ok())
        .map(|(_, d)| d)
        .collect()
}

/// `(x, mean, min, max)` over `runs` at every x all of them have.
fn across(runs: &[Vec<(f64, f64)>]) -> Vec<(f64, f64, f64, f64)> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter_map(|&(x, _)| {
            let ys: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|p| p.0 == x).map(|p| p.1))
                .collect();
            (ys.len() == runs.len()).then(|| {
                let mean = ys.iter().sum::<f64>() / ys.len() as f64;
                let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (x, mean, lo, hi)
            })
        })
        .collect()
}

/// The loss curves over seeds: per arm the mean line in a min-max band
/// (`compare_{train,val}_loss_seeds.png`).
fn draw_seed_bands(out: &Path, results: &[ArmResult]) -> Result<()> {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for r in results {
        let dirs = seed_dirs(r);
        let mut t_runs = Vec::new();
        let mut v_runs = Vec::new();
        for d in &dirs {
            let steps: Vec<StepRecord> = metrics::read_jsonl(&d.join("metrics.jsonl"))?;
            let evals: Vec<EvalRecord> = metrics::read_jsonl(&d.join("eval.jsonl"))?;
            t_runs.push(
                steps
                    .iter()
                    .map(|s| (s.step as f64, f64::from(s.loss)))
                    .collect(),
            );
            v_runs.push(
                evals
                    .iter()
                    .map(|e| (e.step as f64, f64::from(e.val_loss)))
                    .collect(),
            );
        }
        for (runs, into) in [(t_runs, &mut train), (v_runs, &mut val)] {
            let pts = across(&runs);
            into.push(Series {
                name: format!("{} ({} seeds)", r.variant.name, dirs.len()),
                points: pts.iter().map(|&(x, m, _, _)| (x, m)).collect(),
                markers: false,
                band: pts.iter().map(|&(x, _, lo, hi)| (x, lo, hi)).collect(),
            });
        }
    }
    loss_charts(
        out,
        "_seeds",
        "over seeds (mean, min-max band)",
        &train,
        &val,
    )
}

/// `compare_train_loss{suffix}.png` and `compare_val_loss{suffix}.png`.
fn loss_charts(
    out: &Path,
    suffix: &str,
    what: &str,
    train: &[Series],
    val: &[Series],
) -> Result<()> {
    for (name, title, series) in [("train", "training", train), ("val", "validation", val)] {
        plot::line_chart(
            &out.join(format!("compare_{name}_loss{suffix}.png")),
            &format!("{title} loss {what}"),
            "step",
            "cross-entropy",
            series,
            false,
        )?;
    }
    Ok(())
}

/// `mean (min - max)` of `xs` with `digits` decimals; `-` when empty.
fn spread(xs: &[f64], fmt: impl Fn(f64) -> String) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({} - {})", fmt(mean), fmt(lo), fmt(hi))
}

/// The section of a study with more than one seed: per arm, the mean and range of the final
/// losses and accuracy over its seeds, how many reached the target accuracy, and how many
/// did not finish.
fn across_seeds(s: &mut String, base: &TrainConfig, results: &[ArmResult], seeds: usize) {
    let _ = writeln!(
        s,
        "\n## Across seeds ({seeds} seeds from {}: mean (min - max))\n",
        base.seed
    );
    let _ = writeln!(
        s,
        "| run | seeds finished | final train loss | final val loss | exact-match accuracy | reached {} | jump: val loss < {JUMP_BELOW} at step | skipped steps |",
        pct(TARGET_ACCURACY)
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in results {
        let outs = r.all_outcomes();
        let ok: Vec<&RunSummary> = outs.iter().filter_map(|o| o.as_ref().ok()).collect();
        let col = |f: &dyn Fn(&RunSummary) -> Option<f64>| -> Vec<f64> {
            ok.iter().filter_map(|x| f(x)).collect()
        };
        let train = col(&|x| Some(f64::from(x.final_train_loss)));
        let val = col(&|x| Some(f64::from(x.final_val_loss)));
        let acc = col(&|x| x.final_accuracy);
        let skipped = col(&|x| Some(x.skipped_steps as f64));
        let reached = acc.iter().filter(|&&a| a >= TARGET_ACCURACY).count();
        let jumps: Vec<f64> = seed_dirs(r)
            .iter()
            .filter_map(|d| metrics::read_jsonl::<EvalRecord>(&d.join("eval.jsonl")).ok())
            .filter_map(|e| jump_step(&e, JUMP_BELOW))
            .map(|x| x as f64)
            .collect();
        let jump = if jumps.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{} in {} of {}",
                spread(&jumps, |x| format!("{x:.0}")),
                jumps.len(),
                outs.len()
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} of {} | {} | {} | {} | {} | {jump} | {} |",
            r.variant.name,
            ok.len(),
            outs.len(),
            spread(&train, |x| format!("{x:.4}")),
            spread(&val, |x| format!("{x:.4}")),
            spread(&acc, pct),
            if acc.is_empty() {
                "-".to_string()
            } else {
                format!("{reached} of {}", outs.len())
            },
            spread(&skipped, |x| format!("{x:.0}")),
        );
    }
}

/// The precision-health section (the config's seed of each arm): per arm the update that
/// 16-bit weights would lose and the gradient fractions FP16 and FP8 would lose, then the five
/// tensors that lose most (gradients, updates, saved activations). Returns the findings it
/// supports.
fn precision_health(s: &mut String, results: &[ArmResult], plot_prefix: &str) -> Vec<String> {
    let runs: Vec<(&ArmResult, Vec<HealthRecord>)> = results
        .iter()
        .filter_map(|r| {
            let recs = metrics::read_jsonl(&r.dir.join(run::HEALTH_FILE)).ok()?;
            Some((r, recs))
        })
        .filter(|(_, recs): &(_, Vec<HealthRecord>)| !recs.is_empty())
        .collect();
    let mut findings = Vec::new();
    if runs.is_empty() {
        return findings;
    }
    let _ = writeln!(s, "\n## Precision health (per tensor, the config's seed)\n");
    let _ = writeln!(
        s,
        "Means over logged steps, weighted by tensor size (`precision_health.jsonl` of each \
         run). *Lost update*: the fraction of a step's non-zero updates to the 2-D weights that \
         would vanish if applied to BF16 or FP16 weights directly, which FP32 master weights \
         keep (`-`: the run has no FP32 master weights). *Underflow*: gradients (as the \
         backward stored them, at the run's loss scale) that round to zero in FP16, in FP8 \
         E5M2, and in FP8 E4M3 after per-tensor amax scaling.\n"
    );
    let _ = writeln!(
        s,
        "| run | lost update, BF16 weights | lost update, FP16 weights | grad underflow FP16 | grad underflow E5M2 | grad underflow E4M3 (amax-scaled) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let matrices = |t: &TensorHealth| t.shape.len() == 2;
    let all = |_: &TensorHealth| true;
    let cell = |v: Option<f64>| v.map(pct).unwrap_or_else(|| "-".into());
    for (r, recs) in &runs {
        let lost_bf16 = health::mean_over(recs, "lost_update.bf16", matrices);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.variant.name,
            cell(lost_bf16),
            cell(health::mean_over(recs, "lost_update.fp16", matrices)),
            cell(health::mean_over(recs, "grad.fp16.underflow", all)),
            cell(health::mean_over(recs, "grad.e5m2.underflow", all)),
            cell(health::mean_over(recs, "grad.e4m3_amax.underflow", all)),
        );
        if r.variant.precision == Precision::Bf16
            && let Some(f) = lost_bf16
        {
            findings.push(format!(
                "{}: {} of the 2-D weights' updates per step would be lost on BF16 weights \
                 (below half a BF16 ulp); the FP32 master weights keep them.",
                r.variant.name,
                pct(f)
            ));
        }
    }
    for (path, what) in [
        (
            "grad.fp16.underflow",
            "tensors with the most gradients that underflow in FP16",
        ),
        (
            "lost_update.bf16",
            "tensors with the most updates BF16 weights would lose",
        ),
        (
            "act:e4m3_amax.underflow",
            "saved activations with the most values that underflow in FP8 E4M3 after \
             per-tensor amax scaling (the first micro-batch of each logged step)",
        ),
        (
            "act:fp16.overflow",
            "saved activations with the most values that overflow in FP16",
        ),
    ] {
        let _ = writeln!(s, "\nThe five {what}:\n");
        let _ = writeln!(s, "| run | tensors (mean fraction) |");
        let _ = writeln!(s, "| --- | --- |");
        for (r, recs) in &runs {
            let ranked = match path.strip_prefix("act:") {
                Some(p) => health::worst_activations(recs, p, 5),
                None => health::worst_tensors(recs, path, 5),
            };
            let worst: Vec<String> = ranked
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(n, v)| format!("`{n}` {}", pct(v)))
                .collect();
            let list = if worst.is_empty() {
                "none".to_string()
            } else {
                worst.join(", ")
            };
            let _ = writeln!(s, "| {} | {list} |", r.variant.name);
        }
    }
    let _ = writeln!(s);
    for (r, _) in &runs {
        let _ = writeln!(
            s,
            "![{} FP16 gradient underflow per tensor]({plot_prefix}{}/precision_health.png)\n",
            r.variant.name, r.variant.name
        );
    }
    findings
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The markdown report; plot links are prefixed with `plot_prefix` (empty: beside the report).
pub fn report_markdown(base: &TrainConfig, results: &[ArmResult], plot_prefix: &str) -> String {
    let mut s = String::new();
    let ok: Vec<(&ArmResult, &RunSummary)> = results
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|s| (r, s)))
        .collect();
    let device = ok
        .first()
        .map(|(_, s)| s.device.clone())
        .unwrap_or_default();
    let _ = writeln!(s, "# Precision study\n");
    let _ = writeln!(
        s,
        "Generated by `mp-train compare`: the same seed ({}) and config trained in each precision.\n",
        base.seed
    );
    let _ = writeln!(
        s,
        "- model: {} ({} parameters), vocabulary {}\n- steps: {}, batch {} x {} tokens x {} accumulation, lr {:e} ({:?}, warmup {}), weight decay {}, clip {}\n- data: {}\n- device: {device}, threads {}\n",
        base.model_summary(),
        crate::memory::num_params(base),
        base.model.vocab_size,
        base.max_steps,
        base.batch_size,
        base.model.n_positions,
        base.grad_accum_steps,
        base.learning_rate,
        base.lr_schedule,
        base.warmup_steps,
        base.weight_decay,
        base.max_grad_norm,
        match &base.data.path {
            Some(p) => p.display().to_string(),
            None => format!(
                "embedded arithmetic corpus ({}-digit addition)",
                base.data.digits
            ),
        },
        if base.threads == 0 {
            "all".to_string()
        } else {
            base.threads.to_string()
        },
    );
    let n_seeds = results
        .iter()
        .map(|r| 1 + r.more_seeds.len())
        .max()
        .unwrap_or(1);
    let _ = writeln!(
        s,
        "Reproduce with `mp-train compare --seeds {n_seeds}` on this config (each run folder's \
         `config.toml`; the default config when the lines above say so); `compare --from DIR \
         --report FILE` re-renders a finished study.\n"
    );
    if device.starts_with("cpu") {
        let _ = writeln!(
            s,
            "The CPU backend picks its SIMD path per machine (the device line names this one's), \
             and paths round differently in the last bits (AVX-512 BF16 dot products against \
             their AVX2 emulation, different FMA contractions), so the same command on another \
             CPU gives other losses in the last digits, and a seed close to the jump can land \
             on either side of it: the counts over seeds are what carries over.\n"
        );
    }
    let fp32_val = ok
        .iter()
        .find(|(r, _)| r.variant.precision == Precision::Fp32)
        .map(|(_, s)| s.final_val_loss);
    let _ = writeln!(s, "## Results\n");
    let _ = writeln!(
        s,
        "| run | final train loss | final val loss | val loss vs fp32 | exact-match accuracy | tokens/s | skipped steps | final scale |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in results {
        match &r.outcome {
            Ok(x) => {
                let rel = fp32_val
                    .map(|f| {
                        format!(
                            "{:+.2}%",
                            100.0 * (f64::from(x.final_val_loss) / f64::from(f) - 1.0)
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "| {} | {:.4} | {:.4} | {rel} | {} | {:.0} | {} | {} |",
                    r.variant.name,
                    x.final_train_loss,
                    x.final_val_loss,
                    x.final_accuracy.map(pct).unwrap_or_else(|| "-".into()),
                    x.tokens_per_s,
                    x.skipped_steps,
                    x.final_scale
                );
            }
            Err(e) => {
                let _ = writeln!(s, "| {} | failed: {e} | | | | | | |", r.variant.name);
            }
        }
    }
    let _ = writeln!(
        s,
        "\n## Memory by category (bytes, from buffer sizes; activations of one micro-batch)\n"
    );
    let _ = writeln!(
        s,
        "| run | master weights | model copy | gradients | optimizer state | activations | total |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (r, x) in &ok {
        let m = &x.memory;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.variant.name,
            human(m.master),
            human(m.model_copy),
            human(m.grads),
            human(m.optimizer),
            human(m.activations),
            human(m.total())
        );
    }
    let _ = writeln!(s, "\n## Gradients in FP16 (Micikevicius et al. 2018)\n");
    let _ = writeln!(
        s,
        "Mean over logged steps of the fraction of non-zero unscaled parameter gradients that round to zero in FP16, at scale 1 and at the run's loss scale, and the fraction of gradients that are exactly zero in the FP32 gradient arena.\n"
    );
    let _ = writeln!(
        s,
        "| run | underflow in FP16 at scale 1 | underflow at the run's scale | final scale | exactly-zero gradients |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for (r, x) in &ok {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.variant.name,
            pct(x.fp16_underflow_at_1),
            pct(x.fp16_underflow_at_scale),
            x.final_scale,
            pct(x.zero_grad_fraction)
        );
    }
    let health = precision_health(&mut s, results, plot_prefix);
    let seeds = results
        .iter()
        .map(|r| 1 + r.more_seeds.len())
        .max()
        .unwrap_or(1);
    if seeds > 1 {
        across_seeds(&mut s, base, results, seeds);
    }
    let _ = writeln!(s, "\n## Findings (computed from the numbers above)\n");
    if let Some(f) = fp32_val {
        for (r, x) in &ok {
            if r.variant.precision == Precision::Fp32 {
                continue;
            }
            let rel = f64::from(x.final_val_loss) / f64::from(f) - 1.0;
            let verdict = if rel.abs() <= 0.01 {
                "within 1% of"
            } else {
                "more than 1% away from"
            };
            let _ = writeln!(
                s,
                "- {}: final validation loss {:.4} is {verdict} fp32's {:.4} ({:+.2}%).",
                r.variant.name,
                x.final_val_loss,
                f,
                100.0 * rel
            );
        }
    }
    for r in results {
        if let Err(e) = &r.outcome {
            let _ = writeln!(s, "- {} did not finish: {e}", r.variant.name);
        }
    }
    for line in health {
        let _ = writeln!(s, "- {line}");
    }
    if seeds > 1 {
        for r in results {
            let outs = r.all_outcomes();
            let reached = outs
                .iter()
                .filter(|o| {
                    o.as_ref()
                        .is_ok_and(|x| x.final_accuracy.is_some_and(|a| a >= TARGET_ACCURACY))
                })
                .count();
            if outs
                .iter()
                .any(|o| o.as_ref().is_ok_and(|x| x.final_accuracy.is_some()))
            {
                let _ = writeln!(
                    s,
                    "- {}: reached {} exact match in {reached} of {} seeds.",
                    r.variant.name,
                    pct(TARGET_ACCURACY),
                    outs.len()
                );
            }
        }
    }
    if seeds > 1 {
        let _ = writeln!(s, "\n## Plots over seeds (mean, min-max band)\n");
        for (file, what) in SEED_PLOTS {
            let _ = writeln!(s, "![{what}]({plot_prefix}{file})\n");
        }
    }
    let _ = writeln!(s, "\n## Plots (the config's seed)\n");
    for (file, what) in PLOTS {
        let _ = writeln!(s, "![{what}]({plot_prefix}{file})\n");
    }
    for r in results {
        let _ = writeln!(
            s,
            "![{} gradient exponents]({plot_prefix}{}/grad_exponents.png)\n",
            r.variant.name, r.variant.name
        );
    }
    s
}
