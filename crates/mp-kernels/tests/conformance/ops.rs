//! The ops of the op-family layer beyond GPT-2's against the CPU oracle (shared by the CUDA and
//! wgpu suites): every unary function and its backward, `sub`, the broadcast product, dropout
//! (bit for bit: the mask is a function of `(seed, index)`), RMSNorm through the default
//! composition of the backend's own primitives against the CPU's kernel, the transpose, the
//! rotary embedding (forward and inverse, against the CPU and an f64 reference), and the
//! contracts: the same bad call fails with the same message on the CPU and here.

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_vec, tolerance};
use mp_kernels::{BinaryOp, DType, Gemm, KernelError, Rope, UnaryOp, View, test_per_dtype};

use crate::common::{close, cpu, down, gpu, poisoned, up};

fn unary_matches_cpu(dtype: DType) {
    let Some(g) = gpu("unary_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let (n, off) = (4099, 3);
    for op in UnaryOp::ALL {
        let x: Vec<f32> = random_vec(n + off, 91)
            .iter()
            .map(|v| {
                if op == UnaryOp::Rsqrt {
                    v.abs() + 0.25
                } else {
                    4.0 * v
                }
            })
            .collect();
        let dy = random_vec(n + off, 92);
        let d0 = random_vec(n + off, 93);
        fn run<B: Backend>(
            be: &B,
            op: UnaryOp,
            (x, dy, d0): (&[f32], &[f32], &[f32]),
            dt: DType,
            off: usize,
        ) -> (Vec<f32>, Vec<f32>) {
            let n = x.len() - off;
            let (bx, bdy) = (up(be, x, dt), up(be, dy, dt));
            let mut y = poisoned(be, dt, n + off);
            be.unary(op, bx.slice(off, n), y.slice_mut(off, n))
                .unwrap_or_else(|e| panic!("{}: {e}", op.name()));
            let mut dx = up(be, d0, dt);
            be.unary_backward(
                op,
                bx.slice(off, n),
                bdy.slice(off, n),
                dx.slice_mut(off, n),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", op.backward_name()));
            (down(be, &y)[off..].to_vec(), down(be, &dx)[off..].to_vec())
        }
        let args = (&x[..], &dy[..], &d0[..]);
        let (wy, wdx) = run(&c, op, args, dtype, off);
        let (gy, gdx) = run(g, op, args, dtype, off);
        close(op.name(), &gy, &wy, dtype, abs, k);
        close(op.backward_name(), &gdx, &wdx, dtype, abs, k);
    }
    // sub
    let (a, b) = (random_vec(n, 94), random_vec(n, 95));
    fn sub<B: Backend>(be: &B, a: &[f32], b: &[f32], dt: DType) -> Vec<f32> {
        let mut o = poisoned(be, dt, a.len());
        be.binary(
            BinaryOp::Sub,
            up(be, a, dt).view(),
            up(be, b, dt).view(),
            o.view_mut(),
        )
        .expect("sub");
        down(be, &o)
    }
    close(
        "sub",
        &sub(g, &a, &b, dtype),
        &sub(&c, &a, &b, dtype),
        dtype,
        abs,
        k,
    );
}
test_per_dtype!(unary_matches_cpu: f32, f16, bf16);

#[test]
fn mul_broadcast_matches_cpu() {
    let Some(g) = gpu("mul_broadcast_matches_cpu") else {
        return;
    };
    let (rows, cols) = (41, 67);
    let (x, r, cs) = (
        random_vec(rows * cols, 1),
        random_vec(rows, 2),
        random_vec(cols, 3),
    );
    fn run<B: Backend>(
        be: &B,
        (x, r, c): (&[f32], &[f32], &[f32]),
        (use_r, use_c): (bool, bool),
        dt: DType,
    ) -> Vec<f32> {
        let (bx, br, bc) = (up(be, x, dt), up(be, r, DType::F32), up(be, c, dt));
        let mut o = poisoned(be, dt, x.len());
        be.mul_broadcast(
            bx.view(),
            use_r.then(|| br.view()),
            use_c.then(|| bc.view()),
            o.view_mut(),
        )
        .expect("mul_broadcast");
        down(be, &o)
    }
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let (abs, k) = tolerance(dt);
        for which in [(false, false), (true, false), (false, true), (true, true)] {
            let args = (&x[..], &r[..], &cs[..]);
            let want = run(&cpu(), args, which, dt);
            let got = run(g, args, which, dt);
            close(&format!("mul_broadcast {which:?}"), &got, &want, dt, abs, k);
        }
    }
}

#[test]
fn dropout_masks_are_bit_identical_to_cpu() {
    let Some(g) = gpu("dropout_masks_are_bit_identical_to_cpu") else {
        return;
    };
    let n = 50_003;
    let x = random_vec(n, 4);
    fn run<B: Backend>(be: &B, x: &[f32], p: f32, seed: u64) -> Vec<f32> {
        let mut o = poisoned(be, DType::F32, x.len());
        be.dropout(up(be, x, DType::F32).view(), p, seed, o.view_mut())
            .expect("dropout");
        down(be, &o)
    }
    for (p, seed) in [(0.1f32, 1u64), (0.5, 0xDEAD_BEEF_0000_0001)] {
        let (want, got) = (run(&cpu(), &x, p, seed), run(g, &x, p, seed));
        let same_mask = want
            .iter()
            .zip(&got)
            .all(|(w, g)| (*w == 0.0) == (*g == 0.0));
        assert!(
            same_mask,
            "dropout p={p}: the kept elements differ from the CPU's"
        );
        close(&format!("dropout p={p}"), &got, &want, DType::F32, 0.0, 1.0);
    }
}

fn rms_norm_default_composition_matches_the_cpu_kernel(dtype: DType) {
    let Some(g) = gpu("rms_norm_default_composition_matches_the_cpu_kernel") else {
        return;
    };
    let (rows, c, eps) = (19, 96, 1e-6f32);
    let x = random_vec(rows * c, 5);
    let w: Vec<f32> = random_vec(c, 6).iter().map(|v| 1.0 + 0.5 * v).collect();
    let dy = random_vec(rows * c, 7);
    type Out = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
    fn run<B: Backend>(be: &B, (x, w, dy): (&[f32], &[f32], &[f32]), dt: DType) -> Out {
        let (bx, bw, bdy) = (up(be, x, dt), up(be, w, dt), up(be, dy, dt));
        let mut y = poisoned(be, dt, x.len());
        let mut rs = poisoned(be, DType::F32, x.len() / w.len());
        be.rms_norm(bx.view(), bw.view(), 1e-6, y.view_mut(), rs.view_mut())
            .expect("rms_norm");
        let mut dx = up(be, &vec![0.5; x.len()], DType::F32);
        let mut dw = up(be, &vec![0.25; w.len()], DType::F32);
        be.rms_norm_backward(
            bdy.view(),
            bx.view(),
            bw.view(),
            rs.view(),
            dx.view_mut(),
            dw.view_mut(),
        )
        .expect("rms_norm_backward");
        (down(be, &y), down(be, &rs), down(be, &dx), down(be, &dw))
    }
    let _ = eps;
    let args = (&x[..], &w[..], &dy[..]);
    let (wy, wr, wdx, wdw) = run(&cpu(), args, dtype);
    let (gy, gr, gdx, gdw) = run(g, args, dtype);
    let (abs, k) = tolerance(dtype);
    close("rms_norm out", &gy, &wy, dtype, abs, k);
    close("rms_norm rstd", &gr, &wr, DType::F32, 1e-5, 64.0);
    // the gradients are FP32 sums over a row (dx) and over every row (dweight)
    close("rms_norm dx", &gdx, &wdx, DType::F32, 1e-4, 256.0);
    close("rms_norm dweight", &gdw, &wdw, DType::F32, 1e-3, 1024.0);
}
test_per_dtype!(rms_norm_default_composition_matches_the_cpu_kernel: f32, bf16);

#[test]
fn transpose_matches_cpu_exactly() {
    let Some(g) = gpu("transpose_matches_cpu_exactly") else {
        return;
    };
    let (b, m, n) = (3, 17, 29);
    let x = random_vec(b * m * n, 8);
    fn run<B: Backend>(be: &B, x: &[f32], (b, m, n): (usize, usize, usize)) -> Vec<f32> {
        let mut o = poisoned(be, DType::F32, x.len());
        be.transpose(up(be, x, DType::F32).view(), b, m, n, o.view_mut())
            .expect("transpose");
        down(be, &o)
    }
    let (want, got) = (run(&cpu(), &x, (b, m, n)), run(g, &x, (b, m, n)));
    close("transpose", &got, &want, DType::F32, 0.0, 0.0);
}

/// The message of a failed call with the device name taken out (the only part that differs).
fn message<B: Backend>(be: &B, r: mp_kernels::Result<()>) -> String {
    let e: KernelError = r.expect_err("a bad call must fail");
    e.to_string().replace(&be.name(), "<device>")
}

/// One call of each kind of contract violation, on `be`: the messages in order.
fn bad_calls<B: Backend>(be: &B) -> Vec<String> {
    let z = |n: usize| up(be, &vec![1.0; n], DType::F32);
    let (a, b, mut o) = (z(10), z(11), z(10));
    let mut out = vec![
        message(
            be,
            be.binary(BinaryOp::Add, a.view(), b.view(), o.view_mut()),
        ),
        message(be, be.unary(UnaryOp::Silu, a.view(), z(9).view_mut())),
        message(be, be.bias_add(a.view(), z(3).view(), o.view_mut())),
        message(
            be,
            be.reduce_rows(mp_kernels::ReduceOp::Sum, a.view(), 3, z(3).view_mut()),
        ),
        message(
            be,
            be.gemm(
                z(23).view(),
                z(30).view(),
                z(20).view_mut(),
                &Gemm::new(4, 5, 6),
            ),
        ),
        message(
            be,
            be.layer_norm(
                a.view(),
                z(5).view(),
                z(5).view(),
                1e-5,
                z(10).view_mut(),
                up(be, &[0.0; 2], DType::F16).view_mut(),
                z(2).view_mut(),
            ),
        ),
        message(
            be,
            be.rms_norm(
                a.view(),
                z(5).view(),
                1e-5,
                z(10).view_mut(),
                z(3).view_mut(),
            ),
        ),
        message(be, be.dropout(a.view(), 1.5, 0, z(10).view_mut())),
    ];
    let hp = mp_kernels::AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 0,
        grad_mult: 1.0,
        rounding: mp_kernels::Rounding::NearestEven,
    };
    let (mut p, mut m, mut v) = (z(4), z(4), z(4));
    out.push(message(
        be,
        be.adamw(
            p.view_mut(),
            z(4).view(),
            m.view_mut(),
            v.view_mut(),
            None,
            &hp,
        ),
    ));
    let ids = be.upload_index(&[0, 7]).expect("ids");
    out.push(message(
        be,
        be.embedding(z(12).view(), &ids, 4, z(8).view_mut()),
    ));
    let outside = View {
        buf: &a,
        offset: 8,
        len: 4,
    };
    out.push(message(be, be.scale(outside, 2.0, z(4).view_mut())));
    out
}

#[test]
fn bad_calls_fail_with_the_cpus_messages() {
    let Some(g) = gpu("bad_calls_fail_with_the_cpus_messages") else {
        return;
    };
    let (want, got) = (bad_calls(&cpu()), bad_calls(g));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "the same bad call must fail with the same message");
    }
    assert_eq!(got.len(), want.len());
}

fn softmax_backward_matches_cpu(dtype: DType) {
    let Some(g) = gpu("softmax_backward_matches_cpu") else {
        return;
    };
    let (rows, cols) = (24, 37);
    let x = random_vec(rows * cols, 31);
    let dy = random_vec(rows * cols, 32);
    let d0 = random_vec(rows * cols, 33);
    fn run<B: Backend>(
        be: &B,
        (x, dy, d0): (&[f32], &[f32], &[f32]),
        log: bool,
        dt: DType,
    ) -> Vec<f32> {
        let cols = 37;
        let mut y = poisoned(be, dt, x.len());
        be.softmax(up(be, x, dt).view(), cols, false, log, y.view_mut())
            .expect("softmax");
        let mut dx = up(be, d0, dt);
        be.softmax_backward(y.view(), up(be, dy, dt).view(), cols, log, dx.view_mut())
            .expect("softmax_backward");
        down(be, &dx)
    }
    let (abs, k) = tolerance(dtype);
    for log in [false, true] {
        let args = (&x[..], &dy[..], &d0[..]);
        let (want, got) = (run(&cpu(), args, log, dtype), run(g, args, log, dtype));
        close(
            &format!("softmax_backward log={log} {rows}x{cols}"),
            &got,
            &want,
            dtype,
            abs * 4.0,
            k * 4.0,
        );
    }
}
test_per_dtype!(softmax_backward_matches_cpu: f32, bf16);

/// SwiGLU of packed `dtype` rows into FP32 and into `dtype`, and its gradient added into a
/// non-zero `dgu`, against the CPU; the CPU's forward and backward against f64.
fn swiglu_matches_cpu(dtype: DType) {
    let Some(g) = gpu("swiglu_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let (rows, f) = (37, 45);
    let gu = random_vec(rows * 2 * f, 71)
        .iter()
        .map(|x| 4.0 * x)
        .collect::<Vec<_>>();
    let dy = random_vec(rows * f, 72);
    let dgu0 = random_vec(rows * 2 * f, 73);
    fn run<B: Backend>(
        be: &B,
        data: [&[f32]; 3],
        dt: DType,
        odt: DType,
        f: usize,
    ) -> [Vec<f32>; 2] {
        let [gu, dy, dgu0] = data;
        let bgu = up(be, gu, dt);
        let mut out = poisoned(be, odt, gu.len() / 2);
        be.swiglu(bgu.view(), f, out.view_mut()).expect("swiglu");
        let bdy = up(be, dy, dt);
        let mut dgu = up(be, dgu0, odt);
        be.swiglu_backward(bgu.view(), bdy.view(), f, dgu.view_mut())
            .expect("swiglu_backward");
        [down(be, &out), down(be, &dgu)]
    }
    for odt in [DType::F32, dtype] {
        let want = run(&c, [&gu, &dy, &dgu0], dtype, odt, f);
        let got = run(g, [&gu, &dy, &dgu0], dtype, odt, f);
        close(
            &format!("swiglu {dtype} -> {odt}"),
            &got[0],
            &want[0],
            odt,
            abs,
            k,
        );
        close(
            &format!("swiglu_backward {dtype} -> {odt}"),
            &got[1],
            &want[1],
            odt,
            abs,
            k,
        );
        if odt == DType::F32 {
            let (q, qy) = (down(&c, &up(&c, &gu, dtype)), down(&c, &up(&c, &dy, dtype)));
            let (mut fwd, mut bwd) = (vec![0f32; rows * f], dgu0.clone());
            for r in 0..rows {
                for j in 0..f {
                    let (x, u) = (f64::from(q[r * 2 * f + j]), f64::from(q[r * 2 * f + f + j]));
                    let s = 1.0 / (1.0 + (-x).exp());
                    let y = f64::from(qy[r * f + j]);
                    fwd[r * f + j] = (x * s * u) as f32;
                    bwd[r * 2 * f + j] += (y * u * s * (1.0 + x * (1.0 - s))) as f32;
                    bwd[r * 2 * f + f + j] += (y * x * s) as f32;
                }
            }
            close(
                "swiglu (cpu) against f64",
                &want[0],
                &fwd,
                DType::F32,
                1e-6,
                8.0,
            );
            close(
                "swiglu_backward (cpu) against f64",
                &want[1],
                &bwd,
                DType::F32,
                1e-6,
                8.0,
            );
        }
    }
}
test_per_dtype!(swiglu_matches_cpu: f32, bf16, f16);

/// The rotary embedding on `dtype` rows, into FP32 and into `dtype`, forward and inverse, of
/// every head and of the leading half (the rest copied), against the CPU; the CPU's forward
/// against an f64 evaluation of the formula.
fn rope_matches_cpu(dtype: DType) {
    let Some(g) = gpu("rope_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let (b, t, heads, hd) = (3, 37, 4, 16);
    let (rows, h) = (b * t, hd / 2);
    let x = random_vec(rows * heads * hd, 61);
    let angle = |p: usize, j: usize| p as f64 * 10000f64.powf(-2.0 * j as f64 / hd as f64);
    let cos: Vec<f32> = (0..t * h)
        .map(|i| angle(i / h, i % h).cos() as f32)
        .collect();
    let sin: Vec<f32> = (0..t * h)
        .map(|i| angle(i / h, i % h).sin() as f32)
        .collect();
    let cases = [DType::F32, dtype]
        .into_iter()
        .flat_map(|odt| [(odt, false), (odt, true)])
        .flat_map(|c| [(c, heads), (c, heads / 2)]);
    for ((odt, inverse), rotated) in cases {
        {
            let s = Rope {
                rows,
                heads,
                rotated,
                head_dim: hd,
                t,
                inverse,
            };
            fn run<B: Backend>(
                be: &B,
                x: &[f32],
                dt: DType,
                tables: [&[f32]; 2],
                odt: DType,
                s: &Rope,
            ) -> Vec<f32> {
                let bx = up(be, x, dt);
                let (bc, bs) = (up(be, tables[0], DType::F32), up(be, tables[1], DType::F32));
                let mut out = poisoned(be, odt, x.len());
                be.rope(bx.view(), bc.view(), bs.view(), s, out.view_mut())
                    .expect("rope");
                down(be, &out)
            }
            let want = run(&c, &x, dtype, [&cos, &sin], odt, &s);
            let got = run(g, &x, dtype, [&cos, &sin], odt, &s);
            close(
                &format!("rope {dtype} -> {odt} inverse {inverse}, {rotated} of {heads} heads"),
                &got,
                &want,
                odt,
                abs,
                k,
            );
            if odt == DType::F32 && !inverse {
                let xs = down(&c, &up(&c, &x, dtype));
                let reference: Vec<f32> = (0..xs.len())
                    .map(|i| {
                        let (row, j) = (i / hd / heads, i % hd);
                        if (i / hd) % heads >= rotated {
                            return xs[i];
                        }
                        let (jj, p) = (j % h, row % t);
                        let (cs, sn) = (f64::from(cos[p * h + jj]), f64::from(sin[p * h + jj]));
                        let base = i - j;
                        let (x1, x2) = (f64::from(xs[base + jj]), f64::from(xs[base + jj + h]));
                        (if j < h {
                            x1 * cs - x2 * sn
                        } else {
                            x2 * cs + x1 * sn
                        }) as f32
                    })
                    .collect();
                close(
                    "rope (cpu) against f64",
                    &want,
                    &reference,
                    DType::F32,
                    1e-6,
                    4.0,
                );
            }
        }
    }
}
test_per_dtype!(rope_matches_cpu: f32, bf16, f16);

#[test]
fn memory_ops_uninit_index_values_and_synchronize() {
    let Some(g) = gpu("memory_ops_uninit_index_values_and_synchronize") else {
        return;
    };
    // an uninit buffer has the asked length and dtype, and holds what is written to it
    let mut u = g.uninit(DType::BF16, 1000).expect("uninit");
    assert_eq!((u.len(), u.dtype()), (1000, DType::BF16));
    g.fill(u.view_mut(), 1.5).expect("fill");
    g.synchronize().expect("synchronize");
    assert!(down(g, &u).iter().all(|&v| v == 1.5));
    // the host copy of an index buffer is what was uploaded
    let ids = [3u32, 0, 7, 7, 1];
    let idx = g.upload_index(&ids).expect("upload_index");
    assert_eq!(g.index_values(&idx), &ids);
    assert_eq!(cpu().index_values(&cpu().upload_index(&ids).unwrap()), &ids);
}

#[test]
fn gemm_without_a_product_scales_or_zeroes_each_batch_only() {
    let Some(g) = gpu("gemm_without_a_product_scales_or_zeroes_each_batch_only") else {
        return;
    };
    // k = 0 (or alpha = 0): C = beta C per batch; the gaps between strided outputs keep their
    // values; beta = 0 writes zeros over a NaN-poisoned C without reading it
    fn run<B: Backend>(be: &B, k: usize, alpha: f32, beta: f32) -> Vec<f32> {
        let s = Gemm {
            batch: 3,
            alpha,
            beta,
            stride_a: 4 * k,
            stride_b: k * 5,
            stride_c: 4 * 5 + 3,
            ..Gemm::new(4, 5, k)
        };
        let c_len = s.stride_c * 2 + 20;
        let mut c0 = random_vec(c_len, 41);
        if beta == 0.0 {
            for b in 0..3 {
                c0[b * s.stride_c..b * s.stride_c + 20].fill(f32::NAN);
            }
        }
        let a = up(be, &random_vec(s.stride_a * 3 + 1, 42), DType::F32);
        let b = up(be, &random_vec(s.stride_b * 3 + 1, 43), DType::F32);
        let mut c = up(be, &c0, DType::F32);
        be.gemm(a.view(), b.view(), c.view_mut(), &s).expect("gemm");
        down(be, &c)
    }
    for (k, alpha, beta) in [(0, 1.0, 0.5), (0, 1.0, 0.0), (6, 0.0, -2.0), (6, 0.0, 0.0)] {
        let (want, got) = (run(&cpu(), k, alpha, beta), run(g, k, alpha, beta));
        let what = format!("gemm k={k} alpha={alpha} beta={beta}");
        close(&what, &got, &want, DType::F32, 0.0, 0.0);
    }
}
