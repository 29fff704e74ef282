//! x86-64 kernels: AVX2 (+F16C), AVX-512F and AVX-512 BF16.
//!
//! Every function here is `unsafe` only because it requires its target features: the caller
//! must have checked them (see [`super::Isa::is_available`]). Slices are accessed with unaligned
//! loads/stores strictly inside their bounds; the tails go through the portable kernels.

use std::arch::x86_64::*;

use super::portable;

/// Elements to convert one by one before `dst[i..]` is `align`-byte aligned, so that the vector
/// loop may use non-temporal stores (none when not streaming).
fn head<T>(dst: &[T], stream: bool, n: usize, align: usize) -> usize {
    if stream {
        dst.as_ptr().align_offset(align).min(n)
    } else {
        0
    }
}

/// Stores 32 bytes at `p`: non-temporal (`p` must then be 32-byte aligned) or plain unaligned.
///
/// # Safety
/// `p` must be valid for a 32-byte write; AVX must be available.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn store256(p: *mut __m256i, v: __m256i, stream: bool) {
    // SAFETY: the caller guarantees `p` is writable (and aligned when streaming).
    unsafe {
        if stream {
            _mm256_stream_si256(p, v)
        } else {
            _mm256_storeu_si256(p, v)
        }
    }
}

/// Stores 64 bytes at `p`: non-temporal (`p` must then be 64-byte aligned) or plain unaligned.
///
/// # Safety
/// `p` must be valid for a 64-byte write; AVX-512F must be available.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store512(p: *mut __m512i, v: __m512i, stream: bool) {
    // SAFETY: the caller guarantees `p` is writable (and aligned when streaming).
    unsafe {
        if stream {
            _mm512_stream_si512(p.cast(), v)
        } else {
            _mm512_storeu_si512(p.cast(), v)
        }
    }
}

/// Round-to-nearest-even of eight f32 (as integers) to BF16 in the low half of each lane.
#[inline]
#[target_feature(enable = "avx2")]
fn bf16_round_avx2(x: __m256i) -> __m256i {
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
    let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(x, bias));
    let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7fff_ffff));
    let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
    let nan = _mm256_or_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(0x40));
    _mm256_blendv_epi8(rounded, nan, is_nan)
}

/// f32 -> BF16 with AVX2 integer arithmetic.
///
/// # Safety
/// The CPU must support AVX2; `src.len() == dst.len()`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn f32_to_bf16_avx2(src: &[f32], dst: &mut [u16], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 32);
    portable::f32_to_bf16(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so both 8-lane loads and the 16-lane store are in bounds.
        unsafe {
            let a = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let b = _mm256_loadu_si256(src.as_ptr().add(i + 8).cast());
            let packed = _mm256_packus_epi32(bf16_round_avx2(a), bf16_round_avx2(b));
            // packus interleaves 128-bit lanes: a0..3 b0..3 a4..7 b4..7 -> a0..7 b0..7.
            let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            store256(dst.as_mut_ptr().add(i).cast(), ordered, stream);
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::f32_to_bf16(&src[i..n], &mut dst[i..n]);
}

/// Eight BF16 (zero-extended in 32-bit lanes) to f32 bits, NaN quietened.
#[inline]
#[target_feature(enable = "avx2")]
fn bf16_widen_avx2(h: __m256i) -> __m256i {
    let w = _mm256_slli_epi32::<16>(h);
    let abs = _mm256_and_si256(w, _mm256_set1_epi32(0x7fff_ffff));
    let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
    _mm256_or_si256(w, _mm256_and_si256(is_nan, _mm256_set1_epi32(0x0040_0000)))
}

/// BF16 -> f32 with AVX2.
///
/// # Safety
/// The CPU must support AVX2; `src.len() == dst.len()`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn bf16_to_f32_avx2(src: &[u16], dst: &mut [f32], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 32);
    portable::bf16_to_f32(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: the two 8-element loads and stores are in bounds.
        unsafe {
            let lo = _mm_loadu_si128(src.as_ptr().add(i).cast());
            let hi = _mm_loadu_si128(src.as_ptr().add(i + 8).cast());
            let a = bf16_widen_avx2(_mm256_cvtepu16_epi32(lo));
            let b = bf16_widen_avx2(_mm256_cvtepu16_epi32(hi));
            store256(dst.as_mut_ptr().add(i).cast(), a, stream);
            store256(dst.as_mut_ptr().add(i + 8).cast(), b, stream);
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::bf16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// f32 -> F16 with F16C `vcvtps2ph` (round to nearest even, independent of MXCSR).
///
/// # Safety
/// The CPU must support AVX and F16C; `src.len() == dst.len()`.
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [u16], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 32);
    portable::f32_to_f16(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: the two 8-lane loads and stores are in bounds.
        unsafe {
            let a = _mm256_loadu_ps(src.as_ptr().add(i));
            let b = _mm256_loadu_ps(src.as_ptr().add(i + 8));
            let ha = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a);
            let hb = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(b);
            store256(
                dst.as_mut_ptr().add(i).cast(),
                _mm256_set_m128i(hb, ha),
                stream,
            );
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::f32_to_f16(&src[i..n], &mut dst[i..n]);
}

/// F16 -> f32 with F16C `vcvtph2ps` (exact; NaN quietened).
///
/// # Safety
/// The CPU must support AVX and F16C; `src.len() == dst.len()`.
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 32);
    portable::f16_to_f32(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: the two 8-element loads and stores are in bounds.
        unsafe {
            let a = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i + 8).cast()));
            store256(
                dst.as_mut_ptr().add(i).cast(),
                _mm256_castps_si256(a),
                stream,
            );
            store256(
                dst.as_mut_ptr().add(i + 8).cast(),
                _mm256_castps_si256(b),
                stream,
            );
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::f16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// Round-to-nearest-even of sixteen f32 (as integers) to BF16, as 16-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn bf16_round_avx512(x: __m512i) -> __m256i {
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
    let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
    let nan = _mm512_or_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(0x40));
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, nan))
}

/// f32 -> BF16 with AVX-512F integer arithmetic.
///
/// # Safety
/// The CPU must support AVX-512F; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn f32_to_bf16_avx512(src: &[f32], dst: &mut [u16], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 64);
    portable::f32_to_bf16(&src[..i], &mut dst[..i]);
    while i + 32 <= n {
        // SAFETY: i + 32 <= n: two 16-lane loads and two 16-element stores in bounds.
        unsafe {
            let a = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let b = _mm512_loadu_si512(src.as_ptr().add(i + 16).cast());
            let h = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(bf16_round_avx512(a)),
                bf16_round_avx512(b),
            );
            store512(dst.as_mut_ptr().add(i).cast(), h, stream);
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    portable::f32_to_bf16(&src[i..n], &mut dst[i..n]);
}

/// f32 -> BF16 with AVX-512 BF16 `vcvtne2ps2bf16`.
///
/// The instruction treats f32 subnormal inputs as zero, whereas BF16 (same exponent range as
/// f32) represents them; a block holding any f32 subnormal is converted by the integer path.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512 BF16; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn f32_to_bf16_avx512bf16(src: &[f32], dst: &mut [u16], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 64);
    portable::f32_to_bf16(&src[..i], &mut dst[..i]);
    let exp = _mm512_set1_epi32(0x7f80_0000);
    let man = _mm512_set1_epi32(0x007f_ffff);
    while i + 32 <= n {
        // SAFETY: i + 32 <= n: two 16-lane loads and one 32-element store in bounds.
        unsafe {
            let a = _mm512_loadu_ps(src.as_ptr().add(i));
            let b = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let (ai, bi) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
            let sub_a = _mm512_testn_epi32_mask(ai, exp) & _mm512_test_epi32_mask(ai, man);
            let sub_b = _mm512_testn_epi32_mask(bi, exp) & _mm512_test_epi32_mask(bi, man);
            if sub_a | sub_b == 0 {
                // Low half of the result from the second operand.
                let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                store512(dst.as_mut_ptr().add(i).cast(), h, stream);
            } else {
                let h = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(bf16_round_avx512(ai)),
                    bf16_round_avx512(bi),
                );
                store512(dst.as_mut_ptr().add(i).cast(), h, stream);
            }
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    portable::f32_to_bf16(&src[i..n], &mut dst[i..n]);
}

/// BF16 -> f32 with AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn bf16_to_f32_avx512(src: &[u16], dst: &mut [f32], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 64);
    portable::bf16_to_f32(&src[..i], &mut dst[..i]);
    let absmask = _mm512_set1_epi32(0x7fff_ffff);
    let inf = _mm512_set1_epi32(0x7f80_0000);
    let quiet = _mm512_set1_epi32(0x0040_0000);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: one 16-element load and one 16-lane store in bounds.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let w = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
            let is_nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(w, absmask), inf);
            let w = _mm512_mask_or_epi32(w, is_nan, w, quiet);
            store512(dst.as_mut_ptr().add(i).cast(), w, stream);
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::bf16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// f32 -> F16 with AVX-512F `vcvtps2ph` on 16 lanes.
///
/// # Safety
/// The CPU must support AVX-512F; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [u16], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 32);
    portable::f32_to_f16(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: one 16-lane load and one 16-element store in bounds.
        unsafe {
            let a = _mm512_loadu_ps(src.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a);
            store256(dst.as_mut_ptr().add(i).cast(), h, stream);
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::f32_to_f16(&src[i..n], &mut dst[i..n]);
}

/// F16 -> f32 with AVX-512F `vcvtph2ps` on 16 lanes.
///
/// # Safety
/// The CPU must support AVX-512F; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn f16_to_f32_avx512(src: &[u16], dst: &mut [f32], stream: bool) {
    let n = src.len().min(dst.len());
    let mut i = head(dst, stream, n, 64);
    portable::f16_to_f32(&src[..i], &mut dst[..i]);
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: one 16-element load and one 16-lane store in bounds.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let w = _mm512_castps_si512(_mm512_cvtph_ps(h));
            store512(dst.as_mut_ptr().add(i).cast(), w, stream);
        }
        i += 16;
    }
    if stream {
        _mm_sfence();
    }
    portable::f16_to_f32(&src[i..n], &mut dst[i..n]);
}
