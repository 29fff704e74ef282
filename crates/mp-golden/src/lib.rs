//! The golden vectors every crate's tests compare against, and the few readers they share.
//!
//! The files live in the repository's `golden/` folder (copied from the reference run;
//! `golden/generate.py` regenerates them from PyTorch, transformers and ml_dtypes), so a fresh
//! clone runs every golden test. `MP_GOLDEN_DIR` points the tests at another folder of the same
//! format (the GPU bundle carries its own copy; a regenerated set can be tried the same way).
//! A missing file is a test failure naming the folder, never a skip.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The environment variable that replaces the repository's `golden/` folder.
pub const DIR_ENV: &str = "MP_GOLDEN_DIR";

/// The golden folder: `$MP_GOLDEN_DIR` when set, else the repository's `golden/`.
pub fn dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => repository_dir(),
    }
}

/// The repository's own `golden/` folder.
pub fn repository_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../golden")
}

/// The path of one golden file; panics, naming the folder and `MP_GOLDEN_DIR`, when it is
/// missing.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(
        p.is_file(),
        "golden file {} is missing (the folder is the repository's golden/ or ${DIR_ENV})",
        p.display()
    );
    p
}

/// Parses a golden JSON file. Python's bare `NaN` / `Infinity` / `-Infinity` tokens (outside
/// strings) become the strings `"nan"`, `"inf"`, `"-inf"`, which [`num`] reads back.
pub fn load_json(name: &str) -> Value {
    let p = path(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&quote_non_finite(&text))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Quotes the non-finite number tokens Python's `json` writes, leaving strings alone.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some((token, quoted)) = [
            ("-Infinity", "\"-inf\""),
            ("Infinity", "\"inf\""),
            ("NaN", "\"nan\""),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t))
        {
            out.push_str(quoted);
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A number, or one of the strings `"nan"`, `"inf"`, `"-inf"`, as f64.
pub fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("a JSON number"),
        Value::String(s) => s
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {s:?}")),
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
                .map(|x| num(x) as f32)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_holds_every_golden_file_its_readme_lists() {
        let readme =
            std::fs::read_to_string(repository_dir().join("README.md")).expect("golden/README.md");
        let listed: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .flat_map(|l| l.split('|').next())
            .flat_map(|cell| cell.split(", "))
            .map(|f| f.trim().trim_matches('`'))
            .collect();
        assert!(listed.len() >= 10, "README lists {listed:?}");
        for f in listed {
            path(f);
        }
    }

    #[test]
    fn non_finite_tokens_read_back() {
        let v: Value = serde_json::from_str(&quote_non_finite(
            r#"{"a": [NaN, -Infinity, Infinity], "note": "NaN \" Infinity"}"#,
        ))
        .unwrap();
        assert!(num(&v["a"][0]).is_nan());
        assert_eq!(num(&v["a"][1]), f64::NEG_INFINITY);
        assert_eq!(v["note"], "NaN \" Infinity");
        assert!(num(&Value::String("nan".into())).is_nan());
        assert_eq!(num(&Value::String("-inf".into())), f64::NEG_INFINITY);
        assert_eq!(num(&serde_json::json!(1.5)), 1.5);
    }
}
