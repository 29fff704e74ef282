//! Text to token ids and back: bytes (vocabulary 256, the default, which the embedded corpus
//! needs), or a BPE tokenizer through the `tokenizers` crate: a HF `tokenizer.json`, or GPT-2's
//! byte-level BPE from a `vocab.json` + `merges.txt` pair (what OpenAI's GPT-2 encoder computes).
//!
//! The config's `tokenizer` field (and `--tokenizer PATH`) names a `tokenizer.json`, or a folder
//! holding one or a `vocab.json` + `merges.txt` pair; `"bytes"` is the byte-level default. A
//! checkpoint of a BPE run carries the tokenizer as `tokenizer.json` (with a
//! `tokenizer_config.json` for HF's `AutoTokenizer`), so `sample`, `eval` and HF read it from
//! the checkpoint folder alone.

use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

/// The file name of the tokenizer inside a checkpoint (HF's).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The file HF's `AutoTokenizer` reads beside [`TOKENIZER_FILE`].
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// GPT-2's end-of-text token, which separates documents.
pub const GPT2_EOT: &str = "<|endoftext|>";
/// The config value of the byte-level tokenizer.
pub const BYTES: &str = "bytes";

/// A tokenizer: bytes or BPE.
#[derive(Clone)]
pub enum Tokenizer {
    /// Each byte is a token (vocabulary 256); decoding is lossy UTF-8.
    Bytes,
    /// A `tokenizers` tokenizer read from `source`.
    Bpe {
        /// The tokenizer.
        inner: Box<HfTokenizer>,
        /// Where it was read from (for messages).
        source: PathBuf,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Tokenizer {
    /// The tokenizer a config value names: [`BYTES`] (or empty), a `tokenizer.json`, or a folder
    /// with a `tokenizer.json` or a `vocab.json` + `merges.txt` pair.
    pub fn from_spec(spec: &str) -> Result<Self> {
        if spec.is_empty() || spec == BYTES {
            return Ok(Tokenizer::Bytes);
        }
        Self::load(Path::new(spec))
    }

    /// Reads a `tokenizer.json`, or a folder holding one or a GPT-2 `vocab.json` + `merges.txt`.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| TrainError::invalid("tokenizer", path.display(), reason);
        if path.is_dir() {
            let json = path.join(TOKENIZER_FILE);
            if json.is_file() {
                return Self::load(&json);
            }
            let (vocab, merges) = (path.join("vocab.json"), path.join("merges.txt"));
            if vocab.is_file() && merges.is_file() {
                return Self::gpt2_byte_level(&vocab, &merges);
            }
            return Err(bad(format!(
                "the folder has neither a {TOKENIZER_FILE} nor a vocab.json + merges.txt pair"
            )));
        }
        if !path.is_file() {
            return Err(bad("no such file or folder".into()));
        }
        let inner = HfTokenizer::from_file(path)
            .map_err(|e| bad(format!("not a readable tokenizer.json: {e}")))?;
        Ok(Tokenizer::Bpe {
            inner: Box::new(inner),
            source: path.to_path_buf(),
        })
    }

    /// GPT-2's byte-level BPE (as HF's `GPT2TokenizerFast` builds it) from OpenAI's vocabulary
    /// and merges (`encoder.json`/`vocab.json`, `vocab.bpe`/`merges.txt`), with the
    /// `<|endoftext|>` special token.
    pub fn gpt2_byte_level(vocab: &Path, merges: &Path) -> Result<Self> {
        let bad = |reason: String| TrainError::invalid("tokenizer", vocab.display(), reason);
        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("{} is not a UTF-8 path", p.display())))
        };
        let bpe = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
            .build()
            .map_err(|e| {
                bad(format!(
                    "not a BPE vocabulary + merges pair ({}): {e}",
                    merges.display()
                ))
            })?;
        let mut inner = HfTokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(false, false, true)))
            .with_decoder(Some(ByteLevel::default()));
        inner
            .add_special_tokens([AddedToken::from(GPT2_EOT, true)])
            .map_err(|e| bad(format!("adding {GPT2_EOT}: {e}")))?;
        Ok(Tokenizer::Bpe {
            inner: Box::new(inner),
            source: vocab.to_path_buf(),
        })
    }

    /// Token ids the model must have (the tokenizer's vocabulary with its added tokens).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Bpe { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// The end-of-text token that separates documents, if the tokenizer has one
    /// (`<|endoftext|>`, else `</s>` or `<eos>`).
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Bpe { inner, .. } => [GPT2_EOT, "</s>", "<eos>", "<|end_of_text|>"]
                .iter()
                .find_map(|t| inner.token_to_id(t)),
        }
    }

    /// The ids of `text`, without special tokens added (the text's own `<|endoftext|>` is
    /// kept as that token).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Bpe { inner, source } => inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TrainError::invalid("tokenizer", source.display(), e.to_string())),
        }
    }

    /// The text of `ids` (special tokens included); ids beyond the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let out_of_range = || {
            ids.iter()
                .find(|&&i| i as usize >= self.vocab_size())
                .map(|&i| {
                    TrainError::invalid(
                        "token id",
                        i,
                        format!("beyond the vocabulary of {}", self.vocab_size()),
                    )
                })
        };
        if let Some(e) = out_of_range() {
            return Err(e);
        }
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Bpe { inner, source } => inner
                .decode(ids, false)
                .map_err(|e| TrainError::invalid("tokenizer", source.display(), e.to_string())),
        }
    }

    /// One line for the run summary.
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes (vocabulary 256)".into(),
            Tokenizer::Bpe { source, .. } => {
                format!("{} (vocabulary {})", source.display(), self.vocab_size())
            }
        }
    }

    /// Writes `tokenizer.json` and HF's `tokenizer_config.json` into `dir` (a BPE tokenizer;
    /// bytes write nothing), synced.
    pub fn save_into(&self, dir: &Path) -> Result<()> {
        let Tokenizer::Bpe { inner, .. } = self else {
            return Ok(());
        };
        let path = dir.join(TOKENIZER_FILE);
        let json = inner
            .to_string(false)
            .map_err(|e| TrainError::invalid("tokenizer", path.display(), e.to_string()))?;
        crate::fsutil::write_synced(&path, json.as_bytes())?;
        let eot = self.eot().and_then(|id| inner.id_to_token(id));
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1_000_000_000_000_000_000u64,
            "clean_up_tokenization_spaces": false,
        });
        if let Some(eot) = eot {
            for key in ["bos_token", "eos_token", "unk_token"] {
                config[key] = serde_json::Value::String(eot.clone());
            }
        }
        let text = serde_json::to_string_pretty(&config).map_err(|source| TrainError::Json {
            path: dir.join(TOKENIZER_CONFIG_FILE),
            source,
        })?;
        crate::fsutil::write_synced(&dir.join(TOKENIZER_CONFIG_FILE), text.as_bytes())
    }

    /// The tokenizer a model folder holds (`tokenizer.json`, or GPT-2's `vocab.json` +
    /// `merges.txt`; a `merges.txt` without its `vocab.json` is an error), if any.
    pub fn in_folder(dir: &Path) -> Result<Option<Self>> {
        let has = dir.join(TOKENIZER_FILE).is_file() || dir.join("merges.txt").is_file();
        has.then(|| Self::load(dir)).transpose()
    }

    /// The tokenizer a checkpoint carries, or bytes when it has none.
    pub fn of_checkpoint(dir: &Path) -> Result<Self> {
        Ok(Self::in_folder(dir)?.unwrap_or(Tokenizer::Bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_name_their_vocabulary() {
        let t = Tokenizer::from_spec(BYTES).unwrap();
        let ids = t.encode("hé\n").unwrap();
        assert_eq!(ids, vec![104, 195, 169, 10]);
        assert_eq!(t.decode(&ids).unwrap(), "hé\n");
        assert_eq!(t.vocab_size(), 256);
        assert!(t.decode(&[300]).unwrap_err().to_string().contains("300"));
    }

    #[test]
    fn a_missing_tokenizer_is_an_error_naming_the_field_and_path() {
        let e = Tokenizer::from_spec("/no/such/tokenizer.json").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("tokenizer") && msg.contains("/no/such"),
            "{msg}"
        );
        let dir = std::env::temp_dir().join(format!("mp-tok-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = Tokenizer::load(&dir).unwrap_err().to_string();
        assert!(msg.contains("merges.txt"), "{msg}");
        std::fs::write(dir.join(TOKENIZER_FILE), "{not json").unwrap();
        let msg = Tokenizer::load(&dir).unwrap_err().to_string();
        assert!(msg.contains("not a readable tokenizer.json"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
