//! Precision health: where in the model a number format would lose information, per tensor.
//!
//! At every logged step of a run with `precision_health = true` (on in `compare`), for every
//! parameter tensor, [`tensor_formats`] gives the fraction of its values that would underflow to
//! zero, become subnormal, or overflow if stored in FP16, BF16, FP8 E4M3 and FP8 E5M2: the
//! gradients as the backward produced them (at the step's loss scale), the FP32 master weights
//! at scale 1, and, for FP8, also after per-tensor amax scaling (`e4m3_amax`, `e5m2_amax`: the
//! tensor multiplied by `format max / amax`, what an FP8 recipe does). For the weights,
//! [`lost_update_fraction`] gives the fraction of this step's optimizer update that would
//! vanish if it were applied to BF16/FP16 weights directly (`round16(w16 + Δ) == w16`): the
//! reason FP32 master weights exist.
//!
//! Fractions are over all the tensor's elements. Records go to `precision_health.jsonl` (one per
//! logged step), drawn as `precision_health.png` (tensors × steps, FP16 gradient underflow by
//! default, [`heat_map`]).
//!
//! The activations the step saves for its backward pass (the first micro-batch's, listed by
//! [`mp_autograd::Tape::saved_activations`] just before the backward runs, named by layer and
//! op) get the same format fractions at scale 1 ([`activations`]).
//!
//! The statistics are counted where the tensors live, at logged steps only: the backend's
//! [`OptimOps::range_counts`] and [`OptimOps::lost_update_counts`] (one read pass over each
//! arena per question, a kernel on CUDA and wgpu, in place on the CPU), and only the counts
//! come back to the host. The weights before a logged step are a device copy.

use crate::error::{Result, TrainError};
use mp_autograd::ParamLayout;
use mp_dtype::DType;
use mp_kernels::prelude::*;
use mp_kernels::{RangeCounts, RangeQuery, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The formats looked at, by the names the records use.
pub const FORMATS: [(&str, DType); 4] = [
    ("fp16", DType::F16),
    ("bf16", DType::BF16),
    ("e4m3", DType::F8E4M3),
    ("e5m2", DType::F8E5M2),
];

/// How a tensor would fare in one format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fractions {
    /// Non-zero values that round to zero.
    pub underflow: f64,
    /// Values that round to a non-zero subnormal.
    pub subnormal: f64,
    /// Finite values that round beyond the format's largest finite value.
    pub overflow: f64,
}

/// The statistic `precision_health.png` draws: FP16 underflow of the gradients.
pub const DEFAULT_STATISTIC: &str = "grad.fp16.underflow";

/// One tensor at one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorHealth {
    /// The parameter's name (HF's).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub numel: usize,
    /// The gradient, as stored by the backward (at the step's loss scale), per format.
    pub grad: BTreeMap<String, Fractions>,
    /// The FP32 master weights, per format.
    pub weight: BTreeMap<String, Fractions>,
    /// `bf16` and `fp16`: the fraction of this step's non-zero updates that 16-bit weights
    /// would lose (absent on a skipped step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_update_fraction: Option<BTreeMap<String, f64>>,
}

/// One saved activation at one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationHealth {
    /// `scope/op.k` (see [`mp_autograd::SavedActivation::name`]): `model.layers.0/linear.2`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub numel: usize,
    /// The dtype the step stores it in.
    pub dtype: String,
    /// Its values at scale 1, per format (as [`tensor_formats`]).
    pub formats: BTreeMap<String, Fractions>,
}

/// One logged step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Optimizer step.
    pub step: u64,
    /// The loss scale the gradients carry.
    pub loss_scale: f32,
    /// Every parameter tensor, in arena order.
    pub tensors: Vec<TensorHealth>,
    /// The activations the step's first micro-batch saved for its backward pass, in
    /// recording order.
    #[serde(default)]
    pub activations: Vec<ActivationHealth>,
}

/// The health of every activation `tape` has saved for its backward pass (call it between
/// the forward and the backward), counted on the tape's backend.
pub fn activations<B: Backend>(tape: &mp_autograd::Tape<'_, B>) -> Result<Vec<ActivationHealth>> {
    let be = tape.backend();
    tape.saved_activations()
        .into_iter()
        .map(|a| {
            let formats = formats_with(&[(0, a.view.len)], |q| be.range_counts(a.view, q))?;
            Ok(ActivationHealth {
                numel: a.view.len,
                formats: formats.into_iter().next().unwrap_or_default(),
                name: a.name,
                shape: a.shape,
                dtype: a.dtype.to_string(),
            })
        })
        .collect()
}

/// How many finite values of `values`, multiplied by `scale` (in f32) and rounded to nearest
/// even into `dtype`, underflow to zero, become subnormal, or overflow: `(underflow,
/// subnormal, overflow)`.
pub fn format_counts(values: &[f32], dtype: DType, scale: f32) -> (u64, u64, u64) {
    let s = mp_dtype::range_stats(values, dtype, scale);
    (s.underflow_to_zero, s.subnormal, s.overflow)
}

fn fractions(c: &RangeCounts, numel: usize) -> Fractions {
    let n = numel.max(1) as f64;
    Fractions {
        underflow: c.underflow as f64 / n,
        subnormal: c.subnormal as f64 / n,
        overflow: c.overflow as f64 / n,
    }
}

/// The FP8 formats looked at after per-tensor amax scaling, by the names the records use.
const AMAX_FORMATS: [(&str, DType); 2] =
    [("e4m3_amax", DType::F8E4M3), ("e5m2_amax", DType::F8E5M2)];

/// The scale per-tensor amax scaling applies for `dtype` to a tensor whose largest finite
/// `|x|` is `amax`: `dtype max / amax` (1 for a tensor without a non-zero finite value).
fn scale_for(amax: f32, dtype: DType) -> f32 {
    if amax > 0.0 { dtype.max() / amax } else { 1.0 }
}

/// The scale per-tensor amax scaling applies for `dtype`: `dtype max / amax` (1 for a tensor
/// without a non-zero finite value).
pub fn amax_scale(values: &[f32], dtype: DType) -> f32 {
    scale_for(amax(values), dtype)
}

/// The fractions of every format of [`FORMATS`] (no scaling) and of FP8 after per-tensor amax
/// scaling, for each range `(offset, len)`, from `count` (a backend's
/// [`OptimOps::range_counts`] over the tensor's view): two calls, the second scaled by the
/// amax the first one found.
fn formats_with(
    ranges: &[(usize, usize)],
    mut count: impl FnMut(&[RangeQuery]) -> mp_kernels::Result<Vec<RangeCounts>>,
) -> Result<Vec<BTreeMap<String, Fractions>>> {
    let query = |(offset, len): (usize, usize), dtype, scale| RangeQuery {
        offset,
        len,
        dtype,
        scale,
    };
    let plain: Vec<RangeQuery> = ranges
        .iter()
        .flat_map(|&r| FORMATS.iter().map(move |&(_, d)| query(r, d, 1.0)))
        .collect();
    let plain = count(&plain)?;
    let amaxed: Vec<RangeQuery> = ranges
        .iter()
        .enumerate()
        .flat_map(|(k, &r)| {
            let amax = plain[k * FORMATS.len()].amax;
            AMAX_FORMATS
                .iter()
                .map(move |&(_, d)| query(r, d, scale_for(amax, d)))
        })
        .collect();
    let amaxed = count(&amaxed)?;
    Ok(ranges
        .iter()
        .enumerate()
        .map(|(k, &(_, len))| {
            let names = FORMATS
                .iter()
                .map(|f| f.0)
                .chain(AMAX_FORMATS.iter().map(|f| f.0));
            let counts = plain[k * FORMATS.len()..(k + 1) * FORMATS.len()]
                .iter()
                .chain(&amaxed[k * AMAX_FORMATS.len()..(k + 1) * AMAX_FORMATS.len()]);
            names
                .zip(counts)
                .map(|(n, c)| (n.to_string(), fractions(c, len)))
                .collect()
        })
        .collect())
}

/// The largest finite `|x|` of `values` (0 when none).
fn amax(values: &[f32]) -> f32 {
    values
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The fractions of `values` in every format of [`FORMATS`] (no scaling), and in FP8 after
/// per-tensor amax scaling (`e4m3_amax`, `e5m2_amax`), counted on the host: what
/// [`record`] counts on a backend.
///
/// The counts are [`mp_dtype::range_stats`]'s (the reference the backends' counts are tested
/// against).
pub fn tensor_formats(values: &[f32]) -> BTreeMap<String, Fractions> {
    let counts = |queries: &[RangeQuery]| {
        Ok(queries
            .iter()
            .map(|q| {
                let v = &values[q.offset..q.offset + q.len];
                let (underflow, subnormal, overflow) = format_counts(v, q.dtype, q.scale);
                RangeCounts {
                    underflow,
                    subnormal,
                    overflow,
                    amax: amax(v),
                }
            })
            .collect())
    };
    formats_with(&[(0, values.len())], counts)
        .map(|mut v| v.remove(0))
        .unwrap_or_default()
}

/// The fraction of the non-zero updates `after - before` that `dtype` weights would lose:
/// `w16 = round(before)` and `round(w16 + (after - before)) == w16` (round to nearest even).
/// 0 when nothing changed.
pub fn lost_update_fraction(before: &[f32], after: &[f32], dtype: DType) -> f64 {
    let (updated, lost) = lost_update_counts(before, after, dtype);
    ratio(lost, updated)
}

fn ratio(lost: u64, updated: u64) -> f64 {
    if updated == 0 {
        0.0
    } else {
        lost as f64 / updated as f64
    }
}

/// `(non-zero updates, updates lost)` of [`lost_update_fraction`] ([`mp_dtype::lost_update_counts`]).
pub fn lost_update_counts(before: &[f32], after: &[f32], dtype: DType) -> (u64, u64) {
    mp_dtype::lost_update_counts(before, after, dtype)
}

/// The 16-bit weight formats of the lost-update what-if, by the names the records use.
const UPDATE_FORMATS: [(&str, DType); 2] = [("bf16", DType::BF16), ("fp16", DType::F16)];

/// The record of one logged step, counted on `be`: every tensor of `layout`, from the
/// gradient arena `grads` (at `loss_scale`), the master weights `weights` after the step, and
/// those before it when the step updated them.
pub fn record<B: Backend>(
    be: &B,
    step: u64,
    loss_scale: f32,
    layout: &ParamLayout,
    grads: View<'_, B::Buffer>,
    weights: View<'_, B::Buffer>,
    before: Option<View<'_, B::Buffer>>,
) -> Result<HealthRecord> {
    let ranges: Vec<(usize, usize)> = layout
        .entries()
        .iter()
        .map(|e| (e.offset, e.numel()))
        .collect();
    let grad = formats_with(&ranges, |q| be.range_counts(grads, q))?;
    let weight = formats_with(&ranges, |q| be.range_counts(weights, q))?;
    let mut lost: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); ranges.len()];
    if let Some(before) = before {
        for (name, dtype) in UPDATE_FORMATS {
            let counts = be.lost_update_counts(before, weights, &ranges, dtype)?;
            for (m, c) in lost.iter_mut().zip(counts) {
                m.insert(name.to_string(), ratio(c.lost, c.updated));
            }
        }
    }
    let tensors = layout
        .entries()
        .iter()
        .zip(grad.into_iter().zip(weight))
        .zip(lost)
        .map(|((e, (grad, weight)), lost)| TensorHealth {
            name: e.name.clone(),
            shape: e.shape.clone(),
            numel: e.numel(),
            grad,
            weight,
            lost_update_fraction: before.map(|_| lost),
        })
        .collect();
    Ok(HealthRecord {
        step,
        loss_scale,
        tensors,
        activations: Vec::new(),
    })
}

/// A statistic of a tensor record, by its path: `grad.fp16.underflow`,
/// `weight.e4m3_amax.underflow`, `lost_update.bf16`, ...
pub fn statistic(t: &TensorHealth, path: &str) -> Option<f64> {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["lost_update", fmt] => t.lost_update_fraction.as_ref()?.get(*fmt).copied(),
        [which, fmt, field] => {
            let f = match *which {
                "grad" => t.grad.get(*fmt)?,
                "weight" => t.weight.get(*fmt)?,
                _ => return None,
            };
            match *field {
                "underflow" => Some(f.underflow),
                "subnormal" => Some(f.subnormal),
                "overflow" => Some(f.overflow),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The mean of `path` over the tensors `pick` selects, weighted by their elements, and over
/// `records` (`None` when no record has it).
pub fn mean_over(
    records: &[HealthRecord],
    path: &str,
    pick: impl Fn(&TensorHealth) -> bool,
) -> Option<f64> {
    let (mut sum, mut weight) = (0.0, 0.0);
    for t in records.iter().flat_map(|r| &r.tensors).filter(|t| pick(t)) {
        if let Some(v) = statistic(t, path) {
            sum += v * t.numel as f64;
            weight += t.numel as f64;
        }
    }
    (weight > 0.0).then(|| sum / weight)
}

/// A statistic of an activation record, by its path: `fp16.overflow`, `e4m3.underflow`,
/// `e4m3_amax.underflow`, ...
pub fn activation_statistic(a: &ActivationHealth, path: &str) -> Option<f64> {
    let (fmt, field) = path.split_once('.')?;
    let f = a.formats.get(fmt)?;
    match field {
        "underflow" => Some(f.underflow),
        "subnormal" => Some(f.subnormal),
        "overflow" => Some(f.overflow),
        _ => None,
    }
}

/// The `k` tensors with the largest mean of `path` over `records`, largest first.
pub fn worst_tensors(records: &[HealthRecord], path: &str, k: usize) -> Vec<(String, f64)> {
    let values = records.iter().flat_map(|r| &r.tensors).filter_map(|t| {
        let v = statistic(t, path)?;
        Some((t.name.as_str(), v))
    });
    worst(values, k)
}

/// The `k` saved activations with the largest mean of `path` (see
/// [`activation_statistic`]) over `records`, largest first.
pub fn worst_activations(records: &[HealthRecord], path: &str, k: usize) -> Vec<(String, f64)> {
    let values = records.iter().flat_map(|r| &r.activations).filter_map(|a| {
        let v = activation_statistic(a, path)?;
        Some((a.name.as_str(), v))
    });
    worst(values, k)
}

/// The `k` names with the largest mean value, largest first (ties by name).
fn worst<'r>(values: impl Iterator<Item = (&'r str, f64)>, k: usize) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64, u32)> = Vec::new();
    for (name, v) in values {
        match sums.iter_mut().find(|(n, _, _)| n == name) {
            Some(e) => {
                e.1 += v;
                e.2 += 1;
            }
            None => sums.push((name.to_string(), v, 1)),
        }
    }
    let mut means: Vec<(String, f64)> = sums
        .into_iter()
        .map(|(n, s, c)| (n, s / f64::from(c)))
        .collect();
    means.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    means.truncate(k);
    means
}

/// Draws `path` of every tensor (rows, arena order) at every record (columns) as a heat map
/// (white 0 to dark red 1) into a PNG.
pub fn heat_map(out: &Path, records: &[HealthRecord], path: &str, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: out.to_path_buf(),
        reason: e.to_string(),
    };
    let names: Vec<String> = records
        .first()
        .map(|r| r.tensors.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let (cols, rows) = (records.len().max(1), names.len().max(1));
    let text = crate::plot::font_available();
    let label_w = if text { 330 } else { 5 };
    let (w, h) = (1000u32, (140 + 18 * rows as u32).min(4000));
    let root = BitMapBackend::new(out, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut b = ChartBuilder::on(&root);
    b.margin(15)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(label_w);
    if text {
        b.caption(title, (crate::plot::FONT, 20));
    }
    let mut chart = b
        .build_cartesian_2d(0..cols, (0..rows).into_segmented())
        .map_err(|e| err(&e))?;
    if text {
        let steps: Vec<u64> = records.iter().map(|r| r.step).collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("logged step")
            .x_labels(cols.min(10))
            .y_labels(rows)
            .x_label_formatter(&|i| steps.get(*i).map(|s| s.to_string()).unwrap_or_default())
            .y_label_formatter(&|v| match v {
                // row `i` from the bottom is tensor `rows - 1 - i`
                SegmentValue::CenterOf(i) if *i < rows => names[rows - 1 - i].clone(),
                _ => String::new(),
            })
            .label_style((crate::plot::FONT, 12))
            .draw()
            .map_err(|e| err(&e))?;
    }
    let cells = records.iter().enumerate().flat_map(|(c, r)| {
        r.tensors.iter().enumerate().map(move |(i, t)| {
            let v = statistic(t, path).unwrap_or(0.0).clamp(0.0, 1.0);
            // white -> dark red; a touch of colour for any non-zero value
            let v = if v > 0.0 { 0.08 + 0.92 * v.sqrt() } else { 0.0 };
            let shade = |full: f64, to: f64| (full + (to - full) * v) as u8;
            let colour = RGBColor(shade(255.0, 150.0), shade(255.0, 0.0), shade(255.0, 0.0));
            let row = rows - 1 - i;
            Rectangle::new(
                [
                    (c, SegmentValue::Exact(row)),
                    (c + 1, SegmentValue::Exact(row + 1)),
                ],
                colour.filled(),
            )
        })
    });
    chart.draw_series(cells).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_count_each_case_of_each_format() {
        // 1e-9: zero in fp16 and both FP8s, a normal in bf16; 1e-6: an fp16 subnormal;
        // 7e4: fp16 overflow; 500: e4m3 overflow (max 448); 0 and NaN: counted nowhere
        let v = [1e-9f32, 1e-6, 7e4, 500.0, 1.0, 0.0, f32::NAN, -1e-9];
        let f = tensor_formats(&v);
        let n = v.len() as f64;
        assert_eq!(f["fp16"].underflow, 2.0 / n);
        assert_eq!(f["fp16"].subnormal, 1.0 / n);
        assert_eq!(f["fp16"].overflow, 1.0 / n);
        assert_eq!(f["bf16"], Fractions::default());
        assert_eq!(f["e4m3"].overflow, 2.0 / n);
        // amax scaling maps 7e4 to 448: nothing overflows, more underflows
        assert_eq!(f["e4m3_amax"].overflow, 0.0);
        assert!(f["e4m3_amax"].underflow >= f["e4m3"].underflow);
    }

    #[test]
    fn small_updates_are_lost_in_bf16_but_not_in_fp32() {
        let before = [1.0f32, 1.0, 1.0, 0.5];
        // bf16's ulp at 1.0 is 2^-7: 1e-3 is lost, 1e-2 is not; no update is not counted
        let after = [1.0 + 1e-3, 1.0 + 1e-2, 1.0, 0.5 - 1e-4];
        assert_eq!(
            lost_update_fraction(&before, &after, DType::BF16),
            2.0 / 3.0
        );
        assert_eq!(lost_update_fraction(&before, &after, DType::F16), 1.0 / 3.0);
        assert_eq!(lost_update_fraction(&before, &before, DType::BF16), 0.0);
    }

    #[test]
    fn statistics_are_found_by_path_and_ranked() {
        let mk = |name: &str, u: f64| TensorHealth {
            name: name.into(),
            shape: vec![1],
            numel: 1,
            grad: [(
                "fp16".to_string(),
                Fractions {
                    underflow: u,
                    ..Fractions::default()
                },
            )]
            .into(),
            weight: BTreeMap::new(),
            lost_update_fraction: Some([("bf16".to_string(), u / 2.0)].into()),
        };
        let r = |s| HealthRecord {
            step: s,
            loss_scale: 1.0,
            tensors: vec![mk("a", 0.1), mk("b", 0.4), mk("c", 0.2)],
            activations: vec![ActivationHealth {
                name: "l/gelu.0".into(),
                shape: vec![1],
                numel: 1,
                dtype: "bf16".into(),
                formats: mk("x", 0.3).grad,
            }],
        };
        let recs = [r(1), r(2)];
        assert_eq!(
            worst_activations(&recs, "fp16.underflow", 3),
            vec![("l/gelu.0".to_string(), 0.3)]
        );
        assert_eq!(activation_statistic(&recs[0].activations[0], "fp16"), None);
        assert_eq!(
            statistic(&recs[0].tensors[1], "lost_update.bf16"),
            Some(0.2)
        );
        assert_eq!(statistic(&recs[0].tensors[1], "grad.fp17.underflow"), None);
        let worst = worst_tensors(&recs, "grad.fp16.underflow", 2);
        assert_eq!(worst, vec![("b".to_string(), 0.4), ("c".to_string(), 0.2)]);
    }
}
