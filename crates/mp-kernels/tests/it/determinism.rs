//! Results are bit-identical whatever the number of threads (fixed blocking, ordered
//! combination of partial results).

use crate::common::{cpu, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{random_ids, random_vec};
use mp_kernels::{Attention, CpuBuffer, DType, Gemm, ReduceOp};

/// Every output buffer of a small "step" of ops, as raw bytes.
fn run_ops() -> Vec<Vec<u8>> {
    let c = cpu();
    let dt = DType::BF16;
    let mut outs = Vec::new();
    let x = up(&random_vec(300_000, 1), dt);
    let mut r = CpuBuffer::zeros(DType::F32, 2);
    c.reduce_rows(ReduceOp::Sum, x.view(), 150_000, r.view_mut())
        .unwrap();
    outs.push(r.as_bytes().to_vec());
    let mut s = CpuBuffer::zeros(DType::F32, 300);
    c.sum_cols_acc(x.view(), s.view_mut()).unwrap();
    outs.push(s.as_bytes().to_vec());

    let (rows, ch) = (1000, 300);
    let w = up(&random_vec(ch, 2), DType::F32);
    let (mut mean, mut rstd) = (
        CpuBuffer::zeros(DType::F32, rows),
        CpuBuffer::zeros(DType::F32, rows),
    );
    let mut y = CpuBuffer::zeros(dt, rows * ch);
    c.layer_norm(
        x.view(),
        w.view(),
        w.view(),
        1e-5,
        y.view_mut(),
        mean.view_mut(),
        rstd.view_mut(),
    )
    .unwrap();
    let (mut dx, mut dw, mut db) = (
        CpuBuffer::zeros(dt, rows * ch),
        CpuBuffer::zeros(DType::F32, ch),
        CpuBuffer::zeros(DType::F32, ch),
    );
    c.layer_norm_backward(
        y.view(),
        x.view(),
        w.view(),
        mean.view(),
        rstd.view(),
        dx.view_mut(),
        dw.view_mut(),
        db.view_mut(),
    )
    .unwrap();
    outs.extend([y, dx, dw, db].iter().map(|b| b.as_bytes().to_vec()));

    let ids = random_ids(3000, 50, 3);
    let mut dtab = CpuBuffer::zeros(DType::F32, 50 * 100);
    c.embedding_backward(x.slice(0, 300_000), &ids, 100, dtab.view_mut())
        .unwrap();
    outs.push(dtab.as_bytes().to_vec());

    let mut cc = CpuBuffer::zeros(DType::F32, 300 * 200);
    c.gemm(
        x.slice(0, 300 * 500),
        x.slice(1000, 500 * 200),
        cc.view_mut(),
        &Gemm::new(300, 200, 500),
    )
    .unwrap();
    outs.push(cc.as_bytes().to_vec());

    let s = Attention::mha(2, 150, 64, 4);
    let n3 = 2 * 150 * 192;
    let mut o = CpuBuffer::zeros(dt, 2 * 150 * 64);
    let mut l = CpuBuffer::zeros(DType::F32, s.lse_len());
    c.attention(x.slice(0, n3), &s, o.view_mut(), l.view_mut())
        .unwrap();
    let mut dq = CpuBuffer::zeros(DType::F32, n3);
    c.attention_backward(
        o.view(),
        x.slice(0, n3),
        o.view(),
        l.view(),
        &s,
        dq.view_mut(),
    )
    .unwrap();
    outs.extend([o, l, dq].iter().map(|b| b.as_bytes().to_vec()));
    outs
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let one = pool(1).install(run_ops);
    for n in [2, 3, 5] {
        let many = pool(n).install(run_ops);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(a == b, "output {i} differs between 1 and {n} threads");
        }
    }
}
