//! Scalar reference conversions between `f32` and every [`DType`].
//!
//! These functions define the results; every bulk and SIMD path in this crate is tested to agree
//! with them bit for bit. They work on the bit patterns with integer arithmetic only, so they are
//! exact (no double rounding) and portable to CUDA C and WGSL.
//!
//! # Encoding (`f32` to a narrower format)
//!
//! Let `x` be finite with `|x| = m · 2^(e−23)`, where `m` is the 24-bit significand (hidden bit
//! included; for f32 subnormals `m` is the raw mantissa and `e = −126`). In the target format
//! the grid spacing at `|x|` is `2^(max(e, emin) − M)` (`M` mantissa bits, `emin = 1 − bias`),
//! so the low `s = 23 − M + max(emin − e, 0)` bits of `m` are dropped:
//! `q = m >> s` (the truncation toward zero, "lo") and `rem = m mod 2^s`.
//! The encoded magnitude is `(max(e + bias − 1, 0) << M) + q + up`; a carry out of the
//! mantissa field increments the exponent, which is exactly the next value up ("hi").
//!
//! * Round to nearest even: `up = rem > 2^(s−1) || (rem == 2^(s−1) && q odd)`.
//! * Stochastic rounding with 32 random bits `r`: let `T = ⌊rem · 2^(32 − s)⌋` (computed as
//!   `rem << (32 − s)` when `s ≤ 32`, `rem >> (s − 32)` when `32 < s < 56`, and `0` beyond);
//!   `up = r < T` (unsigned). With `r` uniform, `P(up) = rem / 2^s` exactly whenever `s ≤ 32`,
//!   which covers every normal result and every subnormal result of BF16/F16; deeper in the FP8
//!   subnormal range the probability is `rem / 2^s` rounded down to a multiple of `2^−32`.
//!   For BF16 this is `s = 16`, `up = (r >> 16) < (bits & 0xffff)`: the classic
//!   "add 16 random bits and truncate", drawing the top 16 bits of `r`.
//!
//! Special values, for both rounding modes:
//!
//! * NaN stays NaN with its sign; the target is a quiet NaN whose payload is the top bits of the
//!   f32 payload (exactly what `half`, F16C `vcvtps2ph` and AVX-512 `vcvtneps2bf16` produce).
//!   F8E4M3 has a single NaN magnitude, `0x7f`.
//! * Overflow (the rounded magnitude exceeds the format's max, or `x` is ±inf): ±inf where the
//!   format has infinities, NaN (`S.1111.111`) for F8E4M3; with `saturate`, ±max instead (also for
//!   ±inf inputs).
//! * ±0 keep their sign; values that round to zero give a zero of the same sign.
//!
//! [`DType::F32`] is the identity (the bits are passed through, `saturate` is ignored).
//!
//! # Decoding (a narrower format to `f32`)
//!
//! Exact for every finite value and infinity (every format here is a subset of f32). A NaN
//! decodes to a quiet f32 NaN with the same sign and its payload in the top mantissa bits
//! (the `half` crate's and F16C's policy).

use crate::DType;

/// The bit layout of a narrow format, as the conversions need it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Mantissa (fraction) bits, `M`.
    pub(crate) mbits: u32,
    /// Exponent bits.
    pub(crate) ebits: u32,
    /// Exponent bias.
    pub(crate) bias: i32,
    /// Magnitude bits of the largest finite value.
    pub(crate) max_bits: u32,
    /// Whether an all-ones exponent with zero mantissa means infinity.
    pub(crate) has_inf: bool,
}

impl Layout {
    pub(crate) const fn of(dtype: DType) -> Layout {
        match dtype {
            DType::F32 => Layout {
                mbits: 23,
                ebits: 8,
                bias: 127,
                max_bits: 0x7f7f_ffff,
                has_inf: true,
            },
            DType::F16 => Layout {
                mbits: 10,
                ebits: 5,
                bias: 15,
                max_bits: 0x7bff,
                has_inf: true,
            },
            DType::BF16 => Layout {
                mbits: 7,
                ebits: 8,
                bias: 127,
                max_bits: 0x7f7f,
                has_inf: true,
            },
            DType::F8E4M3 => Layout {
                mbits: 3,
                ebits: 4,
                bias: 7,
                max_bits: 0x7e,
                has_inf: false,
            },
            DType::F8E5M2 => Layout {
                mbits: 2,
                ebits: 5,
                bias: 15,
                max_bits: 0x7b,
                has_inf: true,
            },
        }
    }

    /// The sign bit of the format.
    #[inline(always)]
    const fn sign_shift(self) -> u32 {
        self.ebits + self.mbits
    }

    /// The all-ones exponent field, in place.
    #[inline(always)]
    const fn exp_mask(self) -> u32 {
        ((1 << self.ebits) - 1) << self.mbits
    }
}

/// The overflow result (magnitude only).
#[inline(always)]
fn overflow_magnitude(l: Layout, saturate: bool) -> u32 {
    if saturate {
        l.max_bits
    } else if l.has_inf {
        l.exp_mask()
    } else {
        // F8E4M3 "fn": all exponent and mantissa bits set is its only NaN.
        l.exp_mask() | ((1 << l.mbits) - 1)
    }
}

/// The quiet NaN for an f32 NaN with magnitude bits `a` (magnitude only).
#[inline(always)]
fn nan_magnitude(l: Layout, a: u32) -> u32 {
    if l.has_inf {
        l.exp_mask() | (1 << (l.mbits - 1)) | ((a & 0x007f_ffff) >> (23 - l.mbits))
    } else {
        l.exp_mask() | ((1 << l.mbits) - 1)
    }
}

/// How a narrowing conversion decides the rounding direction.
#[derive(Clone, Copy)]
enum Mode {
    NearestEven,
    Stochastic(u32),
}

#[inline(always)]
fn narrow(x: f32, l: Layout, saturate: bool, mode: Mode) -> u32 {
    let b = x.to_bits();
    let sign = (b >> 31) << l.sign_shift();
    let a = b & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | nan_magnitude(l, a);
    }
    if a == 0x7f80_0000 {
        return sign | overflow_magnitude(l, saturate);
    }
    let (e, m) = if a >= 0x0080_0000 {
        ((a >> 23) as i32 - 127, (a & 0x007f_ffff) | 0x0080_0000)
    } else {
        (-126, a)
    };
    let emin = 1 - l.bias;
    let s = (23 - l.mbits) + (emin - e).max(0) as u32;
    let base = ((e + l.bias - 1).max(0) as u32) << l.mbits;
    let (q, rem) = if s < 32 {
        (m >> s, m & ((1u32 << s) - 1))
    } else {
        (0, m)
    };
    let up = match mode {
        Mode::NearestEven => {
            if s > 25 {
                // m < 2^24 <= half of 2^s: always rounds down.
                false
            } else {
                let half = 1u32 << (s - 1);
                rem > half || (rem == half && q & 1 == 1)
            }
        }
        Mode::Stochastic(r) => r < sr_threshold(rem, s),
    };
    let mag = base + q + up as u32;
    if mag > l.max_bits {
        return sign | overflow_magnitude(l, saturate);
    }
    sign | mag
}

/// `⌊rem · 2^(32 − s)⌋` for `rem < 2^s`, `rem < 2^24`, `s ≥ 1`, without 64-bit arithmetic.
#[inline(always)]
pub(crate) fn sr_threshold(rem: u32, s: u32) -> u32 {
    if s <= 32 {
        // rem < 2^s, so the shift cannot overflow; for s == 32 the shift is 0.
        rem << (32 - s)
    } else if s - 32 < 24 {
        rem >> (s - 32)
    } else {
        0
    }
}

/// Rounds `x` to the nearest value of `dtype` (ties to even) and returns its bit pattern in the
/// low `8 * dtype.size_in_bytes()` bits.
///
/// With `saturate`, values beyond the format's range (and ±inf) become ±max instead of ±inf (or
/// NaN for [`DType::F8E4M3`]). NaN stays NaN. See the [module docs](self) for the exact rules.
///
/// ```
/// use mp_dtype::{f32_to_bits, DType};
/// assert_eq!(f32_to_bits(1.0, DType::BF16, false), 0x3f80);
/// assert_eq!(f32_to_bits(500.0, DType::F8E4M3, false), 0x7f); // NaN: no infinities
/// assert_eq!(f32_to_bits(500.0, DType::F8E4M3, true), 0x7e); // saturated to 448
/// ```
#[inline]
pub fn f32_to_bits(x: f32, dtype: DType, saturate: bool) -> u32 {
    // One arm per format so each call of `narrow` sees a constant layout.
    let mode = Mode::NearestEven;
    match dtype {
        DType::F32 => x.to_bits(),
        DType::F16 => narrow(x, Layout::of(DType::F16), saturate, mode),
        DType::BF16 => narrow(x, Layout::of(DType::BF16), saturate, mode),
        DType::F8E4M3 => narrow(x, Layout::of(DType::F8E4M3), saturate, mode),
        DType::F8E5M2 => narrow(x, Layout::of(DType::F8E5M2), saturate, mode),
    }
}

/// Rounds `x` stochastically to one of the two values of `dtype` that bracket it, using the
/// 32 random bits `random` (from [`crate::sr_random`] in the bulk conversions).
///
/// The result is the truncation toward zero `lo`, or the next value away from zero `hi`, which is
/// chosen when `random < ⌊(|x| − |lo|) / (|hi| − |lo|) · 2^32⌋`; so with uniform `random` the
/// result is unbiased. Values exactly representable are returned unchanged. NaN, overflow and
/// `saturate` behave as in [`f32_to_bits`]; the exact rule is in the [module docs](self).
#[inline]
pub fn f32_to_bits_sr(x: f32, dtype: DType, saturate: bool, random: u32) -> u32 {
    let mode = Mode::Stochastic(random);
    match dtype {
        DType::F32 => x.to_bits(),
        DType::F16 => narrow(x, Layout::of(DType::F16), saturate, mode),
        DType::BF16 => narrow(x, Layout::of(DType::BF16), saturate, mode),
        DType::F8E4M3 => narrow(x, Layout::of(DType::F8E4M3), saturate, mode),
        DType::F8E5M2 => narrow(x, Layout::of(DType::F8E5M2), saturate, mode),
    }
}

/// Decodes the bit pattern `bits` of `dtype` (in the low bits; higher bits are ignored) to the
/// `f32` it represents. Exact; NaN becomes a quiet NaN of the same sign.
///
/// ```
/// use mp_dtype::{bits_to_f32, DType};
/// assert_eq!(bits_to_f32(0x7e, DType::F8E4M3), 448.0);
/// assert!(bits_to_f32(0x7f, DType::F8E4M3).is_nan());
/// assert_eq!(bits_to_f32(0x3c00, DType::F16), 1.0);
/// ```
#[inline]
pub fn bits_to_f32(bits: u32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::from_bits(bits),
        DType::BF16 => {
            let h = bits & 0xffff;
            if h & 0x7fff > 0x7f80 {
                f32::from_bits((h | 0x0040) << 16)
            } else {
                f32::from_bits(h << 16)
            }
        }
        DType::F16 => widen(bits, Layout::of(DType::F16)),
        DType::F8E4M3 => widen(bits, Layout::of(DType::F8E4M3)),
        DType::F8E5M2 => widen(bits, Layout::of(DType::F8E5M2)),
    }
}

#[inline(always)]
fn widen(bits: u32, l: Layout) -> f32 {
    let sign = ((bits >> l.sign_shift()) & 1) << 31;
    let exp = (bits >> l.mbits) & ((1 << l.ebits) - 1);
    let man = bits & ((1 << l.mbits) - 1);
    let all_ones = (1 << l.ebits) - 1;
    let is_nan = if l.has_inf {
        exp == all_ones && man != 0
    } else {
        exp == all_ones && man == (1 << l.mbits) - 1
    };
    if is_nan {
        return f32::from_bits(sign | 0x7fc0_0000 | (man << (23 - l.mbits)));
    }
    if l.has_inf && exp == all_ones {
        return f32::from_bits(sign | 0x7f80_0000);
    }
    let mag = if exp == 0 {
        // Subnormal (or zero): man · 2^(1 − bias − M), exact in f32 for F16 and FP8.
        (man as f32) * pow2(1 - l.bias - l.mbits as i32)
    } else {
        f32::from_bits((((exp as i32 - l.bias + 127) as u32) << 23) | (man << (23 - l.mbits)))
    };
    f32::from_bits(sign | mag.to_bits())
}

/// `2^k` for `-126 <= k <= 127`.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {

    /// The two FP8 overflow conventions of the crate docs: NaN (E4M3) / inf (E5M2) past the
    /// rounding midpoint above max by default, ±max when saturating.
    #[test]
    fn fp8_overflow_rounds_to_nan_or_inf_unless_saturating() {
        let back = |x: f32, dt: DType, sat: bool| bits_to_f32(f32_to_bits(x, dt, sat), dt);
        // 464, the midpoint above 448, ties to 448 (even); 61440 ties away from 57344 (odd)
        assert_eq!(back(464.0, DType::F8E4M3, false), 448.0);
        assert!(back(464.1, DType::F8E4M3, false).is_nan());
        assert!(back(f32::INFINITY, DType::F8E4M3, false).is_nan());
        assert_eq!(back(61439.0, DType::F8E5M2, false), 57344.0);
        assert_eq!(back(61440.0, DType::F8E5M2, false), f32::INFINITY);
        for (dt, max) in [(DType::F8E4M3, 448.0), (DType::F8E5M2, 57344.0)] {
            assert_eq!(back(1e6, dt, true), max);
            assert_eq!(back(f32::NEG_INFINITY, dt, true), -max);
            assert!(back(f32::NAN, dt, true).is_nan());
        }
    }

    use super::*;

    #[test]
    fn simple_values_round_trip_in_every_format() {
        for dtype in DType::ALL {
            for x in [0.0f32, -0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 1.5] {
                let b = f32_to_bits(x, dtype, false);
                let y = bits_to_f32(b, dtype);
                assert_eq!(y.to_bits(), x.to_bits(), "{dtype} {x}");
            }
        }
    }

    #[test]
    fn ties_go_to_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7 in BF16: ties to 1 (even mantissa).
        assert_eq!(f32_to_bits(1.0 + 2f32.powi(-8), DType::BF16, false), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up.
        assert_eq!(
            f32_to_bits(1.0 + 3.0 * 2f32.powi(-8), DType::BF16, false),
            0x3f82
        );
        // E4M3: 464 is halfway between 448 (mantissa 110) and 480 (not a value): stays 448.
        assert_eq!(f32_to_bits(464.0, DType::F8E4M3, false), 0x7e);
        assert_eq!(f32_to_bits(464.1, DType::F8E4M3, false), 0x7f);
        // E5M2: 61440 is halfway between 57344 (odd) and 65536: overflows to inf.
        assert_eq!(f32_to_bits(61440.0, DType::F8E5M2, false), 0x7c);
        assert_eq!(f32_to_bits(61440.0, DType::F8E5M2, true), 0x7b);
    }

    #[test]
    fn subnormals_and_signed_zero() {
        // Smallest F16 subnormal 2^-24; half of it ties to zero, a bit more rounds up.
        assert_eq!(f32_to_bits(2f32.powi(-24), DType::F16, false), 0x0001);
        assert_eq!(f32_to_bits(2f32.powi(-25), DType::F16, false), 0x0000);
        assert_eq!(
            f32_to_bits(-2f32.powi(-25) * 1.01, DType::F16, false),
            0x8001
        );
        assert_eq!(f32_to_bits(-1e-30, DType::F8E4M3, false), 0x80);
        assert_eq!(bits_to_f32(0x01, DType::F8E4M3), 2f32.powi(-9));
        assert_eq!(bits_to_f32(0x81, DType::F8E5M2), -(2f32.powi(-16)));
        // f32 subnormal into BF16 (same exponent range) stays subnormal.
        let tiny = f32::from_bits(0x0001_8000);
        assert_eq!(f32_to_bits(tiny, DType::BF16, false), 0x0002);
    }

    #[test]
    fn sr_threshold_is_exact_for_small_shifts() {
        assert_eq!(sr_threshold(0x8000, 16), 0x8000_0000);
        assert_eq!(sr_threshold(1, 32), 1);
        assert_eq!(sr_threshold(1 << 20, 40), 1 << 12);
        assert_eq!(sr_threshold(1 << 23, 56), 0);
    }

    #[test]
    fn stochastic_rounding_picks_a_neighbour() {
        let x = 1.0 + 2f32.powi(-9); // a quarter of the way from 1 to the next BF16
        assert_eq!(f32_to_bits_sr(x, DType::BF16, false, 0), 0x3f81);
        assert_eq!(f32_to_bits_sr(x, DType::BF16, false, 0x3fff_ffff), 0x3f81);
        assert_eq!(f32_to_bits_sr(x, DType::BF16, false, 0x4000_0000), 0x3f80);
        assert_eq!(f32_to_bits_sr(x, DType::BF16, false, u32::MAX), 0x3f80);
        // Representable values never move.
        assert_eq!(f32_to_bits_sr(1.0, DType::F8E4M3, false, 0), 0x38);
    }
}
