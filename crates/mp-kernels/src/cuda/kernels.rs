//! The CUDA C sources of the backend, and their NVRTC compilation with a per-process cache.
//!
//! Each [`KernelModule`] is one `.cu` file of `crates/mp-kernels/kernels/` with the shared
//! `common.cuh` prepended. A module is compiled once per process and architecture straight to
//! machine code (CUBIN, so the driver does not JIT it again; the image is cached in a global
//! map) and loaded once per backend.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

/// The shared header every module starts with.
const COMMON: &str = include_str!("../../kernels/common.cuh");

/// One compilation unit of CUDA kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelModule {
    /// Casts, fill and every element-wise op (`mp_pointwise`, `mp_bias_add`,
    /// `mp_mul_broadcast`, `mp_dropout`).
    Elementwise,
    /// Row reductions, column sums, softmax, layer norm, cross-entropy.
    Rows,
    /// Embeddings and the attention head layout copies.
    Attention,
    /// The fused gradient check, AdamW and SGD passes.
    Optim,
    /// Tensor-core flash attention: forward, delta, dK/dV and dQ kernels.
    Flash,
}

impl KernelModule {
    /// Every module.
    pub const ALL: [KernelModule; 5] = [
        KernelModule::Elementwise,
        KernelModule::Rows,
        KernelModule::Attention,
        KernelModule::Optim,
        KernelModule::Flash,
    ];

    /// The file name of the module's source.
    pub const fn file_name(self) -> &'static str {
        match self {
            KernelModule::Elementwise => "elementwise.cu",
            KernelModule::Rows => "rows.cu",
            KernelModule::Attention => "attention.cu",
            KernelModule::Optim => "optim.cu",
            KernelModule::Flash => "flash.cu",
        }
    }

    /// The module's own source (without the common header).
    pub const fn body(self) -> &'static str {
        match self {
            KernelModule::Elementwise => include_str!("../../kernels/elementwise.cu"),
            KernelModule::Rows => include_str!("../../kernels/rows.cu"),
            KernelModule::Attention => include_str!("../../kernels/attention.cu"),
            KernelModule::Optim => include_str!("../../kernels/optim.cu"),
            KernelModule::Flash => include_str!("../../kernels/flash.cu"),
        }
    }

    /// The full translation unit handed to NVRTC.
    pub fn source(self) -> String {
        format!(
            "{COMMON}\n#line 1 \"{}\"\n{}",
            self.file_name(),
            self.body()
        )
    }
}

/// Every kernel the backend launches and the module that defines it.
pub const KERNELS: &[(&str, KernelModule)] = &[
    ("mp_pointwise", KernelModule::Elementwise),
    ("mp_bias_add", KernelModule::Elementwise),
    ("mp_mul_broadcast", KernelModule::Elementwise),
    ("mp_dropout", KernelModule::Elementwise),
    ("mp_swiglu", KernelModule::Elementwise),
    ("mp_swiglu_bwd", KernelModule::Elementwise),
    ("mp_reduce_rows", KernelModule::Rows),
    ("mp_sum_cols_partial", KernelModule::Rows),
    ("mp_sum_cols_final", KernelModule::Rows),
    ("mp_softmax", KernelModule::Rows),
    ("mp_softmax_bwd", KernelModule::Rows),
    ("mp_layer_norm", KernelModule::Rows),
    ("mp_layer_norm_bwd_dx", KernelModule::Rows),
    ("mp_layer_norm_bwd_dwb_partial", KernelModule::Rows),
    ("mp_cross_entropy", KernelModule::Rows),
    ("mp_cross_entropy_bwd", KernelModule::Rows),
    ("mp_cross_entropy_fused", KernelModule::Rows),
    ("mp_embedding", KernelModule::Attention),
    ("mp_embedding_bwd", KernelModule::Attention),
    ("mp_heads", KernelModule::Attention),
    ("mp_rope", KernelModule::Attention),
    ("mp_grad_stats_partial", KernelModule::Optim),
    ("mp_grad_stats_final", KernelModule::Optim),
    ("mp_adamw", KernelModule::Optim),
    ("mp_sgd", KernelModule::Optim),
    ("mp_range_counts", KernelModule::Optim),
    ("mp_lost_update_counts", KernelModule::Optim),
    ("mp_flash_delta", KernelModule::Flash),
    ("mp_flash_fwd_bf16_64", KernelModule::Flash),
    ("mp_flash_fwd_bf16_128", KernelModule::Flash),
    ("mp_flash_fwd_f16_64", KernelModule::Flash),
    ("mp_flash_fwd_f16_128", KernelModule::Flash),
    ("mp_flash_bwd_dkv_bf16_64", KernelModule::Flash),
    ("mp_flash_bwd_dkv_bf16_128", KernelModule::Flash),
    ("mp_flash_bwd_dkv_f16_64", KernelModule::Flash),
    ("mp_flash_bwd_dkv_f16_128", KernelModule::Flash),
    ("mp_flash_bwd_dq_bf16_64", KernelModule::Flash),
    ("mp_flash_bwd_dq_bf16_128", KernelModule::Flash),
    ("mp_flash_bwd_dq_f16_64", KernelModule::Flash),
    ("mp_flash_bwd_dq_f16_128", KernelModule::Flash),
];

/// The module that defines kernel `name`.
pub fn module_of(name: &str) -> Option<KernelModule> {
    KERNELS.iter().find(|(n, _)| *n == name).map(|&(_, m)| m)
}

/// Where NVRTC finds `cuda_fp16.h` and `cuda_bf16.h`: `$MP_CUDA_INCLUDE`, then
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`, then the include
/// folder of a pip `nvidia-cuda-runtime` wheel next to a `libnvrtc` on `LD_LIBRARY_PATH`.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let has_headers = |p: &Path| p.join("cuda_bf16.h").is_file();
    if let Some(p) = std::env::var_os("MP_CUDA_INCLUDE").map(PathBuf::from)
        && has_headers(&p)
    {
        return Some(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var).map(|v| PathBuf::from(v).join("include"))
            && has_headers(&p)
        {
            return Some(p);
        }
    }
    let default = PathBuf::from("/usr/local/cuda/include");
    if has_headers(&default) {
        return Some(default);
    }
    // pip wheels: .../nvidia/cu13/lib holds libnvrtc, .../nvidia/cu13/include the headers
    std::env::var_os("LD_LIBRARY_PATH")
        .into_iter()
        .flat_map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
        .filter_map(|lib| lib.parent().map(|p| p.join("include")))
        .find(|p| has_headers(p))
}

/// An error compiling a module: which one, for which architecture, and NVRTC's log.
#[derive(Debug, Clone)]
pub struct CompileFailure {
    /// The module.
    pub module: KernelModule,
    /// The target architecture (`"sm_90"`).
    pub arch: &'static str,
    /// NVRTC's message and log.
    pub log: String,
}

impl std::fmt::Display for CompileFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NVRTC could not compile {} for {}: {}",
            self.module.file_name(),
            self.arch,
            self.log
        )
    }
}

type ImageCache = Mutex<HashMap<(KernelModule, &'static str), Arc<Vec<u8>>>>;

fn image_cache() -> &'static ImageCache {
    static CACHE: OnceLock<ImageCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `"sm_XY"` for a compute capability, as the `&'static str` NVRTC's options take (interned).
pub fn arch_name(major: i32, minor: i32) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    names
        .entry((major, minor))
        .or_insert_with(|| Box::leak(format!("sm_{major}{minor}").into_boxed_str()))
}

/// The compiled image (CUBIN: machine code for `arch`, so the driver loads it without a JIT
/// pass) of `module`, compiled by NVRTC at the first request in this process.
pub fn cubin(module: KernelModule, arch: &'static str) -> Result<Arc<Vec<u8>>, CompileFailure> {
    if let Some(img) = image_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(module, arch))
    {
        return Ok(img.clone());
    }
    let img = Arc::new(compile(module, arch)?);
    image_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((module, arch), img.clone());
    Ok(img)
}

/// NVRTC's program handle, destroyed on drop.
struct Program(sys::nvrtcProgram);
impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program, destroyed once; errors are ignored in Drop.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn compile(module: KernelModule, arch: &'static str) -> Result<Vec<u8>, CompileFailure> {
    let fail = |log: String| CompileFailure { module, arch, log };
    // SAFETY: only probes whether the dynamic library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(fail(
            "libnvrtc.so.13 (CUDA 13) was not found: add its folder to LD_LIBRARY_PATH".into(),
        ));
    }
    let include = cuda_include_dir().ok_or_else(|| {
        fail("no CUDA include folder with cuda_bf16.h: set MP_CUDA_INCLUDE or CUDA_HOME".into())
    })?;
    let src = CString::new(module.source()).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(module.file_name()).map_err(|e| fail(e.to_string()))?;
    let prog =
        Program(result::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?);
    let options = [
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", include.display()),
        "-std=c++17".to_string(),
    ];
    // SAFETY: `prog` is live; `src` and `name` outlive it.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        return Err(fail(format!("{e:?}\n{log}")));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the buffer has the size NVRTC reports.
    unsafe {
        sys::nvrtcGetCUBINSize(prog.0, &mut size)
            .result()
            .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e:?}")))?;
        let mut image = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr() as *mut std::ffi::c_char)
            .result()
            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
        Ok(image)
    }
}

/// Compiles every module for `arch`, in parallel, through the process cache (no GPU needed,
/// only libnvrtc and the CUDA headers): the CI check that every kernel compiles, and the
/// backend's warm-up. Returns the CUBIN size of each module.
pub fn compile_all(arch: &'static str) -> Result<Vec<(KernelModule, usize)>, CompileFailure> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = KernelModule::ALL
            .iter()
            .map(|&m| s.spawn(move || cubin(m, arch).map(|img| (m, img.len()))))
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| {
                    Err(CompileFailure {
                        module: KernelModule::Elementwise,
                        arch,
                        log: "an NVRTC compile thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the `extern "C" __global__` functions of a source (after a
    /// `__launch_bounds__(..)` where there is one).
    fn kernels_in(src: &str) -> Vec<&str> {
        src.split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| match rest.strip_prefix("__launch_bounds__(") {
                Some(bounded) => bounded.split_once(") ").map_or("", |(_, name)| name),
                None => rest,
            })
            .filter_map(|rest| rest.split('(').next())
            .collect()
    }

    #[test]
    fn every_listed_kernel_is_defined_in_its_module_and_vice_versa() {
        for &(name, module) in KERNELS {
            assert!(
                kernels_in(module.body()).contains(&name),
                "{name} is not defined in {}",
                module.file_name()
            );
        }
        for module in KernelModule::ALL {
            for name in kernels_in(module.body()) {
                assert_eq!(module_of(name), Some(module), "{name} is not in KERNELS");
            }
        }
    }

    #[test]
    fn sources_start_with_the_common_header() {
        for module in KernelModule::ALL {
            let src = module.source();
            assert!(src.starts_with(COMMON), "{}", module.file_name());
            assert!(src.contains(&format!("#line 1 \"{}\"", module.file_name())));
        }
    }

    #[test]
    fn arch_names_are_interned() {
        assert_eq!(arch_name(9, 0), "sm_90");
        assert!(std::ptr::eq(arch_name(8, 6), arch_name(8, 6)));
    }
}
