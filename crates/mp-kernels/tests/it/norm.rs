//! Softmax / log-softmax (plain and causal) and layer norm forward/backward against float64
//! references.

use crate::common::{cpu, down, f64s, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{TEST_DTYPES, assert_close, for_each_dtype, quantize, random_vec};
use mp_kernels::{CpuBuffer, DType};

pub fn softmax_ref(x: &[f64], cols: usize, causal: bool, log: bool) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (r, (row, o)) in x.chunks(cols).zip(out.chunks_mut(cols)).enumerate() {
        let vis = if causal { r % cols + 1 } else { cols };
        let m = row[..vis].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row[..vis].iter().map(|v| (v - m).exp()).sum();
        for j in 0..cols {
            o[j] = match (j < vis, log) {
                (true, false) => (row[j] - m).exp() / s,
                (true, true) => row[j] - m - s.ln(),
                (false, false) => 0.0,
                (false, true) => f64::NEG_INFINITY,
            };
        }
    }
    out
}

#[test]
fn softmax_plain_causal_log() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (rows, cols) in [(1, 1), (6, 6), (128, 64), (3, 9000)] {
            let x = quantize(
                &random_vec(rows * cols, 31)
                    .iter()
                    .map(|v| 8.0 * v)
                    .collect::<Vec<_>>(),
                dt,
            );
            for causal in [false, true] {
                for log in [false, true] {
                    for dout in [DType::F32, dt] {
                        let mut out = CpuBuffer::zeros(dout, rows * cols);
                        cpu()
                            .softmax(up(&x, dt).view(), cols, causal, log, out.view_mut())
                            .unwrap();
                        let want = softmax_ref(&f64s(&x), cols, causal, log);
                        assert_close(
                            &format!("softmax {rows}x{cols} causal={causal} log={log} ->{dout}"),
                            &down(&out),
                            &want,
                            dout,
                        );
                    }
                }
            }
        }
    });
}

/// (out, mean, rstd) of layer norm in f64.
pub fn layer_norm_ref(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = w.len();
    let (mut out, mut mean, mut rstd) = (vec![], vec![], vec![]);
    for row in x.chunks(c) {
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps).sqrt();
        out.extend(
            row.iter()
                .zip(w)
                .zip(b)
                .map(|((v, w), b)| (v - mu) * rs * w + b),
        );
        mean.push(mu);
        rstd.push(rs);
    }
    (out, mean, rstd)
}

/// (dx, dw, db) of layer norm in f64 for upstream gradient `dy`.
pub fn layer_norm_backward_ref(
    dy: &[f64],
    x: &[f64],
    w: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = w.len();
    let (mut dx, mut dw, mut db) = (vec![], vec![0.0; c], vec![0.0; c]);
    for (row, g) in x.chunks(c).zip(dy.chunks(c)) {
        let mu = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps).sqrt();
        let xh: Vec<f64> = row.iter().map(|v| (v - mu) * rs).collect();
        let d: Vec<f64> = g.iter().zip(w).map(|(g, w)| g * w).collect();
        let m1 = d.iter().sum::<f64>() / c as f64;
        let m2 = d.iter().zip(&xh).map(|(d, x)| d * x).sum::<f64>() / c as f64;
        for j in 0..c {
            dx.push(rs * (d[j] - m1 - xh[j] * m2));
            dw[j] += g[j] * xh[j];
            db[j] += g[j];
        }
    }
    (dx, dw, db)
}

#[test]
fn layer_norm_forward_backward() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (rows, c) in [(1, 1), (3, 5), (1024, 128), (2, 9000)] {
            let eps = 1e-5f32;
            let (x, xr) = input(rows * c, 41, dt);
            let (w, wr) = input(c, 42, DType::F32);
            let (b, br) = input(c, 43, DType::F32);
            let xb = up(&x, dt);
            let (wb, bb) = (up(&w, DType::F32), up(&b, DType::F32));
            let mut out = CpuBuffer::zeros(dt, rows * c);
            let mut mean = CpuBuffer::zeros(DType::F32, rows);
            let mut rstd = CpuBuffer::zeros(DType::F32, rows);
            cpu()
                .layer_norm(
                    xb.view(),
                    wb.view(),
                    bb.view(),
                    eps,
                    out.view_mut(),
                    mean.view_mut(),
                    rstd.view_mut(),
                )
                .unwrap();
            let (o, m, r) = layer_norm_ref(&xr, &wr, &br, f64::from(eps));
            let what = format!("layer_norm {rows}x{c}");
            assert_close(&what, &down(&out), &o, dt);
            assert_close(&what, &down(&mean), &m, DType::F32);
            // rstd of a one-element row is 1/sqrt(eps): cancellation-free but large.
            assert_close(&what, &down(&rstd), &r, DType::F32);

            let (dy, dyr) = input(rows * c, 44, dt);
            let (dx0, dx0r) = input(rows * c, 45, dt);
            let (dw0, dw0r) = input(c, 46, DType::F32);
            let (db0, db0r) = input(c, 47, DType::F32);
            let mut dx = up(&dx0, dt);
            let mut dw = up(&dw0, DType::F32);
            let mut db = up(&db0, DType::F32);
            cpu()
                .layer_norm_backward(
                    up(&dy, dt).view(),
                    xb.view(),
                    wb.view(),
                    mean.view(),
                    rstd.view(),
                    dx.view_mut(),
                    dw.view_mut(),
                    db.view_mut(),
                )
                .unwrap();
            let (gdx, gdw, gdb) = layer_norm_backward_ref(&dyr, &xr, &wr, f64::from(eps));
            let add =
                |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a + b).collect::<Vec<_>>();
            if c > 1 {
                // For c = 1 the true dx is 0 up to rounding of x - mean; skip the amplified noise.
                assert_close(&format!("{what} dx"), &down(&dx), &add(&dx0r, &gdx), dt);
            }
            let tol = mp_kernels::testing::tolerance(DType::F32);
            let abs = tol.0 * (rows as f64).sqrt() * 4.0;
            mp_kernels::testing::assert_close_tol(
                &format!("{what} dw"),
                &down(&dw),
                &add(&dw0r, &gdw),
                DType::F32,
                abs,
                tol.1,
            );
            mp_kernels::testing::assert_close_tol(
                &format!("{what} db"),
                &down(&db),
                &add(&db0r, &gdb),
                DType::F32,
                abs,
                tol.1,
            );
        }
    });
}

/// Softmax / log-softmax backward against the float64 formula, from the f64 forward.
fn softmax_backward_matches_reference(dt: DType) {
    for (rows, cols) in [(1, 1), (12, 6), (256, 64), (2, 9000)] {
        let x = quantize(
            &random_vec(rows * cols, 33)
                .iter()
                .map(|v| 4.0 * v)
                .collect::<Vec<_>>(),
            dt,
        );
        let (dy, dyr) = crate::common::input(rows * cols, 34, dt);
        let (dx0, dx0r) = crate::common::input(rows * cols, 35, dt);
        for causal in [false, true] {
            for log in [false, true] {
                // The kernel takes y as stored (rounded to dt); the reference uses the same y.
                let mut y = CpuBuffer::zeros(dt, rows * cols);
                cpu()
                    .softmax(up(&x, dt).view(), cols, causal, log, y.view_mut())
                    .unwrap();
                let yr = f64s(&down(&y));
                let mut dx = up(&dx0, dt);
                cpu()
                    .softmax_backward(y.view(), up(&dy, dt).view(), cols, log, dx.view_mut())
                    .unwrap();
                let mut want = dx0r.clone();
                for r in 0..rows {
                    let (yrow, grow) = (
                        &yr[r * cols..(r + 1) * cols],
                        &dyr[r * cols..(r + 1) * cols],
                    );
                    let live = |j: usize| {
                        if log {
                            yrow[j].is_finite()
                        } else {
                            yrow[j] != 0.0
                        }
                    };
                    let s: f64 = (0..cols)
                        .filter(|&j| live(j))
                        .map(|j| if log { grow[j] } else { grow[j] * yrow[j] })
                        .sum();
                    for j in (0..cols).filter(|&j| live(j)) {
                        want[r * cols + j] += if log {
                            grow[j] - yrow[j].exp() * s
                        } else {
                            yrow[j] * (grow[j] - s)
                        };
                    }
                }
                let (abs, k) = mp_kernels::testing::tolerance(dt);
                let abs = abs + 4.0 * (cols as f64).sqrt() * f64::from(f32::EPSILON);
                mp_kernels::testing::assert_close_tol(
                    &format!("softmax_backward {rows}x{cols} causal={causal} log={log}"),
                    &down(&dx),
                    &want,
                    dt,
                    abs,
                    k,
                );
            }
        }
    }
}
mp_kernels::test_per_dtype!(softmax_backward_matches_reference: f32, f16, bf16);
