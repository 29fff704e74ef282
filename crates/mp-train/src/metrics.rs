//! Metrics: one JSON line per logged step (`metrics.jsonl`) and per evaluation (`eval.jsonl`).

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads an f32 that serde_json wrote as `null` for a non-finite value (a diverged run's NaN
/// loss) back as NaN, so the program reads every file it writes.
fn f32_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// [`f32_or_nan`] for f64 fields.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One logged optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer step (1-based: the number of steps taken, as HF logs it).
    pub step: u64,
    /// Mean training loss of this step's micro-batches (unscaled).
    #[serde(deserialize_with = "f32_or_nan")]
    pub loss: f32,
    /// Learning rate used by this step.
    #[serde(deserialize_with = "f64_or_nan")]
    pub lr: f64,
    /// Loss scale used by this step's backward.
    #[serde(deserialize_with = "f32_or_nan")]
    pub scale: f32,
    /// Global norm of the unscaled gradients before clipping (absent on a skipped step).
    pub grad_norm: Option<f64>,
    /// True when the update was skipped (non-finite gradients).
    pub skipped: bool,
    /// Steps skipped so far in this run.
    pub skipped_total: u64,
    /// Training tokens per second since the previous record.
    #[serde(deserialize_with = "f64_or_nan")]
    pub tokens_per_s: f64,
    /// Training tokens seen so far.
    pub tokens: u64,
    /// Seconds since the run (or its resumption) started.
    #[serde(deserialize_with = "f64_or_nan")]
    pub elapsed_s: f64,
    /// Fraction of the non-zero unscaled gradient values that underflow to zero in FP16 at
    /// scale 1 (present on steps where the gradient histogram was taken).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fp16_underflow_at_1: Option<f64>,
    /// The same fraction at this step's loss scale.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fp16_underflow_at_scale: Option<f64>,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps taken when it ran.
    pub step: u64,
    /// Mean validation loss.
    #[serde(deserialize_with = "f32_or_nan")]
    pub val_loss: f32,
    /// Exact-match accuracy on held-out arithmetic problems (absent for a text file).
    pub accuracy: Option<f64>,
    /// Problems answered.
    pub problems: usize,
}

/// Appends records to a JSON-lines file, flushed after every record.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl JsonlWriter {
    /// Opens `path` for appending (created if missing).
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(TrainError::io("opening", path))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    /// Writes one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|source| TrainError::Json {
            path: self.path.clone(),
            source,
        })?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(TrainError::io("writing", &self.path))
    }
}

/// The records of a JSON-lines file with the text of each line (missing file: none). A last
/// line that does not parse and has no newline is the torn end of an interrupted write (a
/// kill, a full disk): it is dropped with a warning. Any other bad line is an error naming it.
fn parse_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<(T, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io("reading", path)(e)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(rec) => out.push((rec, line.to_string())),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!(
                    "warning: {}: dropped the torn last line {} (an interrupted write)",
                    path.display(),
                    i + 1
                );
            }
            Err(source) => {
                return Err(TrainError::JsonLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Reads every record of a JSON-lines file (missing file: none; a torn last line is dropped
/// with a warning).
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    Ok(parse_lines(path)?.into_iter().map(|(r, _)| r).collect())
}

/// Rewrites a JSON-lines file keeping only records whose `step` is at most `step` (a run
/// resumed in its own folder drops what the interrupted run logged after the checkpoint, and
/// a torn last line).
pub fn truncate_after(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct StepOnly {
        step: u64,
    }
    let mut kept = String::new();
    for (rec, line) in parse_lines::<StepOnly>(path)? {
        if rec.step <= step {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    crate::fsutil::write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_truncate() {
        let dir = std::env::temp_dir().join(format!("mp-train-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("eval.jsonl");
        let mut w = JsonlWriter::append(&p).unwrap();
        for step in [10, 20, 30] {
            w.write(&EvalRecord {
                step,
                val_loss: 1.5,
                accuracy: Some(0.5),
                problems: 4,
            })
            .unwrap();
        }
        drop(w);
        truncate_after(&p, 20).unwrap();
        let back: Vec<EvalRecord> = read_jsonl(&p).unwrap();
        assert_eq!(back.iter().map(|r| r.step).collect::<Vec<_>>(), [10, 20]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_diverged_runs_nan_reads_back_as_nan() {
        let dir = std::env::temp_dir().join(format!("mp-train-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.jsonl");
        let mut w = JsonlWriter::append(&p).unwrap();
        let rec = StepRecord {
            step: 3,
            loss: f32::NAN,
            lr: 1e-3,
            scale: f32::INFINITY,
            grad_norm: None,
            skipped: true,
            skipped_total: 1,
            tokens_per_s: f64::NAN,
            tokens: 10,
            elapsed_s: 0.5,
            fp16_underflow_at_1: None,
            fp16_underflow_at_scale: None,
        };
        w.write(&rec).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"loss\":null"), "{text}");
        let back: Vec<StepRecord> = read_jsonl(&p).unwrap();
        assert!(back[0].loss.is_nan() && back[0].scale.is_nan() && back[0].tokens_per_s.is_nan());
        assert_eq!((back[0].step, back[0].lr, back[0].skipped), (3, 1e-3, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("mp-train-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("eval.jsonl");
        let good = r#"{"step":10,"val_loss":1.5,"accuracy":null,"problems":4}"#;
        std::fs::write(&p, format!("{good}\n{good}\n{{\"step\":30,\"val_lo")).unwrap();
        let back: Vec<EvalRecord> = read_jsonl(&p).unwrap();
        assert_eq!(back.len(), 2);
        truncate_after(&p, 100).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{good}\n{good}\n")
        );
        // a bad line that is not the torn end is an error with its line number
        std::fs::write(&p, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = read_jsonl::<EvalRecord>(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
