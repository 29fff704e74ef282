//! Range statistics against a direct per-element classification with the scalar reference.

use mp_dtype::{DType, RangeStats, bits_to_f32, f32_to_bits, range_stats};

use crate::common::test_values;

#[test]
fn range_stats_agrees_with_scalar_classification() {
    let xs = test_values(4 * mp_dtype::PARALLEL_THRESHOLD + 5, 23);
    for dtype in DType::ALL {
        for scale in [1.0f32, 65536.0, 2f32.powi(-24), 3.0e38] {
            let s = range_stats(&xs, dtype, scale);
            let mut want = RangeStats::new();
            for &x in &xs {
                want.total += 1;
                if !x.is_finite() {
                    want.non_finite += 1;
                    continue;
                }
                let y = x * scale;
                let v = bits_to_f32(f32_to_bits(y, dtype, false), dtype);
                if x == 0.0 {
                    want.zero += 1;
                } else if !v.is_finite() {
                    want.overflow += 1;
                } else if v == 0.0 {
                    want.underflow_to_zero += 1;
                } else if v.abs() < dtype.min_normal() {
                    want.subnormal += 1;
                }
                let bin = if y == 0.0 {
                    0
                } else if !y.is_finite() {
                    RangeStats::HISTOGRAM_BINS - 1
                } else {
                    let e = (y.abs() as f64).log2().floor() as i32;
                    (1 + e - RangeStats::MIN_EXPONENT) as usize
                };
                want.exponent_histogram[bin] += 1;
            }
            assert_eq!(s, want, "{dtype} scale {scale:e}");
            let hist_total: u64 = s.exponent_histogram.iter().sum();
            assert_eq!(hist_total + s.non_finite, s.total);
        }
    }
}
