//! CPU throughput of the non-GEMM ops of a training step at the `gpt-cpu` shapes (batch 16,
//! context 64, width 128, 4 heads, vocab 256), in F32 and BF16 activations.
//!
//! Throughput is reported in elements of the op's main tensor per second.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use mp_kernels::prelude::*;
use mp_kernels::testing::{random_ids, random_vec};
use mp_kernels::{Attention, CpuBackend, CpuBuffer, DType, Rounding, UnaryOp};

const B: usize = 16;
const T: usize = 64;
const C: usize = 128;
const HEADS: usize = 4;
const VOCAB: usize = 256;
const ROWS: usize = B * T;

fn buf(cpu: &CpuBackend, n: usize, seed: u64, dt: DType) -> CpuBuffer {
    cpu.upload_f32(&random_vec(n, seed), dt).expect("upload")
}

fn group<'a>(c: &'a mut Criterion, name: &str, elems: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elems as u64));
    g
}

/// Attention at long context (the default `mp-train` GPT's shape, batch 2): the tiled
/// kernel's forward and backward, BF16 storage.
fn long_attention(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let dt = DType::BF16;
    for t in [1024, 4096] {
        let s = Attention::mha(2, t, 64, 4);
        let qkv = buf(&cpu, s.b * t * s.qkv_row(), 21, dt);
        let dout = buf(&cpu, s.b * t * s.c, 22, dt);
        let mut out = CpuBuffer::zeros(dt, s.b * t * s.c);
        let mut lse = CpuBuffer::zeros(DType::F32, s.lse_len());
        let mut dqkv = CpuBuffer::zeros(dt, qkv.len());
        let mut g = group(c, &format!("attention_b2_t{t}_c64_h4"), s.b * t * s.c);
        g.sample_size(10);
        g.bench_function("fwd/bf16", |b| {
            b.iter(|| {
                cpu.attention(qkv.view(), &s, out.view_mut(), lse.view_mut())
                    .expect("att")
            })
        });
        g.bench_function("bwd/bf16", |b| {
            b.iter(|| {
                let (d, q, o, l) = (dout.view(), qkv.view(), out.view(), lse.view());
                cpu.attention_backward(d, q, o, l, &s, dqkv.view_mut())
                    .expect("att bwd")
            })
        });
        g.finish();
    }
}

fn bench(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    for dt in [DType::F32, DType::BF16] {
        let name = dt.name();
        let f32b = |n, s| buf(&cpu, n, s, DType::F32);

        let x = buf(&cpu, ROWS * 4 * C, 1, dt);
        let dy = buf(&cpu, ROWS * 4 * C, 2, dt);
        let mut y = CpuBuffer::zeros(dt, ROWS * 4 * C);
        let mut g = group(c, "gelu_1024x512", ROWS * 4 * C);
        g.bench_function(format!("fwd/{name}"), |b| {
            b.iter(|| {
                cpu.unary(UnaryOp::GeluTanh, x.view(), y.view_mut())
                    .expect("gelu")
            })
        });
        g.bench_function(format!("bwd/{name}"), |b| {
            b.iter(|| {
                cpu.unary_backward(UnaryOp::GeluTanh, x.view(), dy.view(), y.view_mut())
                    .expect("gelu")
            })
        });
        g.finish();

        let x = buf(&cpu, ROWS * C, 3, dt);
        let (w, bias) = (f32b(C, 4), f32b(C, 5));
        let mut out = CpuBuffer::zeros(dt, ROWS * C);
        let (mut mean, mut rstd) = (
            CpuBuffer::zeros(DType::F32, ROWS),
            CpuBuffer::zeros(DType::F32, ROWS),
        );
        let (mut dw, mut db) = (f32b(C, 6), f32b(C, 7));
        let mut dx = CpuBuffer::zeros(dt, ROWS * C);
        let dyl = buf(&cpu, ROWS * C, 8, dt);
        let mut g = group(c, "layer_norm_1024x128", ROWS * C);
        g.bench_function(format!("fwd/{name}"), |b| {
            b.iter(|| {
                cpu.layer_norm(
                    x.view(),
                    w.view(),
                    bias.view(),
                    1e-5,
                    out.view_mut(),
                    mean.view_mut(),
                    rstd.view_mut(),
                )
                .expect("ln")
            })
        });
        g.bench_function(format!("bwd/{name}"), |b| {
            b.iter(|| {
                cpu.layer_norm_backward(
                    dyl.view(),
                    x.view(),
                    w.view(),
                    mean.view(),
                    rstd.view(),
                    dx.view_mut(),
                    dw.view_mut(),
                    db.view_mut(),
                )
                .expect("ln bwd")
            })
        });
        g.finish();

        let shape = Attention::mha(B, T, C, HEADS);
        let qkv = buf(&cpu, ROWS * 3 * C, 9, dt);
        let mut att = CpuBuffer::zeros(dt, ROWS * C);
        let mut lse = CpuBuffer::zeros(DType::F32, shape.lse_len());
        let datt = buf(&cpu, ROWS * C, 10, dt);
        let mut dqkv = CpuBuffer::zeros(dt, ROWS * 3 * C);
        let mut g = group(c, "attention_b16_t64_c128_h4", ROWS * C);
        g.bench_function(format!("fwd/{name}"), |b| {
            b.iter(|| {
                cpu.attention(qkv.view(), &shape, att.view_mut(), lse.view_mut())
                    .expect("att")
            })
        });
        g.bench_function(format!("bwd/{name}"), |b| {
            b.iter(|| {
                cpu.attention_backward(
                    datt.view(),
                    qkv.view(),
                    att.view(),
                    lse.view(),
                    &shape,
                    dqkv.view_mut(),
                )
                .expect("att bwd")
            })
        });
        g.finish();

        let logits = buf(&cpu, ROWS * VOCAB, 11, dt);
        let targets = random_ids(ROWS, VOCAB as u32, 12);
        let mut losses = CpuBuffer::zeros(DType::F32, ROWS);
        let mut dlogits = CpuBuffer::zeros(dt, ROWS * VOCAB);
        let mut g = group(c, "cross_entropy_1024x256", ROWS * VOCAB);
        g.bench_function(format!("fwd/{name}"), |b| {
            b.iter(|| {
                cpu.cross_entropy(logits.view(), &targets, VOCAB, losses.view_mut())
                    .expect("ce")
            })
        });
        g.bench_function(format!("bwd/{name}"), |b| {
            b.iter(|| {
                cpu.cross_entropy_backward(
                    logits.view(),
                    &targets,
                    VOCAB,
                    1.0 / ROWS as f32,
                    dlogits.view_mut(),
                )
                .expect("ce bwd")
            })
        });
        g.finish();

        let h = buf(&cpu, ROWS * 4 * C, 13, dt);
        let mut acc = f32b(4 * C, 14);
        let mut g = group(c, "sum_cols_acc_1024x512", ROWS * 4 * C);
        g.bench_function(name, |b| {
            b.iter(|| cpu.sum_cols_acc(h.view(), acc.view_mut()).expect("sum"))
        });
        g.finish();

        let dout = buf(&cpu, ROWS * C, 15, dt);
        let ids = random_ids(ROWS, VOCAB as u32, 16);
        let mut dtable = f32b(VOCAB * C, 17);
        let mut g = group(c, "embedding_backward_1024x128", ROWS * C);
        g.bench_function(name, |b| {
            b.iter(|| {
                cpu.embedding_backward(dout.view(), &ids, C, dtable.view_mut())
                    .expect("emb")
            })
        });
        g.finish();
    }

    let w = buf(&cpu, 1 << 20, 18, DType::F32);
    let mut w16 = CpuBuffer::zeros(DType::BF16, 1 << 20);
    let mut g = group(c, "cast_f32_to_bf16_1M", 1 << 20);
    g.bench_function("rne", |b| {
        b.iter(|| {
            cpu.cast(w.view(), w16.view_mut(), Rounding::NearestEven)
                .expect("cast")
        })
    });
    g.bench_function("stochastic", |b| {
        b.iter(|| {
            cpu.cast(w.view(), w16.view_mut(), Rounding::Stochastic { seed: 1 })
                .expect("cast")
        })
    });
    g.finish();
}

criterion_group!(benches, bench, long_attention);
criterion_main!(benches);
