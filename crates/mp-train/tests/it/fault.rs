//! End-to-end fault injection (`poison_grad_steps`): a poisoned step is skipped exactly, backs
//! the FP16 scale off, leaves weights and optimizer state byte-identical, replays bit for bit
//! on resume, and a long run with 10% poisoned steps still converges.

use crate::common::{quiet, scratch, tiny};
use mp_kernels::{BufferExt, CpuBackend, MemoryOps};
use mp_train::config::Precision;
use mp_train::data::Dataset;
use mp_train::metrics::{StepRecord, read_jsonl};
use mp_train::run::{RunOptions, train};
use mp_train::train::Trainer;

/// The master weights (bits) and the optimizer state of a trainer.
fn snapshot(tr: &Trainer<CpuBackend>) -> (Vec<u32>, mp_optim::OptimizerState) {
    let w = tr.be.download_f32(tr.model.params().view()).unwrap();
    let bits = w.iter().map(|x| x.to_bits()).collect();
    (bits, tr.opt.state(&tr.be).unwrap())
}

#[test]
fn a_poisoned_step_is_skipped_and_changes_nothing_but_the_scale() {
    for precision in [Precision::Fp16, Precision::Bf16] {
        let mut cfg = tiny(8);
        cfg.precision = precision;
        cfg.poison_grad_steps = "2,5-6".into();
        let ds = Dataset::from_config(&cfg.data, cfg.seed, 32).unwrap();
        let mut tr = Trainer::new(CpuBackend::new(), cfg.clone(), ds).unwrap();
        let mut skipped = Vec::new();
        for step in 0..8u64 {
            let before = snapshot(&tr);
            let scale = tr.scaler.get_scale();
            let out = tr.step().unwrap();
            if out.skipped {
                skipped.push(step);
                assert!(
                    before == snapshot(&tr),
                    "{precision} step {step}: state changed"
                );
                if precision == Precision::Fp16 {
                    let after = tr.scaler.get_scale();
                    assert_eq!(after, scale * 0.5, "{precision} step {step}: no backoff");
                }
            } else {
                assert!(
                    before.0 != snapshot(&tr).0,
                    "{precision} step {step}: no update"
                );
            }
        }
        assert_eq!(skipped, [2, 5, 6], "{precision}");
        assert_eq!(tr.skipped, 3);
    }
}

#[test]
fn a_resumed_run_replays_a_poisoned_step_bit_for_bit() {
    let dir = scratch("fault-resume");
    let mut cfg = tiny(12);
    cfg.precision = Precision::Fp16;
    cfg.save_steps = 5;
    cfg.poison_grad_steps = "4,6,9".into();
    let opts = |out: &std::path::Path| RunOptions {
        checkpoints: true,
        ..quiet(out)
    };
    let full = dir.join("full");
    train(cfg.clone(), opts(&full)).unwrap();
    let resumed = dir.join("resumed");
    let from = full.join("checkpoint-5");
    train(
        cfg,
        RunOptions {
            resume: Some(from),
            ..opts(&resumed)
        },
    )
    .unwrap();
    let key = |r: &StepRecord| (r.step, r.loss.to_bits(), r.scale.to_bits(), r.skipped);
    let a: Vec<StepRecord> = read_jsonl(&full.join("metrics.jsonl")).unwrap();
    let b: Vec<StepRecord> = read_jsonl(&resumed.join("metrics.jsonl")).unwrap();
    let skipped: Vec<u64> = a.iter().filter(|r| r.skipped).map(|r| r.step).collect();
    // records count steps from 1: poisoned steps 4, 6 and 9 are records 5, 7 and 10
    assert_eq!(skipped, [5, 7, 10]);
    let tail: Vec<_> = a.iter().filter(|r| r.step > 5).map(key).collect();
    assert_eq!(b.iter().map(key).collect::<Vec<_>>(), tail);
}

/// 1000 steps with every tenth poisoned: finite weights, and a final loss within 2% of the
/// clean run's (both averaged over the last 50 steps).
#[test]
fn a_long_run_with_ten_percent_poisoned_steps_converges() {
    let dir = scratch("fault-long");
    let run = |poison: &str, name: &str| {
        let mut cfg = tiny(1000);
        cfg.precision = Precision::Fp16;
        cfg.poison_grad_steps = poison.into();
        cfg.model.n_embd = 16;
        cfg.model.n_positions = 16;
        let out = dir.join(name);
        let summary = train(cfg, quiet(&out)).unwrap();
        let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
        let tail = &recs[recs.len() - 50..];
        let loss = tail.iter().map(|r| f64::from(r.loss)).sum::<f64>() / 50.0;
        (summary, recs, loss)
    };
    let (_, clean_recs, clean) = run("", "clean");
    let (summary, recs, poisoned) = run("0-999/10", "poisoned");
    assert_eq!(clean_recs.iter().filter(|r| r.skipped).count(), 0);
    assert_eq!(recs.iter().filter(|r| r.skipped).count(), 100);
    assert_eq!(summary.skipped_steps, 100);
    // non-finite weights would make the validation loss non-finite
    assert!(
        summary.final_train_loss.is_finite() && summary.final_val_loss.is_finite(),
        "{summary:?}"
    );
    assert!(
        (poisoned - clean).abs() <= 0.02 * clean,
        "poisoned run's loss {poisoned} vs clean {clean}"
    );
}

/// A run whose every step overflows stops after 100 of them, and one whose weights blow up
/// stops at once; both name the step, what went non-finite and what may help.
#[test]
fn diverged_runs_stop_with_the_step_and_a_hint() {
    let dir = scratch("fault-diverged");
    let mut cfg = tiny(150);
    cfg.poison_grad_steps = "0-149".into();
    let err = train(cfg, quiet(&dir.join("skips")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged at step 100")
            && err.contains("the last 100 steps all had non-finite gradients")
            && err.contains("no loss scale can fix it"),
        "{err}"
    );
    let mut cfg = tiny(20);
    cfg.precision = Precision::Fp32;
    cfg.learning_rate = 1e38;
    cfg.max_grad_norm = 0.0;
    cfg.warmup_steps = 0;
    let err = train(cfg, quiet(&dir.join("blowup")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training diverged at step")
            && (err.contains("weights are no longer finite") || err.contains("loss is NaN"))
            && err.contains("lower the learning rate"),
        "{err}"
    );
}
