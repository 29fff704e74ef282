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
    }
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.contains("## Across seeds (2 seeds from 1337"),
        "{text}"
    );
    assert!(text.contains("| fp32 | 2 of 2 |"), "{text}");
    assert!(text.contains("exact match in "), "{text}");
    let (_, again) = compare::rerender(&out).unwrap();
    assert_eq!(again.iter().map(|r| r.more_seeds.len()).sum::<usize>(), 5);
    assert_eq!(std::fs::read_to_string(&report).unwrap(), text);
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
