//! `cargo xtask tidy`: the repository's structural rules, checked on the source text (also run
//! by `cargo xtask test`). Each rule prints what breaks it, with the file.
//!
//! - **features**: no `cfg(feature = ...)` in the library, binary, bench or example code of
//!   any crate but `mp-kernels` (the GPU backends' stand-ins make it unnecessary) and `mp-dist`
//!   (its engines, MPI, exist only with their feature, like the backends); test targets
//!   may be compiled only with their feature, so a GPU test never shows as passed without it.
//! - **conformance**: every op of every backend family trait (`mp-kernels/src/backend/*.rs`)
//!   is called in the conformance suite that both GPU targets run (`tests/conformance/`).
//! - **cuda-kernels**: the CUDA kernel table (`cuda/kernels.rs`) and the `.cu` sources agree,
//!   each kernel in its module's file, and every kernel the backend launches is in the table.
//! - **wgsl**: each WGSL shader's entry points, tensors and `C_*` constants agree with its
//!   `Shader` declaration (`wgpu/codegen.rs`), and every entry point the backend dispatches
//!   exists.
//! - **docs**: `missing_docs` is a workspace lint every crate inherits (so clippy and rustdoc
//!   with `-D warnings` refuse an undocumented public item), and every source file of a crate
//!   starts with its module docs (`//!`).

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A rule: the problems it finds in the repository at `root`.
type Rule = fn(&Path) -> Result<Vec<String>>;

/// Runs every rule; fails listing each violation.
pub fn tidy(root: &Path) -> Result<()> {
    let rules: [(&str, Rule); 5] = [
        ("features", features),
        ("conformance", conformance),
        ("cuda-kernels", cuda_kernels),
        ("wgsl", wgsl),
        ("docs", docs),
    ];
    let mut failed = 0;
    for (name, rule) in rules {
        let problems = rule(root).with_context(|| format!("tidy rule {name}"))?;
        if problems.is_empty() {
            eprintln!("tidy {name}: ok");
        } else {
            failed += problems.len();
            for p in problems {
                eprintln!("tidy {name}: {p}");
            }
        }
    }
    if failed > 0 {
        bail!("cargo xtask tidy: {failed} problem(s)");
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn crates(root: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    v.sort();
    Ok(v)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn features(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("xtask/src")];
    for c in crates(root)? {
        if c.ends_with("mp-kernels") || c.ends_with("mp-dist") {
            continue;
        }
        dirs.extend(["src", "benches", "examples"].map(|d| c.join(d)));
    }
    for d in dirs {
        for f in rust_files(&d)? {
            for (i, line) in read(&f)?.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                let cfg = ["#[cfg(", "#![cfg(", "cfg!(", "cfg_attr("]
                    .iter()
                    .any(|c| code.contains(c));
                if cfg && code.contains("feature") {
                    out.push(format!("{}:{}: `{}`", rel(root, &f), i + 1, line.trim()));
                }
            }
        }
    }
    Ok(out)
}

/// The method names declared in the `pub trait` blocks of `src`.
fn trait_methods(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_trait = false;
    for line in src.lines() {
        if line.starts_with("pub trait ") {
            in_trait = true;
        } else if line.starts_with('}') {
            in_trait = false;
        } else if in_trait
            && let Some(rest) = line.strip_prefix("    fn ")
            && let Some(name) = rest.split(['(', '<']).next()
        {
            out.push(name.to_string());
        }
    }
    out
}

fn conformance(root: &Path) -> Result<Vec<String>> {
    let kernels = root.join("crates/mp-kernels");
    let mut suite = String::new();
    for f in rust_files(&kernels.join("tests/conformance"))? {
        suite += &read(&f)?;
    }
    let mut out = Vec::new();
    for f in rust_files(&kernels.join("src/backend"))? {
        // the family files (mod.rs holds the buffer traits, contract.rs the checks)
        if f.ends_with("mod.rs") || f.ends_with("contract.rs") {
            continue;
        }
        for op in trait_methods(&read(&f)?) {
            if !suite.contains(&format!(".{op}(")) {
                out.push(format!(
                    "`{op}` ({}) is not called in tests/conformance/",
                    rel(root, &f)
                ));
            }
        }
    }
    Ok(out)
}

/// String literals `"..."` of `s` that look like identifiers.
fn literals(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect()
}

fn cuda_kernels(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("crates/mp-kernels");
    let table_src = read(&dir.join("src/cuda/kernels.rs"))?;
    // KernelModule::X => "file.cu"
    let mut files = BTreeMap::new();
    for line in table_src.lines() {
        if let Some((m, rest)) = line.trim().split_once(" => \"")
            && let Some(file) = rest.strip_suffix("\",")
            && file.ends_with(".cu")
        {
            files.insert(
                m.trim_start_matches("KernelModule::").to_string(),
                file.to_string(),
            );
        }
    }
    // ("mp_x", KernelModule::Y),
    let mut table = BTreeMap::new();
    for line in table_src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("(\"mp_")
            && let Some((name, module)) = rest.split_once("\", KernelModule::")
        {
            let module = module.trim_end_matches("),").to_string();
            table.insert(format!("mp_{name}"), module);
        }
    }
    let mut out = Vec::new();
    if table.is_empty() || files.is_empty() {
        out.push("could not read the KERNELS table or the module files".to_string());
    }
    let mut defined = BTreeSet::new();
    for (module, file) in &files {
        let src = read(&dir.join("kernels").join(file))?;
        for part in src.split("extern \"C\" __global__ void ").skip(1) {
            // the name follows a `__launch_bounds__(..)` where there is one
            let part = match part.strip_prefix("__launch_bounds__(") {
                Some(bounded) => bounded.split_once(") ").map_or("", |(_, rest)| rest),
                None => part,
            };
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            match table.get(&name) {
                Some(m) if m == module => {}
                Some(m) => out.push(format!(
                    "{name} is defined in {file} but the table says {m}"
                )),
                None => out.push(format!("{name} ({file}) is not in KERNELS")),
            }
            defined.insert(name);
        }
    }
    for name in table.keys() {
        if !defined.contains(name) {
            out.push(format!("KERNELS names {name}, which no .cu file defines"));
        }
    }
    for f in rust_files(&dir.join("src/cuda"))? {
        if f.ends_with("kernels.rs") {
            continue;
        }
        for lit in literals(&read(&f)?) {
            if lit.starts_with("mp_") && !table.contains_key(&lit) {
                out.push(format!(
                    "{} launches {lit}, which is not in KERNELS",
                    rel(root, &f)
                ));
            }
        }
    }
    Ok(out)
}

/// A `Shader` declaration of codegen.rs.
struct ShaderDecl {
    konst: String,
    file: String,
    tensors: Vec<String>,
    consts: Vec<String>,
}

fn shader_decls(codegen: &str) -> Vec<ShaderDecl> {
    let mut out = Vec::new();
    for part in codegen.split("pub(crate) const ").skip(1) {
        let Some((konst, rest)) = part.split_once(": Shader = Shader {") else {
            continue;
        };
        let body = rest.split("};").next().unwrap_or("");
        let field = |name: &str| {
            body.lines()
                .find(|l| l.trim_start().starts_with(name))
                .map(literals)
                .unwrap_or_default()
        };
        let file = body
            .split("shaders/")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        out.push(ShaderDecl {
            konst: konst.trim().to_string(),
            file,
            tensors: field("tensors:"),
            consts: field("consts:"),
        });
    }
    out
}

/// The text of `s` up to the `)` that closes the call `s` starts inside of.
fn rest_of_call(s: &str) -> &str {
    let mut depth = 1i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    s
}

/// Identifiers of `src` (maximal runs of alphanumerics and `_`).
fn idents(src: &str) -> Vec<&str> {
    src.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
        .collect()
}

fn wgsl(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("crates/mp-kernels");
    let decls = shader_decls(&read(&dir.join("src/wgpu/codegen.rs"))?);
    let ops = read(&dir.join("src/wgpu/ops.rs"))?;
    let mut out = Vec::new();
    if decls.is_empty() {
        out.push("no Shader declarations found in wgpu/codegen.rs".to_string());
    }
    const ACCESSORS: [&str; 7] = [
        "_ld", "_st", "_bits", "_round", "_st_bits", "_st_sr", "_idx",
    ];
    for d in &decls {
        let src = read(&dir.join("shaders").join(&d.file))?;
        let code: String = src
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        // entry points: `@compute ... fn name(`
        let mut entries = BTreeSet::new();
        for part in code.split("@compute").skip(1) {
            if let Some(after) = part.split("fn ").nth(1) {
                entries.insert(after.split('(').next().unwrap_or("").trim().to_string());
            }
        }
        let ids = idents(&code);
        let mut used_tensors = BTreeSet::new();
        for id in &ids {
            for acc in ACCESSORS {
                if let Some(t) = id.strip_suffix(acc)
                    && d.tensors.iter().any(|x| x == t)
                {
                    used_tensors.insert(t.to_string());
                }
            }
        }
        for t in &d.tensors {
            if !used_tensors.contains(t) {
                out.push(format!(
                    "{}: tensor `{t}` is declared but the body never reads or writes it",
                    d.file
                ));
            }
        }
        let used_consts: BTreeSet<&str> = ids
            .iter()
            .copied()
            .filter(|i| i.starts_with("C_"))
            .collect();
        for c in &used_consts {
            if !d.consts.iter().any(|x| x == c) {
                out.push(format!(
                    "{}: constant `{c}` is used but not declared",
                    d.file
                ));
            }
        }
        for c in &d.consts {
            if !used_consts.contains(c.as_str()) {
                out.push(format!("{}: constant `{c}` is declared but unused", d.file));
            }
        }
        // every entry the backend dispatches through this shader exists
        let key = format!("shaders::{}", d.konst);
        for part in ops.split(&key).skip(1) {
            for lit in literals(rest_of_call(part)) {
                if !lit.starts_with("C_") && !entries.contains(&lit) {
                    out.push(format!(
                        "wgpu/ops.rs dispatches `{lit}` of {}, which has no such entry point",
                        d.file
                    ));
                }
            }
        }
        if d.konst == "HEADS" {
            for part in ops.split("self.heads(OP, ").skip(1) {
                if let Some(lit) = literals(part.split(',').next().unwrap_or("")).first()
                    && !entries.contains(lit)
                {
                    out.push(format!(
                        "wgpu/ops.rs dispatches `{lit}` of {}, which has no such entry point",
                        d.file
                    ));
                }
            }
        }
        if entries.is_empty() {
            out.push(format!("{}: no @compute entry point", d.file));
        }
    }
    Ok(out)
}

fn docs(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let ws = read(&root.join("Cargo.toml"))?;
    if !ws.contains("missing_docs = \"warn\"") && !ws.contains("missing_docs = \"deny\"") {
        out.push("Cargo.toml: [workspace.lints.rust] lacks missing_docs".to_string());
    }
    let mut manifests = vec![root.join("xtask/Cargo.toml")];
    for c in crates(root)? {
        manifests.push(c.join("Cargo.toml"));
        for f in rust_files(&c.join("src"))? {
            let src = read(&f)?;
            if !src.trim_start().starts_with("//!") {
                out.push(format!(
                    "{}: no module docs (`//!`) at the top",
                    rel(root, &f)
                ));
            }
        }
    }
    for m in manifests {
        let src = read(&m)?;
        if !src.contains("[lints]\nworkspace = true") {
            out.push(format!(
                "{}: does not inherit the workspace lints",
                rel(root, &m)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsers_read_what_they_claim() {
        let src = "pub trait T: X {\n    fn a(&self);\n    fn b<T>(&self) {}\n}\nfn c() {}\n";
        assert_eq!(trait_methods(src), ["a", "b"]);
        assert_eq!(literals(r#"f("main", "C_OP", "a b")"#), ["main", "C_OP"]);
        assert_eq!(
            rest_of_call(r#", "main", &[("C_OP", 1)]) + g("x")"#),
            r#", "main", &[("C_OP", 1)]"#
        );
        let decl = "pub(crate) const P: Shader = Shader {\n name: \"p\",\n body: include_str!(\"../../shaders/p.wgsl\"),\n tensors: &[\"a\", \"out\"],\n consts: &[\"C_OP\"],\n };";
        let d = &shader_decls(decl)[0];
        assert_eq!((d.konst.as_str(), d.file.as_str()), ("P", "p.wgsl"));
        assert_eq!(d.tensors, ["a", "out"]);
        assert_eq!(d.consts, ["C_OP"]);
    }

    #[test]
    fn the_repository_is_tidy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        tidy(root).unwrap();
    }
}
