//! One training step (forward + backward + `mp_optim::AdamW`, one fused pass) of each
//! architecture through the trainer's [`Model`], config `gpt-cpu` (4 layers, 128 wide, 4
//! heads, context 64, vocabulary 256; the Llama with 2 key/value heads) at batch 16, in FP32
//! and under BF16 autocast (forward from the optimizer's BF16 model copy, and from FP32 master
//! weights with per-step cached casts). Throughput is in tokens; compare with
//! `shared/bench/torch_cpu_reference.py` (PyTorch, same config, same thread count).
//!
//! On the CPU backend (groups `gpt_cpu_train_step`, `llama_cpu_train_step`) always; built
//! with the `wgpu` feature, the GPT's
//! BF16 model-copy step on the wgpu backend too (group `gpt_cpu_train_step_wgpu`), in the same
//! run, so the two read side by side (`cargo bench -p mp-train --features wgpu --bench step`). Each step reads its loss back (as the trainer does), so a GPU
//! iteration times the whole step, not just its submission. Without the feature, or without
//! an adapter, a loud line says why the wgpu half did not run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mp_autograd::Autocast;
use mp_dtype::DType;
use mp_kernels::cpu::CpuBackend;
use mp_kernels::{Backend, BufferExt, Rounding};
use mp_optim::{AdamW, AdamWConfig};
use mp_train::config::{Arch, ModelConfig};
use mp_train::model::{GptConfig, Model};

/// (name, autocast dtype, forward from the optimizer's model copy).
type Mode = (&'static str, Option<DType>, bool);

/// Every mode of the CPU bench.
const CPU_MODES: [Mode; 3] = [
    ("fp32", None, false),
    ("bf16_model_copy", Some(DType::BF16), true),
    ("bf16_cast_per_step", Some(DType::BF16), false),
];

/// Deterministic tokens (an LCG), like torch.randint in the reference script.
fn tokens(n: usize, vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut s = 12345u64;
    let mut tok = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % vocab as u64) as u32
    };
    let ids: Vec<u32> = (0..n).map(|_| tok()).collect();
    let targets: Vec<u32> = (0..n).map(|_| tok()).collect();
    (ids, targets)
}

/// The `gpt-cpu` shape in `arch`.
fn model_config(arch: Arch) -> ModelConfig {
    let g = GptConfig::GPT_CPU;
    ModelConfig {
        arch,
        n_layer: g.n_layer,
        n_embd: g.n_embd,
        n_head: g.n_head,
        n_positions: g.n_positions,
        vocab_size: g.vocab_size,
        n_kv_head: if arch == Arch::Llama { 2 } else { 0 },
        ..ModelConfig::default()
    }
}

/// Benchmarks one training step per mode of `arch` on `be` in the criterion group `group`.
fn steps<B: Backend>(
    c: &mut Criterion,
    be: &B,
    (group, arch): (&str, Arch),
    modes: &[Mode],
    samples: usize,
) {
    let cfg = model_config(arch);
    let (b, t) = (16, cfg.n_positions);
    let (ids, targets) = tokens(b * t, cfg.vocab_size);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements((b * t) as u64));
    group.sample_size(samples);
    for &(name, low, copy) in modes {
        let mut model = Model::new(be, &cfg, 0).expect("model");
        if let (Some(dt), true) = (low, copy) {
            model.enable_model_copy(be, dt).expect("model copy");
        }
        let batch = model.batch(be, &ids, Some(&targets), b, t).expect("batch");
        let config = AdamWConfig {
            lr: 3e-4,
            rounding: Rounding::NearestEven,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(be, model.num_params(), config).expect("optimizer");
        let autocast = Autocast { dtype: low };
        group.bench_function(name, |bench| {
            bench.iter(|| {
                model.zero_grads(be).unwrap();
                let loss = model.forward_backward(be, &batch, autocast, 1.0).unwrap();
                let (params, grads, copy) = model.arenas_mut();
                let copy = copy.map(|c| c.view_mut());
                opt.step(be, params.view_mut(), grads.view(), copy, 1.0)
                    .unwrap();
                be.synchronize().unwrap();
                loss
            })
        });
    }
    group.finish();
}

/// The wgpu half: the mixed-precision step (BF16 autocast from the model copy) only, at
/// criterion's minimum of 10 samples: on Mesa lavapipe (a CPU driver) one step of this config
/// takes about 16 s, so each mode costs about 3 minutes there (FP32 measured the same).
/// Without the `wgpu` feature the backend is mp-kernels' stand-in and says so (loudly).
fn wgpu_steps(c: &mut Criterion) {
    match mp_kernels::wgpu::WgpuBackend::new() {
        Ok(be) => {
            eprintln!("wgpu adapter: {}", mp_kernels::MemoryOps::name(&be));
            let group = ("gpt_cpu_train_step_wgpu", Arch::Gpt2);
            steps(c, &be, group, &CPU_MODES[1..2], 10);
        }
        Err(e) => eprintln!(
            "SKIPPED: the wgpu training-step benchmark: {e} \
             (`cargo bench -p mp-train --features wgpu --bench step`, with an adapter)"
        ),
    }
}

fn step(c: &mut Criterion) {
    let be = CpuBackend::new();
    steps(c, &be, ("gpt_cpu_train_step", Arch::Gpt2), &CPU_MODES, 20);
    steps(
        c,
        &be,
        ("llama_cpu_train_step", Arch::Llama),
        &CPU_MODES,
        20,
    );
    wgpu_steps(c);
}

criterion_group!(benches, step);
criterion_main!(benches);
