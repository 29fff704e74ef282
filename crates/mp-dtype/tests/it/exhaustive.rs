//! Exhaustive tests: every f32 bit pattern through f32 -> BF16 / F16 (scalar and every bulk
//! path, against the `half` crate), every 16-bit and 8-bit pattern back to f32.
//!
//! NaN policy: bit-identical to `half` (sign kept, payload truncated, quiet bit set), which is
//! also what F16C and AVX-512 BF16 hardware produce; so even NaNs compare bit for bit.

use half::{bf16, f16};
use rayon::prelude::*;

use mp_dtype::simd::{bf16_to_f32_with, f16_to_f32_with, f32_to_bf16_with, f32_to_f16_with};
use mp_dtype::{DType, EncodeOptions, bits_to_f32, decode, encode, f32_to_bits};

use crate::common::{paths_under_test, positive_table, report};

const CHUNK: usize = 1 << 20;

/// Per-thread buffers, reused across chunks.
struct Scratch {
    xs: Vec<f32>,
    want: Vec<u16>,
    got: Vec<u16>,
    bytes: Vec<u8>,
}

/// Compares a chunk's results with the reference; on a difference reports the first mismatch
/// and returns the number of mismatching elements.
fn mismatches(what: &str, xs: &[f32], got: &[u16], want: &[u16]) -> u64 {
    if got == want {
        return 0;
    }
    let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    let i = bad[0];
    report(&format!(
        "{what}: f32 {:#010x}: got {:#06x}, want {:#06x} ({} mismatches in this chunk)",
        xs[i].to_bits(),
        got[i],
        want[i],
        bad.len()
    ));
    bad.len() as u64
}

type Kernel = fn(mp_dtype::Isa, &[f32], &mut [u16]) -> Result<(), mp_dtype::DTypeError>;

/// All 2^32 f32 patterns, in parallel chunks: the `half` reference against the scalar
/// reference, every available SIMD path, and the public byte-buffer `encode`.
fn exhaustive_narrowing(
    dtype: DType,
    reference: impl Fn(f32) -> u16 + Sync,
    scalar: impl Fn(f32) -> u16 + Sync,
    kernel: Kernel,
) {
    let name = format!("exhaustive f32 -> {dtype}");
    let isas = paths_under_test(&name);
    let chunks = (1usize << 32) / CHUNK;
    let bad: u64 = (0..chunks)
        .into_par_iter()
        .map_init(
            || Scratch {
                xs: vec![0.0; CHUNK],
                want: vec![0; CHUNK],
                got: vec![0; CHUNK],
                bytes: vec![0; 2 * CHUNK],
            },
            |s, c| {
                let start = (c * CHUNK) as u32;
                for (k, (x, w)) in s.xs.iter_mut().zip(&mut s.want).enumerate() {
                    *x = f32::from_bits(start + k as u32);
                    *w = reference(*x);
                }
                for (g, &x) in s.got.iter_mut().zip(&s.xs) {
                    *g = scalar(x);
                }
                let mut bad = mismatches(&format!("{name} scalar"), &s.xs, &s.got, &s.want);
                for &isa in &isas {
                    kernel(isa, &s.xs, &mut s.got).expect("available path");
                    bad += mismatches(&format!("{name} {isa}"), &s.xs, &s.got, &s.want);
                }
                encode(&s.xs, &mut s.bytes, dtype, &EncodeOptions::default()).expect("encode");
                for (g, b) in s.got.iter_mut().zip(s.bytes.chunks_exact(2)) {
                    *g = u16::from_le_bytes([b[0], b[1]]);
                }
                bad += mismatches(&format!("{name} encode"), &s.xs, &s.got, &s.want);
                bad
            },
        )
        .sum();
    assert_eq!(bad, 0, "{name}: {bad} mismatches against the half crate");
}

#[test]
fn exhaustive_f32_to_bf16_matches_half() {
    exhaustive_narrowing(
        DType::BF16,
        |x| bf16::from_f32(x).to_bits(),
        |x| f32_to_bits(x, DType::BF16, false) as u16,
        f32_to_bf16_with,
    );
}

#[test]
fn exhaustive_f32_to_f16_matches_half() {
    exhaustive_narrowing(
        DType::F16,
        |x| f16::from_f32(x).to_bits(),
        |x| f32_to_bits(x, DType::F16, false) as u16,
        f32_to_f16_with,
    );
}

#[test]
fn exhaustive_typed_bulk_paths_match_half() {
    // The typed API on one slice large enough for the parallel split and the non-temporal
    // stores (destinations of 16 MiB and more), per direction.
    let xs: Vec<f32> = (0..1u32 << 23)
        .map(|k| f32::from_bits(k.wrapping_mul(1021)))
        .collect();
    let mut b = vec![bf16::ZERO; xs.len()];
    let mut h = vec![f16::ZERO; xs.len()];
    mp_dtype::f32_to_bf16(&xs, &mut b).expect("lengths match");
    mp_dtype::f32_to_f16(&xs, &mut h).expect("lengths match");
    for (i, &x) in xs.iter().enumerate() {
        assert_eq!(b[i].to_bits(), bf16::from_f32(x).to_bits(), "bf16 of {x:e}");
        assert_eq!(h[i].to_bits(), f16::from_f32(x).to_bits(), "f16 of {x:e}");
    }
    let mut back = vec![0f32; xs.len()];
    mp_dtype::bf16_to_f32(&b, &mut back).expect("lengths match");
    for (i, v) in back.iter().enumerate() {
        assert_eq!(v.to_bits(), b[i].to_f32().to_bits());
    }
    mp_dtype::f16_to_f32(&h, &mut back).expect("lengths match");
    for (i, v) in back.iter().enumerate() {
        assert_eq!(v.to_bits(), h[i].to_f32().to_bits());
    }
}

type Widen = fn(mp_dtype::Isa, &[u16], &mut [f32]) -> Result<(), mp_dtype::DTypeError>;

fn exhaustive_widening(dtype: DType, reference: fn(u16) -> f32, kernel: Widen) {
    let name = format!("exhaustive {dtype} -> f32");
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<u32> = all.iter().map(|&b| reference(b).to_bits()).collect();
    for (&b, &w) in all.iter().zip(&want) {
        assert_eq!(
            bits_to_f32(b as u32, dtype).to_bits(),
            w,
            "{name} scalar {b:#06x}"
        );
    }
    let mut out = vec![0f32; all.len()];
    for isa in paths_under_test(&name) {
        out.fill(0.0);
        kernel(isa, &all, &mut out).expect("available path");
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), *w, "{name} {isa}: bits {i:#06x}");
        }
    }
    let bytes: Vec<u8> = all.iter().flat_map(|b| b.to_le_bytes()).collect();
    decode(&bytes, dtype, &mut out).expect("decode");
    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), *w, "{name} decode: bits {i:#06x}");
    }
}

#[test]
fn exhaustive_bf16_to_f32_matches_half() {
    exhaustive_widening(
        DType::BF16,
        |b| bf16::from_bits(b).to_f32(),
        bf16_to_f32_with,
    );
}

#[test]
fn exhaustive_f16_to_f32_matches_half() {
    exhaustive_widening(DType::F16, |b| f16::from_bits(b).to_f32(), f16_to_f32_with);
}

/// The value of an FP8 pattern straight from the format definition, in f64.
fn fp8_by_definition(bits: u32, dtype: DType) -> f64 {
    let (e_bits, m_bits, bias) = match dtype {
        DType::F8E4M3 => (4, 3, 7),
        DType::F8E5M2 => (5, 2, 15),
        _ => unreachable!("FP8 only"),
    };
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = (bits >> m_bits) & ((1 << e_bits) - 1);
    let m = bits & ((1 << m_bits) - 1);
    let all_ones = (1 << e_bits) - 1;
    if dtype == DType::F8E4M3 && e == all_ones && m == (1 << m_bits) - 1 {
        return f64::NAN;
    }
    if dtype == DType::F8E5M2 && e == all_ones {
        return if m == 0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    let frac = m as f64 / (1u32 << m_bits) as f64;
    if e == 0 {
        sign * frac * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f64.powi(e as i32 - bias)
    }
}

#[test]
fn exhaustive_fp8_to_f32_and_back() {
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut bulk = [0f32; 256];
        decode(&bytes, dtype, &mut bulk).expect("decode");
        for b in 0..256u32 {
            let want = fp8_by_definition(b, dtype);
            let got = bits_to_f32(b, dtype);
            assert_eq!(
                got.to_bits(),
                bulk[b as usize].to_bits(),
                "{dtype} bulk {b:#04x}"
            );
            if want.is_nan() {
                assert!(got.is_nan(), "{dtype} {b:#04x}: want NaN, got {got}");
                assert_eq!(got.is_sign_negative(), b & 0x80 != 0, "{dtype} NaN sign");
                assert_eq!(
                    f32_to_bits(got, dtype, false),
                    (b & 0x80) | nan_canon(dtype, b)
                );
                continue;
            }
            assert_eq!(got as f64, want, "{dtype} {b:#04x}");
            assert_eq!(
                got.is_sign_negative(),
                b & 0x80 != 0,
                "{dtype} sign of {b:#04x}"
            );
            assert_eq!(
                f32_to_bits(got, dtype, false),
                b,
                "{dtype} round trip {b:#04x}"
            );
        }
    }
}

/// The NaN pattern a quiet f32 NaN decoded from `b` encodes back to (magnitude bits).
fn nan_canon(dtype: DType, b: u32) -> u32 {
    match dtype {
        // A single NaN magnitude.
        DType::F8E4M3 => 0x7f,
        // Quiet bit set, payload kept.
        _ => 0x7e | (b & 0x01),
    }
}

/// Nearest-even by search in the sorted table of a format's values, with overflow decided as
/// if the exponent range were unbounded (IEEE 754): an independent oracle for the FP8 rounding.
fn rne_oracle(x: f32, dtype: DType, table: &[(f64, u32)]) -> u32 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let overflow = if dtype.has_inf() { 0x7c } else { 0x7f };
    if x.is_nan() {
        // The crate's NaN policy (quiet bit set, top payload bit kept where there is room).
        let payload = if dtype.has_inf() {
            0x7e | ((x.to_bits() >> 21) & 1)
        } else {
            0x7f
        };
        return sign | payload;
    }
    let a = (x as f64).abs();
    let (max, max_bits) = table[table.len() - 1];
    let (below_max, _) = table[table.len() - 2];
    // The next value after max in the unbounded format is max + (max - below_max).
    let next = 2.0 * max - below_max;
    let mid = (max + next) / 2.0;
    if a > mid || (a == mid && max_bits & 1 == 1) {
        return sign | overflow;
    }
    if a >= max {
        return sign | max_bits;
    }
    let i = table.partition_point(|&(v, _)| v <= a); // table[i-1].0 <= a < table[i].0
    let (lo, lo_bits) = table[i - 1];
    let (hi, hi_bits) = table[i];
    let mid = (lo + hi) / 2.0;
    let bits = if a < mid || (a == mid && lo_bits & 1 == 0) {
        lo_bits
    } else {
        hi_bits
    };
    sign | bits
}

#[test]
fn exhaustive_fp8_rne_against_table_oracle() {
    // Every sign and exponent, the top 12 mantissa bits exhaustively, and the low 11 bits at
    // the patterns that decide ties (0), just above/below them (1, 0x7ff) and the middle.
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        let table = positive_table(dtype);
        let bad: u64 = (0..512u32)
            .into_par_iter()
            .map(|se| {
                let mut bad = 0;
                for top in 0..4096u32 {
                    for low in [0u32, 1, 0x400, 0x7ff] {
                        let x = f32::from_bits((se << 23) | (top << 11) | low);
                        let got = f32_to_bits(x, dtype, false);
                        let want = rne_oracle(x, dtype, &table);
                        if got != want {
                            if bad == 0 {
                                report(&format!(
                                    "{dtype}: f32 {:#010x}: got {got:#04x}, want {want:#04x}",
                                    x.to_bits()
                                ));
                            }
                            bad += 1;
                        }
                    }
                }
                bad
            })
            .sum();
        assert_eq!(bad, 0, "{dtype}: {bad} mismatches against the table oracle");
    }
}
