//! Bad input through the binary: a clear error naming the problem, a non-zero exit, no panic,
//! nothing overwritten.

use crate::common::{scratch, tiny_args};
use std::path::Path;
use std::process::Command;

fn mp_train(args: &[String], cwd: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mp-train"))
        .args(args)
        .current_dir(cwd)
        .env("MP_TRAIN_FONT", "none")
        .output()
        .expect("running mp-train");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn train_args(dir: &Path, out: &str, extra: &[&str]) -> Vec<String> {
    let mut a = s(&["train", "--plain", "--out"]);
    a.push(dir.join(out).display().to_string());
    a.extend(tiny_args(4));
    a.extend(s(extra));
    a
}

/// Runs `args` and checks failure with every `expected` fragment in the message.
fn expect_error(dir: &Path, name: &str, args: Vec<String>, expected: &[&str]) {
    let (ok, text) = mp_train(&args, dir);
    assert!(!ok, "{name}: succeeded but should fail:\n{text}");
    assert!(!text.contains("panicked"), "{name}: panicked:\n{text}");
    assert!(text.contains("error:"), "{name}: no error line:\n{text}");
    for e in expected {
        assert!(text.contains(e), "{name}: message lacks {e:?}:\n{text}");
    }
}

#[test]
fn bad_input_table() {
    let dir = scratch("bad-input");
    let w = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let bad_toml = w("bad.toml", "precision = \n");
    let unknown = w("unknown.toml", "learning_rat = 0.1\n");
    let unknown_nested = w("nested.toml", "[model]\nwidth = 3\n");
    let bad_type = w("type.toml", "seed = \"eight\"\n");
    let empty = w("empty.txt", "");
    let short = w("short.txt", "0123456789");

    type Case<'a> = (&'a str, Vec<String>, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            "missing config",
            train_args(&dir, "o1", &["--config", "/nonexistent/cfg.toml"]),
            vec!["/nonexistent/cfg.toml"],
        ),
        (
            "invalid toml",
            train_args(&dir, "o2", &["--config", &bad_toml]),
            vec!["bad.toml"],
        ),
        (
            "unknown field",
            train_args(&dir, "o3", &["--config", &unknown]),
            vec!["learning_rat", "unknown.toml"],
        ),
        (
            "unknown nested field",
            train_args(&dir, "o4", &["--config", &unknown_nested]),
            vec!["width"],
        ),
        (
            "wrong type",
            train_args(&dir, "o5", &["--config", &bad_type]),
            vec!["seed", "type.toml"],
        ),
        (
            "invalid value",
            train_args(&dir, "o6", &["--set", "model.n_head=3"]),
            vec!["model.n_head", "3", "n_embd"],
        ),
        (
            "unknown override",
            train_args(&dir, "o7", &["--set", "model.widht=3"]),
            vec!["widht"],
        ),
        (
            "malformed override",
            train_args(&dir, "o8", &["--set", "novalue"]),
            vec!["novalue", "key=value"],
        ),
        (
            "unknown precision",
            train_args(&dir, "o9", &["--set", "precision=fp8"]),
            vec!["fp8"],
        ),
        (
            "bad fault-injection steps",
            train_args(&dir, "o9b", &["--set", "poison_grad_steps=9-3"]),
            vec!["poison_grad_steps", "9-3", "ends before it starts"],
        ),
        (
            "empty data",
            train_args(&dir, "o10", &["--data", &empty]),
            vec!["empty.txt", "empty"],
        ),
        (
            "data shorter than context",
            train_args(&dir, "o11", &["--data", &short]),
            vec!["short.txt", "too short", "context 32"],
        ),
        (
            "missing data",
            train_args(&dir, "o12", &["--data", "/nonexistent/data.txt"]),
            vec!["/nonexistent/data.txt"],
        ),
        (
            "unknown backend",
            train_args(&dir, "o13", &["--backend", "tpu"]),
            vec!["tpu", "cpu", "cuda", "wgpu"],
        ),
        (
            "cuda without device",
            train_args(&dir, "o14", &["--backend", "cuda"]),
            vec!["cuda"],
        ),
        (
            "wgpu without device",
            train_args(&dir, "o15", &["--backend", "wgpu"]),
            vec!["wgpu"],
        ),
        (
            "one arithmetic problem",
            train_args(&dir, "o16", &["--set", "data.problems=1"]),
            vec!["data.problems", "too few", "use data.problems >="],
        ),
        (
            "a validation split shorter than the context",
            train_args(
                &dir,
                "o17",
                &[
                    "--set",
                    "data.problems=200",
                    "--set",
                    "model.n_positions=1024",
                ],
            ),
            vec!["data.problems", "context 1024"],
        ),
        (
            "too many threads",
            train_args(&dir, "o18", &["--set", "threads=100000"]),
            vec!["threads", "100000", "at most 1024"],
        ),
        (
            "a model too wide for any machine",
            train_args(&dir, "o19", &["--set", "model.n_embd=1000000"]),
            vec!["a training step needs about", "available"],
        ),
        (
            "a batch too large for any machine",
            train_args(&dir, "o20", &["--set", "batch_size=1000000000"]),
            vec!["batch_size 1000000000", "activations", "available"],
        ),
        (
            "a vocabulary too large for any machine",
            train_args(&dir, "o21", &["--set", "model.vocab_size=100000000000"]),
            vec!["vocabulary 100000000000", "available"],
        ),
        (
            "too many layers for any machine",
            train_args(&dir, "o22", &["--set", "model.n_layer=100000000"]),
            vec!["100000000 layers", "available"],
        ),
        (
            "compare from a folder that is not a study",
            s(&["compare", "--plain", "--from", "/nonexistent/study"]),
            vec!["/nonexistent/study", "not a precision-study folder"],
        ),
        (
            "missing checkpoint",
            s(&["eval", "/nonexistent/checkpoint-3"]),
            vec!["/nonexistent/checkpoint-3"],
        ),
        (
            "inspect a non-checkpoint",
            s(&["inspect", &dir.display().to_string()]),
            vec!["trainer_state.json"],
        ),
        (
            "negative temperature",
            s(&["sample", "/nonexistent/checkpoint-3", "--temperature=-1"]),
            vec!["temperature"],
        ),
    ];
    for (name, args, expected) in cases {
        // Built with the wgpu feature, `--backend wgpu` finds lavapipe wherever Mesa is
        // installed and trains instead of failing; the case holds only without the feature.
        if name == "wgpu without device" && cfg!(feature = "wgpu") {
            continue;
        }
        if name.ends_with("without device") {
            let (_, text) = mp_train(&args, &dir);
            assert!(
                text.contains("not compiled in") || text.contains("no device"),
                "{name}: neither NotCompiled nor NoDevice:\n{text}"
            );
        }
        expect_error(&dir, name, args, &expected);
    }
    // No failed run left a run folder behind (and none trained silently on the CPU).
    for i in 1..=22 {
        assert!(!dir.join(format!("o{i}")).exists(), "o{i} was created");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoints_of_another_model_truncated_ones_and_full_out_dirs_are_refused() {
    let dir = scratch("bad-ckpt");
    let (ok, text) = mp_train(&train_args(&dir, "run", &["--save-steps", "2"]), &dir);
    assert!(ok, "{text}");
    let run = dir.join("run");
    let ck2 = run.join("checkpoint-2").display().to_string();
    let ck4 = run.join("checkpoint-4");

    // Another model config.
    let mut args = train_args(&dir, "other", &["--resume", &ck2]);
    args.extend(s(&["--set", "model.n_embd=64"]));
    expect_error(
        &dir,
        "another model",
        args,
        &["another model", "model.n_embd", "64", "32"],
    );

    // A non-empty out dir is never overwritten without --overwrite.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    expect_error(
        &dir,
        "non-empty out",
        train_args(&dir, "run", &[]),
        &["not empty", "--overwrite"],
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);

    // Truncate the newest checkpoint's weights.
    let model = ck4.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let ck4s = ck4.display().to_string();
    expect_error(
        &dir,
        "truncated (resume)",
        train_args(&dir, "r2", &["--resume", &ck4s]),
        &["model.safetensors", "truncated"],
    );
    expect_error(
        &dir,
        "truncated (eval)",
        s(&["eval", &ck4s]),
        &["model.safetensors", "truncated"],
    );
    expect_error(
        &dir,
        "truncated (inspect)",
        s(&["inspect", &ck4s]),
        &["truncated"],
    );

    // A corrupt (same-size) optimizer file is caught by the checksum.
    let opt = run.join("checkpoint-2").join("optimizer.safetensors");
    let mut ob = std::fs::read(&opt).unwrap();
    let last = ob.len() - 1;
    ob[last] ^= 0x40;
    std::fs::write(&opt, &ob).unwrap();
    expect_error(
        &dir,
        "corrupt",
        s(&["inspect", &ck2]),
        &["optimizer.safetensors", "corrupt"],
    );
    ob[last] ^= 0x40;
    std::fs::write(&opt, &ob).unwrap();

    // A checkpoint at or past max_steps has nothing left to train: refused, not a no-op run
    // (also when trainer_state.json claims an absurd step).
    expect_error(
        &dir,
        "nothing left to train",
        train_args(&dir, "r3", &["--resume", &ck2, "--max-steps", "2"]),
        &["max_steps", "checkpoint-2", "at step 2", "nothing is left"],
    );
    assert!(!dir.join("r3").exists(), "r3 was created");

    // The previous checkpoint is still usable: resuming from the run folder skips the broken
    // newest one, says so, and continues from checkpoint-2.
    let mut args = s(&[
        "train",
        "--plain",
        "--resume",
        &run.display().to_string(),
        "--out",
    ]);
    args.push(dir.join("continued").display().to_string());
    let (ok, text) = mp_train(&args, &dir);
    assert!(ok, "{text}");
    assert!(
        text.contains("skipping") && text.contains("checkpoint-4"),
        "{text}"
    );
    assert!(text.contains("2 -> 4"), "{text}");
    let (ok, text) = mp_train(&s(&["inspect", &ck2]), &dir);
    assert!(
        ok && text.contains("transformer.h.0.attn.c_attn.weight"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_writer_into_a_running_folder_is_refused() {
    let dir = scratch("lock");
    let out = dir.join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_mp-train"))
        .args(train_args(&dir, "run", &["--max-steps", "100000"]))
        .current_dir(&dir)
        .env("MP_TRAIN_FONT", "none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the first run");
    // wait until the first run holds the lock (its pid is in the lock file)
    let lock = out.join(".lock");
    let pid = first.id().to_string();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != pid {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first run never took the lock"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (name, extra) in [
        ("overwrite", vec!["--overwrite"]),
        ("into the same folder", vec![]),
    ] {
        let (ok, text) = mp_train(&train_args(&dir, "run", &extra), &dir);
        assert!(!ok, "{name}: a second writer ran:\n{text}");
        assert!(!text.contains("panicked"), "{name}:\n{text}");
        if name == "overwrite" {
            assert!(
                text.contains("in use by another mp-train") && text.contains(&pid),
                "{text}"
            );
        }
    }
    // nothing of the first run was cleared
    assert!(out.join("config.toml").exists());
    first.kill().unwrap();
    first.wait().unwrap();
    // the lock died with its holder: the folder can be overwritten now
    let (ok, text) = mp_train(&train_args(&dir, "run", &["--overwrite"]), &dir);
    assert!(ok, "after the holder died:\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_folder_left_by_a_killed_run_resumes_and_heals() {
    let dir = scratch("heal");
    let (ok, text) = mp_train(&train_args(&dir, "run", &["--save-steps", "2"]), &dir);
    assert!(ok, "{text}");
    let run = dir.join("run");
    // what a kill leaves: a torn last metrics line, a temp file, a half-written checkpoint
    let metrics = run.join("metrics.jsonl");
    let mut m = std::fs::read_to_string(&metrics).unwrap();
    m.push_str("{\"step\":5,\"loss\":2.");
    std::fs::write(&metrics, m).unwrap();
    std::fs::write(run.join(".config.toml.tmp-999999"), "partial").unwrap();
    std::fs::create_dir_all(run.join(".checkpoint-6.tmp-999999")).unwrap();
    let ck = run.join("checkpoint-4").display().to_string();
    let (ok, text) = mp_train(
        &train_args(&dir, "run", &["--resume", &ck, "--max-steps", "6"]),
        &dir,
    );
    assert!(ok, "{text}");
    assert!(text.contains("dropped the torn last line"), "{text}");
    assert!(
        text.contains("removed") && text.contains(".config.toml.tmp-999999"),
        "{text}"
    );
    assert!(!run.join(".config.toml.tmp-999999").exists());
    assert!(!run.join(".checkpoint-6.tmp-999999").exists());
    assert!(run.join("checkpoint-6").exists());
    // a file no run writes is named when --overwrite refuses the folder
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    expect_error(
        &dir,
        "overwrite a folder with a foreign file",
        train_args(&dir, "run", &["--overwrite"]),
        &["notes.txt", "refusing to --overwrite"],
    );
    assert!(run.join("notes.txt").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigint_checkpoints_the_current_step_and_the_resume_is_bit_identical() {
    use mp_train::metrics::{StepRecord, read_jsonl};
    let dir = scratch("sigint");
    let run = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_mp-train"))
        .args(train_args(
            &dir,
            "run",
            &["--max-steps", "2000", "--save-steps", "100000"],
        ))
        .current_dir(&dir)
        .env("MP_TRAIN_FONT", "none")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the run");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(t0.elapsed().as_secs() < 60, "the run logged nothing");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an interrupted run must exit non-zero:\n{text}"
    );
    assert!(
        text.contains("interrupted by a signal after step"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    let step: u64 = text
        .split("after step ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step in:\n{text}"));
    let ck = run.join(format!("checkpoint-{step}"));
    assert!(
        ck.join("model.safetensors").exists(),
        "no checkpoint of step {step}:\n{text}"
    );
    assert!(text.contains("--resume"), "{text}");
    // resume to the end; an uninterrupted run (the same schedule) logs the same losses
    assert!(step < 2000, "the run ended before the signal:\n{text}");
    let until = "2000".to_string();
    let ck_s = ck.display().to_string();
    let (ok, t) = mp_train(
        &train_args(&dir, "run", &["--resume", &ck_s, "--max-steps", &until]),
        &dir,
    );
    assert!(ok, "{t}");
    let (ok, t) = mp_train(
        &train_args(&dir, "straight", &["--max-steps", &until]),
        &dir,
    );
    assert!(ok, "{t}");
    let losses = |d: &str| -> Vec<(u64, u32)> {
        let r: Vec<StepRecord> = read_jsonl(&dir.join(d).join("metrics.jsonl")).unwrap();
        r.iter().map(|r| (r.step, r.loss.to_bits())).collect()
    };
    let (a, b) = (losses("run"), losses("straight"));
    assert_eq!(
        a.len(),
        b.len(),
        "resumed {} records, uninterrupted {}",
        a.len(),
        b.len()
    );
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "interrupted after step {step}: the losses differ first at record {i}: {:?} vs {:?}",
            a[i], b[i]
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Started by an MPI launcher, a binary built without MPI refuses to run (N copies would
/// each train alone into the same folder).
#[cfg(not(feature = "mpi"))]
#[test]
fn a_binary_without_mpi_refuses_an_mpi_launch() {
    let dir = scratch("no-mpi");
    let out = Command::new(env!("CARGO_BIN_EXE_mp-train"))
        .args(train_args(&dir, "run", &[]))
        .current_dir(&dir)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .expect("running mp-train");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("OMPI_COMM_WORLD_SIZE=2") && text.contains("--features mpi"),
        "{text}"
    );
    assert!(!dir.join("run").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
