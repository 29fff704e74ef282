//! The precision study: the same seed and config trained in fp32, bf16, fp16 with dynamic
//! loss scaling, fp16 without loss scaling and pure bf16 with stochastic rounding, compared in
//! a markdown report with plots.

use crate::config::{Precision, ScalingMode, TrainConfig};
use crate::error::{Result, TrainError};
use crate::fsutil;
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
    /// Its run folder.
    pub dir: PathBuf,
    /// The summary, or what went wrong.
    pub outcome: std::result::Result<RunSummary, String>,
}

/// Runs every arm into `out/<arm>/` and writes `out/report.md` and the comparison plots.
/// A diverging arm is reported, not fatal; a bad config or I/O error stops the study.
pub fn compare(
    base: &TrainConfig,
    out: &Path,
    overwrite: bool,
    progress: Progress,
) -> Result<(PathBuf, Vec<ArmResult>)> {
    base.validate()?;
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
        let dir = out.join(v.name);
        cfg.output_dir = Some(dir.clone());
        if progress != Progress::Quiet {
            println!(
                "== {} ({}, loss scaling {:?})",
                v.name, v.precision, v.scaling
            );
        }
        let opts = RunOptions {
            checkpoints: false,
            progress,
            ..RunOptions::new(&dir)
        };
        let outcome = match run::train(cfg, opts) {
            Ok(s) => Ok(s),
            Err(e @ TrainError::Diverged { .. }) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        results.push(ArmResult {
            variant: v,
            dir,
            outcome,
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
        let path = dir.join("summary.json");
        let outcome = match std::fs::read_to_string(&path) {
            Ok(text) => Ok(
                serde_json::from_str(&text).map_err(|source| TrainError::Json {
                    path: path.clone(),
                    source,
                })?,
            ),
            Err(_) => Err(format!("no {} (the run did not finish)", path.display())),
        };
        results.push(ArmResult {
            variant: v,
            dir,
            outcome,
        });
    }
    let base = base.ok_or_else(|| TrainError::Data {
        path: out.to_path_buf(),
        reason: "not a precision-study folder (no <arm>/config.toml)".into(),
    })?;
    Ok((base, results))
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

fn draw_compare_plots(out: &Path, results: &[ArmResult]) -> Result<()> {
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
        });
        val.push(Series {
            name: name.clone(),
            points: evals
                .iter()
                .map(|e| (e.step as f64, f64::from(e.val_loss)))
                .collect(),
            markers: false,
        });
        scale.push(Series {
            name,
            points: steps
                .iter()
                .map(|s| (s.step as f64, f64::from(s.scale)))
                .collect(),
            markers: false,
        });
    }
    plot::line_chart(
        &out.join("compare_train_loss.png"),
        "training loss by precision",
        "step",
        "cross-entropy",
        &train,
        false,
    )?;
    plot::line_chart(
        &out.join("compare_val_loss.png"),
        "validation loss by precision",
        "step",
        "cross-entropy",
        &val,
        false,
    )?;
    plot::line_chart(
        &out.join("compare_loss_scale.png"),
        "loss scale by precision",
        "step",
        "scale (log2 axis)",
        &scale,
        true,
    )
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
    let _ = writeln!(s, "\n## Plots\n");
    for (file, what) in [
        ("compare_train_loss.png", "training loss"),
        ("compare_val_loss.png", "validation loss"),
        ("compare_loss_scale.png", "loss scale"),
    ] {
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
