//! Finite-difference checks of every backward kernel, in f32.
//!
//! Each check fixes a random linear functional `L(x) = sum_i w_i f(x)_i` of an op's output,
//! runs the backward kernel with upstream gradient `w`, and compares every input coordinate
//! of the result with the central difference `(L(x + h e_j) - L(x - h e_j)) / 2h`, the forward
//! evaluated by the same CPU kernels in f32 and summed in f64.

use crate::common::{cpu, down, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{random_ids, random_vec};
use mp_kernels::{Attention, CpuBuffer, DType, UnaryOp};

const F32: DType = DType::F32;

/// Compares `grad` with central differences of `loss` around `x`.
#[track_caller]
fn check(what: &str, x: &[f32], grad: &[f32], loss: impl Fn(&[f32]) -> f64) {
    assert_eq!(x.len(), grad.len());
    let h = 1e-2f32;
    let mut worst = (0.0f64, 0usize, 0.0f64);
    for j in 0..x.len() {
        let mut xp = x.to_vec();
        xp[j] += h;
        let mut xm = x.to_vec();
        xm[j] -= h;
        let fd = (loss(&xp) - loss(&xm)) / (f64::from(xp[j]) - f64::from(xm[j]));
        let g = f64::from(grad[j]);
        // O(h^2) truncation plus f32 rounding of the forward divided by 2h.
        let err = (fd - g).abs() / (2e-3 + 2e-2 * fd.abs().max(g.abs()));
        if err > worst.0 {
            worst = (err, j, fd);
        }
    }
    let (err, j, fd) = worst;
    assert!(
        err <= 1.0,
        "{what}: analytic gradient [{j}] = {} vs finite difference {fd} ({err:.2} x tolerance)",
        grad[j]
    );
}

/// `sum_i w_i y_i` in f64.
fn dot(w: &[f32], y: &[f32]) -> f64 {
    w.iter()
        .zip(y)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum()
}

#[test]
fn gelu_gradient() {
    let x: Vec<f32> = random_vec(64, 1).iter().map(|v| 4.0 * v).collect();
    let w = random_vec(64, 2);
    let f = |x: &[f32]| {
        let mut y = CpuBuffer::zeros(F32, x.len());
        cpu()
            .unary(UnaryOp::GeluTanh, up(x, F32).view(), y.view_mut())
            .unwrap();
        dot(&w, &down(&y))
    };
    let mut dx = CpuBuffer::zeros(F32, 64);
    cpu()
        .unary_backward(
            UnaryOp::GeluTanh,
            up(&x, F32).view(),
            up(&w, F32).view(),
            dx.view_mut(),
        )
        .unwrap();
    check("gelu", &x, &down(&dx), f);
}

#[test]
fn softmax_and_log_softmax_gradients() {
    for causal in [false, true] {
        for log in [false, true] {
            let (rows, cols) = (8, 4);
            let x: Vec<f32> = random_vec(rows * cols, 3).iter().map(|v| 3.0 * v).collect();
            let w = random_vec(rows * cols, 4);
            let fwd = |x: &[f32]| {
                let mut y = CpuBuffer::zeros(F32, x.len());
                cpu()
                    .softmax(up(x, F32).view(), cols, causal, log, y.view_mut())
                    .unwrap();
                down(&y)
            };
            let f = |x: &[f32]| {
                // Masked log-softmax outputs are -inf constants: leave them out of L.
                fwd(x)
                    .iter()
                    .zip(&w)
                    .filter(|(y, _)| y.is_finite())
                    .map(|(y, w)| f64::from(*y) * f64::from(*w))
                    .sum()
            };
            let y = up(&fwd(&x), F32);
            let mut dx = CpuBuffer::zeros(F32, x.len());
            cpu()
                .softmax_backward(y.view(), up(&w, F32).view(), cols, log, dx.view_mut())
                .unwrap();
            check(
                &format!("softmax causal={causal} log={log}"),
                &x,
                &down(&dx),
                f,
            );
        }
    }
}

#[test]
fn layer_norm_gradients() {
    let (rows, c) = (3, 8);
    let x = random_vec(rows * c, 5);
    let wt: Vec<f32> = random_vec(c, 6).iter().map(|v| 1.0 + 0.5 * v).collect();
    let b = random_vec(c, 7);
    let w = random_vec(rows * c, 8);
    let fwd = |x: &[f32], wt: &[f32], b: &[f32]| {
        let mut y = CpuBuffer::zeros(F32, rows * c);
        let mut mean = CpuBuffer::zeros(F32, rows);
        let mut rstd = CpuBuffer::zeros(F32, rows);
        cpu()
            .layer_norm(
                up(x, F32).view(),
                up(wt, F32).view(),
                up(b, F32).view(),
                1e-5,
                y.view_mut(),
                mean.view_mut(),
                rstd.view_mut(),
            )
            .unwrap();
        (dot(&w, &down(&y)), mean, rstd)
    };
    let (_, mean, rstd) = fwd(&x, &wt, &b);
    let mut dx = CpuBuffer::zeros(F32, rows * c);
    let mut dw = CpuBuffer::zeros(F32, c);
    let mut db = CpuBuffer::zeros(F32, c);
    cpu()
        .layer_norm_backward(
            up(&w, F32).view(),
            up(&x, F32).view(),
            up(&wt, F32).view(),
            mean.view(),
            rstd.view(),
            dx.view_mut(),
            dw.view_mut(),
            db.view_mut(),
        )
        .unwrap();
    check("layer_norm dx", &x, &down(&dx), |x| fwd(x, &wt, &b).0);
    check("layer_norm dweight", &wt, &down(&dw), |wt| {
        fwd(&x, wt, &b).0
    });
    check("layer_norm dbias", &b, &down(&db), |b| fwd(&x, &wt, b).0);
}

#[test]
fn cross_entropy_gradient() {
    let (rows, vocab) = (4, 9);
    let x: Vec<f32> = random_vec(rows * vocab, 9)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    let targets = random_ids(rows, vocab as u32, 10);
    let dloss = 0.5f32;
    let f = |x: &[f32]| {
        let mut l = CpuBuffer::zeros(F32, rows);
        cpu()
            .cross_entropy(up(x, F32).view(), &targets, vocab, l.view_mut())
            .unwrap();
        down(&l)
            .iter()
            .map(|&v| f64::from(dloss) * f64::from(v))
            .sum()
    };
    let mut dx = CpuBuffer::zeros(F32, rows * vocab);
    cpu()
        .cross_entropy_backward(up(&x, F32).view(), &targets, vocab, dloss, dx.view_mut())
        .unwrap();
    check("cross_entropy", &x, &down(&dx), f);
}

#[test]
fn embedding_gradient() {
    let (vocab, c, n) = (5, 3, 12);
    let table = random_vec(vocab * c, 11);
    let ids = random_ids(n, vocab as u32, 12);
    let w = random_vec(n * c, 13);
    let f = |t: &[f32]| {
        let mut out = CpuBuffer::zeros(F32, n * c);
        cpu()
            .embedding(up(t, F32).view(), &ids, c, out.view_mut())
            .unwrap();
        dot(&w, &down(&out))
    };
    let mut dt = CpuBuffer::zeros(F32, vocab * c);
    cpu()
        .embedding_backward(up(&w, F32).view(), &ids, c, dt.view_mut())
        .unwrap();
    check("embedding", &table, &down(&dt), f);
}

#[test]
fn attention_gradient() {
    // two key tiles, grouped-query (4 query heads of 2 over 2 key/value heads)
    let s = Attention {
        kv_heads: 2,
        ..Attention::mha(2, 70, 8, 4)
    };
    let qkv: Vec<f32> = random_vec(s.b * s.t * s.qkv_row(), 14)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    let w = random_vec(s.b * s.t * s.c, 15);
    let fwd = |q: &[f32]| {
        let mut out = CpuBuffer::zeros(F32, s.b * s.t * s.c);
        let mut lse = CpuBuffer::zeros(F32, s.lse_len());
        cpu()
            .attention(up(q, F32).view(), &s, out.view_mut(), lse.view_mut())
            .unwrap();
        (dot(&w, &down(&out)), out, lse)
    };
    let (_, out, lse) = fwd(&qkv);
    let mut d = CpuBuffer::zeros(F32, qkv.len());
    cpu()
        .attention_backward(
            up(&w, F32).view(),
            up(&qkv, F32).view(),
            out.view(),
            lse.view(),
            &s,
            d.view_mut(),
        )
        .unwrap();
    check("attention", &qkv, &down(&d), |q| fwd(q).0);
}
