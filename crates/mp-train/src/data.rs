//! Training data: byte-level tokens from any text file, or the embedded arithmetic corpus.
//!
//! Tokens are bytes (vocabulary 256). A [`Dataset`] holds a training and a validation token
//! stream. Batches are windows of `context + 1` tokens (inputs and next-token targets) whose
//! offsets are a pure function of `(seed, micro-batch index, row)`, so the data position of a
//! run is just its step count: a resumed run sees exactly the batches the uninterrupted run saw.
//!
//! The embedded corpus is generated from the seed: addition problems with zero-padded operands
//! (`07+45=052\n`), by default with the answer written least-significant digit first
//! (`07+45=250\n`), the order in which the carries are computed: small transformers learn
//! addition far faster that way (Lee et al. 2023, "Teaching arithmetic to small
//! transformers"). A fraction of all operand pairs is held out; the validation text and the
//! exact-match accuracy use only held-out pairs, so accuracy measures generalisation.

use crate::config::DataConfig;
use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};

/// SplitMix64: a tiny, fast, well-mixed counter-based generator step.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `0..n` from the counter `(seed, a, b)` (`n > 0`).
fn draw(seed: u64, a: u64, b: u64, n: u64) -> u64 {
    let h = mix64(mix64(mix64(seed) ^ a) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    // Multiply-shift: unbiased enough for n << 2^64.
    ((h as u128 * n as u128) >> 64) as u64
}

/// The embedded arithmetic task: `a+b=c` with zero-padded `digits`-digit operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arithmetic {
    /// Operand digits.
    pub digits: u32,
    /// The answer is written least-significant digit first.
    pub reversed: bool,
}

impl Arithmetic {
    /// Characters of one problem line, newline included.
    pub fn line_len(&self) -> usize {
        let d = self.digits as usize;
        2 * d + 2 + (d + 1) + 1
    }

    /// Characters of the prompt (`a+b=`).
    pub fn prompt_len(&self) -> usize {
        2 * self.digits as usize + 2
    }

    /// Characters of the answer (without the newline).
    pub fn answer_len(&self) -> usize {
        self.digits as usize + 1
    }

    /// The problem line for `a + b`.
    pub fn line(&self, a: u64, b: u64) -> String {
        let d = self.digits as usize;
        let c = format!("{:0w$}", a + b, w = d + 1);
        let c: String = if self.reversed {
            c.chars().rev().collect()
        } else {
            c
        };
        format!("{a:0d$}+{b:0d$}={c}\n")
    }

    fn operands(&self) -> u64 {
        10u64.pow(self.digits)
    }

    /// Whether the pair `(a, b)` is held out for validation.
    fn held_out(&self, seed: u64, a: u64, b: u64, val_fraction: f64) -> bool {
        let h = mix64(mix64(seed ^ 0xA5A5_5A5A) ^ (a << 20 | b));
        (h >> 11) as f64 / (1u64 << 53) as f64 <= val_fraction
    }
}

/// Where a dataset's text came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A text file, split at `1 - val_fraction` of its bytes.
    File(PathBuf),
    /// The embedded arithmetic corpus.
    Arithmetic(Arithmetic),
}

/// A training and a validation token stream.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Where the text came from.
    pub source: Source,
    /// Training tokens.
    pub train: Vec<u32>,
    /// Validation tokens.
    pub val: Vec<u32>,
}

/// One batch: `rows x t` inputs and their next-token targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// Tokens per row.
    pub t: usize,
    /// Input ids, row-major.
    pub inputs: Vec<u32>,
    /// Target ids (the next token of each input).
    pub targets: Vec<u32>,
}

fn bytes_to_tokens(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| u32::from(b)).collect()
}

impl Dataset {
    /// The dataset a config asks for, checked to fit `context` (sequence length).
    pub fn from_config(cfg: &DataConfig, seed: u64, context: usize) -> Result<Self> {
        match &cfg.path {
            Some(path) => Self::from_file(path, cfg.val_fraction, context),
            None => {
                let d = Self::arithmetic(cfg, seed);
                d.check_arithmetic_fits(cfg, context)?;
                Ok(d)
            }
        }
    }

    /// Fails, naming `data.problems`, unless both splits of the arithmetic corpus hold a
    /// window of `context + 1` tokens (training and validation read such windows).
    fn check_arithmetic_fits(&self, cfg: &DataConfig, context: usize) -> Result<()> {
        let need = context + 1;
        if self.train.len() >= need && self.val.len() >= need {
            return Ok(());
        }
        let line = self.alignment();
        let lines = need.div_ceil(line);
        // the validation split has max(ceil(problems * val_fraction), 64) problems
        let for_val = if lines <= 64 {
            0
        } else {
            (lines as f64 / cfg.val_fraction).ceil() as usize
        };
        Err(TrainError::invalid(
            "data.problems",
            cfg.problems,
            format!(
                "too few for context {context} (model.n_positions): the training split holds \
                 {} tokens and the validation split {}, and each needs at least {need}; use \
                 data.problems >= {}",
                self.train.len(),
                self.val.len(),
                lines.max(for_val)
            ),
        ))
    }

    /// Byte-level tokens from a text file; the last `val_fraction` of it is the validation
    /// split. Each split must hold at least `context + 1` tokens.
    pub fn from_file(path: &Path, val_fraction: f64, context: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(TrainError::io("reading data", path))?;
        let bad = |reason: String| TrainError::Data {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let n_val = ((bytes.len() as f64) * val_fraction).round() as usize;
        let n_train = bytes.len() - n_val;
        let need = context + 1;
        if n_train < need || n_val < need {
            let total = (need as f64 / val_fraction.min(1.0 - val_fraction)).ceil() as usize;
            return Err(bad(format!(
                "{} bytes is too short: with context {context} and val_fraction {val_fraction} \
                 each split needs at least {need} bytes (train {n_train}, validation {n_val}); \
                 give at least {total} bytes",
                bytes.len()
            )));
        }
        Ok(Dataset {
            source: Source::File(path.to_path_buf()),
            train: bytes_to_tokens(&bytes[..n_train]),
            val: bytes_to_tokens(&bytes[n_train..]),
        })
    }

    /// The embedded arithmetic corpus: `cfg.problems` training problems over the pairs not
    /// held out, and `cfg.problems * val_fraction` (at least 64) over the held-out pairs.
    pub fn arithmetic(cfg: &DataConfig, seed: u64) -> Self {
        let task = Arithmetic {
            digits: cfg.digits,
            reversed: cfg.reverse_answer,
        };
        let n = task.operands();
        let mut train_pairs = Vec::new();
        let mut val_pairs = Vec::new();
        for a in 0..n {
            for b in 0..n {
                if task.held_out(seed, a, b, cfg.val_fraction) {
                    val_pairs.push((a, b));
                } else {
                    train_pairs.push((a, b));
                }
            }
        }
        // Tiny operand spaces may leave a split empty: then both use every pair.
        if val_pairs.is_empty() || train_pairs.is_empty() {
            train_pairs.append(&mut val_pairs);
            val_pairs = train_pairs.clone();
        }
        let text = |pairs: &[(u64, u64)], count: usize, stream: u64| {
            let mut s = String::with_capacity(count * task.line_len());
            for i in 0..count as u64 {
                let (a, b) = pairs[draw(seed, stream, i, pairs.len() as u64) as usize];
                s.push_str(&task.line(a, b));
            }
            bytes_to_tokens(s.as_bytes())
        };
        let n_val = ((cfg.problems as f64 * cfg.val_fraction).ceil() as usize).max(64);
        Dataset {
            source: Source::Arithmetic(task),
            train: text(&train_pairs, cfg.problems, 1),
            val: text(&val_pairs, n_val, 2),
        }
    }

    /// The arithmetic task, when this is the embedded corpus.
    pub fn arithmetic_task(&self) -> Option<Arithmetic> {
        match self.source {
            Source::Arithmetic(a) => Some(a),
            Source::File(_) => None,
        }
    }

    /// The longest prompt that starts at a line boundary, ends with a problem's `=` and
    /// leaves room for the answer within `context` tokens (0 for text files).
    pub fn prompt_len(&self, context: usize) -> usize {
        match self.arithmetic_task() {
            Some(task) => {
                let room = context.saturating_sub(task.answer_len() + task.prompt_len());
                (room / task.line_len()) * task.line_len() + task.prompt_len()
            }
            None => 0,
        }
    }

    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(p) => format!(
                "{} ({} train / {} validation bytes)",
                p.display(),
                self.train.len(),
                self.val.len()
            ),
            Source::Arithmetic(a) => format!(
                "embedded arithmetic corpus, {}-digit addition{} ({} train / {} validation bytes)",
                a.digits,
                if a.reversed { ", answers reversed" } else { "" },
                self.train.len(),
                self.val.len()
            ),
        }
    }

    /// Training micro-batch number `micro` (`step * grad_accum + k`): `rows` random windows.
    pub fn train_batch(&self, seed: u64, micro: u64, rows: usize, t: usize) -> Batch {
        let align = self.alignment();
        // Window starts: multiples of `align` with room for t + 1 tokens (>= 1 of them:
        // checked at construction).
        let starts = ((self.train.len() - t - 1) / align + 1) as u64;
        let offsets =
            (0..rows as u64).map(|r| draw(seed ^ 0x7EA1, micro, r, starts) as usize * align);
        window_batch(&self.train, offsets, rows, t)
    }

    /// Windows start at multiples of this: one problem line for the arithmetic corpus (so
    /// every digit place sits at the same positions modulo the line length, which the learned
    /// position embedding picks up at once), one byte for text files.
    pub fn alignment(&self) -> usize {
        match self.source {
            Source::Arithmetic(a) => a.line_len(),
            Source::File(_) => 1,
        }
    }

    /// Validation batch number `index` of `count`: evenly spaced, fixed windows, the same in
    /// every evaluation and every run.
    pub fn val_batch(&self, index: usize, count: usize, rows: usize, t: usize) -> Batch {
        let align = self.alignment();
        let starts = (self.val.len() - t - 1) / align + 1;
        let total = (count * rows).max(1);
        let offsets = (0..rows).map(|r| ((index * rows + r) * starts) / total * align);
        window_batch(&self.val, offsets, rows, t)
    }

    /// Up to `count` held-out problems as `(prompt tokens, expected answer)`: each prompt is
    /// the `prompt_tokens` validation tokens ending with a problem's `=` (use
    /// [`Dataset::prompt_len`] to start prompts at a line, as training windows do).
    pub fn eval_problems(&self, count: usize, prompt_tokens: usize) -> Vec<(Vec<u32>, String)> {
        let Some(task) = self.arithmetic_task() else {
            return Vec::new();
        };
        let line = task.line_len();
        let mut out = Vec::new();
        let mut start = 0;
        while out.len() < count && start + line <= self.val.len() {
            let end = start + task.prompt_len();
            if end >= prompt_tokens {
                let prompt = self.val[end - prompt_tokens..end].to_vec();
                let answer: String = self.val[end..end + task.answer_len()]
                    .iter()
                    .map(|&b| char::from(b as u8))
                    .collect();
                out.push((prompt, answer));
            }
            start += line;
        }
        out
    }
}

fn window_batch(
    tokens: &[u32],
    offsets: impl Iterator<Item = usize>,
    rows: usize,
    t: usize,
) -> Batch {
    let mut inputs = Vec::with_capacity(rows * t);
    let mut targets = Vec::with_capacity(rows * t);
    for off in offsets {
        inputs.extend_from_slice(&tokens[off..off + t]);
        targets.extend_from_slice(&tokens[off + 1..off + t + 1]);
    }
    Batch {
        rows,
        t,
        inputs,
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arithmetic_corpus_too_short_for_the_context_is_refused() {
        for (problems, context) in [(1, 64), (3, 64), (200, 1024)] {
            let c = DataConfig { problems, ..cfg() };
            let Err(e) = Dataset::from_config(&c, 0, context) else {
                panic!("{problems} problems fit context {context}");
            };
            let msg = e.to_string();
            assert!(
                msg.contains("data.problems") && msg.contains("use data.problems >="),
                "{msg}"
            );
            // the suggestion fits
            let n: usize = msg.rsplit(">= ").next().unwrap().trim().parse().unwrap();
            let ok = DataConfig {
                problems: n,
                ..cfg()
            };
            assert!(
                Dataset::from_config(&ok, 0, context).is_ok(),
                "{n} problems, context {context}"
            );
        }
    }

    fn cfg() -> DataConfig {
        DataConfig {
            problems: 2000,
            ..DataConfig::default()
        }
    }

    #[test]
    fn arithmetic_lines_are_correct_and_held_out_pairs_disjoint() {
        let ds = Dataset::arithmetic(&cfg(), 7);
        let task = ds.arithmetic_task().unwrap();
        let parse = |toks: &[u32]| -> Vec<(String, u64)> {
            let s: String = toks.iter().map(|&b| char::from(b as u8)).collect();
            s.lines()
                .map(|l| {
                    let (q, c) = l.split_once('=').unwrap();
                    let (a, b) = q.split_once('+').unwrap();
                    let c: String = c.chars().rev().collect();
                    assert_eq!(
                        a.parse::<u64>().unwrap() + b.parse::<u64>().unwrap(),
                        c.parse::<u64>().unwrap()
                    );
                    assert_eq!(l.len() + 1, task.line_len());
                    (q.to_string(), 0)
                })
                .collect()
        };
        let train: std::collections::HashSet<_> = parse(&ds.train).into_iter().collect();
        let val = parse(&ds.val);
        assert!(val.iter().all(|p| !train.contains(p)));
        assert_eq!(ds.train.len(), 2000 * task.line_len());
    }

    #[test]
    fn answers_are_reversed_on_request() {
        let mut t = Arithmetic {
            digits: 2,
            reversed: false,
        };
        assert_eq!(t.line(7, 45), "07+45=052\n");
        t.reversed = true;
        assert_eq!(t.line(7, 45), "07+45=250\n");
    }

    #[test]
    fn batches_are_deterministic_windows_with_shifted_targets() {
        let ds = Dataset::arithmetic(&cfg(), 7);
        let b1 = ds.train_batch(3, 10, 4, 16);
        assert_eq!(b1, ds.train_batch(3, 10, 4, 16));
        assert_ne!(b1, ds.train_batch(3, 11, 4, 16));
        assert_eq!(&b1.inputs[1..16], &b1.targets[..15]);
        let v = ds.val_batch(1, 4, 2, 16);
        assert_eq!(v.inputs.len(), 32);
    }

    #[test]
    fn eval_problems_end_with_the_prompt() {
        let ds = Dataset::arithmetic(&cfg(), 7);
        let probs = ds.eval_problems(10, 20);
        assert_eq!(probs.len(), 10);
        for (p, ans) in probs {
            assert_eq!(p.len(), 20);
            assert_eq!(*p.last().unwrap(), u32::from(b'='));
            assert_eq!(ans.len(), 3);
        }
    }

    #[test]
    fn short_and_empty_files_are_rejected() {
        let dir = std::env::temp_dir().join(format!("mp-train-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let e = Dataset::from_file(&empty, 0.1, 8).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("empty.txt"), "{e}");
        let short = dir.join("short.txt");
        std::fs::write(&short, "hello world").unwrap();
        let e = Dataset::from_file(&short, 0.1, 8).unwrap_err().to_string();
        assert!(e.contains("too short") && e.contains("context 8"), "{e}");
        let ok = dir.join("ok.txt");
        std::fs::write(&ok, "abcdefghij".repeat(10)).unwrap();
        let ds = Dataset::from_file(&ok, 0.1, 8).unwrap();
        assert_eq!((ds.train.len(), ds.val.len()), (90, 10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
