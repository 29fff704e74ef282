//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask test`: format check, [`tidy`], clippy with `-D warnings`, the docs with
//!   `-D warnings`, every test in release mode, the `custom_op` example.
//! - `cargo xtask tidy`: the repository's structural rules (see [`tidy`]).
//! - `cargo xtask bench [--wgpu] [FILTER]`: the criterion benches (with `--wgpu`, the wgpu
//!   backend's halves too), then a summary table.
//! - `cargo xtask test-gpu [--build-only]`, `cargo xtask bench --gpu`: the CUDA backend's
//!   GPU run (see [`gpu`]).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

mod gpu;
mod tidy;

/// The project's automation.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// cargo fmt --check, tidy, clippy -D warnings, cargo doc -D warnings, every test in
    /// release mode and the mp-autograd custom_op example (what CI runs)
    Test {
        /// Passed on to `cargo test --workspace --release` (a filter, `-- --nocapture`, ...)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// The structural rules: no cfg(feature) outside mp-kernels, every backend op in the
    /// conformance suite, CUDA kernel table = .cu sources, WGSL shaders = their declarations,
    /// docs on every crate and module
    Tidy,
    /// The criterion benches, then a summary table of medians and throughputs
    Bench {
        /// Build the wgpu backend in too, so its GEMM, attention and training-step benches run
        /// (they need an adapter: `WGPU_BACKEND=vulkan` on lavapipe)
        #[arg(long, conflicts_with = "gpu")]
        wgpu: bool,
        /// Run the CUDA benchmark on this machine's GPU instead
        #[arg(long)]
        gpu: bool,
        /// Only the benches whose names contain one of these
        #[arg(conflicts_with = "gpu")]
        filters: Vec<String>,
    },
    /// Build the CUDA tests and benchmark into .gpu/ and run them on this machine's GPU
    /// (`bash .gpu/run.sh`)
    TestGpu {
        /// Only build the bundle, for `bash .gpu/run.sh` on a GPU machine
        #[arg(long)]
        build_only: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Test { cargo_test_args } => test(&cargo_test_args),
        Task::Tidy => tidy::tidy(&root()),
        Task::Bench { gpu: true, .. } => gpu::bench(),
        Task::Bench { wgpu, filters, .. } => bench(wgpu, &filters),
        Task::TestGpu { build_only } => gpu::test_gpu(build_only),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

fn test(rest: &[String]) -> Result<()> {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    tidy::tidy(&root())?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // every public item's docs build without a broken link, the GPU backends' included
    let status = Command::new("cargo")
        .args([
            "doc",
            "--workspace",
            "--no-deps",
            "--features",
            "mp-kernels/wgpu,mp-kernels/cuda",
        ])
        .env("RUSTDOCFLAGS", "-D warnings")
        .current_dir(root())
        .status()
        .context("could not start cargo doc")?;
    if !status.success() {
        bail!("`cargo doc` found broken or missing docs ({status})");
    }
    let mut args = vec!["test", "--workspace", "--release"];
    args.extend(rest.iter().map(String::as_str));
    run("cargo", &args)?;
    // a user-defined tape op, from outside the crate, through its gradient check
    run(
        "cargo",
        &[
            "run",
            "--release",
            "-p",
            "mp-autograd",
            "--example",
            "custom_op",
        ],
    )
}

fn bench(wgpu: bool, filters: &[String]) -> Result<()> {
    // `--benches` skips the benches whose features are off (`--bench *` refused the wgpu one)
    let mut args = vec!["bench", "--workspace", "--benches"];
    // the wgpu halves (GEMM, attention, training step beside the CPU)
    if wgpu {
        args.extend(["--features", "mp-kernels/wgpu,mp-train/wgpu"]);
    }
    if !filters.is_empty() {
        args.push("--");
        args.extend(filters.iter().map(String::as_str));
    }
    run("cargo", &args)?;
    summary()
}

/// Prints every criterion estimate found under `target/criterion` as a table of
/// median time and throughput.
fn summary() -> Result<()> {
    let dir = root().join("target/criterion");
    let mut rows = Vec::new();
    collect(&dir, &mut rows)?;
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "\n{:<60} {:>14} {:>14}",
        "benchmark", "median", "throughput"
    );
    for (name, median_ns, throughput) in rows {
        let tp = throughput
            .map(|t| format!("{t:.2} GB/s"))
            .unwrap_or_default();
        println!("{name:<60} {:>11.3} ms {tp:>14}", median_ns / 1e6);
    }
    Ok(())
}

fn collect(dir: &Path, rows: &mut Vec<(String, f64, Option<f64>)>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.ends_with("new") && path.join("estimates.json").exists() {
            let est: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path.join("estimates.json"))?)?;
            let bench: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path.join("benchmark.json"))?)?;
            let median = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            let name = bench["full_id"].as_str().unwrap_or("?").to_string();
            let bytes = bench["throughput"]["Bytes"].as_f64();
            rows.push((name, median, bytes.map(|b| b / median)));
        } else if path.is_dir() {
            collect(&path, rows)?;
        }
    }
    Ok(())
}
