//! The fused optimizer and gradient-check passes of the CPU backend against a plain parallel
//! copy moving the same number of bytes, over a GPT-2-small-sized arena (124M parameters;
//! `MP_BENCH_PARAMS=N` sets another size).
//!
//! Bytes moved per element:
//! - AdamW, FP32 master + BF16 model copy, BF16 gradients: reads p, m, v (4 B each) and g (2 B),
//!   writes p, m, v and the copy (2 B): 28 B. Baseline: copying 14 B per element (14 read + 14
//!   written).
//! - Gradient check over BF16 gradients: reads 2 B. Baselines: copying 1 B per element (the
//!   same traffic, `copy`) and copying the gradient buffer itself (`copy_grads`: 2 B read and
//!   2 B written, twice the traffic of the check).
//!
//! Every benchmark reports `Throughput::Bytes` of its traffic, so criterion's GB/s figures
//! compare directly; the ratios are printed at the end.

use criterion::{Criterion, Throughput, criterion_group};
use mp_kernels::prelude::*;
use mp_kernels::{AdamW, CpuBackend, CpuBuffer, DType, Rounding};
use rayon::prelude::*;
use std::hint::black_box;

/// Parameters of GPT-2 small.
const GPT2_SMALL: usize = 124_439_808;

fn params() -> usize {
    std::env::var("MP_BENCH_PARAMS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(GPT2_SMALL)
}

/// A parallel copy of `src` into `dst` in the same fixed blocks the kernels use.
fn copy(src: &[u64], dst: &mut [u64]) {
    dst.par_chunks_mut(1 << 15)
        .zip(src.par_chunks(1 << 15))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

fn filled(dtype: DType, n: usize, value: f32) -> CpuBuffer {
    let mut b = CpuBuffer::zeros(dtype, n);
    CpuBackend.fill(b.view_mut(), value).expect("fill");
    b
}

fn bench_copy(c: &mut Criterion, group: &str, name: &str, bytes: usize) {
    let words = bytes.div_ceil(8);
    let src = vec![1u64; words];
    let mut dst = vec![0u64; words];
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.throughput(Throughput::Bytes(2 * (words * 8) as u64));
    g.bench_function(name, |b| b.iter(|| copy(black_box(&src), &mut dst)));
    g.finish();
}

fn adamw(c: &mut Criterion) {
    let n = params();
    let be = CpuBackend;
    {
        let mut p = filled(DType::F32, n, 0.5);
        let mut m = filled(DType::F32, n, 0.0);
        let mut v = filled(DType::F32, n, 0.0);
        let grads = filled(DType::BF16, n, 1e-3);
        let mut model = CpuBuffer::zeros(DType::BF16, n);
        let mut g = c.benchmark_group("fused_adamw");
        g.sample_size(10);
        g.throughput(Throughput::Bytes(28 * n as u64));
        let mut step = 0;
        g.bench_function("fp32_master_bf16_copy_bf16_grads", |b| {
            b.iter(|| {
                step += 1;
                let hp = AdamW {
                    lr: 1e-4,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step,
                    grad_mult: 1.0 / 1024.0,
                    rounding: Rounding::NearestEven,
                };
                be.adamw(
                    p.view_mut(),
                    grads.view(),
                    m.view_mut(),
                    v.view_mut(),
                    Some(model.view_mut()),
                    &hp,
                )
                .expect("adamw")
            })
        });
        g.finish();
    }
    bench_copy(c, "fused_adamw", "copy", 14 * n);
}

fn grad_stats(c: &mut Criterion) {
    let n = params();
    let be = CpuBackend;
    {
        let grads = filled(DType::BF16, n, 1e-3);
        let mut g = c.benchmark_group("grad_stats");
        g.sample_size(10);
        g.throughput(Throughput::Bytes(2 * n as u64));
        g.bench_function("bf16_grads", |b| {
            b.iter(|| {
                be.grad_stats(black_box(grads.view()), 1.0 / 1024.0)
                    .expect("grad_stats")
            })
        });
        g.finish();
    }
    bench_copy(c, "grad_stats", "copy", n);
    bench_copy(c, "grad_stats", "copy_grads", 2 * n);
}

/// Median throughput (bytes/ns) of `group/name` from criterion's files, if present.
fn throughput(group: &str, name: &str) -> Option<f64> {
    let root = std::env::var("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(
                std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
            )
            .join("criterion")
        });
    let dir = root.join(group).join(name).join("new");
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()
    };
    let median = read("estimates.json")?["median"]["point_estimate"].as_f64()?;
    let bytes = read("benchmark.json")?["throughput"]["Bytes"].as_f64()?;
    Some(bytes / median)
}

criterion_group!(benches, adamw, grad_stats);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!(
        "\nfused passes vs a plain copy of the same bytes ({} parameters):",
        params()
    );
    for (group, name, base) in [
        ("fused_adamw", "fp32_master_bf16_copy_bf16_grads", "copy"),
        ("grad_stats", "bf16_grads", "copy"),
        ("grad_stats", "bf16_grads", "copy_grads"),
    ] {
        match (throughput(group, name), throughput(group, base)) {
            (Some(ours), Some(copy)) => println!(
                "  {group}/{name}: {ours:.2} GB/s, {base} {copy:.2} GB/s: ratio of bytes moved {:.2}",
                ours / copy
            ),
            _ => {
                println!("  {group}/{name} vs {base}: no criterion estimates found (filtered out?)")
            }
        }
    }
}
