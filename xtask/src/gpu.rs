//! `cargo xtask test-gpu` and `cargo xtask bench --gpu`: the CUDA backend's GPU run.
//!
//! The machines that build this project usually have no GPU, and the GPU machine has no Rust
//! toolchain. So `test-gpu --build-only` builds here (release, `--features nccl`: CUDA with
//! NCCL) the CUDA test binary, mp-train's tests (the GPT and Llama golden tests, the training run
//! that tracks the CPU, and one rank with NCCL, on CUDA) and the benchmark, and copies them into `.gpu/` with the golden files those tests
//! read, PyTorch's reference script and `run.sh`; on the GPU machine, `bash .gpu/run.sh` runs everything in one call and ends with
//! `N passed, N failed`. Without `--build-only`, `test-gpu` also runs it, and fails (non-zero)
//! when this machine has no GPU: a missing device is never a pass.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::root;

/// The runner script copied to `.gpu/run.sh` (`@COMMIT@` is replaced by the commit).
const RUN_SH: &str = include_str!("gpu/run.sh");

/// Builds one cargo target and returns the path of the executable it produced.
fn build_executable(args: &[&str], what: &str) -> Result<PathBuf> {
    eprintln!(
        "$ cargo {} --message-format=json-render-diagnostics",
        args.join(" ")
    );
    let output = Command::new("cargo")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    if !output.status.success() {
        bail!("building {what} failed");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no executable for {what}"))
}

/// Copies `from` to `to`, replacing a previous (possibly read-only) copy.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_file(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies an executable without its debug information (the bundle travels to the GPU machine
/// under a size limit); falls back to a plain copy when `strip` is unavailable.
fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    copy(from, to)?;
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg(to)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        eprintln!(
            "warning: could not strip {}: copied with debug info",
            to.display()
        );
    }
    Ok(())
}

/// The golden files mp-train's GPT and Llama tests read (`golden/gpt2_tiny.*`,
/// `llama_tiny.*`).
const GOLDEN_FILES: &[&str] = &[
    "gpt2_tiny.json",
    "gpt2_tiny.safetensors",
    "gpt2_tiny.logits.safetensors",
    "gpt2_tiny.grads.safetensors",
    "llama_tiny.json",
    "llama_tiny.config.json",
    "llama_tiny.safetensors",
    "llama_tiny.logits.safetensors",
    "llama_tiny.grads.safetensors",
];

/// Copies the golden files into the bundle: on the GPU machine the test binary cannot see
/// the repository's `golden/`, and `run.sh` points `MP_GOLDEN_DIR` here. Missing files are an error, so the
/// golden tests never pass there by skipping.
fn copy_goldens(to: &Path) -> Result<()> {
    let from = root().join("golden");
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for name in GOLDEN_FILES {
        let src = from.join(name);
        if !src.is_file() {
            bail!(
                "{} not found: the GPU bundle needs the golden files of golden/",
                src.display()
            );
        }
        copy(&src, &to.join(name))?;
    }
    Ok(())
}

/// Builds the CUDA test binary and the benchmark and fills `.gpu/`. Returns the folder.
fn build_bundle() -> Result<PathBuf> {
    let tests = build_executable(
        &[
            "test",
            "-p",
            "mp-kernels",
            "--features",
            "nccl",
            "--release",
            "--test",
            "cuda",
            "--no-run",
        ],
        "the CUDA tests",
    )?;
    let bench = build_executable(
        &[
            "build",
            "-p",
            "mp-kernels",
            "--features",
            "cuda",
            "--release",
            "--example",
            "cuda_bench",
        ],
        "the CUDA benchmark",
    )?;
    let dir = root().join(".gpu");
    std::fs::create_dir_all(&dir).context("creating .gpu/")?;
    copy_stripped(&tests, &dir.join("cuda-tests"))?;
    copy_stripped(&bench, &dir.join("cuda_bench"))?;
    // The trainer with the CUDA backend: training runs on the GPU, tracked against the CPU.
    let trainer = build_executable(
        &[
            "build",
            "-p",
            "mp-train",
            "--features",
            "nccl",
            "--release",
            "--bin",
            "mp-train",
        ],
        "mp-train with the CUDA backend",
    )?;
    copy_stripped(&trainer, &dir.join("mp-train"))?;
    // mp-train's tests with the CUDA backend: the GPT golden tests and the training run that
    // tracks the CPU (`run.sh` runs the ones named `cuda`), with the golden files they read.
    let train_tests = build_executable(
        &[
            "test",
            "-p",
            "mp-train",
            "--features",
            "nccl",
            "--release",
            "--test",
            "it",
            "--no-run",
        ],
        "the mp-train tests with the CUDA backend",
    )?;
    copy_stripped(&train_tests, &dir.join("train-tests"))?;
    copy_goldens(&dir.join("golden"))?;
    // mp-dtype's tests: the GPU machine's CPU may have the AVX-512 paths this one lacks.
    let dtype_tests = build_executable(
        &[
            "test",
            "-p",
            "mp-dtype",
            "--release",
            "--test",
            "it",
            "--no-run",
        ],
        "the mp-dtype tests",
    )?;
    copy_stripped(&dtype_tests, &dir.join("dtype-tests"))?;
    // mp-kernels' unit tests: the AVX-512 BF16 GEMM against its emulation, on a CPU that has it.
    let kernel_units = build_executable(
        &["test", "-p", "mp-kernels", "--release", "--lib", "--no-run"],
        "the mp-kernels unit tests",
    )?;
    copy_stripped(&kernel_units, &dir.join("kernels-units"))?;
    // The wgpu backend's tests, for a run through Vulkan on the GPU (issue 7), with the Vulkan
    // and EGL loaders (Debian packages, unpacked there by run.sh) when apt can fetch them here.
    let wgpu_tests = build_executable(
        &[
            "test",
            "-p",
            "mp-kernels",
            "--features",
            "wgpu",
            "--release",
            "--test",
            "wgpu",
            "--no-run",
        ],
        "the wgpu tests",
    )?;
    copy_stripped(&wgpu_tests, &dir.join("wgpu-tests"))?;
    fetch_vulkan_loaders(&dir.join("gl"));
    let torch = root().join("../shared/bench/torch_gpu_reference.py");
    if torch.is_file() {
        copy(&torch, &dir.join("torch_gpu_reference.py"))?;
    } else {
        eprintln!(
            "warning: {} not found: the GPU run will have no PyTorch side-by-side",
            torch.display()
        );
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let stamp = if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    };
    std::fs::write(dir.join("run.sh"), RUN_SH.replace("@COMMIT@", &stamp))
        .context("writing .gpu/run.sh")?;
    eprintln!(
        "built .gpu/ (cuda-tests, train-tests, golden/, cuda_bench, mp-train, dtype-tests, \
         kernels-units, wgpu-tests, gl/, torch_gpu_reference.py, run.sh) at {stamp}\n\
         on the GPU machine, from the repository root: bash .gpu/run.sh  (logs under $OUT)"
    );
    Ok(dir)
}

/// The Debian packages of the Vulkan/EGL loaders the GPU machine lacks (the device tool's
/// README): `apt-get download` into `to`. A failure only warns: `run.sh` then reports the wgpu
/// section as skipped for want of a loader.
fn fetch_vulkan_loaders(to: &Path) {
    const PACKAGES: &[&str] = &[
        "libvulkan1",
        "libegl1",
        "libglvnd0",
        "libopengl0",
        "libgl1",
        "libglx0",
        "libgles2",
    ];
    let have_loader = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libvulkan1_"))
        })
    };
    if have_loader(to) {
        return;
    }
    let lists = std::env::temp_dir().join("mp-apt-amd64");
    let _ = std::fs::create_dir_all(lists.join("partial"));
    let _ = std::fs::create_dir_all(to);
    let opts = [
        "-oAPT::Architecture=amd64".to_string(),
        "-oAPT::Architectures=amd64".to_string(),
        format!("-oDir::State::Lists={}", lists.display()),
    ];
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(&opts)
            .args(args)
            .current_dir(to)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !(apt(&["update"]) && apt(&[&["download"], PACKAGES].concat()) && have_loader(to)) {
        eprintln!(
            "warning: could not download the Vulkan loaders into {}: the wgpu section of \
             run.sh will report it as skipped",
            to.display()
        );
    }
}

/// Why this machine cannot run CUDA, or `None` when it has an NVIDIA GPU.
fn no_gpu_reason() -> Option<String> {
    match Command::new("nvidia-smi").arg("-L").output() {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU") => None,
        Ok(o) => Some(format!(
            "nvidia-smi found no GPU: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(_) => Some("nvidia-smi is not installed (no NVIDIA driver)".into()),
    }
}

/// `cargo xtask test-gpu [--build-only]`.
pub fn test_gpu(build_only: bool) -> Result<()> {
    if !build_only && let Some(why) = no_gpu_reason() {
        bail!(
            "test-gpu: this machine has no usable GPU ({why}).\n\
             Build the bundle here with `cargo xtask test-gpu --build-only` and run \
             `bash .gpu/run.sh` on a machine with an NVIDIA GPU (CUDA 13)."
        );
    }
    let dir = build_bundle()?;
    if build_only {
        return Ok(());
    }
    let status = Command::new("bash")
        .arg(dir.join("run.sh"))
        .current_dir(root())
        .status()
        .context("could not start bash")?;
    if !status.success() {
        bail!("the GPU run failed ({status}); see the summary above");
    }
    Ok(())
}

/// `cargo xtask bench --gpu`: the CUDA benchmark on this machine's GPU.
pub fn bench() -> Result<()> {
    if let Some(why) = no_gpu_reason() {
        bail!(
            "bench --gpu: this machine has no usable GPU ({why}). `cargo xtask test-gpu \
             --build-only` bundles the benchmark into .gpu/ for a GPU machine."
        );
    }
    let bench = build_executable(
        &[
            "build",
            "-p",
            "mp-kernels",
            "--features",
            "cuda",
            "--release",
            "--example",
            "cuda_bench",
        ],
        "the CUDA benchmark",
    )?;
    let status = Command::new(bench)
        .env(
            "LD_LIBRARY_PATH",
            format!(
                "/usr/local/cuda/lib64:{}",
                std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
            ),
        )
        .current_dir(root())
        .status()
        .context("could not start the benchmark")?;
    if !status.success() {
        bail!("the CUDA benchmark failed ({status})");
    }
    Ok(())
}
