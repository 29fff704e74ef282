//! Helpers shared by the integration tests: a tiny config, scratch folders, and the GPU
//! backends (one per process, or a loud skip).

use mp_train::config::{ModelConfig, TrainConfig};
use mp_train::run::{Progress, RunOptions};
use std::path::{Path, PathBuf};

/// A config small enough to train a few steps in well under a second.
pub fn tiny(steps: u64) -> TrainConfig {
    let mut c = TrainConfig {
        max_steps: steps,
        batch_size: 4,
        learning_rate: 1e-2,
        warmup_steps: 2,
        logging_steps: 1,
        eval_steps: 0,
        eval_batches: 2,
        eval_problems: 8,
        save_steps: 0,
        save_total_limit: 0,
        threads: 2,
        model: ModelConfig {
            n_layer: 1,
            n_embd: 32,
            n_head: 2,
            n_positions: 32,
            vocab_size: 256,
            ..ModelConfig::default()
        },
        ..TrainConfig::default()
    };
    c.data.problems = 2000;
    c
}

/// The `--set` arguments of [`tiny`] for the binary.
pub fn tiny_args(steps: u64) -> Vec<String> {
    [
        format!("max_steps={steps}"),
        "batch_size=4".into(),
        "learning_rate=1e-2".into(),
        "warmup_steps=2".into(),
        "logging_steps=1".into(),
        "eval_steps=0".into(),
        "eval_batches=2".into(),
        "eval_problems=8".into(),
        "save_steps=0".into(),
        "threads=2".into(),
        "model.n_layer=1".into(),
        "model.n_embd=32".into(),
        "model.n_head=2".into(),
        "model.n_positions=32".into(),
        "data.problems=2000".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

/// Options of a quiet test run into `out`: no progress bar, plots or checkpoints.
pub fn quiet(out: &Path) -> RunOptions {
    RunOptions {
        checkpoints: false,
        plots: false,
        progress: Progress::Quiet,
        ..RunOptions::new(out)
    }
}

/// A fresh, empty scratch folder unique to `name` and this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-train-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Prints the loud skip line of a GPU test, or panics when `require_var=1` is set (where the
/// device is known to exist, as in CI for wgpu on lavapipe, so a missing one fails).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn skip_or_fail(test: &str, backend: &str, require_var: &str, hint: &str, reason: &str) {
    if std::env::var(require_var).is_ok_and(|v| v == "1") {
        panic!("{require_var}=1 but no {backend} device: {test}: {reason}");
    }
    eprintln!("SKIPPED (no {backend} device{hint}): {test}: {reason}");
}

/// The process-wide wgpu backend, or `None` after printing why there is none (a panic under
/// `MP_REQUIRE_WGPU=1`).
#[cfg(feature = "wgpu")]
pub fn wgpu_backend(test: &str) -> Option<&'static mp_kernels::wgpu::WgpuBackend> {
    use mp_kernels::wgpu::WgpuBackend;
    static GPU: std::sync::OnceLock<Result<WgpuBackend, String>> = std::sync::OnceLock::new();
    match GPU.get_or_init(|| WgpuBackend::new().map_err(|e| e.to_string())) {
        Ok(be) => Some(be),
        Err(reason) => {
            let hint = "; install mesa-vulkan-drivers, set WGPU_BACKEND=vulkan";
            skip_or_fail(test, "wgpu", "MP_REQUIRE_WGPU", hint, reason);
            None
        }
    }
}

/// The process-wide CUDA backend, or `None` after printing why there is none (a panic under
/// `MP_REQUIRE_CUDA=1`).
#[cfg(feature = "cuda")]
pub fn cuda_backend(test: &str) -> Option<&'static mp_kernels::cuda::CudaBackend> {
    use mp_kernels::cuda::CudaBackend;
    static GPU: std::sync::OnceLock<Result<CudaBackend, String>> = std::sync::OnceLock::new();
    match GPU.get_or_init(|| CudaBackend::new().map_err(|e| e.to_string())) {
        Ok(be) => Some(be),
        Err(reason) => {
            skip_or_fail(test, "CUDA", "MP_REQUIRE_CUDA", "", reason);
            None
        }
    }
}
