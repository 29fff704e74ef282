//! The CPU kernels' access to memory: a view's bytes, bounds-checked once more (the op's
//! contract, [`crate::contract`], has already validated every argument).

use super::CpuBuffer;
use crate::backend::{View, ViewMut};
use crate::{KernelError, Result};

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
