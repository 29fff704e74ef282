//! The built-in tape ops, one module per family. Each op is a [`crate::TapeOp`] whose
//! forward, backward and autocast category sit together, plus the `Tape` method that applies
//! it (`Tape::relu`, `Tape::rms_norm`, ...):
//!
//! | module | family |
//! | --- | --- |
//! | [`pointwise`] | element-wise arithmetic, activations, dropout |
//! | [`rows`] | softmax over the last dimension |
//! | [`dense`] | GEMMs: linear layers, batched matmul |
//! | [`norm`] | layer norm, RMSNorm |
//! | [`layout`] | transpose, concat, split |
//! | [`embedding`] | embedding lookups |
//! | [`attention`] | causal self-attention |
//! | [`loss`] | losses and whole-tensor reductions |
//!
//! Each module's tests are the gradient checks of its ops ([`crate::gradcheck`]).
//!
//! Structural ops (`input`, `param`, `cast`, `reshape`) are the tape's own (`tape.rs`).

pub mod attention;
pub mod dense;
pub mod embedding;
pub mod layout;
pub mod loss;
pub mod norm;
pub mod pointwise;
pub mod rows;

use crate::Result;
use crate::op::Forward;
use mp_kernels::Backend;

/// The last dimension of input `i` and the number of rows it makes, or a shape error.
pub(crate) fn rows_of<B: Backend>(cx: &Forward<'_, '_, B>, i: usize) -> Result<(usize, usize)> {
    let shape = cx.shape(i);
    match shape.last() {
        Some(&c) if c > 0 => Ok((shape.iter().product::<usize>() / c, c)),
        _ => Err(cx.shape_err(format!(
            "input of shape {shape:?}: no last dimension, or an empty one"
        ))),
    }
}

/// Fails unless inputs `0..n` all have input 0's shape.
pub(crate) fn same_shapes<B: Backend>(cx: &Forward<'_, '_, B>) -> Result<()> {
    for i in 1..cx.inputs() {
        if cx.shape(i) != cx.shape(0) {
            return Err(cx.shape_err(format!("shapes {:?} and {:?}", cx.shape(0), cx.shape(i))));
        }
    }
    Ok(())
}
