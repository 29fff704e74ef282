//! Row kernels (reductions, softmax, layer norm, cross-entropy), embeddings and attention
//! against the CPU oracle (shared by the CUDA and wgpu suites: `crate::common` supplies the
//! backend).

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_ids, random_normal, random_vec, tolerance};
use mp_kernels::{Attention, DType, Heads, ReduceOp, test_per_dtype};

use crate::common::{close, cpu, down, gpu, poisoned, up};

fn reductions_match_cpu(dtype: DType) {
    let Some(g) = gpu("reductions_match_cpu") else {
        return;
    };
    let c = cpu();
    let (rows, cols) = (19, 300);
    let x = random_vec(rows * cols, 31);
    for op in [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::SumSq,
    ] {
        for (r, cl, odt) in [
            (rows, cols, DType::F32),
            (1, rows * cols, DType::F32),
            (rows, cols, dtype),
        ] {
            fn run<B: Backend>(
                be: &B,
                x: &[f32],
                dt: DType,
                op: ReduceOp,
                cols: usize,
                odt: DType,
            ) -> Vec<f32> {
                let bx = up(be, x, dt);
                let mut o = poisoned(be, odt, x.len() / cols);
                be.reduce_rows(op, bx.view(), cols, o.view_mut())
                    .expect("reduce_rows");
                down(be, &o)
            }
            let want = run(&c, &x, dtype, op, cl, odt);
            let got = run(g, &x, dtype, op, cl, odt);
            let (abs, k) = tolerance(odt);
            close(
                &format!("reduce {op:?} rows={r} cols={cl} -> {odt}"),
                &got,
                &want,
                odt,
                abs * 10.0,
                k * 4.0,
            );
        }
    }
    // column sums accumulate into an existing (random) output
    for (rows, cols) in [(1000usize, 77usize), (3, 1030)] {
        let x = random_vec(rows * cols, 32);
        let o0 = random_vec(cols, 33);
        for odt in [DType::F32, dtype] {
            fn run<B: Backend>(be: &B, x: &[f32], o0: &[f32], dt: DType, odt: DType) -> Vec<f32> {
                let bx = up(be, x, dt);
                let mut o = up(be, o0, odt);
                be.sum_cols_acc(bx.view(), o.view_mut())
                    .expect("sum_cols_acc");
                down(be, &o)
            }
            let want = run(&c, &x, &o0, dtype, odt);
            let got = run(g, &x, &o0, dtype, odt);
            let (abs, k) = tolerance(odt);
            close(
                &format!("sum_cols_acc {rows}x{cols} -> {odt}"),
                &got,
                &want,
                odt,
                abs * 30.0,
                k * 4.0,
            );
        }
    }
}
test_per_dtype!(reductions_match_cpu: f32, f16, bf16);

fn softmax_and_layer_norm_match_cpu(dtype: DType) {
    let Some(g) = gpu("softmax_and_layer_norm_match_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let cols = 67;
    let x = random_normal(cols * cols * 2, 2.0, 41);
    for causal in [false, true] {
        for log in [false, true] {
            fn run<B: Backend>(
                be: &B,
                x: &[f32],
                dt: DType,
                cols: usize,
                causal: bool,
                log: bool,
            ) -> Vec<f32> {
                let bx = up(be, x, dt);
                let mut o = poisoned(be, dt, x.len());
                be.softmax(bx.view(), cols, causal, log, o.view_mut())
                    .expect("softmax");
                down(be, &o)
            }
            let want = run(&c, &x, dtype, cols, causal, log);
            let got = run(g, &x, dtype, cols, causal, log);
            close(
                &format!("softmax causal={causal} log={log}"),
                &got,
                &want,
                dtype,
                abs,
                k * 2.0,
            );
        }
    }
    // layer norm forward and backward (FP32 statistics)
    let (rows, c_) = (33, 768);
    let x = random_normal(rows * c_, 1.5, 42);
    let (w, b) = (random_normal(c_, 1.0, 43), random_vec(c_, 44));
    let dy = random_vec(rows * c_, 45);
    let (dx0, dw0, db0) = (
        random_vec(rows * c_, 46),
        random_vec(c_, 47),
        random_vec(c_, 48),
    );
    #[allow(clippy::type_complexity)]
    fn run<B: Backend>(
        be: &B,
        dt: DType,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        dy: &[f32],
        init: (&[f32], &[f32], &[f32]),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = w.len();
        let rows = x.len() / c;
        let (bx, bw, bb, bdy) = (up(be, x, dt), up(be, w, dt), up(be, b, dt), up(be, dy, dt));
        let mut out = poisoned(be, dt, x.len());
        let mut mean = poisoned(be, DType::F32, rows);
        let mut rstd = poisoned(be, DType::F32, rows);
        be.layer_norm(
            bx.view(),
            bw.view(),
            bb.view(),
            1e-5,
            out.view_mut(),
            mean.view_mut(),
            rstd.view_mut(),
        )
        .expect("layer_norm");
        let mut dx = up(be, init.0, dt);
        let mut dw = up(be, init.1, DType::F32);
        let mut db = up(be, init.2, DType::F32);
        be.layer_norm_backward(
            bdy.view(),
            bx.view(),
            bw.view(),
            mean.view(),
            rstd.view(),
            dx.view_mut(),
            dw.view_mut(),
            db.view_mut(),
        )
        .expect("layer_norm_backward");
        (
            down(be, &out),
            down(be, &mean),
            down(be, &rstd),
            down(be, &dx),
            down(be, &dw),
            down(be, &db),
        )
    }
    let init = (&dx0[..], &dw0[..], &db0[..]);
    let want = run(&c, dtype, &x, &w, &b, &dy, init);
    let got = run(g, dtype, &x, &w, &b, &dy, init);
    close("layer_norm out", &got.0, &want.0, dtype, abs, k * 2.0);
    close("layer_norm mean", &got.1, &want.1, DType::F32, 1e-5, 64.0);
    close("layer_norm rstd", &got.2, &want.2, DType::F32, 1e-5, 64.0);
    close("layer_norm dx", &got.3, &want.3, dtype, abs * 10.0, k * 2.0);
    close(
        "layer_norm dweight",
        &got.4,
        &want.4,
        DType::F32,
        1e-3,
        256.0,
    );
    close("layer_norm dbias", &got.5, &want.5, DType::F32, 1e-3, 256.0);
}
test_per_dtype!(softmax_and_layer_norm_match_cpu: f32, f16, bf16);

fn loss_and_embeddings_match_cpu(dtype: DType) {
    let Some(g) = gpu("loss_and_embeddings_match_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let (rows, vocab) = (37, 5003);
    // the last columns masked to -inf, as a padded vocabulary's (never a target)
    let masked = 5;
    let mut logits = random_normal(rows * vocab, 3.0, 51);
    for r in 0..rows {
        logits[r * vocab + vocab - masked..(r + 1) * vocab].fill(f32::NEG_INFINITY);
    }
    let t = random_ids(rows, (vocab - masked) as u32, 52);
    fn run<B: Backend>(
        be: &B,
        dt: DType,
        logits: &[f32],
        t: &[u32],
        vocab: usize,
    ) -> [Vec<f32>; 4] {
        let bl = up(be, logits, dt);
        let ti = be.upload_index(t).expect("index");
        let mut loss = poisoned(be, DType::F32, t.len());
        be.cross_entropy(bl.view(), &ti, vocab, loss.view_mut())
            .expect("ce");
        let mut dl = poisoned(be, dt, logits.len());
        be.cross_entropy_backward(bl.view(), &ti, vocab, 0.37, dl.view_mut())
            .expect("ce backward");
        let mut fl = poisoned(be, DType::F32, t.len());
        let mut fd = poisoned(be, dt, logits.len());
        let (fv, dv) = (fl.view_mut(), fd.view_mut());
        be.cross_entropy_fused(bl.view(), &ti, vocab, 0.37, fv, dv)
            .expect("ce fused");
        [&loss, &dl, &fl, &fd].map(|b| down(be, b))
    }
    let want = run(&c, dtype, &logits, &t, vocab);
    let got = run(g, dtype, &logits, &t, vocab);
    for (name, i) in [("cross_entropy", 0), ("cross_entropy_fused losses", 2)] {
        close(name, &got[i], &want[i], DType::F32, 1e-4, 64.0);
    }
    for (name, i) in [
        ("cross_entropy_backward", 1),
        ("cross_entropy_fused grad", 3),
    ] {
        close(name, &got[i], &want[i], dtype, abs, k * 2.0);
    }

    let (n, c_, v) = (300, 48, 97);
    let table = random_vec(v * c_, 53);
    let ids = random_ids(n, v as u32, 54); // many repeats: exercises the scatter-add
    let dout = random_vec(n * c_, 55);
    let dt0 = random_vec(v * c_, 56);
    for tdt in [DType::F32, dtype] {
        #[allow(clippy::too_many_arguments)]
        fn run<B: Backend>(
            be: &B,
            dt: DType,
            tdt: DType,
            table: &[f32],
            ids: &[u32],
            dout: &[f32],
            dt0: &[f32],
            c: usize,
        ) -> (Vec<f32>, Vec<f32>) {
            let bt = up(be, table, dt);
            let bi = be.upload_index(ids).expect("index");
            let mut o = poisoned(be, dt, ids.len() * c);
            be.embedding(bt.view(), &bi, c, o.view_mut())
                .expect("embedding");
            let bd = up(be, dout, dt);
            let mut dtab = up(be, dt0, tdt);
            be.embedding_backward(bd.view(), &bi, c, dtab.view_mut())
                .expect("embedding_backward");
            (down(be, &o), down(be, &dtab))
        }
        let want = run(&c, dtype, tdt, &table, &ids, &dout, &dt0, c_);
        let got = run(g, dtype, tdt, &table, &ids, &dout, &dt0, c_);
        close("embedding", &got.0, &want.0, dtype, 0.0, 0.0);
        let (ta, tk) = tolerance(tdt);
        close(
            &format!("embedding_backward -> {tdt}"),
            &got.1,
            &want.1,
            tdt,
            ta * 10.0,
            tk * 2.0,
        );
    }
}
test_per_dtype!(loss_and_embeddings_match_cpu: f32, f16, bf16);

/// Forward and backward of attention on `be`: (out, lse, dqkv).
pub(crate) fn attention_run<B: Backend>(
    be: &B,
    dt: DType,
    s: &Attention,
    (qkv, dout, dq0): (&[f32], &[f32], &[f32]),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let bq = up(be, qkv, dt);
    let mut out = poisoned(be, dt, s.b * s.t * s.c);
    let mut lse = poisoned(be, DType::F32, s.lse_len());
    be.attention(bq.view(), s, out.view_mut(), lse.view_mut())
        .expect("attention");
    let bd = up(be, dout, dt);
    let mut dq = up(be, dq0, dt);
    let (o, l) = (out.view(), lse.view());
    be.attention_backward(bd.view(), bq.view(), o, l, s, dq.view_mut())
        .expect("attention_backward");
    (down(be, &out), down(be, &lse), down(be, &dq))
}

/// The device's attention against the CPU backend's tiled kernel, multi-head and
/// grouped-query; head sizes 64 and 128 over several 64-row tiles with a partial last one
/// are the shapes of CUDA's tensor-core kernels (16-bit dtypes); the last shape's loops exceed
/// llvmpipe's limit, so there the backend must choose its other formulation.
fn attention_matches_cpu(dtype: DType) {
    let Some(g) = gpu("attention_matches_cpu") else {
        return;
    };
    let c = cpu();
    let (abs, k) = tolerance(dtype);
    let gqa = Attention {
        kv_heads: 2,
        ..Attention::mha(2, 70, 64, 4)
    };
    let wide_gqa = Attention {
        kv_heads: 2,
        ..Attention::mha(1, 130, 512, 4)
    };
    // long enough that lavapipe runs it as the GEMM composition (its loop limit)
    let long_gqa = Attention {
        kv_heads: 1,
        ..Attention::mha(1, 300, 128, 2)
    };
    for s in [
        Attention::mha(2, 37, 64, 4),
        gqa,
        Attention::mha(2, 150, 256, 4),
        wide_gqa,
        long_gqa,
    ] {
        let qkv = random_normal(s.b * s.t * s.qkv_row(), 1.0, 61);
        let dout = random_vec(s.b * s.t * s.c, 62);
        let dq0 = random_vec(qkv.len(), 63);
        let inputs = (&qkv[..], &dout[..], &dq0[..]);
        let want = attention_run(&c, dtype, &s, inputs);
        let got = attention_run(g, dtype, &s, inputs);
        let what = format!("attention {s:?}");
        close(
            &format!("{what} lse"),
            &got.1,
            &want.1,
            DType::F32,
            1e-5,
            64.0,
        );
        close(
            &format!("{what} out"),
            &got.0,
            &want.0,
            dtype,
            abs * 10.0,
            k * 4.0,
        );
        let dq = format!("{what} dqkv");
        close(&dq, &got.2, &want.2, dtype, abs * 30.0, k * 4.0);
    }
}
test_per_dtype!(attention_matches_cpu: f32, f16, bf16);

/// Head layout copies, bit for bit: every part of qkv rows to head-major `dtype` and F32 and
/// back, overwriting and accumulating.
fn heads_match_cpu(dtype: DType) {
    let Some(g) = gpu("heads_match_cpu") else {
        return;
    };
    let c = cpu();
    let s = Attention {
        kv_heads: 1,
        ..Attention::mha(3, 5, 12, 3)
    };
    let qkv = random_normal(s.b * s.t * s.qkv_row(), 1.0, 64);
    let base = random_vec(qkv.len(), 65);
    fn run<B: Backend>(be: &B, dt: DType, s: &Attention, qkv: &[f32], base: &[f32]) -> Vec<u8> {
        let src = up(be, qkv, dt);
        let mut dst = up(be, base, dt);
        let mut bytes = Vec::new();
        for (part, hdt) in [(0, DType::F32), (1, dt), (2, DType::F32)] {
            let l = Heads::qkv(s, part);
            let mut hm = poisoned(be, hdt, l.head_major_len());
            be.split_heads(src.view(), &l, hm.view_mut())
                .expect("split_heads");
            bytes.extend(be.download_bytes(hm.view()).expect("download"));
            be.merge_heads(hm.view(), &l, dst.view_mut(), part != 1)
                .expect("merge_heads");
        }
        bytes.extend(be.download_bytes(dst.view()).expect("download"));
        bytes
    }
    let want = run(&c, dtype, &s, &qkv, &base);
    let got = run(g, dtype, &s, &qkv, &base);
    assert!(got == want, "split/merge heads differ from the CPU's bits");
}
test_per_dtype!(heads_match_cpu: f32, f16, bf16);
