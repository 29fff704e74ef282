//! Bulk conversion throughput: mp-dtype against the `half` crate's slice conversion
//! (`HalfFloatSliceExt`) and a plain copy of the same f32 bytes, both directions, BF16 and F16.
//! Throughput is counted in bytes of the f32 side (64 MiB per iteration).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

const F32_BYTES: usize = 64 << 20;
const N: usize = F32_BYTES / 4;

fn input() -> Vec<f32> {
    // Normal values over a few binades, with a sprinkling of every rounding case.
    (0..N)
        .map(|i| {
            let r = mp_dtype::mix32(i as u32);
            f32::from_bits(0x3c00_0000 + (r & 0x07ff_ffff)) * if r >> 31 == 1 { -1.0 } else { 1.0 }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let src = input();
    let mut copy_dst = vec![0f32; N];
    let mut b16 = vec![bf16::ZERO; N];
    let mut h16 = vec![f16::ZERO; N];
    let mut back = vec![0f32; N];
    eprintln!(
        "mp-dtype paths on this CPU: bf16 {}, f16 {}; rayon threads {}",
        mp_dtype::Isa::best_for_bf16(),
        mp_dtype::Isa::best_for_f16(),
        rayon::current_num_threads()
    );

    for (group, dir) in [
        ("f32_to_bf16", 0),
        ("bf16_to_f32", 1),
        ("f32_to_f16", 2),
        ("f16_to_f32", 3),
    ] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Bytes(F32_BYTES as u64));
        g.sample_size(10);
        g.bench_function("copy", |b| {
            b.iter(|| copy_dst.copy_from_slice(black_box(&src)));
        });
        match dir {
            0 => {
                g.bench_function("mp-dtype", |b| {
                    b.iter(|| mp_dtype::f32_to_bf16(black_box(&src), &mut b16).expect("lengths"))
                });
                g.bench_function("half", |b| {
                    b.iter(|| b16.convert_from_f32_slice(black_box(&src)))
                });
            }
            1 => {
                mp_dtype::f32_to_bf16(&src, &mut b16).expect("lengths");
                g.bench_function("mp-dtype", |b| {
                    b.iter(|| mp_dtype::bf16_to_f32(black_box(&b16), &mut back).expect("lengths"))
                });
                g.bench_function("half", |b| {
                    b.iter(|| black_box(&b16).convert_to_f32_slice(&mut back))
                });
            }
            2 => {
                g.bench_function("mp-dtype", |b| {
                    b.iter(|| mp_dtype::f32_to_f16(black_box(&src), &mut h16).expect("lengths"))
                });
                g.bench_function("half", |b| {
                    b.iter(|| h16.convert_from_f32_slice(black_box(&src)))
                });
            }
            _ => {
                mp_dtype::f32_to_f16(&src, &mut h16).expect("lengths");
                g.bench_function("mp-dtype", |b| {
                    b.iter(|| mp_dtype::f16_to_f32(black_box(&h16), &mut back).expect("lengths"))
                });
                g.bench_function("half", |b| {
                    b.iter(|| black_box(&h16).convert_to_f32_slice(&mut back))
                });
            }
        }
        g.finish();
    }

    // Stochastic rounding to BF16 (what an optimizer's model-copy write does); `half` has none.
    let mut bytes = vec![0u8; 2 * N];
    let opts = mp_dtype::EncodeOptions {
        rounding: mp_dtype::Rounding::Stochastic { seed: 42 },
        ..Default::default()
    };
    let mut g = c.benchmark_group("f32_to_bf16_stochastic");
    g.throughput(Throughput::Bytes(F32_BYTES as u64));
    g.sample_size(10);
    g.bench_function("copy", |b| {
        b.iter(|| copy_dst.copy_from_slice(black_box(&src)));
    });
    g.bench_function("mp-dtype", |b| {
        b.iter(|| {
            mp_dtype::encode(black_box(&src), &mut bytes, mp_dtype::DType::BF16, &opts)
                .expect("lengths")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
