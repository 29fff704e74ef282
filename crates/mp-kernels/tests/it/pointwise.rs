//! Element-wise ops, casts and fill against float64 references, in every dtype.

use crate::common::{cpu, down, f64s, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{TEST_DTYPES, assert_close, for_each_dtype, quantize, random_vec};
use mp_kernels::{BinaryOp, CpuBuffer, DType, Rounding, UnaryOp};

/// Lengths crossing the kernels' block size (8192) and odd tails.
const LENS: [usize; 4] = [1, 37, 8192, 20_011];

pub fn gelu_ref(x: f64) -> f64 {
    let s = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (s * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu_grad_ref(x: f64) -> f64 {
    let s = (2.0 / std::f64::consts::PI).sqrt();
    let u = s * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * s * (1.0 + 3.0 * 0.044715 * x * x)
}

#[test]
fn binary_add_mul_mixed_dtypes() {
    for_each_dtype(&TEST_DTYPES, |dout| {
        for (da, db) in [
            (DType::F32, DType::F32),
            (DType::BF16, DType::F16),
            (dout, dout),
        ] {
            for n in LENS {
                let (a, ar) = input(n, 1, da);
                let (b, br) = input(n, 2, db);
                for op in [BinaryOp::Add, BinaryOp::Mul] {
                    let mut out = CpuBuffer::zeros(dout, n);
                    cpu()
                        .binary(op, up(&a, da).view(), up(&b, db).view(), out.view_mut())
                        .unwrap();
                    let want: Vec<f64> = ar
                        .iter()
                        .zip(&br)
                        .map(|(x, y)| if op == BinaryOp::Add { x + y } else { x * y })
                        .collect();
                    assert_close(&format!("{op:?} {da}x{db} n={n}"), &down(&out), &want, dout);
                }
            }
        }
    });
}

#[test]
fn scale_axpy_bias_add() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for n in LENS {
            let (x, xr) = input(n, 3, dt);
            let (d0, dr) = input(n, 4, dt);
            let mut out = CpuBuffer::zeros(dt, n);
            cpu()
                .scale(up(&x, dt).view(), -1.5, out.view_mut())
                .unwrap();
            let want: Vec<f64> = xr.iter().map(|v| -1.5 * v).collect();
            assert_close("scale", &down(&out), &want, dt);

            let mut dst = up(&d0, dt);
            cpu().axpy(0.25, up(&x, dt).view(), dst.view_mut()).unwrap();
            let want: Vec<f64> = xr.iter().zip(&dr).map(|(x, d)| d + 0.25 * x).collect();
            assert_close("axpy", &down(&dst), &want, dt);
        }
        for (rows, cols) in [(1, 1), (3, 7), (64, 384), (5, 9000)] {
            let (x, xr) = input(rows * cols, 5, dt);
            let (b, br) = input(cols, 6, DType::F32);
            let mut out = CpuBuffer::zeros(dt, rows * cols);
            cpu()
                .bias_add(up(&x, dt).view(), up(&b, DType::F32).view(), out.view_mut())
                .unwrap();
            let want: Vec<f64> = (0..rows * cols).map(|i| xr[i] + br[i % cols]).collect();
            assert_close("bias_add", &down(&out), &want, dt);
        }
    });
}

#[test]
fn gelu_and_backward() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for n in LENS {
            // Wider range than [-1, 1): the tails matter.
            let x = quantize(
                &random_vec(n, 7).iter().map(|v| 6.0 * v).collect::<Vec<_>>(),
                dt,
            );
            let xr = f64s(&x);
            let mut y = CpuBuffer::zeros(dt, n);
            cpu()
                .unary(UnaryOp::GeluTanh, up(&x, dt).view(), y.view_mut())
                .unwrap();
            let want: Vec<f64> = xr.iter().map(|&v| gelu_ref(v)).collect();
            assert_close("gelu", &down(&y), &want, dt);

            let (dy, dyr) = input(n, 8, dt);
            let (dx0, dx0r) = input(n, 9, dt);
            let mut dx = up(&dx0, dt);
            cpu()
                .unary_backward(
                    UnaryOp::GeluTanh,
                    up(&x, dt).view(),
                    up(&dy, dt).view(),
                    dx.view_mut(),
                )
                .unwrap();
            let want: Vec<f64> = (0..n)
                .map(|i| dx0r[i] + gelu_grad_ref(xr[i]) * dyr[i])
                .collect();
            assert_close("gelu_backward", &down(&dx), &want, dt);
        }
    });
}

#[test]
fn cast_round_to_nearest_even_every_pair() {
    let n = 20_011;
    // Values spanning many binades, including some beyond FP8 range and exact ties.
    let mut x: Vec<f32> = random_vec(n, 11)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 2f32.powi((i % 24) as i32 - 12))
        .collect();
    x[0] = 1.0 + 1.0 / 256.0; // a BF16 tie
    x[1] = 1000.0;
    for src in DType::ALL {
        let xs = quantize(&x, src);
        for dst in DType::ALL {
            let mut out = CpuBuffer::zeros(dst, n);
            cpu()
                .cast(up(&xs, src).view(), out.view_mut(), Rounding::NearestEven)
                .unwrap();
            let want = quantize(&xs, dst);
            let got = down(&out);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "cast {src}->{dst} [{i}] of {}: got {g}, want {w}",
                    xs[i]
                );
            }
        }
    }
}

#[test]
fn cast_stochastic_is_neighbours_reproducible_and_offset_consistent() {
    let n = 20_000;
    let x = random_vec(n, 12);
    for dst in [DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
        let seed = 99;
        let xb = up(&x, DType::F32);
        let mut whole = CpuBuffer::zeros(dst, n);
        cpu()
            .cast(xb.view(), whole.view_mut(), Rounding::Stochastic { seed })
            .unwrap();
        let mut again = CpuBuffer::zeros(dst, n);
        cpu()
            .cast(xb.view(), again.view_mut(), Rounding::Stochastic { seed })
            .unwrap();
        assert_eq!(
            whole.as_bytes(),
            again.as_bytes(),
            "SR to {dst} not reproducible"
        );
        // Converting in two pieces at their offsets gives the same bits.
        let mut pieces = CpuBuffer::zeros(dst, n);
        let cut = 12_345;
        cpu()
            .cast(
                xb.slice(0, cut),
                pieces.slice_mut(0, cut),
                Rounding::Stochastic { seed },
            )
            .unwrap();
        cpu()
            .cast(
                xb.slice(cut, n - cut),
                pieces.slice_mut(cut, n - cut),
                Rounding::Stochastic { seed },
            )
            .unwrap();
        assert_eq!(
            whole.as_bytes(),
            pieces.as_bytes(),
            "SR to {dst} depends on the split"
        );
        // Every result is one of the two neighbours of x: the RNE result or the next value
        // on the other side of x; both occur.
        let got = down(&whole);
        let rne = quantize(&x, dst);
        let (mut differs, mut checked) = (0, 0);
        for i in 0..n {
            let (g, v, r) = (got[i], x[i], rne[i]);
            if r == v {
                assert_eq!(g, v, "SR of the exact value {v} to {dst} changed it");
                continue;
            }
            if !r.is_finite() {
                continue;
            }
            checked += 1;
            let bits = mp_dtype::f32_to_bits(r, dst, false);
            let other_bits = if v.abs() > r.abs() {
                bits + 1
            } else {
                bits - 1
            };
            let other = mp_dtype::bits_to_f32(other_bits, dst);
            assert!(
                g == r || g == other,
                "SR {v} -> {g} in {dst}: neighbours are {r}, {other}"
            );
            if g != r {
                differs += 1;
            }
        }
        assert!(
            checked > 0 && differs > 0,
            "SR to {dst} never rounded away from RNE"
        );
    }
}

#[test]
fn fill_rounds_the_value() {
    for dt in DType::ALL {
        let mut b = up(&random_vec(9000, 13), dt);
        cpu().fill(b.slice_mut(3, 8000), 0.1).unwrap();
        let got = down(&b);
        let v = quantize(&[0.1], dt)[0];
        assert!(got[3..8003].iter().all(|&g| g == v), "fill {dt}");
        assert_ne!(got[2], v);
        assert_ne!(got[8003], v);
    }
}

#[test]
fn upload_download_roundtrip_bytes() {
    for dt in DType::ALL {
        let x = quantize(&random_vec(1001, 14), dt);
        let b = up(&x, dt);
        let bytes = cpu().download_bytes(b.view()).unwrap();
        let b2 = cpu().upload_bytes(&bytes, dt).unwrap();
        assert_eq!(down(&b2), x, "{dt}");
        assert_eq!(
            cpu().download_f32(b.slice(5, 7)).unwrap(),
            x[5..12].to_vec()
        );
    }
}
