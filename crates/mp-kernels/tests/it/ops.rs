//! The ops of the op-family layer beyond GPT-2's: every unary function and its backward,
//! `sub`, the broadcast product, dropout, RMSNorm (kernel, default composition, gradients) and
//! the transpose, against float64 references written here.

use crate::common::{cpu, down, f64s, input, up};
use mp_kernels::backend::norm::{rms_norm_backward_composed, rms_norm_composed};
use mp_kernels::prelude::*;
use mp_kernels::testing::{TEST_DTYPES, assert_close, for_each_dtype, random_vec};
use mp_kernels::{BinaryOp, CpuBuffer, DType, UnaryOp, contract};

const F32: DType = DType::F32;

/// `f(x)` and `f'(x)` in f64 (the textbook formulas).
fn reference(op: UnaryOp, x: f64) -> (f64, f64) {
    let s = |x: f64| 1.0 / (1.0 + (-x).exp());
    match op {
        UnaryOp::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let u = k * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            let du = k * (1.0 + 3.0 * 0.044715 * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
            )
        }
        UnaryOp::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
        UnaryOp::Silu => (x * s(x), s(x) * (1.0 + x * (1.0 - s(x)))),
        UnaryOp::Sigmoid => (s(x), s(x) * (1.0 - s(x))),
        UnaryOp::Tanh => (x.tanh(), 1.0 - x.tanh() * x.tanh()),
        UnaryOp::Exp => (x.exp(), x.exp()),
        UnaryOp::Neg => (-x, -1.0),
        UnaryOp::Rsqrt => (1.0 / x.sqrt(), -0.5 * x.powf(-1.5)),
    }
}

#[test]
fn unary_ops_and_backward_match_the_f64_formulas() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for op in UnaryOp::ALL {
            let n = 777;
            let (mut x, _) = input(n, 31, dt);
            for v in &mut x {
                *v *= 4.0;
                if op == UnaryOp::Rsqrt {
                    *v = v.abs() + 0.25;
                }
            }
            let x = mp_kernels::testing::quantize(&x, dt);
            let dy = mp_kernels::testing::quantize(&random_vec(n, 32), dt);
            let d0 = mp_kernels::testing::quantize(&random_vec(n, 33), dt);
            let mut y = CpuBuffer::zeros(dt, n);
            cpu().unary(op, up(&x, dt).view(), y.view_mut()).unwrap();
            let mut dx = up(&d0, dt);
            cpu()
                .unary_backward(op, up(&x, dt).view(), up(&dy, dt).view(), dx.view_mut())
                .unwrap();
            let (mut fy, mut fdx) = (Vec::new(), Vec::new());
            for i in 0..n {
                let (f, df) = reference(op, f64::from(x[i]));
                fy.push(f);
                fdx.push(f64::from(d0[i]) + df * f64::from(dy[i]));
            }
            assert_close(op.name(), &down(&y), &fy, dt);
            assert_close(op.backward_name(), &down(&dx), &fdx, dt);
            // the backend-independent reference of the enum agrees too
            for (i, &v) in x.iter().enumerate().take(50) {
                let (f, _) = reference(op, f64::from(v));
                let e = (f64::from(op.eval(v)) - f).abs();
                assert!(e <= 1e-5 + 1e-5 * f.abs(), "{} eval({v}) {i}", op.name());
            }
        }
    });
}

#[test]
fn relu_propagates_nan_and_sub_subtracts() {
    let x = up(&[f32::NAN, -1.0, 2.0], F32);
    let mut y = CpuBuffer::zeros(F32, 3);
    cpu().unary(UnaryOp::Relu, x.view(), y.view_mut()).unwrap();
    let y = down(&y);
    assert!(y[0].is_nan(), "a NaN must reach the overflow check");
    assert_eq!(&y[1..], &[0.0, 2.0]);
    for_each_dtype(&TEST_DTYPES, |dt| {
        let (a, ar) = input(1000, 41, dt);
        let (b, br) = input(1000, 42, dt);
        let mut o = CpuBuffer::zeros(dt, 1000);
        cpu()
            .binary(
                BinaryOp::Sub,
                up(&a, dt).view(),
                up(&b, dt).view(),
                o.view_mut(),
            )
            .unwrap();
        let want: Vec<f64> = ar.iter().zip(&br).map(|(a, b)| a - b).collect();
        assert_close("sub", &down(&o), &want, dt);
    });
}

#[test]
fn mul_broadcast_every_factor_combination() {
    let (rows, cols) = (37, 29);
    let (x, xr) = input(rows * cols, 51, F32);
    let (r, rr) = input(rows, 52, F32);
    let (c, cr) = input(cols, 53, F32);
    for (use_r, use_c) in [(false, false), (true, false), (false, true), (true, true)] {
        for dt in [F32, DType::BF16] {
            let (bx, br, bc) = (up(&x, F32), up(&r, F32), up(&c, F32));
            let mut o = CpuBuffer::zeros(dt, rows * cols);
            cpu()
                .mul_broadcast(
                    bx.view(),
                    use_r.then(|| br.view()),
                    use_c.then(|| bc.view()),
                    o.view_mut(),
                )
                .unwrap();
            let want: Vec<f64> = (0..rows * cols)
                .map(|i| {
                    let rf = if use_r { rr[i / cols] } else { 1.0 };
                    let cf = if use_c { cr[i % cols] } else { 1.0 };
                    xr[i] * rf * cf
                })
                .collect();
            assert_close("mul_broadcast", &down(&o), &want, dt);
        }
    }
    // a row scale whose length does not divide x
    let e = cpu()
        .mul_broadcast(
            up(&x, F32).view(),
            Some(up(&r[..5], F32).view()),
            None,
            CpuBuffer::zeros(F32, rows * cols).view_mut(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("row_scale"), "{e}");
}

#[test]
fn dropout_keeps_the_fraction_reproducibly_and_scales() {
    let n = 100_000;
    let x = vec![1.0f32; n];
    let run = |p: f32, seed: u64| {
        let mut o = CpuBuffer::zeros(F32, n);
        cpu()
            .dropout(up(&x, F32).view(), p, seed, o.view_mut())
            .unwrap();
        down(&o)
    };
    let a = run(0.25, 7);
    assert_eq!(a, run(0.25, 7), "same seed, same mask");
    assert_ne!(a, run(0.25, 8), "another seed, another mask");
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
    assert!(a.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
    // each element's fate is sr_random(seed, index) against the contract's threshold
    let (t, _) = contract::dropout_threshold(0.25);
    for (i, &v) in a.iter().enumerate().take(1000) {
        assert_eq!(
            v != 0.0,
            mp_dtype::sr_random(7, i as u64) >= t,
            "element {i}"
        );
    }
    assert_eq!(run(0.0, 1), x, "p = 0 keeps everything");
    for p in [1.0, -0.1, f32::NAN] {
        let e = cpu()
            .dropout(
                up(&x, F32).view(),
                p,
                1,
                CpuBuffer::zeros(F32, n).view_mut(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("drop probability"), "{e}");
    }
}

/// RMSNorm in f64: `(y, rstd)`.
fn rms_ref(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let c = w.len();
    let (mut y, mut rs) = (Vec::new(), Vec::new());
    for row in x.chunks(c) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
        rs.push(r);
        y.extend(row.iter().zip(w).map(|(v, w)| v * r * w));
    }
    (y, rs)
}

#[test]
fn rms_norm_kernel_and_default_composition_match_the_reference() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        let (rows, c, eps) = (23, 67, 1e-5f32);
        let (x, xr) = input(rows * c, 61, dt);
        let (w, wr) = input(c, 62, dt);
        let (want, want_rs) = rms_ref(&xr, &wr, f64::from(eps));
        for composed in [false, true] {
            let be = cpu();
            let (bx, bw) = (up(&x, dt), up(&w, dt));
            let mut y = CpuBuffer::zeros(dt, rows * c);
            let mut rs = CpuBuffer::zeros(F32, rows);
            if composed {
                rms_norm_composed(&be, bx.view(), bw.view(), eps, y.view_mut(), rs.view_mut())
            } else {
                be.rms_norm(bx.view(), bw.view(), eps, y.view_mut(), rs.view_mut())
            }
            .unwrap();
            let what = format!("rms_norm composed={composed}");
            assert_close(&what, &down(&y), &want, dt);
            assert_close(&what, &down(&rs), &want_rs, F32);
        }
    });
}

#[test]
fn rms_norm_backward_kernel_and_composition_agree_with_finite_differences() {
    let (rows, c, eps) = (5, 12, 1e-5f32);
    let x = random_vec(rows * c, 71);
    let w: Vec<f32> = random_vec(c, 72).iter().map(|v| 1.0 + 0.5 * v).collect();
    let dy = random_vec(rows * c, 73);
    let loss = |x: &[f32], w: &[f32]| -> f64 {
        let (y, _) = rms_ref(&f64s(x), &f64s(w), f64::from(eps));
        y.iter().zip(&dy).map(|(y, g)| y * f64::from(*g)).sum()
    };
    let h = 1e-3f32;
    let fd = |v: &[f32], j: usize, f: &dyn Fn(&[f32]) -> f64| {
        let (mut p, mut m) = (v.to_vec(), v.to_vec());
        p[j] += h;
        m[j] -= h;
        (f(&p) - f(&m)) / f64::from(2.0 * h)
    };
    let dx_fd: Vec<f64> = (0..x.len()).map(|j| fd(&x, j, &|v| loss(v, &w))).collect();
    let dw_fd: Vec<f64> = (0..c).map(|j| fd(&w, j, &|v| loss(&x, v))).collect();
    for composed in [false, true] {
        let be = cpu();
        let (bx, bw, bdy) = (up(&x, F32), up(&w, F32), up(&dy, F32));
        let mut y = CpuBuffer::zeros(F32, rows * c);
        let mut rs = CpuBuffer::zeros(F32, rows);
        be.rms_norm(bx.view(), bw.view(), eps, y.view_mut(), rs.view_mut())
            .unwrap();
        // both accumulate: start from ones
        let mut dx = up(&vec![1.0; rows * c], F32);
        let mut dw = up(&vec![1.0; c], F32);
        let args = (bdy.view(), bx.view(), bw.view(), rs.view());
        if composed {
            rms_norm_backward_composed(
                &be,
                args.0,
                args.1,
                args.2,
                args.3,
                dx.view_mut(),
                dw.view_mut(),
            )
        } else {
            be.rms_norm_backward(args.0, args.1, args.2, args.3, dx.view_mut(), dw.view_mut())
        }
        .unwrap();
        let plus1 = |v: &[f64]| v.iter().map(|g| g + 1.0).collect::<Vec<_>>();
        let what = format!("rms_norm_backward composed={composed}");
        mp_kernels::testing::assert_close_tol(&what, &down(&dx), &plus1(&dx_fd), F32, 1e-3, 1e4);
        mp_kernels::testing::assert_close_tol(&what, &down(&dw), &plus1(&dw_fd), F32, 1e-3, 1e4);
    }
}

#[test]
fn transpose_is_exact_and_batched() {
    let (b, m, n) = (3, 5, 7);
    let x = random_vec(b * m * n, 81);
    let mut y = CpuBuffer::zeros(F32, b * m * n);
    cpu()
        .transpose(up(&x, F32).view(), b, m, n, y.view_mut())
        .unwrap();
    let y = down(&y);
    for i in 0..b {
        for r in 0..m {
            for c in 0..n {
                assert_eq!(y[(i * n + c) * m + r], x[(i * m + r) * n + c]);
            }
        }
    }
}
