//! GEMM and the element-wise ops against the CPU oracle (shared by the CUDA and wgpu suites:
//! `crate::common` supplies the backend). The GEMM checks a backend alone needs (CUDA's TF32,
//! the wgpu kernel's tile edges) live in the targets' `gemm.rs`, built on [`gemm_run`] and
//! [`broadcast_batches`].

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_vec, tolerance};
use mp_kernels::{BinaryOp, DType, Gemm, UnaryOp, test_per_dtype};

use crate::common::{close, cpu, down, gpu, poisoned, up};

/// Runs `s` on `be` over `a`, `b` (rounded to `ab`) and C (`c0` rounded to `cdt`; NaN when
/// `beta` is 0, so a kernel that reads C then shows) and returns the whole C.
pub fn gemm_run<B: Backend>(
    be: &B,
    a: &[f32],
    b: &[f32],
    c0: &[f32],
    ab: DType,
    cdt: DType,
    s: &Gemm,
) -> Vec<f32> {
    let (ba, bb) = (up(be, a, ab), up(be, b, ab));
    // C spans every batch's output (a beta = 0 test may pass no initial C at all)
    let c_len = c0.len().max(s.stride_c * (s.batch - 1) + s.m * s.n);
    let mut bc = if s.beta == 0.0 {
        poisoned(be, cdt, c_len)
    } else {
        up(be, c0, cdt)
    };
    be.gemm(ba.view(), bb.view(), bc.view_mut(), s)
        .expect("gemm");
    down(be, &bc)
}

/// Every transpose combination, batched with strides, alpha/beta, odd sizes.
fn gemm_matches_cpu(dtype: DType) {
    let Some(g) = gpu("gemm_matches_cpu") else {
        return;
    };
    let c = cpu();
    let outs: &[DType] = if dtype == DType::F32 {
        &[DType::F32]
    } else {
        &[DType::F32, DType::BF16, DType::F16]
    };
    let (m, n, k, batch) = (37, 53, 71, 3);
    for &cdt in outs {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-1.25, 0.75)] {
                let s = Gemm {
                    m,
                    n,
                    k,
                    batch,
                    trans_a: ta,
                    trans_b: tb,
                    alpha,
                    beta,
                    stride_a: m * k + 5,
                    stride_b: k * n,
                    stride_c: m * n + 2,
                };
                let a = random_vec(s.stride_a * batch, 1);
                let b = random_vec(s.stride_b * batch, 2);
                let c0 = random_vec(s.stride_c * batch, 3);
                let want = gemm_run(&c, &a, &b, &c0, dtype, cdt, &s);
                let got = gemm_run(g, &a, &b, &c0, dtype, cdt, &s);
                // FP32 accumulation in another order: allow sqrt(k) of the output's ulp
                let (abs, kk) = tolerance(cdt);
                let what = format!("gemm {dtype}->{cdt} ta={ta} tb={tb} a={alpha} b={beta}");
                // the elements between batches (strides > sizes) are checked too: poison or c0
                // must come back unchanged where the product does not write
                close(&what, &got, &want, cdt, abs * 10.0, kk * 4.0);
            }
        }
    }
}
test_per_dtype!(gemm_matches_cpu: f32, f16, bf16);

/// A batched F32 GEMM whose one B serves every batch (`stride_b = 0`) on `be` against the CPU,
/// within `abs + |ref| * k * eps`.
pub fn broadcast_batches<B: Backend>(be: &B, what: &str, abs: f64, k: f64) {
    let s = Gemm {
        stride_b: 0, // one B for every batch
        batch: 4,
        stride_a: 64 * 96,
        stride_c: 64 * 80,
        ..Gemm::new(64, 80, 96)
    };
    let a = random_vec(64 * 96 * 4, 4);
    let b = random_vec(96 * 80, 5);
    let want = gemm_run(&cpu(), &a, &b, &[], DType::F32, DType::F32, &s);
    let got = gemm_run(be, &a, &b, &[], DType::F32, DType::F32, &s);
    close(what, &got, &want, DType::F32, abs, k);
}

fn pointwise_matches_cpu(dtype: DType) {
    let Some(g) = gpu("pointwise_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    // a vector body plus a tail, and an unaligned window
    for (len, off) in [(10_007usize, 0usize), (1001, 3)] {
        let a = random_vec(len + off, 11);
        let b = random_vec(len + off, 12);
        let d0: Vec<f32> = random_vec(len + off, 13);
        fn run<B: Backend>(
            be: &B,
            which: &str,
            a: &[f32],
            b: &[f32],
            d0: &[f32],
            dt: DType,
            off: usize,
        ) -> Vec<f32> {
            let len = a.len() - off;
            let (ba, bb) = (up(be, a, dt), up(be, b, dt));
            let mut out = match which {
                "axpy" | "gelu_backward" => up(be, d0, dt),
                _ => poisoned(be, dt, len + off),
            };
            let (va, vb, vo) = (
                ba.slice(off, len),
                bb.slice(off, len),
                out.slice_mut(off, len),
            );
            match which {
                "add" => be.binary(BinaryOp::Add, va, vb, vo),
                "mul" => be.binary(BinaryOp::Mul, va, vb, vo),
                "scale" => be.scale(va, -1.75, vo),
                "axpy" => be.axpy(0.3, va, vo),
                "gelu" => be.unary(UnaryOp::GeluTanh, va, vo),
                "gelu_backward" => be.unary_backward(UnaryOp::GeluTanh, va, vb, vo),
                _ => unreachable!("unknown op {which}"),
            }
            .expect(which);
            let all = down(be, &out);
            all[off..].to_vec()
        }
        for op in ["add", "mul", "scale", "axpy", "gelu", "gelu_backward"] {
            let want = run(&c, op, &a, &b, &d0, dtype, off);
            let got = run(g, op, &a, &b, &d0, dtype, off);
            close(
                &format!("{op} n={len} off={off}"),
                &got,
                &want,
                dtype,
                abs,
                k,
            );
        }
    }
    // bias_add with a row length that is and is not a multiple of 8
    for cols in [64usize, 37] {
        let rows = 29;
        let x = random_vec(rows * cols, 14);
        let bias = random_vec(cols, 15);
        fn run<B: Backend>(be: &B, x: &[f32], bias: &[f32], dt: DType) -> Vec<f32> {
            let (bx, bb) = (up(be, x, dt), up(be, bias, dt));
            let mut o = poisoned(be, dt, x.len());
            be.bias_add(bx.view(), bb.view(), o.view_mut())
                .expect("bias_add");
            down(be, &o)
        }
        let want = run(&c, &x, &bias, dtype);
        let got = run(g, &x, &bias, dtype);
        close(&format!("bias_add cols={cols}"), &got, &want, dtype, abs, k);
    }
}
test_per_dtype!(pointwise_matches_cpu: f32, f16, bf16);

#[test]
fn mixed_dtype_accumulation() {
    let Some(g) = gpu("mixed_dtype_accumulation") else {
        return;
    };
    let c = cpu();
    // f32 gradient accumulation of bf16 values, and a bf16 gelu_backward into an f32 dx
    let n = 5000;
    let (x, dy, d0) = (random_vec(n, 21), random_vec(n, 22), random_vec(n, 23));
    fn run<B: Backend>(be: &B, x: &[f32], dy: &[f32], d0: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (bx, bdy) = (up(be, x, DType::BF16), up(be, dy, DType::BF16));
        let mut acc = up(be, d0, DType::F32);
        be.axpy(0.5, bx.view(), acc.view_mut()).expect("axpy");
        let mut dx = up(be, d0, DType::F32);
        be.unary_backward(UnaryOp::GeluTanh, bx.view(), bdy.view(), dx.view_mut())
            .expect("gelu_backward");
        (down(be, &acc), down(be, &dx))
    }
    let (wa, wd) = run(&c, &x, &dy, &d0);
    let (ga, gd) = run(g, &x, &dy, &d0);
    close("axpy bf16 -> f32", &ga, &wa, DType::F32, 1e-5, 64.0);
    close(
        "gelu_backward bf16 -> f32",
        &gd,
        &wd,
        DType::F32,
        1e-5,
        64.0,
    );
}
