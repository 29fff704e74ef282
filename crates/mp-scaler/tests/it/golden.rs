//! Reading the golden files of `../shared/golden` (PyTorch-generated; see its README).

use serde_json::Value;
use std::path::PathBuf;

/// The golden folder, or `None` (after a loud notice) when it is absent.
pub fn dir(test: &str) -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("SKIPPED: {test}: golden folder absent ({})", d.display());
        None
    }
}

/// Parses a golden JSON file; Python's bare `NaN`/`Infinity`/`-Infinity` tokens become the
/// strings `"nan"`, `"inf"`, `"-inf"` (read back by [`f`]).
pub fn load(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text
        .replace("-Infinity", "\"-inf\"")
        .replace("Infinity", "\"inf\"")
        .replace("NaN", "\"nan\"");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A number (or one of the non-finite strings) as f64.
pub fn f(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("a JSON number"),
        Value::String(s) => s
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other}"),
    }
}

/// A list of lists of numbers, flattened in order to f32 (the flat arena layout).
pub fn flat(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of tensors")
        .iter()
        .flat_map(|t| {
            t.as_array()
                .expect("a tensor as a list")
                .iter()
                .map(|x| f(x) as f32)
        })
        .collect()
}

/// Asserts `|ours - ref| <= 1e-6 + 1e-6 |ref|` elementwise; returns the largest fraction of
/// that bound used.
pub fn assert_close(what: &str, ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        let (o, r) = (f64::from(o), f64::from(r));
        let bound = 1e-6 + 1e-6 * r.abs();
        assert!(
            (o - r).abs() <= bound,
            "{what}[{i}]: ours {o} vs reference {r} (diff {})",
            (o - r).abs()
        );
        worst = worst.max((o - r).abs() / bound);
    }
    worst
}
