//! TensorBoard event files: the run's scalars (train loss, learning rate, loss scale, gradient
//! norm, tokens/s, skipped steps; validation loss and accuracy) as `tensorboard` and `tbparse`
//! read them, beside `metrics.jsonl`.
//!
//! An event file (`events.out.tfevents.<unix time>.<host>.<pid>`) is a sequence of TFRecords
//! (`u64` length, masked CRC32C of the length, the bytes, masked CRC32C of the bytes), each an
//! `Event` protocol buffer: the first says `file_version = "brain.Event:2"`, the others carry
//! a `Summary` of `simple_value` scalars at a step. A resumed run starts a new file with a
//! `SessionLog START` at its first step, which tells TensorBoard to drop the older files' points
//! from that step on (the steps the resumed run replays). The few protobuf fields are written
//! by hand: a dependency on a protobuf code generator would be larger than this file.

use crate::error::{Result, TrainError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The prefix of every event file's name (what TensorBoard looks for).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// TFRecord's CRC: CRC32C, rotated and offset so that a CRC of CRCs stays well mixed.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Protobuf wire helpers (proto3, the fields `Event`, `Summary` and `SessionLog` use).
mod proto {
    /// A varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A field key: number and wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
    pub fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, u64::from(field) << 3 | u64::from(wire));
    }

    /// A length-delimited field (bytes, string or message).
    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// `Event { wall_time = 1; step = 2; }` followed by the payload field (already encoded).
fn event(wall_time: f64, step: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(16 + payload.len());
    proto::key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    proto::key(&mut e, 2, 0);
    proto::varint(&mut e, step);
    e.extend_from_slice(payload);
    e
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn host() -> String {
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Appends events to one event file, flushed after every write.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// Starts a new event file in `dir` whose run begins at `start_step` (a resumed run's
    /// step: a `SessionLog START` after it supersedes the older files' later points).
    pub fn create(dir: &Path, start_step: u64) -> Result<Self> {
        let wall = now();
        let path = dir.join(format!(
            "{FILE_PREFIX}{}.{}.{}",
            wall as u64,
            host(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(TrainError::io("creating", &path))?;
        let mut w = EventWriter {
            path,
            file: std::io::BufWriter::new(file),
        };
        let mut version = Vec::new();
        proto::bytes(&mut version, 3, b"brain.Event:2");
        w.record(&event(wall, 0, &version))?;
        if start_step > 0 {
            // SessionLog { status = START (1) } in Event field 7, at the first step this run
            // logs: TensorBoard drops the points at and after it from the older files
            let mut log = Vec::new();
            proto::key(&mut log, 1, 0);
            proto::varint(&mut log, 1);
            let mut payload = Vec::new();
            proto::bytes(&mut payload, 7, &log);
            w.record(&event(wall, start_step + 1, &payload))?;
        }
        w.flush()?;
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the scalars `(tag, value)` of `step` as one event (a non-finite value is
    /// written as it is; TensorBoard shows it as NaN/inf).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            // Summary.Value { tag = 1; simple_value = 2 (float) }
            let mut value = Vec::new();
            proto::bytes(&mut value, 1, tag.as_bytes());
            proto::key(&mut value, 2, 5);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            proto::bytes(&mut summary, 1, &value);
        }
        let mut payload = Vec::new();
        proto::bytes(&mut payload, 5, &summary);
        self.record(&event(now(), step, &payload))?;
        self.flush()
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut r = Vec::with_capacity(data.len() + 16);
        r.extend_from_slice(&len);
        r.extend_from_slice(&masked_crc(&len).to_le_bytes());
        r.extend_from_slice(data);
        r.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&r)
            .map_err(TrainError::io("writing", &self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(TrainError::io("writing", &self.path))
    }
}

/// Whether `name` is an event file's name.
pub fn is_event_file(name: &str) -> bool {
    name.starts_with(FILE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the records back, checking both CRCs of each.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(data));
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value), then masked
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn events_are_framed_records_with_the_scalars() {
        let dir = std::env::temp_dir().join(format!("mp-tb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir, 7).unwrap();
        w.scalars(8, &[("train/loss", 1.5), ("train/learning_rate", 3e-4)])
            .unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let recs = records(&bytes);
        assert_eq!(recs.len(), 3, "version, session start, one summary");
        assert!(recs[0].windows(13).any(|w| w == b"brain.Event:2"));
        let summary = &recs[2];
        assert!(summary.windows(10).any(|w| w == b"train/loss"));
        assert!(summary.windows(4).any(|w| w == 1.5f32.to_le_bytes()));
        // step 8 as a varint after key 0x10
        assert!(summary.windows(2).any(|w| w == [0x10, 8]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
