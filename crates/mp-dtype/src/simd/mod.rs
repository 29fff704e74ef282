//! Per-instruction-set kernels for the bulk BF16/F16 conversions, and their run-time dispatch.
//!
//! Each kernel converts one contiguous chunk on the calling thread; the parallel split lives
//! in the bulk module. Every kernel agrees bit for bit with the scalar reference
//! ([`crate::scalar`]); the tests run each [`Isa`] the CPU supports against it.

use crate::DTypeError;

#[cfg(target_arch = "x86_64")]
mod x86;

/// An instruction-set path for the bulk conversions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, any target (the compiler may auto-vectorise it).
    Portable,
    /// x86-64 AVX2 + F16C: BF16 by integer rounding, F16 by `vcvtps2ph`/`vcvtph2ps`.
    Avx2,
    /// x86-64 AVX-512F: BF16 by integer rounding, F16 by the 512-bit `vcvtps2ph`/`vcvtph2ps`.
    Avx512,
    /// x86-64 AVX-512F + AVX-512 BF16: f32 -> BF16 by `vcvtne2ps2bf16` (blocks holding f32
    /// subnormals, which the instruction flushes, take the integer path); everything else as
    /// [`Isa::Avx512`].
    Avx512Bf16,
}

impl Isa {
    /// Every path this crate has, whether or not the CPU supports it.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Portable => true,
                Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"),
                Isa::Avx512 => is_x86_feature_detected!("avx512f"),
                Isa::Avx512Bf16 => {
                    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The paths this CPU can run, in [`Isa::ALL`] order.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The path the bulk conversions use for f32 -> BF16 and BF16 -> f32 on this CPU.
    pub fn best_for_bf16() -> Isa {
        [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// The path the bulk conversions use for f32 -> F16 and F16 -> f32 on this CPU.
    pub fn best_for_f16() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// A short name for reports (`"avx2"`).
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+f16c",
            Isa::Avx512 => "avx512f",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    fn check(self, op: &'static str) -> Result<(), DTypeError> {
        if self.is_available() {
            Ok(())
        } else {
            Err(DTypeError::IsaUnavailable {
                op,
                isa: self.name(),
            })
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn check_len(op: &'static str, src: usize, dst: usize) -> Result<(), DTypeError> {
    if src == dst {
        Ok(())
    } else {
        Err(DTypeError::LengthMismatch { op, src, dst })
    }
}

/// f32 -> BF16 bits (round to nearest even) on one thread with the given path.
///
/// # Errors
/// [`DTypeError::LengthMismatch`] if the slices differ in length,
/// [`DTypeError::IsaUnavailable`] if this CPU cannot run `isa`.
pub fn f32_to_bf16_with(isa: Isa, src: &[f32], dst: &mut [u16]) -> Result<(), DTypeError> {
    const OP: &str = "f32_to_bf16";
    check_len(OP, src.len(), dst.len())?;
    isa.check(OP)?;
    run_f32_to_bf16(isa, src, dst, false);
    Ok(())
}

/// BF16 bits -> f32 on one thread with the given path.
///
/// # Errors
/// As [`f32_to_bf16_with`].
pub fn bf16_to_f32_with(isa: Isa, src: &[u16], dst: &mut [f32]) -> Result<(), DTypeError> {
    const OP: &str = "bf16_to_f32";
    check_len(OP, src.len(), dst.len())?;
    isa.check(OP)?;
    run_bf16_to_f32(isa, src, dst, false);
    Ok(())
}

/// f32 -> F16 bits (round to nearest even) on one thread with the given path.
///
/// # Errors
/// As [`f32_to_bf16_with`].
pub fn f32_to_f16_with(isa: Isa, src: &[f32], dst: &mut [u16]) -> Result<(), DTypeError> {
    const OP: &str = "f32_to_f16";
    check_len(OP, src.len(), dst.len())?;
    isa.check(OP)?;
    run_f32_to_f16(isa, src, dst, false);
    Ok(())
}

/// F16 bits -> f32 on one thread with the given path.
///
/// # Errors
/// As [`f32_to_bf16_with`].
pub fn f16_to_f32_with(isa: Isa, src: &[u16], dst: &mut [f32]) -> Result<(), DTypeError> {
    const OP: &str = "f16_to_f32";
    check_len(OP, src.len(), dst.len())?;
    isa.check(OP)?;
    run_f16_to_f32(isa, src, dst, false);
    Ok(())
}

/// Runs the `f32_to_bf16` kernel of `isa` (checked by the caller) on one chunk; `stream` selects
/// non-temporal stores for destinations much larger than the caches.
pub(crate) fn run_f32_to_bf16(isa: Isa, src: &[f32], dst: &mut [u16], stream: bool) {
    // Keeps this safe function sound whatever the caller passes (a cached flag test).
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    let _ = stream; // only the x86-64 kernels stream
    match isa {
        Isa::Portable => portable::f32_to_bf16(src, dst),
        // SAFETY: the CPU features were checked just above; the kernels stay within both
        // slices whatever their lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f32_to_bf16_avx2(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f32_to_bf16_avx512(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { x86::f32_to_bf16_avx512bf16(src, dst, stream) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("isa.check admits only the portable path off x86-64"),
    }
}

/// Runs the `bf16_to_f32` kernel of `isa` (checked by the caller) on one chunk; `stream` selects
/// non-temporal stores for destinations much larger than the caches.
pub(crate) fn run_bf16_to_f32(isa: Isa, src: &[u16], dst: &mut [f32], stream: bool) {
    // Keeps this safe function sound whatever the caller passes (a cached flag test).
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    let _ = stream; // only the x86-64 kernels stream
    match isa {
        Isa::Portable => portable::bf16_to_f32(src, dst),
        // SAFETY: the CPU features were checked just above; the kernels stay within both
        // slices whatever their lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::bf16_to_f32_avx2(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::bf16_to_f32_avx512(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { x86::bf16_to_f32_avx512(src, dst, stream) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("isa.check admits only the portable path off x86-64"),
    }
}

/// Runs the `f32_to_f16` kernel of `isa` (checked by the caller) on one chunk; `stream` selects
/// non-temporal stores for destinations much larger than the caches.
pub(crate) fn run_f32_to_f16(isa: Isa, src: &[f32], dst: &mut [u16], stream: bool) {
    // Keeps this safe function sound whatever the caller passes (a cached flag test).
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    let _ = stream; // only the x86-64 kernels stream
    match isa {
        Isa::Portable => portable::f32_to_f16(src, dst),
        // SAFETY: the CPU features were checked just above; the kernels stay within both
        // slices whatever their lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f32_to_f16_f16c(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f32_to_f16_avx512(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { x86::f32_to_f16_avx512(src, dst, stream) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("isa.check admits only the portable path off x86-64"),
    }
}

/// Runs the `f16_to_f32` kernel of `isa` (checked by the caller) on one chunk; `stream` selects
/// non-temporal stores for destinations much larger than the caches.
pub(crate) fn run_f16_to_f32(isa: Isa, src: &[u16], dst: &mut [f32], stream: bool) {
    // Keeps this safe function sound whatever the caller passes (a cached flag test).
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    let _ = stream; // only the x86-64 kernels stream
    match isa {
        Isa::Portable => portable::f16_to_f32(src, dst),
        // SAFETY: the CPU features were checked just above; the kernels stay within both
        // slices whatever their lengths.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f16_to_f32_f16c(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f16_to_f32_avx512(src, dst, stream) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { x86::f16_to_f32_avx512(src, dst, stream) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("isa.check admits only the portable path off x86-64"),
    }
}

/// The portable kernels: branch-light integer code the compiler can vectorise.
pub(crate) mod portable {
    use crate::{DType, bits_to_f32, f32_to_bits};

    /// f32 -> BF16, round to nearest even, written branch-free so it vectorises.
    #[inline(always)]
    pub(crate) fn bf16_bits(x: f32) -> u16 {
        let b = x.to_bits();
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
        let nan = (b >> 16) | 0x0040;
        (if b & 0x7fff_ffff > 0x7f80_0000 {
            nan
        } else {
            rounded
        }) as u16
    }

    /// BF16 -> f32, NaN quietened.
    #[inline(always)]
    pub(crate) fn bf16_value(h: u16) -> f32 {
        let w = (h as u32) << 16;
        f32::from_bits(if w & 0x7fff_ffff > 0x7f80_0000 {
            w | 0x0040_0000
        } else {
            w
        })
    }

    pub(crate) fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_bits(s);
        }
    }

    pub(crate) fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_value(s);
        }
    }

    pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f32_to_bits(s, DType::F16, false) as u16;
        }
    }

    pub(crate) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bits_to_f32(s as u32, DType::F16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, bits_to_f32, f32_to_bits};

    /// The streaming (non-temporal store) variants, on every available path, at every
    /// destination alignment, against the scalar reference.
    #[test]
    fn streaming_kernels_match_the_scalar_reference() {
        let xs: Vec<f32> = (0..4133u32)
            .map(|i| f32::from_bits(crate::mix32(i) & 0xbfff_ffff | (i % 3) << 30))
            .collect();
        for isa in Isa::available() {
            for off in 0..33 {
                let src = &xs[off..];
                let mut h = vec![0u16; src.len() + 40];
                let mut w = vec![0f32; src.len() + 40];
                let (h, w) = (&mut h[off..off + src.len()], &mut w[off..off + src.len()]);
                run_f32_to_bf16(isa, src, h, true);
                run_bf16_to_f32(isa, h, w, true);
                for ((x, b), y) in src.iter().zip(h.iter()).zip(w.iter()) {
                    assert_eq!(*b as u32, f32_to_bits(*x, DType::BF16, false), "{isa}");
                    assert_eq!(y.to_bits(), bits_to_f32(*b as u32, DType::BF16).to_bits());
                }
                run_f32_to_f16(isa, src, h, true);
                run_f16_to_f32(isa, h, w, true);
                for ((x, b), y) in src.iter().zip(h.iter()).zip(w.iter()) {
                    assert_eq!(*b as u32, f32_to_bits(*x, DType::F16, false), "{isa}");
                    assert_eq!(y.to_bits(), bits_to_f32(*b as u32, DType::F16).to_bits());
                }
            }
        }
    }
}
