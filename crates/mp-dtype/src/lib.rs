//! # mp-dtype: the number formats of mixed-precision training
//!
//! [`DType`] is a runtime value naming one of the floating-point storage formats this project
//! computes with: FP32, FP16, BF16 and the two FP8 formats. Every other crate stores buffers
//! as raw bytes tagged with a `DType`, so only the leaf kernels are specialised per type.
//!
//! | dtype | bytes | sign/exp/mantissa bits | bias | max | min normal | min subnormal | epsilon | inf | NaN |
//! |---|---|---|---|---|---|---|---|---|---|
//! | `f32` | 4 | 1/8/23 | 127 | 3.4028235e38 | 2^-126 ≈ 1.1754944e-38 | 2^-149 ≈ 1.4e-45 | 2^-23 ≈ 1.1920929e-7 | yes | exp all ones, mantissa ≠ 0 |
//! | `f16` | 2 | 1/5/10 | 15 | 65504 | 2^-14 ≈ 6.1035156e-5 | 2^-24 ≈ 5.9604645e-8 | 2^-10 ≈ 9.765625e-4 | yes | exp all ones, mantissa ≠ 0 |
//! | `bf16` | 2 | 1/8/7 | 127 | 3.3895314e38 | 2^-126 ≈ 1.1754944e-38 | 2^-133 ≈ 9.18355e-41 | 2^-7 = 0.0078125 | yes | exp all ones, mantissa ≠ 0 |
//! | `f8e4m3` (fn) | 1 | 1/4/3 | 7 | 448 | 2^-6 = 0.015625 | 2^-9 = 0.001953125 | 2^-3 = 0.125 | no | `S.1111.111` only |
//! | `f8e5m2` | 1 | 1/5/2 | 15 | 57344 | 2^-14 ≈ 6.1035156e-5 | 2^-16 ≈ 1.5258789e-5 | 2^-2 = 0.25 | yes | exp all ones, mantissa ≠ 0 |
//!
//! (Epsilon is the distance from 1 to the next larger value; the FP8 rows match `ml_dtypes`'
//! `float8_e4m3fn` and `float8_e5m2`, checked by the golden tests.)
//!
//! ## FP8 overflow: two conventions
//!
//! By default a conversion rounds as `ml_dtypes` and PyTorch's `tensor.to(torch.float8_*)` do:
//! a value whose rounding exceeds the largest finite value becomes NaN in `f8e4m3`, which has
//! no infinity (everything above 464; 464 itself, the midpoint above 448, ties down to 448), and
//! ±inf in `f8e5m2` (from 61440, the midpoint above 57344, which ties up). FP8 training recipes instead **saturate** (NVIDIA Transformer Engine, the PTX
//! `cvt.rn.satfinite` instructions): out-of-range values, and ±inf, clamp to ±max (448 or
//! 57344), which is what a scaled FP8 cast wants, since one outlier must not poison the tensor.
//! [`EncodeOptions::saturate`] (and the `sat` flag of the device kernels) selects it; NaN stays
//! NaN either way. The two agree on every in-range value.
//!
//! ## What is here
//!
//! * Scalar reference conversions ([`f32_to_bits`], [`f32_to_bits_sr`], [`bits_to_f32`]):
//!   round to nearest even with exact ties, subnormals, ±0 and NaN; stochastic rounding; a
//!   saturating mode. The exact rules are in [`scalar`].
//! * The counter-based generator [`sr_random`] that makes stochastic rounding a pure function of
//!   `(seed, element index)`; its definition in [`rng`] is the cross-backend contract.
//! * Bulk conversions between `f32` slices and byte buffers of any format ([`encode`],
//!   [`decode`]) and typed fast paths for `half`'s types ([`f32_to_bf16`], [`bf16_to_f32`],
//!   [`f32_to_f16`], [`f16_to_f32`]), SIMD-dispatched at run time ([`Isa`]) and parallel above
//!   [`PARALLEL_THRESHOLD`] elements; they agree bit for bit with the scalar reference.
//! * [`range_stats`]: how many values of a slice would overflow, flush to zero or go subnormal
//!   in a format after scaling, plus a histogram of binary exponents.

use serde::{Deserialize, Serialize};

mod bulk;
mod error;
pub mod rng;
pub mod scalar;
pub mod simd;
mod stats;

pub use bulk::{
    EncodeOptions, PARALLEL_THRESHOLD, bf16_to_f32, decode, encode, f16_to_f32, f32_to_bf16,
    f32_to_f16,
};
pub use error::DTypeError;
pub use rng::{mix32, sr_random};

/// The `half` crate, whose `f16` and `bf16` types the typed conversions take, so a user needs
/// no separate dependency (or version match) to call them.
pub use half;
pub use scalar::{bits_to_f32, f32_to_bits, f32_to_bits_sr};
pub use simd::Isa;
pub use stats::{RangeStats, RangeThresholds, lost_update_counts, range_stats};

/// A floating-point storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16: 5 exponent bits, 10 mantissa bits.
    F16,
    /// bfloat16: the top 16 bits of an f32 (8 exponent bits, 7 mantissa bits).
    BF16,
    /// FP8 E4M3 "fn": 4 exponent bits, 3 mantissa bits, no infinities, max 448.
    F8E4M3,
    /// FP8 E5M2: 5 exponent bits, 2 mantissa bits, IEEE-like with infinities.
    F8E5M2,
}

impl DType {
    /// Every format, widest first.
    pub const ALL: [DType; 5] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Bytes one element occupies.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::F8E5M2 => 1,
        }
    }

    /// Bits of the exponent field.
    pub const fn exponent_bits(self) -> u32 {
        scalar::Layout::of(self).ebits
    }

    /// Bits of the mantissa (fraction) field, without the hidden bit.
    pub const fn mantissa_bits(self) -> u32 {
        scalar::Layout::of(self).mbits
    }

    /// The exponent bias: a normal value is `1.m · 2^(exponent field − bias)`.
    pub const fn bias(self) -> i32 {
        scalar::Layout::of(self).bias
    }

    /// Whether the format has infinities (all but [`DType::F8E4M3`]).
    pub const fn has_inf(self) -> bool {
        scalar::Layout::of(self).has_inf
    }

    /// The largest finite value.
    pub fn max(self) -> f32 {
        bits_to_f32(scalar::Layout::of(self).max_bits, self)
    }

    /// The smallest positive normal value, `2^(1 − bias)`.
    pub fn min_normal(self) -> f32 {
        bits_to_f32(1 << self.mantissa_bits(), self)
    }

    /// The smallest positive subnormal value, `2^(1 − bias − mantissa_bits)`.
    pub fn min_subnormal(self) -> f32 {
        bits_to_f32(1, self)
    }

    /// The distance from 1 to the next larger value, `2^−mantissa_bits`.
    pub fn epsilon(self) -> f32 {
        f32::from_bits((127 - self.mantissa_bits()) << 23)
    }

    /// The short lowercase name used in configs, file names and messages (`"bf16"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
        }
    }
}

/// How a value is rounded when it is stored in a narrower format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Rounding {
    /// Round to nearest, ties to even (IEEE default).
    #[default]
    NearestEven,
    /// Stochastic rounding: the element at absolute index `i` of a buffer draws its random bits
    /// from the counter-based generator at `(seed, i)`, so the result depends on neither thread
    /// count, launch shape nor backend.
    Stochastic {
        /// The stream's seed (e.g. derived from the run seed and the step).
        seed: u64,
    },
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl DType {
    /// Every name [`DType`] parses for `self`, case-insensitively: its own (`"bf16"`), the
    /// CLI's precision names (`"fp16"`, `"bf16"`, `"fp32"`), PyTorch's and ml_dtypes'
    /// (`"float16"`, `"half"`, `"bfloat16"`, `"float32"`, `"float"`, `"float8_e4m3fn"`,
    /// `"float8_e5m2"`).
    pub const fn aliases(self) -> &'static [&'static str] {
        match self {
            DType::F32 => &["f32", "fp32", "float32", "float"],
            DType::F16 => &["f16", "fp16", "float16", "half"],
            DType::BF16 => &["bf16", "bfloat16"],
            DType::F8E4M3 => &["f8e4m3", "fp8e4m3", "float8_e4m3fn", "e4m3"],
            DType::F8E5M2 => &["f8e5m2", "fp8e5m2", "float8_e5m2", "e5m2"],
        }
    }
}

impl std::str::FromStr for DType {
    type Err = DTypeError;
    /// Parses any of [`DType::aliases`] (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.aliases().iter().any(|a| a.eq_ignore_ascii_case(s.trim())))
            .ok_or_else(|| DTypeError::UnknownName(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_every_spelling_and_round_trip() {
        for (s, d) in [
            ("fp16", DType::F16),
            ("FLOAT16", DType::F16),
            ("half", DType::F16),
            ("bf16", DType::BF16),
            ("bfloat16", DType::BF16),
            ("fp32", DType::F32),
            (" float32 ", DType::F32),
            ("float8_e4m3fn", DType::F8E4M3),
            ("float8_e5m2", DType::F8E5M2),
        ] {
            assert_eq!(s.parse::<DType>(), Ok(d), "{s}");
        }
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>(), Ok(d));
        }
        let e = "fp64".parse::<DType>().unwrap_err().to_string();
        assert!(e.contains("fp64") && e.contains("bfloat16"), "{e}");
        // the re-export is the crate the typed conversions take
        let x = [half::bf16::from_f32(1.5)];
        let mut y = [0.0f32];
        bf16_to_f32(&x, &mut y).unwrap();
        assert_eq!(y, [1.5]);
    }
}
