//! The BF16 pair dot product `vdpbf16ps` as a primitive: [`DotBf16`], issued by
//! [`Avx512Bf16`] on x86-64 CPUs that report `avx512bf16`, and computed lane by lane in portable
//! Rust by `Emulated` (compiled for tests only) so that code built on it is tested on any
//! machine. The BF16 GEMM (`gemm/bf16.rs`) and the BF16 attention products (`flash.rs`) use it.
//!
//! `vdpbf16ps acc, a, b` adds, in each of 16 f32 lanes, the products of one *pair* of BF16
//! values: `acc[l] += a[2l+1] * b[2l+1]; acc[l] += a[2l] * b[2l]` (two f32 FMAs in that order,
//! round to nearest even, denormal inputs read as zero, denormal results flushed to zero, MXCSR
//! ignored; Intel SDM, VDPBF16PS). Products of two BF16 values are exact in f32.

/// The `vdpbf16ps` step on 16 lanes, and the vectors it works on.
///
/// # Safety
/// Implementors whose operations need CPU features must be constructible only on CPUs that
/// have them: every method takes `self`, a value of the type being the proof.
pub(crate) unsafe trait DotBf16: Copy + Send + Sync {
    /// 16 f32 accumulators.
    type Acc: Copy;
    /// 16 lanes of BF16 pairs (low half: the even `k`, high half: the odd `k`).
    type Pairs: Copy;
    /// All-zero accumulators.
    fn zero(self) -> Self::Acc;
    /// Loads 16 f32 from `p` (unaligned).
    ///
    /// # Safety
    /// `p` is valid for reading 16 f32.
    unsafe fn load_acc(self, p: *const f32) -> Self::Acc;
    /// Stores 16 f32 to `p` (unaligned).
    ///
    /// # Safety
    /// `p` is valid for writing 16 f32.
    unsafe fn store_acc(self, p: *mut f32, v: Self::Acc);
    /// Loads 16 pairs from `p` (unaligned).
    ///
    /// # Safety
    /// `p` is valid for reading 16 u32.
    unsafe fn load_pairs(self, p: *const u32) -> Self::Pairs;
    /// One pair in every lane.
    fn splat_pair(self, pair: u32) -> Self::Pairs;
    /// `vdpbf16ps`: per lane `acc += b.hi * a.hi; acc += b.lo * a.lo` (see the module docs).
    fn dot(self, acc: Self::Acc, b: Self::Pairs, a: Self::Pairs) -> Self::Acc;
    /// `vcvtne2ps2bf16`: the 32 values of `x` rounded to BF16 as 16 pairs (pair `l` holds
    /// `x[2l]` low and `x[2l+1]` high): nearest even, subnormal inputs read as zero, NaNs
    /// quieted.
    fn narrow_pairs(self, x: &[f32; 32]) -> [u32; 16];
}

/// One value of `vcvtne2ps2bf16`: nearest even, a subnormal input read as zero (sign kept), a
/// NaN quieted with its sign and leading payload kept (Intel SDM, `Convert_FP32_To_BF16`).
#[cfg(test)]
#[inline(always)]
pub(crate) fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else if x.is_subnormal() {
        ((b >> 16) & 0x8000) as u16
    } else {
        rounded
    }
}

/// One lane of `vdpbf16ps`: `acc + a.hi * b.hi`, then `+ a.lo * b.lo`, each one f32 FMA with
/// subnormal inputs read as zero and a subnormal result flushed to zero (sign kept).
#[cfg(test)]
pub(crate) fn dp_lane(acc: f32, a: u32, b: u32) -> f32 {
    fn daz(x: f32) -> f32 {
        if x.is_subnormal() {
            0.0f32.copysign(x)
        } else {
            x
        }
    }
    let lo = |p: u32| daz(f32::from_bits(p << 16));
    let hi = |p: u32| daz(f32::from_bits(p & 0xffff_0000));
    let t = daz(hi(a).mul_add(hi(b), daz(acc)));
    daz(lo(a).mul_add(lo(b), t))
}

/// The primitive in portable Rust, lane by lane ([`dp_lane`]): the reference the AVX-512 path
/// is tested against, and the way the driver is tested on CPUs without AVX-512 BF16. Far
/// slower than the f32 path: compiled for tests only, never used for real work.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Emulated;

// SAFETY: needs no CPU feature.
#[cfg(test)]
unsafe impl DotBf16 for Emulated {
    type Acc = [f32; 16];
    type Pairs = [u32; 16];
    #[inline(always)]
    fn zero(self) -> Self::Acc {
        [0.0; 16]
    }
    #[inline(always)]
    unsafe fn load_acc(self, p: *const f32) -> Self::Acc {
        // SAFETY: the caller guarantees 16 readable f32.
        unsafe { p.cast::<[f32; 16]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store_acc(self, p: *mut f32, v: Self::Acc) {
        // SAFETY: the caller guarantees 16 writable f32.
        unsafe { p.cast::<[f32; 16]>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_pairs(self, p: *const u32) -> Self::Pairs {
        // SAFETY: the caller guarantees 16 readable u32.
        unsafe { p.cast::<[u32; 16]>().read_unaligned() }
    }
    #[inline(always)]
    fn splat_pair(self, pair: u32) -> Self::Pairs {
        [pair; 16]
    }
    #[inline(always)]
    fn dot(self, mut acc: Self::Acc, b: Self::Pairs, a: Self::Pairs) -> Self::Acc {
        for l in 0..16 {
            acc[l] = dp_lane(acc[l], a[l], b[l]);
        }
        acc
    }
    #[inline(always)]
    fn narrow_pairs(self, x: &[f32; 32]) -> [u32; 16] {
        std::array::from_fn(|l| {
            u32::from(to_bf16_bits(x[2 * l])) | (u32::from(to_bf16_bits(x[2 * l + 1])) << 16)
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx512Bf16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::DotBf16;
    use std::arch::x86_64::*;

    /// `vdpbf16ps` on zmm registers. A value exists only on CPUs with AVX-512F and AVX-512
    /// BF16 ([`Avx512Bf16::detect`]).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512Bf16(());

    impl Avx512Bf16 {
        /// The primitive, if this CPU has AVX-512F and AVX-512 BF16.
        pub(crate) fn detect() -> Option<Self> {
            (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"))
                .then_some(Avx512Bf16(()))
        }
    }

    // SAFETY: values exist only after `detect` found both features; every method below runs
    // their instructions only through such a value.
    unsafe impl DotBf16 for Avx512Bf16 {
        type Acc = __m512;
        type Pairs = __m512bh;
        #[inline(always)]
        fn zero(self) -> __m512 {
            // SAFETY: `self` proves AVX-512F.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load_acc(self, p: *const f32) -> __m512 {
            // SAFETY: `self` proves AVX-512F; the caller guarantees 16 readable f32.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store_acc(self, p: *mut f32, v: __m512) {
            // SAFETY: `self` proves AVX-512F; the caller guarantees 16 writable f32.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_pairs(self, p: *const u32) -> __m512bh {
            // SAFETY: `self` proves AVX-512F; the caller guarantees 64 readable bytes. The
            // transmute reinterprets 512 bits as 32 BF16 (same size, any bits valid).
            unsafe { std::mem::transmute(_mm512_loadu_si512(p.cast())) }
        }
        #[inline(always)]
        fn splat_pair(self, pair: u32) -> __m512bh {
            // SAFETY: `self` proves AVX-512F; the transmute is a same-size reinterpretation.
            unsafe { std::mem::transmute(_mm512_set1_epi32(pair as i32)) }
        }
        #[inline(always)]
        fn dot(self, acc: __m512, b: __m512bh, a: __m512bh) -> __m512 {
            // SAFETY: `self` proves AVX-512 BF16. `a` (the broadcast pair) is the operand the
            // instruction can take as an embedded broadcast from memory.
            unsafe { _mm512_dpbf16_ps(acc, b, a) }
        }
        #[inline(always)]
        fn narrow_pairs(self, x: &[f32; 32]) -> [u32; 16] {
            // SAFETY: `self` proves AVX-512F and AVX-512 BF16; `x` is 32 readable f32; the
            // transmute is a same-size reinterpretation. The instruction puts its second
            // operand in the low half of the result.
            unsafe {
                let lo = _mm512_loadu_ps(x.as_ptr());
                let hi = _mm512_loadu_ps(x.as_ptr().add(16));
                std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
            }
        }
    }
}
