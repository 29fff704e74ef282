//! Bad input returns typed errors naming the op; nothing panics.

use crate::common::{cpu, up};
use mp_kernels::prelude::*;
use mp_kernels::{
    AdamW, Attention, BinaryOp, CpuBuffer, DType, Gemm, KernelError, ReduceOp, Rounding, UnaryOp,
    View,
};

const F32: DType = DType::F32;

fn z(n: usize) -> CpuBuffer {
    CpuBuffer::zeros(F32, n)
}

#[track_caller]
fn shape(r: mp_kernels::Result<()>, op: &str, needle: &str) {
    match r {
        Err(KernelError::Shape { op: o, msg, .. }) => {
            assert_eq!(o, op);
            assert!(
                msg.contains(needle),
                "{op}: message {msg:?} lacks {needle:?}"
            );
        }
        other => panic!("{op}: expected a shape error, got {other:?}"),
    }
}

#[test]
fn length_mismatches() {
    let c = cpu();
    let (a, b) = (z(10), z(11));
    shape(
        c.binary(BinaryOp::Add, a.view(), b.view(), z(10).view_mut()),
        "binary",
        "b has 11",
    );
    shape(
        c.scale(a.view(), 1.0, z(9).view_mut()),
        "scale",
        "out has 9",
    );
    shape(c.axpy(1.0, a.view(), z(9).view_mut()), "axpy", "dst has 9");
    shape(
        c.bias_add(a.view(), z(3).view(), z(10).view_mut()),
        "bias_add",
        "whole number",
    );
    shape(
        c.unary(UnaryOp::GeluTanh, a.view(), z(9).view_mut()),
        "gelu",
        "out has 9",
    );
    shape(
        c.unary_backward(UnaryOp::GeluTanh, a.view(), b.view(), z(10).view_mut()),
        "gelu_backward",
        "dy has 11",
    );
    shape(
        c.cast(a.view(), z(9).view_mut(), Rounding::NearestEven),
        "cast",
        "dst has 9",
    );
    shape(
        c.reduce_rows(ReduceOp::Sum, a.view(), 0, z(1).view_mut()),
        "reduce_rows",
        "rows of 0",
    );
    shape(
        c.reduce_rows(ReduceOp::Sum, a.view(), 5, z(3).view_mut()),
        "reduce_rows",
        "out has 3",
    );
    shape(
        c.sum_cols_acc(a.view(), z(3).view_mut()),
        "sum_cols_acc",
        "whole number",
    );
    shape(
        c.softmax(a.view(), 3, false, false, z(10).view_mut()),
        "softmax",
        "whole number",
    );
    shape(
        c.softmax_backward(a.view(), b.view(), 5, false, z(10).view_mut()),
        "softmax_backward",
        "dy has 11",
    );
    let (mut m, mut r) = (z(2), z(2));
    shape(
        c.layer_norm(
            a.view(),
            z(5).view(),
            z(4).view(),
            1e-5,
            z(10).view_mut(),
            m.view_mut(),
            r.view_mut(),
        ),
        "layer_norm",
        "bias has 4",
    );
    shape(
        c.layer_norm_backward(
            a.view(),
            a.view(),
            z(5).view(),
            m.view(),
            r.view(),
            z(10).view_mut(),
            z(4).view_mut(),
            z(5).view_mut(),
        ),
        "layer_norm_backward",
        "dweight has 4",
    );
    shape(
        c.embedding(a.view(), &vec![0, 1], 5, z(9).view_mut()),
        "embedding",
        "positions",
    );
}

#[test]
fn out_of_range_indices_name_the_value() {
    let c = cpu();
    let logits = z(12);
    shape(
        c.cross_entropy(logits.view(), &vec![0, 4, 1], 4, z(3).view_mut()),
        "cross_entropy",
        "targets[1] = 4",
    );
    shape(
        c.cross_entropy_backward(logits.view(), &vec![7, 0, 1], 4, 1.0, z(12).view_mut()),
        "cross_entropy_backward",
        "targets[0] = 7",
    );
    shape(
        c.cross_entropy(logits.view(), &vec![0, 1], 4, z(3).view_mut()),
        "cross_entropy",
        "targets has 2",
    );
    shape(
        c.embedding(z(6).view(), &vec![0, 3], 2, z(4).view_mut()),
        "embedding",
        "ids[1] = 3",
    );
    shape(
        c.embedding_backward(z(4).view(), &vec![9, 0], 2, z(6).view_mut()),
        "embedding_backward",
        "ids[0] = 9",
    );
}

#[test]
fn gemm_errors() {
    let c = cpu();
    let spec = Gemm::new(4, 5, 6);
    shape(
        c.gemm(z(23).view(), z(30).view(), z(20).view_mut(), &spec),
        "gemm",
        "A has 23",
    );
    shape(
        c.gemm(z(24).view(), z(30).view(), z(19).view_mut(), &spec),
        "gemm",
        "C has 19",
    );
    let batched = Gemm {
        batch: 2,
        stride_c: 10,
        ..spec
    };
    shape(
        c.gemm(z(48).view(), z(60).view(), z(40).view_mut(), &batched),
        "gemm",
        "overlap",
    );
    let bf = CpuBuffer::zeros(DType::BF16, 30);
    assert!(matches!(
        c.gemm(z(24).view(), bf.view(), z(20).view_mut(), &spec),
        Err(KernelError::UnsupportedDType { op: "gemm", .. })
    ));
}

#[test]
fn attention_errors() {
    let c = cpu();
    let s = Attention::mha(1, 2, 6, 4);
    shape(
        c.attention(z(36).view(), &s, z(12).view_mut(), z(8).view_mut()),
        "attention",
        "divisible",
    );
    let s = Attention {
        kv_heads: 3,
        ..Attention::mha(1, 2, 8, 4)
    };
    shape(
        c.attention(z(24).view(), &s, z(16).view_mut(), z(8).view_mut()),
        "attention",
        "kv_heads=3",
    );
    let s = Attention::mha(1, 2, 6, 2);
    shape(
        c.attention(z(36).view(), &s, z(12).view_mut(), z(7).view_mut()),
        "attention",
        "lse has 7",
    );
    let mut bf = CpuBuffer::zeros(DType::BF16, 4);
    assert!(matches!(
        c.attention(z(36).view(), &s, z(12).view_mut(), bf.view_mut()),
        Err(KernelError::UnsupportedDType {
            op: "attention",
            ..
        })
    ));
    shape(
        c.attention_backward(
            z(12).view(),
            z(35).view(),
            z(12).view(),
            z(4).view(),
            &s,
            z(36).view_mut(),
        ),
        "attention_backward",
        "qkv has 35",
    );
}

#[test]
fn views_outside_their_buffer_and_wrong_dtypes() {
    let c = cpu();
    let buf = z(10);
    let bad = View {
        buf: &buf,
        offset: 8,
        len: 4,
    };
    shape(
        c.scale(bad, 1.0, z(4).view_mut()),
        "scale",
        "outside its buffer",
    );
    let huge = View {
        buf: &buf,
        offset: usize::MAX,
        len: 4,
    };
    shape(
        c.download_bytes(huge).map(|_| ()),
        "download_bytes",
        "outside its buffer",
    );
    // FP32 statistics and moments are required.
    let (mut m16, mut r) = (CpuBuffer::zeros(DType::F16, 2), z(2));
    assert!(matches!(
        c.layer_norm(
            z(10).view(),
            z(5).view(),
            z(5).view(),
            1e-5,
            z(10).view_mut(),
            m16.view_mut(),
            r.view_mut()
        ),
        Err(KernelError::UnsupportedDType {
            op: "layer_norm",
            ..
        })
    ));
    assert!(c.upload_bytes(&[0u8; 3], DType::F16).is_err());
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_mult: 1.0,
        rounding: Rounding::NearestEven,
    };
    let mut p = up(&[1.0; 4], F32);
    let (mut m, mut v) = (z(4), z(3));
    assert!(
        c.adamw(
            p.view_mut(),
            z(4).view(),
            m.view_mut(),
            v.view_mut(),
            None,
            &hp
        )
        .is_err()
    );
}
