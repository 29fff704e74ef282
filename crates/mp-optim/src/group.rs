//! Parameter groups: ranges of the flat arena with their own weight decay and learning-rate
//! multiplier.

use crate::{OptimError, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// A range of the flat parameter arena that shares hyper-parameters (PyTorch's
/// `param_groups` entry). Elements of the arena that no group covers are never updated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// The elements of the arena in this group.
    pub range: Range<usize>,
    /// Weight decay of this group (AdamW: decoupled; SGD: L2 added to the gradient).
    pub weight_decay: f32,
    /// Learning-rate multiplier: the group steps with `lr * lr_mult`.
    pub lr_mult: f32,
}

impl ParamGroup {
    /// A group with weight decay `weight_decay` and the optimizer's learning rate.
    pub fn new(range: Range<usize>, weight_decay: f32) -> Self {
        ParamGroup {
            range,
            weight_decay,
            lr_mult: 1.0,
        }
    }

    /// The groups GPT-style training uses: tensors of two or more dimensions (weights of
    /// matmuls and embeddings) decay with `weight_decay`, 1-D tensors (biases, layer-norm
    /// gains) do not. `tensors` lists each parameter's range in the arena and its number of
    /// dimensions; neighbouring tensors of the same kind are merged into one range, so the
    /// usual layouts give a handful of groups.
    pub fn decay_by_ndim(
        tensors: impl IntoIterator<Item = (Range<usize>, usize)>,
        weight_decay: f32,
    ) -> Vec<ParamGroup> {
        let mut out: Vec<ParamGroup> = Vec::new();
        for (range, ndim) in tensors {
            let wd = if ndim >= 2 { weight_decay } else { 0.0 };
            match out.last_mut() {
                Some(last) if last.range.end == range.start && last.weight_decay == wd => {
                    last.range.end = range.end;
                }
                _ => out.push(ParamGroup::new(range, wd)),
            }
        }
        out
    }

    /// The groups of the elements `shard` of an arena (a ZeRO shard): each group cut to the
    /// shard and moved so that the shard starts at 0; groups outside it are dropped.
    pub fn restrict(groups: &[ParamGroup], shard: Range<usize>) -> Vec<ParamGroup> {
        groups
            .iter()
            .filter_map(|g| {
                let (start, end) = (g.range.start.max(shard.start), g.range.end.min(shard.end));
                (start < end).then(|| ParamGroup {
                    range: start - shard.start..end - shard.start,
                    ..g.clone()
                })
            })
            .collect()
    }
}

/// Checks that `groups` lie inside an arena of `len` elements and do not overlap, and that
/// their hyper-parameters are finite and non-negative.
pub(crate) fn validate(optimizer: &'static str, groups: &[ParamGroup], len: usize) -> Result<()> {
    let err = |msg: String| OptimError::InvalidGroups { optimizer, msg };
    let mut sorted: Vec<&ParamGroup> = groups.iter().collect();
    sorted.sort_by_key(|g| g.range.start);
    let mut end = 0;
    for g in sorted {
        let r = &g.range;
        if r.start > r.end || r.end > len {
            return Err(err(format!(
                "range {r:?} is not inside the arena of {len} elements"
            )));
        }
        if r.start < end && !r.is_empty() {
            return Err(err(format!("range {r:?} overlaps another group")));
        }
        if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
            return Err(err(format!(
                "range {r:?}: weight_decay {} must be finite and >= 0",
                g.weight_decay
            )));
        }
        if !(g.lr_mult.is_finite() && g.lr_mult >= 0.0) {
            return Err(err(format!(
                "range {r:?}: lr_mult {} must be finite and >= 0",
                g.lr_mult
            )));
        }
        end = end.max(r.end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_by_ndim_merges_neighbours() {
        let t = [(0..12, 2), (12..15, 1), (15..18, 1), (18..26, 3)];
        let g = ParamGroup::decay_by_ndim(t, 0.1);
        assert_eq!(
            g,
            vec![
                ParamGroup::new(0..12, 0.1),
                ParamGroup::new(12..18, 0.0),
                ParamGroup::new(18..26, 0.1)
            ]
        );
    }

    #[test]
    fn validation() {
        validate(
            "adamw",
            &[ParamGroup::new(5..10, 0.1), ParamGroup::new(0..5, 0.0)],
            10,
        )
        .unwrap();
        assert!(validate("adamw", &[ParamGroup::new(0..11, 0.1)], 10).is_err());
        assert!(
            validate(
                "adamw",
                &[ParamGroup::new(0..6, 0.1), ParamGroup::new(5..8, 0.1)],
                10
            )
            .is_err()
        );
        assert!(validate("adamw", &[ParamGroup::new(0..6, -0.1)], 10).is_err());
        let e = validate(
            "sgd",
            &[ParamGroup {
                lr_mult: f32::NAN,
                ..ParamGroup::new(0..6, 0.1)
            }],
            10,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("sgd: invalid parameter groups"),
            "{e}"
        );
    }
}
