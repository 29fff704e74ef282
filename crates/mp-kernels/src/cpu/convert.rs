//! Widening loads and rounding stores between raw element bytes and f32.
//!
//! Every CPU kernel reads its inputs through [`load`] (a zero-copy reinterpretation for F32,
//! a widening conversion into a reusable scratch vector otherwise) and writes its outputs
//! through [`with_f32_mut`] or [`narrow`], so only these few functions know about storage
//! formats. Conversions of the low-precision formats come from `mp-dtype`.

use crate::Result;
use crate::backend::Rounding;
use mp_dtype::DType;

/// Reinterprets element bytes of an F32 buffer as `f32`s.
///
/// The CPU buffer stores its bytes in `u64`-aligned memory and views start at whole elements,
/// so the cast never fails on slices the backend produces.
pub(crate) fn as_f32(bytes: &[u8]) -> &[f32] {
    bytemuck::cast_slice(bytes)
}

/// Mutable counterpart of [`as_f32`].
pub(crate) fn as_f32_mut(bytes: &mut [u8]) -> &mut [f32] {
    bytemuck::cast_slice_mut(bytes)
}

/// Widens `src` (elements of `dtype`) into `dst` (same number of elements).
pub(crate) fn widen(dtype: DType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => dst.copy_from_slice(as_f32(src)),
        DType::BF16 => {
            let s: &[u16] = bytemuck::cast_slice(src);
            for (d, &h) in dst.iter_mut().zip(s) {
                *d = f32::from_bits(u32::from(h) << 16);
            }
        }
        DType::F16 | DType::F8E4M3 | DType::F8E5M2 => {
            // Lengths match by construction (callers slice whole elements), so this cannot
            // fail; a mismatch would be a bug caught in debug builds.
            let r = mp_dtype::decode(src, dtype, dst);
            debug_assert!(r.is_ok(), "{r:?}");
        }
    }
}

/// The elements of `src` as f32: borrowed for F32, widened into `tmp` otherwise.
pub(crate) fn load<'a>(dtype: DType, src: &'a [u8], tmp: &'a mut Vec<f32>) -> &'a [f32] {
    if dtype == DType::F32 {
        as_f32(src)
    } else {
        let n = src.len() / dtype.size_in_bytes();
        tmp.clear();
        tmp.resize(n, 0.0);
        widen(dtype, src, tmp);
        tmp
    }
}

/// Rounds `src` to nearest even into `dst` (elements of `dtype`, same count).
pub(crate) fn narrow(dtype: DType, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => as_f32_mut(dst).copy_from_slice(src),
        _ => {
            // Lengths match by construction: cannot fail (checked in debug builds).
            let r = mp_dtype::encode(src, dst, dtype, &mp_dtype::EncodeOptions::default());
            debug_assert!(r.is_ok(), "{r:?}");
        }
    }
}

/// Rounds `src` into `dst` with `rounding`; `index_offset` is the absolute element index of
/// `src[0]` within the destination buffer (the stochastic-rounding counter).
pub(crate) fn narrow_with(
    dtype: DType,
    src: &[f32],
    dst: &mut [u8],
    rounding: Rounding,
    index_offset: usize,
) -> Result<()> {
    match rounding {
        Rounding::NearestEven => {
            narrow(dtype, src, dst);
            Ok(())
        }
        Rounding::Stochastic { .. } if dtype == DType::F32 => {
            narrow(dtype, src, dst);
            Ok(())
        }
        Rounding::Stochastic { .. } => {
            let opts = mp_dtype::EncodeOptions {
                rounding,
                index_offset: index_offset as u64,
                ..Default::default()
            };
            mp_dtype::encode(src, dst, dtype, &opts)?;
            Ok(())
        }
    }
}

/// Runs `f` on the elements of `dst` as f32 and stores the result back rounded to nearest
/// even. For F32 `f` works in place; otherwise on `tmp`, which is first filled with the
/// current values when `read` is set (read-modify-write ops such as `+=`).
pub(crate) fn with_f32_mut<R>(
    dtype: DType,
    dst: &mut [u8],
    tmp: &mut Vec<f32>,
    read: bool,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    if dtype == DType::F32 {
        return f(as_f32_mut(dst));
    }
    let n = dst.len() / dtype.size_in_bytes();
    tmp.clear();
    tmp.resize(n, 0.0);
    if read {
        widen(dtype, dst, tmp);
    }
    let r = f(tmp);
    narrow(dtype, tmp, dst);
    r
}
