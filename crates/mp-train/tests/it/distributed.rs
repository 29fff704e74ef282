//! Data-parallel runs over MPI (`mpirun -np N mp-train train ...`, the binary built with
//! `--features mpi`; OpenMPI's `mpirun` on the PATH, as `.ci/run` installs it). One compute
//! thread per rank, oversubscribed, allowed as root.
//!
//! The anchor: N ranks with one micro-batch each are bit-identical to one process
//! accumulating N micro-batches (losses, gradient norms, scales, skips, weights, optimizer
//! state), for DDP and ZeRO-1, in bf16 and in fp16 with overflowing steps.

use super::common::{scratch, tiny_args};
use mp_train::metrics::{StepRecord, read_jsonl};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `--set` arguments of every run here: a model of several ZeRO parts (2 layers of 64),
/// one compute thread, `steps` steps logged each step.
fn args(steps: u64, extra: &[&str]) -> Vec<String> {
    let mut a = tiny_args(steps);
    for s in [
        "model.n_layer=2",
        "model.n_embd=64",
        "threads=1",
        "eval_problems=4",
    ] {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("MP_TRAIN_FONT", "none")
        .stdin(Stdio::null());
    c
}

/// Runs `mp-train train --plain --out OUT ARGS` in `np` ranks (`np == 0`: one process
/// without mpirun); returns success and the output.
fn train(np: usize, out: &Path, a: &[String]) -> (bool, String) {
    let bin = env!("CARGO_BIN_EXE_mp-train");
    let mut cmd = if np == 0 {
        let mut c = Command::new(bin);
        c.env("MP_TRAIN_FONT", "none").stdin(Stdio::null());
        c
    } else {
        let mut c = mpirun(np);
        c.arg(bin);
        c
    };
    let o = cmd
        .args(["train", "--plain", "--out"])
        .arg(out)
        .args(a)
        .output()
        .expect("starting the run (is mpirun installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn run_ok(np: usize, out: &Path, a: &[String]) -> String {
    let (ok, text) = train(np, out, a);
    assert!(ok, "np {np} into {}:\n{text}", out.display());
    text
}

/// What must be the same bits: per-step loss, gradient norm, scale and skip, and the files
/// of the final checkpoint.
fn assert_same_run(a: &Path, b: &Path, steps: u64) {
    let ra: Vec<StepRecord> = read_jsonl(&a.join("metrics.jsonl")).unwrap();
    let rb: Vec<StepRecord> = read_jsonl(&b.join("metrics.jsonl")).unwrap();
    assert_eq!(ra.len(), rb.len(), "{} vs {}", a.display(), b.display());
    for (x, y) in ra.iter().zip(&rb) {
        let key = |r: &StepRecord| {
            (
                r.step,
                r.loss.to_bits(),
                r.grad_norm.map(f64::to_bits),
                r.scale.to_bits(),
                r.skipped,
            )
        };
        assert_eq!(key(x), key(y), "step {}: {x:?} vs {y:?}", x.step);
    }
    let ck = format!("checkpoint-{steps}");
    for f in ["model.safetensors", "optimizer.safetensors", "scaler.json"] {
        let (fa, fb) = (a.join(&ck).join(f), b.join(&ck).join(f));
        assert!(
            std::fs::read(&fa).unwrap() == std::fs::read(&fb).unwrap(),
            "{} and {} differ",
            fa.display(),
            fb.display()
        );
    }
}

fn skipped(dir: &Path) -> usize {
    let r: Vec<StepRecord> = read_jsonl(&dir.join("metrics.jsonl")).unwrap();
    r.iter().filter(|r| r.skipped).count()
}

#[test]
fn distributed_np2_is_bit_identical_to_one_process_accumulating_two() {
    let dir = scratch("dist-np2");
    let fp16 = [
        "--set",
        "precision=\"fp16\"",
        // a scale far too large: the first steps overflow and every rank skips them
        "--set",
        "loss_scaling.init_scale=1e9",
        "--set",
        "loss_scaling.growth_interval=3",
    ];
    let bf16 = ["--set", "precision=\"bf16\""];
    for (name, prec) in [("bf16", &bf16[..]), ("fp16", &fp16[..])] {
        for zero in [0, 1] {
            let z = format!("distributed.zero_stage={zero}");
            let mut extra = prec.to_vec();
            extra.extend(["--set", &z, "--set", "batch_size=4"]);
            let two = dir.join(format!("{name}-z{zero}-np2"));
            let text = run_ok(2, &two, &args(12, &extra));
            assert!(text.contains("2 ranks"), "{text}");
            assert!(text.contains("global batch 8"), "{text}");
            extra.extend(["--set", "grad_accum_steps=2"]);
            let one = dir.join(format!("{name}-z{zero}-np1"));
            run_ok(0, &one, &args(12, &extra));
            assert_same_run(&two, &one, 12);
            if name == "fp16" {
                assert!(skipped(&two) > 0, "no step overflowed in {}", two.display());
            }
            // rank 0 alone wrote the folder; the summary names the world
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(two.join("summary.json")).unwrap())
                    .unwrap();
            assert_eq!(summary["world_size"], 2);
            assert_eq!(summary["global_batch"], 8);
            assert_eq!(summary["zero_stage"], zero);
            assert!(summary["comm_bytes_per_step"].as_u64().unwrap() > 0);
            let opt = summary["memory"]["optimizer"].as_u64().unwrap();
            let full = 8 * summary["num_params"].as_u64().unwrap();
            if zero == 1 {
                assert!(opt < full, "ZeRO-1 keeps {opt} of {full} optimizer bytes");
            } else {
                assert_eq!(opt, full);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// DDP's all-reduce overlapped with the backward pass: small buckets, each summed as soon as
/// the last micro-batch's backward pass has finished it, two micro-batches per rank (the
/// second one's gradients added into the sum bucket by bucket) and a poisoned step (poisoned
/// in the bucket before it is sent). The same bits as ZeRO-1's path, which reduces after the
/// backward pass (with two ranks, `a + b` either way).
#[test]
fn distributed_ddp_buckets_overlapped_with_backward_match_the_reduction_after_it() {
    let dir = scratch("dist-overlap");
    let common = [
        "--set",
        "precision=\"fp16\"",
        "--set",
        "poison_grad_steps=\"3\"",
        "--set",
        "batch_size=2",
        "--set",
        "grad_accum_steps=2",
        "--set",
        "distributed.bucket_mb=0.02",
    ];
    let run = |zero: &str| {
        let out = dir.join(format!("z{zero}"));
        let z = format!("distributed.zero_stage={zero}");
        run_ok(2, &out, &args(8, &[&common[..], &["--set", &z]].concat()));
        out
    };
    let (ddp, zero1) = (run("0"), run("1"));
    assert_same_run(&ddp, &zero1, 8);
    assert_eq!(
        skipped(&ddp),
        1,
        "the poisoned step is skipped by both ranks"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ddp.join("summary.json")).unwrap()).unwrap();
    let buckets = summary["buckets_per_step"].as_f64().unwrap();
    assert!(buckets > 4.0, "{buckets} buckets per step");
    let hidden = summary["buckets_overlapped"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hidden), "{hidden}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distributed_np4_runs_are_deterministic() {
    let dir = scratch("dist-np4");
    for zero in ["0", "1"] {
        let z = format!("distributed.zero_stage={zero}");
        let extra = [
            "--set",
            &z,
            "--set",
            "batch_size=2",
            "--set",
            "distributed.bucket_mb=0.05",
        ];
        let (a, b) = (dir.join(format!("a{zero}")), dir.join(format!("b{zero}")));
        run_ok(4, &a, &args(8, &extra));
        run_ok(4, &b, &args(8, &extra));
        assert_same_run(&a, &b, 8);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The newest checkpoint of `run`, once one at or after `step` exists.
fn wait_for_checkpoint(run: &Path, step: u64, child: &mut std::process::Child) -> PathBuf {
    let t0 = std::time::Instant::now();
    loop {
        let ck = run.join(format!("checkpoint-{step}"));
        if ck.join("trainer_state.json").exists() {
            return ck;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before checkpoint-{step}");
        }
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint-{step}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn distributed_resume_after_a_kill_and_with_another_world_size() {
    let dir = scratch("dist-resume");
    let steps = 200;
    let extra = [
        "--set",
        "distributed.zero_stage=1",
        "--set",
        "batch_size=4",
        "--set",
        "save_steps=4",
        "--set",
        "save_total_limit=0",
        "--set",
        "logging_steps=1000",
    ];
    let a = args(steps, &extra);
    let reference = dir.join("reference");
    run_ok(2, &reference, &a);
    // the same run killed (SIGKILL to mpirun, which takes the ranks down) after a checkpoint
    let killed = dir.join("killed");
    let mut child = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_mp-train"))
        .args(["train", "--plain", "--out"])
        .arg(&killed)
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mpirun");
    wait_for_checkpoint(&killed, 8, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    // resumed in 2 ranks from what the kill left: its newest intact checkpoint
    let resume = ["--resume".to_string(), killed.display().to_string()];
    run_ok(2, &killed, &[a.clone(), resume.to_vec()].concat());
    assert_same_run(&reference, &killed, steps);
    // one process accumulating 2 micro-batches, resumed from the 2-rank checkpoint-8:
    // the ZeRO-1 shards re-partitioned for a world of 1
    let single = dir.join("single");
    std::fs::create_dir_all(&single).unwrap();
    let src = reference.join("checkpoint-8");
    let dst = single.join("checkpoint-8");
    std::fs::create_dir_all(&dst).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    let mut one = a.clone();
    one.extend(["--set".into(), "grad_accum_steps=2".into()]);
    one.extend(["--resume".into(), dst.display().to_string()]);
    run_ok(0, &single, &one);
    let ck = format!("checkpoint-{steps}");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(reference.join(&ck).join(f)).unwrap()
                == std::fs::read(single.join(&ck).join(f)).unwrap(),
            "{f} of the 1-process resume differs from the 2-rank run"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn distributed_rank_failure_is_reported_by_rank_0_and_leaves_no_torn_checkpoint() {
    let dir = scratch("dist-fail");
    let out = dir.join("run");
    let extra = [
        "--set",
        "distributed.fail_rank_at=\"1:5\"",
        "--set",
        "save_steps=2",
        "--set",
        "batch_size=2",
    ];
    let (ok, text) = train(2, &out, &args(10, &extra));
    assert!(!ok, "a failing rank must fail the run:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("error: rank 1 of 2 failed")
            && text.contains("injected failure of rank 1 at step 5"),
        "rank 0 must name the failing rank:\n{text}"
    );
    // every checkpoint left is whole (the run stopped before step 6's)
    for step in [2, 4] {
        let ck = out.join(format!("checkpoint-{step}"));
        mp_train::checkpoint::verify(&ck).unwrap_or_else(|e| panic!("{}: {e}", ck.display()));
    }
    assert!(!out.join("checkpoint-6").exists());
    // a bad hook value is a config error on every rank, before anything runs
    let (ok, text) = train(
        2,
        &dir.join("bad"),
        &args(2, &["--set", "distributed.fail_rank_at=\"one\""]),
    );
    assert!(!ok && text.contains("distributed.fail_rank_at"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
