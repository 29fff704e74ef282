//! GEMM throughput of the wgpu backend next to the CPU backend, per input dtype, at 512^3 and
//! at the `gpt-cpu` shapes (rows = 16 x 64, width 128); and one attention forward + backward
//! at the `gpt-cpu` shape in bf16, through the backend's own attention kernels and through
//! `gemm_attention` (its GEMMs), side by side.
//!
//! Throughput is `Elements(2 m n k)`, so criterion's "elem/s" reads as FLOP/s. Each wgpu
//! iteration queues one GEMM and waits for it (`synchronize`), so the time includes the
//! submission overhead a training step pays per op. Without an adapter the wgpu half prints
//! a loud SKIPPED line and only the CPU half runs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mp_kernels::prelude::*;
use mp_kernels::testing::random_vec;
use mp_kernels::wgpu::WgpuBackend;
use mp_kernels::{Attention, CpuBackend, DType, Gemm, gemm_attention};
use std::hint::black_box;

/// (name, m, n, k, trans_a, trans_b).
const SHAPES: [(&str, usize, usize, usize, bool, bool); 3] = [
    ("square_512", 512, 512, 512, false, false),
    ("qkv_fwd_1024x384x128", 1024, 384, 128, false, false),
    ("dw_qkv_128x384x1024_tA", 128, 384, 1024, true, false),
];

fn run<B: Backend>(c: &mut Criterion, be: &B, label: &str) {
    for (name, m, n, k, ta, tb) in SHAPES {
        let mut g = c.benchmark_group(format!("gemm_{label}/{name}"));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.sample_size(10);
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let a = be.upload_f32(&random_vec(m * k, 1), dt).expect("upload");
            let b = be.upload_f32(&random_vec(k * n, 2), dt).expect("upload");
            let mut out = be.zeros(dt, m * n).expect("zeros");
            let spec = Gemm {
                trans_a: ta,
                trans_b: tb,
                ..Gemm::new(m, n, k)
            };
            g.bench_function(dt.name(), |bch| {
                bch.iter(|| {
                    be.gemm(a.view(), b.view(), out.view_mut(), black_box(&spec))
                        .expect("gemm");
                    be.synchronize().expect("synchronize");
                })
            });
        }
        g.finish();
    }
}

/// Attention forward + backward at the `gpt-cpu` shape in bf16: the backend's own kernels
/// ("kernel") and `gemm_attention` on its ops ("gemm").
fn attention<B: Backend>(c: &mut Criterion, be: &B, label: &str) {
    let s = Attention::mha(16, 64, 128, 4);
    let dt = DType::BF16;
    let n = s.b * s.t * s.c;
    let qkv = be.upload_f32(&random_vec(3 * n, 3), dt).expect("upload");
    let dout = be.upload_f32(&random_vec(n, 4), dt).expect("upload");
    let mut out = be.zeros(dt, n).expect("zeros");
    let mut lse = be.zeros(DType::F32, s.lse_len()).expect("zeros");
    let mut dqkv = be.zeros(dt, 3 * n).expect("zeros");
    let mut g = c.benchmark_group(format!("attention_{label}/gpt_cpu_bf16_fwd_bwd"));
    g.sample_size(10);
    for via_gemm in [false, true] {
        g.bench_function(if via_gemm { "gemm" } else { "kernel" }, |bch| {
            bch.iter(|| {
                let (q, o, l) = (qkv.view(), out.view_mut(), lse.view_mut());
                if via_gemm {
                    gemm_attention::forward(be, q, &s, o, l).expect("forward");
                    let (d, o, l, dq) = (dout.view(), out.view(), lse.view(), dqkv.view_mut());
                    gemm_attention::backward(be, d, q, o, l, &s, dq).expect("backward");
                } else {
                    be.attention(q, &s, o, l).expect("forward");
                    let (d, o, l, dq) = (dout.view(), out.view(), lse.view(), dqkv.view_mut());
                    be.attention_backward(d, q, o, l, &s, dq).expect("backward");
                }
                be.synchronize().expect("synchronize");
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    attention(c, &cpu, "cpu");
    run(c, &cpu, "cpu");
    match WgpuBackend::new() {
        Ok(be) => {
            eprintln!("wgpu adapter: {}", be.name());
            attention(c, &be, "wgpu");
            run(c, &be, "wgpu");
        }
        Err(e) => eprintln!("SKIPPED (no wgpu adapter): the wgpu GEMM benchmarks: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
