//! CPU GEMM throughput per input dtype at the shapes of the `gpt-cpu` config and at 512^3.
//!
//! Throughput is reported as `Elements(2 m n k)`, so criterion's "elem/s" reads as FLOP/s.
//! Each dtype writes C in its own dtype; `bf16_f32out` is BF16 A and B into an F32 C (a linear
//! layer with bias). On a CPU with AVX-512 BF16 the BF16 rows use the `vdpbf16ps` kernel; run
//! again with `MP_CPU_BF16_GEMM=widen` for the widen-then-f32 route on the same machine.
//!
//! The `linear_bias/*` groups time a linear layer's forward, `x W + b` into the input's
//! dtype, side by side: `fused` (`GemmOps::gemm_bias`, the bias in the GEMM's write-back) and
//! `composed` (`compose_gemm_bias`: the product into an FP32 buffer, then `bias_add`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mp_kernels::prelude::*;
use mp_kernels::testing::random_vec;
use mp_kernels::{CpuBackend, CpuBuffer, DType, Gemm, compose_gemm_bias};
use std::hint::black_box;

/// (name, m, n, k, trans_a, trans_b): rows = batch 16 x context 64 of `gpt-cpu` (width 128).
const SHAPES: [(&str, usize, usize, usize, bool, bool); 5] = [
    ("qkv_fwd_1024x384x128", 1024, 384, 128, false, false),
    ("mlp_down_1024x128x512", 1024, 128, 512, false, false),
    ("dw_qkv_128x384x1024_tA", 128, 384, 1024, true, false),
    ("dx_qkv_1024x128x384_tB", 1024, 128, 384, false, true),
    ("square_512", 512, 512, 512, false, false),
];

fn bench(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    for (name, m, n, k, ta, tb) in SHAPES {
        let mut g = c.benchmark_group(format!("gemm/{name}"));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let cases = [
            ("f32", DType::F32, DType::F32),
            ("bf16", DType::BF16, DType::BF16),
            ("f16", DType::F16, DType::F16),
            ("bf16_f32out", DType::BF16, DType::F32),
        ];
        for (label, dt, dc) in cases {
            let a = cpu.upload_f32(&random_vec(m * k, 1), dt).expect("upload");
            let b = cpu.upload_f32(&random_vec(k * n, 2), dt).expect("upload");
            let mut out = CpuBuffer::zeros(dc, m * n);
            let spec = Gemm {
                trans_a: ta,
                trans_b: tb,
                ..Gemm::new(m, n, k)
            };
            g.bench_function(label, |bch| {
                bch.iter(|| {
                    cpu.gemm(a.view(), b.view(), out.view_mut(), black_box(&spec))
                        .expect("gemm")
                })
            });
        }
        g.finish();
    }
    linear_bias(c, &cpu);
}

/// `x W + b` at the forward shapes of `gpt-cpu`, fused against composed, per dtype.
fn linear_bias(c: &mut Criterion, cpu: &CpuBackend) {
    const LINEARS: [(&str, usize, usize, usize); 3] = [
        ("qkv_1024x384x128", 1024, 384, 128),
        ("mlp_fc_1024x512x128", 1024, 512, 128),
        ("mlp_proj_1024x128x512", 1024, 128, 512),
    ];
    for (name, m, n, k) in LINEARS {
        let mut g = c.benchmark_group(format!("linear_bias/{name}"));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for dt in [DType::BF16, DType::F32] {
            let x = cpu.upload_f32(&random_vec(m * k, 1), dt).expect("upload");
            let w = cpu.upload_f32(&random_vec(k * n, 2), dt).expect("upload");
            let bias = cpu.upload_f32(&random_vec(n, 3), dt).expect("upload");
            let mut out = CpuBuffer::zeros(dt, m * n);
            let spec = Gemm::new(m, n, k);
            g.bench_function(format!("fused/{}", dt.name()), |bch| {
                bch.iter(|| {
                    cpu.gemm_bias(x.view(), w.view(), bias.view(), out.view_mut(), &spec)
                        .expect("gemm_bias")
                })
            });
            g.bench_function(format!("composed/{}", dt.name()), |bch| {
                bch.iter(|| {
                    compose_gemm_bias(cpu, x.view(), w.view(), bias.view(), out.view_mut(), &spec)
                        .expect("compose_gemm_bias")
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
