//! Short BF16 training runs on a GPU backend through the real entry point ([`train`], which
//! picks the device in `mp_train::device`), whose per-step losses must track the same run on
//! the CPU backend: same config, same seed, same batches, so any gap is kernel numerics.
//!
//! The bounds, measured on wgpu (Mesa lavapipe; the runs are deterministic): the first step's
//! loss differs by 8.6e-8 relative (FP32 summation order only), and the worst step of 30 by
//! 1.1e-4 (2.3e-4 over 50 steps). Later steps drift because a different FP32 summation order
//! now and then flips a BF16 rounding of an activation or of the model copy, and AdamW carries
//! the flip forward. The bounds: [`FIRST_STEP_BOUND`] = 1e-5 (over 100x the measurement, the
//! golden FP32 loss bound) and [`STEP_BOUND`] = 2e-3 = 2^-9, half a BF16 ulp (about 9x the
//! 50-step measurement): the runs must agree far below BF16's resolution, while a wrong kernel
//! (a mis-rounded cast, a missed element) moves the loss by whole percents. The learning rate
//! is 3e-3 rather than the tiny config's 1e-2: at 1e-2 the tiny model has a loss spike near
//! step 23 that amplifies the same drift to 2.7e-2 (measured on lavapipe), which would make
//! the bound too loose to catch anything.

use crate::common::{quiet, scratch, tiny};
use mp_train::config::{BackendKind, Precision};
use mp_train::metrics::{StepRecord, read_jsonl};
use mp_train::run::train;

/// Relative loss difference allowed at the first step (see the module docs).
const FIRST_STEP_BOUND: f64 = 1e-5;
/// Relative loss difference allowed at every step (see the module docs).
const STEP_BOUND: f64 = 2e-3;

/// The losses of a `steps`-step BF16 autocast run of the tiny config on `backend`.
fn bf16_losses(backend: BackendKind, name: &str, steps: u64) -> Vec<f32> {
    let mut cfg = tiny(steps);
    cfg.precision = Precision::Bf16;
    cfg.backend = backend;
    cfg.learning_rate = 3e-3;
    let dir = scratch(name);
    let out = dir.join("run");
    let start = std::time::Instant::now();
    let summary = train(cfg, quiet(&out)).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: {steps} steps on {} in {:.1} s ({:.1} s of steps)",
        summary.device,
        start.elapsed().as_secs_f64(),
        summary.train_seconds
    );
    assert_eq!(summary.steps, steps, "{name}");
    assert_eq!(summary.skipped_steps, 0, "{name}: bf16 never skips here");
    let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(recs.len() as u64, steps, "{name}: one record per step");
    recs.iter().map(|r| r.loss).collect()
}

/// Runs the tiny config on the CPU and on `backend` and asserts every step's loss agrees
/// within [`STEP_BOUND`] (relative), the first step's within [`FIRST_STEP_BOUND`], and that
/// the run learns.
fn tracks_cpu(backend: BackendKind, name: &str, steps: u64) {
    let (first_bound, bound) = (FIRST_STEP_BOUND, STEP_BOUND);
    let cpu = bf16_losses(BackendKind::Cpu, &format!("{name}-cpu"), steps);
    let gpu = bf16_losses(backend, name, steps);
    let rel: Vec<f64> = cpu
        .iter()
        .zip(&gpu)
        .map(|(&c, &g)| (f64::from(g) - f64::from(c)).abs() / f64::from(c).abs())
        .collect();
    for (i, ((c, g), r)) in cpu.iter().zip(&gpu).zip(&rel).enumerate() {
        eprintln!(
            "{name}: step {:>2}: loss cpu {c:.6} {backend} {g:.6} rel {r:.2e}",
            i + 1
        );
    }
    let (worst_step, worst) = rel
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0.0f64), |a, (i, r)| if r > a.1 { (i, r) } else { a });
    eprintln!(
        "{name}: worst relative loss difference {worst:.2e} at step {} (bound {bound:.0e})",
        worst_step + 1
    );
    assert!(
        gpu.iter().all(|l| l.is_finite()),
        "{name}: non-finite loss on {backend}: {gpu:?}"
    );
    assert!(
        rel[0] <= first_bound,
        "{name}: first-step loss {} on {backend} vs {} on the CPU (rel {:.2e} > {first_bound:.0e})",
        gpu[0],
        cpu[0],
        rel[0]
    );
    assert!(
        worst <= bound,
        "{name}: step {} loss {} on {backend} vs {} on the CPU (rel {worst:.2e} > {bound:.0e})",
        worst_step + 1,
        gpu[worst_step],
        cpu[worst_step]
    );
    let tail = |l: &[f32]| l[l.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(
        tail(&gpu) < 0.8 * gpu[0],
        "{name}: the loss on {backend} did not fall: first {}, last five {}",
        gpu[0],
        tail(&gpu)
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_training_tracks_cpu() {
    let name = "wgpu_training_tracks_cpu";
    if crate::common::wgpu_backend(name).is_none() {
        return;
    }
    // 30 steps: lavapipe runs about 1 step a second on two cores (CI time).
    tracks_cpu(BackendKind::Wgpu, name, 30);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_training_tracks_cpu() {
    let name = "cuda_training_tracks_cpu";
    if crate::common::cuda_backend(name).is_none() {
        return;
    }
    // 50 steps, the run issue 6 asks for.
    tracks_cpu(BackendKind::Cuda, name, 50);
}

/// Per step: the step, the loss's bits and the gradient norm's bits.
#[cfg(feature = "nccl")]
type StepBits = Vec<(u64, u32, Option<u64>)>;

/// The files and per-step records of a 12-step run on CUDA, bf16, under `zero_stage`, with
/// NCCL asked for in a world of one (`nccl`) or with no collectives at all.
#[cfg(feature = "nccl")]
fn cuda_run(name: &str, zero_stage: u8, nccl: bool) -> (StepBits, Vec<u8>) {
    use mp_train::config::DistEngine;
    let mut cfg = tiny(12);
    cfg.precision = Precision::Bf16;
    cfg.backend = BackendKind::Cuda;
    cfg.distributed.zero_stage = zero_stage;
    cfg.distributed.bucket_mb = 0.02;
    if nccl {
        cfg.distributed.engine = DistEngine::Nccl;
    }
    cfg.save_steps = 12;
    let dir = scratch(name);
    let out = dir.join("run");
    let opts = mp_train::run::RunOptions {
        checkpoints: true,
        ..quiet(&out)
    };
    let summary = train(cfg, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(summary.steps, 12, "{name}");
    if nccl {
        assert!(
            summary.device.contains("nccl"),
            "{name}: {}",
            summary.device
        );
        if zero_stage == 0 {
            assert!(
                summary.buckets_per_step > 4.0,
                "{name}: {}",
                summary.buckets_per_step
            );
        }
    }
    let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    let weights = std::fs::read(out.join("checkpoint-12").join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let key = recs
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.grad_norm.map(f64::to_bits)))
        .collect();
    (key, weights)
}

/// One rank with NCCL (`distributed.engine = "nccl"`: DDP's buckets all-reduced in place on
/// the communication stream, ZeRO-1's reduce-scatter and all-gather) gives the same bits as
/// the same run with no collectives: NCCL's sum over one rank is exact, and the stream
/// ordering (event waits both ways) loses nothing.
#[cfg(feature = "nccl")]
#[test]
fn cuda_nccl_one_rank_matches_the_run_without_collectives() {
    let name = "cuda_nccl_one_rank_matches_the_run_without_collectives";
    if crate::common::cuda_backend(name).is_none() {
        return;
    }
    for zero in [0, 1] {
        let plain = cuda_run(&format!("{name}-z{zero}-plain"), zero, false);
        let nccl = cuda_run(&format!("{name}-z{zero}-nccl"), zero, true);
        assert!(
            plain.0 == nccl.0,
            "zero_stage {zero}: {:?} vs {:?}",
            plain.0,
            nccl.0
        );
        assert!(
            plain.1 == nccl.1,
            "zero_stage {zero}: the final weights differ"
        );
    }
}
