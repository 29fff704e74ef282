//! Short end-to-end runs in every precision on the CPU: the loss is finite and falls.

use crate::common::{quiet, scratch, tiny};
use mp_train::config::{Precision, ScalingMode};
use mp_train::metrics::{StepRecord, read_jsonl};
use mp_train::run::train;

fn run(precision: Precision, scaling: ScalingMode) -> Vec<StepRecord> {
    let mut cfg = tiny(24);
    cfg.precision = precision;
    cfg.loss_scaling.mode = scaling;
    let dir = scratch(&format!("prec-{precision}-{scaling:?}"));
    let out = dir.join("run");
    let summary = train(cfg, quiet(&out)).unwrap_or_else(|e| panic!("{precision}: {e}"));
    assert_eq!(summary.steps, 24);
    assert!(
        summary.final_val_loss.is_finite(),
        "{precision}: {summary:?}"
    );
    let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    recs
}

fn assert_learns(name: &str, recs: &[StepRecord]) {
    assert_eq!(recs.len(), 24, "{name}: one record per step");
    assert!(
        recs.iter().all(|r| r.loss.is_finite()),
        "{name}: non-finite loss"
    );
    let first = recs[0].loss;
    let tail: f32 = recs[recs.len() - 4..].iter().map(|r| r.loss).sum::<f32>() / 4.0;
    assert!(
        tail < 0.8 * first,
        "{name}: loss did not fall enough: first {first}, last four {tail}"
    );
}

#[test]
fn fp32_learns() {
    assert_learns("fp32", &run(Precision::Fp32, ScalingMode::Auto));
}

#[test]
fn bf16_learns() {
    let recs = run(Precision::Bf16, ScalingMode::Auto);
    assert!(
        recs.iter().all(|r| r.scale == 1.0),
        "bf16 runs unscaled by default"
    );
    assert_learns("bf16", &recs);
}

#[test]
fn fp16_with_dynamic_scaling_learns() {
    let recs = run(Precision::Fp16, ScalingMode::Auto);
    assert_eq!(
        recs[0].scale, 65536.0,
        "fp16 starts at PyTorch's init_scale"
    );
    assert_learns("fp16", &recs);
}

#[test]
fn fp16_without_scaling_runs() {
    let recs = run(Precision::Fp16, ScalingMode::None);
    assert!(recs.iter().all(|r| r.scale == 1.0));
    assert!(recs.iter().all(|r| r.loss.is_finite()));
}

#[test]
fn pure_bf16_with_stochastic_rounding_learns() {
    assert_learns("bf16-sr", &run(Precision::Bf16Sr, ScalingMode::Auto));
}

/// The llm.c-style storage options: a BF16 residual stream and a BF16 gradient arena train
/// too, and the arena really is BF16.
#[test]
fn bf16_residual_stream_and_gradient_arena_learn() {
    use mp_kernels::CpuBackend;
    use mp_train::config::StorageDtype;
    let mut cfg = tiny(24);
    cfg.residual_dtype = StorageDtype::Bf16;
    cfg.grad_dtype = StorageDtype::Bf16;
    let data = mp_train::data::Dataset::arithmetic(&cfg.data, cfg.seed);
    let tr = mp_train::train::Trainer::new(CpuBackend::new(), cfg.clone(), data).unwrap();
    assert_eq!(tr.model.grads().dtype(), mp_kernels::DType::BF16);
    let mp_train::model::Model::Gpt(gpt) = &tr.model else {
        panic!("a GPT-2 config builds a GPT")
    };
    assert_eq!(gpt.residual_dtype, mp_kernels::DType::BF16);
    let dir = scratch("prec-bf16-storage");
    let out = dir.join("run");
    train(cfg, quiet(&out)).unwrap();
    let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_learns("bf16 residual + bf16 grads", &recs);
}

/// `recompute_gelu` changes what is saved, not what is computed: the same losses and
/// gradient norms, bit for bit.
#[test]
fn recompute_gelu_trains_bit_identically() {
    let run = |recompute: bool| {
        let mut cfg = tiny(8);
        cfg.recompute_gelu = recompute;
        let dir = scratch(&format!("recompute-gelu-{recompute}"));
        let out = dir.join("run");
        train(cfg, quiet(&out)).unwrap();
        let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        recs.iter()
            .map(|r| (r.loss.to_bits(), r.grad_norm.map(f64::to_bits)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(true), run(false));
}
