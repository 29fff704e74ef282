//! The gradient check of the fused scaler pass: whether any element of a flat gradient buffer
//! (any dtype) is inf or NaN, and `sum((g * grad_mult)^2)` for the global norm, in one read
//! pass that runs at memory bandwidth.
//!
//! # Paths
//!
//! - **AVX2 + FMA + F16C** (x86-64, detected at run time; F32, BF16 and F16 gradients): a
//!   block is read straight from the buffer 32 elements at a time (BF16 widened by one unpack
//!   against zero, F16 by `vcvtph2ps`), prefetched 4 KiB ahead, and `g^2` is added by FMA into
//!   4 x 8 f32 lanes. Each lane takes at most [`x86::STRIP`] terms before the lanes are
//!   converted to f64 and added into an f64 total; the block's total is multiplied by
//!   `grad_mult^2` in f64. There is no per-element finiteness test: an inf or NaN element makes
//!   its lane, and so the block's total, inf or NaN (every term is `>= 0`, so nothing
//!   cancels), and a block whose total is not finite is recomputed by the portable path, which
//!   decides the flag exactly (and also covers a finite block whose squares overflow f32).
//! - **portable** (every dtype, every CPU): tiles of [`TILE`] elements, widened to f32 (F32 and
//!   BF16 read in place), `(g * grad_mult)^2` into [`LANES`] f32 lanes (64 terms a lane), each
//!   tile's lanes added into f64. The flag is `g * 0` summed in lanes: 0 for a finite `g`, NaN
//!   for inf and NaN, so a finite gradient whose square overflows does not trip it.
//!
//! Both paths compute the flag exactly, so they agree on it bit for bit.
//!
//! # Accuracy
//!
//! With `u = 2^-24`, the computed sum of squares is within relative `66u + 2^-53 n + 2^-52`
//! (about `3.9e-6`) of the exact one on either path, plus an absolute `2^-149` per element
//! whose square is subnormal in f32: on the AVX2 path a BF16/F16 square is exact in f32 (8 and
//! 11 significant bits) and an F32 square is rounded once inside its FMA, and a lane rounds at
//! most 64 additions of nonnegative terms (`<= 64u`); the portable path rounds
//! `g * grad_mult` and its square (`3u`) and 63 lane additions. The f64 stage adds `2^-53` per
//! addition. The two paths are not bit-identical with each other.
//!
//! # Determinism
//!
//! The buffer splits into fixed blocks of [`BLOCK`] elements whatever the thread count; each
//! block's sum is computed in a fixed order and the blocks are added in f64 in index order.
//! The path depends only on the CPU, so a machine reproduces its result bit for bit.

use super::{BLOCK, Grads, TILE};
use crate::Result;
use crate::backend::{GradStats, View};
use crate::cpu::CpuBuffer;
use crate::cpu::check::bytes;
use crate::cpu::math::simd_dispatch;
use rayon::prelude::*;

/// Accumulator lanes of the portable path.
const LANES: usize = 16;
/// Blocks per rayon task: big contiguous chunks keep each core's hardware prefetcher on one
/// stream.
const TASK_BLOCKS: usize = 8;

/// Which implementation a block runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// AVX2 + FMA + F16C where the dtype has a kernel, portable otherwise.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Simd,
    /// The portable path only.
    Portable,
}

impl Path {
    /// The fastest path this CPU can run.
    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Path::Simd;
        }
        Path::Portable
    }
}

/// Non-finite flag and `sum((g * grad_mult)^2)` over `grads` (any dtype) in one read pass (see
/// the module docs for the paths, the error bound and the summation order).
pub(crate) fn grad_stats(grads: View<'_, CpuBuffer>, grad_mult: f32) -> Result<GradStats> {
    const OP: &str = "grad_stats";
    let n = grads.len;
    let g = Grads::new(grads.dtype(), bytes(OP, "grads", grads)?);
    stats_with(g, n, grad_mult, Path::best())
}

/// [`grad_stats`] over the `n` elements of `g` on `path`.
fn stats_with(g: Grads<'_>, n: usize, mult: f32, path: Path) -> Result<GradStats> {
    let parts: Vec<(bool, f64)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .with_min_len(TASK_BLOCKS)
        .map(|bi| {
            let len = BLOCK.min(n - bi * BLOCK);
            let b = g.sub(bi * BLOCK, len);
            if path == Path::Simd
                && let Some(s) = simd_block(b)
                && s.is_finite()
            {
                let m = f64::from(mult);
                return Ok((false, s * (m * m)));
            }
            portable_block(b, len, mult)
        })
        .collect::<Result<_>>()?;
    let mut out = GradStats::default();
    for (bad, s) in parts {
        out.non_finite |= bad;
        out.sum_sq += s;
    }
    Ok(out)
}

/// `sum(g^2)` of one block on the AVX2 path, or `None` when the CPU or the dtype has no
/// kernel. Not finite when an element is inf or NaN, or when a square overflows f32.
fn simd_block(g: Grads<'_>) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        return unsafe {
            match g {
                Grads::F32(x) => Some(x86::sum_sq::<x86::F32>(x)),
                Grads::Bf16(x) => Some(x86::sum_sq::<x86::Bf16>(x)),
                Grads::Other(mp_dtype::DType::F16, b) => bytemuck::try_cast_slice(b)
                    .ok()
                    .map(|x| x86::sum_sq::<x86::F16>(x)),
                Grads::Other(..) => None,
            }
        };
    }
    let _ = g;
    None
}

/// Adds `(x * mult)^2` and `x * 0` of every element to the lanes (element `i` to lane
/// `i % LANES`). `x * 0` is 0 for every finite x and NaN for +-inf and NaN: a branch-free
/// flag that a huge but finite gradient (whose square overflows) cannot trip.
#[inline(always)]
fn stats_lanes<T: Copy>(
    x: &[T],
    widen: impl Fn(T) -> f32,
    mult: f32,
    acc: &mut [f32; LANES],
    bad: &mut [f32; LANES],
) {
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for l in 0..LANES {
            let v = widen(c[l]);
            let y = v * mult;
            acc[l] += y * y;
            bad[l] += v * 0.0;
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        let v = widen(v);
        let y = v * mult;
        acc[l] += y * y;
        bad[l] += v * 0.0;
    }
}

simd_dispatch! {
    /// [`stats_lanes`] over F32 gradients.
    fn stats_f32(x: &[f32], mult: f32, acc: &mut [f32; LANES], bad: &mut [f32; LANES]) {
        stats_lanes(x, |v| v, mult, acc, bad)
    }
}

simd_dispatch! {
    /// [`stats_lanes`] over BF16 gradients (bit patterns).
    fn stats_bf16(x: &[u16], mult: f32, acc: &mut [f32; LANES], bad: &mut [f32; LANES]) {
        stats_lanes(x, |h| f32::from_bits(u32::from(h) << 16), mult, acc, bad)
    }
}

/// One block on the portable path: `(any non-finite, sum((g * mult)^2))`, f32 lanes per tile
/// added into f64 tile by tile.
fn portable_block(g: Grads<'_>, len: usize, mult: f32) -> Result<(bool, f64)> {
    let mut tile = [0.0f32; TILE];
    let (mut sum, mut bad) = (0.0f64, false);
    let mut t0 = 0;
    while t0 < len {
        let n = TILE.min(len - t0);
        let mut acc = [0.0f32; LANES];
        let mut nan = [0.0f32; LANES];
        match g.sub(t0, n) {
            Grads::Bf16(x) => stats_bf16(x, mult, &mut acc, &mut nan),
            t => stats_f32(t.load(&mut tile, n)?, mult, &mut acc, &mut nan),
        }
        sum += acc.iter().map(|&a| f64::from(a)).sum::<f64>();
        bad |= nan.iter().any(|x| x.is_nan());
        t0 += n;
    }
    Ok((bad, sum))
}

/// The AVX2 + FMA + F16C kernels.
///
/// Slices are read with unaligned loads strictly inside their bounds; the last `len % 32`
/// elements are squared in f32 and added one by one in f64.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Elements per loop iteration: four vectors of eight.
    const STEP: usize = 32;
    /// Iterations per strip: the terms each f32 lane adds before the lanes go into f64.
    pub(super) const STRIP: usize = 64;
    /// How far ahead of the loads the loop prefetches, in bytes. The hardware prefetcher alone
    /// leaves a read-only stream at about 60% of a copy's throughput on the Zen machine this
    /// was tuned on (it stops at page boundaries); 4 KiB ahead brings it past 80%.
    const PREFETCH: usize = 4096;

    /// Whether the CPU can run these kernels.
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// A gradient dtype the kernels read.
    pub(super) trait Kind {
        /// The stored element.
        type Raw: Copy;
        /// The 32 elements at `p` as f32, in any order.
        ///
        /// # Safety
        /// `p` must be valid for reading 32 elements; AVX2 and F16C must be available.
        unsafe fn load32(p: *const Self::Raw) -> [__m256; 4];
        /// One element as f32.
        fn widen(x: Self::Raw) -> f32;
    }

    /// F32 gradients.
    pub(super) enum F32 {}
    /// BF16 gradients (bit patterns).
    pub(super) enum Bf16 {}
    /// F16 gradients (bit patterns).
    pub(super) enum F16 {}

    impl Kind for F32 {
        type Raw = f32;
        #[inline(always)]
        unsafe fn load32(p: *const f32) -> [__m256; 4] {
            // SAFETY: the caller guarantees 32 readable elements at `p`.
            unsafe {
                [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ]
            }
        }
        fn widen(x: f32) -> f32 {
            x
        }
    }

    impl Kind for Bf16 {
        type Raw = u16;
        #[inline(always)]
        unsafe fn load32(p: *const u16) -> [__m256; 4] {
            // SAFETY: the caller guarantees 32 readable elements at `p` and AVX2.
            unsafe {
                let a = _mm256_loadu_si256(p.cast());
                let b = _mm256_loadu_si256(p.add(16).cast());
                let z = _mm256_setzero_si256();
                // Interleaving zero words below each BF16 gives its f32 bits (bf16 << 16).
                [
                    _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, a)),
                    _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, a)),
                    _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b)),
                    _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b)),
                ]
            }
        }
        fn widen(x: u16) -> f32 {
            f32::from_bits(u32::from(x) << 16)
        }
    }

    impl Kind for F16 {
        type Raw = u16;
        #[inline(always)]
        unsafe fn load32(p: *const u16) -> [__m256; 4] {
            // SAFETY: the caller guarantees 32 readable elements at `p` and F16C.
            unsafe {
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(24).cast())),
                ]
            }
        }
        fn widen(x: u16) -> f32 {
            half::f16::from_bits(x).to_f32()
        }
    }

    /// Adds the four f32 accumulators, widened to f64, into `tot`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn flush(acc: [__m256; 4], mut tot: __m256d) -> __m256d {
        for a in acc {
            tot = _mm256_add_pd(tot, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
            tot = _mm256_add_pd(tot, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a)));
        }
        tot
    }

    /// `(t0 + t1) + (t2 + t3)`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(t: __m256d) -> f64 {
        let lo = _mm256_castpd256_pd128(t);
        let hi = _mm256_extractf128_pd::<1>(t);
        let a = _mm_cvtsd_f64(lo) + _mm_cvtsd_f64(_mm_unpackhi_pd(lo, lo));
        let b = _mm_cvtsd_f64(hi) + _mm_cvtsd_f64(_mm_unpackhi_pd(hi, hi));
        a + b
    }

    /// `sum(x^2)`: f32 FMA lanes of at most [`STRIP`] terms, added into f64 (see the module
    /// docs of the parent for the error bound). Inf or NaN when an element is inf or NaN.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn sum_sq<K: Kind>(x: &[K::Raw]) -> f64 {
        let n = x.len();
        let body = n - n % STEP;
        let p = x.as_ptr();
        let mut tot = _mm256_setzero_pd();
        let mut i = 0;
        while i < body {
            let end = body.min(i + STEP * STRIP);
            let mut acc = [_mm256_setzero_ps(); 4];
            while i < end {
                // SAFETY: i + STEP <= body <= n, so the 32 elements at i are in bounds; the
                // features are enabled on this function.
                let v = unsafe { K::load32(p.add(i)) };
                // One prefetch per cache line read, PREFETCH bytes ahead. A prefetch never
                // faults, so the address may run past the slice (hence `wrapping_add`).
                let ahead = p.wrapping_add(i).cast::<i8>().wrapping_add(PREFETCH);
                for line in 0..(STEP * size_of::<K::Raw>()).div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                }
                for k in 0..4 {
                    acc[k] = _mm256_fmadd_ps(v[k], v[k], acc[k]);
                }
                i += STEP;
            }
            tot = flush(acc, tot);
        }
        let mut s = hsum(tot);
        for &r in &x[body..] {
            // Squared in f32 as in the lanes, so an overflowing square is inf here too.
            let v = K::widen(r);
            s += f64::from(v * v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BufferExt;
    use mp_dtype::DType;

    fn buf(data: &[f32], dtype: DType) -> CpuBuffer {
        CpuBuffer::from_f32(data, dtype)
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| (mp_dtype::mix32(i ^ seed) as f32 / u32::MAX as f32 - 0.5) * 2.0)
            .collect()
    }

    /// Values spread over many binades (`2^-20 .. 2^12`, both signs), so the sum is dominated
    /// by a few elements as real gradients are.
    fn wide_data(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let r = mp_dtype::mix32(i.wrapping_mul(0x9e37_79b9) ^ seed);
                let mant = 1.0 + (r & 0xffff) as f32 / 65536.0;
                let exp = ((r >> 16) % 32) as i32 - 20;
                let sign = if r >> 31 == 1 { -1.0 } else { 1.0 };
                sign * mant * 2f32.powi(exp)
            })
            .collect()
    }

    /// `sum((g * mult)^2)` in f64 of the values as stored.
    fn exact(b: &CpuBuffer, mult: f32) -> f64 {
        let m = f64::from(mult);
        b.to_f32_vec()
            .iter()
            .map(|&v| (f64::from(v) * m).powi(2))
            .sum()
    }

    fn stats(b: &CpuBuffer, mult: f32, path: Path) -> GradStats {
        let g = Grads::new(b.dtype(), bytes("test", "grads", b.view()).unwrap());
        stats_with(g, b.len(), mult, path).unwrap()
    }

    /// The error bound of the module docs (both paths), for `n` elements.
    fn bound(n: usize) -> f64 {
        66.0 * 2f64.powi(-24) + n as f64 * 2f64.powi(-53) + 2f64.powi(-52)
    }

    fn simd_available() -> bool {
        let ok = Path::best() == Path::Simd;
        if !ok {
            eprintln!("SKIPPED: the SIMD grad_stats path needs AVX2, FMA and F16C");
        }
        ok
    }

    #[test]
    fn grad_stats_flags_non_finite_and_sums_squares() {
        let n = 3 * BLOCK + 11;
        let x = data(n, 7);
        let want: f64 = x
            .iter()
            .map(|&v| f64::from(v * 0.25) * f64::from(v * 0.25))
            .sum();
        for d in [DType::F32, DType::BF16, DType::F16] {
            let b = buf(&x, d);
            let xs = b.to_f32_vec();
            let want_d: f64 = xs.iter().map(|&v| f64::from(v * 0.25).powi(2)).sum();
            let s = grad_stats(b.view(), 0.25).unwrap();
            assert!(!s.non_finite);
            assert!(
                (s.sum_sq - want_d).abs() <= 1e-5 * want_d,
                "{d}: {} vs {want_d}",
                s.sum_sq
            );
            if d == DType::F32 {
                assert!((s.sum_sq - want).abs() <= 1e-5 * want);
            }
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                let mut y = x.clone();
                y[n - 1] = bad;
                assert!(
                    grad_stats(buf(&y, d).view(), 0.25).unwrap().non_finite,
                    "{d} {bad}"
                );
            }
        }
        // A finite gradient whose square overflows is not flagged.
        let big = buf(&[3e38, 1.0], DType::F32);
        let s = grad_stats(big.view(), 1.0).unwrap();
        assert!(!s.non_finite && s.sum_sq.is_infinite());
        assert_eq!(
            grad_stats(CpuBuffer::zeros(DType::F32, 0).view(), 1.0).unwrap(),
            GradStats::default()
        );
    }

    #[test]
    fn both_paths_meet_the_error_bound_on_every_dtype_and_ragged_length() {
        let lens = [
            0,
            1,
            31,
            32,
            33,
            2047,
            2048,
            2049,
            BLOCK - 1,
            BLOCK + 77,
            3 * BLOCK + 5,
        ];
        for (k, &n) in lens.iter().enumerate() {
            for d in [
                DType::F32,
                DType::BF16,
                DType::F16,
                DType::F8E4M3,
                DType::F8E5M2,
            ] {
                // FP8 cannot hold the wide range; plain data in [-1, 1) for it.
                let x = if d.size_in_bytes() == 1 {
                    data(n, k as u32)
                } else {
                    wide_data(n, k as u32)
                };
                let b = buf(&x, d);
                for mult in [1.0f32, 1.0 / 1024.0, 0.3] {
                    let want = exact(&b, mult);
                    for path in [Path::Portable, Path::best()] {
                        let s = stats(&b, mult, path);
                        assert!(!s.non_finite, "{d} n={n} {path:?}");
                        let err = (s.sum_sq - want).abs();
                        assert!(
                            err <= bound(n) * want,
                            "{d} n={n} mult={mult} {path:?}: {} vs {want} (rel {:e})",
                            s.sum_sq,
                            err / want
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_path_agrees_with_portable_on_the_flag_with_non_finite_at_random_positions() {
        if !simd_available() {
            return;
        }
        let specials = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN];
        for trial in 0..60u32 {
            let r = |k: u32| mp_dtype::mix32(trial.wrapping_mul(7919) ^ k) as usize;
            let n = r(1) % (2 * BLOCK + 100);
            let mut x = wide_data(n, trial);
            // None, one or a few non-finite elements; often in the ragged tail.
            let count = trial % 4;
            for j in 0..count {
                if n == 0 {
                    break;
                }
                let pos = if j == 0 && trial % 8 < 4 {
                    n - 1 - r(10) % n.min(31)
                } else {
                    r(20 + j) % n
                };
                x[pos] = specials[r(30 + j) % specials.len()];
            }
            for d in [DType::F32, DType::BF16, DType::F16] {
                let b = buf(&x, d);
                let p = stats(&b, 0.5, Path::Portable);
                let s = stats(&b, 0.5, Path::Simd);
                assert_eq!(s.non_finite, p.non_finite, "{d} trial {trial} n={n}");
                assert_eq!(s.non_finite, count > 0 && n > 0, "{d} trial {trial}");
                if !s.non_finite {
                    let tol = 2.0 * bound(n) * p.sum_sq;
                    assert!(
                        (s.sum_sq - p.sum_sq).abs() <= tol,
                        "{d} trial {trial}: {} vs {}",
                        s.sum_sq,
                        p.sum_sq
                    );
                }
            }
        }
    }

    #[test]
    fn every_position_of_a_block_is_checked_on_both_paths() {
        let n = 2 * 2048 + 45;
        let x = data(n, 99);
        for d in [DType::F32, DType::BF16, DType::F16] {
            for pos in (0..n).step_by(7).chain(n - 40..n) {
                let mut y = x.clone();
                y[pos] = if pos % 2 == 0 {
                    f32::NAN
                } else {
                    f32::INFINITY
                };
                let b = buf(&y, d);
                for path in [Path::Portable, Path::best()] {
                    assert!(stats(&b, 1.0, path).non_finite, "{d} pos {pos} {path:?}");
                }
            }
        }
    }

    #[test]
    fn squares_overflowing_f32_are_not_flagged_on_either_path() {
        let mut x = data(BLOCK + 50, 3);
        x[100] = 1e30;
        x[BLOCK + 40] = -3e38;
        for d in [DType::F32, DType::BF16] {
            let b = buf(&x, d);
            for path in [Path::Portable, Path::best()] {
                let s = stats(&b, 1.0, path);
                assert!(!s.non_finite, "{d} {path:?}");
                assert!(s.sum_sq.is_infinite(), "{d} {path:?}");
                // A multiplier that brings the squares back into range gives a finite sum.
                let s = stats(&b, 1e-30, path);
                let want = exact(&b, 1e-30);
                assert!(!s.non_finite);
                assert!(
                    (s.sum_sq - want).abs() <= bound(b.len()) * want,
                    "{d} {path:?}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_match_f64_on_every_tail_length() {
        if !simd_available() {
            return;
        }
        let x = wide_data(5000, 5);
        for d in [DType::F32, DType::BF16, DType::F16] {
            let b = buf(&x, d);
            let vals = b.to_f32_vec();
            for n in (0..70).chain([2047, 2048, 2049, 4095, 4096, 4097, 5000]) {
                let sub = buf(&vals[..n], d);
                let want = exact(&sub, 1.0);
                let g = Grads::new(d, bytes("test", "grads", sub.view()).unwrap());
                let got = simd_block(g).expect("a kernel for this dtype");
                assert!(
                    (got - want).abs() <= bound(n) * want,
                    "{d} n={n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn result_is_the_same_whatever_the_thread_count() {
        let x = wide_data(5 * BLOCK + 3, 11);
        for d in [DType::F32, DType::BF16, DType::F16] {
            let b = buf(&x, d);
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| grad_stats(b.view(), 0.125).unwrap());
            let many = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| grad_stats(b.view(), 0.125).unwrap());
            assert_eq!(one.sum_sq.to_bits(), many.sum_sq.to_bits(), "{d}");
        }
    }
}
