//! Resuming from step k reproduces the uninterrupted run's losses bit for bit.

use crate::common::{scratch, tiny};
use mp_train::config::{Arch, Precision};
use mp_train::metrics::{StepRecord, read_jsonl};
use mp_train::run::{Progress, RunOptions, train};

fn check(precision: Precision) {
    check_arch(precision, Arch::Gpt2);
}

fn check_arch(precision: Precision, arch: Arch) {
    let dir = scratch(&format!("resume-{precision}-{}", arch.name()));
    let mut cfg = tiny(12);
    cfg.precision = precision;
    cfg.model.arch = arch;
    if arch == Arch::Llama {
        cfg.model.n_kv_head = 1;
    }
    cfg.save_steps = 5;
    cfg.grad_accum_steps = 2;
    let quiet = |out: &std::path::Path| RunOptions {
        plots: false,
        progress: Progress::Quiet,
        ..RunOptions::new(out)
    };
    let full = dir.join("full");
    train(cfg.clone(), quiet(&full)).unwrap();
    let resumed = dir.join("resumed");
    train(
        cfg.clone(),
        RunOptions {
            resume: Some(full.join("checkpoint-5")),
            ..quiet(&resumed)
        },
    )
    .unwrap();
    let a: Vec<StepRecord> = read_jsonl(&full.join("metrics.jsonl")).unwrap();
    let b: Vec<StepRecord> = read_jsonl(&resumed.join("metrics.jsonl")).unwrap();
    let tail: Vec<(u64, u32, u32)> = a
        .iter()
        .filter(|r| r.step > 5)
        .map(|r| (r.step, r.loss.to_bits(), r.scale.to_bits()))
        .collect();
    let got: Vec<(u64, u32, u32)> = b
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.scale.to_bits()))
        .collect();
    assert_eq!(tail.len(), 7);
    assert_eq!(
        got, tail,
        "{precision}: resumed losses differ from the uninterrupted run"
    );
    // Resuming inside the run folder itself drops the records logged after the checkpoint
    // before appending, and replaces the later checkpoints.
    train(
        cfg,
        RunOptions {
            resume: Some(full.join("checkpoint-5")),
            ..quiet(&full)
        },
    )
    .unwrap();
    let again: Vec<StepRecord> = read_jsonl(&full.join("metrics.jsonl")).unwrap();
    assert_eq!(again.len(), 12);
    assert_eq!(
        again.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>(),
        a.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_is_bit_identical_bf16() {
    check(Precision::Bf16);
}

#[test]
fn resume_is_bit_identical_fp16_dynamic_scaling() {
    check(Precision::Fp16);
}

#[test]
fn resume_is_bit_identical_pure_bf16_sr() {
    check(Precision::Bf16Sr);
}

#[test]
fn resume_is_bit_identical_fp32() {
    check(Precision::Fp32);
}

#[test]
fn resume_is_bit_identical_llama_bf16_and_fp16() {
    check_arch(Precision::Bf16, Arch::Llama);
    check_arch(Precision::Fp16, Arch::Llama);
}
