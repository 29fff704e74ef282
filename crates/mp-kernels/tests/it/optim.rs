//! The fused optimizer passes of the CPU backend against float64 references (the full
//! PyTorch-parity tests live with mp-optim; these pin the kernel contract).

use crate::common::{cpu, down, f64s, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{assert_close_tol, quantize, random_vec};
use mp_kernels::{AdamW, CpuBuffer, DType, Rounding, Sgd};

const N: usize = 20_003;

#[test]
fn adamw_three_steps_and_model_copy() {
    let p0 = random_vec(N, 81);
    let mut p = up(&p0, DType::F32);
    let (mut m, mut v) = (
        CpuBuffer::zeros(DType::F32, N),
        CpuBuffer::zeros(DType::F32, N),
    );
    let mut model = CpuBuffer::zeros(DType::BF16, N);
    let (mut pr, mut mr, mut vr) = (f64s(&p0), vec![0.0f64; N], vec![0.0f64; N]);
    let (lr, b1, b2, eps, wd, gm) = (1e-2f64, 0.9f64, 0.95f64, 1e-8f64, 0.1f64, 0.5f64);
    for step in 1..=3u64 {
        let g = random_vec(N, 90 + step);
        let hp = AdamW {
            lr: lr as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: eps as f32,
            weight_decay: wd as f32,
            step,
            grad_mult: gm as f32,
            rounding: Rounding::NearestEven,
        };
        cpu()
            .adamw(
                p.view_mut(),
                up(&g, DType::F32).view(),
                m.view_mut(),
                v.view_mut(),
                Some(model.view_mut()),
                &hp,
            )
            .unwrap();
        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for i in 0..N {
            let gi = f64::from(g[i]) * gm;
            pr[i] *= 1.0 - lr * wd;
            mr[i] = b1 * mr[i] + (1.0 - b1) * gi;
            vr[i] = b2 * vr[i] + (1.0 - b2) * gi * gi;
            pr[i] -= lr / bc1 * mr[i] / (vr[i].sqrt() / bc2.sqrt() + eps);
        }
    }
    let got = down(&p);
    assert_close_tol("adamw params", &got, &pr, DType::F32, 1e-6, 16.0);
    assert_close_tol("adamw m", &down(&m), &mr, DType::F32, 1e-7, 16.0);
    assert_close_tol("adamw v", &down(&v), &vr, DType::F32, 1e-8, 16.0);
    assert_eq!(
        down(&model),
        quantize(&got, DType::BF16),
        "model copy = RNE(params)"
    );
}

#[test]
fn sgd_nesterov_and_grad_stats() {
    let p0 = random_vec(N, 82);
    let g = random_vec(N, 83);
    let mut p = up(&p0, DType::F32);
    let mut buf = up(&random_vec(N, 84), DType::F32);
    let b0 = f64s(&down(&buf));
    let hp = Sgd {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        nesterov: true,
        first_step: false,
        grad_mult: 2.0,
        rounding: Rounding::NearestEven,
    };
    cpu()
        .sgd(
            p.view_mut(),
            up(&g, DType::F32).view(),
            buf.view_mut(),
            None,
            &hp,
        )
        .unwrap();
    let mut want = Vec::with_capacity(N);
    for i in 0..N {
        let gi = f64::from(g[i]) * 2.0 + 0.01 * f64::from(p0[i]);
        let bi = 0.9 * b0[i] + 0.9 * gi;
        want.push(f64::from(p0[i]) - 0.1 * (gi + 0.9 * bi));
    }
    assert_close_tol("sgd params", &down(&p), &want, DType::F32, 1e-6, 16.0);

    let gb = up(&g, DType::BF16);
    let stats = cpu().grad_stats(gb.view(), 0.5).unwrap();
    let want: f64 = quantize(&g, DType::BF16)
        .iter()
        .map(|&v| (0.5 * f64::from(v)).powi(2))
        .sum();
    assert!(!stats.non_finite);
    assert!(
        (stats.sum_sq - want).abs() <= 1e-5 * want,
        "{} vs {want}",
        stats.sum_sq
    );
    let mut bad = g.clone();
    bad[N - 1] = f32::INFINITY;
    assert!(
        cpu()
            .grad_stats(up(&bad, DType::F32).view(), 1.0)
            .unwrap()
            .non_finite
    );
}
