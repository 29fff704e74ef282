//! Every bulk path against the scalar reference, on awkward lengths and alignments, and the
//! errors for mismatched buffers.

use half::{bf16, f16};

use mp_dtype::simd::{bf16_to_f32_with, f16_to_f32_with, f32_to_bf16_with, f32_to_f16_with};
use mp_dtype::{
    DType, DTypeError, EncodeOptions, Isa, Rounding, bits_to_f32, decode, encode, f32_to_bits,
};

use crate::common::{paths_under_test, test_values};

#[test]
fn every_available_path_matches_the_scalar_reference() {
    let xs = test_values(5000, 11);
    for isa in paths_under_test("paths vs scalar") {
        for len in (0..70).chain([1000, 4999]) {
            // Start at every offset 0..3 so vector loads are misaligned too.
            for off in 0..3.min(xs.len() - len + 1) {
                let src = &xs[off..off + len];
                let mut out = vec![0u16; len];
                f32_to_bf16_with(isa, src, &mut out).expect("available");
                for (x, o) in src.iter().zip(&out) {
                    assert_eq!(
                        *o as u32,
                        f32_to_bits(*x, DType::BF16, false),
                        "{isa} bf16 {x:e}"
                    );
                }
                f32_to_f16_with(isa, src, &mut out).expect("available");
                for (x, o) in src.iter().zip(&out) {
                    assert_eq!(
                        *o as u32,
                        f32_to_bits(*x, DType::F16, false),
                        "{isa} f16 {x:e}"
                    );
                }
                let mut back = vec![0f32; len];
                f16_to_f32_with(isa, &out, &mut back).expect("available");
                for (h, y) in out.iter().zip(&back) {
                    assert_eq!(y.to_bits(), bits_to_f32(*h as u32, DType::F16).to_bits());
                }
                bf16_to_f32_with(isa, &out, &mut back).expect("available");
                for (h, y) in out.iter().zip(&back) {
                    assert_eq!(y.to_bits(), bits_to_f32(*h as u32, DType::BF16).to_bits());
                }
            }
        }
    }
}

#[test]
fn unavailable_paths_are_errors_not_crashes() {
    let mut out = [0u16; 4];
    for isa in Isa::ALL {
        let r = f32_to_bf16_with(isa, &[1.0; 4], &mut out);
        if isa.is_available() {
            assert_eq!(r, Ok(()));
        } else {
            assert!(
                matches!(r, Err(DTypeError::IsaUnavailable { .. })),
                "{isa}: {r:?}"
            );
        }
    }
}

#[test]
fn encode_and_decode_match_the_scalar_reference_for_every_format() {
    // Large enough to take the parallel path, odd so chunks end mid-vector.
    let xs = test_values(3 * mp_dtype::PARALLEL_THRESHOLD + 17, 5);
    for dtype in DType::ALL {
        let size = dtype.size_in_bytes();
        for saturate in [false, true] {
            let opts = EncodeOptions {
                saturate,
                ..EncodeOptions::default()
            };
            // One spare byte in front: the misaligned buffer takes the scratch path.
            let mut storage = vec![0u8; xs.len() * size + 1];
            for start in [0, 1] {
                let bytes = &mut storage[start..start + xs.len() * size];
                encode(&xs, bytes, dtype, &opts).expect("encode");
                let mut back = vec![0f32; xs.len()];
                decode(bytes, dtype, &mut back).expect("decode");
                for (i, (&x, y)) in xs.iter().zip(&back).enumerate() {
                    let mut le = [0u8; 4];
                    le[..size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
                    let bits = u32::from_le_bytes(le);
                    assert_eq!(
                        bits,
                        f32_to_bits(x, dtype, saturate),
                        "{dtype} sat={saturate} {x:e}"
                    );
                    assert_eq!(
                        y.to_bits(),
                        bits_to_f32(bits, dtype).to_bits(),
                        "{dtype} decode"
                    );
                }
            }
        }
    }
}

#[test]
fn saturation_clamps_overflow_and_infinity_but_keeps_nan() {
    for dtype in [DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
        let max = dtype.max();
        for x in [f32::INFINITY, f32::MAX, 2.0 * max] {
            let bits = f32_to_bits(x, dtype, true);
            assert_eq!(bits_to_f32(bits, dtype), max, "{dtype} saturate {x:e}");
            let bits = f32_to_bits(-x, dtype, true);
            assert_eq!(bits_to_f32(bits, dtype), -max, "{dtype} saturate -{x:e}");
        }
        assert!(bits_to_f32(f32_to_bits(f32::NAN, dtype, true), dtype).is_nan());
        // Non-saturating overflow: inf where the format has it, else NaN.
        let y = bits_to_f32(f32_to_bits(f32::MAX, dtype, false), dtype);
        if dtype.has_inf() {
            assert_eq!(y, f32::INFINITY, "{dtype}");
        } else {
            assert!(y.is_nan(), "{dtype}");
        }
    }
}

#[test]
fn mismatched_lengths_are_errors() {
    let src = [1.0f32; 8];
    let mut short = [0u8; 7];
    assert!(matches!(
        encode(&src, &mut short, DType::F8E4M3, &EncodeOptions::default()),
        Err(DTypeError::LengthMismatch {
            op: "encode",
            src: 8,
            dst: 7
        })
    ));
    let mut ragged = [0u8; 15];
    let e = encode(&src, &mut ragged, DType::F16, &EncodeOptions::default()).unwrap_err();
    assert!(matches!(
        e,
        DTypeError::RaggedBytes {
            bytes: 15,
            dtype: DType::F16,
            ..
        }
    ));
    assert!(
        e.to_string().contains("f16"),
        "message names the dtype: {e}"
    );
    let sr = EncodeOptions {
        rounding: Rounding::Stochastic { seed: 1 },
        ..Default::default()
    };
    assert!(encode(&src, &mut [0u8; 17], DType::BF16, &sr).is_err());
    let mut dst = [0f32; 3];
    assert!(matches!(
        decode(&[0u8; 8], DType::F16, &mut dst),
        Err(DTypeError::LengthMismatch {
            op: "decode",
            src: 4,
            dst: 3
        })
    ));
    assert!(matches!(
        decode(&[0u8; 7], DType::F32, &mut dst),
        Err(DTypeError::RaggedBytes { .. })
    ));
    let mut b = [bf16::ZERO; 7];
    let mut h = [f16::ZERO; 9];
    assert!(mp_dtype::f32_to_bf16(&src, &mut b).is_err());
    assert!(mp_dtype::f32_to_f16(&src, &mut h).is_err());
    assert!(mp_dtype::bf16_to_f32(&b, &mut dst).is_err());
    assert!(mp_dtype::f16_to_f32(&h, &mut dst).is_err());
    for isa in Isa::ALL {
        assert!(matches!(
            f32_to_f16_with(isa, &src, &mut [0u16; 3]),
            Err(DTypeError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn empty_slices_are_fine() {
    encode(&[], &mut [], DType::F8E5M2, &EncodeOptions::default()).expect("empty encode");
    decode(&[], DType::BF16, &mut []).expect("empty decode");
    mp_dtype::f32_to_bf16(&[], &mut []).expect("empty");
}
