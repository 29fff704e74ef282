//! The precision study over several seeds: every arm runs each seed into its own folder, the
//! report gives the spread and how many seeds reached the target, and a re-render of the
//! finished folder writes the same report.

use crate::common::{scratch, tiny};
use mp_train::compare;
use mp_train::run::Progress;

#[test]
fn a_study_over_two_seeds_reports_their_spread_and_rerenders_the_same() {
    let out = scratch("study-seeds").join("study");
    let mut cfg = tiny(6);
    cfg.eval_problems = 4;
    let (report, results) = compare::compare(&cfg, &out, false, Progress::Quiet, 2).unwrap();
    assert_eq!(results.len(), compare::VARIANTS.len());
    for r in &results {
        assert_eq!(r.more_seeds.len(), 1, "{}", r.variant.name);
        assert_eq!(r.more_seeds[0].seed, cfg.seed + 1);
        assert!(r.more_seeds[0].dir.join("summary.json").exists());
        // precision health in every run folder of the study
        for d in [&r.dir, &r.more_seeds[0].dir] {
            let recs: Vec<mp_train::health::HealthRecord> =
                mp_train::metrics::read_jsonl(&d.join(mp_train::run::HEALTH_FILE)).unwrap();
            assert_eq!(recs.len(), 6, "one record per logged step");
            assert!(d.join("precision_health.png").is_file());
        }
    }
    for (f, _) in compare::SEED_PLOTS {
        assert!(out.join(f).is_file(), "{f}");
    }
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("## Across seeds (2 seeds from 1337"),
        "{text}"
    );
    assert!(text.contains("| fp32 | 2 of 2 |"), "{text}");
    assert!(text.contains("exact match in "), "{text}");
    assert!(text.contains("## Precision health"), "{text}");
    assert!(text.contains("jump: val loss < 1.2"), "{text}");
    assert!(text.contains("The five tensors with the most"), "{text}");
    let (_, again) = compare::rerender(&out).unwrap();
    assert_eq!(again.iter().map(|r| r.more_seeds.len()).sum::<usize>(), 5);
    assert_eq!(std::fs::read_to_string(&report).unwrap(), text);
    // `--report` next to the study folder, named like it: its plot folder is the study folder
    // itself, whose plots stay as they are (a copy onto itself would empty them)
    let sizes = |dir: &std::path::Path| -> Vec<u64> {
        compare::SEED_PLOTS
            .iter()
            .map(|(f, _)| std::fs::metadata(dir.join(f)).unwrap().len())
            .collect()
    };
    let before = sizes(&out);
    assert!(before.iter().all(|&n| n > 0));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_mp-train"))
        .args(["compare", "--plain", "--from"])
        .arg(&out)
        .arg("--report")
        .arg(out.with_extension("md"))
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(sizes(&out), before);
    let copied = std::fs::read_to_string(out.with_extension("md")).unwrap();
    assert!(copied.contains("](study/"), "{copied}");
    assert!(
        compare::compare(
            &cfg,
            &scratch("study-zero").join("s"),
            false,
            Progress::Quiet,
            0
        )
        .is_err()
    );
}

#[test]
fn the_jump_is_the_first_evaluation_below_the_threshold() {
    let e = |step, val_loss| mp_train::metrics::EvalRecord {
        step,
        val_loss,
        accuracy: None,
        problems: 0,
    };
    let evals = [
        e(250, 1.41),
        e(500, 1.3),
        e(750, 1.1),
        e(1000, 1.25),
        e(1250, 0.9),
    ];
    assert_eq!(compare::jump_step(&evals, 1.2), Some(750));
    assert_eq!(compare::jump_step(&evals, 0.5), None);
}
