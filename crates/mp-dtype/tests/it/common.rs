//! Helpers shared by the test modules.

use std::io::Write;

use mp_dtype::{DType, Isa, bits_to_f32, mix32};

/// Writes a line to the real stderr, bypassing libtest's capture, so that CI logs show it.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The instruction-set paths this CPU runs, reported once per caller.
pub fn paths_under_test(test: &str) -> Vec<Isa> {
    let avail = Isa::available();
    let names: Vec<&str> = avail.iter().map(|i| i.name()).collect();
    let missing: Vec<&str> = Isa::ALL
        .iter()
        .filter(|i| !avail.contains(i))
        .map(|i| i.name())
        .collect();
    report(&format!(
        "mp-dtype {test}: exercised paths [{}]; not available on this CPU [{}]",
        names.join(", "),
        missing.join(", ")
    ));
    avail
}

/// Deterministic pseudo-random f32 over many magnitudes, with specials mixed in.
pub fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffbf_ffff),
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_8000),
        f32::MAX,
        65504.0,
        65520.0,
        448.0,
        464.0,
        57344.0,
        61440.0,
    ];
    (0..n)
        .map(|i| {
            if i % 7 == 3 {
                specials[(i / 7) % specials.len()]
            } else {
                let r = mix32(seed ^ mix32(i as u32));
                // Exponents concentrated on -40..40 where all formats have interesting cases.
                let e = 87 + (r % 80);
                f32::from_bits((r & 0x8000_0000) | (e << 23) | (mix32(r) & 0x007f_ffff))
            }
        })
        .collect()
}

/// Sorted non-negative finite values of a narrow format with their bit patterns.
pub fn positive_table(dtype: DType) -> Vec<(f64, u32)> {
    let width = 8 * dtype.size_in_bytes() as u32;
    let sign = 1u32 << (width - 1);
    let mut t: Vec<(f64, u32)> = (0..sign)
        .map(|b| (bits_to_f32(b, dtype) as f64, b))
        .filter(|(v, _)| v.is_finite())
        .collect();
    t.sort_by(|a, b| a.0.total_cmp(&b.0));
    t
}
