//! Bulk conversions between `f32` slices and buffers of any [`DType`].
//!
//! Large slices are split into chunks of [`PARALLEL_THRESHOLD`] elements that rayon converts in
//! parallel; chunk boundaries are multiples of 64 elements, and every element's result depends
//! only on its value and (for stochastic rounding) its absolute index, so the output does not
//! depend on the number of threads.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::rng::{mix32, seed_key};
use crate::simd::{self, Isa};
use crate::{DType, DTypeError, Rounding, bits_to_f32, f32_to_bits, f32_to_bits_sr};

/// Slices with at least this many elements are converted in parallel, in chunks of this many.
pub const PARALLEL_THRESHOLD: usize = 1 << 16;

/// How [`encode`] rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EncodeOptions {
    /// Round to nearest even (default) or stochastically.
    pub rounding: Rounding,
    /// Clamp out-of-range values (and ±inf) to ±max instead of producing ±inf (or NaN for
    /// [`DType::F8E4M3`]).
    pub saturate: bool,
    /// The absolute index of `src[0]` in the stochastic-rounding stream: element `i` uses
    /// [`crate::sr_random`]`(seed, index_offset + i)`. Lets a buffer be converted in pieces (or
    /// on several devices) with the same result as in one go.
    pub index_offset: u64,
}

/// Runs `f(first_element, src_chunk, dst_chunk)` over matching chunks, in parallel when large.
fn for_each_chunk<S: Sync, D: Send>(
    src: &[S],
    src_per_elem: usize,
    dst: &mut [D],
    dst_per_elem: usize,
    f: impl Fn(usize, &[S], &mut [D]) + Sync + Send,
) {
    let n = src.len() / src_per_elem;
    if n < PARALLEL_THRESHOLD || rayon::current_num_threads() == 1 {
        f(0, src, dst);
        return;
    }
    src.par_chunks(PARALLEL_THRESHOLD * src_per_elem)
        .zip(dst.par_chunks_mut(PARALLEL_THRESHOLD * dst_per_elem))
        .enumerate()
        .for_each(|(i, (s, d))| f(i * PARALLEL_THRESHOLD, s, d));
}

fn check_len(op: &'static str, src: usize, dst: usize) -> Result<(), DTypeError> {
    if src == dst {
        Ok(())
    } else {
        Err(DTypeError::LengthMismatch { op, src, dst })
    }
}

/// Element count of a byte buffer of `dtype`, or the ragged-length error.
fn elements(op: &'static str, bytes: usize, dtype: DType) -> Result<usize, DTypeError> {
    let size = dtype.size_in_bytes();
    if bytes.is_multiple_of(size) {
        Ok(bytes / size)
    } else {
        Err(DTypeError::RaggedBytes { op, bytes, dtype })
    }
}

/// Converts `src` to `dtype`, writing little-endian elements into `dst`
/// (`dst.len() == src.len() * dtype.size_in_bytes()`).
///
/// Bit for bit the scalar reference: [`f32_to_bits`] for [`Rounding::NearestEven`] and
/// [`f32_to_bits_sr`] with `sr_random(seed, opts.index_offset + i)` for element `i` under
/// [`Rounding::Stochastic`]. BF16/F16 round-to-nearest-even uses the SIMD paths.
///
/// # Errors
/// [`DTypeError::RaggedBytes`] or [`DTypeError::LengthMismatch`] if the lengths do not match.
pub fn encode(
    src: &[f32],
    dst: &mut [u8],
    dtype: DType,
    opts: &EncodeOptions,
) -> Result<(), DTypeError> {
    const OP: &str = "encode";
    let n = elements(OP, dst.len(), dtype)?;
    check_len(OP, src.len(), n)?;
    let size = dtype.size_in_bytes();
    let fast16 = matches!(opts.rounding, Rounding::NearestEven)
        && !opts.saturate
        && matches!(dtype, DType::BF16 | DType::F16);
    if fast16 && cfg!(target_endian = "little") {
        if let Ok(dst16) = bytemuck::try_cast_slice_mut::<u8, u16>(dst) {
            encode16(src, dst16, dtype);
            return Ok(());
        }
        // Unaligned destination: convert through an aligned scratch buffer per chunk.
        for_each_chunk(src, 1, dst, 2, |_, s, d| {
            let mut tmp = [0u16; 1024];
            for (sc, dc) in s.chunks(tmp.len()).zip(d.chunks_mut(2 * tmp.len())) {
                let t = &mut tmp[..sc.len()];
                encode16_serial(sc, t, dtype, false);
                dc.copy_from_slice(bytemuck::cast_slice(t));
            }
        });
        return Ok(());
    }
    let saturate = opts.saturate;
    match (dtype, opts.rounding) {
        (DType::F32, _) => for_each_chunk(src, 1, dst, 4, |_, s, d| {
            for (x, o) in s.iter().zip(d.chunks_exact_mut(4)) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }),
        (_, Rounding::NearestEven) => for_each_chunk(src, 1, dst, size, |_, s, d| {
            for (&x, o) in s.iter().zip(d.chunks_exact_mut(size)) {
                let b = f32_to_bits(x, dtype, saturate).to_le_bytes();
                o.copy_from_slice(&b[..size]);
            }
        }),
        (_, Rounding::Stochastic { seed }) => {
            let key = seed_key(seed);
            let offset = opts.index_offset;
            for_each_chunk(src, 1, dst, size, |first, s, d| {
                let start = offset.wrapping_add(first as u64);
                if dtype == DType::BF16
                    && cfg!(target_endian = "little")
                    && let Ok(d16) = bytemuck::try_cast_slice_mut::<u8, u16>(d)
                {
                    for_each_random(key, start, s.len(), |i0, i1, lo, hi_key| {
                        bf16_sr_run(&s[i0..i1], &mut d16[i0..i1], lo, hi_key, saturate);
                    });
                    return;
                }
                for_each_random(key, start, s.len(), |i0, i1, lo, hi_key| {
                    let out = d[i0 * size..i1 * size].chunks_exact_mut(size);
                    for ((o, &x), k) in out.zip(&s[i0..i1]).zip(0u32..) {
                        let r = mix32(lo.wrapping_add(k) ^ hi_key);
                        let b = f32_to_bits_sr(x, dtype, saturate, r).to_le_bytes();
                        o.copy_from_slice(&b[..size]);
                    }
                });
            })
        }
    }
    Ok(())
}

/// Splits elements `0..n` (absolute indices `start..start + n`) into runs whose index has a
/// constant high word, and calls `f(i0, i1, lo, hi_key)` per run: the random bits of element
/// `i0 + k` are `mix32(lo.wrapping_add(k) ^ hi_key)` = `sr_random(seed, start + i0 + k)`, the
/// parts constant over the run hoisted (one `mix32` per element, which vectorises).
#[inline(always)]
fn for_each_random(key: u32, start: u64, n: usize, mut f: impl FnMut(usize, usize, u32, u32)) {
    let mut i0 = 0usize;
    while i0 < n {
        let idx = start.wrapping_add(i0 as u64);
        // Elements left before the low word wraps (at least 1).
        let to_wrap = (1u64 << 32) - (idx & 0xffff_ffff);
        let i1 = n.min(i0.saturating_add(usize::try_from(to_wrap).unwrap_or(usize::MAX)));
        let hi_key = mix32(((idx >> 32) as u32) ^ key);
        let lo = idx as u32;
        f(i0, i1, lo, hi_key);
        i0 = i1;
    }
}

/// Stochastic rounding f32 -> BF16, branch-free; bit for bit [`f32_to_bits_sr`] for BF16
/// (`s = 16`: up iff `(r >> 16) < (bits & 0xffff)`, and a carry into the exponent field
/// reaches exactly the next value, infinity included).
#[inline(always)]
fn bf16_sr(x: f32, r: u32, saturate: bool) -> u16 {
    let b = x.to_bits();
    let a = b & 0x7fff_ffff;
    let up = ((r >> 16) < (b & 0xffff)) as u32;
    let mut h = (b >> 16) + up;
    if saturate && h & 0x7fff >= 0x7f80 && a <= 0x7f80_0000 {
        h = ((b >> 16) & 0x8000) | 0x7f7f;
    }
    if a > 0x7f80_0000 {
        h = (b >> 16) | 0x0040;
    }
    h as u16
}

/// Stochastic rounding of a run to BF16, element `k` drawing `mix32((lo + k) ^ hi_key)`;
/// compiled for AVX2 too (it then vectorises, `vpmulld` doing the hash) and dispatched at run
/// time.
fn bf16_sr_run(src: &[f32], dst: &mut [u16], lo: u32, hi_key: u32, saturate: bool) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available, checked just above.
        unsafe { bf16_sr_run_avx2(src, dst, lo, hi_key, saturate) };
        return;
    }
    bf16_sr_run_body(src, dst, lo, hi_key, saturate);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn bf16_sr_run_avx2(src: &[f32], dst: &mut [u16], lo: u32, hi_key: u32, saturate: bool) {
    bf16_sr_run_body(src, dst, lo, hi_key, saturate);
}

#[inline(always)]
fn bf16_sr_run_body(src: &[f32], dst: &mut [u16], lo: u32, hi_key: u32, saturate: bool) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    for k in 0..n {
        let r = mix32(lo.wrapping_add(k as u32) ^ hi_key);
        dst[k] = bf16_sr(src[k], r, saturate);
    }
}

/// Decodes little-endian `dtype` elements from `src` into `dst`
/// (`src.len() == dst.len() * dtype.size_in_bytes()`); exact, bit for bit [`bits_to_f32`].
///
/// # Errors
/// [`DTypeError::RaggedBytes`] or [`DTypeError::LengthMismatch`] if the lengths do not match.
pub fn decode(src: &[u8], dtype: DType, dst: &mut [f32]) -> Result<(), DTypeError> {
    const OP: &str = "decode";
    let n = elements(OP, src.len(), dtype)?;
    check_len(OP, n, dst.len())?;
    let size = dtype.size_in_bytes();
    if matches!(dtype, DType::BF16 | DType::F16) && cfg!(target_endian = "little") {
        if let Ok(src16) = bytemuck::try_cast_slice::<u8, u16>(src) {
            decode16(src16, dtype, dst);
            return Ok(());
        }
        for_each_chunk(src, 2, dst, 1, |_, s, d| {
            let mut tmp = [0u16; 1024];
            for (sc, dc) in s.chunks(2 * tmp.len()).zip(d.chunks_mut(tmp.len())) {
                let t = &mut tmp[..dc.len()];
                for (v, b) in t.iter_mut().zip(sc.chunks_exact(2)) {
                    *v = u16::from_le_bytes([b[0], b[1]]);
                }
                decode16_serial(t, dtype, dc, false);
            }
        });
        return Ok(());
    }
    for_each_chunk(src, size, dst, 1, |_, s, d| {
        for (b, o) in s.chunks_exact(size).zip(d.iter_mut()) {
            let mut w = [0u8; 4];
            w[..size].copy_from_slice(b);
            *o = bits_to_f32(u32::from_le_bytes(w), dtype);
        }
    });
    Ok(())
}

/// Destinations at least this large (bytes) are written with non-temporal stores, which skip
/// the read-for-ownership of the destination lines and leave the caches to the source:
/// worthwhile only far beyond the last-level cache.
pub(crate) const STREAM_THRESHOLD_BYTES: usize = 16 << 20;

fn encode16_serial(src: &[f32], dst: &mut [u16], dtype: DType, stream: bool) {
    if dtype == DType::BF16 {
        simd::run_f32_to_bf16(Isa::best_for_bf16(), src, dst, stream);
    } else {
        simd::run_f32_to_f16(Isa::best_for_f16(), src, dst, stream);
    }
}

fn decode16_serial(src: &[u16], dtype: DType, dst: &mut [f32], stream: bool) {
    if dtype == DType::BF16 {
        simd::run_bf16_to_f32(Isa::best_for_bf16(), src, dst, stream);
    } else {
        simd::run_f16_to_f32(Isa::best_for_f16(), src, dst, stream);
    }
}

fn encode16(src: &[f32], dst: &mut [u16], dtype: DType) {
    let stream = 2 * dst.len() >= STREAM_THRESHOLD_BYTES;
    for_each_chunk(src, 1, dst, 1, |_, s, d| {
        encode16_serial(s, d, dtype, stream)
    });
}

fn decode16(src: &[u16], dtype: DType, dst: &mut [f32]) {
    let stream = 4 * dst.len() >= STREAM_THRESHOLD_BYTES;
    for_each_chunk(src, 1, dst, 1, |_, s, d| {
        decode16_serial(s, dtype, d, stream)
    });
}

/// f32 -> BF16, round to nearest even, SIMD and parallel; bit for bit `half::bf16::from_f32`.
///
/// # Errors
/// [`DTypeError::LengthMismatch`] if the slices differ in length.
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) -> Result<(), DTypeError> {
    check_len("f32_to_bf16", src.len(), dst.len())?;
    encode16(src, bytemuck::cast_slice_mut(dst), DType::BF16);
    Ok(())
}

/// BF16 -> f32, exact (NaN quietened), SIMD and parallel.
///
/// # Errors
/// [`DTypeError::LengthMismatch`] if the slices differ in length.
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) -> Result<(), DTypeError> {
    check_len("bf16_to_f32", src.len(), dst.len())?;
    decode16(bytemuck::cast_slice(src), DType::BF16, dst);
    Ok(())
}

/// f32 -> F16, round to nearest even, SIMD and parallel; bit for bit `half::f16::from_f32`.
///
/// # Errors
/// [`DTypeError::LengthMismatch`] if the slices differ in length.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) -> Result<(), DTypeError> {
    check_len("f32_to_f16", src.len(), dst.len())?;
    encode16(src, bytemuck::cast_slice_mut(dst), DType::F16);
    Ok(())
}

/// F16 -> f32, exact (NaN quietened), SIMD and parallel.
///
/// # Errors
/// [`DTypeError::LengthMismatch`] if the slices differ in length.
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) -> Result<(), DTypeError> {
    check_len("f16_to_f32", src.len(), dst.len())?;
    decode16(bytemuck::cast_slice(src), DType::F16, dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sr_random;

    #[test]
    fn branch_free_bf16_sr_is_the_scalar_reference() {
        for i in 0..1u32 << 20 {
            // Every exponent (NaN, inf, subnormals included), random mantissas and bits.
            let x = f32::from_bits(mix32(i) ^ (i << 23));
            let r = mix32(!i);
            for saturate in [false, true] {
                let want = f32_to_bits_sr(x, DType::BF16, saturate, r);
                assert_eq!(
                    bf16_sr(x, r, saturate) as u32,
                    want,
                    "{:#010x}",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn hoisted_randoms_equal_sr_random() {
        let key = seed_key(5);
        for start in [0u64, (1 << 32) - 7, u64::MAX - 3, 1 << 40] {
            let mut seen = 0;
            for_each_random(key, start, 20, |i0, i1, lo, hi_key| {
                for k in 0..(i1 - i0) as u32 {
                    let idx = start.wrapping_add((i0 as u64) + k as u64);
                    assert_eq!(mix32(lo.wrapping_add(k) ^ hi_key), sr_random(5, idx));
                    seen += 1;
                }
            });
            assert_eq!(seen, 20);
        }
    }
}
