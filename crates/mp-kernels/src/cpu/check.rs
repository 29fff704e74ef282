//! Argument validation shared by the CPU kernels: every view is bounds-checked and every
//! length compared with what the op's shape implies before any kernel touches memory.

use super::CpuBuffer;
use crate::backend::{View, ViewMut};
use crate::{KernelError, Result};
use mp_dtype::DType;

/// The device name used in error messages.
pub(crate) const DEVICE: &str = "cpu";

/// A [`KernelError::Shape`] for `op` on the CPU.
pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        device: DEVICE.to_string(),
        msg: msg.into(),
    }
}

/// A [`KernelError::UnsupportedDType`] for `op` on the CPU.
pub(crate) fn dtype_err(op: &'static str, dtype: DType, detail: impl Into<String>) -> KernelError {
    let detail = detail.into();
    KernelError::UnsupportedDType {
        op,
        device: DEVICE.to_string(),
        dtype,
        detail: if detail.is_empty() {
            detail
        } else {
            format!(": {detail}")
        },
    }
}

/// Fails unless `got == want`, naming the argument.
pub(crate) fn expect_len(op: &'static str, name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{name} has {got} elements, expected {want}"),
        ))
    }
}

/// Fails unless the buffer has `dtype`.
pub(crate) fn expect_dtype(op: &'static str, name: &str, got: DType, want: DType) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(dtype_err(op, got, format!("{name} must be {want}")))
    }
}

fn range(op: &'static str, name: &str, offset: usize, len: usize, buf_len: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        _ => Err(shape_err(
            op,
            format!("{name}: view {offset}+{len} is outside its buffer of {buf_len} elements"),
        )),
    }
}

/// The bytes of a view's elements, after checking the view lies inside its buffer.
pub(crate) fn bytes<'a>(op: &'static str, name: &str, v: View<'a, CpuBuffer>) -> Result<&'a [u8]> {
    range(op, name, v.offset, v.len, v.buf.len())?;
    let s = v.buf.dtype().size_in_bytes();
    Ok(&v.buf.as_bytes()[v.offset * s..(v.offset + v.len) * s])
}

/// The bytes of a writable view's elements, after checking the view lies inside its buffer.
pub(crate) fn bytes_mut<'a>(
    op: &'static str,
    name: &str,
    v: ViewMut<'a, CpuBuffer>,
) -> Result<&'a mut [u8]> {
    range(op, name, v.offset, v.len, v.buf.len())?;
    let s = v.buf.dtype().size_in_bytes();
    Ok(&mut v.buf.as_bytes_mut()[v.offset * s..(v.offset + v.len) * s])
}

/// `a * b`, or a shape error when it overflows `usize`.
pub(crate) fn mul(op: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| shape_err(op, format!("{a} x {b} elements overflow")))
}

/// Checks that every index is below `limit`, naming the first offender.
pub(crate) fn check_ids(op: &'static str, name: &str, ids: &[u32], limit: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= limit) {
        None => Ok(()),
        Some(p) => Err(shape_err(
            op,
            format!(
                "{name}[{p}] = {} is out of range (must be < {limit})",
                ids[p]
            ),
        )),
    }
}
