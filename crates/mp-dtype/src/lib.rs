//! # mp-dtype: the number formats of mixed-precision training
//!
//! [`DType`] is a runtime value naming one of the floating-point storage formats this project
//! computes with: FP32, FP16, BF16 and the two FP8 formats. Every other crate stores buffers
//! as raw bytes tagged with a `DType`, so only the leaf kernels are specialised per type.
//!
//! (The conversions, stochastic rounding and range statistics are filled in by the mp-dtype
//! issue; this skeleton holds the type every other crate builds on.)

use serde::{Deserialize, Serialize};

mod error;
pub use error::DTypeError;

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

impl std::str::FromStr for DType {
    type Err = DTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| DTypeError::UnknownName(s.to_string()))
    }
}
