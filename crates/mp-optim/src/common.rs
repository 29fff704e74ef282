//! Pieces both optimizers share: argument checks, group sub-views, per-step rounding seeds.

use crate::{OptimError, Result};
use mp_dtype::{DType, Rounding};
use mp_kernels::{DeviceBuffer, View, ViewMut};
use std::ops::Range;

/// Checks the buffers of one step against the arena length and the dtypes the fused passes
/// take: FP32 master weights or BF16/F16 parameters (pure low-precision mode); gradients and
/// model copy of any dtype; a finite gradient factor.
pub(crate) fn check_step<T: DeviceBuffer + ?Sized>(
    optimizer: &'static str,
    len: usize,
    params: &ViewMut<'_, T>,
    grads: &View<'_, T>,
    model: Option<&ViewMut<'_, T>>,
    grad_mult: f32,
) -> Result<()> {
    let length = |what, got| {
        if got == len {
            Ok(())
        } else {
            Err(OptimError::Length {
                optimizer,
                what,
                got,
                want: len,
            })
        }
    };
    length("params", params.len)?;
    length("grads", grads.len)?;
    if let Some(m) = model {
        length("model", m.len)?;
    }
    let dp = params.dtype();
    if !matches!(dp, DType::F32 | DType::BF16 | DType::F16) {
        return Err(OptimError::DType {
            optimizer,
            what: "params",
            dtype: dp,
            msg: "parameters must be F32 master weights, or BF16/F16 in the pure low-precision mode",
        });
    }
    if !grad_mult.is_finite() {
        return Err(OptimError::InvalidConfig {
            optimizer,
            field: "grad_mult",
            value: grad_mult.to_string(),
            msg: "the gradient factor (clip / scale) must be finite",
        });
    }
    Ok(())
}

/// The elements `r` of a writable view.
pub(crate) fn sub_mut<'a, T: ?Sized>(
    v: &'a mut ViewMut<'_, T>,
    r: &Range<usize>,
) -> ViewMut<'a, T> {
    ViewMut {
        buf: &mut *v.buf,
        offset: v.offset + r.start,
        len: r.len(),
    }
}

/// The elements `r` of a read-only view.
pub(crate) fn sub<'a, T: ?Sized>(v: &View<'a, T>, r: &Range<usize>) -> View<'a, T> {
    View {
        buf: v.buf,
        offset: v.offset + r.start,
        len: r.len(),
    }
}

/// The rounding of step `step`: stochastic rounding gets a fresh stream per step (derived
/// from the configured seed), so successive steps do not reuse the same random bits.
pub(crate) fn step_rounding(rounding: Rounding, step: u64) -> Rounding {
    match rounding {
        Rounding::NearestEven => Rounding::NearestEven,
        Rounding::Stochastic { seed } => Rounding::Stochastic {
            seed: seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        },
    }
}

/// An [`OptimError::InvalidConfig`] unless `ok`.
pub(crate) fn require(
    ok: bool,
    optimizer: &'static str,
    field: &'static str,
    value: impl ToString,
    msg: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(OptimError::InvalidConfig {
            optimizer,
            field,
            value: value.to_string(),
            msg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_seeds_differ_and_rne_is_kept() {
        let r = Rounding::Stochastic { seed: 5 };
        assert_ne!(step_rounding(r, 1), step_rounding(r, 2));
        assert_eq!(step_rounding(r, 1), step_rounding(r, 1));
        assert_eq!(
            step_rounding(Rounding::NearestEven, 3),
            Rounding::NearestEven
        );
    }
}
