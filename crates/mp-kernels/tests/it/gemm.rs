//! GEMM against a float64 reference: every transpose, batch, stride (including broadcast and
//! padding), alpha/beta, and input/output dtype combination.

use crate::common::{cpu, down, f64s, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{TEST_DTYPES, check_close, eps, for_each_dtype};
use mp_kernels::{DType, Gemm};

/// `C = alpha op(A) op(B) + beta C0` in f64.
fn reference(spec: &Gemm, a: &[f64], b: &[f64], c0: &[f64]) -> Vec<f64> {
    let mut c = c0.to_vec();
    for bi in 0..spec.batch {
        let (ao, bo, co) = (bi * spec.stride_a, bi * spec.stride_b, bi * spec.stride_c);
        for i in 0..spec.m {
            for j in 0..spec.n {
                let mut s = 0.0;
                for p in 0..spec.k {
                    let av = if spec.trans_a {
                        a[ao + p * spec.m + i]
                    } else {
                        a[ao + i * spec.k + p]
                    };
                    let bv = if spec.trans_b {
                        b[bo + j * spec.k + p]
                    } else {
                        b[bo + p * spec.n + j]
                    };
                    s += av * bv;
                }
                let old = if spec.beta == 0.0 {
                    0.0
                } else {
                    c[co + i * spec.n + j]
                };
                c[co + i * spec.n + j] = f64::from(spec.alpha) * s + f64::from(spec.beta) * old;
            }
        }
    }
    c
}

fn span(batch: usize, stride: usize, size: usize) -> usize {
    (batch - 1) * stride + size
}

/// Runs one GEMM in `din` inputs / `dout` output and checks it.
fn check(spec: Gemm, din: DType, dout: DType, seed: u64) -> Result<(), String> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let la = span(spec.batch, spec.stride_a, m * k);
    let lb = span(spec.batch, spec.stride_b, k * n);
    let lc = span(spec.batch, spec.stride_c, m * n);
    let (a, ar) = input(la, seed, din);
    let (b, br) = input(lb, seed + 1, din);
    let (c0, cr) = input(lc, seed + 2, dout);
    let ab = up(&a, din);
    let bb = up(&b, din);
    let mut cb = up(&c0, dout);
    cpu()
        .gemm(ab.view(), bb.view(), cb.view_mut(), &spec)
        .map_err(|e| e.to_string())?;
    let want = reference(&spec, &ar, &br, &cr);
    // f32 accumulation over k terms of magnitude <= 1, then the output rounding.
    let abs = 4.0 * k as f64 * eps(DType::F32)
        + if dout == DType::F32 {
            0.0
        } else {
            1e-3 * eps(dout)
        };
    check_close(
        &format!("gemm {spec:?} in {din} out {dout}"),
        &down(&cb),
        &want,
        dout,
        abs,
        1.0,
    )
}

#[test]
fn gemm_all_transposes_alpha_beta_dtypes() {
    for_each_dtype(&TEST_DTYPES, |din| {
        for dout in TEST_DTYPES {
            let mut seed = 10;
            for (m, n, k) in [(1, 1, 1), (7, 5, 3), (33, 17, 65), (64, 48, 32)] {
                for ta in [false, true] {
                    for tb in [false, true] {
                        for (alpha, beta) in [(1.0, 0.0), (-0.75, 0.5), (2.0, 1.0)] {
                            let mut spec = Gemm::new(m, n, k);
                            spec.trans_a = ta;
                            spec.trans_b = tb;
                            spec.alpha = alpha;
                            spec.beta = beta;
                            seed += 3;
                            check(spec, din, dout, seed).unwrap();
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn gemm_batched_strides_and_broadcast() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        let (m, n, k) = (9, 13, 11);
        let mut seed = 100;
        // (stride_a, stride_b, stride_c): dense, broadcast A, broadcast B, padded.
        for (sa, sb, sc) in [
            (m * k, k * n, m * n),
            (0, k * n, m * n),
            (m * k, 0, m * n),
            (m * k + 5, k * n + 2, m * n + 7),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for batch in [1, 3, 4] {
                    let spec = Gemm {
                        m,
                        n,
                        k,
                        batch,
                        trans_a: ta,
                        trans_b: tb,
                        alpha: 0.5,
                        beta: if batch == 3 { 1.0 } else { 0.0 },
                        stride_a: sa,
                        stride_b: sb,
                        stride_c: sc,
                    };
                    seed += 3;
                    check(spec, dt, dt, seed).unwrap();
                }
            }
        }
    });
}

#[test]
fn gemm_many_small_products_use_the_batched_path() {
    // 64 heads of 16 x 16 x 8: the one-product-per-thread path.
    for_each_dtype(&TEST_DTYPES, |dt| {
        let (m, n, k, batch) = (16, 16, 8, 64);
        let mut spec = Gemm::new(m, n, k);
        spec.batch = batch;
        spec.trans_b = true;
        check(spec, dt, DType::F32, 7).unwrap();
    });
}

#[test]
fn gemm_gpt_shapes() {
    // The shapes of the gpt-cpu config (rows = batch 16 x context 64).
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (m, n, k, ta, tb) in [
            (1024, 384, 128, false, false),
            (1024, 128, 512, false, false),
            (128, 384, 1024, true, false),
            (1024, 128, 384, false, true),
        ] {
            let mut spec = Gemm::new(m, n, k);
            spec.trans_a = ta;
            spec.trans_b = tb;
            check(spec, dt, dt, 42).unwrap();
        }
    });
}

#[test]
fn gemm_beta_zero_ignores_nan_in_c_and_keeps_gaps() {
    let (m, n, k) = (4, 5, 6);
    for dt in TEST_DTYPES {
        let spec = Gemm {
            batch: 2,
            stride_c: m * n + 3,
            stride_a: m * k,
            stride_b: 0,
            ..Gemm::new(m, n, k)
        };
        let (a, ar) = input(2 * m * k, 1, dt);
        let (b, br) = input(k * n, 2, dt);
        let mut c0 = vec![f32::NAN; 2 * m * n + 3];
        c0[m * n..m * n + 3].copy_from_slice(&[1.5, -2.0, 0.25]);
        let mut cb = up(&c0, dt);
        cpu()
            .gemm(up(&a, dt).view(), up(&b, dt).view(), cb.view_mut(), &spec)
            .unwrap();
        let got = down(&cb);
        let mut want = reference(&spec, &ar, &br, &f64s(&c0));
        // The gap between the two outputs must be untouched.
        want[m * n..m * n + 3].copy_from_slice(&[1.5, -2.0, 0.25]);
        check_close("gemm beta=0 over NaN", &got, &want, dt, 1e-4, 2.0).unwrap();
    }
}

#[test]
fn gemm_k_zero_scales_c() {
    let mut spec = Gemm::new(3, 4, 0);
    spec.beta = 0.5;
    let c0: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut cb = up(&c0, DType::F32);
    let a = up(&[], DType::F32);
    cpu()
        .gemm(a.view(), a.view(), cb.view_mut(), &spec)
        .unwrap();
    let want: Vec<f64> = c0.iter().map(|&v| 0.5 * f64::from(v)).collect();
    check_close("gemm k=0", &down(&cb), &want, DType::F32, 0.0, 0.0).unwrap();
}

#[test]
fn gemm_views_at_offsets() {
    // A, B, C as windows in the middle of larger buffers.
    let (m, n, k) = (5, 6, 7);
    let spec = Gemm::new(m, n, k);
    for dt in TEST_DTYPES {
        let (a, ar) = input(m * k + 10, 3, dt);
        let (b, br) = input(k * n + 4, 4, dt);
        let (c0, cr) = input(m * n + 9, 5, dt);
        let (ab, bb, mut cb) = (up(&a, dt), up(&b, dt), up(&c0, dt));
        cpu()
            .gemm(
                ab.slice(10, m * k),
                bb.slice(3, k * n),
                cb.slice_mut(2, m * n),
                &spec,
            )
            .unwrap();
        let mut want = cr.clone();
        let prod = reference(&spec, &ar[10..], &br[3..3 + k * n], &cr[2..2 + m * n]);
        want[2..2 + m * n].copy_from_slice(&prod);
        check_close("gemm at offsets", &down(&cb), &want, dt, 1e-4, 2.0).unwrap();
    }
}
