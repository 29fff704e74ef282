//! Saved optimizer state: the tensors (moments, momentum) as safetensors, the scalars (step
//! count, hyper-parameters, groups) as JSON.

use crate::{OptimError, ParamGroup, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The scalar part of a saved state (the JSON file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// Which optimizer saved it (`"adamw"`, `"sgd"`).
    pub optimizer: String,
    /// Elements of the parameter arena.
    pub len: usize,
    /// Real (not skipped) steps taken.
    pub step: u64,
    /// The hyper-parameters, as the optimizer's config serializes.
    pub config: serde_json::Value,
    /// The parameter groups.
    pub groups: Vec<ParamGroup>,
}

/// A complete optimizer state: [`StateMeta`] plus named flat FP32 tensors of `meta.len`
/// elements (AdamW: `exp_avg`, `exp_avg_sq`; SGD: `momentum_buffer`, PyTorch's names).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The scalars.
    pub meta: StateMeta,
    /// The tensors, in a fixed order.
    pub tensors: Vec<(String, Vec<f32>)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OptimError + '_ {
    move |source| OptimError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

impl OptimizerState {
    /// The state of the elements `shard` of the arena (a ZeRO shard): every tensor cut to it,
    /// the groups restricted to it ([`ParamGroup::restrict`]), `meta.len` its length.
    /// Panics if `shard` is not inside the arena.
    pub fn shard(&self, shard: std::ops::Range<usize>) -> OptimizerState {
        OptimizerState {
            meta: StateMeta {
                len: shard.len(),
                groups: ParamGroup::restrict(&self.meta.groups, shard.clone()),
                ..self.meta.clone()
            },
            tensors: self
                .tensors
                .iter()
                .map(|(name, t)| (name.clone(), t[shard.clone()].to_vec()))
                .collect(),
        }
    }

    /// The scalars as pretty JSON.
    pub fn meta_json(&self) -> String {
        serde_json::to_string_pretty(&self.meta).expect("plain data always serializes")
    }

    /// The tensors as a safetensors file (F32, shape `[len]`).
    pub fn tensors_safetensors(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(name, data)| {
                TensorView::new(Dtype::F32, vec![data.len()], bytemuck::cast_slice(data))
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OptimError::Format(format!("safetensors: {e}")))?;
        safetensors::serialize(views, None)
            .map_err(|e| OptimError::Format(format!("safetensors: {e}")))
    }

    /// Parses the two parts written by [`meta_json`](Self::meta_json) and
    /// [`tensors_safetensors`](Self::tensors_safetensors). Every tensor must be F32 and 1-D.
    pub fn from_parts(meta_json: &str, safetensors: &[u8]) -> Result<Self> {
        let meta: StateMeta = serde_json::from_str(meta_json)
            .map_err(|e| OptimError::Format(format!("JSON: {e}")))?;
        let st = SafeTensors::deserialize(safetensors)
            .map_err(|e| OptimError::Format(format!("safetensors: {e}")))?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let t = st
                .tensor(&name)
                .map_err(|e| OptimError::Format(format!("safetensors: {e}")))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 1 {
                return Err(OptimError::Format(format!(
                    "tensor {name} is {:?} of shape {:?}; optimizer state is 1-D F32",
                    t.dtype(),
                    t.shape()
                )));
            }
            let data: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.push((name, data));
        }
        Ok(OptimizerState { meta, tensors })
    }

    /// Writes `<stem>.json` and `<stem>.safetensors`.
    pub fn save(&self, stem: impl AsRef<Path>) -> Result<()> {
        let stem = stem.as_ref();
        let (j, s) = (with_ext(stem, "json"), with_ext(stem, "safetensors"));
        std::fs::write(&s, self.tensors_safetensors()?).map_err(io(&s))?;
        std::fs::write(&j, self.meta_json()).map_err(io(&j))?;
        Ok(())
    }

    /// Reads what [`save`](Self::save) wrote.
    pub fn load(stem: impl AsRef<Path>) -> Result<Self> {
        let stem = stem.as_ref();
        let (j, s) = (with_ext(stem, "json"), with_ext(stem, "safetensors"));
        let meta = std::fs::read_to_string(&j).map_err(io(&j))?;
        let tensors = std::fs::read(&s).map_err(io(&s))?;
        Self::from_parts(&meta, &tensors)
    }

    /// The tensor `name`, checked to have `len` elements.
    pub(crate) fn tensor(&self, optimizer: &'static str, name: &str, len: usize) -> Result<&[f32]> {
        let t = self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| OptimError::StateMismatch {
                optimizer,
                msg: format!("tensor {name} is missing"),
            })?;
        if t.len() != len {
            return Err(OptimError::StateMismatch {
                optimizer,
                msg: format!("tensor {name} has {} elements, expected {len}", t.len()),
            });
        }
        Ok(t)
    }

    /// Checks the saved optimizer kind, arena length and group layout against the live ones.
    pub(crate) fn check_meta(
        &self,
        optimizer: &'static str,
        len: usize,
        groups: &[ParamGroup],
    ) -> Result<()> {
        let m = &self.meta;
        let err = |msg: String| OptimError::StateMismatch { optimizer, msg };
        if m.optimizer != optimizer {
            return Err(err(format!("the state was saved by {:?}", m.optimizer)));
        }
        if m.len != len {
            return Err(err(format!(
                "the state is for {} parameters, this optimizer has {len}",
                m.len
            )));
        }
        let ranges = |g: &[ParamGroup]| g.iter().map(|g| g.range.clone()).collect::<Vec<_>>();
        if ranges(&m.groups) != ranges(groups) {
            return Err(err(format!(
                "parameter groups differ: saved {:?}, live {:?}",
                ranges(&m.groups),
                ranges(groups)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> OptimizerState {
        OptimizerState {
            meta: StateMeta {
                optimizer: "adamw".into(),
                len: 3,
                step: 7,
                config: serde_json::json!({"lr": 0.1}),
                groups: vec![ParamGroup::new(0..3, 0.1)],
            },
            tensors: vec![
                ("exp_avg".into(), vec![1.0, -2.0, 3.5]),
                ("exp_avg_sq".into(), vec![0.5, 0.25, f32::MIN_POSITIVE]),
            ],
        }
    }

    #[test]
    fn parts_round_trip_bit_exact() {
        let s = state();
        let back =
            OptimizerState::from_parts(&s.meta_json(), &s.tensors_safetensors().unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn files_round_trip_and_missing_files_error() {
        let dir = std::env::temp_dir().join(format!("mp-optim-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stem = dir.join("opt");
        state().save(&stem).unwrap();
        assert_eq!(OptimizerState::load(&stem).unwrap(), state());
        let e = OptimizerState::load(dir.join("nope")).unwrap_err();
        assert!(matches!(e, OptimError::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatches_are_named() {
        let s = state();
        assert!(
            s.check_meta("adamw", 3, &[ParamGroup::new(0..3, 0.0)])
                .is_ok()
        );
        let e = s.check_meta("sgd", 3, &[]).unwrap_err().to_string();
        assert!(e.contains("saved by \"adamw\""), "{e}");
        let e = s.check_meta("adamw", 4, &[]).unwrap_err().to_string();
        assert!(e.contains("3 parameters"), "{e}");
        let e = s
            .check_meta("adamw", 3, &[ParamGroup::new(0..2, 0.0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("groups differ"), "{e}");
        let e = s
            .tensor("adamw", "momentum_buffer", 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("momentum_buffer is missing"), "{e}");
        let e = s.tensor("adamw", "exp_avg", 4).unwrap_err().to_string();
        assert!(e.contains("has 3 elements"), "{e}");
        assert!(OptimizerState::from_parts("{", &[]).is_err());
        assert!(OptimizerState::from_parts(&s.meta_json(), b"garbage").is_err());
    }
}
