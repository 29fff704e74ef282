//! Integration tests of the CPU backend: every op against a float64 reference written here,
//! in every dtype, finite-difference checks of every backward, and the error cases.

mod attention;
mod common;
mod determinism;
mod embed;
mod errors;
mod gemm;
mod gradcheck;
mod loss;
mod norm;
mod ops;
mod optim;
mod pointwise;
mod reduce;
