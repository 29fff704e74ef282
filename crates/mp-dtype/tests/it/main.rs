//! Integration tests of mp-dtype: golden values (ml_dtypes), exhaustive conversions, every SIMD
//! path against the scalar reference, stochastic rounding statistics, range statistics.

mod common;
mod exhaustive;
mod golden;
mod paths;
mod stats;
mod stochastic;
