//! Fault injection for tests of the skip path: the set of optimizer steps at which the
//! trainer poisons its gradient arena (config field `poison_grad_steps`, empty by default).
//!
//! A poisoned step writes `+inf` into the first gradient element after the backward pass and
//! before the non-finite check, as an overflow in the backward pass would. A correct run then
//! skips exactly those steps (weights and optimizer state untouched, the dynamic loss scale
//! backed off), and a resumed run replays them bit for bit.

use std::fmt;

/// Steps as a comma-separated list of items: `N` (one step), `A-B` (every step from `A` to
/// `B`, inclusive) or `A-B/K` (every `K`-th step from `A` to `B`). Steps count from 0 (the
/// first optimizer step is step 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepSet {
    ranges: Vec<(u64, u64, u64)>,
}

impl StepSet {
    /// Parses the list (an empty or blank string is the empty set); the error names the item
    /// and what is wrong with it.
    pub fn parse(s: &str) -> Result<StepSet, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |v: &str, what: &str| {
                v.trim().parse::<u64>().map_err(|_| {
                    format!("{what} {v:?} of item {item:?} is not a non-negative integer")
                })
            };
            let (span, every) = match item.split_once('/') {
                Some((span, k)) => (span, num(k, "step")?),
                None => (item, 1),
            };
            if every == 0 {
                return Err(format!(
                    "item {item:?}: the step after '/' must be at least 1"
                ));
            }
            let (first, last) = match span.split_once('-') {
                Some((a, b)) => (num(a, "start")?, num(b, "end")?),
                None => {
                    let n = num(span, "step")?;
                    (n, n)
                }
            };
            if last < first {
                return Err(format!("item {item:?}: the range ends before it starts"));
            }
            ranges.push((first, last, every));
        }
        Ok(StepSet { ranges })
    }

    /// True when no step is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `step` is in the set.
    pub fn contains(&self, step: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(a, b, k)| (a..=b).contains(&step) && (step - a).is_multiple_of(k))
    }
}

impl fmt::Display for StepSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b, k)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match (a == b, k) {
                (true, _) => write!(f, "{a}")?,
                (false, 1) => write!(f, "{a}-{b}")?,
                (false, k) => write!(f, "{a}-{b}/{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_single_ranges_and_strides() {
        let s = StepSet::parse("3, 10-12,20-40/10").unwrap();
        let got: Vec<u64> = (0..50).filter(|&i| s.contains(i)).collect();
        assert_eq!(got, [3, 10, 11, 12, 20, 30, 40]);
        assert_eq!(s.to_string(), "3,10-12,20-40/10");
        assert!(StepSet::parse("").unwrap().is_empty());
        assert!(StepSet::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn bad_items_are_named() {
        for (bad, says) in [
            ("x", "\"x\""),
            ("5-2", "ends before it starts"),
            ("1-9/0", "at least 1"),
            ("-3", "start \"\""),
            ("2-", "end \"\""),
        ] {
            let e = StepSet::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
