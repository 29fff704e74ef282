//! Token shards in llm.c's format, memory-mapped and read window by window.
//!
//! A shard is a header of 256 little-endian `i32` (magic [`MAGIC`], version, token count; the
//! rest zero), then the tokens: `u16` little-endian in version 1 (GPT-2's 50257 ids), `u32` in
//! version 2 (vocabularies beyond 65536). llm.c's `dev/data/*.py` scripts write them (shard 0
//! of a dataset is its validation split, named `*_val_*`); `mp-train tokenize` writes the same.
//! A shard is never loaded whole: [`Shard::read`] copies one window out of the mapping and
//! checks its ids against the model's vocabulary, so a bad id is an error naming the file and
//! the byte offset.

use crate::error::{Result, TrainError};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

/// The first header word of every shard.
pub const MAGIC: i32 = 20240520;
/// Header size in bytes (256 `i32`).
pub const HEADER_BYTES: usize = 1024;

/// One memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    tokens: usize,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Shard({}, {} tokens of {} bytes)",
            self.path.display(),
            self.tokens,
            self.width
        )
    }
}

fn bad(path: &Path, reason: String) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        reason,
    }
}

/// The header word `i` of `bytes` (which hold at least the header).
fn word(bytes: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

impl Shard {
    /// Maps `path` and checks its header against its size.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(TrainError::io("opening shard", path))?;
        // SAFETY: the mapping is read-only; a shard changed by another process while mapped
        // can only give wrong token values (checked against the vocabulary), not unsoundness
        // in this process beyond what reading a file gives.
        let map = unsafe { Mmap::map(&file) }.map_err(TrainError::io("mapping shard", path))?;
        if map.len() < HEADER_BYTES {
            return Err(bad(
                path,
                format!(
                    "{} bytes: shorter than the {HEADER_BYTES}-byte shard header (truncated, \
                     or not a token shard)",
                    map.len()
                ),
            ));
        }
        let magic = word(&map, 0);
        if magic != MAGIC {
            return Err(bad(
                path,
                format!(
                    "offset 0: magic {magic}, expected {MAGIC} (not an llm.c token shard; a \
                     text file goes in data.path alone)"
                ),
            ));
        }
        let width = match word(&map, 1) {
            1 => 2,
            2 => 4,
            v => {
                return Err(bad(
                    path,
                    format!("offset 4: version {v}, expected 1 (u16 tokens) or 2 (u32 tokens)"),
                ));
            }
        };
        let count = word(&map, 2);
        let Ok(tokens) = usize::try_from(count) else {
            return Err(bad(path, format!("offset 8: token count {count} < 0")));
        };
        let want = HEADER_BYTES + tokens * width;
        if map.len() != want {
            return Err(bad(
                path,
                format!(
                    "{} bytes, but the header's {tokens} tokens of {width} bytes need {want}: \
                     {}",
                    map.len(),
                    if map.len() < want {
                        "truncated"
                    } else {
                        "trailing bytes"
                    }
                ),
            ));
        }
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            width,
            tokens,
        })
    }

    /// Whether `path` starts with the shard magic (a sniff; [`Shard::open`] checks the rest).
    pub fn sniff(path: &Path) -> bool {
        use std::io::Read;
        let mut head = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && i32::from_le_bytes(head) == MAGIC
    }

    /// The shard's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens in the shard.
    pub fn len(&self) -> usize {
        self.tokens
    }

    /// Whether the shard holds no token.
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }

    /// Appends tokens `start..start + n` to `out`, failing (file, byte offset) on an id not
    /// below `vocab`.
    pub fn read(&self, start: usize, n: usize, vocab: usize, out: &mut Vec<u32>) -> Result<()> {
        assert!(start + n <= self.tokens, "window beyond the shard");
        let from = HEADER_BYTES + start * self.width;
        let bytes = &self.map[from..from + n * self.width];
        let before = out.len();
        match self.width {
            2 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))),
            ),
            _ => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
        if let Some(i) = out[before..].iter().position(|&id| id as usize >= vocab) {
            return Err(bad(
                &self.path,
                format!(
                    "offset {}: token id {} is outside the model's vocabulary of {vocab} \
                     (model.vocab_size, or the tokenizer's)",
                    from + i * self.width,
                    out[before + i]
                ),
            ));
        }
        Ok(())
    }
}

/// Writes `tokens` as one shard at `path` atomically (a temporary file, synced, renamed):
/// version 1 (`u16`) when every id fits, else version 2 (`u32`).
pub fn write(path: &Path, tokens: &[u32]) -> Result<()> {
    let count = i32::try_from(tokens.len()).map_err(|_| {
        bad(
            path,
            format!("{} tokens: more than a shard's i32 count", tokens.len()),
        )
    })?;
    let wide = tokens.iter().any(|&t| t > u32::from(u16::MAX));
    let mut bytes = Vec::with_capacity(HEADER_BYTES + tokens.len() * if wide { 4 } else { 2 });
    for w in [MAGIC, if wide { 2 } else { 1 }, count] {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    bytes.resize(HEADER_BYTES, 0);
    for &t in tokens {
        if wide {
            bytes.extend_from_slice(&t.to_le_bytes());
        } else {
            bytes.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
    crate::fsutil::write_atomic(path, &bytes)
}

/// The shard files `spec` names: one file, every `*.bin` of a folder, or the files a glob
/// pattern (`data/fineweb_*.bin`) matches; sorted by name.
pub fn resolve(spec: &Path) -> Result<Vec<PathBuf>> {
    let none = |what: &str| {
        bad(
            spec,
            format!(
                "{what} (data.path names a text file, a token shard, a folder of shards or a glob)"
            ),
        )
    };
    let mut files: Vec<PathBuf> = if spec.is_file() {
        vec![spec.to_path_buf()]
    } else if spec.is_dir() {
        std::fs::read_dir(spec)
            .map_err(TrainError::io("listing", spec))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
            .collect()
    } else {
        let pattern = spec.to_string_lossy();
        if !pattern.contains(['*', '?', '[']) {
            return Err(none("no such file or folder"));
        }
        glob::glob(&pattern)
            .map_err(|e| none(&format!("a bad glob pattern: {e}")))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect()
    };
    if files.is_empty() {
        return Err(none("no shard found"));
    }
    files.sort();
    Ok(files)
}

/// Whether a shard's file name marks it as validation data (llm.c: `*_val_*`).
pub fn is_validation(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().contains("_val"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mp-shards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shards_round_trip_in_both_widths() {
        let d = scratch("round");
        for (name, tokens) in [
            ("narrow.bin", vec![0u32, 1, 50256, 65535]),
            ("wide.bin", vec![0u32, 70000, 128255]),
        ] {
            let p = d.join(name);
            write(&p, &tokens).unwrap();
            assert!(Shard::sniff(&p));
            let s = Shard::open(&p).unwrap();
            assert_eq!(s.len(), tokens.len());
            let mut out = Vec::new();
            s.read(1, tokens.len() - 1, 1 << 20, &mut out).unwrap();
            assert_eq!(out, tokens[1..]);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_shards_name_the_file_and_the_offset() {
        let d = scratch("bad");
        let p = d.join("s.bin");
        write(&p, &[1, 2, 3, 300]).unwrap();
        let s = Shard::open(&p).unwrap();
        let msg = s.read(0, 4, 256, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            msg.contains("s.bin") && msg.contains("offset 1030"),
            "{msg}"
        );
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 1]).unwrap();
        let msg = Shard::open(&p).unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
        let mut wrong = full.clone();
        wrong[0] ^= 1;
        std::fs::write(&p, &wrong).unwrap();
        let msg = Shard::open(&p).unwrap_err().to_string();
        assert!(msg.contains("offset 0: magic"), "{msg}");
        std::fs::write(&p, b"short").unwrap();
        assert!(Shard::open(&p).unwrap_err().to_string().contains("header"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn folders_and_globs_resolve_sorted() {
        let d = scratch("glob");
        for n in [
            "x_train_000002.bin",
            "x_val_000000.bin",
            "x_train_000001.bin",
        ] {
            write(&d.join(n), &[1, 2]).unwrap();
        }
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(resolve(&d).unwrap()),
            [
                "x_train_000001.bin",
                "x_train_000002.bin",
                "x_val_000000.bin"
            ]
        );
        assert_eq!(
            names(resolve(&d.join("x_train_*.bin")).unwrap()),
            ["x_train_000001.bin", "x_train_000002.bin"]
        );
        assert!(resolve(&d.join("nothing_*.bin")).is_err());
        assert!(is_validation(&d.join("x_val_000000.bin")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
