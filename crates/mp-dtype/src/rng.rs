//! The counter-based random generator behind stochastic rounding.
//!
//! # Contract (ported bit for bit to CUDA C and WGSL; do not change)
//!
//! ```text
//! mix32(x):  x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
//!            (32-bit wrapping multiplies, logical shifts)
//! sr_random(seed: u64, index: u64) =
//!     mix32(lo(index) ^ mix32(hi(index) ^ mix32(lo(seed) ^ mix32(hi(seed) ^ 0x9e3779b9))))
//! ```
//!
//! where `lo`/`hi` are the low and high 32-bit halves. Only 32-bit integer operations are used,
//! so WGSL (which has no `u64`) passes the halves as two `u32`. The element at absolute index `i`
//! of a stochastically rounded buffer uses `sr_random(seed, i)` as the `random` argument of
//! [`crate::f32_to_bits_sr`]; the inner two levels depend on the seed only and can be hoisted.
//! `mix32` is Chris Wellons' "lowbias32" integer hash.

/// Chris Wellons' `lowbias32` integer hash: a bijection on `u32` with good avalanche.
#[inline(always)]
pub const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The part of [`sr_random`] that depends on the seed only.
#[inline(always)]
pub const fn seed_key(seed: u64) -> u32 {
    mix32((seed as u32) ^ mix32(((seed >> 32) as u32) ^ 0x9e37_79b9))
}

/// [`sr_random`] with the seed part precomputed by [`seed_key`].
#[inline(always)]
pub const fn keyed_random(key: u32, index: u64) -> u32 {
    mix32((index as u32) ^ mix32(((index >> 32) as u32) ^ key))
}

/// 32 random bits for element `index` of the stochastic-rounding stream `seed`.
///
/// A pure function of `(seed, index)`: results do not depend on threads, chunking or backend.
/// The exact definition (the cross-backend contract) is in the [module docs](self).
#[inline]
pub const fn sr_random(seed: u64, index: u64) -> u32 {
    keyed_random(seed_key(seed), index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_written_contract() {
        for (seed, index) in [
            (0u64, 0u64),
            (1, 2),
            (u64::MAX, 12345),
            (0xdead_beef_0000_0001, 1 << 40),
        ] {
            let want = mix32(
                (index as u32)
                    ^ mix32(
                        ((index >> 32) as u32)
                            ^ mix32((seed as u32) ^ mix32(((seed >> 32) as u32) ^ 0x9e37_79b9)),
                    ),
            );
            assert_eq!(sr_random(seed, index), want);
        }
    }

    #[test]
    fn mix32_is_not_the_identity_and_spreads_bits() {
        assert_ne!(mix32(1), 1);
        let ones: u32 = (0..1024u32)
            .map(|i| (mix32(i) ^ mix32(i ^ 1)).count_ones())
            .sum();
        let mean = ones as f64 / 1024.0;
        assert!((mean - 16.0).abs() < 1.0, "avalanche mean {mean}");
    }
}
