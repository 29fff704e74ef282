//! Range statistics: how a slice of `f32` would fare in a narrower format after scaling.
//!
//! The primitive behind the precision-health report and the gradient-exponent histogram of
//! Micikevicius et al. (2018), "Mixed Precision Training".

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{DType, PARALLEL_THRESHOLD, f32_to_bits};

/// Counts for [`range_stats`]. Every non-zero finite input lands in exactly one of `overflow`,
/// `underflow_to_zero`, `subnormal` or none of them (a normal value of the format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStats {
    /// Finite `x` whose `x·scale` rounds (to nearest even) beyond the format's max: it would
    /// become ±inf (NaN for F8E4M3), or ±max when saturating. Includes products that overflow
    /// f32 itself, and NaN products (from a non-finite `scale`).
    pub overflow: u64,
    /// Non-zero finite `x` whose `x·scale` rounds to zero in the format.
    pub underflow_to_zero: u64,
    /// Finite `x` whose `x·scale` rounds to a non-zero subnormal of the format.
    pub subnormal: u64,
    /// Inputs that are already ±inf or NaN (not counted anywhere else).
    pub non_finite: u64,
    /// Inputs that are exactly ±0.
    pub zero: u64,
    /// All inputs.
    pub total: u64,
    /// Histogram of `floor(log2 |x·scale|)` over finite inputs, [`RangeStats::HISTOGRAM_BINS`]
    /// long: index 0 counts products equal to zero, index `1 + e − MIN_EXPONENT` counts binary
    /// exponent `e` for `e` in `MIN_EXPONENT..=MAX_EXPONENT`; the last bin (`e = 128`) holds
    /// products that overflowed f32 (or are NaN). Use [`RangeStats::exponent_count`].
    pub exponent_histogram: Vec<u64>,
}

impl RangeStats {
    /// The smallest binary exponent of a non-zero f32 (its smallest subnormal, `2^−149`).
    pub const MIN_EXPONENT: i32 = -149;
    /// The bin for products that overflowed f32 (exponent 128 and beyond).
    pub const MAX_EXPONENT: i32 = 128;
    /// Length of [`RangeStats::exponent_histogram`]: the zero bin plus one per exponent.
    pub const HISTOGRAM_BINS: usize = (Self::MAX_EXPONENT - Self::MIN_EXPONENT) as usize + 2;

    /// Empty statistics.
    pub fn new() -> Self {
        RangeStats {
            overflow: 0,
            underflow_to_zero: 0,
            subnormal: 0,
            non_finite: 0,
            zero: 0,
            total: 0,
            exponent_histogram: vec![0; Self::HISTOGRAM_BINS],
        }
    }

    /// How many finite products had binary exponent `e` (0 outside the histogram's range).
    pub fn exponent_count(&self, e: i32) -> u64 {
        if (Self::MIN_EXPONENT..=Self::MAX_EXPONENT).contains(&e) {
            self.exponent_histogram[1 + (e - Self::MIN_EXPONENT) as usize]
        } else {
            0
        }
    }

    /// How many finite inputs had a zero product (exact zeros and f32 underflow of `x·scale`).
    pub fn zero_product_count(&self) -> u64 {
        self.exponent_histogram[0]
    }

    /// Adds the counts of `other` (statistics of another slice) to `self`.
    pub fn merge(&mut self, other: &RangeStats) {
        self.overflow += other.overflow;
        self.underflow_to_zero += other.underflow_to_zero;
        self.subnormal += other.subnormal;
        self.non_finite += other.non_finite;
        self.zero += other.zero;
        self.total += other.total;
        for (a, b) in self
            .exponent_histogram
            .iter_mut()
            .zip(&other.exponent_histogram)
        {
            *a += b;
        }
    }
}

impl Default for RangeStats {
    fn default() -> Self {
        Self::new()
    }
}

/// The magnitude bit patterns of f32 at which the round-to-nearest-even result in a format
/// changes class: `|y|`'s bits (`y.to_bits() & 0x7fff_ffff`) below `nonzero_from` round to
/// zero, below `normal_from` to a subnormal, from `overflow_from` on beyond the format's max.
/// The classification [`range_stats`] applies, for kernels that count on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeThresholds {
    /// Smallest |y| bits that round to a non-zero value.
    pub nonzero_from: u32,
    /// Smallest |y| bits that round to a normal value.
    pub normal_from: u32,
    /// Smallest |y| bits that overflow.
    pub overflow_from: u32,
}

impl RangeThresholds {
    /// The thresholds of `dtype` (found once per process by bisection with the scalar
    /// conversion as oracle).
    pub fn of(dtype: DType) -> Self {
        static TABLE: std::sync::OnceLock<Vec<(DType, RangeThresholds)>> =
            std::sync::OnceLock::new();
        let table = TABLE.get_or_init(|| DType::ALL.iter().map(|&d| (d, Self::find(d))).collect());
        table
            .iter()
            .find(|(d, _)| *d == dtype)
            .map_or_else(|| Self::find(dtype), |&(_, t)| t)
    }

    fn find(dtype: DType) -> Self {
        // Conversion is monotone in |y|, so each boundary is found by bisection over the
        // finite magnitudes with the scalar reference as the oracle.
        let mag = |a: u32| f32_to_bits(f32::from_bits(a), dtype, false) & !sign_mask(dtype);
        let first = |pred: &dyn Fn(u32) -> bool| {
            let (mut lo, mut hi) = (0u32, 0x7f80_0000u32); // pred(hi) holds for every class
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if pred(mid) { hi = mid } else { lo = mid + 1 }
            }
            lo
        };
        let max_bits = f32_to_bits(dtype.max(), dtype, false);
        let min_normal_bits = 1u32 << dtype.mantissa_bits();
        RangeThresholds {
            nonzero_from: first(&|a| mag(a) != 0),
            normal_from: first(&|a| mag(a) >= min_normal_bits),
            overflow_from: first(&|a| mag(a) > max_bits),
        }
    }
}

/// How many of the updates `after - before` are non-zero and finite, and how many of those
/// `dtype` weights would lose: with `w = round(before)`, `round(w + (after - before)) == w`
/// (round to nearest even): `(updated, lost)`. The what-if behind FP32 master weights.
///
/// ```
/// use mp_dtype::{lost_update_counts, DType};
/// // 1e-3 is below half a BF16 ulp of 1.0 (2^-8) but not below half an FP16 ulp (2^-11)
/// let (before, after) = ([1.0, 2.0, 3.0], [1.001, 2.5, 3.0]);
/// assert_eq!(lost_update_counts(&before, &after, DType::BF16), (2, 1));
/// assert_eq!(lost_update_counts(&before, &after, DType::F16), (2, 0));
/// ```
pub fn lost_update_counts(before: &[f32], after: &[f32], dtype: DType) -> (u64, u64) {
    let round = |x: f32| crate::bits_to_f32(f32_to_bits(x, dtype, false), dtype);
    let (mut updated, mut lost) = (0u64, 0u64);
    for (&b, &a) in before.iter().zip(after) {
        let delta = a - b;
        if delta == 0.0 || !delta.is_finite() {
            continue;
        }
        updated += 1;
        let w16 = round(b);
        if round(w16 + delta) == w16 {
            lost += 1;
        }
    }
    (updated, lost)
}

fn sign_mask(dtype: DType) -> u32 {
    1 << (8 * dtype.size_in_bytes() - 1)
}

/// Range statistics of `src` as it would be stored in `dtype` after multiplying by `scale`
/// (e.g. a loss scale), with round to nearest even. Parallel above
/// [`PARALLEL_THRESHOLD`](crate::PARALLEL_THRESHOLD) elements; the result does not depend on
/// the thread count.
///
/// ```
/// use mp_dtype::{range_stats, DType};
/// let s = range_stats(&[1.0, 1e6, 1e-9, 0.0, f32::NAN], DType::F16, 1.0);
/// assert_eq!((s.overflow, s.underflow_to_zero, s.zero, s.non_finite), (1, 1, 1, 1));
/// assert_eq!(s.exponent_count(0), 1);
/// ```
pub fn range_stats(src: &[f32], dtype: DType, scale: f32) -> RangeStats {
    let t = RangeThresholds::of(dtype);
    if src.len() < PARALLEL_THRESHOLD {
        return stats_serial(src, t, scale);
    }
    src.par_chunks(PARALLEL_THRESHOLD)
        .map(|c| stats_serial(c, t, scale))
        .reduce(RangeStats::new, |mut a, b| {
            a.merge(&b);
            a
        })
}

fn stats_serial(src: &[f32], t: RangeThresholds, scale: f32) -> RangeStats {
    let mut s = RangeStats::new();
    let mut hist = [0u64; RangeStats::HISTOGRAM_BINS];
    for &x in src {
        if !x.is_finite() {
            s.non_finite += 1;
            continue;
        }
        if x == 0.0 {
            s.zero += 1;
        }
        let a = (x * scale).to_bits() & 0x7fff_ffff;
        if x != 0.0 {
            if a >= t.overflow_from {
                s.overflow += 1;
            } else if a < t.nonzero_from {
                s.underflow_to_zero += 1;
            } else if a < t.normal_from {
                s.subnormal += 1;
            }
        }
        let bin = if a == 0 {
            0
        } else if a >= 0x7f80_0000 {
            RangeStats::HISTOGRAM_BINS - 1
        } else {
            let e = if a >= 0x0080_0000 {
                (a >> 23) as i32 - 127
            } else {
                31 - a.leading_zeros() as i32 - 149
            };
            1 + (e - RangeStats::MIN_EXPONENT) as usize
        };
        hist[bin] += 1;
    }
    s.total = src.len() as u64;
    s.exponent_histogram.copy_from_slice(&hist);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_the_scalar_reference_at_their_edges() {
        for dtype in DType::ALL {
            let t = RangeThresholds::of(dtype);
            let mag = |a: u32| f32_to_bits(f32::from_bits(a), dtype, false) & !sign_mask(dtype);
            assert_eq!(mag(t.nonzero_from - 1), 0, "{dtype}");
            assert_ne!(mag(t.nonzero_from), 0, "{dtype}");
            assert!(
                mag(t.normal_from - 1) < 1 << dtype.mantissa_bits(),
                "{dtype}"
            );
            assert_eq!(mag(t.normal_from), 1 << dtype.mantissa_bits(), "{dtype}");
            assert_eq!(bits_max(dtype), mag(t.overflow_from - 1), "{dtype}");
        }
    }

    fn bits_max(dtype: DType) -> u32 {
        f32_to_bits(dtype.max(), dtype, false)
    }

    #[test]
    fn subnormal_and_histogram_counts() {
        let x = [dtype_min_sub(DType::F8E4M3), 0.5, -0.5, 3.0];
        let s = range_stats(&x, DType::F8E4M3, 1.0);
        assert_eq!(s.subnormal, 1);
        assert_eq!(s.exponent_count(-1), 2);
        assert_eq!(s.exponent_count(1), 1);
        assert_eq!(s.exponent_count(-9), 1);
        assert_eq!(s.total, 4);
        // Scaling moves everything: x 2^-20 pushes 0.5 into F8E4M3 underflow.
        let s = range_stats(&x, DType::F8E4M3, 2f32.powi(-20));
        assert_eq!(s.underflow_to_zero, 4);
    }

    fn dtype_min_sub(d: DType) -> f32 {
        d.min_subnormal()
    }
}
