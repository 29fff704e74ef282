//! One GPT training step (forward + backward + `mp_optim::AdamW`, one fused pass) on the CPU backend, config
//! `gpt-cpu` (4 layers, 128 wide, 4 heads, context 64, vocabulary 256) at batch 16, in FP32
//! and under BF16 autocast (forward from the optimizer's BF16 model copy, and from FP32 master
//! weights with per-step cached casts). Throughput is in tokens; compare with
//! `shared/bench/torch_cpu_reference.py` (PyTorch, same config, same thread count).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mp_autograd::Autocast;
use mp_dtype::DType;
use mp_kernels::cpu::CpuBackend;
use mp_kernels::{BufferExt, Rounding};
use mp_optim::{AdamW, AdamWConfig};
use mp_train::model::{Gpt, GptConfig};

fn step(c: &mut Criterion) {
    let be = CpuBackend::new();
    let cfg = GptConfig::GPT_CPU;
    let (b, t) = (16, cfg.n_positions);
    // Deterministic tokens (an LCG), like torch.randint in the reference script.
    let mut s = 12345u64;
    let mut tok = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % cfg.vocab_size as u64) as u32
    };
    let ids: Vec<u32> = (0..b * t).map(|_| tok()).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| tok()).collect();

    let mut group = c.benchmark_group("gpt_cpu_train_step");
    group.throughput(Throughput::Elements((b * t) as u64));
    group.sample_size(20);
    let modes = [
        ("fp32", None, false),
        ("bf16_model_copy", Some(DType::BF16), true),
        ("bf16_cast_per_step", Some(DType::BF16), false),
    ];
    for (name, low, copy) in modes {
        let mut gpt = Gpt::new(&be, cfg, 0).expect("model");
        if let (Some(dt), true) = (low, copy) {
            gpt.enable_model_copy(&be, dt).expect("model copy");
        }
        let batch = gpt.batch(&be, &ids, Some(&targets), b, t).expect("batch");
        let config = AdamWConfig {
            lr: 3e-4,
            rounding: Rounding::NearestEven,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&be, gpt.num_params(), config).expect("optimizer");
        let autocast = Autocast { dtype: low };
        group.bench_function(name, |bench| {
            bench.iter(|| {
                gpt.zero_grads(&be).unwrap();
                let loss = gpt.forward_backward(&be, &batch, autocast, 1.0).unwrap();
                let model = gpt.model_copy.as_mut().map(|c| c.view_mut());
                opt.step(&be, gpt.params.view_mut(), gpt.grads.view(), model, 1.0)
                    .unwrap();
                loss
            })
        });
    }
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
