//! Training data: a text file (bytes, or a BPE [`Tokenizer`]'s tokens), llm.c token shards
//! (memory-mapped, read window by window: [`crate::shards`]), or the embedded arithmetic corpus.
//!
//! A [`Dataset`] holds a training and a validation token stream ([`Tokens`]). Batches are windows of `context + 1` tokens (inputs and next-token targets) whose
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
use crate::shards::{self, Shard};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Where a dataset's tokens came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A text file (tokenized whole), split at `1 - val_fraction` of its tokens.
    File(PathBuf),
    /// llm.c token shards: `data.path` (a file, folder or glob) and how many shards went into
    /// each split.
    Shards {
        /// The `data.path` that named them.
        spec: PathBuf,
        /// Training shards.
        train: usize,
        /// Validation shards (`*_val_*`; 0 when the validation tokens are the training
        /// shards' tail).
        val: usize,
    },
    /// The embedded arithmetic corpus.
    Arithmetic(Arithmetic),
}

/// A contiguous run of one shard's tokens.
#[derive(Clone, Debug)]
pub struct Span {
    /// The shard.
    pub shard: Arc<Shard>,
    /// First token.
    pub start: usize,
    /// Tokens.
    pub len: usize,
}

/// A token stream: held in memory, or spans of memory-mapped shards read window by window.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// Tokens in memory (the arithmetic corpus, a tokenized text file).
    Memory(Vec<u32>),
    /// Spans of shards; a window never crosses a span's end.
    Shards(Vec<Span>),
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Memory(Vec::new())
    }
}

impl Tokens {
    /// Tokens in the stream.
    pub fn len(&self) -> usize {
        match self {
            Tokens::Memory(v) => v.len(),
            Tokens::Shards(spans) => spans.iter().map(|s| s.len).sum(),
        }
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokens, when they are in memory.
    pub fn as_slice(&self) -> Option<&[u32]> {
        match self {
            Tokens::Memory(v) => Some(v),
            Tokens::Shards(_) => None,
        }
    }

    /// How many windows of `t + 1` tokens start at a multiple of `align` (shards: any
    /// position inside one span).
    fn starts(&self, t: usize, align: usize) -> usize {
        let fit = |len: usize| {
            if len > t {
                (len - t - 1) / align + 1
            } else {
                0
            }
        };
        match self {
            Tokens::Memory(v) => fit(v.len()),
            Tokens::Shards(spans) => spans.iter().map(|s| fit(s.len)).sum(),
        }
    }

    /// Appends the inputs and targets of window `k` (of [`Tokens::starts`]) to `batch`.
    fn window(
        &self,
        k: usize,
        t: usize,
        align: usize,
        vocab: usize,
        batch: &mut Batch,
    ) -> Result<()> {
        match self {
            Tokens::Memory(v) => {
                let off = k * align;
                batch.inputs.extend_from_slice(&v[off..off + t]);
                batch.targets.extend_from_slice(&v[off + 1..off + t + 1]);
            }
            Tokens::Shards(spans) => {
                let mut k = k;
                for span in spans {
                    let here = span.len.saturating_sub(t);
                    if k < here {
                        let mut w = Vec::with_capacity(t + 1);
                        span.shard.read(span.start + k, t + 1, vocab, &mut w)?;
                        batch.inputs.extend_from_slice(&w[..t]);
                        batch.targets.extend_from_slice(&w[1..]);
                        return Ok(());
                    }
                    k -= here;
                }
                unreachable!("window index beyond the stream's starts");
            }
        }
        Ok(())
    }
}

/// A training and a validation token stream, and the tokenizer that made them.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Where the tokens came from.
    pub source: Source,
    /// The tokenizer (bytes for the arithmetic corpus).
    pub tokenizer: Tokenizer,
    /// Training tokens.
    pub train: Tokens,
    /// Validation tokens.
    pub val: Tokens,
    /// The model's vocabulary: shard ids at or beyond it are errors.
    pub vocab: usize,
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
    /// The byte-level dataset a config asks for, checked to fit `context` (sequence length).
    pub fn from_config(cfg: &DataConfig, seed: u64, context: usize) -> Result<Self> {
        Self::load(cfg, seed, context, Tokenizer::Bytes, 256)
    }

    /// The dataset of a run's config (its data, seed, context and vocabulary) tokenized by
    /// `tokenizer`.
    pub fn for_run(cfg: &crate::config::TrainConfig, tokenizer: Tokenizer) -> Result<Self> {
        Self::load(
            &cfg.data,
            cfg.seed,
            cfg.model.n_positions,
            tokenizer,
            cfg.model.vocab_size,
        )
    }

    /// A dataset with no tokens (for sampling): only its tokenizer.
    pub fn empty(tokenizer: Tokenizer) -> Self {
        let vocab = tokenizer.vocab_size();
        Dataset {
            source: Source::File(PathBuf::new()),
            tokenizer,
            train: Tokens::default(),
            val: Tokens::default(),
            vocab,
        }
    }

    /// The dataset of `data.path` (a text file tokenized by `tokenizer`, or llm.c shards)
    /// or the embedded corpus, for a model of vocabulary `vocab`, checked to fit `context`.
    pub fn load(
        cfg: &DataConfig,
        seed: u64,
        context: usize,
        tokenizer: Tokenizer,
        vocab: usize,
    ) -> Result<Self> {
        let mut d = match &cfg.path {
            // a `.bin` file is a shard (a bad one is an error, never read as text)
            Some(path)
                if path.is_file()
                    && path.extension().is_none_or(|e| e != "bin")
                    && !Shard::sniff(path) =>
            {
                Self::from_text_file(path, cfg.val_fraction, context, tokenizer)?
            }
            Some(path) => Self::from_shards(path, cfg.val_fraction, context, tokenizer)?,
            None => {
                if !matches!(tokenizer, Tokenizer::Bytes) {
                    return Err(TrainError::invalid(
                        "tokenizer",
                        tokenizer.describe(),
                        "the embedded arithmetic corpus is byte-level: set data.path to a \
                         text file or token shards to train with a BPE tokenizer",
                    ));
                }
                let d = Self::arithmetic(cfg, seed);
                d.check_arithmetic_fits(cfg, context)?;
                d
            }
        };
        d.vocab = vocab;
        Ok(d)
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

    /// A byte-level text file, split at `1 - val_fraction` of its bytes.
    pub fn from_file(path: &Path, val_fraction: f64, context: usize) -> Result<Self> {
        Self::from_text_file(path, val_fraction, context, Tokenizer::Bytes)
    }

    /// A text file tokenized whole, split at `1 - val_fraction` of its tokens.
    fn from_text_file(
        path: &Path,
        val_fraction: f64,
        context: usize,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(TrainError::io("reading data", path))?;
        let bad = |reason: String| TrainError::Data {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let tokens = match &tokenizer {
            Tokenizer::Bytes => bytes_to_tokens(&bytes),
            Tokenizer::Bpe { .. } => {
                let text = String::from_utf8(bytes).map_err(|e| {
                    bad(format!(
                        "not UTF-8 text (byte {}), which a BPE tokenizer needs",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                tokenizer.encode(&text)?
            }
        };
        let unit = match tokenizer {
            Tokenizer::Bytes => "bytes",
            Tokenizer::Bpe { .. } => "tokens",
        };
        let n_val = ((tokens.len() as f64) * val_fraction).round() as usize;
        let n_train = tokens.len() - n_val;
        let need = context + 1;
        if n_train < need || n_val < need {
            let total = (need as f64 / val_fraction.min(1.0 - val_fraction)).ceil() as usize;
            return Err(bad(format!(
                "{} {unit} is too short: with context {context} and val_fraction {val_fraction} \
                 each split needs at least {need} {unit} (train {n_train}, validation {n_val}); \
                 give at least {total} {unit}",
                tokens.len()
            )));
        }
        let val = tokens[n_train..].to_vec();
        let mut train = tokens;
        train.truncate(n_train);
        let vocab = tokenizer.vocab_size();
        Ok(Dataset {
            source: Source::File(path.to_path_buf()),
            tokenizer,
            train: Tokens::Memory(train),
            val: Tokens::Memory(val),
            vocab,
        })
    }

    /// llm.c shards: the `*_val_*` ones validate, the others train; without validation shards
    /// the last `val_fraction` of the training tokens validate.
    fn from_shards(
        spec: &Path,
        val_fraction: f64,
        context: usize,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let files = shards::resolve(spec)?;
        let mut train = Vec::new();
        let mut val = Vec::new();
        for f in &files {
            let shard = Arc::new(Shard::open(f)?);
            let span = Span {
                len: shard.len(),
                shard,
                start: 0,
            };
            if shards::is_validation(f) {
                val.push(span);
            } else {
                train.push(span);
            }
        }
        let bad = |reason: String| TrainError::Data {
            path: spec.to_path_buf(),
            reason,
        };
        if train.is_empty() {
            return Err(bad(format!(
                "{} shard(s), all validation (*_val_*): no training shard",
                val.len()
            )));
        }
        let val_shards = val.len();
        if val.is_empty() {
            let total: usize = train.iter().map(|s| s.len).sum();
            let mut n_val = ((total as f64) * val_fraction).round() as usize;
            while n_val > 0 {
                let last = train.last_mut().expect("a training shard");
                let take = n_val.min(last.len);
                val.insert(
                    0,
                    Span {
                        shard: last.shard.clone(),
                        start: last.start + last.len - take,
                        len: take,
                    },
                );
                last.len -= take;
                n_val -= take;
                if last.len == 0 {
                    train.pop();
                }
                if train.is_empty() {
                    break;
                }
            }
        }
        let (train, val) = (Tokens::Shards(train), Tokens::Shards(val));
        for (name, split) in [("training", &train), ("validation", &val)] {
            if split.starts(context, 1) == 0 {
                return Err(bad(format!(
                    "the {name} split ({} tokens) has no shard span of {} tokens, which \
                     context {context} (model.n_positions) needs",
                    split.len(),
                    context + 1
                )));
            }
        }
        let vocab = tokenizer.vocab_size();
        Ok(Dataset {
            source: Source::Shards {
                spec: spec.to_path_buf(),
                train: files.len() - val_shards,
                val: val_shards,
            },
            tokenizer,
            train,
            val,
            vocab,
        })
    }

    /// The embedded arithmetic corpus of `cfg`, generated from `seed`.
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
            tokenizer: Tokenizer::Bytes,
            train: Tokens::Memory(text(&train_pairs, cfg.problems, 1)),
            val: Tokens::Memory(text(&val_pairs, n_val, 2)),
            vocab: 256,
        }
    }

    /// The arithmetic task, when the data is the embedded corpus.
    pub fn arithmetic_task(&self) -> Option<Arithmetic> {
        match self.source {
            Source::Arithmetic(a) => Some(a),
            _ => None,
        }
    }

    /// Tokens of context before each evaluated problem's answer: whole problem lines that fit
    /// (arithmetic), else 0.
    pub fn prompt_len(&self, context: usize) -> usize {
        match self.arithmetic_task() {
            Some(task) => {
                let room = context.saturating_sub(task.answer_len() + task.prompt_len());
                (room / task.line_len()) * task.line_len() + task.prompt_len()
            }
            None => 0,
        }
    }

    /// One line for the run summary.
    pub fn describe(&self) -> String {
        let (train, val) = (self.train.len(), self.val.len());
        match &self.source {
            Source::File(p) => match self.tokenizer {
                Tokenizer::Bytes => {
                    format!("{} ({train} train / {val} validation bytes)", p.display())
                }
                Tokenizer::Bpe { .. } => {
                    format!("{} ({train} train / {val} validation tokens)", p.display())
                }
            },
            Source::Shards {
                spec,
                train: nt,
                val: nv,
            } => format!(
                "{} ({nt} training shard(s), {train} tokens; {} {val} validation tokens), \
                 memory-mapped",
                spec.display(),
                if *nv == 0 {
                    "the last shard's tail:".to_string()
                } else {
                    format!("{nv} validation shard(s),")
                }
            ),
            Source::Arithmetic(a) => format!(
                "embedded arithmetic corpus, {}-digit addition{} ({train} train / {val} \
                 validation bytes)",
                a.digits,
                if a.reversed { ", answers reversed" } else { "" },
            ),
        }
    }

    /// Training micro-batch `micro`: `rows` windows of `t + 1` tokens drawn from
    /// `(seed, micro, row)` alone, so resuming at a step replays the same batches.
    pub fn train_batch(&self, seed: u64, micro: u64, rows: usize, t: usize) -> Result<Batch> {
        let align = self.alignment();
        let starts = self.train.starts(t, align) as u64;
        let mut batch = Batch::with_capacity(rows, t);
        for r in 0..rows as u64 {
            let k = draw(seed ^ 0x7EA1, micro, r, starts) as usize;
            self.train.window(k, t, align, self.vocab, &mut batch)?;
        }
        Ok(batch)
    }

    /// Window starts fall on multiples of this (one problem line for the arithmetic corpus,
    /// so every window starts at a problem).
    pub fn alignment(&self) -> usize {
        match self.source {
            Source::Arithmetic(a) => a.line_len(),
            _ => 1,
        }
    }

    /// Validation batch `index` of `count`: windows evenly spread over the validation split.
    pub fn val_batch(&self, index: usize, count: usize, rows: usize, t: usize) -> Result<Batch> {
        let align = self.alignment();
        let starts = self.val.starts(t, align);
        let total = (count * rows).max(1);
        let mut batch = Batch::with_capacity(rows, t);
        for r in 0..rows {
            let k = ((index * rows + r) * starts) / total;
            self.val.window(k, t, align, self.vocab, &mut batch)?;
        }
        Ok(batch)
    }

    /// Up to `count` held-out problems from the validation text: (the `prompt_tokens` tokens
    /// ending with a problem's `=`, its expected answer). Empty unless arithmetic.
    pub fn eval_problems(&self, count: usize, prompt_tokens: usize) -> Vec<(Vec<u32>, String)> {
        let (Some(task), Some(val)) = (self.arithmetic_task(), self.val.as_slice()) else {
            return Vec::new();
        };
        let line = task.line_len();
        let mut out = Vec::new();
        let mut start = 0;
        while out.len() < count && start + line <= val.len() {
            let end = start + task.prompt_len();
            if end >= prompt_tokens {
                let prompt = val[end - prompt_tokens..end].to_vec();
                let answer: String = val[end..end + task.answer_len()]
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

impl Batch {
    fn with_capacity(rows: usize, t: usize) -> Self {
        Batch {
            rows,
            t,
            inputs: Vec::with_capacity(rows * t),
            targets: Vec::with_capacity(rows * t),
        }
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
        let train: std::collections::HashSet<_> =
            parse(ds.train.as_slice().unwrap()).into_iter().collect();
        let val = parse(ds.val.as_slice().unwrap());
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
        let b1 = ds.train_batch(3, 10, 4, 16).unwrap();
        assert_eq!(b1, ds.train_batch(3, 10, 4, 16).unwrap());
        assert_ne!(b1, ds.train_batch(3, 11, 4, 16).unwrap());
        assert_eq!(&b1.inputs[1..16], &b1.targets[..15]);
        let v = ds.val_batch(1, 4, 2, 16).unwrap();
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
