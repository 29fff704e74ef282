//! GEMM and the element-wise ops against the CPU oracle (shared by the CUDA and wgpu suites:
//! `crate::common` supplies the backend). The GEMM checks a backend alone needs (CUDA's TF32,
//! the wgpu kernel's tile edges) live in the targets' `gemm.rs`, built on [`gemm_run`] and
//! [`broadcast_batches`].

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_vec, tolerance};
use mp_kernels::{BiasGradOf, BinaryOp, DType, Gemm, UnaryOp, test_per_dtype};

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

/// `C = alpha op(A) op(B) + bias` on `be`: A and B of `ab`, a bias of `bias_dt` starting at
/// element `bias_at` of its buffer (an unaligned start too), C of `cdt` (NaN-poisoned:
/// overwritten); `composed` runs [`mp_kernels::compose_gemm_bias`] instead of the backend's own.
fn gemm_bias_run<B: Backend>(
    be: &B,
    (a, b, bias): (&[f32], &[f32], &[f32]),
    (ab, bias_dt, cdt): (DType, DType, DType),
    bias_at: usize,
    s: &Gemm,
    composed: bool,
) -> Vec<f32> {
    let (ba, bb) = (up(be, a, ab), up(be, b, ab));
    let mut padded = vec![0.0; bias_at];
    padded.extend_from_slice(bias);
    let bbias = up(be, &padded, bias_dt);
    let bias = bbias.slice(bias_at, s.n);
    let mut bc = poisoned(be, cdt, s.m * s.n);
    if composed {
        mp_kernels::compose_gemm_bias(be, ba.view(), bb.view(), bias, bc.view_mut(), s)
    } else {
        be.gemm_bias(ba.view(), bb.view(), bias, bc.view_mut(), s)
    }
    .expect("gemm_bias");
    down(be, &bc)
}

/// The biased product (a linear layer's forward: the bias in the GEMM's epilogue where the
/// backend has one) against the CPU and against the backend's own composition, for every
/// output dtype, both weight layouts, a bias of C's dtype and of FP32, aligned and not.
fn gemm_bias_matches_cpu(dtype: DType) {
    let Some(g) = gpu("gemm_bias_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (m, n, k) = (67, 96, 72);
    let (a, b) = (random_vec(m * k, 11), random_vec(k * n, 12));
    let bias = random_vec(n, 13);
    for cdt in [DType::F32, dtype] {
        for (tb, alpha) in [(false, 1.0f32), (true, 1.0), (true, -0.5)] {
            for (bias_dt, at) in [(cdt, 0), (cdt, 1), (DType::F32, 0)] {
                let s = Gemm {
                    trans_b: tb,
                    alpha,
                    ..Gemm::new(m, n, k)
                };
                let run = |be: &dyn Fn(bool) -> Vec<f32>| (be(false), be(true));
                let (want, composed_cpu) = run(&|comp| {
                    gemm_bias_run(&c, (&a, &b, &bias), (dtype, bias_dt, cdt), at, &s, comp)
                });
                let (got, composed) = run(&|comp| {
                    gemm_bias_run(g, (&a, &b, &bias), (dtype, bias_dt, cdt), at, &s, comp)
                });
                let what =
                    format!("gemm_bias {dtype}->{cdt} tb={tb} a={alpha} bias {bias_dt}@{at}");
                // the CPU's fused write-back is its composition bit for bit
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&want),
                    bits(&composed_cpu),
                    "{what}: cpu fused vs composed"
                );
                let (abs, kk) = tolerance(cdt);
                close(&what, &got, &want, cdt, abs * 10.0, kk * 4.0);
                close(
                    &format!("{what} (own composition)"),
                    &got,
                    &composed,
                    cdt,
                    abs * 10.0,
                    kk * 4.0,
                );
            }
        }
    }
}
test_per_dtype!(gemm_bias_matches_cpu: f32, f16, bf16);

/// `(pre, gelu(pre))` of [`GemmOps::gemm_bias_gelu`] on `be`, everything of `dt`.
fn bias_gelu_run<B: Backend>(
    be: &B,
    (a, b, bias): (&[f32], &[f32], &[f32]),
    dt: DType,
    s: &Gemm,
) -> (Vec<f32>, Vec<f32>) {
    let (ba, bb, bbias) = (up(be, a, dt), up(be, b, dt), up(be, bias, dt));
    let mut pre = poisoned(be, dt, s.m * s.n);
    let mut out = poisoned(be, dt, s.m * s.n);
    be.gemm_bias_gelu(
        ba.view(),
        bb.view(),
        bbias.view(),
        pre.view_mut(),
        out.view_mut(),
        s,
    )
    .expect("gemm_bias_gelu");
    (down(be, &pre), down(be, &out))
}

/// `dx0 + gelu'(pre) (op(A) op(B))` of [`GemmOps::gemm_dgelu`] on `be`, everything of `dt`.
fn dgelu_run<B: Backend>(
    be: &B,
    (a, b, pre, dx0): (&[f32], &[f32], &[f32], &[f32]),
    dt: DType,
    s: &Gemm,
) -> Vec<f32> {
    let (ba, bb, bpre) = (up(be, a, dt), up(be, b, dt), up(be, pre, dt));
    let mut dx = up(be, dx0, dt);
    be.gemm_dgelu(ba.view(), bb.view(), bpre.view(), dx.view_mut(), s)
        .expect("gemm_dgelu");
    down(be, &dx)
}

/// `(C, dbias)` of [`GemmOps::gemm_bias_grad`] on `be`: A and B of `dt`, C (from `c0`) and
/// the overwritten `dbias` FP32, as a gradient arena holds them.
fn bias_grad_run<B: Backend>(
    be: &B,
    (a, b, c0): (&[f32], &[f32], &[f32]),
    dt: DType,
    of: BiasGradOf,
    s: &Gemm,
) -> (Vec<f32>, Vec<f32>) {
    let (ba, bb) = (up(be, a, dt), up(be, b, dt));
    let mut c = up(be, c0, DType::F32);
    let len = if of == BiasGradOf::A { s.m } else { s.n };
    let mut db = poisoned(be, DType::F32, len);
    be.gemm_bias_grad(ba.view(), bb.view(), c.view_mut(), db.view_mut(), of, s)
        .expect("gemm_bias_grad");
    (down(be, &c), down(be, &db))
}

/// The linear layer's other epilogues against the CPU, in the layouts the linear ops use:
/// the GELU and its saved input (`gemm_bias_gelu`), the input gradient through the GELU
/// (`gemm_dgelu`), and the weight gradient with its bias gradient (`gemm_bias_grad`, both
/// operands). The sizes include one the CUDA epilogues take (the aux matrix's leading
/// dimension a multiple of 8) and one they leave to the composition.
fn gemm_epilogues_match_cpu(dtype: DType) {
    let Some(g) = gpu("gemm_epilogues_match_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, kk) = tolerance(dtype);
    let (abs, kk) = (abs * 10.0, kk * 4.0);
    for (m, n, k) in [(67, 96, 72), (33, 20, 45)] {
        for tb in [false, true] {
            let s = Gemm {
                trans_b: tb,
                ..Gemm::new(m, n, k)
            };
            let ops = (
                &random_vec(m * k, 21)[..],
                &random_vec(k * n, 22)[..],
                &random_vec(n, 23)[..],
            );
            let what = format!("gemm_bias_gelu {dtype} {m}x{n}x{k} tb={tb}");
            let (want_pre, want) = bias_gelu_run(&c, ops, dtype, &s);
            let (pre, out) = bias_gelu_run(g, ops, dtype, &s);
            close(&format!("{what} pre"), &pre, &want_pre, dtype, abs, kk);
            // a fused GELU reads the FP32 product, the composition its rounding: two ulps
            close(&what, &out, &want, dtype, 2.0 * abs, 2.0 * kk);

            let pre = random_vec(m * n, 24);
            let dx0 = random_vec(m * n, 25);
            let ops = (ops.0, ops.1, &pre[..], &dx0[..]);
            let what = format!("gemm_dgelu {dtype} {m}x{n}x{k} tb={tb}");
            let want = dgelu_run(&c, ops, dtype, &s);
            let got = dgelu_run(g, ops, dtype, &s);
            close(&what, &got, &want, dtype, 2.0 * abs, 2.0 * kk);
        }
        // dW[in, out] += x^T dy (the bias sums of B), dW[out, in] += dy^T x (of A)
        for of in [BiasGradOf::B, BiasGradOf::A] {
            let s = Gemm {
                trans_a: true,
                beta: 1.0,
                ..Gemm::new(m, n, k)
            };
            let (a, b, c0) = (
                random_vec(k * m, 26),
                random_vec(k * n, 27),
                random_vec(m * n, 28),
            );
            let what = format!("gemm_bias_grad {dtype} {m}x{n}x{k} of {of:?}");
            let (want_c, want_db) = bias_grad_run(&c, (&a, &b, &c0), dtype, of, &s);
            let (got_c, got_db) = bias_grad_run(g, (&a, &b, &c0), dtype, of, &s);
            let (fabs, fk) = tolerance(DType::F32);
            close(&what, &got_c, &want_c, DType::F32, fabs * 10.0, fk * 4.0);
            close(
                &format!("{what} dbias"),
                &got_db,
                &want_db,
                DType::F32,
                fabs * 10.0,
                fk * 4.0,
            );
        }
    }
}
test_per_dtype!(gemm_epilogues_match_cpu: f32, f16, bf16);

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
