//! Stochastic rounding: neighbours only, unbiased within a statistical bound, reproducible and
//! independent of chunking and thread count.

use mp_dtype::{
    DType, EncodeOptions, Rounding, bits_to_f32, decode, encode, f32_to_bits_sr, sr_random,
};

use crate::common::{positive_table, test_values};

const NARROW: [DType; 4] = [DType::F16, DType::BF16, DType::F8E4M3, DType::F8E5M2];

/// The two magnitudes bracketing `a` (`lo <= a < hi`), `hi = inf` standing for overflow.
fn bracket(a: f64, table: &[(f64, u32)]) -> (f64, f64) {
    let i = table.partition_point(|&(v, _)| v <= a);
    let lo = table[i - 1].0;
    let hi = table.get(i).map_or(f64::INFINITY, |t| t.0);
    (lo, hi)
}

/// Magnitude of a decoded result, with NaN (the F8E4M3 overflow) counted as overflow.
fn magnitude(v: f32) -> f64 {
    if v.is_nan() {
        f64::INFINITY
    } else {
        (v as f64).abs()
    }
}

#[test]
fn results_are_always_one_of_the_two_neighbours() {
    let xs: Vec<f32> = test_values(20_000, 3)
        .into_iter()
        .filter(|x| x.is_finite())
        .collect();
    for dtype in NARROW {
        let table = positive_table(dtype);
        let (max, below) = (table[table.len() - 1].0, table[table.len() - 2].0);
        let next_after_max = 2.0 * max - below;
        for (i, &x) in xs.iter().enumerate() {
            let a = (x as f64).abs();
            for r in [0, u32::MAX, sr_random(9, i as u64), 0x8000_0000] {
                let v = bits_to_f32(f32_to_bits_sr(x, dtype, false, r), dtype);
                let m = magnitude(v);
                if !v.is_nan() {
                    assert_eq!(
                        v.is_sign_negative(),
                        x.is_sign_negative(),
                        "{dtype} sign {x:e}"
                    );
                }
                if a >= next_after_max {
                    assert_eq!(m, f64::INFINITY, "{dtype}: {x:e} is beyond the format");
                    continue;
                }
                let (lo, hi) = bracket(a, &table);
                if lo == a {
                    assert_eq!(m, a, "{dtype}: representable {x:e} must not move");
                } else {
                    assert!(
                        m == lo || m == hi,
                        "{dtype}: {x:e} -> {v:e}, not {lo:e} or {hi:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn rounding_is_unbiased_within_five_sigma() {
    const N: usize = 200_000;
    for dtype in NARROW {
        let table = positive_table(dtype);
        let tiny = dtype.min_subnormal();
        // Normal values at several fractions, a subnormal, and one below the smallest subnormal.
        let xs = [
            1.0 + 0.3 * dtype.epsilon(),
            -(1.0 + 0.7 * dtype.epsilon()) * 4.0,
            3.1 * tiny,
            0.25 * tiny,
            -0.0123 * tiny,
            0.77 * dtype.max(),
        ];
        for (k, &x) in xs.iter().enumerate() {
            let seed = 1000 + k as u64;
            let opts = EncodeOptions {
                rounding: Rounding::Stochastic { seed },
                ..Default::default()
            };
            let src = vec![x; N];
            let mut bytes = vec![0u8; N * dtype.size_in_bytes()];
            encode(&src, &mut bytes, dtype, &opts).expect("encode");
            let mut back = vec![0f32; N];
            decode(&bytes, dtype, &mut back).expect("decode");
            let a = (x as f64).abs();
            let (lo, hi) = bracket(a, &table);
            let p = (a - lo) / (hi - lo);
            let ups = back.iter().filter(|v| (**v as f64).abs() == hi).count() as f64;
            let downs = back.iter().filter(|v| (**v as f64).abs() == lo).count() as f64;
            assert_eq!(ups + downs, N as f64, "{dtype} {x:e}: only neighbours");
            let sigma = (N as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (ups - N as f64 * p).abs() <= 5.0 * sigma + 1.0,
                "{dtype} {x:e}: {ups} rounded up, expected {:.1} ± {sigma:.1}",
                N as f64 * p
            );
            // The mean of the results estimates x itself.
            let mean = back.iter().map(|v| *v as f64).sum::<f64>() / N as f64;
            let tol = 5.0 * (hi - lo) * (p * (1.0 - p) / N as f64).sqrt() + (hi - lo) / N as f64;
            assert!(
                (mean - x as f64).abs() <= tol,
                "{dtype}: mean {mean:e} vs {x:e}"
            );
        }
    }
}

#[test]
fn bulk_results_depend_only_on_seed_and_index() {
    let xs = test_values(5 * mp_dtype::PARALLEL_THRESHOLD + 123, 17);
    for dtype in DType::ALL {
        let size = dtype.size_in_bytes();
        let opts = EncodeOptions {
            rounding: Rounding::Stochastic {
                seed: 0xfeed_beef_0123,
            },
            saturate: dtype == DType::F8E4M3,
            index_offset: 1 << 33,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let mut out = vec![0u8; xs.len() * size];
            pool.install(|| encode(&xs, &mut out, dtype, &opts))
                .expect("encode");
            out
        };
        let one = run(1);
        assert_eq!(one, run(3), "{dtype}: thread count changed the result");
        // Converting in pieces with the matching offsets gives the same bytes.
        let mut pieces = vec![0u8; xs.len() * size];
        let cut = [0, 1, 70_001, 200_000, xs.len()];
        for w in cut.windows(2) {
            let o = EncodeOptions {
                index_offset: opts.index_offset + w[0] as u64,
                ..opts
            };
            encode(
                &xs[w[0]..w[1]],
                &mut pieces[w[0] * size..w[1] * size],
                dtype,
                &o,
            )
            .expect("encode piece");
        }
        assert_eq!(one, pieces, "{dtype}: chunking changed the result");
        // And every element is the scalar reference with its own random bits.
        for (i, &x) in xs.iter().enumerate() {
            let r = sr_random(0xfeed_beef_0123, (1u64 << 33) + i as u64);
            let mut le = [0u8; 4];
            le[..size].copy_from_slice(&one[i * size..(i + 1) * size]);
            assert_eq!(
                u32::from_le_bytes(le),
                f32_to_bits_sr(x, dtype, opts.saturate, r)
            );
        }
    }
}

#[test]
fn different_seeds_give_different_streams() {
    let xs = vec![1.0f32 + 1.0 / 512.0; 4096];
    let enc = |seed| {
        let mut out = vec![0u8; 2 * xs.len()];
        let opts = EncodeOptions {
            rounding: Rounding::Stochastic { seed },
            ..Default::default()
        };
        encode(&xs, &mut out, DType::BF16, &opts).expect("encode");
        out
    };
    assert_eq!(enc(1), enc(1));
    assert_ne!(enc(1), enc(2));
}

#[test]
fn bulk_matches_scalar_across_index_word_boundaries_and_saturation() {
    let xs = test_values(1000, 29);
    for dtype in DType::ALL {
        let size = dtype.size_in_bytes();
        for saturate in [false, true] {
            // The stream index crosses 2^32 (low word wraps) and 2^64 (the index wraps).
            for offset in [0u64, (1 << 32) - 300, u64::MAX - 500] {
                let opts = EncodeOptions {
                    rounding: Rounding::Stochastic { seed: 77 },
                    saturate,
                    index_offset: offset,
                };
                let mut out = vec![0u8; xs.len() * size];
                encode(&xs, &mut out, dtype, &opts).expect("encode");
                for (i, &x) in xs.iter().enumerate() {
                    let r = sr_random(77, offset.wrapping_add(i as u64));
                    let mut le = [0u8; 4];
                    le[..size].copy_from_slice(&out[i * size..(i + 1) * size]);
                    assert_eq!(
                        u32::from_le_bytes(le),
                        f32_to_bits_sr(x, dtype, saturate, r),
                        "{dtype} saturate={saturate} offset={offset} x={x:e}"
                    );
                }
            }
        }
    }
}
